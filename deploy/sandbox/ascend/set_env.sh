# Stand-in for CANN's set_env.sh on a simulated (sandbox) Atlas board. Like the real one it puts
# pyACL on PYTHONPATH, so `import acl` works only after `. set_env.sh`; here pyACL is the
# simulated runtime in runtime/ beside this file (install this folder as ~/Ascend/nnrt/), and the
# simulated libascendcl.so (runtime/lib64) is what C/C++ apps load.
_acl_sim_root="$(cd "$(dirname "${BASH_SOURCE:-$0}")" && pwd)"
export ASCEND_HOME="${_acl_sim_root}"
export ASCEND_AICPU_PATH="${_acl_sim_root}"
export ASCEND_OPP_PATH="${_acl_sim_root}/opp"
export LD_LIBRARY_PATH="${_acl_sim_root}/runtime/lib64:${_acl_sim_root}/lib64${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
export PYTHONPATH="${_acl_sim_root}/runtime${PYTHONPATH:+:${PYTHONPATH}}"
export ACL_SIM_ROOT="${_acl_sim_root}"
unset _acl_sim_root
