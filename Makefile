# quflow developer entry points. Each target sets up what it needs (a venv, the build,
# the dependencies) on a fresh machine.
#   make reproduce   the main job: the paper's experiments in quick mode -> results/
#   make test        the test suite
#   make bench       Python side-by-side benchmarks (threads pinned to 1; one 1-vs-2-thread case)
#   make bench-cpp   C++ microbenchmarks (needs Debian's libbenchmark-dev)
#   make sanitize    the C++ op's tests against an ASan+UBSan build of the extension

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.quflow-installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find cpp/include cpp/src cpp/bindings python -type f \
             -not -name '*.pyc' 2>/dev/null)
# the torch CPU wheel first, explicitly: a bare 'torch' requirement would pull CUDA packages
TORCH  ?= torch==2.13.0

# sanitize: the extension rebuilt with AddressSanitizer + UndefinedBehaviorSanitizer into its
# own build and install folders (the normal build and .venv are untouched), first on
# PYTHONPATH; ASan must be the first library a Python process loads (and needs libstdc++).
SAN_DIR   := build/sanitize
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g
SAN_TESTS := tests/test_core_contract.py tests/test_schrodinger.py tests/test_schrodinger_errors.py \
             tests/test_schrodinger_limits.py tests/test_properties.py tests/test_fidelity.py \
             tests/test_grid.py tests/test_op_transforms.py

.PHONY: reproduce test sanitize bench bench-cpp clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)

$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install -q ".[test]"
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
	  sh -c '$(PY) -c "import quflow._core as c; assert \"$(SAN_DIR)\" in c.__file__, c.__file__" && \
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

clean:
	rm -rf build $(VENV) results
