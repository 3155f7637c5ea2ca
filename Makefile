# The README's commands. Each target builds a virtual environment in $(VENV) first:
# torch is pinned there (a CPU build of torch==2.13.0 is on disk on the project's machines);
# kdfast itself declares only torch>=2.4 and is built with --no-build-isolation so pip
# never compiles it against another torch.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# the range pyproject's [build-system] declares (>= 77: SPDX license string; < 82: torch 2.11)
SETUPTOOLS_SPEC ?= setuptools>=77,<82
export MAX_JOBS ?= 2

.PHONY: install demo test bench cuda-check clean wheel wheel-only cuda-build

$(VENV)/.installed: setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "$(SETUPTOOLS_SPEC)" wheel ninja pybind11 numpy
	$(PY) -m pip install -q --no-build-isolation -e ".[test,demo,bench]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/kdfast demo

test: install
	$(PY) -m pytest -q

BENCH ?= losses intermediate relation bilstm etd
bench: install
	for suite in $(BENCH); do $(VENV)/bin/kdfast bench $$suite || exit 1; done

cuda-check:
	$(PY) -m pytest -q tests/test_cuda_compile.py

# make wheel: a wheel with kdfast._C (and kdfast._cuda where the torch has CUDA) in $(DIST)/,
# built against $(VENV)'s torch; good for that torch's major.minor only (see README).
# wheel-only does the build with $(PY) as it is (no install step; tests/test_wheel.py uses it):
# from a copy of the sources in $(WHEEL_SRC) (never touching the editable build in the tree;
# mtimes kept, so a rebuild with unchanged C++ compiles nothing).
DIST ?= dist
WHEEL_SRC ?= build/wheel-src
WHEEL_FILES := setup.py pyproject.toml README.md csrc kdfast
wheel: install
	$(MAKE) --no-print-directory wheel-only PY="$(abspath $(PY))"

wheel-only:
	mkdir -p "$(WHEEL_SRC)" "$(DIST)"
	rm -rf "$(WHEEL_SRC)/csrc" "$(WHEEL_SRC)/kdfast" "$(DIST)"/kdfast-*.whl
	tar -cf - --exclude='*.so' --exclude=__pycache__ --exclude=_build_info.py $(WHEEL_FILES) \
	  | tar -xf - -C "$(WHEEL_SRC)"
	cd "$(WHEEL_SRC)" && "$(PY)" -m pip wheel -q --no-build-isolation --no-deps \
	  -w "$(abspath $(DIST))" .
	ls -l "$(DIST)"/kdfast-*.whl
	@echo "build record (kdfast/_build_info.py in the wheel; CUDA_SKIPPED says why no _cuda):"
	@"$(PY)" -c "import glob, sys, zipfile; w = glob.glob(sys.argv[1] + '/kdfast-*.whl')[0]; \
	  t = zipfile.ZipFile(w).read('kdfast/_build_info.py').decode(); \
	  print('\n'.join('  ' + l for l in t.splitlines() if ' = ' in l))" "$(DIST)"

# make cuda-build: the CUDA build against a CUDA torch in a side environment, on a machine
# with nvcc and no GPU. Not in CI: it downloads a CUDA torch and its nvidia-* packages (~2.6 GB,
# ~6 GB installed). Builds the wheel with KDFAST_REQUIRE_CUDA=1, installs it there, then checks
# that kdfast._cuda imports and lists its CUDA kernels (benchmarks/cuda_build_check.py).
CUDA_VENV ?= .cuda-venv
CUDA_TORCH_SPEC ?= torch==2.11.0
CUDA_DIST ?= dist/cuda
CUDA_WHEEL_SRC ?= build/cuda-wheel-src
cuda-build:
	test -x $(CUDA_VENV)/bin/python || python3 -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q --upgrade pip
	$(CUDA_VENV)/bin/python -m pip install -q "$(CUDA_TORCH_SPEC)" "$(SETUPTOOLS_SPEC)" \
	  wheel ninja pybind11 numpy tqdm pyyaml safetensors
	KDFAST_REQUIRE_CUDA=1 $(MAKE) --no-print-directory wheel-only \
	  PY="$(abspath $(CUDA_VENV))/bin/python" DIST="$(CUDA_DIST)" WHEEL_SRC="$(CUDA_WHEEL_SRC)"
	$(CUDA_VENV)/bin/python -m pip install -q --force-reinstall --no-deps "$(CUDA_DIST)"/kdfast-*.whl
	cd /tmp && "$(abspath $(CUDA_VENV))/bin/python" "$(abspath benchmarks/cuda_build_check.py)"

clean:
	rm -rf build $(VENV) kdfast/*.so kdfast/_build_info.py $(DIST)
