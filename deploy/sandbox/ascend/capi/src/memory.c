/*
 * Simulated AscendCL: memory.
 *
 * ACL_DEVICE run mode (the default, what a DK's control CPU sees): device memory is the board's
 * RAM. aclrtMalloc returns a real address the app may read and write directly (the samples fread
 * into it and read outputs from it); the library hands the same bytes to the model, no copy.
 * ACL_HOST run mode (ACL_SIM_RUN_MODE=host, an app on a server with a PCIe card): device memory is a
 * memfd mapped twice, PROT_NONE at the address the app gets (touching it crashes, as on a real host)
 * and read-write at a second address only the library uses. Either way every device allocation is
 * known, so copies are checked: count <= destMax (100000), and a range that starts in a device
 * allocation must end in it (107000); nothing is copied on an error. Host memory other than
 * aclrtMallocHost's cannot be known in C and is not checked. The copy's direction comes from the
 * pointers, as in the Python simulator; ``kind`` must be one of the documented values.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

typedef struct Region {
    uintptr_t base; /* what the app sees */
    size_t size, mapped;
    char *shadow; /* where the library reads and writes it (== base in ACL_DEVICE mode) */
    int device;   /* 1 aclrtMalloc, 0 aclrtMallocHost */
} Region;

static pthread_rwlock_t g_mem_lock = PTHREAD_RWLOCK_INITIALIZER;
static Region *g_regions; /* sorted by base */
static size_t g_nregions, g_capregions;

static size_t find_index(uintptr_t p) { /* the first region whose base is > p */
    size_t lo = 0, hi = g_nregions;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_regions[mid].base <= p) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int add_region(Region r) {
    pthread_rwlock_wrlock(&g_mem_lock);
    if (g_nregions == g_capregions) {
        size_t cap = g_capregions ? 2 * g_capregions : 256;
        Region *grown = realloc(g_regions, cap * sizeof(Region));
        if (!grown) {
            pthread_rwlock_unlock(&g_mem_lock);
            return 0;
        }
        g_regions = grown;
        g_capregions = cap;
    }
    size_t i = find_index(r.base);
    memmove(&g_regions[i + 1], &g_regions[i], (g_nregions - i) * sizeof(Region));
    g_regions[i] = r;
    g_nregions++;
    pthread_rwlock_unlock(&g_mem_lock);
    return 1;
}

/* Remove the region that starts exactly at ``p`` and is of kind ``device``; 1 when found. */
static int take_region(const void *p, int device, Region *out) {
    int found = 0;
    pthread_rwlock_wrlock(&g_mem_lock);
    size_t i = find_index((uintptr_t)p);
    if (i > 0 && g_regions[i - 1].base == (uintptr_t)p && g_regions[i - 1].device == device) {
        *out = g_regions[i - 1];
        memmove(&g_regions[i - 1], &g_regions[i], (g_nregions - i) * sizeof(Region));
        g_nregions--;
        found = 1;
    }
    pthread_rwlock_unlock(&g_mem_lock);
    return found;
}

int sim_device_range(const void *ptr, size_t count, char **where) {
    uintptr_t p = (uintptr_t)ptr;
    int result = 0;
    pthread_rwlock_rdlock(&g_mem_lock);
    size_t i = find_index(p);
    if (p && i > 0) {
        const Region *r = &g_regions[i - 1];
        if (r->device && p < r->base + r->size) {
            result = count <= r->base + r->size - p ? 1 : -1;
            if (where) *where = r->shadow + (p - r->base);
        }
    }
    pthread_rwlock_unlock(&g_mem_lock);
    return result;
}

static int device_map(size_t size, Region *r) {
    long page = sysconf(_SC_PAGESIZE);
    r->size = size;
    r->mapped = (size + page - 1) / page * page;
    r->device = 1;
    if (g_sim.run_mode == ACL_DEVICE) {
        void *p = mmap(NULL, r->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return 0;
        r->base = (uintptr_t)p;
        r->shadow = p;
        return 1;
    }
    int fd = memfd_create("acl-sim-device", MFD_CLOEXEC);
    if (fd < 0) return 0;
    void *app = MAP_FAILED, *lib = MAP_FAILED;
    if (ftruncate(fd, (off_t)r->mapped) == 0) {
        app = mmap(NULL, r->mapped, PROT_NONE, MAP_SHARED, fd, 0);
        lib = mmap(NULL, r->mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    close(fd);
    if (app == MAP_FAILED || lib == MAP_FAILED) {
        if (app != MAP_FAILED) munmap(app, r->mapped);
        if (lib != MAP_FAILED) munmap(lib, r->mapped);
        return 0;
    }
    r->base = (uintptr_t)app;
    r->shadow = lib;
    return 1;
}

aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault("malloc");
    if (ret) return ret;
    if (!devPtr || size == 0 || (int)policy < 0 || (int)policy > 2)
        return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtMalloc: bad size %zu or policy %d", size, (int)policy);
    Region r;
    if (!device_map(size, &r)) return sim_fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMalloc: %zu bytes: out of memory", size);
    if (!add_region(r)) {
        munmap((void *)r.base, r.mapped);
        if (r.shadow != (char *)r.base) munmap(r.shadow, r.mapped);
        return sim_fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMalloc: out of memory");
    }
    *devPtr = (void *)r.base;
    return ACL_SUCCESS;
}

aclError aclrtFree(void *devPtr) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    Region r;
    if (!take_region(devPtr, 1, &r)) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtFree: %p is not device memory from aclrtMalloc", devPtr);
    munmap((void *)r.base, r.mapped);
    if (r.shadow != (char *)r.base) munmap(r.shadow, r.mapped);
    return ACL_SUCCESS;
}

aclError aclrtMallocHost(void **hostPtr, size_t size) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault("malloc_host");
    if (ret) return ret;
    if (!hostPtr || size == 0) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtMallocHost: bad size %zu", size);
    void *p = NULL;
    if (posix_memalign(&p, 64, size) != 0) return sim_fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocHost: %zu bytes: out of memory", size);
    memset(p, 0, size);
    Region r = {(uintptr_t)p, size, size, p, 0};
    if (!add_region(r)) {
        free(p);
        return sim_fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocHost: out of memory");
    }
    *hostPtr = p;
    return ACL_SUCCESS;
}

aclError aclrtFreeHost(void *hostPtr) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    Region r;
    if (!take_region(hostPtr, 0, &r)) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtFreeHost: %p is not host memory from aclrtMallocHost", hostPtr);
    free(r.shadow);
    return ACL_SUCCESS;
}

/* The library's address of [ptr, ptr+count): a device range translated, host memory as is; NULL
 * (with the error recorded) for a NULL pointer or a range that runs past its device allocation. */
static char *resolve(const void *ptr, size_t count, const char *what, const char *api) {
    char *where = NULL;
    int inside = sim_device_range(ptr, count, &where);
    if (!ptr || inside < 0) {
        sim_fail(ACL_ERROR_RT_PARAM_INVALID, "%s: %s %p+%zu is not allocated memory", api, what, ptr, count);
        return NULL;
    }
    return inside ? where : (char *)ptr;
}

static aclError copy_checks(size_t destMax, size_t count, aclrtMemcpyKind kind, const char *api) {
    if ((int)kind < ACL_MEMCPY_HOST_TO_HOST || (int)kind > ACL_MEMCPY_DEFAULT)
        return sim_fail(ACL_ERROR_INVALID_PARAM, "%s: unknown kind %d", api, (int)kind);
    if (count > destMax) return sim_fail(ACL_ERROR_INVALID_PARAM, "%s: count %zu exceeds destMax %zu", api, count, destMax);
    return ACL_SUCCESS;
}

aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault("memcpy");
    if (!ret) ret = copy_checks(destMax, count, kind, "aclrtMemcpy");
    if (ret || count == 0) return ret;
    char *from = resolve(src, count, "source", "aclrtMemcpy");
    if (!from) return ACL_ERROR_RT_PARAM_INVALID;
    char *to = resolve(dst, count, "destination", "aclrtMemcpy");
    if (!to) return ACL_ERROR_RT_PARAM_INVALID;
    memmove(to, from, count);
    return ACL_SUCCESS;
}

aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count) {
    aclError ret = sim_ready(1);
    if (ret) return ret;
    if (count > maxCount) return sim_fail(ACL_ERROR_INVALID_PARAM, "aclrtMemset: count %zu exceeds maxCount %zu", count, maxCount);
    char *where = NULL;
    if (count && sim_device_range(devPtr, count, &where) != 1)
        return sim_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemset: %p+%zu is not device memory", devPtr, count);
    if (count) memset(where, value, count);
    return ACL_SUCCESS;
}

typedef struct AsyncCopy {
    void *dst;
    const void *src;
    size_t count;
} AsyncCopy;

static aclError copy_task(void *arg, double ready_at, double *ended_at) {
    AsyncCopy *c = arg;
    char *from = resolve(c->src, c->count, "source", "aclrtMemcpyAsync");
    char *to = from ? resolve(c->dst, c->count, "destination", "aclrtMemcpyAsync") : NULL;
    if (to) memmove(to, from, c->count);
    *ended_at = ready_at > sim_now() ? ready_at : sim_now();
    return to ? ACL_SUCCESS : ACL_ERROR_RT_PARAM_INVALID;
}

/* Queued on the stream: the ranges are checked now, the bytes copied when the stream gets to it. */
aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                          aclrtStream stream) {
    aclError ret = sim_ready(1);
    if (!ret) ret = sim_fault("memcpy_async");
    if (!ret) ret = copy_checks(destMax, count, kind, "aclrtMemcpyAsync");
    if (ret) return ret;
    Stream *s = sim_stream(stream, &ret);
    if (!s) return ret;
    if (count == 0) return ACL_SUCCESS;
    if (!resolve(src, count, "source", "aclrtMemcpyAsync") || !resolve(dst, count, "destination", "aclrtMemcpyAsync"))
        return ACL_ERROR_RT_PARAM_INVALID;
    AsyncCopy *c = malloc(sizeof(AsyncCopy));
    if (!c) return sim_fail(ACL_ERROR_BAD_ALLOC, "aclrtMemcpyAsync: out of memory");
    c->dst = dst;
    c->src = src;
    c->count = count;
    return sim_stream_put(s, copy_task, c, free);
}
