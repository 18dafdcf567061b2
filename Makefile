# quflow developer entry points. Each target sets up what it needs (a venv, the build,
# the dependencies) on a fresh machine.
#   make reproduce   the main job: the paper's experiments in quick mode -> results/
#   make test        the test suite
#   make bench       Python side-by-side benchmarks (threads pinned to 1)
#   make bench-cpp   C++ microbenchmarks (needs Debian's libbenchmark-dev)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.quflow-installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find cpp/include cpp/src cpp/bindings python -type f \
             -not -name '*.pyc' 2>/dev/null)
# the torch CPU wheel first, explicitly: a bare 'torch' requirement would pull CUDA packages
TORCH  ?= torch==2.13.0

.PHONY: reproduce test bench bench-cpp clean

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

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/bench_schrodinger.py
	OMP_NUM_THREADS=1 $(PY) bench/bench_quantum.py
	OMP_NUM_THREADS=1 $(PY) bench/bench_qng.py

bench-cpp:
	cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DQUFLOW_BUILD_BENCHMARKS=ON \
	  -DPython_EXECUTABLE=$(PYTHON) >/dev/null
	cmake --build build/bench --target bench_crank_nicolson -j2
	./build/bench/bench_crank_nicolson --benchmark_counters_tabular=true

clean:
	rm -rf build $(VENV) results
