# The README's commands. Each target builds a virtual environment in $(VENV) first:
# torch is pinned there (a CPU build of torch==2.13.0 is on disk on the project's machines);
# kdfast itself declares only torch>=2.4 and is built with --no-build-isolation so pip
# never compiles it against another torch.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export MAX_JOBS ?= 2

.PHONY: install demo test bench cuda-check clean

$(VENV)/.installed: setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q setuptools wheel ninja pybind11 numpy
	$(PY) -m pip install -q --no-build-isolation -e ".[test,demo,bench]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/kdfast demo

test: install
	$(PY) -m pytest -q

BENCH ?= losses intermediate bilstm etd
bench: install
	for suite in $(BENCH); do $(VENV)/bin/kdfast bench $$suite || exit 1; done

cuda-check:
	$(PY) -m pytest -q tests/test_cuda_compile.py

clean:
	rm -rf build $(VENV) kdfast/*.so
