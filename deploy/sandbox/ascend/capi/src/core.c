/*
 * Simulated AscendCL: process state, aclInit/aclFinalize, error messages, injected faults.
 *
 * The conventions are the Python simulator's (runtime/acl/_core.py): aclInit once per process
 * (100002 on a second call, also after aclFinalize; aclFinalize twice gives 100037); 100001 before
 * aclInit; 107002 for a call that needs a context from a thread that has none. Faults come from the
 * same ACL_SIM_FAIL="malloc:3,memcpy:5,execute:2:507011" (the Nth call of that function, counted
 * per process, returns the code and does nothing), with the same names and default codes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

SimState g_sim = {PTHREAD_MUTEX_INITIALIZER, 0, 0, ACL_DEVICE, 1, "Ascend310", {0}};

static __thread char t_err[1024];
static __thread int t_has_err;
static __thread char t_err_out[1024];

/* ---- environment and faults ---- */

typedef struct Fault {
    char name[32];
    long nth;
    aclError code;
} Fault;

/* What an injected fault returns when ACL_SIM_FAIL gives no code (runtime/acl/_core.py FAULT_CODES). */
static const struct {
    const char *name;
    aclError code;
} FAULT_CODES[] = {
    {"malloc", ACL_ERROR_RT_MEMORY_ALLOCATION},   {"malloc_host", ACL_ERROR_RT_MEMORY_ALLOCATION},
    {"memcpy", ACL_ERROR_RT_SYS_DMA},             {"execute", ACL_ERROR_RT_MODEL_EXECUTE},
    {"execute_async", ACL_ERROR_RT_MODEL_EXECUTE}, {"launch_callback", ACL_ERROR_RT_INTERNAL_ERROR},
    {"set_device", ACL_ERROR_RT_DEV_SETUP_ERROR},  {"create_stream", ACL_ERROR_RT_NO_STREAM_RESOURCE},
    {"load_from_file", ACL_ERROR_PARSE_MODEL},
};

static Fault g_faults[64];
static size_t g_nfaults;
static struct {
    char name[32];
    long count;
} g_counts[64];
static size_t g_ncounts;
static pthread_once_t g_env_once = PTHREAD_ONCE_INIT;

static aclError default_fault_code(const char *name) {
    for (size_t i = 0; i < sizeof(FAULT_CODES) / sizeof(FAULT_CODES[0]); i++)
        if (strcmp(FAULT_CODES[i].name, name) == 0) return FAULT_CODES[i].code;
    return ACL_ERROR_RT_INTERNAL_ERROR;
}

static void parse_faults(const char *text) {
    char buf[2048];
    if (!text) return;
    snprintf(buf, sizeof(buf), "%s", text);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item && g_nfaults < 64; item = strtok_r(NULL, ",", &save)) {
        char name[32] = {0};
        long nth = 0, code = 0;
        int got = sscanf(item, " %31[^: ] : %ld : %ld", name, &nth, &code);
        if (got < 2 || !name[0]) continue;
        Fault *f = &g_faults[g_nfaults++];
        snprintf(f->name, sizeof(f->name), "%s", name);
        f->nth = nth;
        f->code = got > 2 ? (aclError)code : default_fault_code(name);
    }
}

static void read_env(void) {
    const char *mode = getenv("ACL_SIM_RUN_MODE");
    g_sim.run_mode = (mode && strcmp(mode, "host") == 0) ? ACL_HOST : ACL_DEVICE;
    const char *count = getenv("ACL_SIM_DEVICE_COUNT");
    g_sim.device_count = count ? atoi(count) : 1;
    if (g_sim.device_count < 0) g_sim.device_count = 0;
    if (g_sim.device_count > 64) g_sim.device_count = 64;
    const char *soc = getenv("ACL_SIM_SOC_VERSION");
    snprintf(g_sim.soc, sizeof(g_sim.soc), "%s", (soc && *soc) ? soc : "Ascend310");
    parse_faults(getenv("ACL_SIM_FAIL"));
}

static void env(void) { pthread_once(&g_env_once, read_env); }

aclError sim_fault(const char *name) {
    env();
    aclError code = 0;
    long n;
    pthread_mutex_lock(&g_sim.lock);
    size_t i = 0;
    while (i < g_ncounts && strcmp(g_counts[i].name, name) != 0) i++;
    if (i == g_ncounts && g_ncounts < 64) snprintf(g_counts[g_ncounts++].name, 32, "%s", name);
    n = ++g_counts[i].count;
    for (size_t f = 0; f < g_nfaults; f++)
        if (strcmp(g_faults[f].name, name) == 0 && g_faults[f].nth == n) code = g_faults[f].code;
    pthread_mutex_unlock(&g_sim.lock);
    if (code) sim_fail(code, "injected fault: %s call %ld fails", name, n);
    return code;
}

/* ---- errors ---- */

void sim_set_error(const char *msg) {
    snprintf(t_err, sizeof(t_err), "%s", msg);
    t_has_err = 1;
    if (getenv("ACL_SIM_LOG")) fprintf(stderr, "[ACL-SIM ERROR] %s\n", msg);
}

aclError sim_fail(aclError code, const char *fmt, ...) {
    char msg[900];
    char full[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(full, sizeof(full), "%s (ret=%d)", msg, code);
    sim_set_error(full);
    return code;
}

/* The last failure of the calling thread, then cleared (documented: "get and clear"); NULL when none.
 * The pointer stays valid until this thread's next call. */
const char *aclGetRecentErrMsg(void) {
    if (!t_has_err) return NULL;
    memcpy(t_err_out, t_err, sizeof(t_err_out));
    t_has_err = 0;
    return t_err_out;
}

aclError sim_ready(int need_context) {
    env();
    if (!g_sim.initialised) return sim_fail(ACL_ERROR_UNINITIALIZE, "aclInit has not been called (or aclFinalize has)");
    if (need_context && sim_current_context() == NULL)
        return sim_fail(ACL_ERROR_RT_CONTEXT_NULL, "no current context in this thread: call aclrtSetCurrentContext");
    return ACL_SUCCESS;
}

double sim_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- aclInit / aclFinalize ---- */

static aclError check_config(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return sim_fail(ACL_ERROR_INVALID_FILE, "aclInit: bad config %s: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0, got;
    char chunk[4096];
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (len + got > cap) {
            cap = (len + got) * 2;
            char *grown = realloc(text, cap);
            if (!grown) break;
            text = grown;
        }
        memcpy(text + len, chunk, got);
        len += got;
    }
    fclose(f);
    int ok = text && sim_json_valid(text, len);
    free(text);
    if (!ok) return sim_fail(ACL_ERROR_INVALID_FILE, "aclInit: bad config %s: not a JSON document", path);
    return ACL_SUCCESS;
}

aclError aclInit(const char *configPath) {
    env();
    pthread_mutex_lock(&g_sim.lock);
    int again = g_sim.initialised || g_sim.finalized;
    pthread_mutex_unlock(&g_sim.lock);
    if (again) return sim_fail(ACL_ERROR_REPEAT_INITIALIZE, "aclInit: already initialised in this process");
    if (configPath && *configPath) {
        aclError ret = check_config(configPath);
        if (ret) return ret;
    }
    pthread_mutex_lock(&g_sim.lock);
    g_sim.initialised = 1;
    pthread_mutex_unlock(&g_sim.lock);
    return ACL_SUCCESS;
}

aclError aclFinalize(void) {
    env();
    pthread_mutex_lock(&g_sim.lock);
    int was = g_sim.initialised;
    g_sim.initialised = 0;
    if (was) g_sim.finalized = 1;
    pthread_mutex_unlock(&g_sim.lock);
    if (!was) return sim_fail(ACL_ERROR_REPEAT_FINALIZE, "aclFinalize: not initialised, or finalized already");
    return ACL_SUCCESS;
}

aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion) {
    if (!majorVersion || !minorVersion || !patchVersion) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtGetVersion: NULL");
    *majorVersion = ACL_MAJOR_VERSION;
    *minorVersion = ACL_MINOR_VERSION;
    *patchVersion = ACL_PATCH_VERSION;
    return ACL_SUCCESS;
}

const char *aclrtGetSocName(void) {
    env();
    return g_sim.soc;
}

aclError aclrtGetRunMode(aclrtRunMode *runMode) {
    env();
    if (!runMode) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtGetRunMode: runMode is NULL");
    *runMode = g_sim.run_mode;
    return ACL_SUCCESS;
}

aclError aclrtGetDeviceCount(uint32_t *count) {
    env();
    if (!count) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtGetDeviceCount: count is NULL");
    *count = (uint32_t)g_sim.device_count;
    return ACL_SUCCESS;
}

/* ---- a JSON syntax check (what the Python runtime's json.load accepts for acl.json) ---- */

typedef struct {
    const char *p, *end;
    int depth;
} Json;

static void ws(Json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int lit(Json *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return 0;
    j->p += n;
    return 1;
}

static int string(Json *j) {
    if (j->p >= j->end || *j->p != '"') return 0;
    for (j->p++; j->p < j->end; j->p++) {
        if (*j->p == '"') return j->p++, 1;
        if ((unsigned char)*j->p < 0x20) return 0;
        if (*j->p == '\\') j->p++;
    }
    return 0;
}

static int number(Json *j) {
    const char *start = j->p;
    if (j->p < j->end && *j->p == '-') j->p++;
    while (j->p < j->end && strchr("0123456789.eE+-", *j->p)) j->p++;
    return j->p > start && (j->p[-1] >= '0' && j->p[-1] <= '9');
}

static int value(Json *j);

static int members(Json *j, char close, int keyed) {
    j->p++;
    ws(j);
    if (j->p < j->end && *j->p == close) return j->p++, 1;
    for (;;) {
        ws(j);
        if (keyed) {
            if (!string(j)) return 0;
            ws(j);
            if (j->p >= j->end || *j->p++ != ':') return 0;
        }
        if (!value(j)) return 0;
        ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        return j->p < j->end && *j->p++ == close;
    }
}

static int value(Json *j) {
    ws(j);
    if (j->p >= j->end || ++j->depth > 512) return 0;
    int ok;
    switch (*j->p) {
    case '{': ok = members(j, '}', 1); break;
    case '[': ok = members(j, ']', 0); break;
    case '"': ok = string(j); break;
    case 't': ok = lit(j, "true"); break;
    case 'f': ok = lit(j, "false"); break;
    case 'n': ok = lit(j, "null"); break;
    default: ok = number(j);
    }
    j->depth--;
    return ok;
}

int sim_json_valid(const char *text, size_t len) {
    Json j = {text, text + len, 0};
    if (!value(&j)) return 0;
    ws(&j);
    return j.p == j.end;
}
