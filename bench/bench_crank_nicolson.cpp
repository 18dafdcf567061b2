// C++ microbenchmarks of the Crank–Nicolson core (Google Benchmark).
//   make bench-cpp      (or: cmake -DQUFLOW_BUILD_BENCHMARKS=ON, build bench_crank_nicolson)
// Sweeps batch × n × steps for float and double, forward and adjoint, one thread.
// items/s = point-steps per second (batch · n · steps). Each case states its goal as the
// counter `goal_Mpts` (million point-steps/s), next to the measured `Mpts`, and the
// kernel's arithmetic as `GFLOPs` and `pct_peak`: flops per point-step (counted from
// cpp/src/cn_kernels.cpp, see kFlops) over one core's FMA peak, which this executable
// measures itself (a register-resident FMA loop, printed first).
// Timings are CPU time of the one thread; on a shared machine use --benchmark_repetitions
// and read the medians.
#include <benchmark/benchmark.h>

#include <time.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdio>
#include <random>
#include <vector>

#include "quflow/crank_nicolson.hpp"

namespace {

// ---- one core's FMA peak: independent FMA chains on register-resident vectors ----
// 12 accumulators of one AVX2 register each (named variables, so they stay in registers)
// cover FMA latency × the two FMA pipes; the loop is compiled for AVX2+FMA (the kernels'
// ISA) whatever this file's flags are.
typedef double F64x4 __attribute__((vector_size(32)));
typedef float F32x8 __attribute__((vector_size(32)));
template <class T>
struct Reg32;
template <>
struct Reg32<double> {
  using type = F64x4;
};
template <>
struct Reg32<float> {
  using type = F32x8;
};
template <class T>
using Vec32 = typename Reg32<T>::type;

template <class T>
__attribute__((target("avx2,fma"), noinline)) T fma_loop(long iters, T a, T b) {
  using R = Vec32<T>;
  const R va = R{} + a, vb = R{} + b;
  R x0 = R{} + T(0.1), x1 = x0 + T(1), x2 = x0 + T(2), x3 = x0 + T(3), x4 = x0 + T(4),
    x5 = x0 + T(5), x6 = x0 + T(6), x7 = x0 + T(7), x8 = x0 + T(8), x9 = x0 + T(9),
    x10 = x0 + T(10), x11 = x0 + T(11);
  for (long it = 0; it < iters; ++it) {
#define QUFLOW_FMA(x) x = x * va + vb;  // contracted to one FMA
    QUFLOW_FMA(x0) QUFLOW_FMA(x1) QUFLOW_FMA(x2) QUFLOW_FMA(x3) QUFLOW_FMA(x4) QUFLOW_FMA(x5)
    QUFLOW_FMA(x6) QUFLOW_FMA(x7) QUFLOW_FMA(x8) QUFLOW_FMA(x9) QUFLOW_FMA(x10) QUFLOW_FMA(x11)
#undef QUFLOW_FMA
  }
  const R sum = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) + ((x8 + x9) + (x10 + x11));
  T s = 0;
  for (int l = 0; l < int(32 / sizeof(T)); ++l) s += sum[l];
  return s;
}

double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/// Flops/s of one core at FMA peak for T: the median of 9 runs of ~50 ms (thread CPU time).
template <class T>
double measure_peak() {
  constexpr long kIters = 4000000;
  constexpr double kFlops = 2.0 * 12 * (32 / sizeof(T)) * kIters;
  std::vector<double> rates;
  volatile T sink = 0;
  for (int r = 0; r < 9; ++r) {
    const double t0 = thread_seconds();
    sink = sink + fma_loop<T>(kIters, T(0.999999), T(1e-7));
    rates.push_back(kFlops / (thread_seconds() - t0));
  }
  std::nth_element(rates.begin(), rates.begin() + 4, rates.end());
  return rates[4];
}

template <class T>
double peak() {
  static const double p = [] {
    const double v = measure_peak<T>();
    std::printf("FMA peak, one core, %s: %.1f GFLOP/s (median of 9 runs)\n",
                sizeof(T) == 4 ? "float" : "double", v * 1e-9);
    return v;
  }();
  return p;
}

void BM_Peak(benchmark::State& state) {  // re-measures the peak beside the kernels
  double v = 0;
  for (auto _ : state) v = measure_peak<double>();
  state.counters["peak_f64_GF"] = v * 1e-9;
  state.counters["peak_f32_GF"] = measure_peak<float>() * 1e-9;
}

/// Flops per point-step (real additions + multiplications, an FMA counting 2) of each
/// kernel as this benchmark calls it, counted in cpp/src/cn_kernels.cpp (unscaled pivots,
/// c = 1): forward constant H 26, with a control 44; adjoint rebuilding ψ_k without
/// ∂L/∂V (constant H: ψ0 gradient only) 52; with a control and ∂L/∂u alone 72 (75 with
/// ∂L/∂V and ∂L/∂W too, which this benchmark does not ask for).
constexpr double kFlops[2][2] = {{26.0, 52.0}, {44.0, 72.0}};  // [control][backward]

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
  const double t0 = thread_seconds();
  for (auto _ : state) {
    if (kBackward)
      quflow::cn_backward<T>(p.sys, p.out.data(), false, p.grad.data(), false, grads, 1);
    else
      quflow::cn_forward<T>(p.sys, p.psi.data(), p.out.data(), false, 1);
    benchmark::DoNotOptimize(p.out.data());
    benchmark::ClobberMemory();
  }
  const double seconds = thread_seconds() - t0;
  const double pts = double(batch) * n * steps;
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * pts));
  const double goal = goal_mpts(kControl, kBackward, batch, sizeof(T) == 4);
  const double flops = kFlops[kControl][kBackward];
  state.counters["goal_Mpts"] = goal;
  state.counters["Mpts"] =
      benchmark::Counter(pts * 1e-6, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["flops_pt"] = flops;
  state.counters["GFLOPs"] =
      benchmark::Counter(pts * flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  // % of peak from this thread's CPU time over the timed loop (a plain number, no "/s")
  state.counters["pct_peak"] = state.iterations() * pts * flops / seconds / peak<T>() * 100;
}

void Sizes(benchmark::internal::Benchmark* b) {
  for (int64_t batch : {1, 200})
    for (int64_t n : {20, 256, 2048})
      for (int64_t steps : {100}) b->Args({batch, n, steps});
  b->Args({2000, 256, 20});
  b->ArgNames({"batch", "n", "steps"})->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_Peak)->Name("peak/fma")->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CrankNicolson<double, false, false>)->Name("fwd/const/f64")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<double, true, false>)->Name("fwd/control/f64")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<double, false, true>)->Name("adj/const/f64")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<double, true, true>)->Name("adj/control/f64")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<float, false, false>)->Name("fwd/const/f32")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<float, true, false>)->Name("fwd/control/f32")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<float, false, true>)->Name("adj/const/f32")->Apply(Sizes);
BENCHMARK(BM_CrankNicolson<float, true, true>)->Name("adj/control/f32")->Apply(Sizes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  peak<double>();  // measured before the kernels, printed above their table
  peak<float>();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
