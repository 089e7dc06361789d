"""``python3 -m agent run|bench|eval|info``: the agent's command line.

With ``--job job.json`` the host's job file says everything. For local use the same modes take
direct flags, which build a Job internally, e.g.::

    python3 -m agent run --model M.onnx --labels L.txt --images DIR --out OUTDIR --batch 4 --topk 5 --preset imagenet
    python3 -m agent eval --model M.onnx --labels L.txt --images DIR --label-file val_label.txt --out OUTDIR
    python3 -m agent bench --model M.onnx --out OUTDIR --loop 100 --warmup 5 --batch-sizes 1,4
    python3 -m agent info --model M.onnx
    python3 -m agent service --config SERVICE/config.json --release RELEASE_DIR   (see agent.service)

Exit codes: 0 ok, 2 partial (some images failed), 1 failed (nothing classified, or a bad job);
see agent.runner. Events go to stdout and OUTDIR/events.jsonl. Python 3.7 compatible.
"""

import argparse
import json
import os
import platform
import sys
import time

from . import __version__
from . import job as jobmod
from .backends import BackendError, get_backend, spec_dict


def _parser():
    p = argparse.ArgumentParser(prog="python3 -m agent", description="On-board image classification agent")
    sub = p.add_subparsers(dest="mode")
    s = sub.add_parser("service", help="classify what arrives in an inbox until stopped (see agent.service)")
    s.add_argument("--config", required=True, help="the service's config.json")
    s.add_argument("--release", default=os.getcwd(), help="the release to run (default: the current directory)")
    for mode in ("run", "eval", "bench", "info"):
        s = sub.add_parser(mode)
        s.add_argument("--job", help="job.json written by the host (other flags are then ignored)")
        s.add_argument("--model", help="model file (.onnx or .om)")
        s.add_argument("--backend", choices=jobmod.BACKENDS, help="default: acl for .om, magicmind for .mm, else onnx")
        s.add_argument("--threads", type=int, default=0, help="CPU threads (0 = one per core)")
        if mode == "info":
            continue
        s.add_argument("--out", help="output (run) directory")
        s.add_argument("--run-id", help="run id (default: derived from the time)")
        s.add_argument("--batch", type=int, default=1)
        if mode == "bench":
            s.add_argument("--loop", type=int, default=100)
            s.add_argument("--warmup", type=int, default=5)
            s.add_argument("--batch-sizes", help="comma-separated, e.g. 1,4,8 (default: --batch)")
            continue
        s.add_argument("--labels", help="class names, one per line")
        s.add_argument("--images", action="append", default=[], help="image file or directory (repeatable)")
        s.add_argument("--topk", type=int, default=5)
        s.add_argument("--preset", default="imagenet", help="imagenet | caffe | cifar | raw-u8")
        s.add_argument("--preprocess", help='JSON overrides, e.g. \'{"mean": 127, "std": 128, "scale": 1}\'')
        s.add_argument("--no-labelled", action="store_true", help="do not write labelled copies")
        if mode == "eval":
            s.add_argument("--label-file", help="ground truth: lines 'NAME.JPEG LABEL'")
    return p


def _default_backend(model):
    """acl for an .om, magicmind for an .mm (a MagicMind model file), else onnx."""
    return "acl" if model.endswith(".om") else "magicmind" if model.endswith(".mm") else "onnx"


def job_from_args(args):
    """A Job from direct flags (relative paths are taken from the current directory)."""
    if not args.model:
        raise jobmod.JobError("--model (or --job) is required")
    backend = args.backend or _default_backend(args.model)
    data = {
        "run_id": getattr(args, "run_id", None) or time.strftime("%Y%m%d-%H%M%S-local"),
        "mode": args.mode,
        "release": os.getcwd(),
        "out_dir": os.path.abspath(getattr(args, "out", None) or "agent-out"),
        "model": os.path.abspath(args.model),
        "backend": backend,
        "threads": args.threads,
        "batch": getattr(args, "batch", 1),
    }
    if args.mode in ("run", "eval"):
        pre = {"preset": args.preset}
        if args.preprocess:
            try:
                extra = json.loads(args.preprocess)
            except ValueError as exc:
                raise jobmod.JobError(f"--preprocess is not JSON: {exc}") from exc
            if not isinstance(extra, dict):
                raise jobmod.JobError("--preprocess must be a JSON object")
            pre.update(extra)
        if not args.images:
            raise jobmod.JobError("--images is required")
        data.update(
            preprocess=pre,
            labels=os.path.abspath(args.labels) if args.labels else None,
            inputs=[os.path.abspath(p) for p in args.images],
            topk=args.topk,
            labelled=not args.no_labelled,
        )
        if args.mode == "eval":
            if not args.label_file:
                raise jobmod.JobError("--label-file is required for eval")
            data["eval"] = {"label_file": os.path.abspath(args.label_file)}
    elif args.mode == "bench":
        sizes = [int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes else [args.batch]
        data["bench"] = {"loop": args.loop, "warmup": args.warmup, "batch_sizes": sizes}
    return jobmod.from_dict(data)


def info(job_or_model, backend_name, threads=0):
    """Environment and model description, as one JSON object."""
    out = {
        "agent": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    for mod in ("numpy", "PIL", "onnxruntime", "acl", "magicmind"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "present")
        except Exception as exc:
            out[mod] = None if isinstance(exc, ImportError) else f"error: {exc}"
    from .postprocess import find_font_path

    out["font"] = find_font_path()
    if job_or_model:
        b = get_backend(backend_name, threads=threads)  # every backend takes threads (onnx uses it)
        try:
            b.load(job_or_model)
            out["model"] = {
                "path": job_or_model,
                "backend": backend_name,
                "inputs": [spec_dict(s) for s in b.inputs],
                "outputs": [spec_dict(s) for s in b.outputs],
            }
        except BackendError as exc:
            out["model"] = {"path": job_or_model, "error": str(exc)}
        finally:
            b.close()
    return out


def main(argv=None):
    args = _parser().parse_args(argv)
    if not args.mode:
        _parser().print_help(sys.stderr)
        return 1
    if args.mode == "service":
        from . import service

        return service.main(args.config, args.release)
    try:
        if args.job:
            job = jobmod.load(args.job)
            if args.mode != "info" and job.mode != args.mode:
                raise jobmod.JobError(f"job.json says mode {job.mode!r} but the command is {args.mode!r}")
        elif args.mode == "info":
            job = None
        else:
            job = job_from_args(args)
    except jobmod.JobError as exc:
        sys.stderr.write(f"agent: {exc}\n")
        return 1
    if args.mode == "info":
        if job is not None:
            model, backend, threads = job.path(job.model), job.backend, job.threads
        else:
            model = args.model
            backend = args.backend or _default_backend(model or "")
            threads = args.threads
        sys.stdout.write(json.dumps(info(model, backend, threads), indent=2) + "\n")
        return 0
    from .runner import execute

    return execute(job)


if __name__ == "__main__":
    sys.exit(main())
