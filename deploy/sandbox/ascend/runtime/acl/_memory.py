"""Host and simulated device memory (see _core for the model). Python 3.7."""

import bisect
import ctypes

from . import _core as C
from ._core import STATE


def device_alloc(size, dvpp=False):
    """A new zeroed device region of ``size`` bytes; returns its address. A DVPP region
    (``acl.media.dvpp_malloc``) starts 128-aligned and is marked as such."""
    with STATE.lock:
        base = STATE.next_device
        if dvpp:
            base = (base + 127) // 128 * 128
            STATE.dvpp_mem.add(base)
        STATE.next_device = base + (int(size) + 127) // 64 * 64 + 64  # a gap after each region
        STATE.device_mem[base] = bytearray(int(size))
        bisect.insort(STATE.device_bases, base)
        return base


def device_free(ptr, dvpp=False):
    """Free a region of the given kind (rt.malloc or dvpp_malloc); False when ``ptr`` is not one."""
    with STATE.lock:
        if ptr not in STATE.device_mem or (ptr in STATE.dvpp_mem) != dvpp:
            return False
        del STATE.device_mem[ptr]
        STATE.dvpp_mem.discard(ptr)
        STATE.device_bases.remove(ptr)
        return True


def is_dvpp(ptr):
    """Whether ``ptr`` is the start of a live acl.media.dvpp_malloc region."""
    return ptr in STATE.dvpp_mem


def dvpp_place(ptr, count):
    """(bytearray, offset, region base) when [ptr, ptr+count) lies in one dvpp_malloc region, else None."""
    if not isinstance(ptr, int) or ptr < C.DEVICE_BASE or count < 0:
        return None
    region, offset = _device_region(ptr)
    if region is None or offset + count > len(region) or (ptr - offset) not in STATE.dvpp_mem:
        return None
    return region, offset, ptr - offset


def host_alloc(size):
    buf = (ctypes.c_char * max(1, int(size)))()
    ptr = ctypes.addressof(buf)
    with STATE.lock:
        STATE.host_mem[ptr] = buf
    return ptr


def host_free(ptr):
    with STATE.lock:
        return STATE.host_mem.pop(ptr, None) is not None


def register_view(ptr, size, obj):
    """Track a bytes object / array handed out by bytes_to_ptr / numpy_to_ptr (kept alive)."""
    with STATE.lock:
        STATE.host_views.pop(ptr, None)
        STATE.host_views[ptr] = (int(size), obj)
        while len(STATE.host_views) > C._HOST_KEEP:
            STATE.host_views.popitem(last=False)


def _device_region(ptr):
    with STATE.lock:
        i = bisect.bisect_right(STATE.device_bases, ptr) - 1
        if i < 0:
            return None, 0
        base = STATE.device_bases[i]
        return STATE.device_mem[base], ptr - base


def _host_fits(ptr, count):
    """Whether [ptr, ptr+count) lies in one known host region. A pointer is nearly always the
    start of one (what malloc_host / *_to_ptr returned): that is one dict lookup, not a scan of
    the up to _HOST_KEEP regions."""
    with STATE.lock:
        view = STATE.host_views.get(ptr)
        if view is not None and view[0] >= count:
            return True
        buf = STATE.host_mem.get(ptr)
        if buf is not None and ctypes.sizeof(buf) >= count:
            return True
        regions = [(p, ctypes.sizeof(b)) for p, b in STATE.host_mem.items()]
        regions += [(p, s) for p, (s, _) in STATE.host_views.items()]
    return any(base <= ptr and ptr + count <= base + size for base, size in regions)


def locate(ptr, count):
    """("device", bytearray, offset) or ("host", address, 0) when [ptr, ptr+count) lies in one
    known region; None otherwise."""
    if not isinstance(ptr, int) or ptr <= 0:
        return None
    if ptr >= C.DEVICE_BASE:
        region, offset = _device_region(ptr)
        if region is None or offset + count > len(region):
            return None
        return ("device", region, offset)
    if not _host_fits(ptr, count):
        return None
    return ("host", ptr, 0)


def read(place, count):
    """The ``count`` bytes at a located place, as bytes (a copy)."""
    if place[0] == "device":
        return bytes(place[1][place[2] : place[2] + count])
    return ctypes.string_at(place[1], count)


def view(place, count):
    """A writable memoryview of the ``count`` bytes at a located place (no copy)."""
    if place[0] == "device":
        return memoryview(place[1])[place[2] : place[2] + count]
    return _host_view(place[1], count)


def write(place, data):
    if place[0] == "device":
        place[1][place[2] : place[2] + len(data)] = data
    else:
        ctypes.memmove(place[1], data, len(data))


def device_view(ptr, count):
    """A writable memoryview of device memory (what a model reads and writes), or None."""
    place = locate(ptr, count)
    if place is None or place[0] != "device":
        return None
    return memoryview(place[1])[place[2] : place[2] + count]


def copy(dst, dest_max, src, count):
    """aclrtMemcpy semantics: the direction comes from the pointers, sizes are checked first,
    nothing is copied on any error."""
    if count < 0 or dest_max < 0:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "memcpy: negative size")
    if count > dest_max:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"memcpy: count {count} exceeds dest_max {dest_max}")
    if count == 0:
        return C.ACL_SUCCESS
    src_place, dst_place = locate(src, count), locate(dst, count)
    if src_place is None:
        return C.fail(
            C.ACL_ERROR_RT_PARAM_INVALID,
            f"memcpy: source {src if isinstance(src, int) else 0:#x}+{count} is not allocated memory",
        )
    if dst_place is None:
        return C.fail(
            C.ACL_ERROR_RT_PARAM_INVALID,
            f"memcpy: destination {dst if isinstance(dst, int) else 0:#x}+{count} is not allocated memory",
        )
    if src_place[0] == "device" and dst_place[0] == "device":
        dst_place[1][dst_place[2] : dst_place[2] + count] = src_place[1][src_place[2] : src_place[2] + count]
    elif src_place[0] == "device":
        _host_view(dst_place[1], count)[:] = memoryview(src_place[1])[src_place[2] : src_place[2] + count]
    elif dst_place[0] == "device":
        dst_place[1][dst_place[2] : dst_place[2] + count] = _host_view(src_place[1], count)
    else:
        ctypes.memmove(dst_place[1], src_place[1], count)
    return C.ACL_SUCCESS


def _host_view(address, count):
    """A writable byte view of ``count`` bytes of host memory at ``address``. Copies through it
    keep the GIL (ctypes.memmove would release it: a copy of a few KB then costs the calling
    thread a wait for the GIL, which a runtime call that copies memory does not have)."""
    return memoryview((ctypes.c_ubyte * count).from_address(address)).cast("B")
