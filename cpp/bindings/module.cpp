// quflow._core: the only translation unit that sees pybind11.
//
// Contract: arrays arrive as numpy arrays of the exact dtype, C order and aligned
// (noconvert), so a wrong dtype or layout is a TypeError here, never a silent copy.
// Structural checks (ndim, sizes that overflow, finiteness, scalars, the representable
// range of dt, dx, V and u) raise ValueError before any allocation or pointer reaches the
// core. Long calls poll for signals (Ctrl-C) every few milliseconds and raise them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#if defined(__GLIBCXX__)
#include <cxxabi.h>  // abi::__forced_unwind
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <thread>

#include "quflow/crank_nicolson.hpp"

namespace py = pybind11;

namespace {

template <class T>
using CArray = py::array_t<std::complex<T>, py::array::c_style>;
template <class T>
using RArray = py::array_t<T, py::array::c_style>;

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

/// Arrays reach the core as typed pointers: a misaligned buffer (a view at an odd byte
/// offset) would be undefined behaviour there.
template <class A>
void require_aligned(const A& a, const char* name) {
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::type_error(std::string(name) +
                         ": expected an aligned array; copy it with "
                         "numpy.require(a, requirements='CA')");
}

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

/// True on the interpreter's main thread, the only one where Python runs signal handlers
/// (PyErr_CheckSignals does nothing on any other thread).
bool on_main_thread() {
  static const unsigned long main_ident =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  return PyThread_get_thread_ident() == main_ident;
}

/// Never returns: the thread waits for the process to end. A thread that takes the GIL
/// while Python finalizes is ended by pthread_exit, whose unwinding aborts the process if
/// it meets a C++ frame that cannot be unwound (torch's dispatcher, above a registered
/// operator, re-takes the GIL in a destructor); Python 3.14 hangs such threads instead.
[[noreturn]] void hang_until_exit() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

/// Runs a core call with the GIL released. On the main thread, the calling thread briefly
/// takes the GIL back every few milliseconds to run Python's signal handlers; if one raises
/// (Ctrl-C: KeyboardInterrupt) the core stops its workers and that exception is raised here.
/// Other threads are not polled (no handler runs there), so they never wait for the GIL
/// during a call.
///
/// A call that ends while the interpreter finalizes (a daemon thread at exit) does not go
/// back into Python: its thread waits for the process to end (see hang_until_exit). The
/// main thread's poll does not touch the GIL then either; should pthread_exit unwind
/// through here anyway, the core joins its workers and the unwinding passes through
/// without taking the GIL back.
template <class Call>
void run_released(Call&& call) {
  const quflow::Poll poll = [] {
    if (interpreter_finalizing()) return false;
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;  // leaves the handler's exception set
  };
  const bool watched = on_main_thread();
  bool cancelled = false;
  {
    py::gil_scoped_release nogil;
    try {
      call(watched ? poll : quflow::Poll{});
    } catch (const quflow::Cancelled&) {
      cancelled = true;
#if defined(__GLIBCXX__)
    } catch (abi::__forced_unwind&) {
      nogil.disarm();
      throw;
#endif
    } catch (...) {
      if (interpreter_finalizing()) hang_until_exit();
      throw;
    }
    if (interpreter_finalizing()) hang_until_exit();
  }
  if (cancelled) throw py::error_already_set();
}

template <class A>
void require_ndim(const A& a, const char* name, int lo, int hi) {
  if (a.ndim() < lo || a.ndim() > hi)
    fail(std::string(name) + ": expected " + std::to_string(lo) +
         (lo == hi ? "" : "-" + std::to_string(hi)) + " dimensions, got " +
         std::to_string(a.ndim()));
}

template <class T>
void require_finite(const T* p, py::ssize_t size, const char* name) {
  for (py::ssize_t i = 0; i < size; ++i)
    if (!std::isfinite(p[i])) fail(std::string(name) + ": contains NaN or Inf");
}

template <class T>
void require_finite(const std::complex<T>* p, py::ssize_t size, const char* name) {
  require_finite(reinterpret_cast<const T*>(p), 2 * size, name);
}

/// Builds and validates the core's System view from the binding's arguments.
template <class T>
quflow::System<T> make_system(py::ssize_t batch, py::ssize_t n, const RArray<T>& potential,
                               const std::optional<RArray<T>>& control,
                               const std::optional<RArray<T>>& control_shape, double dt,
                               double dx, py::ssize_t steps) {
  if (!(std::isfinite(dt) && dt > 0)) fail("dt: expected a finite number > 0");
  if (!(std::isfinite(dx) && dx > 0)) fail("dx: expected a finite number > 0");
  if (steps < 0) fail("steps: expected >= 0");
  if (n < 1 || batch < 1) fail("psi: expected batch >= 1 and n >= 1");
  require_ndim(potential, "potential", 2, 2);
  require_aligned(potential, "potential");
  if (potential.shape(1) != n || (potential.shape(0) != 1 && potential.shape(0) != batch))
    fail("potential: expected shape (1, n) or (batch, n)");
  require_finite(potential.data(), potential.size(), "potential");
  quflow::System<T> sys;
  sys.batch = batch;
  sys.n = n;
  sys.steps = steps;
  sys.dt = static_cast<T>(dt);
  sys.dx = static_cast<T>(dx);
  sys.potential = potential.data();
  sys.potential_rows = potential.shape(0);
  if (control.has_value() != control_shape.has_value())
    fail("control and control_shape: give both or neither");
  if (control) {
    require_ndim(*control, "control", 2, 2);
    require_ndim(*control_shape, "control_shape", 1, 1);
    require_aligned(*control, "control");
    require_aligned(*control_shape, "control_shape");
    if (control->shape(1) != steps) fail("control: expected shape (rows, steps)");
    if (control->shape(0) != 1 && control->shape(0) != batch)
      fail("control: expected 1 or batch rows");
    if (control_shape->shape(0) != n) fail("control_shape: expected shape (n,)");
    require_finite(control->data(), control->size(), "control");
    require_finite(control_shape->data(), control_shape->size(), "control_shape");
    sys.control = control->data();
    sys.control_rows = control->shape(0);
    sys.control_shape = control_shape->data();
  }
  if (!(std::isfinite(sys.dt) && sys.dt > 0 && std::isfinite(sys.dx) && sys.dx > 0))
    fail("dt, dx: not representable in this precision");
  const std::string range = sys.range_error(sys.bounds());
  if (!range.empty()) fail(range);
  return sys;
}

/// The System of a forward sweep from psi0 (batch, n): checks threads, psi0's layout and
/// that `copies` trajectories of (batch, steps+1, n) states fit a 64-bit size.
template <class T>
quflow::System<T> forward_system(const CArray<T>& psi0, const RArray<T>& potential,
                                 const std::optional<RArray<T>>& control,
                                 const std::optional<RArray<T>>& control_shape, double dt,
                                 double dx, py::ssize_t steps, bool trajectory, int threads,
                                 int copies) {
  if (threads < 1) fail("threads: expected >= 1");
  require_ndim(psi0, "psi0", 2, 2);
  require_aligned(psi0, "psi0");
  const py::ssize_t batch = psi0.shape(0), n = psi0.shape(1);
  auto sys = make_system<T>(batch, n, potential, control, control_shape, dt, dx, steps);
  if (trajectory && (steps == std::numeric_limits<py::ssize_t>::max() ||
                     !quflow::size_fits(batch, steps + 1, n, copies * sizeof(std::complex<T>))))
    fail("steps: a trajectory of " + std::to_string(steps) + " + 1 states of (batch, n) = (" +
         std::to_string(batch) + ", " + std::to_string(n) + ") overflows a 64-bit size");
  return sys;
}

template <class T>
py::array forward(const CArray<T>& psi0, const RArray<T>& potential,
                  const std::optional<RArray<T>>& control,
                  const std::optional<RArray<T>>& control_shape, double dt, double dx,
                  py::ssize_t steps, bool trajectory, int threads) {
  const auto sys = forward_system<T>(psi0, potential, control, control_shape, dt, dx, steps,
                                     trajectory, threads, 1);
  const py::ssize_t batch = sys.batch, n = sys.n;
  require_finite(psi0.data(), psi0.size(), "psi0");
  CArray<T> out = trajectory ? CArray<T>({batch, steps + 1, n}) : CArray<T>({batch, n});
  std::complex<T>* dst = out.mutable_data();
  run_released([&](const quflow::Poll& poll) {
    quflow::cn_forward<T>(sys, psi0.data(), dst, trajectory, threads, poll);
  });
  return out;
}

template <class T>
py::tuple backward(const CArray<T>& states, const CArray<T>& grad_out,
                   const RArray<T>& potential, const std::optional<RArray<T>>& control,
                   const std::optional<RArray<T>>& control_shape, double dt, double dx,
                   py::ssize_t steps, bool need_psi0, bool need_potential, bool need_control,
                   bool need_control_shape, int threads) {
  if (threads < 1) fail("threads: expected >= 1");
  require_ndim(states, "states", 2, 3);
  require_ndim(grad_out, "grad_out", 2, 3);
  require_aligned(states, "states");
  require_aligned(grad_out, "grad_out");
  const py::ssize_t batch = states.shape(0), n = states.shape(states.ndim() - 1);
  const auto sys = make_system<T>(batch, n, potential, control, control_shape, dt, dx, steps);
  for (const CArray<T>* a : {&states, &grad_out}) {
    const char* name = a == &states ? "states" : "grad_out";
    const bool full = a->ndim() == 3;
    if (a->shape(0) != batch || a->shape(a->ndim() - 1) != n || (full && a->shape(1) - 1 != steps))
      fail(std::string(name) + ": expected shape (batch, n) or (batch, steps+1, n)");
  }
  if (grad_out.ndim() == 3 && states.ndim() != 3)
    fail("grad_out: a trajectory cotangent needs the stored trajectory as states");
  if ((need_control || need_control_shape) && !control)
    fail("need_control: no control was given");

  std::optional<CArray<T>> g_psi;
  std::optional<RArray<T>> g_v, g_u, g_w;
  quflow::Gradients<T> grads;
  if (need_psi0) grads.psi0 = (g_psi = CArray<T>({batch, n}))->mutable_data();
  if (need_potential)
    grads.potential = (g_v = RArray<T>({sys.potential_rows, n}))->mutable_data();
  if (need_control) grads.control = (g_u = RArray<T>({sys.control_rows, steps}))->mutable_data();
  if (need_control_shape) grads.control_shape = (g_w = RArray<T>({n}))->mutable_data();
  run_released([&](const quflow::Poll& poll) {
    quflow::cn_backward<T>(sys, states.data(), states.ndim() == 3, grad_out.data(),
                           grad_out.ndim() == 3, grads, threads, poll);
  });
  auto obj = [](const auto& o) { return o ? py::object(*o) : py::object(py::none()); };
  return py::make_tuple(obj(g_psi), obj(g_v), obj(g_u), obj(g_w));
}

/// The directions of forward mode (and of the second-order adjoint) as a core view, after
/// checking each against the System it perturbs: δψ0 (batch, n), δV (1 or batch, n),
/// δu (1 or batch, steps), δW (n,); None is a zero direction.
template <class T>
quflow::Tangents<T> make_tangents(const quflow::System<T>& sys,
                                  const std::optional<CArray<T>>& tpsi0,
                                  const std::optional<RArray<T>>& tpotential,
                                  const std::optional<RArray<T>>& tcontrol,
                                  const std::optional<RArray<T>>& tcontrol_shape) {
  quflow::Tangents<T> tan;
  // ndim, alignment and finiteness of one direction; its shape is checked by the caller
  auto valid = [](const auto& a, const char* name, int ndim) {
    require_ndim(a, name, ndim, ndim);
    require_aligned(a, name);
    require_finite(a.data(), a.size(), name);
  };
  if (tpsi0) {
    valid(*tpsi0, "tangent psi0", 2);
    if (tpsi0->shape(0) != sys.batch || tpsi0->shape(1) != sys.n)
      fail("tangent psi0: expected shape (batch, n)");
    tan.psi0 = tpsi0->data();
  }
  auto rows_ok = [&](const RArray<T>& a) { return a.shape(0) == 1 || a.shape(0) == sys.batch; };
  if (tpotential) {
    valid(*tpotential, "tangent potential", 2);
    if (tpotential->shape(1) != sys.n || !rows_ok(*tpotential))
      fail("tangent potential: expected shape (1, n) or (batch, n)");
    tan.potential = tpotential->data();
    tan.potential_rows = tpotential->shape(0);
  }
  if ((tcontrol || tcontrol_shape) && sys.control_rows == 0)
    fail("tangent control: given without a control");
  if (tcontrol) {
    valid(*tcontrol, "tangent control", 2);
    if (tcontrol->shape(1) != sys.steps || !rows_ok(*tcontrol))
      fail("tangent control: expected shape (1, steps) or (batch, steps)");
    tan.control = tcontrol->data();
    tan.control_rows = tcontrol->shape(0);
  }
  if (tcontrol_shape) {
    valid(*tcontrol_shape, "tangent control_shape", 1);
    if (tcontrol_shape->shape(0) != sys.n) fail("tangent control_shape: expected shape (n,)");
    tan.control_shape = tcontrol_shape->data();
  }
  return tan;
}

template <class T>
py::tuple jvp(const CArray<T>& psi0, const RArray<T>& potential,
              const std::optional<RArray<T>>& control,
              const std::optional<RArray<T>>& control_shape,
              const std::optional<CArray<T>>& tpsi0, const std::optional<RArray<T>>& tpotential,
              const std::optional<RArray<T>>& tcontrol,
              const std::optional<RArray<T>>& tcontrol_shape, double dt, double dx,
              py::ssize_t steps, bool trajectory, int threads) {
  const auto sys = forward_system<T>(psi0, potential, control, control_shape, dt, dx, steps,
                                     trajectory, threads, 2);
  const py::ssize_t batch = sys.batch, n = sys.n;
  const auto tan = make_tangents<T>(sys, tpsi0, tpotential, tcontrol, tcontrol_shape);
  require_finite(psi0.data(), psi0.size(), "psi0");
  auto make = [&] { return trajectory ? CArray<T>({batch, steps + 1, n}) : CArray<T>({batch, n}); };
  CArray<T> out = make(), tout = make();
  std::complex<T>* dst = out.mutable_data();
  std::complex<T>* tdst = tout.mutable_data();
  run_released([&](const quflow::Poll& poll) {
    quflow::cn_jvp<T>(sys, tan, psi0.data(), dst, tdst, trajectory, threads, poll);
  });
  return py::make_tuple(out, tout);
}

template <class T>
py::tuple adjoint2(const CArray<T>& states, const CArray<T>& tstates,
                   const std::optional<CArray<T>>& grad_out, const CArray<T>& tgrad_out,
                   const RArray<T>& potential, const std::optional<RArray<T>>& control,
                   const std::optional<RArray<T>>& control_shape,
                   const std::optional<RArray<T>>& tpotential,
                   const std::optional<RArray<T>>& tcontrol,
                   const std::optional<RArray<T>>& tcontrol_shape, double dt, double dx,
                   py::ssize_t steps, const std::vector<bool>& need, int threads) {
  if (threads < 1) fail("threads: expected >= 1");
  if (need.size() != 8) fail("need: expected 8 flags (psi0, potential, control, control_shape, "
                             "and the same for the tangents)");
  require_ndim(states, "states", 2, 2);
  require_ndim(tstates, "tangent states", 2, 2);
  require_ndim(tgrad_out, "tangent grad_out", 2, 3);
  for (const auto* a : {&states, &tstates, &tgrad_out}) require_aligned(*a, "states");
  const py::ssize_t batch = states.shape(0), n = states.shape(1);
  const auto sys = make_system<T>(batch, n, potential, control, control_shape, dt, dx, steps);
  const auto tan = make_tangents<T>(sys, std::nullopt, tpotential, tcontrol, tcontrol_shape);
  const bool full = tgrad_out.ndim() == 3;
  if (tstates.shape(0) != batch || tstates.shape(1) != n)
    fail("tangent states: expected shape (batch, n)");
  auto check_cot = [&](const CArray<T>& a, const char* name) {
    if (a.ndim() != tgrad_out.ndim() || a.shape(0) != batch || a.shape(a.ndim() - 1) != n ||
        (full && a.shape(1) - 1 != steps))
      fail(std::string(name) + ": expected shape (batch, n) or (batch, steps+1, n), as both "
                               "cotangents");
  };
  check_cot(tgrad_out, "tangent grad_out");
  if (grad_out) {
    require_aligned(*grad_out, "grad_out");
    check_cot(*grad_out, "grad_out");
  }
  if ((need[2] || need[3] || need[6] || need[7]) && !control)
    fail("need: a control gradient without a control");
  const py::ssize_t rows[8] = {batch, sys.potential_rows, sys.control_rows, 0,
                               batch, tan.potential ? tan.potential_rows : sys.potential_rows,
                               tan.control ? tan.control_rows : sys.control_rows, 0};
  std::optional<CArray<T>> gp[2];
  std::optional<RArray<T>> gv[2], gu[2], gw[2];
  quflow::Gradients<T> grads[2];
  for (int s = 0; s < 2; ++s) {
    if (need[4 * s]) grads[s].psi0 = (gp[s] = CArray<T>({batch, n}))->mutable_data();
    if (need[4 * s + 1])
      grads[s].potential = (gv[s] = RArray<T>({rows[4 * s + 1], n}))->mutable_data();
    if (need[4 * s + 2])
      grads[s].control = (gu[s] = RArray<T>({rows[4 * s + 2], steps}))->mutable_data();
    if (need[4 * s + 3]) grads[s].control_shape = (gw[s] = RArray<T>({n}))->mutable_data();
  }
  // the tangent's gradient rows follow its own direction's rows, else the primal's
  quflow::Tangents<T> t2 = tan;
  t2.potential_rows = rows[5];
  t2.control_rows = rows[6];
  run_released([&](const quflow::Poll& poll) {
    quflow::cn_adjoint2<T>(sys, t2, states.data(), tstates.data(),
                           grad_out ? grad_out->data() : nullptr, tgrad_out.data(), full,
                           grads[0], grads[1], threads, poll);
  });
  auto obj = [](const auto& o) { return o ? py::object(*o) : py::object(py::none()); };
  return py::make_tuple(obj(gp[0]), obj(gv[0]), obj(gu[0]), obj(gw[0]), obj(gp[1]), obj(gv[1]),
                        obj(gu[1]), obj(gw[1]));
}

template <class T>
void bind(py::module_& m, const char* suffix) {
  using namespace pybind11::literals;
  m.def((std::string("forward_") + suffix).c_str(), &forward<T>, "psi0"_a.noconvert(),
        "potential"_a.noconvert(), "control"_a.noconvert() = py::none(),
        "control_shape"_a.noconvert() = py::none(), "dt"_a, "dx"_a, "steps"_a,
        "trajectory"_a = false, "threads"_a = 1,
        "Crank–Nicolson forward sweep. psi0 (batch, n); returns (batch, n) or "
        "(batch, steps+1, n).");
  m.def((std::string("backward_") + suffix).c_str(), &backward<T>, "states"_a.noconvert(),
        "grad_out"_a.noconvert(), "potential"_a.noconvert(),
        "control"_a.noconvert() = py::none(), "control_shape"_a.noconvert() = py::none(),
        "dt"_a, "dx"_a, "steps"_a, "need_psi0"_a = true, "need_potential"_a = false,
        "need_control"_a = false, "need_control_shape"_a = false, "threads"_a = 1,
        "Adjoint sweep. Returns (grad_psi0, grad_potential, grad_control, "
        "grad_control_shape), None where not requested.");
  m.def((std::string("jvp_") + suffix).c_str(), &jvp<T>, "psi0"_a.noconvert(),
        "potential"_a.noconvert(), "control"_a.noconvert() = py::none(),
        "control_shape"_a.noconvert() = py::none(), "tpsi0"_a.noconvert() = py::none(),
        "tpotential"_a.noconvert() = py::none(), "tcontrol"_a.noconvert() = py::none(),
        "tcontrol_shape"_a.noconvert() = py::none(), "dt"_a, "dx"_a, "steps"_a,
        "trajectory"_a = false, "threads"_a = 1,
        "Forward sweep with its tangent. Returns (psi, tangent psi), each (batch, n) or "
        "(batch, steps+1, n).");
  m.def((std::string("adjoint2_") + suffix).c_str(), &adjoint2<T>, "states"_a.noconvert(),
        "tstates"_a.noconvert(), "grad_out"_a.noconvert(), "tgrad_out"_a.noconvert(),
        "potential"_a.noconvert(), "control"_a.noconvert() = py::none(),
        "control_shape"_a.noconvert() = py::none(), "tpotential"_a.noconvert() = py::none(),
        "tcontrol"_a.noconvert() = py::none(), "tcontrol_shape"_a.noconvert() = py::none(),
        "dt"_a, "dx"_a, "steps"_a, "need"_a, "threads"_a = 1,
        "Adjoint of the tangent-augmented sweep. Returns the gradients of Re<a, psi> + "
        "Re<b, tangent psi> wrt (psi0, potential, control, control_shape) and wrt their "
        "tangents, None where not requested.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "quflow's C++ core (private; use the quflow package).";
  bind<float>(m, "c64");
  bind<double>(m, "c128");
  m.def("kernel_isa", &quflow::kernel_isa,
        "Instruction set the Crank–Nicolson kernels dispatch to on this CPU.");
  m.def("thread_runtime", &quflow::thread_runtime,
        "Where multi-threaded calls run: 'openmp' (the process's OpenMP team, torch's, up to "
        "omp_get_max_threads() threads; the core's own pool above that and in forked "
        "children) or 'pool' (built without OpenMP).");
  m.def("team_allowed", &quflow::team_allowed,
        "Whether multi-threaded calls may use the OpenMP team: False without OpenMP and in "
        "a forked child (fork() after the core was loaded, or a process forked from its "
        "parent before loading it), where calls run on the core's own pool.");
}
