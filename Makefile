# prismkit: two commands do everything on a fresh Debian 12 machine (as root):
#   make demo   build and start the bundled llama.cpp server, load it, record, analyse
#   make test   the test suite, against the real server and real eBPF probes
# Set-up is idempotent and cached: a second run takes seconds.

VENV   := .venv
PY     := $(VENV)/bin/python
PRISM  := $(VENV)/bin/prism

.PHONY: setup target torch-env demo test bench clean

setup:
	@bash scripts/setup.sh

target: setup
	@$(PRISM) target build >/dev/null
	@$(PRISM) target model tiny >/dev/null

torch-env: setup
	@bash scripts/torch_env.sh >/dev/null

demo: target
	@$(PRISM) demo

test: target torch-env
	@$(PY) -m pytest -q tests --nbval-lax notebooks

bench: target
	@$(PY) -m benchmarks

clean:
	rm -rf out .pytest_cache
