// C++ microbenchmarks of the Crank–Nicolson core (Google Benchmark).
//   make bench-cpp      (or: cmake -DQUFLOW_BUILD_BENCHMARKS=ON, build bench_crank_nicolson)
// Sweeps batch × n × steps for float and double, forward and adjoint, one thread.
// items/s = point-steps per second (batch · n · steps). Each case states its goal as the
// counter `goal_Mpts` (million point-steps/s), next to the measured `Mpts`.
#include <benchmark/benchmark.h>

#include <cmath>
#include <complex>
#include <random>
#include <vector>

#include "quflow/crank_nicolson.hpp"

namespace {

template <class T>
struct Problem {
  quflow::System<T> sys;
  std::vector<std::complex<T>> psi, out, grad;
  std::vector<T> potential, control, shape;

  Problem(quflow::Index batch, quflow::Index n, quflow::Index steps, bool with_control) {
    std::mt19937 rng(0);
    std::normal_distribution<double> normal;
    psi.resize(batch * n);
    for (auto& z : psi) z = {T(normal(rng)), T(normal(rng))};
    out.resize(batch * n);
    grad.assign(batch * n, std::complex<T>(1, 0));
    potential.assign(n, T(0));
    shape.resize(n);
    for (quflow::Index j = 0; j < n; ++j) shape[j] = T(2.0 * (j + 1) / (n + 1));
    sys.batch = batch;
    sys.n = n;
    sys.steps = steps;
    sys.dt = T(0.2);
    sys.dx = T(2.0 / (n + 1));
    sys.potential = potential.data();
    sys.potential_rows = 1;
    if (with_control) {
      control.resize(batch * steps);
      for (auto& u : control) u = T(normal(rng));
      sys.control = control.data();
      sys.control_rows = batch;
      sys.control_shape = shape.data();
    }
  }
};

// Goals in M point-steps/s (one thread, AVX2). A batch fills the SIMD lanes (float holds
// twice as many as double); a single state is bound by the recurrences' latency.
double goal_mpts(bool control, bool backward, int64_t batch, bool single) {
  if (batch == 1) return control ? (backward ? 22.0 : 28.0) : (backward ? 35.0 : 40.0);
  const double g = control ? (backward ? 150.0 : 250.0) : (backward ? 180.0 : 400.0);
  return single ? 1.8 * g : g;
}

template <class T, bool kControl, bool kBackward>
void BM_CrankNicolson(benchmark::State& state) {
  const auto batch = state.range(0), n = state.range(1), steps = state.range(2);
  Problem<T> p(batch, n, steps, kControl);
  quflow::Gradients<T> grads;
  std::vector<std::complex<T>> gpsi(batch * n);
  std::vector<T> gu(kControl ? batch * steps : 0);
  grads.psi0 = gpsi.data();
  if (kControl) grads.control = gu.data();
  quflow::cn_forward<T>(p.sys, p.psi.data(), p.out.data(), false, 1);
  for (auto _ : state) {
    if (kBackward)
      quflow::cn_backward<T>(p.sys, p.out.data(), false, p.grad.data(), false, grads, 1);
    else
      quflow::cn_forward<T>(p.sys, p.psi.data(), p.out.data(), false, 1);
    benchmark::DoNotOptimize(p.out.data());
    benchmark::ClobberMemory();
  }
  const double pts = double(batch) * n * steps;
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * pts));
  const double goal = goal_mpts(kControl, kBackward, batch, sizeof(T) == 4);
  state.counters["goal_Mpts"] = goal;
  state.counters["Mpts"] =
      benchmark::Counter(pts * 1e-6, benchmark::Counter::kIsIterationInvariantRate);
}

void Sizes(benchmark::internal::Benchmark* b) {
  for (int64_t batch : {1, 200})
    for (int64_t n : {20, 256, 2048})
      for (int64_t steps : {100}) b->Args({batch, n, steps});
  b->ArgNames({"batch", "n", "steps"})->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_CrankNicolson<double, false, false>)->Name("fwd/const/f64")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<double, true, false>)->Name("fwd/control/f64")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<double, false, true>)->Name("adj/const/f64")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<double, true, true>)->Name("adj/control/f64")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<float, false, false>)->Name("fwd/const/f32")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<float, true, false>)->Name("fwd/control/f32")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<float, false, true>)->Name("adj/const/f32")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<float, true, true>)->Name("adj/control/f32")->Apply(Sizes);

}  // namespace

BENCHMARK_MAIN();
