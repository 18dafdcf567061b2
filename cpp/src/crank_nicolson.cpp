// Public entry points of the Crank–Nicolson core: validate, set up the shared constants
// and per-thread workspaces, split the batch into blocks over threads, and run the block
// kernels compiled for the best instruction set this CPU supports.
#include "quflow/crank_nicolson.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#if defined(__GLIBCXX__)
#include <cxxabi.h>  // abi::__forced_unwind
#endif
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "cn_kernels.hpp"

namespace quflow {
namespace {

template <class T>
using Vec = Eigen::Array<T, Eigen::Dynamic, 1>;

/// AVX2+FMA kernels when the CPU has them, unless QUFLOW_ISA=baseline asks for the portable
/// ones (read once; lets the tests check the fallback on any machine).
bool use_avx2() {
#if defined(QUFLOW_HAVE_AVX2)
  static const bool ok = [] {
    const char* want = std::getenv("QUFLOW_ISA");
    if (want && std::string(want) == "baseline") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

/// Owns the arrays behind KernelShared.
template <class T>
struct SharedData {
  Vec<T> shape, hshape, cinv_r, cinv_i, alpha_r, alpha_i, m_r, m_i, hd;
  int stop = 0;  // set (atomically) to abandon every block
  KernelShared<T> view;

  SharedData(const System<T>& s, const typename System<T>::Bounds& bounds) {
    const Index n = s.n;
    KernelShared<T>& v = view;
    v.sys = &s;
    v.stop = &stop;
    v.h = s.dt / T(2);
    v.two_e = T(2) / (s.dx * s.dx);
    v.he = v.h / (s.dx * s.dx);
    v.c = T(s.pivot_scale(bounds));
    v.ch = v.c * v.h;
    v.ch2e2 = v.c * v.he * v.he;
    v.constant = s.constant_hamiltonian();
    shape = Vec<T>::Zero(n);
    if (s.control_rows > 0) shape = Eigen::Map<const Vec<T>>(s.control_shape, n);
    v.shape = shape.data();
    hshape = v.h * shape;
    v.hshape = hshape.data();
    if (v.constant) {
      // Thomas pivots of I + i·h·H, once for all states and steps:
      // w_0 = a_0, w_j = a_j + he²/w_{j−1}, a_j = 1 + i·h·d_j
      const Vec<T> diag = Eigen::Map<const Vec<T>>(s.potential, n) + v.two_e;  // d_j
      cinv_r.resize(n);
      cinv_i.resize(n);
      T pr = 0, pi = 0;  // 1/w_{j−1}
      for (Index j = 0; j < n; ++j) {
        const T wr = v.c + v.ch2e2 * pr;  // c·w_j, as in the kernels' pivot()
        const T wi = v.ch * diag[j] + v.ch2e2 * pi;
        const T inv_den = T(1) / (wr * wr + wi * wi);
        pr = wr * inv_den * v.c;
        pi = -wi * inv_den * v.c;
        cinv_r[j] = pr;
        cinv_i[j] = pi;
      }
      v.cinv_r = cinv_r.data();
      v.cinv_i = cinv_i.data();
      // The restructured sweep's constants (see forward_step) α_j = (1 − i·h·d_j)/w_j,
      // m_j = i·he/w_j, formed in long double from h, he and d_j (not from the rounded
      // pivots above) and rounded once: their rounding is the same in every step, so it
      // must be as small as it can be (a constant error in a step drifts the norm linearly)
      for (Vec<T>* a : {&alpha_r, &alpha_i, &m_r, &m_i, &hd}) a->resize(n);
      using L = long double;
      // (scaled by c as the pivots above, for a long double that is only a double)
      const L h = L(v.h), he = L(v.he), c = L(v.c), ch2e2 = (c * he) * he;
      L iwr = 0, iwi = 0;  // 1/w_{j−1}
      for (Index j = 0; j < n; ++j) {
        const L hdj = h * L(diag[j]);
        const L wr = c + ch2e2 * iwr, wi = c * hdj + ch2e2 * iwi;  // c·w_j
        const L den = wr * wr + wi * wi;
        iwr = wr * c / den;
        iwi = -wi * c / den;
        hd[j] = T(hdj);
        alpha_r[j] = T(iwr + hdj * iwi);
        alpha_i[j] = T(iwi - hdj * iwr);
        m_r[j] = T(-he * iwi);
        m_i[j] = T(he * iwr);
      }
      v.alpha_r = alpha_r.data();
      v.alpha_i = alpha_i.data();
      v.m_r = m_r.data();
      v.m_i = m_i.data();
      v.hd = hd.data();
    }
  }
};

/// One thread's workspace (owns the arrays behind KernelWork). Every array starts on a
/// 64-byte boundary, as the kernels' lane vectors (up to 64 bytes) require.
template <class T>
struct WorkData {
  static constexpr Index kAlign = 64 / sizeof(T);
  Vec<T> planes;
  KernelWork<T> view;

  WorkData(Index n, int w) : planes(Vec<T>::Zero(6 * (n + 2) * w + 6 * n * w + kAlign)) {
    const auto addr = reinterpret_cast<std::uintptr_t>(planes.data());
    T* p = planes.data() + ((64 - addr % 64) % 64) / sizeof(T);
    const Index big = (n + 2) * w, small = n * w;
    for (T** slot : {&view.pr, &view.pi, &view.qr, &view.qi, &view.gr, &view.gi}) {
      *slot = p;
      p += big;
    }
    for (T** slot : {&view.fr, &view.fi, &view.base, &view.gv, &view.gw, &view.hbase}) {
      *slot = p;
      p += small;
    }
  }
};

/// Work (point-steps, batch · n · steps) below which a call runs on the calling thread
/// without polling: a few milliseconds at the kernels' speed.
constexpr double kPollWork = double(1 << 21);
/// How often the calling thread asks the poll callback while workers run.
constexpr auto kPollInterval = std::chrono::milliseconds(2);

void rethrow_first(const std::vector<std::exception_ptr>& errors) {
  for (const auto& err : errors)
    if (err) std::rethrow_exception(err);
}

/// Runs body(first_block, last_block, t) for t = 0 … nt−1, a static split of `blocks`.
/// Without `poll` the calling thread runs t = 0 itself; with it every t runs on a worker
/// and the calling thread asks poll every kPollInterval until they are done (a true answer
/// cancels the call: Cancelled). A worker's exception, a cancel, or a worker thread that
/// cannot be started sets *stop, which the kernels read between steps; every started
/// thread is joined before anything is thrown.
template <class Body>
void parallel_blocks(Index blocks, int nt, const Poll* poll, int* stop, Body&& body) {
  std::vector<std::exception_ptr> errors(nt);
  auto halt = [stop] { __atomic_store_n(stop, 1, __ATOMIC_RELAXED); };
  auto run = [&](int t) {
    try {
      body(blocks * t / nt, blocks * (t + 1) / nt, t);
    } catch (...) {
      errors[t] = std::current_exception();
      halt();
    }
  };
  const int first_worker = poll ? 0 : 1;
  if (first_worker == nt) {
    run(0);
    rethrow_first(errors);
    return;
  }
  std::mutex mu;
  std::condition_variable all_done;
  int running = 0;
  std::vector<std::thread> pool;
  pool.reserve(nt - first_worker);
  auto join_all = [&] {
    for (auto& th : pool) th.join();
  };
  for (int t = first_worker; t < nt; ++t) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ++running;
    }
    try {
      pool.emplace_back([&, t] {
        run(t);
        std::lock_guard<std::mutex> lock(mu);
        if (--running == 0) all_done.notify_all();
      });
    } catch (const std::exception& e) {
      if (pool.empty()) {
        // not a single worker: the calling thread does every part itself, unwatched
        // (as a one-thread call always did), rather than failing a call that needs none
        for (int u = 0; u < nt; ++u) run(u);
        rethrow_first(errors);
        return;
      }
      halt();
      join_all();
      throw std::runtime_error("quflow: could not start worker thread " + std::to_string(t + 1) +
                               " of " + std::to_string(nt) + " (" + e.what() +
                               "); use fewer threads (torch.set_num_threads)");
    }
  }
  bool cancelled = false;
  std::exception_ptr poll_error;
  if (!poll) {
    run(0);
  } else {
    std::unique_lock<std::mutex> lock(mu);
    while (!all_done.wait_for(lock, kPollInterval, [&] { return running == 0; })) {
      if (cancelled) continue;
      lock.unlock();
      try {
        cancelled = (*poll)();
#if defined(__GLIBCXX__)
      } catch (abi::__forced_unwind&) {
        // the thread is being ended (pthread_exit, e.g. by an exiting interpreter): stop
        // and join the workers, then let the unwinding go on
        halt();
        join_all();
        throw;
#endif
      } catch (...) {
        poll_error = std::current_exception();
        cancelled = true;
      }
      lock.lock();
      if (cancelled) halt();
    }
  }
  join_all();
  if (poll_error) std::rethrow_exception(poll_error);
  if (cancelled) throw Cancelled();
  rethrow_first(errors);
}

template <class T, int W>
auto forward_kernel() {
#if defined(QUFLOW_HAVE_AVX2)
  if (use_avx2()) return &isa_avx2::forward_block<T, W>;
#endif
  return &isa_baseline::forward_block<T, W>;
}

template <class T, int W>
auto backward_kernel() {
#if defined(QUFLOW_HAVE_AVX2)
  if (use_avx2()) return &isa_avx2::backward_block<T, W>;
#endif
  return &isa_baseline::backward_block<T, W>;
}

int thread_count(Index blocks, int threads) {
  return static_cast<int>(std::max<Index>(1, std::min<Index>(threads, blocks)));
}

/// A state (or cotangent) must leave the step's intermediate (I ∓ i·dt/2·H)ψ finite:
/// its largest component (one vectorised pass over the 2·size components; |z| ≤ √2 ×
/// its larger component) is compared with System::max_state. This is the only scan of
/// `z`; the binding leaves it to the core, where the GIL is released.
template <class T>
void check_state(const System<T>& sys, const typename System<T>::Bounds& bounds,
                 const std::complex<T>* z, Index size, const char* name) {
  const double m = System<T>::max_abs(reinterpret_cast<const T*>(z), 2 * size);
  const double limit = sys.max_state(bounds) / std::sqrt(2.0);
  if (m > limit) {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "%s: a component of size %.3g exceeds %.3g, the limit in %s for these dt, "
                  "dx, V and u (a step forms (I - i*dt/2*H)psi, which would overflow); the "
                  "propagation is linear: rescale it",
                  name, m, limit, sizeof(T) == 4 ? "float32" : "float64");
    throw std::invalid_argument(buf);
  }
}

/// The poll to watch a call with, or null when the call is too short to need one.
template <class T>
const Poll* watch(const System<T>& sys, const Poll& poll) {
  const double work = double(sys.batch) * double(sys.n) * double(std::max<Index>(sys.steps, 1));
  return poll && work >= kPollWork ? &poll : nullptr;
}

template <class T, int W>
void forward_w(const System<T>& sys, const std::complex<T>* psi0, std::complex<T>* out,
               bool trajectory, int threads, const Poll& poll,
               const typename System<T>::Bounds& bounds) {
  SharedData<T> sh(sys, bounds);
  const Index blocks = (sys.batch + W - 1) / W;
  const auto kernel = forward_kernel<T, W>();
  parallel_blocks(blocks, thread_count(blocks, threads), watch(sys, poll), &sh.stop,
                  [&](Index first, Index last, int) {
    WorkData<T> wk(sys.n, W);
    for (Index ib = first; ib < last; ++ib)
      kernel(sh.view, wk.view, ib * W, std::min<Index>(W, sys.batch - ib * W), psi0, out,
             trajectory);
  });
}

template <class T, int W>
void backward_w(const System<T>& sys, const std::complex<T>* states, bool states_full,
                const std::complex<T>* grad_out, bool grad_full, const Gradients<T>& grads,
                int threads, const Poll& poll, const typename System<T>::Bounds& bounds) {
  SharedData<T> sh(sys, bounds);
  const Index n = sys.n;
  const Index blocks = (sys.batch + W - 1) / W;
  const int nt = thread_count(blocks, threads);
  const auto kernel = backward_kernel<T, W>();
  // per-thread partial sums of the gradients shared by the whole batch
  std::vector<Vec<T>> acc_v(nt, Vec<T>::Zero(n)), acc_w(nt, Vec<T>::Zero(n));
  std::vector<Vec<T>> acc_u(nt, Vec<T>::Zero(sys.control_rows == 1 ? sys.steps : 0));
  parallel_blocks(blocks, nt, watch(sys, poll), &sh.stop, [&](Index first, Index last, int t) {
    WorkData<T> wk(n, W);
    for (Index ib = first; ib < last; ++ib)
      kernel(sh.view, wk.view, ib * W, std::min<Index>(W, sys.batch - ib * W), states,
             states_full, grad_out, grad_full, grads, acc_v[t].data(), acc_u[t].data(),
             acc_w[t].data());
  });
  // ordered reduction: deterministic for a given thread count
  for (int t = 1; t < nt; ++t) {
    acc_v[0] += acc_v[t];
    acc_w[0] += acc_w[t];
    acc_u[0] += acc_u[t];
  }
  if (grads.potential && sys.potential_rows == 1)
    std::copy(acc_v[0].data(), acc_v[0].data() + n, grads.potential);
  if (grads.control_shape) std::copy(acc_w[0].data(), acc_w[0].data() + n, grads.control_shape);
  if (grads.control && sys.control_rows == 1)
    std::copy(acc_u[0].data(), acc_u[0].data() + sys.steps, grads.control);
}

/// Calls run(std::integral_constant<int, W>) with the block width W for this batch:
/// two registers per point when `wide` and the batch fills them, one register's worth for
/// batches of at least half a register, else single states.
template <class T, class Run>
void with_lanes(Index batch, bool wide, Run&& run) {
  if (wide && batch >= kWideLanes<T>)
    run(std::integral_constant<int, kWideLanes<T>>{});
  else if (batch >= kNarrowLanes<T> / 2)
    run(std::integral_constant<int, kNarrowLanes<T>>{});
  else
    run(std::integral_constant<int, 1>{});
}

}  // namespace

const char* kernel_isa() { return use_avx2() ? "avx2" : "baseline"; }

template <class T>
void cn_forward(const System<T>& sys, const std::complex<T>* psi0, std::complex<T>* out,
                bool trajectory, int threads, const Poll& poll) {
  const auto bounds = sys.check();
  QUFLOW_CHECK(psi0 != nullptr && out != nullptr, "psi0 and out must not be null");
  QUFLOW_CHECK(threads >= 1, "threads must be >= 1");
  check_state(sys, bounds, psi0, sys.batch * sys.n, "psi0");
  QUFLOW_CHECK(!trajectory || (sys.steps < std::numeric_limits<Index>::max() &&
                               size_fits(sys.batch, sys.steps + 1, sys.n, sizeof(*out))),
               "the trajectory's size overflows");
  if (sys.constant_hamiltonian() && sys.batch >= kQuadLanes<T>) {
    forward_w<T, kQuadLanes<T>>(sys, psi0, out, trajectory, threads, poll, bounds);
    return;
  }
  with_lanes<T>(sys.batch, true, [&](auto w) {
    forward_w<T, decltype(w)::value>(sys, psi0, out, trajectory, threads, poll, bounds);
  });
}

template <class T>
void cn_backward(const System<T>& sys, const std::complex<T>* states, bool states_full,
                 const std::complex<T>* grad_out, bool grad_full, const Gradients<T>& grads,
                 int threads, const Poll& poll) {
  const auto bounds = sys.check();
  QUFLOW_CHECK(states != nullptr && grad_out != nullptr, "states and grad_out must not be null");
  QUFLOW_CHECK(threads >= 1, "threads must be >= 1");
  QUFLOW_CHECK(!grads.control || sys.control_rows > 0, "control gradient requested without control");
  QUFLOW_CHECK(!grads.control_shape || sys.control_rows > 0,
               "control_shape gradient requested without control");
  QUFLOW_CHECK(!grad_full || states_full, "a trajectory cotangent needs the stored states");
  QUFLOW_CHECK(!states_full || (sys.steps < std::numeric_limits<Index>::max() &&
                                size_fits(sys.batch, sys.steps + 1, sys.n, sizeof(*states))),
               "the trajectory's size overflows");
  check_state(sys, bounds, grad_out, sys.batch * sys.n * (grad_full ? sys.steps + 1 : 1),
              "grad_out");
  // the adjoint of a constant H is faster with one register per point
  with_lanes<T>(sys.batch, !sys.constant_hamiltonian(), [&](auto w) {
    backward_w<T, decltype(w)::value>(sys, states, states_full, grad_out, grad_full, grads,
                                      threads, poll, bounds);
  });
}

template void cn_forward<float>(const System<float>&, const std::complex<float>*,
                                std::complex<float>*, bool, int, const Poll&);
template void cn_forward<double>(const System<double>&, const std::complex<double>*,
                                 std::complex<double>*, bool, int, const Poll&);
template void cn_backward<float>(const System<float>&, const std::complex<float>*, bool,
                                 const std::complex<float>*, bool, const Gradients<float>&, int,
                                 const Poll&);
template void cn_backward<double>(const System<double>&, const std::complex<double>*, bool,
                                  const std::complex<double>*, bool, const Gradients<double>&,
                                  int, const Poll&);

}  // namespace quflow
