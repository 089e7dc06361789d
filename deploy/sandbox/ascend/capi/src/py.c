/*
 * Simulated AscendCL: the simulated device, i.e. the Python simulator's model execution, embedded.
 *
 * On first use (a model query or load) the library dlopens the board's shared libpython, starts it
 * (Py_InitializeEx(0): no signal handlers, the app keeps its own) and imports acl._capi from the
 * simulated runtime beside this library (runtime/acl, with sim-deps' numpy and ONNX Runtime). Every
 * model is then parsed and run by the same Python code acl.mdl uses; the C side hands it memoryviews
 * of its buffers (real addresses: no copy) and holds the GIL only around those calls (ONNX Runtime
 * releases it while it computes). A process that already runs Python (an app loading this library
 * with ctypes) is served by its own interpreter. Only a few dozen functions of Python's C API are
 * used, looked up with dlsym, so one build serves any CPython 3.7+ and needs no Python headers.
 *
 * Which Python: ACL_SIM_LIBPYTHON / ACL_SIM_PYTHON (the shared library / the interpreter whose
 * prefix it belongs to), else `libpython=` / `python=` lines of acl-sim.conf beside this library
 * (written when a sandbox board's simulated CANN is installed), else the usual sonames.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <wchar.h>

#include "internal.h"

typedef struct _object PyObject;
typedef long Py_ssize_t;
#define PyBUF_READ 0x100
#define PyBUF_WRITE 0x200

static struct {
    int (*IsInitialized)(void);
    void (*InitializeEx)(int);
    void (*SetProgramName)(const wchar_t *);
    wchar_t *(*DecodeLocale)(const char *, size_t *);
    void *(*SaveThread)(void);
    int (*GILEnsure)(void);
    void (*GILRelease)(int);
    PyObject *(*ImportModule)(const char *);
    PyObject *(*GetAttrString)(PyObject *, const char *);
    PyObject *(*Call)(PyObject *, ...);
    PyObject *(*MemoryView)(char *, Py_ssize_t, int);
    PyObject *(*Str)(const char *);
    PyObject *(*FsStr)(const char *);
    const char *(*AsUTF8)(PyObject *);
    long (*AsLong)(PyObject *);
    PyObject *(*FromDouble)(double);
    double (*AsDouble)(PyObject *);
    PyObject *(*TupleNew)(Py_ssize_t);
    int (*TupleSet)(PyObject *, Py_ssize_t, PyObject *);
    PyObject *(*TupleGet)(PyObject *, Py_ssize_t);
    PyObject *(*SysGet)(const char *);
    int (*ListInsert)(PyObject *, Py_ssize_t, PyObject *);
    int (*ListAppend)(PyObject *, PyObject *);
    void (*DecRef)(PyObject *);
    void (*IncRef)(PyObject *);
    void (*ErrFetch)(PyObject **, PyObject **, PyObject **);
    void (*ErrNormalize)(PyObject **, PyObject **, PyObject **);
    PyObject *(*ObjStr)(PyObject *);
    PyObject *None;
    PyObject *load, *query, *describe, *execute, *error;
} P;

static const struct {
    const char *name;
    void **slot;
} SYMBOLS[] = {
    {"Py_IsInitialized", (void **)&P.IsInitialized}, {"Py_InitializeEx", (void **)&P.InitializeEx},
    {"Py_SetProgramName", (void **)&P.SetProgramName}, {"Py_DecodeLocale", (void **)&P.DecodeLocale},
    {"PyEval_SaveThread", (void **)&P.SaveThread}, {"PyGILState_Ensure", (void **)&P.GILEnsure},
    {"PyGILState_Release", (void **)&P.GILRelease}, {"PyImport_ImportModule", (void **)&P.ImportModule},
    {"PyObject_GetAttrString", (void **)&P.GetAttrString}, {"PyObject_CallFunctionObjArgs", (void **)&P.Call},
    {"PyMemoryView_FromMemory", (void **)&P.MemoryView}, {"PyUnicode_FromString", (void **)&P.Str},
    {"PyUnicode_DecodeFSDefault", (void **)&P.FsStr}, {"PyUnicode_AsUTF8", (void **)&P.AsUTF8},
    {"PyLong_AsLong", (void **)&P.AsLong}, {"PyFloat_FromDouble", (void **)&P.FromDouble},
    {"PyFloat_AsDouble", (void **)&P.AsDouble}, {"PyTuple_New", (void **)&P.TupleNew},
    {"PyTuple_SetItem", (void **)&P.TupleSet}, {"PyTuple_GetItem", (void **)&P.TupleGet},
    {"PySys_GetObject", (void **)&P.SysGet}, {"PyList_Insert", (void **)&P.ListInsert},
    {"PyList_Append", (void **)&P.ListAppend}, {"Py_DecRef", (void **)&P.DecRef}, {"Py_IncRef", (void **)&P.IncRef},
    {"PyErr_Fetch", (void **)&P.ErrFetch}, {"PyErr_NormalizeException", (void **)&P.ErrNormalize},
    {"PyObject_Str", (void **)&P.ObjStr}, {"_Py_NoneStruct", (void **)&P.None},
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_ok;
static char g_why[1024]; /* why the simulated device could not start */
static char g_dir[PATH_MAX]; /* this library's directory (runtime/lib64) */

/* ---- finding and starting the board's Python ---- */

static void conf_value(const char *key, char *out, size_t n) {
    char path[PATH_MAX + 32], line[PATH_MAX + 64];
    size_t klen = strlen(key);
    out[0] = 0;
    snprintf(path, sizeof(path), "%s/acl-sim.conf", g_dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (strncmp(line, key, klen) == 0 && line[klen] == '=') snprintf(out, n, "%s", line + klen + 1);
    }
    fclose(f);
}

static void setting(const char *env, const char *key, char *out, size_t n) {
    const char *value = getenv(env);
    if (value && *value) snprintf(out, n, "%s", value);
    else conf_value(key, out, n);
}

static void *open_libpython(void) {
    static const char *SONAMES[] = {"libpython3.9.so.1.0", "libpython3.7m.so.1.0", "libpython3.8.so.1.0",
                                    "libpython3.10.so.1.0", "libpython3.11.so.1.0", "libpython3.12.so.1.0"};
    char path[PATH_MAX];
    setting("ACL_SIM_LIBPYTHON", "libpython", path, sizeof(path));
    if (path[0]) {
        void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
        if (!h) snprintf(g_why, sizeof(g_why), "cannot load the board's Python %s: %s", path, dlerror());
        return h;
    }
    for (size_t i = 0; i < sizeof(SONAMES) / sizeof(SONAMES[0]); i++) {
        void *h = dlopen(SONAMES[i], RTLD_NOW | RTLD_GLOBAL);
        if (h) return h;
    }
    snprintf(g_why, sizeof(g_why), "no shared libpython found (set ACL_SIM_LIBPYTHON, or write libpython= into %s/acl-sim.conf)",
             g_dir);
    return NULL;
}

static void exception_text(char *out, size_t n) {
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    P.ErrFetch(&type, &value, &tb);
    P.ErrNormalize(&type, &value, &tb);
    PyObject *t = type ? P.ObjStr(type) : NULL, *v = value ? P.ObjStr(value) : NULL;
    const char *ts = t ? P.AsUTF8(t) : NULL, *vs = v ? P.AsUTF8(v) : NULL;
    snprintf(out, n, "%s: %s", ts ? ts : "exception", vs ? vs : "?");
    PyObject *all[] = {t, v, type, value, tb};
    for (size_t i = 0; i < 5; i++)
        if (all[i]) P.DecRef(all[i]);
}

static void add_path(PyObject *path, const char *dir, int front) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return;
    PyObject *s = P.FsStr(dir);
    if (!s) return;
    if (front) P.ListInsert(path, 0, s);
    else P.ListAppend(path, s);
    P.DecRef(s);
}

/* With the GIL: sys.path gets the simulated runtime (first) and its sim-deps (last); import acl._capi. */
static void setup(void) {
    char runtime[PATH_MAX], deps[PATH_MAX + 16];
    snprintf(runtime, sizeof(runtime), "%s", g_dir);
    char *slash = strrchr(runtime, '/');
    if (slash) *slash = 0; /* runtime/lib64 -> runtime */
    snprintf(deps, sizeof(deps), "%s/../sim-deps", runtime);
    PyObject *path = P.SysGet("path");
    if (path) {
        add_path(path, runtime, 1);
        add_path(path, deps, 0);
    }
    PyObject *mod = P.ImportModule("acl._capi");
    if (!mod) {
        exception_text(g_why, sizeof(g_why));
        return;
    }
    P.load = P.GetAttrString(mod, "load");
    P.query = P.GetAttrString(mod, "query");
    P.describe = P.GetAttrString(mod, "describe");
    P.execute = P.GetAttrString(mod, "execute");
    P.error = P.GetAttrString(mod, "error");
    g_ok = P.load && P.query && P.describe && P.execute && P.error;
    if (!g_ok) snprintf(g_why, sizeof(g_why), "acl._capi lacks load/query/describe/execute/error");
}

static void start(void) {
    Dl_info info;
    char real[PATH_MAX];
    if (dladdr((void *)&start, &info) && info.dli_fname && realpath(info.dli_fname, real)) {
        char *slash = strrchr(real, '/');
        if (slash) *slash = 0;
        snprintf(g_dir, sizeof(g_dir), "%s", real);
    }
    int (*probe)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    int running = probe && probe();
    void *h = running ? RTLD_DEFAULT : open_libpython(); /* RTLD_DEFAULT is NULL in glibc */
    if (!running && !h) return;
    for (size_t i = 0; i < sizeof(SYMBOLS) / sizeof(SYMBOLS[0]); i++) {
        *SYMBOLS[i].slot = dlsym(h, SYMBOLS[i].name);
        if (!*SYMBOLS[i].slot) {
            snprintf(g_why, sizeof(g_why), "the board's Python lacks %s", SYMBOLS[i].name);
            return;
        }
    }
    if (running) {
        int g = P.GILEnsure();
        setup();
        P.GILRelease(g);
        return;
    }
    char prog[PATH_MAX];
    setting("ACL_SIM_PYTHON", "python", prog, sizeof(prog));
    wchar_t *wprog = prog[0] ? P.DecodeLocale(prog, NULL) : NULL; /* must outlive the interpreter */
    if (wprog) P.SetProgramName(wprog);
    P.InitializeEx(0);
    setup();
    P.SaveThread();
}

static aclError ready(void) {
    static int told;
    pthread_once(&g_once, start);
    if (g_ok) return ACL_SUCCESS;
    if (!__atomic_exchange_n(&told, 1, __ATOMIC_SEQ_CST)) fprintf(stderr, "[ACL-SIM] the simulated device cannot start: %s\n", g_why);
    return sim_fail(ACL_ERROR_INTERNAL_ERROR, "the simulated device cannot start: %s", g_why);
}

/* ---- calls (each takes the GIL) ---- */

/* The code Python returned, with its recorded reason as this thread's error message. */
static aclError recorded(long code) {
    PyObject *msg = P.Call(P.error, NULL);
    const char *text = msg ? P.AsUTF8(msg) : NULL;
    sim_set_error(text && *text ? text : "the simulator failed");
    if (msg) P.DecRef(msg);
    return (aclError)code;
}

static aclError raised(const char *what) {
    char text[900];
    exception_text(text, sizeof(text));
    return sim_fail(ACL_ERROR_INTERNAL_ERROR, "%s: simulator error: %s", what, text);
}

aclError sim_py_query(const void *data, size_t size, size_t *work, size_t *weight) {
    aclError ret = ready();
    if (ret) return ret;
    int g = P.GILEnsure();
    PyObject *mv = P.MemoryView((char *)data, (Py_ssize_t)size, PyBUF_READ);
    PyObject *res = mv ? P.Call(P.query, mv, NULL) : NULL;
    if (!res) ret = raised("aclmdlQuerySize");
    else if ((ret = (aclError)P.AsLong(P.TupleGet(res, 0))) != 0) ret = recorded(ret);
    else {
        *work = (size_t)P.AsLong(P.TupleGet(res, 1));
        *weight = (size_t)P.AsLong(P.TupleGet(res, 2));
    }
    if (res) P.DecRef(res);
    if (mv) P.DecRef(mv);
    P.GILRelease(g);
    return ret;
}

/* "<bytes> <dtype> <format> <ndims> <dims...> <name>" (after "in " / "out ") into ``x``; 0 when malformed. */
static int parse_io(char *p, IoDesc *x) {
    char *end;
    x->size = strtoull(p, &end, 10);
    x->dtype = (int)strtol(end, &end, 10);
    x->format = (int)strtol(end, &end, 10);
    x->ndims = strtoull(end, &end, 10);
    if (x->ndims > ACL_MAX_DIM_CNT) return 0;
    for (size_t i = 0; i < x->ndims; i++) x->dims[i] = strtoll(end, &end, 10);
    if (*end == ' ') end++;
    snprintf(x->name, sizeof(x->name), "%s", end);
    return 1;
}

/* The description acl._capi.describe() gives, parsed into ``m`` (see there for the format). */
static aclError parse_description(char *text, Model *m) {
    size_t lines = 0;
    for (char *c = text; *c; c++) lines += *c == '\n';
    m->in = calloc(lines + 1, sizeof(IoDesc));
    m->out = calloc(lines + 1, sizeof(IoDesc));
    if (!m->in || !m->out) return sim_fail(ACL_ERROR_BAD_ALLOC, "load model: out of memory");
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *end;
        if (strncmp(line, "sizes ", 6) == 0) {
            m->work_size = strtoull(line + 6, &end, 10);
            m->weight_size = strtoull(end, &end, 10);
        } else if (strncmp(line, "gears ", 6) == 0) {
            size_t n = strtoull(line + 6, &end, 10);
            for (size_t i = 0; i < n && i < ACL_MAX_BATCH_NUM; i++) {
                m->gears[m->n_gears++] = strtoull(end, &end, 10);
                if (m->gears[i] > m->max_gear) m->max_gear = m->gears[i];
            }
        } else if (strncmp(line, "in ", 3) == 0 && parse_io(line + 3, &m->in[m->n_in])) m->n_in++;
        else if (strncmp(line, "out ", 4) == 0 && parse_io(line + 4, &m->out[m->n_out])) m->n_out++;
        else return sim_fail(ACL_ERROR_INTERNAL_ERROR, "load model: bad description line: %.80s", line);
    }
    return ACL_SUCCESS;
}

static aclError describe(Model *m) {
    PyObject *res = P.Call(P.describe, (PyObject *)m->py, NULL);
    const char *text = res ? P.AsUTF8(res) : NULL;
    aclError ret;
    if (!text) ret = raised("load model");
    else {
        char *copy = strdup(text);
        ret = copy ? parse_description(copy, m) : sim_fail(ACL_ERROR_BAD_ALLOC, "load model: out of memory");
        free(copy);
    }
    if (res) P.DecRef(res);
    return ret;
}

aclError sim_py_load(const void *data, size_t size, Model *m) {
    aclError ret = ready();
    if (ret) return ret;
    int g = P.GILEnsure();
    PyObject *mv = P.MemoryView((char *)data, (Py_ssize_t)size, PyBUF_READ);
    PyObject *soc = P.Str(g_sim.soc);
    PyObject *res = (mv && soc) ? P.Call(P.load, mv, soc, NULL) : NULL;
    if (!res) ret = raised("load model");
    else if ((ret = (aclError)P.AsLong(P.TupleGet(res, 1))) != 0) ret = recorded(ret);
    else {
        m->py = P.TupleGet(res, 0);
        P.IncRef(m->py);
        ret = describe(m);
        if (ret) {
            P.DecRef(m->py);
            m->py = NULL;
            free(m->in);
            free(m->out);
        }
    }
    PyObject *all[] = {res, soc, mv};
    for (size_t i = 0; i < 3; i++)
        if (all[i]) P.DecRef(all[i]);
    P.GILRelease(g);
    return ret;
}

static PyObject *views(char **bufs, const size_t *sizes, size_t n) {
    PyObject *t = P.TupleNew((Py_ssize_t)n);
    for (size_t i = 0; t && i < n; i++) {
        PyObject *v = bufs[i] ? P.MemoryView(bufs[i], (Py_ssize_t)sizes[i], PyBUF_WRITE) : NULL;
        if (!v) {
            v = P.None;
            P.IncRef(v);
        }
        P.TupleSet(t, (Py_ssize_t)i, v); /* steals v */
    }
    return t;
}

aclError sim_py_execute(Model *m, char **ins, size_t *in_sizes, char **outs, size_t *out_sizes, double ready_at,
                        double *ended_at) {
    aclError ret = ready();
    if (ret) return ret;
    int g = P.GILEnsure();
    PyObject *tin = views(ins, in_sizes, m->n_in), *tout = views(outs, out_sizes, m->n_out);
    PyObject *at = P.FromDouble(ready_at);
    PyObject *res = (tin && tout && at) ? P.Call(P.execute, (PyObject *)m->py, tin, tout, at, NULL) : NULL;
    if (!res) ret = raised("execute");
    else {
        ret = (aclError)P.AsLong(P.TupleGet(res, 0));
        *ended_at = P.AsDouble(P.TupleGet(res, 1));
        if (ret) ret = recorded(ret);
    }
    PyObject *all[] = {res, at, tout, tin};
    for (size_t i = 0; i < 4; i++)
        if (all[i]) P.DecRef(all[i]);
    P.GILRelease(g);
    return ret;
}

void sim_py_drop(Model *m) {
    if (!m->py || !g_ok) return;
    int g = P.GILEnsure();
    P.DecRef((PyObject *)m->py);
    m->py = NULL;
    P.GILRelease(g);
}
