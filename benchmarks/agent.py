"""Agent throughput: pure inference vs the agent's end-to-end fast path vs a naive sample-style loop.

    python benchmarks/agent.py [--json] [--demo DIR] [--batch 1] [--copies 4] [--repeat 3]
    python benchmarks/agent.py --backend acl [--json] [--device-ms 3] [--sweep 6,5,4,3,2,1.5,1,0.75,0.5]

The first measures the ONNX Runtime path (below); ``--backend acl`` the Ascend path through the
simulated pyACL of ``deploy/sandbox/ascend`` (section "--backend acl" at the end).

* ``pure_ips``  the best pure-inference throughput of the model on ready tensors at this batch:
                the best of one ORT stream with intra-op threads = cores (busy-wait on and off)
                and ``cores`` concurrent streams of one intra-op thread each (``pure_configs``
                lists each; no input copy, decode or output handling)
* ``e2e_ips``   ``agent.runner.execute``: decode -> preprocess -> infer -> top-k -> results.jsonl,
                events and labelled copies written (the run's own elapsed time; model load excluded)
* ``naive_ips`` one image at a time in the style of the MindSpore ResNet-50 sample (seed 001):
                Image.open, full-resolution resize, numpy crop, astype float32, per-channel
                normalisation, transpose copy, infer, softmax with a Python exp loop, argsort, then
                re-open the original and draw the label on it and save it. Same model, same
                preprocessing semantics (resize 256 bilinear, crop 224, the demo's mean/std); ORT
                with the best single-stream settings: intra-op threads = cores, and each round
                runs with busy-wait on and off, the better counting (on: 36.7 vs 35.5 img/s on a
                quiet machine; but half that when another process wants the cores); no threads,
                no pipelining.

``e2e_cpu_ms_per_image`` is the run's process CPU time (all threads) per image: steadier than
img/s on a shared machine, and the number that bounds e2e: at best ``cores * 1000 / cpu_ms``.

Where the e2e CPU goes (2-core AMD EPYC VM, batch 1, labelled copies on; thread CPU per image,
measured by wrapping each stage with ``time.thread_time`` inside a real run):

    stage                                   before (queue, 1x2 ORT)   after (2 streams x 1)
    ORT run                                 ~10.9 (2 threads + sync)   9.7
    JPEG decode at draft scale (libjpeg)     2.65                      2.6
    crop resize from draft + read/open       1.2                       1.15
    preview downscale to <= 512 px           1.04 (BILINEAR)           0.13 (integer reduce)
    labelled copy: draw + JPEG q80 + write   1.34                      1.0  (cached label bands)
    top-k, results.jsonl, events             0.5                       0.45
    normalise into the batch buffer          0.17                      0.16
    process total                           18.3                      15.2

ORT alone is 9.2 CPU-ms/image with one intra-op thread (10.0-10.3 with two, whose threads meet
at a barrier after every operator), so on 2 cores the e2e ceiling is about 2000 / (9.2 + 2.6 +
0.75 + 0.4 + ~0.5) = ~148 img/s even with no contention at all, i.e. ~0.70 of the best pure
figure (~210, two concurrent single-thread streams) and ~0.83 of a 2-thread single stream with
busy-wait off (~178). 0.9 would need a total of ~10.6 CPU-ms/image: less than inference plus
the libjpeg decode of the file. The JPEG draft is already the smallest libjpeg scale with a
short side >= 256 (the centre crop is 224/256 of the short side, so the same bound); Pillow
offers only 1/2, 1/4, 1/8, and the draft decoder flag (fast IDCT, no fancy upsampling) saved
nothing measurable.

Batch 4 (``--batch 4``): pure ~212 for every configuration; e2e ~140 (vs ~130 at batch 1).

Images: the demo photos re-encoded at several scales and JPEG qualities into a temp dir, so the
mix has varied sizes (about 450 to 2200 px on the long side). Each figure is the best of
``--repeat`` runs (the machine is shared; the best run is the least disturbed).

--backend acl
-------------
The demo model is converted as ``deploy model convert --target atlas200dk --simulate`` does
(fixed batch ``--batch``); every measurement imports a fresh simulated ``acl`` (its state is per
process). Rounds are interleaved, each figure is the best of ``--repeat``.

* ``acl_sim_over_onnx``  pure img/s of ``AclBackend.run`` (copy in, execute, copy out) on a ready
                         tensor, the simulator computing with ONNX Runtime inside (compute mode),
                         over the onnx backend's best single-stream pure img/s on the same model and
                         batch (intra-op threads = cores, busy-wait on and off): the simulator's own
                         cost. Single stream because the acl backend runs one batch at a time.
* ``npu_e2e_over_pure``  ``agent.runner.execute`` with the acl backend (decode -> preprocess ->
                         device -> top-k -> results.jsonl, events, labelled copies, the same image
                         mix, replicated to ``--min-images``) against a simulated NPU in timing mode
                         (``ACL_SIM_DEVICE_MS_PER_IMAGE``: a batch takes batch x ms of device time and
                         no CPU), over the device's pure img/s, 1000 / ms; sync and async
                         (``backend_options`` {async, callback_interval, buffers}) at ``--device-ms``
                         and over ``--sweep``; ``npu_below_0.9_at_ms`` is the first device time of the
                         sweep (slow to fast) where the ratio is under 0.9.

Measured (2-core AMD EPYC VM, CPython 3.11, ORT 1.31.1, EfficientNet-Lite0 batch 1, 384 images,
labelled copies on, async with callback_interval 4 and 9 buffers; three runs of ``--repeat 3``,
the first started at load 1.6, the other two at 0.8 with the same benchmark on the code before
these changes run between them; while one runs the load is ~2, its own two busy cores, and no
other process was busy):

    figure                        after (3 runs)          before
    acl_sim_over_onnx             0.94 / 0.99 / 0.96      0.84   (sim 148-164 vs ORT 159-169 img/s)
    npu_e2e_over_pure at 3 ms     async 0.91 / 0.86 / 0.84    0.68
                                  sync  0.81 / 0.81 / 0.82    0.63
    async at 6 / 5 / 4 ms         0.97-0.98 / 0.97-0.98 / 0.96-0.97   0.82 / 0.80 / 0.75
    sync  at 6 / 5 / 4 ms         0.93 / 0.89-0.91 / 0.86-0.87        0.81 / 0.78 / 0.76
    below 0.9 first at            async 3 ms (2 in one run), sync 4-5 ms   both 6 ms
    e2e with a fast device        270-340 img/s at 5.6-6.5 CPU-ms/image (host-bound)

Why the simulator cost 16%: numpy rounded every float input through fp16 before the run (0.76
ms a 224x224 image, host CPU that a real NPU does not take); every memcpy scanned the 256 host
regions it tracks; buffer sizes were recomputed with np.prod per call. Now the simulated atc puts
the rounding into the graph (two Casts: ORT rounds within its run, bit for bit the same), a
pointer check is one lookup, sizes are cached. Left (1-6%): the acl backend's own copy in
(tobytes + memcpy of the 600 KB input, ~0.15-0.25 ms), copy out and the simulated runtime's
per-call Python.

Why the NPU sat idle: (1) sync mode ran top-k, records and events between two executes, and
async mode ran them in the callback, which holds the stream (ACL_CALLBACK_BLOCK): both now hand
over to a results thread (which also writes the labelled copies: one thread fewer); (2) the
timing-mode device thread needed the GIL to start each queued execution (up to ms on a busy
host): the simulated NPU now keeps its own timeline; (3) the simulator's copies released the
GIL (ctypes.memmove), so each 4 KB output copy in a callback waited for it; (4) with 2 x interval
+ 1 buffers the backend launched a callback for one execution every cycle (groups of 4, 4, 1):
it now waits for the callback already on its way; (5) exif_transpose copied every upright image.

What bounds it now is the host CPU, not the pipeline: ~5.6-6.5 CPU-ms per image (JPEG decode at
draft scale and the crop resize ~3.9 single-threaded, the labelled copy ~0.7-1.5 with its JPEG
encode and write, top-k/records/events ~0.4, normalise ~0.2, acl copies ~0.3, plus contention
between the threads) makes the fast end of the sweep 270-340 img/s, i.e. a 3 ms device (333 img/s)
is at what two cores can decode: async then gets 0.84-0.91 depending on how busy the VM is, and
0.96-0.98 from 4 ms up (device-bound: the rest is the callback's hold on the stream). Sync cannot
reach 0.9 at 3 ms on a busy host: between two executes the feeding thread must get a core and
the GIL back after the device call (~0.3 ms), copy the next input in (~0.25 ms) and the output
out (~0.07 ms): ~0.8 ms of host time per 3 ms of device time, 0.78-0.82. Feed an NPU with async.
Remaining pessimism of the simulator: a blocking callback reaches the report thread only when the
simulated device thread next gets the GIL (~0.2 ms a callback, ~1.5% at 3 ms and interval 4).
"""

import argparse
import importlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent import bench as agent_bench  # noqa: E402
from agent import job as jobmod  # noqa: E402
from agent.backends import get_backend  # noqa: E402
from agent.runner import execute, make_backend  # noqa: E402
from deploy.testing import DEMO, demo_assets, demo_built  # noqa: E402

ACL_RUNTIME = ROOT / "deploy" / "sandbox" / "ascend" / "runtime"  # the simulated pyACL (`import acl`)
SWEEP_MS = (6, 5, 4, 3, 2, 1.5, 1, 0.75, 0.5)

SCALES = (1.0, 1.75, 2.5, 3.5)
QUALITIES = (80, 85, 90, 95)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def make_images(photos, out_dir, copies, scales=SCALES):
    """Each photo at several scales x JPEG qualities; ``copies`` qualities per scale."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for photo in photos:
        with Image.open(photo) as im:
            im = im.convert("RGB")
            for s in scales:
                size = (int(im.size[0] * s), int(im.size[1] * s))
                scaled = im.resize(size, Image.BICUBIC) if s != 1.0 else im
                for q in QUALITIES[:copies]:
                    scaled.save(out_dir / f"{photo.stem}_x{s}_q{q}.jpg", "JPEG", quality=q)
                    n += 1
    return n


def _timed_streams(backend, batch, loop, streams):
    """img/s of ``streams`` threads calling backend.run concurrently, ``loop`` batches in all."""
    x = agent_bench.synthetic_input(backend.inputs[0], batch)
    for _ in range(3 * streams):
        backend.run(x)
    per = max(1, loop // streams)

    def work():
        for _ in range(per):
            backend.run(x)

    threads = [threading.Thread(target=work) for _ in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * streams * batch / (time.perf_counter() - t0)


def pure_configs(threads):
    """ORT configurations for pure inference: name -> (backend options, concurrent streams)."""
    cores = os.cpu_count() or 1
    intra = threads or cores
    configs = {
        f"1x{intra}_spin": ({"threads": intra, "spinning": True}, 1),
        f"1x{intra}_nospin": ({"threads": intra, "spinning": False}, 1),
    }
    streams = max(1, cores // (threads or 1))
    if streams > 1:
        configs[f"{streams}x{threads or 1}"] = ({"threads": threads or 1, "streams": streams}, streams)
    return configs


def pure(model, batch, n_images, threads, repeat, best=None):
    """Best img/s per configuration (``best`` is updated and returned)."""
    best = {} if best is None else best
    loop = max(1, n_images // batch)
    for name, (options, streams) in pure_configs(threads).items():
        backend = get_backend("onnx", **options).load(str(model))
        try:
            for _ in range(repeat):
                best[name] = max(best.get(name, 0.0), _timed_streams(backend, batch, loop, streams))
        finally:
            backend.close()
    return best


def e2e(model, labels, image_dir, preprocess, batch, threads, work, repeat, labelled=True):
    """The agent's own run; returns (best ips, its summary)."""
    work.mkdir(parents=True, exist_ok=True)
    best, summary = 0.0, None
    for i in range(repeat):
        out = work / f"e2e{i}"
        job = jobmod.from_dict(
            {
                "run_id": f"bench-{i}",
                "mode": "run",
                "release": str(work),
                "out_dir": str(out),
                "model": str(model),
                "labels": str(labels),
                "inputs": [str(image_dir)],
                "preprocess": preprocess,
                "batch": batch,
                "threads": threads,
                "labelled": labelled,
            }
        )
        rc = execute(job, echo=False, handle_signals=False)
        s = json.loads((out / "summary.json").read_text())
        if rc != 0:
            sys.exit(f"agent run failed ({rc}): {s}")
        if s["ips"] > best:
            best, summary = s["ips"], s
    return best, summary


class NaiveClassifier:
    """The vendor sample's structure (seed 001), with the demo model's preprocessing constants."""

    def __init__(self, model, labels, preprocess, out_dir, threads, spinning=False):
        intra = threads or os.cpu_count() or 1
        self.backend = get_backend("onnx", threads=intra, spinning=spinning).load(str(model))
        self.labels = [x.rstrip("\n") for x in open(labels, encoding="utf-8")]
        self.scale = preprocess.get("scale", 1.0)
        self.mean = preprocess.get("mean", [127.0] * 3)
        self.std = preprocess.get("std", [128.0] * 3)
        self.out_dir = out_dir
        self.results = open(out_dir / "results.jsonl", "w", encoding="utf-8")

    def pre_process(self, image):
        input_image = Image.open(image)
        input_image = input_image.convert("RGB")
        w, h = input_image.size
        if w < h:
            size = (256, int(round(h * 256 / w)))
        else:
            size = (int(round(w * 256 / h)), 256)
        input_image = input_image.resize(size, Image.BILINEAR)
        img = np.array(input_image)
        height, width = img.shape[0], img.shape[1]
        h_off = int(round((height - 224) / 2))
        w_off = int(round((width - 224) / 2))
        crop_img = img[h_off : h_off + 224, w_off : w_off + 224, :]
        shape = crop_img.shape
        img = crop_img.astype("float32")
        for c in range(3):
            img[:, :, c] *= self.scale
            img[:, :, c] -= self.mean[c]
            img[:, :, c] = img[:, :, c] / self.std[c]
        img = img.reshape([1] + list(shape))
        return img.transpose([0, 3, 1, 2]).copy()

    def inference(self, resized_image):
        return self.backend.run(resized_image)

    def post_process(self, infer_output, image_file):
        vals = infer_output[0].flatten().astype(np.float64)
        top = vals[0]
        for i in range(len(vals)):
            if vals[i] > top:
                top = vals[i]
        total = 0.0
        for i in range(len(vals)):
            vals[i] = np.exp(vals[i] - top)
            total += vals[i]
        for i in range(len(vals)):
            vals[i] /= total
        top_k = vals.argsort()[-1:-6:-1]
        rec = {
            "image": os.path.basename(image_file),
            "ok": True,
            "topk": [[int(n), self.labels[n], float(vals[n])] for n in top_k],
        }
        self.results.write(json.dumps(rec) + "\n")
        self.results.flush()
        object_class = self.labels[top_k[0]]
        origin_img = Image.open(image_file)
        draw = ImageDraw.Draw(origin_img)
        font = ImageFont.truetype(FONT, size=20) if os.path.isfile(FONT) else ImageFont.load_default()
        draw.text((10, 50), object_class, font=font, fill=255)
        origin_img.save(self.out_dir / os.path.basename(image_file))
        return int(top_k[0])

    def close(self):
        self.results.close()
        self.backend.close()


def naive(model, labels, images, preprocess, threads, work, repeat):
    best, tops = 0.0, {}
    for i in range(2 * repeat):  # each round with ORT busy-wait on and off: the better counts
        out = work / f"naive{i}"
        out.mkdir(parents=True)
        clf = NaiveClassifier(model, labels, preprocess, out, threads, spinning=bool(i % 2))
        try:
            clf.inference(np.zeros((1, 3, 224, 224), np.float32))  # same warm start as the others
            t0 = time.perf_counter()
            for path in images:
                tops[path.name] = clf.post_process(clf.inference(clf.pre_process(path)), str(path))
            ips = len(images) / (time.perf_counter() - t0)
        finally:
            clf.close()
        best = max(best, ips)
    return best, tops


# --- --backend acl: the simulated pyACL (compute mode) and a simulated NPU (timing mode) ---------


def fresh_acl(**env):
    """A newly imported simulated ``acl`` (its process state is per import: acl.init is once per
    process) with exactly the ``ACL_SIM_*`` settings given."""
    for key in [k for k in os.environ if k.startswith("ACL_SIM_")]:
        del os.environ[key]
    os.environ.update({k: str(v) for k, v in env.items()})
    for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
        del sys.modules[name]
    if str(ACL_RUNTIME) not in sys.path:
        sys.path.insert(0, str(ACL_RUNTIME))
    module = importlib.import_module("acl")
    if not getattr(module, "SIMULATED", False):
        sys.exit(f"`import acl` found a real pyACL ({module.__file__}), not the simulator")
    return module


def build_om(model, batch, work, preprocess=None, yuv=False):
    """The simulated .om that `deploy model convert --target atlas200dk --simulate` makes (fixed batch);
    with ``yuv`` the one `--aipp app` makes for decode: dvpp (a YUV420SP_U8 AIPP input from ``preprocess``)."""
    from deploy.models import atc

    aipp = atc.aipp_from_preprocess(preprocess, yuv=True) if yuv else None
    out = work / f"{model.stem}_b{batch}{'_yuv' if yuv else ''}"
    plan = atc.plan_conversion(model, "atlas200dk", output=out, batch=batch, aipp=aipp)
    return atc.run_conversion(plan, simulate=True)


def acl_pure(model, om, batch, loop, threads, best, segments=5):
    """Pure img/s on a ready tensor of AclBackend.run (sync: copy in, execute, copy out; the
    simulator computing through ONNX Runtime) as ``best["acl_sim"]``, and of the onnx backend's
    single-stream configurations (the acl backend also runs one batch at a time). The backends
    take turns in short segments, so a busy spell of the shared machine hits them alike; the
    best segment of each counts."""
    backends = {}
    try:
        for name, (options, streams) in pure_configs(threads).items():
            if streams == 1:
                backends[name] = get_backend("onnx", **options).load(str(model))
        backends["acl_sim"] = get_backend("acl", acl_module=fresh_acl()).load(str(om))
        for _ in range(segments):
            for name, backend in backends.items():
                ips = _timed_streams(backend, batch, max(1, loop // segments), 1)
                best[name] = max(best.get(name, 0.0), ips)
    finally:
        for backend in backends.values():
            backend.close()
    return best


def npu_e2e(om, demo, image_dir, out, ms, options, batch=1):
    """One agent run (agent.runner.execute, labelled copies on) on the acl backend against a
    simulated NPU taking ``ms`` per image; returns its summary.json."""
    acl = fresh_acl(ACL_SIM_DEVICE_MS_PER_IMAGE=ms)
    job = jobmod.from_dict(
        {
            "run_id": "bench-acl",
            "mode": "run",
            "release": str(out.parent),
            "out_dir": str(out),
            "model": str(om),
            "backend": "acl",
            "labels": str(demo.labels),
            "inputs": [str(image_dir)],
            "preprocess": demo.preprocess,
            "batch": batch,
            "labelled": True,
            "backend_options": options,
        }
    )
    rc = execute(job, echo=False, handle_signals=False, backend=make_backend(job, acl_module=acl))
    summary = json.loads((out / "summary.json").read_text())
    if rc != 0:
        sys.exit(f"agent run on the simulated NPU failed ({rc}): {summary}")
    shutil.rmtree(out)
    return summary


def acl_modes(args):
    """The acl backend's modes as job.backend_options: sync and async, each with JPEGs decoded on the
    CPU and on DVPP (decode: dvpp, a YUV420SP_U8 AIPP model)."""
    sync = {"async": False}
    async_ = {"async": True, "callback_interval": args.callback_interval, "buffers": args.buffers}
    return {"sync": sync, "async": async_, "sync_dvpp": {**sync, "decode": "dvpp"},
            "async_dvpp": {**async_, "decode": "dvpp"}}


# The targets (agent e2e over device pure at --device-ms, 3 ms/image by default): each mode's key
# in npu_e2e_over_pure and the least ratio that meets it.
TARGETS = {f"npu_e2e_over_pure[{mode}]>=0.95": (mode, 0.95) for mode in ("sync", "async", "sync_dvpp", "async_dvpp")}


@dataclass
class AclBest:
    pure: dict = field(default_factory=dict)  # "acl_sim" or an onnx single-stream configuration -> img/s
    e2e: dict = field(default_factory=dict)  # (ms, mode) -> best summary.json


def acl_rounds(args, demo, image_dir, work):
    """Interleaved rounds (a slow spell of the shared machine hits every figure alike), best of each."""
    oms = {"cpu": build_om(demo.model, args.batch, work),
           "dvpp": build_om(demo.model, args.batch, work, demo.preprocess, yuv=True)}
    om = oms["cpu"]
    best = AclBest()
    sweep = sorted(set(args.sweep) | {args.device_ms}, reverse=True)
    for r in range(args.repeat):
        acl_pure(demo.model, om, args.batch, args.loop, args.threads, best.pure)
        for ms in sweep:
            for mode, options in acl_modes(args).items():
                s = npu_e2e(oms[options.get("decode", "cpu")], demo, image_dir, work / f"npu{r}", ms, options, args.batch)
                if s["ips"] > best.e2e.get((ms, mode), {}).get("ips", 0.0):
                    best.e2e[ms, mode] = s
    return best


def _ratio(a, b):
    return round(a / b, 3) if b else 0.0


def acl_summary(args, demo, best, images):
    onnx_configs = {k: v for k, v in best.pure.items() if k != "acl_sim"}
    onnx, sim = max(onnx_configs.values()), best.pure["acl_sim"]
    sweep, below = [], {}
    for ms in sorted({ms for ms, _ in best.e2e}, reverse=True):
        row = {"ms": ms, "pure_ips": round(1000.0 / ms, 2)}
        for mode in acl_modes(args):
            s = best.e2e[ms, mode]
            row[f"{mode}_ips"] = round(s["ips"], 2)
            row[mode] = _ratio(s["ips"], 1000.0 / ms)
            row[f"{mode}_cpu_ms"] = round(1000.0 * s["timings_s"]["process_cpu"] / s["this_run"]["ok"], 2)
            if row[mode] < 0.9:
                below.setdefault(mode, ms)
        sweep.append(row)
    at = next(row for row in sweep if row["ms"] == args.device_ms)
    return {
        "acl_sim_over_onnx": _ratio(sim, onnx),
        "acl_sim_pure_ips": round(sim, 2),
        "onnx_pure_ips": round(onnx, 2),
        "onnx_pure_configs": {k: round(v, 2) for k, v in onnx_configs.items()},
        "npu_ms_per_image": args.device_ms,
        "npu_pure_ips": at["pure_ips"],
        "npu_e2e_over_pure": {mode: at[mode] for mode in acl_modes(args)},
        "npu_e2e_ips": {mode: at[f"{mode}_ips"] for mode in acl_modes(args)},
        "npu_e2e_cpu_ms_per_image": {mode: at[f"{mode}_cpu_ms"] for mode in acl_modes(args)},
        "npu_below_0.9_at_ms": {mode: below.get(mode) for mode in acl_modes(args)},
        "dvpp_cpu_fallbacks": {mode: best.e2e[args.device_ms, mode].get("decode", {}).get("cpu_fallbacks")
                               for mode in acl_modes(args) if mode.endswith("_dvpp")},
        "targets": {name: at[mode] >= least for name, (mode, least) in TARGETS.items()},
        "npu_sweep": sweep,
        "async_options": acl_modes(args)["async"],
        "batch": args.batch,
        "images": len(images),
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "model": str(demo_rel(demo.model)),
    }


def acl_text(r):
    """The acl figures for a person: each ratio with the absolute figures it divides."""
    ms = r["npu_ms_per_image"]
    lines = [
        f"acl_sim_over_onnx        {r['acl_sim_over_onnx']:<6}  simulated pyACL {r['acl_sim_pure_ips']} img/s"
        f" / ONNX Runtime {r['onnx_pure_ips']} img/s (batch {r['batch']}, best single stream)",
    ]
    for mode, ratio in r["npu_e2e_over_pure"].items():
        lines.append(
            f"npu_e2e_over_pure {mode:6} {ratio:<6}  agent e2e {r['npu_e2e_ips'][mode]} img/s"
            f" / device {r['npu_pure_ips']} img/s at {ms} ms/image"
            f" ({r['npu_e2e_cpu_ms_per_image'][mode]} CPU-ms/image)"
        )
    lines.append(f"ratio < 0.9 first at (ms/image): {r['npu_below_0.9_at_ms']}")
    lines.append(f"DVPP runs' CPU fallbacks: {r['dvpp_cpu_fallbacks']}")
    lines += [f"target {name}: {'met' if ok else 'NOT met'}" for name, ok in r["targets"].items()]
    modes = list(r["npu_e2e_over_pure"])
    lines.append("   ms   device" + "".join(f"  {m + ' img/s':>16}  ratio  cpu-ms" for m in modes))
    for row in r["npu_sweep"]:
        cells = "".join(f"  {row[m + '_ips']:16} {row[m]:6} {row[m + '_cpu_ms']:7}" for m in modes)
        lines.append(f"{row['ms']:5} {row['pure_ips']:8}{cells}")
    lines.append(
        f"images {r['images']}, repeat {r['repeat']}, cpus {r['cpus']}, async options {r['async_options']}"
    )
    return "\n".join(lines) + "\n"


def acl_main(args, demo, work):
    image_dir = work / "images"
    make_images(demo.images, image_dir, args.copies, [float(x) for x in args.scales.split(",")])
    images = replicate(sorted(image_dir.glob("*.jpg")), args.min_images)
    best = acl_rounds(args, demo, image_dir, work)
    return acl_summary(args, demo, best, images)


def replicate(images, at_least):
    """Hard links to the image set until there are ``at_least`` images (a run at device speed
    should last long enough to be measured); returns every image."""
    out, k = list(images), 1
    while len(out) < at_least:
        for path in images[: at_least - len(out)]:
            link = path.with_name(f"{path.stem}_{k}{path.suffix}")
            os.link(path, link)
            out.append(link)
        k += 1
    return out


def demo_rel(path):
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--demo", type=Path, default=DEMO)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--copies", type=int, default=4, help="JPEG qualities per scale (1-4)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0 = one per core")
    p.add_argument("--scales", default=",".join(str(s) for s in SCALES), help="photo scale factors")
    p.add_argument("--backend", choices=("onnx", "acl"), default="onnx", help="acl: the simulated pyACL/NPU")
    acl = p.add_argument_group("--backend acl")
    acl.add_argument("--loop", type=int, default=200, help="batches per pure-inference measurement")
    acl.add_argument("--device-ms", type=_number, default=3, help="NPU time per image for npu_e2e_over_pure")
    acl.add_argument(
        "--sweep", type=_numbers, default=SWEEP_MS, help="device ms/image to sweep (comma-separated)"
    )
    acl.add_argument("--min-images", type=int, default=384, help="replicate the images up to this many")
    acl.add_argument("--callback-interval", type=int, default=4, help="async: executions per callback")
    acl.add_argument("--buffers", type=int, default=0, help="async: device buffer sets (0 = the backend's)")
    return p.parse_args(argv)


def _number(text):
    x = float(text)
    return int(x) if x == int(x) else x


def _numbers(text):
    return tuple(_number(x) for x in text.split(",") if x.strip())


@dataclass
class Best:
    """The best figure of each mode over the rounds."""

    pure: dict = field(default_factory=dict)  # configuration name -> img/s
    e2e: float = 0.0
    e2e_plain: float = 0.0  # without labelled copies
    naive: float = 0.0
    summary: dict | None = None  # summary.json of the best e2e run
    naive_top: dict = field(default_factory=dict)  # image name -> top-1 class of the naive loop


def rounds(args, demo, image_dir, images, work):
    """Interleaved rounds, best of each: the machine is shared, so a slow spell hits all modes alike."""
    best = Best()
    for r in range(args.repeat):
        pure(demo.model, args.batch, 2 * len(images), args.threads, 1, best.pure)
        ips, s = e2e(demo.model, demo.labels, image_dir, demo.preprocess, args.batch, args.threads, work / f"r{r}", 1, True)
        if ips > best.e2e:
            best.e2e, best.summary = ips, s
        ips, _ = e2e(demo.model, demo.labels, image_dir, demo.preprocess, args.batch, args.threads, work / f"p{r}", 1, False)
        best.e2e_plain = max(best.e2e_plain, ips)
        ips, best.naive_top = naive(demo.model, demo.labels, images, demo.preprocess, args.threads, work / f"n{r}", 1)
        best.naive = max(best.naive, ips)
    return best


def top1_agreement(results_jsonl, naive_top):
    """Share of images whose top-1 class is the same in the agent's results and the naive loop's."""
    agent_top = {}
    for line in results_jsonl.read_text().splitlines():
        rec = json.loads(line)
        agent_top[rec["image"]] = rec["topk"][0][0]
    return sum(agent_top.get(k) == v for k, v in naive_top.items()) / float(len(naive_top))


def summarise(args, model, best, images, agree):
    pure_ips, e2e_ips, plain_ips, summary = max(best.pure.values()), best.e2e, best.e2e_plain, best.summary
    sizes = [Image.open(x).size for x in images]
    return {
        "pure_ips": round(pure_ips, 2),
        "e2e_ips": round(e2e_ips, 2),
        "naive_ips": round(best.naive, 2),
        "e2e_over_pure": round(e2e_ips / pure_ips, 3),
        "e2e_over_naive": round(e2e_ips / best.naive, 3),
        "e2e_no_labelled_ips": round(plain_ips, 2),
        "e2e_no_labelled_over_pure": round(plain_ips / pure_ips, 3),
        "pure_configs": {k: round(v, 2) for k, v in best.pure.items()},
        "batch": args.batch,
        "labelled": True,
        "images": len(images),
        "image_px_long_side": [min(max(s) for s in sizes), max(max(s) for s in sizes)],
        "image_mb": round(sum(x.stat().st_size for x in images) / 1e6, 1),
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "top1_agreement_fast_vs_naive": round(agree, 3),
        "e2e_timings_s": summary["timings_s"],
        "e2e_cpu_ms_per_image": round(1000.0 * summary["timings_s"]["process_cpu"] / len(images), 2),
        "model": str(demo_rel(model)),
    }


def main(argv=None):
    args = parse_args(argv)
    if not demo_built(args.demo) or not demo_assets(args.demo).images:
        sys.exit(f"no demo model/photos in {args.demo}: run `deploy model demo` first (or pass --demo DIR)")
    demo = demo_assets(args.demo)
    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    if args.backend == "acl":
        try:
            result = acl_main(args, demo, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        sys.stdout.write(json.dumps(result) + "\n" if args.json else acl_text(result))
        return 0
    try:
        image_dir = work / "images"
        make_images(demo.images, image_dir, args.copies, [float(x) for x in args.scales.split(",")])
        images = sorted(image_dir.glob("*.jpg"))
        best = rounds(args, demo, image_dir, images, work)
        agree = top1_agreement(work / "r0" / "e2e0" / "results.jsonl", best.naive_top)
        result = summarise(args, demo.model, best, images, agree)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        buf = io.StringIO()
        for k, v in result.items():
            buf.write(f"{k:32} {v}\n")
        sys.stdout.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
