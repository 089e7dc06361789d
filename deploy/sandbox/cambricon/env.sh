# Stand-in for the Neuware env script on a simulated (sandbox) MLU370 host, sourced by the app's env.sh
# as "$NEUWARE_HOME/env.sh". On a real host MagicMind's wheel is installed into the Python 3.7 of
# Cambricon's image; here the simulated runtime in runtime/ (and ONNX Runtime in sim-deps/, last) go on
# PYTHONPATH, so `import magicmind` works only after sourcing this.
_mm_sim_root="$(cd "$(dirname "${BASH_SOURCE:-$0}")" && pwd)"
export PYTHONPATH="${_mm_sim_root}/runtime${PYTHONPATH:+:${PYTHONPATH}}:${_mm_sim_root}/sim-deps"
export MM_SIM_ARCH="${MM_SIM_ARCH:-mtp_372}"
unset _mm_sim_root
