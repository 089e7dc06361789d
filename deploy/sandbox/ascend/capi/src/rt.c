/*
 * Simulated AscendCL: devices and contexts.
 *
 * Contexts are per thread, as in the Python simulator: aclrtSetDevice gives the calling thread the
 * device's default context, aclrtCreateContext makes the new context current in the calling thread,
 * aclrtSetCurrentContext binds one; a call that needs a context from a thread with none returns
 * ACL_ERROR_RT_CONTEXT_NULL (107002). Context structs are never freed (a destroyed one is marked
 * dead), so a stale pointer is recognised, never dereferenced after free.
 */
#include <stdlib.h>

#include "internal.h"

static __thread Context *t_ctx;
static Context **g_contexts; /* every context ever made: what a handle from the app is checked against */
static size_t g_ncontexts, g_capcontexts;

static Context *new_context(int device, int is_default) {
    Context *ctx = calloc(1, sizeof(Context));
    if (!ctx) return NULL;
    ctx->device = device;
    ctx->is_default = is_default;
    ctx->live = 1;
    if (g_ncontexts == g_capcontexts) {
        size_t cap = g_capcontexts ? 2 * g_capcontexts : 64;
        Context **grown = realloc(g_contexts, cap * sizeof(Context *));
        if (!grown) {
            free(ctx);
            return NULL;
        }
        g_contexts = grown;
        g_capcontexts = cap;
    }
    g_contexts[g_ncontexts++] = ctx;
    return ctx;
}

/* Whether ``ctx`` is a live context of ours (caller holds g_sim.lock or accepts a racy answer). */
static int known_live(const Context *ctx) {
    for (size_t i = 0; i < g_ncontexts; i++)
        if (g_contexts[i] == ctx) return ctx->live;
    return 0;
}

int sim_context_live(const Context *ctx) {
    pthread_mutex_lock(&g_sim.lock);
    int live = ctx && known_live(ctx);
    pthread_mutex_unlock(&g_sim.lock);
    return live;
}

Context *sim_current_context(void) { return (t_ctx && t_ctx->live) ? t_ctx : NULL; }

void sim_set_current_context(Context *ctx) { t_ctx = ctx; }

aclError aclrtSetDevice(int32_t deviceId) {
    aclError ret = sim_ready(0);
    if (!ret) ret = sim_fault("set_device");
    if (ret) return ret;
    if (deviceId < 0 || deviceId >= g_sim.device_count)
        return sim_fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtSetDevice: no device %d", deviceId);
    pthread_mutex_lock(&g_sim.lock);
    Context *ctx = g_sim.devices[deviceId];
    if (!ctx) ctx = g_sim.devices[deviceId] = new_context(deviceId, 1);
    pthread_mutex_unlock(&g_sim.lock);
    if (!ctx) return sim_fail(ACL_ERROR_BAD_ALLOC, "aclrtSetDevice: out of memory");
    t_ctx = ctx;
    return ACL_SUCCESS;
}

aclError aclrtResetDevice(int32_t deviceId) {
    aclError ret = sim_ready(0);
    if (ret) return ret;
    Context *ctx = NULL;
    pthread_mutex_lock(&g_sim.lock);
    if (deviceId >= 0 && deviceId < g_sim.device_count) {
        ctx = g_sim.devices[deviceId];
        g_sim.devices[deviceId] = NULL;
        if (ctx) ctx->live = 0;
    }
    pthread_mutex_unlock(&g_sim.lock);
    if (!ctx) return sim_fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtResetDevice: device %d is not set", deviceId);
    return ACL_SUCCESS;
}

aclError aclrtGetDevice(int32_t *deviceId) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    if (!deviceId) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtGetDevice: deviceId is NULL");
    *deviceId = sim_current_context()->device;
    return ACL_SUCCESS;
}

aclError aclrtCreateContext(aclrtContext *context, int32_t deviceId) {
    aclError ret = sim_ready(0);
    if (ret) return ret;
    if (!context) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtCreateContext: context is NULL");
    pthread_mutex_lock(&g_sim.lock);
    int set = deviceId >= 0 && deviceId < g_sim.device_count && g_sim.devices[deviceId];
    Context *ctx = set ? new_context(deviceId, 0) : NULL;
    pthread_mutex_unlock(&g_sim.lock);
    if (!set) return sim_fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtCreateContext: aclrtSetDevice(%d) first", deviceId);
    if (!ctx) return sim_fail(ACL_ERROR_BAD_ALLOC, "aclrtCreateContext: out of memory");
    t_ctx = ctx;
    *context = ctx;
    return ACL_SUCCESS;
}

aclError aclrtDestroyContext(aclrtContext context) {
    aclError ret = sim_ready(0);
    if (ret) return ret;
    Context *ctx = context;
    pthread_mutex_lock(&g_sim.lock);
    int ok = ctx && known_live(ctx) && !ctx->is_default;
    if (ok) ctx->live = 0;
    pthread_mutex_unlock(&g_sim.lock);
    if (!ok) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtDestroyContext: %p is not a context made by aclrtCreateContext", context);
    if (t_ctx == ctx) t_ctx = NULL;
    return ACL_SUCCESS;
}

aclError aclrtSetCurrentContext(aclrtContext context) {
    aclError ret = sim_ready(0);
    if (!ret) ret = sim_fault("set_context");
    if (ret) return ret;
    if (!sim_context_live(context))
        return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtSetCurrentContext: %p is not a live context", context);
    t_ctx = context;
    return ACL_SUCCESS;
}

aclError aclrtGetCurrentContext(aclrtContext *context) {
    if (!context) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtGetCurrentContext: context is NULL");
    Context *ctx = sim_current_context();
    if (!ctx) return sim_fail(ACL_ERROR_RT_CONTEXT_NULL, "aclrtGetCurrentContext: no current context");
    *context = ctx;
    return ACL_SUCCESS;
}
