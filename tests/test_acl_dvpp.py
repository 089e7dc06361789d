"""The acl backend's decode: dvpp (agent/backends/acl_dvpp.py, agent/yuv.py) against the simulated pyACL and
DVPP, in process: the same top-1 as the cpu path on the demo photos (sync and async), the CPU fallback for
what DVPP does not take, corrupt JPEGs as error records, and the model check at load. The sandbox board's
end-to-end run is in test_atlas_sandbox.py."""

import json
import shutil

import aclsim
import numpy as np
import pytest
from PIL import Image

from agent import job as jobmod
from agent import yuv
from agent.backends import BackendError
from agent.backends.acl import AclBackend
from agent.runner import execute, make_backend
from deploy.models import atc
from deploy.testing import DEMO, demo_assets


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(demo assets, {"cpu": the RGB888 AIPP .om, "dvpp": the YUV420SP_U8 AIPP .om}), as --aipp app makes them."""
    aclsim.require_demo_model()
    demo = demo_assets(DEMO)
    work = tmp_path_factory.mktemp("dvpp-models")
    oms = {}
    for decode in ("cpu", "dvpp"):
        aipp = atc.aipp_from_preprocess(demo.preprocess, yuv=decode == "dvpp")
        plan = atc.plan_conversion(demo.model, "atlas200dk", aipp=aipp, output=work / f"eff_{decode}")
        oms[decode] = atc.run_conversion(plan, simulate=True)
    return demo, oms


def run(monkeypatch, tmp_path, demo, om, images, decode, async_mode=False):
    """One agent run; (records by image, summary)."""
    acl = aclsim.fresh_acl(monkeypatch)
    out = tmp_path / f"run-{decode}-{async_mode}"
    job = jobmod.from_dict({
        "run_id": "t", "mode": "run", "release": str(tmp_path), "out_dir": str(out), "model": str(om),
        "backend": "acl", "labels": str(demo.labels), "inputs": [str(images)], "preprocess": demo.preprocess,
        "labelled": True, "backend_options": {"decode": decode, "async": async_mode, "callback_interval": 2},
    })  # fmt: skip
    rc = execute(job, echo=False, handle_signals=False, backend=make_backend(job, acl_module=acl))
    summary = json.loads((out / "summary.json").read_text())
    assert "error" not in summary and rc == (0 if not summary["failed"] else 2), (rc, summary)
    recs = {r["image"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    return recs, summary


def top1s(recs):
    return {k: (r["topk"][0][0] if r["ok"] else r["kind"]) for k, r in recs.items()}


@pytest.mark.parametrize("async_mode", [False, True], ids=["sync", "async"])
def test_dvpp_gives_the_cpu_paths_top1_on_the_demo_photos(monkeypatch, tmp_path, models, async_mode):
    demo, oms = models
    images = demo.root / "images"
    cpu, _ = run(monkeypatch, tmp_path, demo, oms["cpu"], images, "cpu", async_mode)
    dvpp, summary = run(monkeypatch, tmp_path, demo, oms["dvpp"], images, "dvpp", async_mode)
    assert len(cpu) == len(demo.images) and top1s(dvpp) == top1s(cpu)
    assert summary["decode"] == {"decode": "dvpp", "dvpp_decoded": len(demo.images), "cpu_fallbacks": {}}


def test_what_dvpp_does_not_take_is_decoded_on_the_cpu_and_corrupt_jpegs_stay_errors(monkeypatch, tmp_path, models):
    demo, oms = models
    images = tmp_path / "mixed"
    images.mkdir()
    photo = demo.root / "images" / "coffee.jpg"
    with Image.open(photo) as im:
        im.save(images / "coffee.png")  # not a JPEG
        im.save(images / "coffee-progressive.jpg", progressive=True, quality=90)  # JPEGD refuses the coding
    shutil.copy(photo, images / "coffee.jpg")
    data = photo.read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 3])  # header fine, the scan cut
    (images / "text.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    cpu, _ = run(monkeypatch, tmp_path, demo, oms["cpu"], images, "cpu")
    dvpp, summary = run(monkeypatch, tmp_path, demo, oms["dvpp"], images, "dvpp")
    assert top1s(dvpp) == top1s(cpu)
    for name in ("coffee.png", "coffee-progressive.jpg", "coffee.jpg"):
        assert dvpp[name]["ok"] and dvpp[name]["topk"][0][1] == "espresso", dvpp[name]
    for name in ("truncated.jpg", "text.jpg"):  # error records, with the cpu path's kind and message
        assert not dvpp[name]["ok"] and (dvpp[name]["kind"], dvpp[name]["message"]) == (
            cpu[name]["kind"], cpu[name]["message"])
    fallbacks = summary["decode"]["cpu_fallbacks"]
    assert summary["decode"]["dvpp_decoded"] == 1 and fallbacks["not a JPEG"] == 1
    assert fallbacks["a JPEG coding JPEGD does not decode"] == 1
    assert fallbacks["failed on the device"] == 1 and fallbacks["not a JPEG JPEGD can read"] == 1


def test_the_model_must_have_a_yuv420sp_aipp_input_and_the_cpu_path_says_so_too(monkeypatch, models):
    _, oms = models
    acl = aclsim.fresh_acl(monkeypatch)
    with pytest.raises(BackendError) as info:
        AclBackend(acl_module=acl, decode="dvpp").load(str(oms["cpu"]))
    msg = str(info.value)
    assert "decode: dvpp needs a model whose input is a YUV420SP_U8 AIPP input" in msg and "\n" not in msg
    acl = aclsim.fresh_acl(monkeypatch)
    with pytest.raises(BackendError, match="YUV420SP_U8 .NV12. AIPP input .* set app.backend_options.decode: dvpp"):
        AclBackend(acl_module=acl).load(str(oms["dvpp"]))
    with pytest.raises(BackendError, match="^decode must be one of cpu, dvpp, not 'gpu'$"):
        AclBackend(decode="gpu")


def test_dvpp_releases_its_lanes_at_close(monkeypatch, models):
    demo, oms = models
    acl = aclsim.fresh_acl(monkeypatch)
    backend = AclBackend(acl_module=acl, decode="dvpp").load(str(oms["dvpp"]))
    picture = backend.dvpp.decode((demo.root / "images" / "rocket.jpg").read_bytes(), lambda w, h: (0, 0, w & ~1, h & ~1))
    assert picture.shape == (336, 224) and picture.dtype == np.uint8 and picture[:224].std() > 10
    assert backend.run(picture[None])[0].shape[-1] == 1000
    backend.close()
    assert not [h for h, (kind, _) in acl._core.STATE.handles.items() if kind.startswith("dvpp")]


def test_rgb_to_nv12_round_trips_through_the_aipp_matrix():
    rgb = np.random.RandomState(0).randint(0, 256, (8, 8, 3)).astype(np.uint8)
    flat = np.repeat(np.repeat(rgb[::2, ::2], 2, axis=0), 2, axis=1)  # chroma constant per 2x2 block
    back = np.asarray(yuv.nv12_to_rgb(yuv.rgb_to_nv12(flat)), dtype=np.int32)
    assert np.abs(back - flat).max() <= 3
    assert yuv.jpeg_orientation((DEMO / "images" / "rocket.jpg").read_bytes()) in (None, 1)


def test_bench_mode_feeds_nv12_pictures(monkeypatch, tmp_path, models):
    from agent import bench

    _, oms = models
    acl = aclsim.fresh_acl(monkeypatch)
    backend = AclBackend(acl_module=acl, decode="dvpp").load(str(oms["dvpp"]))
    try:
        r = bench.run_one(backend, 1, 2, 1)
    finally:
        backend.close()
    assert r["batch"] == 1 and r["loop"] == 2 and r["throughput"] > 0
