/*
 * Simulated AscendCL: loading, querying, unloading and executing models.
 *
 * The model file is the simulated .om the simulated atc writes; parsing it and running it are the
 * Python simulator's own code (py.c). Checks are the Python runtime's: 100011 for an unknown model
 * id, 100000 for a bad dataset, 100017 / 100018 when the datasets do not match the model's inputs /
 * outputs (count, a buffer that is not device memory or too small), 100003 for an unreadable file,
 * 100013 for a file that is not a valid simulated model for this soc. An asynchronous execution
 * takes the buffer addresses when it is queued and the data when its stream gets to it; a failure
 * on the stream is reported by aclrtSynchronizeStream. Model ids start at 1 and are never reused.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_IO 64

SIM_HIDDEN long sim_dataset_buffers(const aclmdlDataset *dataset, void **ptrs, size_t *sizes, size_t max);

static pthread_mutex_t g_models_lock = PTHREAD_MUTEX_INITIALIZER;
static Model **g_models; /* index = id - 1; NULL once unloaded */
static size_t g_nmodels;

Model *sim_model_get(uint32_t id) {
    Model *m = NULL;
    pthread_mutex_lock(&g_models_lock);
    if (id >= 1 && id <= g_nmodels && g_models[id - 1]) {
        m = g_models[id - 1];
        m->refs++;
    }
    pthread_mutex_unlock(&g_models_lock);
    return m;
}

void sim_model_release(Model *m) {
    pthread_mutex_lock(&g_models_lock);
    int last = --m->refs == 0;
    pthread_mutex_unlock(&g_models_lock);
    if (!last) return;
    sim_py_drop(m);
    free(m->in);
    free(m->out);
    free(m);
}

static aclError register_model(Model *m, uint32_t *modelId) {
    pthread_mutex_lock(&g_models_lock);
    Model **grown = realloc(g_models, (g_nmodels + 1) * sizeof(Model *));
    if (grown) {
        g_models = grown;
        g_models[g_nmodels++] = m;
        m->id = (uint32_t)g_nmodels;
        m->refs = 1;
    }
    pthread_mutex_unlock(&g_models_lock);
    if (!grown) {
        sim_py_drop(m);
        free(m);
        return sim_fail(ACL_ERROR_BAD_ALLOC, "load model: out of memory");
    }
    *modelId = m->id;
    return ACL_SUCCESS;
}

/* The whole file in a malloc'd buffer, or NULL with the error recorded (100003). */
static char *read_file(const char *path, size_t *size, const char *api) {
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) {
        sim_fail(ACL_ERROR_INVALID_FILE, "%s: cannot read %s: %s", api, path ? path : "(null)", path ? strerror(errno) : "NULL path");
        return NULL;
    }
    char *data = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        data = malloc(len ? (size_t)len : 1);
    if (data && fread(data, 1, (size_t)len, f) != (size_t)len) {
        free(data);
        data = NULL;
    }
    fclose(f);
    if (!data) sim_fail(ACL_ERROR_INVALID_FILE, "%s: cannot read %s", api, path);
    *size = data ? (size_t)len : 0;
    return data;
}

/* Where model bytes given by pointer are, for the library (a device range translated). */
static const void *model_bytes(const void *model, size_t size) {
    char *where = NULL;
    return sim_device_range(model, size, &where) == 1 ? where : model;
}

static aclError load_bytes(const void *data, size_t size, uint32_t *modelId) {
    Model *m = calloc(1, sizeof(Model));
    if (!m) return sim_fail(ACL_ERROR_BAD_ALLOC, "load model: out of memory");
    aclError ret = sim_py_load(data, size, m);
    if (ret) {
        free(m);
        return ret;
    }
    return register_model(m, modelId);
}

/* User-managed work/weight memory: NULL (the runtime manages it) or enough device memory. */
static aclError check_mem(uint32_t id, void *work, size_t workSize, void *weight, size_t weightSize, const char *api) {
    Model *m = sim_model_get(id);
    size_t need_work = m ? m->work_size : 0, need_weight = m ? m->weight_size : 0;
    if (m) sim_model_release(m);
    if (work && (workSize < need_work || sim_device_range(work, workSize, NULL) != 1))
        return sim_fail(ACL_ERROR_INVALID_PARAM, "%s: workPtr is not %zu bytes of device memory (workSize %zu)", api, need_work, workSize);
    if (weight && (weightSize < need_weight || sim_device_range(weight, weightSize, NULL) != 1))
        return sim_fail(ACL_ERROR_INVALID_PARAM, "%s: weightPtr is not %zu bytes of device memory (weightSize %zu)", api, need_weight,
                        weightSize);
    return ACL_SUCCESS;
}

static aclError load(const char *api, const char *fault, const char *path, const void *model, size_t modelSize,
                     uint32_t *modelId, void *work, size_t workSize, void *weight, size_t weightSize) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault(fault);
    if (ret) return ret;
    if (!modelId || (!path && (!model || !modelSize))) return sim_fail(ACL_ERROR_INVALID_PARAM, "%s: NULL argument", api);
    size_t size = modelSize;
    char *data = path ? read_file(path, &size, api) : NULL;
    if (path && !data) return ACL_ERROR_INVALID_FILE;
    ret = load_bytes(data ? data : model_bytes(model, modelSize), size, modelId);
    free(data);
    if (ret) return ret;
    ret = check_mem(*modelId, work, workSize, weight, weightSize, api);
    if (ret) aclmdlUnload(*modelId); /* the reason stays the recorded one */
    return ret;
}

aclError aclmdlLoadFromFile(const char *modelPath, uint32_t *modelId) {
    return load("aclmdlLoadFromFile", "load_from_file", modelPath ? modelPath : "", NULL, 0, modelId, NULL, 0, NULL, 0);
}

aclError aclmdlLoadFromFileWithMem(const char *modelPath, uint32_t *modelId, void *workPtr, size_t workSize, void *weightPtr,
                                   size_t weightSize) {
    return load("aclmdlLoadFromFileWithMem", "load_from_file", modelPath ? modelPath : "", NULL, 0, modelId, workPtr, workSize,
                weightPtr, weightSize);
}

aclError aclmdlLoadFromMem(const void *model, size_t modelSize, uint32_t *modelId) {
    return load("aclmdlLoadFromMem", "load_from_mem", NULL, model, modelSize, modelId, NULL, 0, NULL, 0);
}

aclError aclmdlLoadFromMemWithMem(const void *model, size_t modelSize, uint32_t *modelId, void *workPtr, size_t workSize,
                                  void *weightPtr, size_t weightSize) {
    return load("aclmdlLoadFromMemWithMem", "load_from_mem", NULL, model, modelSize, modelId, workPtr, workSize, weightPtr,
                weightSize);
}

aclError aclmdlQuerySize(const char *fileName, size_t *workSize, size_t *weightSize) {
    aclError ret = sim_ready(0);
    if (ret) return ret;
    if (!workSize || !weightSize) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlQuerySize: NULL size pointer");
    size_t size = 0;
    char *data = read_file(fileName, &size, "aclmdlQuerySize");
    if (!data) return ACL_ERROR_INVALID_FILE;
    ret = sim_py_query(data, size, workSize, weightSize);
    free(data);
    return ret;
}

aclError aclmdlQuerySizeFromMem(const void *model, size_t modelSize, size_t *workSize, size_t *weightSize) {
    aclError ret = sim_ready(0);
    if (ret) return ret;
    if (!model || !modelSize || !workSize || !weightSize) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlQuerySizeFromMem: NULL argument");
    return sim_py_query(model_bytes(model, modelSize), modelSize, workSize, weightSize);
}

aclError aclmdlUnload(uint32_t modelId) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    Model *m = NULL;
    pthread_mutex_lock(&g_models_lock);
    if (modelId >= 1 && modelId <= g_nmodels) {
        m = g_models[modelId - 1];
        g_models[modelId - 1] = NULL;
    }
    pthread_mutex_unlock(&g_models_lock);
    if (!m) return sim_fail(ACL_ERROR_INVALID_MODEL_ID, "aclmdlUnload: no model %u", modelId);
    sim_model_release(m);
    return ACL_SUCCESS;
}

aclError aclmdlSetDynamicBatchSize(uint32_t modelId, aclmdlDataset *dataset, size_t index, uint64_t batchSize) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    void *ptrs[MAX_IO];
    size_t sizes[MAX_IO];
    long n = sim_dataset_buffers(dataset, ptrs, sizes, MAX_IO);
    Model *m = sim_model_get(modelId);
    if (!m || n < 0) {
        if (m) sim_model_release(m);
        return sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlSetDynamicBatchSize: bad model or dataset");
    }
    int gear = 0;
    for (size_t i = 0; i < m->n_gears; i++) gear |= m->gears[i] == batchSize;
    char *where = NULL;
    if (!m->n_gears) ret = sim_fail(ACL_ERROR_MODEL_NOT_DYNAMIC, "aclmdlSetDynamicBatchSize: the model has no dynamic batch");
    else if (!gear || index >= (size_t)n || index >= MAX_IO)
        ret = sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlSetDynamicBatchSize: batch %llu is not a gear, or bad index %zu",
                       (unsigned long long)batchSize, index);
    else if (sizes[index] < 8 || sim_device_range(ptrs[index], 8, &where) != 1)
        ret = sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlSetDynamicBatchSize: input %zu is not 8 bytes of device memory", index);
    if (!ret) {
        int64_t value = (int64_t)batchSize;
        memcpy(where, &value, sizeof(value));
        m->cur_batch = batchSize;
    }
    sim_model_release(m);
    return ret;
}

/* ---- execution ---- */

typedef struct Run {
    Model *model;
    size_t n_in, n_out;
    void *in[MAX_IO], *out[MAX_IO];
    size_t in_size[MAX_IO], out_size[MAX_IO];
} Run;

/* Look the model and datasets up (a reference to the model in run->model), or fail as the Python
 * runtime does. */
static aclError prepare(Run *run, uint32_t modelId, const aclmdlDataset *input, const aclmdlDataset *output, const char *api) {
    long n_in = sim_dataset_buffers(input, run->in, run->in_size, MAX_IO);
    long n_out = sim_dataset_buffers(output, run->out, run->out_size, MAX_IO);
    Model *m = sim_model_get(modelId);
    if (!m) return sim_fail(ACL_ERROR_INVALID_MODEL_ID, "%s: no model %u", api, modelId);
    aclError ret = ACL_SUCCESS;
    if (n_in < 0 || n_out < 0) ret = sim_fail(ACL_ERROR_INVALID_PARAM, "%s: bad input or output dataset", api);
    else if (n_in > MAX_IO || n_out > MAX_IO) ret = sim_fail(ACL_ERROR_INVALID_PARAM, "%s: more than %d buffers", api, MAX_IO);
    else if ((size_t)n_in != m->n_in)
        ret = sim_fail(ACL_ERROR_MODEL_INPUT_NOT_MATCH, "%s: the model has %zu inputs, the dataset %ld", api, m->n_in, n_in);
    else if ((size_t)n_out != m->n_out)
        ret = sim_fail(ACL_ERROR_MODEL_OUTPUT_NOT_MATCH, "%s: the model has %zu outputs, the dataset %ld", api, m->n_out, n_out);
    if (ret) {
        sim_model_release(m);
        return ret;
    }
    run->model = m;
    run->n_in = (size_t)n_in;
    run->n_out = (size_t)n_out;
    return ACL_SUCCESS;
}

/* The buffers as the library reaches them: NULL where a buffer is not device memory. */
static aclError run_model(Run *run, double ready_at, double *ended_at) {
    char *ins[MAX_IO], *outs[MAX_IO];
    for (size_t i = 0; i < run->n_in; i++)
        if (sim_device_range(run->in[i], run->in_size[i], &ins[i]) != 1) ins[i] = NULL;
    for (size_t i = 0; i < run->n_out; i++)
        if (sim_device_range(run->out[i], run->out_size[i], &outs[i]) != 1) outs[i] = NULL;
    return sim_py_execute(run->model, ins, run->in_size, outs, run->out_size, ready_at, ended_at);
}

aclError aclmdlExecute(uint32_t modelId, const aclmdlDataset *input, aclmdlDataset *output) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault("execute");
    if (ret) return ret;
    Run run;
    ret = prepare(&run, modelId, input, output, "aclmdlExecute");
    if (ret) return ret;
    double ended = 0;
    ret = run_model(&run, -1.0, &ended);
    sim_model_release(run.model);
    return ret;
}

static aclError run_task(void *arg, double ready_at, double *ended_at) { return run_model(arg, ready_at, ended_at); }

static void free_run(void *arg) {
    Run *run = arg;
    sim_model_release(run->model);
    free(run);
}

aclError aclmdlExecuteAsync(uint32_t modelId, const aclmdlDataset *input, aclmdlDataset *output, aclrtStream stream) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault("execute_async");
    if (ret) return ret;
    Stream *s = sim_stream(stream, &ret);
    if (!s) return ret;
    Run *run = malloc(sizeof(Run));
    if (!run) return sim_fail(ACL_ERROR_BAD_ALLOC, "aclmdlExecuteAsync: out of memory");
    ret = prepare(run, modelId, input, output, "aclmdlExecuteAsync");
    if (ret) {
        free(run);
        return ret;
    }
    return sim_stream_put(s, run_task, run, free_run);
}
