/*
 * Simulated AscendCL: streams, callbacks and their report threads.
 *
 * As in the Python simulator (runtime/acl/_streams.py): a stream is an in-order task queue carried
 * out by its own device thread. aclmdlExecuteAsync, aclrtMemcpyAsync and aclrtLaunchCallback only
 * enqueue and return. A callback task is handed to the thread subscribed to the stream
 * (aclrtSubscribeReport) and runs only inside that thread's aclrtProcessReport; with
 * ACL_CALLBACK_BLOCK (the only type an Ascend 310 supports) the stream waits for it before its next
 * task. aclrtSynchronizeStream waits for the queue and reports the first device-side failure since
 * the last synchronisation (its message included); it gives up after ACL_SIM_SYNC_TIMEOUT_S seconds
 * (default 60) with 507046 where a real stream would wait forever for a callback nobody processes.
 * A thread is named by its pthread_t (what std::thread::id prints) or its kernel thread id.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

typedef struct Task {
    SimTaskFn fn;
    void *arg;
    void (*free_arg)(void *);
    double queued_at;
    struct Task *next;
} Task;

typedef struct Report {
    aclrtCallback fn;
    void *data;
    int done;
    double ended_at;
    struct Report *next;
} Report;

struct Stream {
    Context *ctx;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    Task *head, *tail;
    int pending, closed;
    aclError error;
    char error_msg[512];
    double ended_at;
    /* guarded by g_reports */
    int subscribed;
    uint64_t subscriber;
    Report *rhead, *rtail;
};

static pthread_mutex_t g_reports = PTHREAD_MUTEX_INITIALIZER; /* subscriptions, callbacks, the registry */
static pthread_cond_t g_reports_cv;
static Stream **g_streams;
static size_t g_nstreams, g_capstreams;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_conds(void) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g_reports_cv, &attr);
    pthread_condattr_destroy(&attr);
}

static struct timespec deadline_in(double seconds) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double t = ts.tv_sec + ts.tv_nsec / 1e9 + seconds;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    return ts;
}

/* ---- the device thread ---- */

static void *device_loop(void *arg) {
    Stream *s = arg;
    char msg[512];
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->head && !s->closed) pthread_cond_wait(&s->cv, &s->mu);
        Task *t = s->head;
        if (t) {
            s->head = t->next;
            if (!s->head) s->tail = NULL;
        }
        double ready = (t && t->queued_at > s->ended_at) ? t->queued_at : s->ended_at;
        pthread_mutex_unlock(&s->mu);
        if (!t) return NULL;
        double ended = ready;
        aclError code = t->fn(t->arg, ready, &ended);
        const char *why = code ? aclGetRecentErrMsg() : NULL;
        snprintf(msg, sizeof(msg), "%s", why ? why : "");
        if (t->free_arg) t->free_arg(t->arg);
        free(t);
        pthread_mutex_lock(&s->mu);
        if (code && !s->error) {
            s->error = code;
            snprintf(s->error_msg, sizeof(s->error_msg), "%s", msg);
        }
        s->ended_at = ended;
        s->pending--;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
}

aclError sim_stream_put(Stream *s, SimTaskFn fn, void *arg, void (*free_arg)(void *)) {
    Task *t = calloc(1, sizeof(Task));
    if (!t) {
        if (free_arg) free_arg(arg);
        return sim_fail(ACL_ERROR_BAD_ALLOC, "stream task: out of memory");
    }
    t->fn = fn;
    t->arg = arg;
    t->free_arg = free_arg;
    t->queued_at = sim_now();
    pthread_mutex_lock(&s->mu);
    if (s->tail) s->tail->next = t;
    else s->head = t;
    s->tail = t;
    s->pending++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return ACL_SUCCESS;
}

static Stream *new_stream(Context *ctx) {
    pthread_once(&g_once, init_conds);
    Stream *s = calloc(1, sizeof(Stream));
    if (!s) return NULL;
    s->ctx = ctx;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &attr);
    pthread_condattr_destroy(&attr);
    if (pthread_create(&s->thread, NULL, device_loop, s) != 0) {
        free(s);
        return NULL;
    }
    pthread_mutex_lock(&g_reports);
    if (g_nstreams == g_capstreams) {
        size_t cap = g_capstreams ? 2 * g_capstreams : 32;
        Stream **grown = realloc(g_streams, cap * sizeof(Stream *));
        if (grown) g_streams = grown, g_capstreams = cap;
    }
    if (g_nstreams < g_capstreams) g_streams[g_nstreams++] = s;
    pthread_mutex_unlock(&g_reports);
    return s;
}

static int registered(const Stream *s) { /* caller holds g_reports */
    for (size_t i = 0; i < g_nstreams; i++)
        if (g_streams[i] == s) return 1;
    return 0;
}

Stream *sim_stream(aclrtStream stream, aclError *code) {
    if (!stream) { /* the current context's default stream */
        Context *ctx = sim_current_context();
        pthread_mutex_lock(&g_sim.lock);
        if (ctx && !ctx->default_stream) ctx->default_stream = new_stream(ctx);
        Stream *s = ctx ? ctx->default_stream : NULL;
        pthread_mutex_unlock(&g_sim.lock);
        if (!s) *code = sim_fail(ACL_ERROR_RT_CONTEXT_NULL, "default stream: no current context");
        return s;
    }
    pthread_mutex_lock(&g_reports);
    int ok = registered(stream);
    pthread_mutex_unlock(&g_reports);
    if (!ok) *code = sim_fail(ACL_ERROR_INVALID_PARAM, "%p is not a live stream", stream);
    return ok ? (Stream *)stream : NULL;
}

/* ---- the API ---- */

aclError aclrtCreateStream(aclrtStream *stream) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault("create_stream");
    if (ret) return ret;
    if (!stream) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtCreateStream: stream is NULL");
    Stream *s = new_stream(sim_current_context());
    if (!s) return sim_fail(ACL_ERROR_RT_NO_STREAM_RESOURCE, "aclrtCreateStream: cannot start a stream thread");
    *stream = s;
    return ACL_SUCCESS;
}

static aclError synchronize(Stream *s) {
    const char *env = getenv("ACL_SIM_SYNC_TIMEOUT_S");
    struct timespec until = deadline_in(env ? atof(env) : 60.0);
    aclError code = ACL_SUCCESS;
    char msg[512] = "";
    pthread_mutex_lock(&s->mu);
    while (s->pending && code == ACL_SUCCESS)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT && s->pending) code = ACL_ERROR_RT_STREAM_SYNC_TIMEOUT;
    if (code == ACL_SUCCESS) {
        code = s->error;
        snprintf(msg, sizeof(msg), "%s", s->error_msg);
        s->error = 0;
    }
    pthread_mutex_unlock(&s->mu);
    if (code == ACL_ERROR_RT_STREAM_SYNC_TIMEOUT) return sim_fail(code, "aclrtSynchronizeStream timed out");
    if (code) sim_set_error(msg[0] ? msg : "a task on the stream failed");
    return code;
}

aclError aclrtSynchronizeStream(aclrtStream stream) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    Stream *s = sim_stream(stream, &ret);
    return s ? synchronize(s) : ret;
}

aclError aclrtSynchronizeDevice(void) {
    aclError ret = sim_ready(1), first = ACL_SUCCESS;
    if (ret) return ret;
    pthread_mutex_lock(&g_reports);
    size_t n = g_nstreams;
    Stream **all = malloc((n ? n : 1) * sizeof(Stream *));
    if (all) memcpy(all, g_streams, n * sizeof(Stream *));
    pthread_mutex_unlock(&g_reports);
    if (!all) return sim_fail(ACL_ERROR_BAD_ALLOC, "aclrtSynchronizeDevice: out of memory");
    for (size_t i = 0; i < n; i++) {
        aclError code = synchronize(all[i]);
        if (code && !first) first = code;
    }
    free(all);
    return first;
}

aclError aclrtDestroyStream(aclrtStream stream) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    if (!stream) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtDestroyStream: stream is NULL");
    Stream *s = sim_stream(stream, &ret);
    if (!s) return ret;
    int stuck = synchronize(s) == ACL_ERROR_RT_STREAM_SYNC_TIMEOUT;
    pthread_mutex_lock(&g_reports);
    for (size_t i = 0; i < g_nstreams; i++)
        if (g_streams[i] == s) g_streams[i] = g_streams[--g_nstreams];
    pthread_mutex_unlock(&g_reports);
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (stuck) { /* its device thread waits for a callback nobody will run: leave it */
        pthread_detach(s->thread);
        return ACL_SUCCESS;
    }
    pthread_join(s->thread, NULL);
    free(s);
    return ACL_SUCCESS;
}

/* ---- callbacks ---- */

static int is_me(uint64_t id) { return id == (uint64_t)pthread_self() || id == (uint64_t)syscall(SYS_gettid); }

aclError aclrtSubscribeReport(uint64_t threadId, aclrtStream stream) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    Stream *s = sim_stream(stream, &ret);
    if (!s) return ret;
    pthread_mutex_lock(&g_reports);
    int taken = s->subscribed;
    if (!taken) s->subscribed = 1, s->subscriber = threadId;
    pthread_cond_broadcast(&g_reports_cv);
    pthread_mutex_unlock(&g_reports);
    if (taken) return sim_fail(ACL_ERROR_REPEAT_SUBSCRIBE, "aclrtSubscribeReport: the stream already has a report thread");
    return ACL_SUCCESS;
}

aclError aclrtUnSubscribeReport(uint64_t threadId, aclrtStream stream) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    Stream *s = sim_stream(stream, &ret);
    int ok = 0;
    pthread_mutex_lock(&g_reports);
    if (s && s->subscribed && s->subscriber == threadId) s->subscribed = 0, ok = 1;
    pthread_cond_broadcast(&g_reports_cv);
    pthread_mutex_unlock(&g_reports);
    if (!ok) return sim_fail(ACL_ERROR_STREAM_NOT_SUBSCRIBE, "aclrtUnSubscribeReport: thread %llu is not subscribed to the stream",
                             (unsigned long long)threadId);
    return ACL_SUCCESS;
}

typedef struct CallbackArg {
    Stream *s;
    aclrtCallback fn;
    void *data;
} CallbackArg;

/* The device-side half of aclrtLaunchCallback: hand the call to the report thread, wait until its
 * aclrtProcessReport has run it (ACL_CALLBACK_BLOCK). */
static aclError callback_task(void *arg, double ready_at, double *ended_at) {
    CallbackArg *c = arg;
    Report *r = calloc(1, sizeof(Report));
    (void)ready_at;
    if (!r) return sim_fail(ACL_ERROR_BAD_ALLOC, "callback: out of memory");
    r->fn = c->fn;
    r->data = c->data;
    pthread_mutex_lock(&g_reports);
    if (c->s->rtail) c->s->rtail->next = r;
    else c->s->rhead = r;
    c->s->rtail = r;
    pthread_cond_broadcast(&g_reports_cv);
    while (!r->done) pthread_cond_wait(&g_reports_cv, &g_reports);
    pthread_mutex_unlock(&g_reports);
    *ended_at = r->ended_at;
    free(r);
    return ACL_SUCCESS;
}

aclError aclrtLaunchCallback(aclrtCallback fn, void *userData, aclrtCallbackBlockType blockType, aclrtStream stream) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault("launch_callback");
    if (ret) return ret;
    Stream *s = sim_stream(stream, &ret);
    if (!s || !fn) return s ? sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtLaunchCallback: fn is NULL") : ret;
    if (blockType != ACL_CALLBACK_BLOCK)
        return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtLaunchCallback: only ACL_CALLBACK_BLOCK on Ascend310");
    pthread_mutex_lock(&g_reports);
    int subscribed = s->subscribed;
    pthread_mutex_unlock(&g_reports);
    if (!subscribed) return sim_fail(ACL_ERROR_STREAM_NOT_SUBSCRIBE, "aclrtLaunchCallback: no report thread subscribed to the stream");
    CallbackArg *c = malloc(sizeof(CallbackArg));
    if (!c) return sim_fail(ACL_ERROR_BAD_ALLOC, "aclrtLaunchCallback: out of memory");
    c->s = s;
    c->fn = fn;
    c->data = userData;
    return sim_stream_put(s, callback_task, c, free);
}

static Report *take_report(int *subscribed) { /* caller holds g_reports */
    *subscribed = 0;
    for (size_t i = 0; i < g_nstreams; i++) {
        Stream *s = g_streams[i];
        if (!s->subscribed || !is_me(s->subscriber)) continue;
        *subscribed = 1;
        Report *r = s->rhead;
        if (r) {
            s->rhead = r->next;
            if (!s->rhead) s->rtail = NULL;
            return r;
        }
    }
    return NULL;
}

aclError aclrtProcessReport(int32_t timeout) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    pthread_once(&g_once, init_conds);
    struct timespec until = deadline_in(timeout < 0 ? 0 : timeout / 1000.0);
    int subscribed = 0;
    pthread_mutex_lock(&g_reports);
    Report *r = take_report(&subscribed);
    while (!r) {
        if (timeout < 0) pthread_cond_wait(&g_reports_cv, &g_reports);
        else if (pthread_cond_timedwait(&g_reports_cv, &g_reports, &until) == ETIMEDOUT) {
            r = take_report(&subscribed);
            break;
        }
        r = take_report(&subscribed);
    }
    pthread_mutex_unlock(&g_reports);
    if (!r) {
        if (!subscribed) return sim_fail(ACL_ERROR_THREAD_NOT_SUBSCRIBE, "aclrtProcessReport: no stream is subscribed to this thread");
        return sim_fail(ACL_ERROR_WAIT_CALLBACK_TIMEOUT, "aclrtProcessReport: no callback within %d ms", timeout);
    }
    r->fn(r->data);
    pthread_mutex_lock(&g_reports);
    r->done = 1;
    r->ended_at = sim_now();
    pthread_cond_broadcast(&g_reports_cv);
    pthread_mutex_unlock(&g_reports);
    return ACL_SUCCESS;
}
