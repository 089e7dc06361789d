"""The simulated AscendCL C library against the simulated pyACL: what one model execution costs.

    python benchmarks/clib.py [--json] [--iterations 20] [--rounds 6] [--threads 0]

Both run the demo EfficientNet-Lite0 (a simulated .om, float input, batch 1) on the coffee photo in a
simulated DK's CANN (x86_64, CPython 3.7: the board's interpreter, whose shared libpython the C library
embeds). Only the execute call is timed (wall clock, after 3 warm-up executions).

* ``c_sim_over_py_sim``  the headline, c_sim_ms / py_sim_ms (target <= 1.1), measured call by call in
  ONE board-Python process that holds both runtimes: ``acl.mdl.execute`` of the Python simulator and
  ``aclmdlExecute`` of the C library (through ctypes; the library then runs its model in that
  interpreter), alternating which goes first, medians over iterations x rounds calls each. Interleaving
  call by call is what makes the figure hold on a shared 2-core machine, where the load moves the time
  of one execution by +-50% between two runs a second apart. (Both take longer here than alone: the
  two ONNX Runtime sessions' thread pools share the cores, alike for both.)
* ``processes``  the same from a C program (data fread into aclrtMalloc'd memory, the board's Python
  embedded) and a Python script, in alternating processes (``rounds`` of each): what a user's app
  sees, and as noisy as the machine.
* ``py_call_us``, ``c_call_us``  the same on a model of 3 operators (GlobalAveragePool + MatMul on 3x8x8),
  separate processes: what each runtime itself costs per call around ONNX Runtime.

``--threads`` sets ACL_SIM_THREADS (ONNX Runtime's intra-op threads) for both; 0 leaves ORT's default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.sandbox import atlas  # noqa: E402
from deploy.testing import aclapp  # noqa: E402

C_BENCH = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "acl/acl.h"

#define CHECK(call) do { aclError r_ = (call); if (r_) { fprintf(stderr, "%s: %d %s\n", #call, r_, aclGetRecentErrMsg()); return 1; } } while (0)

int main(int argc, char **argv) {
    int iterations = atoi(argv[3]);
    aclrtContext ctx;
    uint32_t id;
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtCreateContext(&ctx, 0));
    CHECK(aclmdlLoadFromFile(argv[1], &id));
    aclmdlDesc *desc = aclmdlCreateDesc();
    CHECK(aclmdlGetDesc(desc, id));
    size_t in_size = aclmdlGetInputSizeByIndex(desc, 0), out_size = aclmdlGetOutputSizeByIndex(desc, 0);
    void *in, *out;
    CHECK(aclrtMalloc(&in, in_size, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&out, out_size, ACL_MEM_MALLOC_HUGE_FIRST));
    FILE *f = fopen(argv[2], "rb");
    if (!f || fread(in, 1, in_size, f) != in_size) return 2;  /* straight into device memory, as on a DK */
    fclose(f);
    aclmdlDataset *input = aclmdlCreateDataset(), *output = aclmdlCreateDataset();
    CHECK(aclmdlAddDatasetBuffer(input, aclCreateDataBuffer(in, in_size)));
    CHECK(aclmdlAddDatasetBuffer(output, aclCreateDataBuffer(out, out_size)));
    for (int i = -3; i < iterations; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        CHECK(aclmdlExecute(id, input, output));
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (i >= 0) printf("ms %.4f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
    }
    CHECK(aclmdlUnload(id));
    return 0;
}
"""

PY_BENCH = r"""
import sys, time
import acl
model_path, data_path, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
assert acl.init() == 0 and acl.rt.set_device(0) == 0
ctx, ret = acl.rt.create_context(0)
model_id, ret = acl.mdl.load_from_file(model_path)
assert ret == 0, acl.get_recent_err_msg()
desc = acl.mdl.create_desc()
assert acl.mdl.get_desc(desc, model_id) == 0
in_size, out_size = acl.mdl.get_input_size_by_index(desc, 0), acl.mdl.get_output_size_by_index(desc, 0)
data = open(data_path, "rb").read()
dev_in, _ = acl.rt.malloc(in_size, 0)
dev_out, _ = acl.rt.malloc(out_size, 0)
assert acl.rt.memcpy(dev_in, in_size, acl.util.bytes_to_ptr(data), in_size, 1) == 0
inp, out = acl.mdl.create_dataset(), acl.mdl.create_dataset()
acl.mdl.add_dataset_buffer(inp, acl.create_data_buffer(dev_in, in_size))
acl.mdl.add_dataset_buffer(out, acl.create_data_buffer(dev_out, out_size))
for i in range(-3, iterations):
    t = time.perf_counter()
    assert acl.mdl.execute(model_id, inp, out) == 0, acl.get_recent_err_msg()
    if i >= 0:
        print("ms %.4f" % ((time.perf_counter() - t) * 1e3))
"""

INTERLEAVED = r"""
import ctypes, os, sys, time
import acl
model_path, data_path, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(data_path, "rb").read()
# the Python simulator
assert acl.init() == 0 and acl.rt.set_device(0) == 0
acl.rt.create_context(0)
py_model, ret = acl.mdl.load_from_file(model_path)
desc = acl.mdl.create_desc()
acl.mdl.get_desc(desc, py_model)
n_in, n_out = acl.mdl.get_input_size_by_index(desc, 0), acl.mdl.get_output_size_by_index(desc, 0)
py_in, _ = acl.rt.malloc(n_in, 0)
py_out, _ = acl.rt.malloc(n_out, 0)
acl.rt.memcpy(py_in, n_in, acl.util.bytes_to_ptr(data), n_in, 1)
py_ds = [acl.mdl.create_dataset(), acl.mdl.create_dataset()]
acl.mdl.add_dataset_buffer(py_ds[0], acl.create_data_buffer(py_in, n_in))
acl.mdl.add_dataset_buffer(py_ds[1], acl.create_data_buffer(py_out, n_out))
# the C library in the same process (it runs its models in this interpreter)
lib = ctypes.CDLL("libascendcl.so")
P, S, U = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32
for name, res, args in (("aclmdlCreateDesc", P, []), ("aclmdlCreateDataset", P, []), ("aclCreateDataBuffer", P, [P, S]),
                        ("aclmdlGetInputSizeByIndex", S, [P, S]), ("aclmdlGetOutputSizeByIndex", S, [P, S]),
                        ("aclmdlExecute", ctypes.c_int, [U, P, P]), ("aclmdlAddDatasetBuffer", ctypes.c_int, [P, P])):
    getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
ctx, c_model, c_in, c_out = P(), U(), P(), P()
assert lib.aclInit(None) == 0 and lib.aclrtSetDevice(0) == 0 and lib.aclrtCreateContext(ctypes.byref(ctx), 0) == 0
assert lib.aclmdlLoadFromFile(model_path.encode(), ctypes.byref(c_model)) == 0
assert lib.aclrtMalloc(ctypes.byref(c_in), S(n_in), 0) == 0 and lib.aclrtMalloc(ctypes.byref(c_out), S(n_out), 0) == 0
ctypes.memmove(c_in, data, n_in)  # ACL_DEVICE: device memory is this process's memory
c_ds = [lib.aclmdlCreateDataset(), lib.aclmdlCreateDataset()]
lib.aclmdlAddDatasetBuffer(c_ds[0], lib.aclCreateDataBuffer(c_in, n_in))
lib.aclmdlAddDatasetBuffer(c_ds[1], lib.aclCreateDataBuffer(c_out, n_out))
calls = {"py": lambda: acl.mdl.execute(py_model, *py_ds), "c": lambda: lib.aclmdlExecute(c_model.value, *c_ds)}
for i in range(-3, iterations):
    for kind in (("py", "c") if i % 2 else ("c", "py")):  # alternate which goes first
        t = time.perf_counter()
        assert calls[kind]() == 0, kind
        if i >= 0:
            print(kind, "%.4f" % ((time.perf_counter() - t) * 1e3))
"""


def tiny_model(work: Path) -> tuple[Path, Path]:
    """A model of a few operators (logits = mean of each channel times a matrix) and a ones input."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((3, 4), np.float32), "w")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(work / "tiny.onnx"))
    np.ones((1, 3, 8, 8), np.float32).tofile(work / "tiny.bin")
    return aclapp.convert(work / "tiny.om", onnx_path=work / "tiny.onnx"), work / "tiny.bin"


def prepare(work: Path) -> dict:
    """The board's CANN, the models, the inputs and the C program in ``work``."""
    nnrt = aclapp.install_cann(work / "board")
    model = aclapp.convert(work / "model.om")
    data = aclapp.photo_bin("coffee.jpg", work / "coffee.bin")
    tiny, tiny_data = tiny_model(work)
    (work / "bench.c").write_text(C_BENCH)
    runtime = nnrt / "runtime"
    subprocess.run(["gcc", "-O2", "-o", str(work / "bench"), str(work / "bench.c"), f"-I{runtime / 'include'}",
                    f"-L{runtime / 'lib64' / 'stub'}", "-lascendcl"], check=True)  # fmt: skip
    (work / "bench.py").write_text(PY_BENCH)
    (work / "interleaved.py").write_text(INTERLEAVED)
    return {"nnrt": nnrt, "model": model, "data": data, "tiny": tiny, "tiny_data": tiny_data,
            "python": str(atlas.find_cpython("3.7")), "work": work}


def run(kind: str, ctx: dict, iterations: int, threads: int, model: str = "model") -> list[float]:
    """One process of ``kind`` ("c", "py" or "both": interleaved) on ``model`` ("model" or "tiny"); its
    timed executions in ms (for "both": "c"/"py" tagged lines, see :func:`interleaved`)."""
    script = {"c": "", "py": "bench.py", "both": "interleaved.py"}[kind]
    program = f"{ctx['python']} {ctx['work'] / script}" if script else str(ctx["work"] / "bench")
    env = f"ACL_SIM_THREADS={threads} " if threads else ""
    home = ctx["nnrt"].parents[1]  # set_env.sh finds sim-deps under the board's $HOME, as on a board
    data = ctx["data" if model == "model" else "tiny_data"]
    script = f"export HOME={home} && . {ctx['nnrt']}/set_env.sh && {env}{program} {ctx[model]} {data} {iterations}"
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{kind} benchmark failed: {r.stderr.strip()[-800:]}")
    if kind == "both":
        return [(line.split()[0], float(line.split()[1])) for line in r.stdout.splitlines()]
    return [float(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("ms ")]


def measure(iterations: int = 20, rounds: int = 6, threads: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="clib-bench-") as tmp:
        ctx = prepare(Path(tmp))
        times: dict[str, list[float]] = {"py": [], "c": []}
        calls: dict[str, list[float]] = {"py": [], "c": []}
        for _ in range(rounds):
            for kind in ("py", "c"):
                times[kind] += run(kind, ctx, iterations, threads)
        for _ in range(2):
            for kind in ("py", "c"):
                calls[kind] += run(kind, ctx, 1000, 1, "tiny")
        both = run("both", ctx, iterations * rounds, threads)
    py_ms, c_ms = statistics.median(times["py"]), statistics.median(times["c"])
    same = {kind: statistics.median([t for k, t in both if k == kind]) for kind in ("py", "c")}
    return {
        "py_sim_ms": round(same["py"], 3),
        "c_sim_ms": round(same["c"], 3),
        "c_sim_over_py_sim": round(same["c"] / same["py"], 3),
        "processes": {"py_sim_ms": round(py_ms, 3), "c_sim_ms": round(c_ms, 3), "c_sim_over_py_sim": round(c_ms / py_ms, 3)},
        "py_call_us": round(statistics.median(calls["py"]) * 1000, 1),
        "c_call_us": round(statistics.median(calls["c"]) * 1000, 1),
        "executions_each": len(times["c"]),
        "rounds": rounds,
        "threads": threads or "ORT default",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--iterations", type=int, default=20, help="timed executions per process")
    p.add_argument("--rounds", type=int, default=6, help="processes per side, alternating")
    p.add_argument("--threads", type=int, default=0, help="ACL_SIM_THREADS for both (0: ORT's default)")
    args = p.parse_args()
    result = measure(args.iterations, args.rounds, args.threads)
    if args.json:
        print(json.dumps(result))
        return
    print(f"py_sim_ms          {result['py_sim_ms']:8.3f}   acl.mdl.execute (Python simulator), median")
    print(f"c_sim_ms           {result['c_sim_ms']:8.3f}   aclmdlExecute (C library), median, call by call in one process")
    print(f"c_sim_over_py_sim  {result['c_sim_over_py_sim']:8.3f}   (target <= 1.1)")
    proc = result["processes"]
    print(f"processes          {proc['c_sim_over_py_sim']:8.3f}   C program {proc['c_sim_ms']} ms vs Python script "
          f"{proc['py_sim_ms']} ms ({result['rounds']} alternating processes each)")
    print(f"py_call_us         {result['py_call_us']:8.1f}   per acl.mdl.execute on a model of 3 operators, median")
    print(f"c_call_us          {result['c_call_us']:8.1f}   per aclmdlExecute on the same, median")

if __name__ == "__main__":
    main()
