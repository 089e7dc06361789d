/*
 * The simulated AscendCL C library's insides (atlas-deploy sandbox boards; NOT Huawei's runtime).
 * See ../README.md of deploy/sandbox/ascend for the design: the C API's state lives here, in C;
 * model parsing and execution are the Python simulator's (py.c embeds the board's Python).
 */
#ifndef ACL_SIM_INTERNAL_H_
#define ACL_SIM_INTERNAL_H_

#include <pthread.h>
#include <stdint.h>

#include "acl/acl.h"

#define SIM_HIDDEN __attribute__((visibility("hidden")))

/* ---- core.c: process state, errors, faults ---- */
typedef struct Context Context;
typedef struct Stream Stream;
typedef struct Model Model;

struct Context {
    int device;
    int is_default;
    int live;
    Stream *default_stream; /* created on first use of a NULL stream */
};

typedef struct SimState {
    pthread_mutex_t lock;
    int initialised, finalized;
    aclrtRunMode run_mode;
    int device_count;
    char soc[64];
    Context *devices[64]; /* device id -> default context */
} SimState;

SIM_HIDDEN extern SimState g_sim;

SIM_HIDDEN aclError sim_fail(aclError code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
SIM_HIDDEN void sim_set_error(const char *msg);
SIM_HIDDEN aclError sim_fault(const char *name);
SIM_HIDDEN aclError sim_ready(int need_context);
SIM_HIDDEN Context *sim_current_context(void);
SIM_HIDDEN void sim_set_current_context(Context *ctx);
SIM_HIDDEN int sim_context_live(const Context *ctx);
SIM_HIDDEN double sim_now(void); /* CLOCK_MONOTONIC seconds: Python's time.monotonic() */
SIM_HIDDEN int sim_json_valid(const char *text, size_t len);

/* ---- memory.c: device memory (real RAM; unaddressable shadows in ACL_HOST mode) ---- */
/* Where [ptr, ptr+count) lies: 1 = inside one device allocation (*where = the library's address
 * of ptr), 0 = not device memory at all, -1 = starts in a device allocation but runs past its end. */
SIM_HIDDEN int sim_device_range(const void *ptr, size_t count, char **where);

/* ---- stream.c ---- */
typedef aclError (*SimTaskFn)(void *arg, double ready_at, double *ended_at);
SIM_HIDDEN Stream *sim_stream(aclrtStream stream, aclError *code); /* live stream or NULL (code set) */
SIM_HIDDEN aclError sim_stream_put(Stream *s, SimTaskFn fn, void *arg, void (*free_arg)(void *));

/* ---- py.c: the embedded Python (the simulator's model execution) ---- */
typedef struct PySim PySim;
typedef struct IoDesc {
    char name[ACL_MAX_TENSOR_NAME_LEN];
    size_t size;
    int dtype, format;
    size_t ndims;
    int64_t dims[ACL_MAX_DIM_CNT];
} IoDesc;

struct Model {
    uint32_t id;
    int refs; /* the model table's, every desc's and every queued execution's */
    void *py; /* the Python Model (a PyObject *) */
    size_t n_in, n_out;
    IoDesc *in, *out;
    size_t n_gears;
    uint64_t gears[ACL_MAX_BATCH_NUM];
    uint64_t max_gear;
    size_t work_size, weight_size; /* what aclmdlQuerySize reports */
    uint64_t cur_batch; /* the last aclmdlSetDynamicBatchSize, 0 = none */
};

SIM_HIDDEN aclError sim_py_query(const void *data, size_t size, size_t *work, size_t *weight);
SIM_HIDDEN aclError sim_py_load(const void *data, size_t size, Model *model);
SIM_HIDDEN aclError sim_py_execute(Model *m, char **ins, size_t *in_sizes, char **outs, size_t *out_sizes,
                                   double ready_at, double *ended_at);
SIM_HIDDEN void sim_py_drop(Model *m);

/* ---- mdl.c ---- */
SIM_HIDDEN void sim_model_release(Model *m);

#endif /* ACL_SIM_INTERNAL_H_ */
