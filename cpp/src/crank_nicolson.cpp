// Public entry points of the Crank–Nicolson core: validate, set up the shared constants
// and per-thread workspaces, split the batch into blocks over threads, and run the block
// kernels compiled for the best instruction set this CPU supports.
#include "quflow/crank_nicolson.hpp"

#include <algorithm>
#include <atomic>
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
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <pthread.h>  // pthread_atfork, pthread_create (the team's checks)
#include <unistd.h>   // getpid, getppid

#if defined(_OPENMP)
#include <omp.h>
#endif

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

/// The float β form's multipliers. Its step solves
///   −x_{j−1} + a_j x_j − x_{j+1} = β_j ψ_j + ψ_{j−1} + ψ_{j+1}   (the CN step over i·he)
/// with β_j = fl(−h·d_j/he) and fl(1/he) rounded to float, so the left side it must match
/// (the step is unitary only if both sides hold the same H) is a_j = −β_j − i·(1 + ε)/he,
/// 1 + ε = he·fl(1/he): with a_j = h·d_j/he − i/he instead, the same ε in every point and
/// step drifted the norm linearly (~1e-2 over 10^5 steps of the paper's box). The sweep
/// with multipliers m̃_j (v_j = m̃_j(r_j + v_{j−1}), x_j = v_j + m̃_j x_{j+1}) solves exactly
/// the tridiagonal system with diagonal ã_j = 1/m̃_j + m̃_{j−1}, so each m̃_j is formed from
/// the rounded m̃_{j−1} (m_j = 1/(a_j − m̃_{j−1}), long double) and rounded to one of the
/// floats next to it (±1 ulp in each part): the one that keeps the running sums of
/// Re(ã_j − a_j) and Im(ã_j − a_j) closest to zero. Those sums set the norm's mean drift
/// per step over states spread across the grid (the trace of the implied perturbation of
/// I + i·h·H; a constant rounding error at every point is what drifts); the per-point
/// errors stay within ~1.5 ulp. `up` runs j = n−1 … 0 (the UL factorisation).
void balanced_multipliers(const std::vector<std::complex<long double>>& a, bool up,
                          float* m_r, float* m_i) {
  using L = long double;
  using C = std::complex<L>;
  const Index n = Index(a.size());
  C prev = 0;
  L sum_r = 0, sum_i = 0;
  for (Index t = 0; t < n; ++t) {
    const Index j = up ? n - 1 - t : t;
    const C m = L(1) / (a[j] - prev);
    const float r0 = float(m.real()), i0 = float(m.imag());
    float best_r = r0, best_i = i0;
    L best_cost = std::numeric_limits<L>::infinity(), best_dr = 0, best_di = 0;
    for (const float r : {std::nextafter(r0, -HUGE_VALF), r0, std::nextafter(r0, HUGE_VALF)}) {
      for (const float i : {std::nextafter(i0, -HUGE_VALF), i0, std::nextafter(i0, HUGE_VALF)}) {
        const C err = L(1) / C(L(r), L(i)) + prev - a[j];  // ã_j − a_j
        const L cost = std::abs(sum_r + err.real()) + std::abs(sum_i + err.imag());
        if (cost < best_cost) {
          best_cost = cost;
          best_r = r;
          best_i = i;
          best_dr = err.real();
          best_di = err.imag();
        }
      }
    }
    m_r[j] = best_r;
    m_i[j] = best_i;
    sum_r += best_dr;
    sum_i += best_di;
    prev = C(L(best_r), L(best_i));
  }
}

/// Owns the arrays behind KernelShared.
template <class T>
struct SharedData {
  Vec<T> shape, hshape, dshape, cinv_r, cinv_i, alpha_r, alpha_i, m_r, m_i, beta, um_r, um_i;
  int stop = 0;  // set (atomically) to abandon every block
  KernelShared<T> view;

  /// beta_form: also the β form's tables (the constant-H forward; see cn_kernels.cpp's
  /// header), used where he ≥ 2^−20 (1/he stays small).
  SharedData(const System<T>& s, const typename System<T>::Bounds& bounds,
             const Tangents<T>* tan = nullptr, bool beta_form = false) {
    const Index n = s.n;
    KernelShared<T>& v = view;
    if (tan) {  // forward mode / second order
      v.tan = tan;
      dshape = Vec<T>::Zero(n);
      if (tan->control_shape) dshape = Eigen::Map<const Vec<T>>(tan->control_shape, n);
      v.dshape = dshape.data();
    }
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
      for (Vec<T>* a : {&alpha_r, &alpha_i, &m_r, &m_i}) a->resize(n);
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
        alpha_r[j] = T(iwr + hdj * iwi);
        alpha_i[j] = T(iwi - hdj * iwr);
        m_r[j] = T(-he * iwi);
        m_i[j] = T(he * iwr);
      }
      v.alpha_r = alpha_r.data();
      v.alpha_i = alpha_i.data();
      v.m_r = m_r.data();
      v.m_i = m_i.data();
      // The β form: β_j = −h·d_j/he and the UL factorisation's m'_j (pivots from j = n−1
      // down), formed as above.
      if (beta_form && he >= L(1) / L(1 << 20)) {
        for (Vec<T>* a : {&beta, &um_r, &um_i}) a->resize(n);
        v.ihe = T(L(1) / he);
        for (Index j = 0; j < n; ++j) beta[j] = T(-h * L(diag[j]) / he);
        if constexpr (std::is_same<T, float>::value) {
          // float: the β form's own LU (m_j, which its LU steps read) and UL multipliers
          // for the matrix its rounded right-hand side implies (see balanced_multipliers)
          std::vector<std::complex<L>> a(n);
          const L one = L(v.ihe) * he;  // 1 + ε: he·fl(1/he)
          for (Index j = 0; j < n; ++j) a[j] = {-L(beta[j]), -one / he};
          balanced_multipliers(a, false, m_r.data(), m_i.data());
          balanced_multipliers(a, true, um_r.data(), um_i.data());
        } else {
          iwr = 0;
          iwi = 0;
          for (Index j = n - 1; j >= 0; --j) {
            const L hdj = h * L(diag[j]);
            const L wr = c + ch2e2 * iwr, wi = c * hdj + ch2e2 * iwi;
            const L den = wr * wr + wi * wi;
            iwr = wr * c / den;
            iwi = -wi * c / den;
            um_r[j] = T(-he * iwi);
            um_i[j] = T(he * iwr);
          }
        }
        v.beta = beta.data();
        v.um_r = um_r.data();
        v.um_i = um_i.data();
      }
    }
  }
};

/// One thread's workspace (owns the arrays behind KernelWork). The first array starts on a
/// 64-byte boundary and every array holds a multiple of w values, so each starts on a
/// boundary of its lane vector's size (w values, up to 64 bytes), as the kernels require.
template <class T>
struct WorkData {
  static constexpr Index kAlign = 64 / sizeof(T);
  Vec<T> planes;
  KernelWork<T> view;

  /// tangent: also the planes of forward mode and second order.
  WorkData(Index n, int w, bool tangent = false)
      : planes(Vec<T>::Zero((tangent ? 12 : 6) * (n + 2) * w + (tangent ? 14 : 8) * n * w +
                            kAlign)) {
    const auto addr = reinterpret_cast<std::uintptr_t>(planes.data());
    T* p = planes.data() + ((64 - addr % 64) % 64) / sizeof(T);
    const Index big = (n + 2) * w, small = n * w;
    for (T** slot : {&view.pr, &view.pi, &view.qr, &view.qi, &view.gr, &view.gi}) {
      *slot = p;
      p += big;
    }
    for (T** slot : {&view.fr, &view.fi, &view.base, &view.gv, &view.gw, &view.hbase, &view.er,
                      &view.ei}) {
      *slot = p;
      p += small;
    }
    if (!tangent) return;
    for (T** slot : {&view.sr, &view.si, &view.rr, &view.ri, &view.hr, &view.hi}) {
      *slot = p;
      p += big;
    }
    for (T** slot : {&view.dbase, &view.dd, &view.tv, &view.tw, &view.ar, &view.ai}) {
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
/// Work (point-steps) each thread of a call must get, else the call uses fewer threads:
/// ~30 µs of kernel time. Measured on torch's OpenMP team (issue 14, n = 20 … 64,
/// forward+backward with a matmul between calls, 2 vs 1 threads): 1.15–1.5× from 100k
/// point-steps up, 1.05–1.2× at 64k; with the former 2^18 calls below 512k point-steps
/// stayed on one thread (0.9–1.15×). Rarer calls on the pool wake sleeping threads (tens
/// of µs) for the same amount.
constexpr double kMinThreadWork = double(1 << 15);

/// Longest part (point-steps) a call may run on the OpenMP team while the calling thread
/// polls between its own parts: ~8 ms at the kernels' speed, the longest a Ctrl-C then waits.
constexpr double kTeamPartWork = double(1 << 23);

#if defined(_OPENMP)
/// Whether calls may run on the calling thread's OpenMP team (torch's). libgomp's team
/// does not survive fork(): in a forked child, the first parallel region of a thread
/// whose team the parent had opened waits for the parent's threads forever (torch's own
/// parallel ops too, unless the child sets one thread, as DataLoader workers do). So the
/// team is not used in a forked child — after a fork seen by a pthread_atfork handler
/// (registered when the core is loaded), or when the core is loaded only after the fork,
/// in a process that is a fork of its parent: one whose /proc/self/auxv, which exec()
/// writes (with the addresses ASLR drew), equals its parent's. Those calls run on the
/// pool, which starts anew in each process. A process that cannot read its parent's auxv
/// (another user's, or an orphan re-parented to init) is taken to be exec'd.
std::atomic<bool> team_forbidden{false};

void forbid_team() noexcept { team_forbidden.store(true, std::memory_order_relaxed); }

bool read_file(const std::string& path, std::string* out) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  out->assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  return !out->empty();
}

bool forked_from_parent() {
  std::string mine, parent;
  return read_file("/proc/self/auxv", &mine) &&
         read_file("/proc/" + std::to_string(::getppid()) + "/auxv", &parent) &&
         mine == parent;
}

const bool team_fork_guard = [] {
  if (forked_from_parent()) forbid_team();
  ::pthread_atfork(nullptr, nullptr, forbid_team);
  return true;
}();

/// libgomp's thread stack size: OMP_STACKSIZE or GOMP_STACKSIZE (a size with an optional
/// B/K/M/G suffix, K by default), else 0 for the system default, as libgomp reads them.
std::size_t omp_stack_size() {
  for (const char* name : {"OMP_STACKSIZE", "GOMP_STACKSIZE"}) {
    const char* text = std::getenv(name);
    if (!text || !*text) continue;
    char* end = nullptr;
    const unsigned long long value = std::strtoull(text, &end, 10);
    while (*end == ' ') ++end;
    unsigned shift = 10;
    switch (*end) {
      case 'b': case 'B': shift = 0; break;
      case 'k': case 'K': case '\0': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      default: continue;  // malformed: libgomp ignores it too
    }
    return std::size_t(value) << shift;
  }
  return 0;
}

/// The largest team (threads, the calling one included) known to start in this process.
std::atomic<int> team_started{1};

/// Whether a team of nt threads can be started. libgomp ends the process when it cannot
/// create a team thread ("libgomp: Thread creation failed", exit 1: an address-space,
/// thread or memory limit), so before the first team of nt threads the calling thread
/// starts and joins nt − 1 threads of libgomp's stack size itself; if one cannot be
/// started, the call runs on the pool instead, whose failure is an error (or, with no
/// worker at all, the calling thread alone). Once per larger team, ~20 µs a thread.
bool team_can_start(int nt) {
  if (nt <= team_started.load(std::memory_order_relaxed)) return true;
  pthread_attr_t attr;
  if (::pthread_attr_init(&attr) != 0) return false;
  const std::size_t stack = omp_stack_size();
  bool ok = stack == 0 || ::pthread_attr_setstacksize(&attr, stack) == 0;
  std::vector<pthread_t> started;
  for (int k = 1; ok && k < nt; ++k) {
    pthread_t thread;
    ok = ::pthread_create(&thread, &attr, +[](void*) -> void* { return nullptr; }, nullptr) == 0;
    if (ok) started.push_back(thread);
  }
  for (pthread_t thread : started) ::pthread_join(thread, nullptr);
  ::pthread_attr_destroy(&attr);
  if (ok) {
    int seen = team_started.load(std::memory_order_relaxed);
    while (seen < nt && !team_started.compare_exchange_weak(seen, nt)) {
    }
  }
  return ok;
}
#endif

void rethrow_first(const std::vector<std::exception_ptr>& errors) {
  for (const auto& err : errors)
    if (err) std::rethrow_exception(err);
}

/// The process's worker threads, kept between calls. An idle worker sleeps on its own
/// condition variable (no spinning, so it takes no core from torch's OpenMP threads or
/// anyone else); a call takes idle workers (starting new ones when there are too few),
/// hands each a task and gets them back when the task ends. Calls from several threads
/// at once take disjoint workers. The pool is never destroyed (a worker may still be in
/// a daemon thread's call when the interpreter exits), and a forked child starts a new
/// one (the parent's threads do not exist there).
class Pool {
 public:
  static Pool& get() {
    static std::mutex mu;
    static Pool* pool = nullptr;
    std::lock_guard<std::mutex> lock(mu);
    if (!pool || pool->pid_ != ::getpid()) pool = new Pool();  // the old one is leaked
    return *pool;
  }

  struct Worker {
    std::mutex mu;
    std::condition_variable wake;
    std::function<void()> task;
    bool has_task = false;
  };

  /// Up to `count` idle workers, starting threads as needed; fewer if a thread cannot be
  /// started (`error` then says why).
  std::vector<Worker*> acquire(int count, std::string* error) {
    std::vector<Worker*> got;
    std::lock_guard<std::mutex> lock(mu_);
    while (int(got.size()) < count && !idle_.empty()) {
      got.push_back(idle_.back());
      idle_.pop_back();
    }
    while (int(got.size()) < count) {
      auto w = std::make_unique<Worker>();
      try {
        std::thread(&Pool::loop, this, w.get()).detach();
      } catch (const std::exception& e) {
        *error = e.what();
        break;
      }
      got.push_back(w.release());  // owned by its thread's loop, which never ends
    }
    return got;
  }

  void release(Worker* w) {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(w);
  }

  static void assign(Worker* w, std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(w->mu);
      w->task = std::move(task);
      w->has_task = true;
    }
    w->wake.notify_one();
  }

 private:
  Pool() : pid_(::getpid()) {}

  void loop(Worker* w) {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(w->mu);
        w->wake.wait(lock, [w] { return w->has_task; });
        task = std::move(w->task);
        w->task = nullptr;
        w->has_task = false;
      }
      task();  // ends by releasing w and then signalling its call (see parallel_parts)
    }
  }

  const pid_t pid_;
  std::mutex mu_;
  std::vector<Worker*> idle_;
};

/// Runs fn(part, who) for part = 0 … parts−1 on nt threads: pool workers and, without
/// `poll`, the calling thread (who = 0 … nt−1 names the thread, for its workspace). Parts
/// are taken in order by whichever thread is free (a thread slowed by another process
/// takes fewer); which thread runs a part must not change the result.
/// With `poll` every part runs on a worker and the calling thread asks poll every
/// kPollInterval until they are done (a true answer cancels the call: Cancelled). A
/// part's exception or a cancel sets *stop, which the kernels read between steps; the
/// call returns only when no worker is still in it. If no worker can be started the
/// calling thread runs every part itself, unwatched (as a one-thread call always could);
/// if some but not all can, none is used and std::runtime_error says so.
///
/// Built with OpenMP, a call whose nt threads torch's OpenMP team would also have
/// (nt <= omp_get_max_threads(), which torch.set_num_threads sets) runs on that team
/// instead: torch's workers, still spinning after torch's last parallel op, take the
/// parts at once, where a thread of our own would share a core with one of them (issue
/// 14: 1.2-1.7x with two threads in a training loop). With `poll` the calling thread then
/// works too and asks poll between its parts, so this path is taken only when a part
/// (part_work point-steps) is short enough for that (kTeamPartWork); the same stop,
/// cancel and error semantics. Explicit thread counts above torch's run on the pool, whose
/// failure to start a thread is an error rather than libgomp's abort, and so do calls in a
/// forked child (team_forbidden) and calls whose team could not start (team_can_start).
template <class Fn>
void parallel_parts(int parts, int nt, const Poll* poll, int* stop, double part_work, Fn&& fn) {
  std::vector<std::exception_ptr> errors(parts);
  auto halt = [stop] { __atomic_store_n(stop, 1, __ATOMIC_RELAXED); };
  int next = 0;  // the next part to run (atomic)
  // runs parts until none is left, calling before_part() ahead of taking each
  auto run_parts_with = [&](int who, auto&& before_part) {
    for (;;) {
      before_part();
      const int part = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
      if (part >= parts) return;
      try {
        fn(part, who);
      } catch (...) {
        errors[part] = std::current_exception();
        halt();
      }
    }
  };
  auto run_parts = [&](int who) { run_parts_with(who, [] {}); };
  const int first_worker = poll ? 0 : 1;
  if (first_worker == nt) {
    run_parts(0);
    rethrow_first(errors);
    return;
  }
#if defined(_OPENMP)
  if (nt > 1 && nt <= omp_get_max_threads() && !omp_in_parallel() &&
      (!poll || part_work <= kTeamPartWork) &&
      !team_forbidden.load(std::memory_order_relaxed) && team_can_start(nt)) {
    bool cancelled = false;
    std::exception_ptr poll_error;
#pragma omp parallel num_threads(nt)
    {
      const int who = omp_get_thread_num();
      if (who == 0 && poll) {
        // the calling thread: parts, and a poll whenever kPollInterval has passed
        auto last = std::chrono::steady_clock::now();
        run_parts_with(0, [&] {
          const auto now = std::chrono::steady_clock::now();
          if (cancelled || now - last < kPollInterval) return;
          last = now;
          try {  // the main thread's poll (the only one polled) is never unwound
            cancelled = (*poll)();
          } catch (...) {
            poll_error = std::current_exception();
            cancelled = true;
          }
          if (cancelled) halt();
        });
      } else if (who < nt) {
        run_parts(who);
      }
    }
    if (poll_error) std::rethrow_exception(poll_error);
    if (cancelled) throw Cancelled();
    rethrow_first(errors);
    return;
  }
#endif
  Pool& pool = Pool::get();
  std::string why;
  std::vector<Pool::Worker*> workers = pool.acquire(nt - first_worker, &why);
  if (int(workers.size()) < nt - first_worker) {
    for (Pool::Worker* w : workers) pool.release(w);
    if (workers.empty()) {
      // not a single worker: the calling thread does every part itself, unwatched
      run_parts(0);
      rethrow_first(errors);
      return;
    }
    throw std::runtime_error("quflow: could not start worker thread " +
                             std::to_string(first_worker + workers.size() + 1) + " of " +
                             std::to_string(nt) + " (" + why +
                             "); use fewer threads (torch.set_num_threads)");
  }
  std::mutex mu;
  std::condition_variable all_done;
  int running = int(workers.size());
  for (int k = 0; k < int(workers.size()); ++k) {
    Pool::Worker* w = workers[k];
    Pool::assign(w, [&, w, who = first_worker + k] {
      run_parts(who);
      pool.release(w);  // idle again before this call can return
      std::lock_guard<std::mutex> lock(mu);
      if (--running == 0) all_done.notify_all();
    });
  }
  auto wait_all = [&] {
    std::unique_lock<std::mutex> lock(mu);
    all_done.wait(lock, [&] { return running == 0; });
  };
  bool cancelled = false;
  std::exception_ptr poll_error;
  if (!poll) {
    run_parts(0);
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
        // the workers and wait for them, then let the unwinding go on
        halt();
        wait_all();
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
  wait_all();
  if (poll_error) std::rethrow_exception(poll_error);
  if (cancelled) throw Cancelled();
  rethrow_first(errors);
}

/// Runs body(first_block, last_block, t) for t = 0 … nt−1, a static split of `blocks`, on
/// nt threads (see parallel_parts: without `poll` the calling thread is one of them; the
/// same poll, cancel, stop and worker-failure semantics).
template <class Body>
void parallel_blocks(Index blocks, int nt, const Poll* poll, int* stop, double work,
                     Body&& body) {
  parallel_parts(nt, nt, poll, stop, work / nt, [&](int t, int) {
    body(blocks * t / nt, blocks * (t + 1) / nt, t);
  });
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

template <class T, int W>
auto jvp_kernel() {
#if defined(QUFLOW_HAVE_AVX2)
  if (use_avx2()) return &isa_avx2::jvp_block<T, W>;
#endif
  return &isa_baseline::jvp_block<T, W>;
}

template <class T, int W>
auto adjoint2_kernel() {
#if defined(QUFLOW_HAVE_AVX2)
  if (use_avx2()) return &isa_avx2::adjoint2_block<T, W>;
#endif
  return &isa_baseline::adjoint2_block<T, W>;
}

int thread_count(Index blocks, int threads) {
  return static_cast<int>(std::max<Index>(1, std::min<Index>(threads, blocks)));
}

/// A call's work in point-steps (batch · n · steps).
template <class T>
double work(const System<T>& sys) {
  return double(sys.batch) * double(sys.n) * double(std::max<Index>(sys.steps, 1));
}

/// thread_count, and no more threads than give each kMinThreadWork point-steps.
template <class T>
int thread_count(const System<T>& sys, Index blocks, int threads) {
  const double most = std::max(1.0, std::floor(work(sys) / kMinThreadWork));
  return thread_count(blocks, static_cast<int>(std::min<double>(threads, most)));
}

/// One WorkData per thread of a call, made by the thread when it first needs it.
template <class T>
struct Workspaces {
  Index n;
  int w;
  std::vector<std::unique_ptr<WorkData<T>>> slots;
  Workspaces(Index n_, int w_, int nt) : n(n_), w(w_), slots(nt) {}
  KernelWork<T>& get(int who) {
    if (!slots[who]) slots[who] = std::make_unique<WorkData<T>>(n, w);
    return slots[who]->view;
  }
};

/// The largest component check_state() lets through (see System::max_state).
template <class T>
double state_limit(const System<T>& sys, const typename System<T>::Bounds& bounds) {
  return sys.max_state(bounds) / std::sqrt(2.0);
}

/// A state (or cotangent) must leave the step's intermediate (I ∓ i·dt/2·H)ψ finite:
/// its largest component (one vectorised pass over the 2·size components; |z| ≤ √2 ×
/// its larger component) is compared with System::max_state. This is the only scan of
/// `z`; the binding leaves it to the core, where the GIL is released. Returns that
/// largest component.
template <class T>
double check_state(const System<T>& sys, const typename System<T>::Bounds& bounds,
                   const std::complex<T>* z, Index size, const char* name) {
  const double m = System<T>::max_abs(reinterpret_cast<const T*>(z), 2 * size);
  const double limit = state_limit(sys, bounds);
  if (m > limit) {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "%s: a component of size %.3g exceeds %.3g, the limit in %s for these dt, "
                  "dx, V and u (a step forms (I - i*dt/2*H)psi, which would overflow); the "
                  "propagation is linear: rescale it",
                  name, m, limit, sizeof(T) == 4 ? "float32" : "float64");
    throw std::invalid_argument(buf);
  }
  return m;
}

/// The poll to watch a call with, or null when the call is too short to need one.
template <class T>
const Poll* watch(const System<T>& sys, const Poll& poll) {
  return poll && work(sys) >= kPollWork ? &poll : nullptr;
}

template <class T, int W>
void forward_w(const System<T>& sys, const std::complex<T>* psi0, std::complex<T>* out,
               bool trajectory, int threads, const Poll& poll,
               const typename System<T>::Bounds& bounds, bool beta_form) {
  SharedData<T> sh(sys, bounds, nullptr, beta_form);
  const Index blocks = (sys.batch + W - 1) / W;
  const int nt = thread_count(sys, blocks, threads);
  const auto kernel = forward_kernel<T, W>();
  Workspaces<T> ws(sys.n, W, nt);
  // one part per block, taken by whichever thread is free
  parallel_parts(static_cast<int>(blocks), nt, watch(sys, poll), &sh.stop,
                 work(sys) / double(blocks), [&](int ib, int who) {
    kernel(sh.view, ws.get(who), Index(ib) * W, std::min<Index>(W, sys.batch - Index(ib) * W),
           psi0, out, trajectory);
  });
}

template <class T, int W>
void backward_w(const System<T>& sys, const std::complex<T>* states, bool states_full,
                const std::complex<T>* grad_out, bool grad_full, const Gradients<T>& grads,
                int threads, const Poll& poll, const typename System<T>::Bounds& bounds) {
  SharedData<T> sh(sys, bounds);
  const Index n = sys.n;
  const Index blocks = (sys.batch + W - 1) / W;
  const int nt = thread_count(sys, blocks, threads);
  const auto kernel = backward_kernel<T, W>();
  // Parts: `chunks` contiguous runs of blocks, each with its own partial sums of the
  // gradients shared by the whole batch, reduced in chunk order below; the chunks depend
  // on the thread count only, so the result is deterministic for a given thread count.
  // Four per thread let a thread that another process slows take fewer.
  const int chunks = nt == 1 ? 1 : static_cast<int>(std::min<Index>(blocks, 4 * Index(nt)));
  std::vector<Vec<T>> acc_v(chunks, Vec<T>::Zero(grads.potential ? n : 0));
  std::vector<Vec<T>> acc_w(chunks, Vec<T>::Zero(grads.control_shape ? n : 0));
  std::vector<Vec<T>> acc_u(chunks, Vec<T>::Zero(sys.control_rows == 1 && grads.control
                                                     ? sys.steps : 0));
  Workspaces<T> ws(n, W, nt);
  parallel_parts(chunks, nt, watch(sys, poll), &sh.stop, work(sys) / chunks,
                 [&](int c, int who) {
    KernelWork<T>& wk = ws.get(who);
    for (Index ib = blocks * c / chunks; ib < blocks * (c + 1) / chunks; ++ib)
      kernel(sh.view, wk, ib * W, std::min<Index>(W, sys.batch - ib * W), states,
             states_full, grad_out, grad_full, grads, acc_v[c].data(), acc_u[c].data(),
             acc_w[c].data());
  });
  // ordered reduction: deterministic for a given thread count
  for (int c = 1; c < chunks; ++c) {
    acc_v[0] += acc_v[c];
    acc_w[0] += acc_w[c];
    acc_u[0] += acc_u[c];
  }
  if (grads.potential && sys.potential_rows == 1)
    std::copy(acc_v[0].data(), acc_v[0].data() + n, grads.potential);
  if (grads.control_shape) std::copy(acc_w[0].data(), acc_w[0].data() + n, grads.control_shape);
  if (grads.control && sys.control_rows == 1)
    std::copy(acc_u[0].data(), acc_u[0].data() + sys.steps, grads.control);
}

template <class T, int W>
void jvp_w(const System<T>& sys, const Tangents<T>& tan, const std::complex<T>* psi0,
           std::complex<T>* out, std::complex<T>* tout, bool trajectory, int threads,
           const Poll& poll, const typename System<T>::Bounds& bounds) {
  SharedData<T> sh(sys, bounds, &tan);
  const Index blocks = (sys.batch + W - 1) / W;
  const auto kernel = jvp_kernel<T, W>();
  parallel_blocks(blocks, thread_count(blocks, threads), watch(sys, poll), &sh.stop, work(sys),
                  [&](Index first, Index last, int) {
    WorkData<T> wk(sys.n, W, true);
    for (Index ib = first; ib < last; ++ib)
      kernel(sh.view, wk.view, ib * W, std::min<Index>(W, sys.batch - ib * W), psi0, out, tout,
             trajectory);
  });
}

template <class T, int W>
void adjoint2_w(const System<T>& sys, const Tangents<T>& tan, const std::complex<T>* states,
                const std::complex<T>* tstates, const std::complex<T>* grad_out,
                const std::complex<T>* tgrad_out, bool grad_full, const Gradients<T>& grads,
                const Gradients<T>& tgrads, int threads, const Poll& poll,
                const typename System<T>::Bounds& bounds) {
  SharedData<T> sh(sys, bounds, &tan);
  const Index n = sys.n;
  const Index blocks = (sys.batch + W - 1) / W;
  const int nt = thread_count(blocks, threads);
  const auto kernel = adjoint2_kernel<T, W>();
  // per thread: Σ over shared rows of ∂/∂V, ∂/∂u, ∂/∂W, ∂/∂δV, ∂/∂δu, ∂/∂δW
  const Index sizes[6] = {n, sys.control_rows == 1 ? sys.steps : 0, n, n,
                          tan.control_rows == 1 ? sys.steps : 0, n};
  std::vector<std::vector<Vec<T>>> acc(6);
  for (int a = 0; a < 6; ++a) acc[a].assign(nt, Vec<T>::Zero(sizes[a]));
  parallel_blocks(blocks, nt, watch(sys, poll), &sh.stop, work(sys),
                  [&](Index first, Index last, int t) {
    WorkData<T> wk(n, W, true);
    T* mine[6];
    for (int a = 0; a < 6; ++a) mine[a] = acc[a][t].data();
    for (Index ib = first; ib < last; ++ib)
      kernel(sh.view, wk.view, ib * W, std::min<Index>(W, sys.batch - ib * W), states, tstates,
             grad_out, tgrad_out, grad_full, grads, tgrads, mine);
  });
  for (int a = 0; a < 6; ++a)  // ordered reduction: deterministic for a thread count
    for (int t = 1; t < nt; ++t) acc[a][0] += acc[a][t];
  auto put = [&](T* dst, int a, bool shared) {
    if (dst && shared) std::copy(acc[a][0].data(), acc[a][0].data() + sizes[a], dst);
  };
  put(grads.potential, 0, sys.potential_rows == 1);
  put(grads.control, 1, sys.control_rows == 1);
  put(grads.control_shape, 2, true);
  put(tgrads.potential, 3, tan.potential_rows == 1);
  put(tgrads.control, 4, tan.control_rows == 1);
  put(tgrads.control_shape, 5, true);
}

/// Structural checks of a Tangents against its System (the binding checks shapes and
/// finiteness).
template <class T>
void check_tangents(const System<T>& sys, const Tangents<T>& tan) {
  QUFLOW_CHECK(!tan.potential || tan.potential_rows == 1 || tan.potential_rows == sys.batch,
               "tangent potential rows must be 1 or batch");
  QUFLOW_CHECK(!tan.control || sys.control_rows > 0, "a control tangent needs a control");
  QUFLOW_CHECK(!tan.control_shape || sys.control_rows > 0,
               "a control_shape tangent needs a control");
  QUFLOW_CHECK(!tan.control || tan.control_rows == 1 || tan.control_rows == sys.batch,
               "tangent control rows must be 1 or batch");
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

bool team_allowed() {
#if defined(_OPENMP)
  return !team_forbidden.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

const char* thread_runtime() {
#if defined(_OPENMP)
  return "openmp";
#else
  return "pool";
#endif
}

template <class T>
void cn_forward(const System<T>& sys, const std::complex<T>* psi0, std::complex<T>* out,
                bool trajectory, int threads, const Poll& poll) {
  const auto bounds = sys.check();
  QUFLOW_CHECK(psi0 != nullptr && out != nullptr, "psi0 and out must not be null");
  QUFLOW_CHECK(threads >= 1, "threads must be >= 1");
  const double m = check_state(sys, bounds, psi0, sys.batch * sys.n, "psi0");
  // The β form's β_j ψ_j is up to 1/he times larger than what check_state() bounds (he < 1):
  // states that large (near the type's overflow) take the α form.
  const double he = double(sys.dt) / 2 / double(sys.dx) / double(sys.dx);
  const bool beta_form = m <= state_limit(sys, bounds) * std::min(he, 1.0);
  QUFLOW_CHECK(!trajectory || (sys.steps < std::numeric_limits<Index>::max() &&
                               size_fits(sys.batch, sys.steps + 1, sys.n, sizeof(*out))),
               "the trajectory's size overflows");
  with_lanes<T>(sys.batch, true, [&](auto w) {
    forward_w<T, decltype(w)::value>(sys, psi0, out, trajectory, threads, poll, bounds,
                                     beta_form);
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
  // two registers per point in both precisions: the adjoint of a constant H in float was
  // ~1.2× slower with two before issue 14 trimmed it (82 → 58 flops per point-step), and
  // was 1.3–1.5× faster with two at 58; at 52 (Cayley form) two are 1.06–1.10× faster at
  // batch 200, n = 20 / 256 and batch 2000, one 1.06× at n = 2048 (make bench-cpp)
  with_lanes<T>(sys.batch, true, [&](auto w) {
    backward_w<T, decltype(w)::value>(sys, states, states_full, grad_out, grad_full, grads,
                                      threads, poll, bounds);
  });
}

template <class T>
void cn_jvp(const System<T>& sys, const Tangents<T>& tan, const std::complex<T>* psi0,
            std::complex<T>* out, std::complex<T>* tout, bool trajectory, int threads,
            const Poll& poll) {
  const auto bounds = sys.check();
  check_tangents(sys, tan);
  QUFLOW_CHECK(psi0 != nullptr && out != nullptr && tout != nullptr,
               "psi0, out and tout must not be null");
  QUFLOW_CHECK(threads >= 1, "threads must be >= 1");
  check_state(sys, bounds, psi0, sys.batch * sys.n, "psi0");
  if (tan.psi0) check_state(sys, bounds, tan.psi0, sys.batch * sys.n, "tangent of psi0");
  QUFLOW_CHECK(!trajectory || (sys.steps < std::numeric_limits<Index>::max() &&
                               size_fits(sys.batch, sys.steps + 1, sys.n, sizeof(*out))),
               "the trajectory's size overflows");
  with_lanes<T>(sys.batch, true, [&](auto w) {
    jvp_w<T, decltype(w)::value>(sys, tan, psi0, out, tout, trajectory, threads, poll, bounds);
  });
}

template <class T>
void cn_adjoint2(const System<T>& sys, const Tangents<T>& tan, const std::complex<T>* states,
                 const std::complex<T>* tstates, const std::complex<T>* grad_out,
                 const std::complex<T>* tgrad_out, bool grad_full, const Gradients<T>& grads,
                 const Gradients<T>& tgrads, int threads, const Poll& poll) {
  const auto bounds = sys.check();
  check_tangents(sys, tan);
  QUFLOW_CHECK(states != nullptr && tstates != nullptr && tgrad_out != nullptr,
               "states, tstates and tgrad_out must not be null");
  QUFLOW_CHECK(threads >= 1, "threads must be >= 1");
  QUFLOW_CHECK((!grads.control && !grads.control_shape && !tgrads.control &&
                !tgrads.control_shape) || sys.control_rows > 0,
               "control gradient requested without control");
  QUFLOW_CHECK(!grad_full || (sys.steps < std::numeric_limits<Index>::max() &&
                              size_fits(sys.batch, sys.steps + 1, sys.n, sizeof(*states))),
               "the trajectory's size overflows");
  const Index cotangents = sys.batch * sys.n * (grad_full ? sys.steps + 1 : 1);
  check_state(sys, bounds, states, sys.batch * sys.n, "states");
  check_state(sys, bounds, tstates, sys.batch * sys.n, "tangent states");
  if (grad_out) check_state(sys, bounds, grad_out, cotangents, "grad_out");
  check_state(sys, bounds, tgrad_out, cotangents, "tangent grad_out");
  // one register per point: with four state planes live, two registers spill (measured:
  // no faster with a control, ~10 % slower for a constant H; again in the Cayley form:
  // HVPs 0–3 % faster with a control, 6–9 % slower for a constant H); forward mode uses two
  with_lanes<T>(sys.batch, false, [&](auto w) {
    adjoint2_w<T, decltype(w)::value>(sys, tan, states, tstates, grad_out, tgrad_out,
                                      grad_full, grads, tgrads, threads, poll, bounds);
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

template void cn_jvp<float>(const System<float>&, const Tangents<float>&,
                            const std::complex<float>*, std::complex<float>*,
                            std::complex<float>*, bool, int, const Poll&);
template void cn_jvp<double>(const System<double>&, const Tangents<double>&,
                             const std::complex<double>*, std::complex<double>*,
                             std::complex<double>*, bool, int, const Poll&);
template void cn_adjoint2<float>(const System<float>&, const Tangents<float>&,
                                 const std::complex<float>*, const std::complex<float>*,
                                 const std::complex<float>*, const std::complex<float>*, bool,
                                 const Gradients<float>&, const Gradients<float>&, int,
                                 const Poll&);
template void cn_adjoint2<double>(const System<double>&, const Tangents<double>&,
                                  const std::complex<double>*, const std::complex<double>*,
                                  const std::complex<double>*, const std::complex<double>*,
                                  bool, const Gradients<double>&, const Gradients<double>&, int,
                                  const Poll&);

}  // namespace quflow
