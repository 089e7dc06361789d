"""The simulated DVPP's cost: JPEG decode + resize through ``acl.media`` vs Pillow doing the same.

    python benchmarks/dvpp.py [--json] [--demo DIR] [--size 224] [--repeat 21]

For each picture (the demo photos, and larger JPEGs made from one with Pillow: 1920x1280,
4000x3000, 6000x4000) it times, best of ``--repeat`` (the machine is shared: the best run is the
least disturbed; each round runs the four variants in turn):

* ``pillow``   ``Image.open(bytes).convert("RGB").resize((size, size))``: Pillow's default filter
               (BICUBIC, which filters over the whole reduced footprint), and ``pillow_bilinear``
               the same with BILINEAR;
* ``dvpp``     what acllite's ``jpegd`` + ``resize`` do through the simulated pyACL: the JPEG copied
               into dvpp_malloc memory, predict_dec_size, the output description (strides 128 x 16),
               dvpp_jpeg_decode_async, synchronize_stream, the VPC output description (strides
               16 x 2), dvpp_vpc_resize_async with the default interpolation (0), synchronize_stream,
               the frees; ``dvpp_bilinear`` with interpolation 1 (OpenCV-like bilinear).

The ratios (``dvpp / pillow`` and ``dvpp_bilinear / pillow_bilinear``) must stay <= 1.2: the
simulator must not make the DVPP path look slower than decoding on the CPU would be.
"""

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "images"
LARGE = ((1920, 1280), (4000, 3000), (6000, 4000))  # VPC scales by 1/32 at most: 6000 -> 224 is 1/27


def _pictures(demo):
    """(name, JPEG bytes): the demo photos, then larger ones made from coffee.jpg."""
    from PIL import Image

    pics = [(p.name, p.read_bytes()) for p in sorted(demo.glob("*.jpg"))]
    base = Image.open(demo / "coffee.jpg").convert("RGB")
    for w, h in LARGE:
        out = io.BytesIO()
        base.resize((w, h), Image.BICUBIC).save(out, "JPEG", quality=90)
        pics.append((f"coffee-{w}x{h}.jpg", out.getvalue()))
    return pics


def _pillow(data, size, resample):
    from PIL import Image

    Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), resample)


class Dvpp:
    """The acllite jpegd + resize flow on the simulated pyACL."""

    def __init__(self):
        sys.path.insert(0, str(REPO / "deploy" / "sandbox" / "ascend" / "runtime"))
        import acl

        self.acl, self.m = acl, acl.media
        assert acl.init() == 0 and acl.rt.set_device(0) == 0
        self.ctx, _ = acl.rt.create_context(0)
        self.stream, _ = acl.rt.create_stream()
        self.channel = self.m.dvpp_create_channel_desc()
        assert self.m.dvpp_create_channel(self.channel) == 0
        self.resize_cfg = {k: self.m.dvpp_create_resize_config() for k in (0, 1)}
        self.m.dvpp_set_resize_config_interpolation(self.resize_cfg[1], 1)

    def _desc(self, ptr, size, w, h, ws, hs):
        m = self.m
        desc = m.dvpp_create_pic_desc()
        for setter, value in ((m.dvpp_set_pic_desc_data, ptr), (m.dvpp_set_pic_desc_size, size),
                              (m.dvpp_set_pic_desc_format, 1), (m.dvpp_set_pic_desc_width, w),
                              (m.dvpp_set_pic_desc_height, h), (m.dvpp_set_pic_desc_width_stride, ws),
                              (m.dvpp_set_pic_desc_height_stride, hs)):  # fmt: skip
            setter(desc, value)
        return desc

    def run(self, data, wh, size, interpolation):
        acl, m = self.acl, self.m
        w, h = wh
        src, _ = m.dvpp_malloc(len(data))
        acl.rt.memcpy(src, len(data), acl.util.bytes_to_ptr(data), len(data), 3)
        dec_size, ret = m.dvpp_jpeg_predict_dec_size(src, len(data), 1)
        out, _ = m.dvpp_malloc(dec_size)
        dec = self._desc(out, dec_size, w, h, -(-w // 128) * 128, -(-h // 16) * 16)
        assert m.dvpp_jpeg_decode_async(self.channel, src, len(data), dec, self.stream) == 0
        assert acl.rt.synchronize_stream(self.stream) == 0
        small = size * size * 3 // 2
        res, _ = m.dvpp_malloc(small)
        rdesc = self._desc(res, small, size, size, -(-size // 16) * 16, size)
        assert m.dvpp_vpc_resize_async(self.channel, dec, rdesc, self.resize_cfg[interpolation], self.stream) == 0
        assert acl.rt.synchronize_stream(self.stream) == 0
        for d in (dec, rdesc):
            m.dvpp_destroy_pic_desc(d)
        for p in (src, out, res):
            m.dvpp_free(p)


def measure(demo, size, repeat):
    """Per picture the best of ``repeat`` rounds, each round running the four variants in turn (so a
    burst of load from elsewhere hits all four, not one)."""
    from PIL import Image

    dvpp = Dvpp()
    rows = []
    for name, data in _pictures(demo):
        wh = Image.open(io.BytesIO(data)).size
        variants = {
            "pillow": lambda data=data: _pillow(data, size, Image.BICUBIC),
            "dvpp": lambda data=data, wh=wh: dvpp.run(data, wh, size, 0),
            "pillow_bilinear": lambda data=data: _pillow(data, size, Image.BILINEAR),
            "dvpp_bilinear": lambda data=data, wh=wh: dvpp.run(data, wh, size, 1),
        }
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(repeat):
            for key, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                best[key] = min(best[key], (time.perf_counter() - t0) * 1000)
        row = {"image": name, "size": f"{wh[0]}x{wh[1]}", **best}
        row["ratio"] = row["dvpp"] / row["pillow"]
        row["ratio_bilinear"] = row["dvpp_bilinear"] / row["pillow_bilinear"]
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--demo", type=Path, default=DEMO)
    p.add_argument("--size", type=int, default=224, help="the resize target (square)")
    p.add_argument("--repeat", type=int, default=21)
    args = p.parse_args(argv)
    if not (args.demo / "coffee.jpg").is_file():
        sys.exit(f"no demo photos in {args.demo}: run `python3 -m deploy model demo` first")
    rows = measure(args.demo, args.size, args.repeat)
    worst = max(max(r["ratio"], r["ratio_bilinear"]) for r in rows)
    if args.json:
        print(json.dumps({"size": args.size, "rows": rows, "worst_ratio": worst, "python": sys.version.split()[0],
                          "cores": os.cpu_count()}))  # fmt: skip
        return 0
    print(f"decode + resize to {args.size}x{args.size}, ms, best of {args.repeat} (Python {sys.version.split()[0]})")
    print(f"{'image':26s} {'size':>10s} {'pillow':>8s} {'dvpp':>8s} {'ratio':>6s}  {'pil-bl':>8s} {'dvpp-bl':>8s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['image']:26s} {r['size']:>10s} {r['pillow']:8.2f} {r['dvpp']:8.2f} {r['ratio']:6.2f}  "
              f"{r['pillow_bilinear']:8.2f} {r['dvpp_bilinear']:8.2f} {r['ratio_bilinear']:6.2f}")  # fmt: skip
    print(f"worst ratio {worst:.2f} (target <= 1.2)")
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
