/*
 * Simulated AscendCL: data buffers, datasets and model descriptions (host-side objects: no context
 * needed, as in the Python simulator). A handle carries a magic word, so a wrong or destroyed handle
 * is usually caught (100000 / 0 / NULL) rather than crashing; getters that return a bare value give
 * 0 / NULL / "" / ACL_DT_UNDEFINED for a bad description or index. A description keeps its model
 * alive (a reference), so it stays readable after aclmdlUnload.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAGIC_BUFFER 0x42554631u
#define MAGIC_DATASET 0x44535431u
#define MAGIC_DESC 0x44455331u
#define MAGIC_DEAD 0xdeadbeefu

struct aclDataBuffer {
    uint32_t magic;
    void *data;
    size_t size;
};

struct aclmdlDataset {
    uint32_t magic;
    size_t n, cap;
    aclDataBuffer **bufs;
};

struct aclmdlDesc {
    uint32_t magic;
    Model *model;
};

static int buffer_ok(const aclDataBuffer *b) { return b && b->magic == MAGIC_BUFFER; }
static int dataset_ok(const aclmdlDataset *d) { return d && d->magic == MAGIC_DATASET; }

/* ---- data buffers ---- */

aclDataBuffer *aclCreateDataBuffer(void *data, size_t size) {
    aclDataBuffer *b = malloc(sizeof(aclDataBuffer));
    if (!b) return NULL;
    b->magic = MAGIC_BUFFER;
    b->data = data;
    b->size = size;
    return b;
}

aclError aclDestroyDataBuffer(const aclDataBuffer *dataBuffer) {
    if (!buffer_ok(dataBuffer)) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclDestroyDataBuffer: bad data buffer %p", (const void *)dataBuffer);
    ((aclDataBuffer *)dataBuffer)->magic = MAGIC_DEAD;
    free((void *)dataBuffer);
    return ACL_SUCCESS;
}

aclError aclUpdateDataBuffer(aclDataBuffer *dataBuffer, void *data, size_t size) {
    if (!buffer_ok(dataBuffer)) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclUpdateDataBuffer: bad data buffer %p", (void *)dataBuffer);
    dataBuffer->data = data;
    dataBuffer->size = size;
    return ACL_SUCCESS;
}

void *aclGetDataBufferAddr(const aclDataBuffer *dataBuffer) { return buffer_ok(dataBuffer) ? dataBuffer->data : NULL; }
size_t aclGetDataBufferSizeV2(const aclDataBuffer *dataBuffer) { return buffer_ok(dataBuffer) ? dataBuffer->size : 0; }
uint32_t aclGetDataBufferSize(const aclDataBuffer *dataBuffer) { return (uint32_t)aclGetDataBufferSizeV2(dataBuffer); }

size_t aclDataTypeSize(aclDataType dataType) {
    switch (dataType) {
    case ACL_INT8: case ACL_UINT8: case ACL_BOOL: return 1;
    case ACL_FLOAT16: case ACL_INT16: case ACL_UINT16: case ACL_BF16: return 2;
    case ACL_FLOAT: case ACL_INT32: case ACL_UINT32: return 4;
    case ACL_INT64: case ACL_UINT64: case ACL_DOUBLE: case ACL_COMPLEX64: return 8;
    case ACL_COMPLEX128: return 16;
    default: return 0;
    }
}

/* ---- datasets ---- */

aclmdlDataset *aclmdlCreateDataset(void) {
    aclmdlDataset *d = calloc(1, sizeof(aclmdlDataset));
    if (d) d->magic = MAGIC_DATASET;
    return d;
}

/* Destroys the dataset only: its data buffers (and their memory) stay the caller's. */
aclError aclmdlDestroyDataset(const aclmdlDataset *dataset) {
    if (!dataset_ok(dataset)) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlDestroyDataset: bad dataset %p", (const void *)dataset);
    aclmdlDataset *d = (aclmdlDataset *)dataset;
    d->magic = MAGIC_DEAD;
    free(d->bufs);
    free(d);
    return ACL_SUCCESS;
}

aclError aclmdlAddDatasetBuffer(aclmdlDataset *dataset, aclDataBuffer *dataBuffer) {
    aclError ret = sim_fault("add_dataset_buffer");
    if (ret) return ret;
    if (!dataset_ok(dataset) || !buffer_ok(dataBuffer))
        return sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlAddDatasetBuffer: bad dataset or data buffer");
    if (dataset->n == dataset->cap) {
        size_t cap = dataset->cap ? 2 * dataset->cap : 4;
        aclDataBuffer **grown = realloc(dataset->bufs, cap * sizeof(aclDataBuffer *));
        if (!grown) return sim_fail(ACL_ERROR_BAD_ALLOC, "aclmdlAddDatasetBuffer: out of memory");
        dataset->bufs = grown;
        dataset->cap = cap;
    }
    dataset->bufs[dataset->n++] = dataBuffer;
    return ACL_SUCCESS;
}

size_t aclmdlGetDatasetNumBuffers(const aclmdlDataset *dataset) { return dataset_ok(dataset) ? dataset->n : 0; }

aclDataBuffer *aclmdlGetDatasetBuffer(const aclmdlDataset *dataset, size_t index) {
    return (dataset_ok(dataset) && index < dataset->n) ? dataset->bufs[index] : NULL;
}

/* The dataset's buffers as (address, size) pairs, or -1 when the dataset or one of them is bad. */
SIM_HIDDEN long sim_dataset_buffers(const aclmdlDataset *dataset, void **ptrs, size_t *sizes, size_t max) {
    if (!dataset_ok(dataset)) return -1;
    for (size_t i = 0; i < dataset->n && i < max; i++) {
        if (!buffer_ok(dataset->bufs[i])) return -1;
        ptrs[i] = dataset->bufs[i]->data;
        sizes[i] = dataset->bufs[i]->size;
    }
    return (long)dataset->n;
}

/* ---- model descriptions ---- */

aclmdlDesc *aclmdlCreateDesc(void) {
    aclmdlDesc *d = calloc(1, sizeof(aclmdlDesc));
    if (d) d->magic = MAGIC_DESC;
    return d;
}

aclError aclmdlDestroyDesc(aclmdlDesc *modelDesc) {
    if (!modelDesc || modelDesc->magic != MAGIC_DESC) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlDestroyDesc: bad desc");
    modelDesc->magic = MAGIC_DEAD;
    if (modelDesc->model) sim_model_release(modelDesc->model);
    free(modelDesc);
    return ACL_SUCCESS;
}

SIM_HIDDEN Model *sim_model_get(uint32_t id); /* mdl.c: a new reference, or NULL */

aclError aclmdlGetDesc(aclmdlDesc *modelDesc, uint32_t modelId) {
    if (!modelDesc || modelDesc->magic != MAGIC_DESC) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlGetDesc: bad desc");
    Model *m = sim_model_get(modelId);
    if (!m) return sim_fail(ACL_ERROR_INVALID_MODEL_ID, "aclmdlGetDesc: no model %u", modelId);
    if (modelDesc->model) sim_model_release(modelDesc->model);
    modelDesc->model = m;
    return ACL_SUCCESS;
}

static const Model *desc_model(const aclmdlDesc *d) {
    return (d && d->magic == MAGIC_DESC) ? d->model : NULL;
}

static const IoDesc *io(const aclmdlDesc *d, size_t index, int out) {
    const Model *m = desc_model(d);
    if (!m) return NULL;
    if (out) return index < m->n_out ? &m->out[index] : NULL;
    return index < m->n_in ? &m->in[index] : NULL;
}

size_t aclmdlGetNumInputs(aclmdlDesc *modelDesc) { return desc_model(modelDesc) ? desc_model(modelDesc)->n_in : 0; }
size_t aclmdlGetNumOutputs(aclmdlDesc *modelDesc) { return desc_model(modelDesc) ? desc_model(modelDesc)->n_out : 0; }
size_t aclmdlGetInputSizeByIndex(aclmdlDesc *modelDesc, size_t index) { const IoDesc *x = io(modelDesc, index, 0); return x ? x->size : 0; }
size_t aclmdlGetOutputSizeByIndex(aclmdlDesc *modelDesc, size_t index) { const IoDesc *x = io(modelDesc, index, 1); return x ? x->size : 0; }
const char *aclmdlGetInputNameByIndex(const aclmdlDesc *modelDesc, size_t index) { const IoDesc *x = io(modelDesc, index, 0); return x ? x->name : ""; }
const char *aclmdlGetOutputNameByIndex(const aclmdlDesc *modelDesc, size_t index) { const IoDesc *x = io(modelDesc, index, 1); return x ? x->name : ""; }
aclFormat aclmdlGetInputFormat(const aclmdlDesc *modelDesc, size_t index) { const IoDesc *x = io(modelDesc, index, 0); return x ? (aclFormat)x->format : ACL_FORMAT_UNDEFINED; }
aclFormat aclmdlGetOutputFormat(const aclmdlDesc *modelDesc, size_t index) { const IoDesc *x = io(modelDesc, index, 1); return x ? (aclFormat)x->format : ACL_FORMAT_UNDEFINED; }
aclDataType aclmdlGetInputDataType(const aclmdlDesc *modelDesc, size_t index) { const IoDesc *x = io(modelDesc, index, 0); return x ? (aclDataType)x->dtype : ACL_DT_UNDEFINED; }
aclDataType aclmdlGetOutputDataType(const aclmdlDesc *modelDesc, size_t index) { const IoDesc *x = io(modelDesc, index, 1); return x ? (aclDataType)x->dtype : ACL_DT_UNDEFINED; }

static aclError dims_of(const aclmdlDesc *d, size_t index, aclmdlIODims *dims, int out, const char *api) {
    const IoDesc *x = io(d, index, out);
    if (!x || !dims) return sim_fail(ACL_ERROR_INVALID_PARAM, "%s: bad desc or index %zu", api, index);
    memset(dims, 0, sizeof(*dims));
    memcpy(dims->name, x->name, sizeof(dims->name));
    dims->dimCount = x->ndims;
    memcpy(dims->dims, x->dims, x->ndims * sizeof(int64_t));
    const Model *m = desc_model(d);
    if (out && m->n_gears && x->ndims && dims->dims[0] == -1) /* outputs at the current gear, else the largest */
        dims->dims[0] = (int64_t)(m->cur_batch ? m->cur_batch : m->max_gear);
    return ACL_SUCCESS;
}

aclError aclmdlGetInputDims(const aclmdlDesc *modelDesc, size_t index, aclmdlIODims *dims) { return dims_of(modelDesc, index, dims, 0, "aclmdlGetInputDims"); }
aclError aclmdlGetOutputDims(const aclmdlDesc *modelDesc, size_t index, aclmdlIODims *dims) { return dims_of(modelDesc, index, dims, 1, "aclmdlGetOutputDims"); }
aclError aclmdlGetCurOutputDims(const aclmdlDesc *modelDesc, size_t index, aclmdlIODims *dims) { return dims_of(modelDesc, index, dims, 1, "aclmdlGetCurOutputDims"); }

static aclError index_by_name(const aclmdlDesc *d, const char *name, size_t *index, int out, const char *api) {
    const Model *m = desc_model(d);
    if (!m || !name || !index) return sim_fail(ACL_ERROR_INVALID_PARAM, "%s: bad desc, name or index", api);
    size_t n = out ? m->n_out : m->n_in;
    for (size_t i = 0; i < n; i++)
        if (strcmp((out ? m->out : m->in)[i].name, name) == 0) return *index = i, ACL_SUCCESS;
    return sim_fail(ACL_ERROR_INVALID_PARAM, "%s: the model has no %sput named %s", api, out ? "out" : "in", name);
}

aclError aclmdlGetInputIndexByName(const aclmdlDesc *modelDesc, const char *name, size_t *index) { return index_by_name(modelDesc, name, index, 0, "aclmdlGetInputIndexByName"); }
aclError aclmdlGetOutputIndexByName(const aclmdlDesc *modelDesc, const char *name, size_t *index) { return index_by_name(modelDesc, name, index, 1, "aclmdlGetOutputIndexByName"); }

aclError aclmdlGetDynamicBatch(const aclmdlDesc *modelDesc, aclmdlBatch *batch) {
    const Model *m = desc_model(modelDesc);
    if (!m || !batch) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclmdlGetDynamicBatch: bad desc");
    memset(batch, 0, sizeof(*batch));
    batch->batchCount = m->n_gears;
    memcpy(batch->batch, m->gears, m->n_gears * sizeof(uint64_t));
    return ACL_SUCCESS;
}
