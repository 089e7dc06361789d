"""The simulated AscendCL C library (deploy/sandbox/capi.py, deploy/sandbox/ascend/capi/): our own C++
app (tests/capi_app, written from the documented API in the samples' style) built against the
installed headers and stub, run against the run-time library from ``out/`` with the CANN environment:
right top-1 on the demo photos, the same answers sync and async, the documented codes for bad sizes,
a thread without a context and injected faults that do no work. x86_64 natively; the aarch64 cross
build inside the emulated rootfs is slow (root only)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.errors import SandboxError
from deploy.sandbox import capi
from deploy.testing import CAT, DEMO, ESPRESSO, aclapp

pytestmark = [
    pytest.mark.skipif(not shutil.which("cmake") or not shutil.which("g++"), reason="needs cmake and g++ (scripts/setup.sh)"),
    pytest.mark.skipif(not (DEMO / "models" / "efficientnet_lite0.onnx").is_file(),
                       reason="demo model missing: run `python3 -m deploy model demo` first"),
]
PHOTOS = {"coffee.bin": ESPRESSO, "chelsea.bin": CAT}


@pytest.fixture(scope="module")
def nnrt(tmp_path_factory):
    try:
        return aclapp.install_cann(tmp_path_factory.mktemp("board"))
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def app(tmp_path_factory, nnrt):
    """The test app built against the installed headers + stub, with the plain and the AIPP model."""
    app = aclapp.copy_app(tmp_path_factory.mktemp("app") / "capi_app")
    aclapp.build_app(app, nnrt)
    aclapp.convert(app / "model" / "classify.om")
    aclapp.convert(app / "model" / "classify_aipp.om", aipp=True)
    for photo in ("coffee", "chelsea"):
        aclapp.photo_bin(f"{photo}.jpg", app / "data" / f"{photo}.bin")
        aclapp.photo_bin(f"{photo}.jpg", app / "data_uint8" / f"{photo}.bin", kind="uint8")
    return app


def check_answers(stdout: str, executions: int) -> None:
    got = aclapp.answers(stdout)
    sync = {f: top for mode, _, f, top in got if mode == "sync"}
    assert set(sync) == set(PHOTOS) and all(sync[f] in PHOTOS[f] for f in PHOTOS), stdout
    asynchronous = sorted((n, f, top) for mode, n, f, top in got if mode == "async")
    assert [n for n, _, _ in asynchronous] == list(range(executions)), stdout  # every execution, once
    assert all(top == sync[f] for _, f, top in asynchronous)  # the same answers sync and async


def test_the_stub_and_the_library_export_what_the_headers_declare(nnrt):
    lib64 = nnrt / "runtime" / "lib64"
    declared = {name for _, name, _ in capi.declarations()}
    for lib in (lib64 / "libascendcl.so", lib64 / "stub" / "libascendcl.so"):
        nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True)
        assert {line.split()[-1] for line in nm.stdout.splitlines()} >= declared
    seed = {"aclInit", "aclFinalize", "aclrtSetDevice", "aclrtResetDevice", "aclrtCreateContext", "aclrtGetRunMode",
            "aclrtMallocHost", "aclrtMemcpy", "aclmdlQuerySize", "aclmdlLoadFromFileWithMem", "aclmdlGetDatasetBuffer",
            "aclGetDataBufferSizeV2", "aclmdlExecuteAsync", "aclrtSubscribeReport", "aclrtUnSubscribeReport",
            "aclrtLaunchCallback", "aclrtProcessReport", "aclrtSynchronizeStream", "aclGetRecentErrMsg"}  # fmt: skip
    assert seed <= declared
    readelf = subprocess.run(["readelf", "-d", str(lib64 / "libascendcl.so")], capture_output=True, text=True).stdout
    assert "libascendcl.so" in readelf and "libpython" not in readelf  # the board's Python is dlopened, never linked


@pytest.mark.parametrize("mode,model,data", [("device", "classify.om", "data"), ("host", "classify_aipp.om", "data_uint8")])
def test_demo_photos_classified_sync_then_async(app, nnrt, mode, model, data):
    """ACL_DEVICE (a DK: the app freads into aclrtMalloc'd memory and reads outputs in place) with the
    float model; ACL_HOST (copies through aclrtMallocHost memory) with the AIPP model on uint8 pixels."""
    r = aclapp.run_app(app, nnrt, ["7", "3", f"../model/{model}", f"../{data}"], env={"ACL_SIM_RUN_MODE": mode})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"run mode ACL_{mode.upper()}" in r.stdout and "classify success" in r.stdout
    check_answers(r.stdout, 7)


ERRORS = {  # what tests/capi_app/src/checks.cpp calls -> the documented code (0: success / as it should be)
    "malloc_before_init": 100001, "run_mode_before_init": 0, "init_bad_config": 100003, "init": 0, "init_twice": 100002,
    "malloc_no_context": 107002, "err_msg_set": 0, "err_msg_cleared": 0, "set_device_bad": 107001, "set_device": 0,
    "create_context": 0, "malloc": 0, "malloc_zero": 100000, "memcpy_count_over_destmax": 100000,
    "memcpy_past_allocation": 107000, "memcpy_bad_kind": 100000, "memcpy_back": 0, "nothing_copied": 0,
    "free_not_device": 100000, "free": 0, "free_twice": 100000, "other_thread_no_context": 107002,
    "other_thread_after_set_context": 0, "load_missing_file": 100003, "load_not_a_model": 100013, "load": 0,
    "get_desc": 0, "execute_bad_model_id": 100011, "execute_input_too_small": 100017,
    "execute_input_not_device_memory": 100017, "execute_no_outputs": 100018, "execute": 0, "input_dims_bad_index": 100000,
    "unload": 0, "unload_twice": 100011, "desc_after_unload": 0, "create_stream": 0, "launch_callback_unsubscribed": 100034,
    "process_report_unsubscribed": 100035, "subscribe": 0, "subscribe_twice": 100033, "launch_callback_no_block": 100000,
    "launch_callback": 0, "process_report_other_thread": 100035, "synchronize": 0, "callback_ran_on_report_thread": 0,
    "unsubscribe": 0, "unsubscribe_twice": 100034, "destroy_stream": 0, "destroy_context": 0,
    "destroy_context_twice": 100000, "reset_device": 0, "finalize": 0, "finalize_twice": 100037,
    "malloc_after_finalize": 100001, "init_after_finalize": 100002,
}  # fmt: skip
FAULTS = {  # under ACL_SIM_FAIL=malloc:2,memcpy:1,execute:1,launch_callback:1 (the Python simulator's default codes)
    "malloc_1": 0, "malloc_2": 207001, "malloc_2_gave_no_pointer": 0, "memcpy_1": 507013, "memcpy_2": 0,
    "memcpy_1_copied_nothing": 0, "load": 0, "execute_1": 507011, "execute_1_wrote_nothing": 0, "execute_2": 0,
    "execute_2_wrote": 0, "launch_callback_1": 507000, "synchronize_1": 0, "launch_callback_1_ran_nothing": 0,
    "launch_callback_2": 0, "synchronize_2": 0, "launch_callback_2_ran": 0,
}  # fmt: skip


def checks(stdout: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^check (\S+) (-?\d+)$", stdout, re.MULTILINE)}


def test_error_cases_give_the_documented_codes(app, nnrt):
    r = aclapp.run_app(app, nnrt, ["errors"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert checks(r.stdout) == ERRORS


def test_injected_faults_return_their_code_and_do_no_work(app, nnrt):
    r = aclapp.run_app(app, nnrt, ["faults"], env={"ACL_SIM_FAIL": "malloc:2,memcpy:1,execute:1,launch_callback:1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert checks(r.stdout) == FAULTS


def test_device_memory_is_addressable_on_the_dk_only(app, nnrt):
    on_dk = aclapp.run_app(app, nnrt, ["touch"])
    assert on_dk.returncode == 0 and "touched 7" in on_dk.stdout
    on_host = aclapp.run_app(app, nnrt, ["touch"], env={"ACL_SIM_RUN_MODE": "host"})
    assert on_host.returncode in (-11, 128 + 11) and "touched 7" not in on_host.stdout  # SIGSEGV


def test_fault_defaults_are_the_python_simulators():
    from importlib import util

    spec = util.spec_from_file_location("acl_core", capi.SOURCE.parent / "runtime" / "acl" / "_core.py")
    core = util.module_from_spec(spec)
    spec.loader.exec_module(core)
    c_source = (capi.SOURCE / "src" / "core.c").read_text()
    table = dict(re.findall(r'\{"(\w+)", (ACL_ERROR_\w+)\}', c_source))
    shared = {k: v for k, v in core.FAULT_CODES.items() if not k.startswith("dvpp_")}  # the C library has no DVPP
    assert set(table) == set(shared)
    assert {name: getattr(core, code) for name, code in table.items()} == shared


def test_a_missing_compiler_is_one_line_naming_the_package(monkeypatch):
    monkeypatch.setattr(capi.shutil, "which", lambda name: None)
    with pytest.raises(SandboxError, match=r"^the simulated AscendCL library for aarch64 needs aarch64-linux-gnu-gcc: "
                                           r"apt-get install g\+\+-aarch64-linux-gnu$"):
        capi.build("aarch64", Path("/nonexistent"))


def test_the_build_is_cached_by_source_digest(nnrt, monkeypatch):
    first = capi.build("x86_64")
    monkeypatch.setattr(capi, "_compile", lambda argv: pytest.fail("rebuilt an unchanged library"))
    assert capi.build("x86_64") == first
    assert (first / "lib64" / "libascendcl.so").read_bytes() == (nnrt / "runtime" / "lib64" / "libascendcl.so").read_bytes()


def test_huawei_cpp_samples_run_against_the_library(tmp_path, nnrt):
    """Huawei's resnet50_async_imagenet_classification (seed 000) and its synchronous sibling, unmodified:
    built from the checkout as their README says, run with a simulated model (the demo network with
    an fp16 input, as the samples' Caffe ResNet-50 has) and .bin photos under the samples' own names."""
    import vendor

    samples = vendor.ascend_samples() / "cplusplus" / "level2_simple_inference" / "1_classification"
    for name, args, lines in (("resnet50_async_imagenet_classification", ["100", "1", "100"], 100),
                              ("resnet50_imagenet_classification", [], 2)):
        app = tmp_path / name
        shutil.copytree(samples / name, app)
        aclapp.build_app(app, nnrt)
        aclapp.convert(app / "model" / "resnet50.om", fp16_input=True)
        aclapp.photo_bin("coffee.jpg", app / "data" / "dog1_1024_683.bin", kind="fp16")
        aclapp.photo_bin("chelsea.jpg", app / "data" / "dog2_1024_683.bin", kind="fp16")
        r = aclapp.run_app(app, nnrt, args)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        top1 = [int(i) for i in re.findall(r"top 1: index\[(\d+)\]", r.stdout)]
        assert len(top1) == lines and set(top1) <= ESPRESSO | CAT and ESPRESSO & set(top1) and CAT & set(top1), r.stdout
        assert "execute sample success" in r.stdout and "[ERROR]" not in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.geteuid() != 0, reason="the emulated board needs root (chroot, binfmt_misc)")
@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-g++"), reason="needs g++-aarch64-linux-gnu (scripts/setup.sh)")
def test_cross_built_app_on_the_emulated_aarch64_dk(tmp_path):
    """The same app cross-compiled with aarch64-linux-gnu-g++ against the emulated board's rootfs and
    the aarch64 library, run inside the rootfs under qemu (Python 3.9 embedded: the board's)."""
    from deploy.sandbox import emulation

    rootfs = emulation.ensure_rootfs()
    scratch = Path(rootfs) / "tmp" / f"capi-test-{os.getpid()}"
    try:
        nnrt = aclapp.install_cann(scratch / "home", "aarch64", rootfs)
        app = aclapp.copy_app(scratch / "capi_app")
        main = aclapp.build_app(app, nnrt, rootfs=rootfs)
        assert "ARM aarch64" in subprocess.run(["file", str(main)], capture_output=True, text=True).stdout
        aclapp.convert(app / "model" / "classify.om")
        for photo in ("coffee", "chelsea"):
            aclapp.photo_bin(f"{photo}.jpg", app / "data" / f"{photo}.bin")
        r = aclapp.run_app(app, nnrt, ["4", "2"], rootfs=rootfs, timeout=1200)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        check_answers(r.stdout, 4)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_benchmark_prints_c_sim_over_py_sim(nnrt):
    """benchmarks/clib.py at tiny sizes: every figure there and positive (no timing threshold: the
    machine is shared). Its interleaved part drives the library through ctypes from the board's
    Python, i.e. the library serving a process that already runs Python."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "clib.py"
    r = subprocess.run([sys.executable, str(bench), "--json", "--iterations", "3", "--rounds", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["c_sim_over_py_sim"] > 0 and got["processes"]["c_sim_over_py_sim"] > 0
    assert got["py_sim_ms"] > 0 and got["c_sim_ms"] > 0 and got["py_call_us"] > 0 and got["c_call_us"] > 0


def test_timing_mode_is_the_python_simulators(app, nnrt):
    """ACL_SIM_DEVICE_MS_PER_IMAGE: each execution takes that long on the simulated NPU (one at a time,
    the shared Python code's timeline), sync and async alike; outputs are not computed."""
    import time

    start = time.monotonic()
    r = aclapp.run_app(app, nnrt, ["6", "2"], env={"ACL_SIM_DEVICE_MS_PER_IMAGE": "150"})
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(aclapp.answers(r.stdout)) == 2 + 6 and elapsed >= 8 * 0.150
