"""What the board is: architecture, Python, free disk, and optional probes. Python 3.7 + stdlib only."""

import os
import sys

from . import protocol
from .files import read_text


def gather(home):
    """The facts every operation can report; cheap (no subprocess)."""
    st = os.statvfs(home)
    os_name = ""
    for line in (read_text("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip().strip('"')
    return protocol.Facts(
        arch=os.uname().machine,
        python="{}.{}.{}".format(*sys.version_info[:3]),
        python_exe=sys.executable,
        home=home,
        free_bytes=st.f_bavail * st.f_frsize,
        os=os_name,
        user=os.environ.get("USER") or str(os.getuid()),
    )


def _run(argv, merge=False):
    import subprocess

    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                          text=True)


def probe_acl(cann_env=()):
    """``import acl`` in a child, in the environment the agent will get: the app's env.sh (sourced
    by the caller), or before the first push the first CANN ``set_env.sh`` of ``cann_env`` found."""
    return _probe_import("import acl; print(getattr(acl, '__file__', ''))", cann_env)


def probe_magicmind(env_scripts=()):
    """``import magicmind.python.runtime`` the same way (the Neuware env script before the first push)."""
    code = "import magicmind.python.runtime as mm; print(getattr(mm, '__file__', ''), getattr(mm, '__version__', ''))"
    return _probe_import(code, env_scripts)


def probe_cnmon():
    """``cnmon`` (the MLU table: card, name, firmware, driver, memory), or None without cnmon."""
    import shutil

    exe = shutil.which("cnmon")
    if not exe:
        return None
    r = _run([exe], merge=True)
    return protocol.CommandProbe(ok=r.returncode == 0, output=r.stdout[-4000:])


def _probe_import(code, cann_env):
    argv, sourced = [sys.executable, "-c", code], "env.sh"
    if not os.environ.get("HIAI_APP"):
        found = [p for p in (os.path.expandvars(c) for c in cann_env) if os.path.isfile(p)]
        sourced = found[0] if found else ""
        if found:
            # bash: set_env.sh finds its own folder through BASH_SOURCE, as CANN's does
            argv = ["bash", "-c", '. "$1" && exec "$2" -c "$3"', "bash", found[0], sys.executable, code]
    r = _run(argv)
    return protocol.ImportProbe(ok=r.returncode == 0, detail=(r.stdout or r.stderr).strip().splitlines()[-1:],
                                sourced=sourced)


def probe_npu_smi():
    """``npu-smi info``, or None when the board has no npu-smi (the original 200 DK often lacks it)."""
    import shutil

    exe = shutil.which("npu-smi")
    if not exe:
        return None
    r = _run([exe, "info"], merge=True)
    return protocol.CommandProbe(ok=r.returncode == 0, output=r.stdout[-4000:])


def probe_pythons(candidates):
    """Each candidate interpreter: [name, path, version] as found on PATH (or at its absolute path)."""
    import shutil

    out = []
    for name in candidates:
        exe = shutil.which(name) or ""
        version = ""
        if exe:
            r = _run([exe, "--version"], merge=True)  # 3.6 prints to stdout, 2.x to stderr
            version = r.stdout.strip().replace("Python ", "") if r.returncode == 0 else ""
        out.append([name, exe, version])
    return out


def op_facts(wire, req):
    out = gather(wire.home)
    if "acl" in req.probe:
        out.acl = probe_acl(req.cann_env)
    if "npu-smi" in req.probe:
        out.npu_smi = probe_npu_smi()
    if "magicmind" in req.probe:
        out.magicmind = probe_magicmind(req.cann_env)
    if "cnmon" in req.probe:
        out.cnmon = probe_cnmon()
    if req.pythons:
        out.pythons = probe_pythons(req.pythons)
    for path in req.files:
        out.files[path] = os.path.isfile(path)
    for mod in req.modules:
        out.modules[mod] = _run([sys.executable, "-c", "import " + mod]).returncode == 0
    wire.reply(out)
