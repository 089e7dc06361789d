# The README's two commands. Both start from a fresh machine: `setup` installs what is missing.
PY ?= python3
DEPLOY = $(PY) -m deploy

.PHONY: demo test test-slow setup lint bench clean-sandbox
# two workers, one test file each at a time (a file's sandbox boards are its own); `slow`: the emulated aarch64
# board (qemu), loop-mounted full disks
PYTEST = $(PY) -m pytest -q -n 2 --dist loadfile

demo: setup
	$(DEPLOY) model demo
	$(DEPLOY) sandbox up board1
	$(DEPLOY) push board1
	$(DEPLOY) run board1
	$(DEPLOY) pull board1

test: setup lint
	$(DEPLOY) model demo
	$(PYTEST) -m "not slow"

test-slow: setup
	$(DEPLOY) model demo
	$(PYTEST) -m slow

setup:
	@./scripts/setup.sh

lint:
	$(PY) -m ruff check .
	vermin -q --no-tips -t=3.7- --violations agent deploy/board deploy/sandbox/ascend/runtime deploy/sandbox/cambricon/runtime

bench: setup
	$(PY) benchmarks/agent.py
	$(PY) benchmarks/agent.py --backend acl
	$(PY) benchmarks/push.py
	$(PY) benchmarks/fleet.py  # ~10 min: eight shaped links, Ansible and pyinfra in the same run
	$(PY) benchmarks/service.py  # ~2 min: the agent as a service vs a batch run, latency, collect

clean-sandbox:
	$(DEPLOY) sandbox down --purge
