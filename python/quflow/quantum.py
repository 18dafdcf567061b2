"""Hybrid quantum–classical layers: :class:`QuantumLayer`.

The layer records the user's PennyLane circuit with torch tensors, so every gate
angle ``a_j`` is a torch expression of the inputs and weights (the classical
pre-processing, embeddings and templates stay in autograd), and evaluates the
expectation values ``f(a)`` on ``lightning.qubit``'s C++ state vector through a
private ``torch.autograd.Function``:

* first derivatives ``gᵀ ∂f/∂a`` come from lightning's adjoint method, one
  sweep per sample with the cotangent-weighted observable ``Σ_m g_m O_m``;
* every higher derivative comes from the exact two-term parameter-shift rule
  ``∂h/∂a_j = [h(a_j + π/2) − h(a_j − π/2)] / 2``, applied to the differentiable
  values and adjoint VJPs themselves, so the backward pass is differentiable to
  any order. Only the angles that the requested derivative actually touches are
  shifted (for ``du/dx`` inside a loss: the input angles, not the weights);
* when that backward builds no further graph (the last order of a loss), it is one
  exact forward-over-adjoint sweep along the cotangent instead
  (``LightningEngine.directional``): four states per sample, not ``2 × columns``.

This is what makes physics-informed losses (``torch.autograd.grad(u, x,
create_graph=True)``) give correct weight gradients on lightning, where
PennyLane's own adjoint and ``max_diff=1`` parameter-shift silently return wrong
numbers or ``None``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import threading
import warnings
import weakref
from contextlib import contextmanager
from collections.abc import Iterable
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import _checks
from . import _qprogram as _qp

__all__ = ["QuantumLayer", "set_lightning_threads"]

_ENGINE_CACHE_SIZE = 16
# at most this many registered calls wait for a QNG step per layer (oldest dropped)
_MAX_STEPPED = 256

_local = threading.local()


@contextmanager
def _no_registration():
    """Forward calls made inside (this thread) keep no inputs for :class:`quflow.QNG`:
    backward passes through them register nothing (``pinn.check_pointwise``'s probes)."""
    previous = getattr(_local, "suppress", False)
    _local.suppress = True
    try:
        yield
    finally:
        _local.suppress = previous


def _weights_version(layer) -> tuple:
    """In-place update counters of the layer's weights: they change whenever an
    optimizer (or the user) updates a weight, so a call recorded before that belongs to
    a loss that was already stepped."""
    return tuple(w._version for w in layer._weights().values())


class _Call:
    """One forward call of a layer whose graph was built: its inputs ``(B, F)`` (or
    ``None``), handed to the layer's list of stepped calls when a backward pass reaches
    it (what :class:`quflow.QNG` takes the metric from)."""

    __slots__ = ("inputs", "layer", "seen", "version")

    def __init__(self, inputs, layer) -> None:
        self.inputs = inputs
        self.layer = weakref.ref(layer)
        self.seen = False
        self.version = _weights_version(layer)  # the weights this call was evaluated at


class _Mark(torch.autograd.Function):
    """Identity on the layer's outputs; its backward registers the call (once).

    It returns a copy, not a view, so the layer's output is an ordinary tensor that
    in-place operations (``nn.ReLU(inplace=True)``, ``out += b``) may modify.
    """

    @staticmethod
    def forward(values, call):
        return values.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.call = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        call = ctx.call
        if not call.seen:
            call.seen = True
            layer = call.layer()
            if layer is not None:
                layer._register(call)
        return grad, None


class _Expval(torch.autograd.Function):
    """``f(A)``: expectation values ``(B, M)`` of a program at angles ``(B, G)``."""

    @staticmethod
    def forward(angles, engine, keep_states):
        values, states = engine.run(angles.detach().numpy(), keep_states=keep_states)
        return torch.from_numpy(values), (
            torch.from_numpy(states) if states is not None else torch.empty(0)
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        angles, engine, _ = inputs
        ctx.engine = engine
        ctx.states = output[1] if output[1].numel() else None
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(angles)

    @staticmethod
    def backward(ctx, grad_values, _grad_states):
        (angles,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return _AngleVJP.apply(angles, grad_values, ctx.engine, ctx.states), None, None


class _AngleVJP(torch.autograd.Function):
    """``V(A, g) = Σ_m g_bm ∂f_bm/∂A_bj`` (adjoint), differentiable by shifts."""

    @staticmethod
    def forward(angles, cotangent, engine, states):
        out = engine.vjp(
            angles.detach().numpy(),
            cotangent.detach().to(torch.float64).numpy(),
            None if states is None else states.numpy(),
        )
        return torch.from_numpy(out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        angles, cotangent, engine, _ = inputs
        ctx.engine = engine
        ctx.save_for_backward(angles, cotangent)

    @staticmethod
    def backward(ctx, h):
        # h: (B, G) cotangent of V. With the Hessian's symmetry,
        #   ∂/∂A_i Σ_j h_j V_j = Σ_j h_j ∂V_i/∂A_j,   ∂/∂g_m Σ_j h_j V_j = Σ_j h_j ∂f_m/∂A_j,
        # and both ∂/∂A_j are exact two-term shifts along the columns j where h ≠ 0.
        angles, cotangent = ctx.saved_tensors
        need_a, need_g = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_a or need_g):
            return None, None, None, None
        if not torch.is_grad_enabled() and hasattr(ctx.engine, "directional"):
            # no graph of this backward is wanted (the last order of a loss): one exact
            # forward-over-adjoint sweep along h instead of 2·C shifted runs
            grad_a, grad_g = ctx.engine.directional(
                angles.detach().numpy(), cotangent.detach().to(torch.float64).numpy(),
                h.detach().to(torch.float64).numpy(), need_a, need_g,
            )
            return (
                None if grad_a is None else torch.from_numpy(grad_a),
                None if grad_g is None else torch.from_numpy(grad_g).to(cotangent.dtype),
                None, None,
            )
        cols = torch.nonzero(h.detach().ne(0).any(dim=0)).flatten()
        grad_a = torch.zeros_like(angles) if need_a else None
        grad_g = torch.zeros_like(cotangent, dtype=torch.float64) if need_g else None
        if cols.numel() == 0:
            return grad_a, grad_g, None, None
        batch, n_angles = angles.shape
        n_cols = cols.numel()
        shifted = _qp.shift_rows(angles, cols)
        hc = h[:, cols].to(torch.float64)  # (B, C)
        # one run of the shifted circuits serves both: values for grad_g, final
        # states (the adjoint's starting point) for grad_a
        f, states = _Expval.apply(shifted, ctx.engine, need_a)
        if need_g:
            f = f.reshape(2, n_cols, batch, -1)
            grad_g = torch.einsum("bc,cbm->bm", hc, 0.5 * (f[0] - f[1]))
        if need_a:
            g = cotangent.to(torch.float64).repeat(2 * n_cols, 1)
            v = _AngleVJP.apply(shifted, g, ctx.engine, states if states.numel() else None)
            v = v.reshape(2, n_cols, batch, n_angles)
            grad_a = torch.einsum("bc,cbj->bj", hc, 0.5 * (v[0] - v[1]))
        return grad_a, grad_g, None, None


def _lightning_omp():
    """ctypes handle of the OpenMP runtime bundled with pennylane-lightning, if any."""
    import ctypes
    import glob

    from pennylane_lightning import lightning_qubit_ops

    root = os.path.dirname(os.path.dirname(lightning_qubit_ops.__file__))
    for path in sorted(glob.glob(os.path.join(root, "pennylane_lightning.libs", "libgomp*"))):
        try:
            return ctypes.CDLL(path)
        except OSError:  # pragma: no cover - unusual install
            continue
    return None


def set_lightning_threads(threads: int) -> None:
    """Set the OpenMP threads of lightning.qubit's kernels (the calling thread).

    :class:`QuantumLayer` runs the samples of a batch one after the other and calls
    this with ``threads=1`` on first use unless ``OMP_NUM_THREADS`` is set (OpenMP
    keeps this per calling thread, and it also applies to the user's own lightning
    QNodes on that thread): at the
    small qubit counts of hybrid models the kernels' OpenMP regions cost more than
    they save, and on a 2-core machine they compete with torch's own threads
    (5–50× slower small circuits were measured with the default). Call it with a
    larger number for circuits of ~16+ qubits.

    Args:
        threads: number of OpenMP threads (≥ 1).

    Raises:
        TypeError: if ``threads`` is not an int.
        ValueError: if ``threads < 1``.
    """
    if not isinstance(threads, int) or isinstance(threads, bool):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    lib = _lightning_omp()
    if lib is not None:
        lib.omp_set_num_threads(threads)


_threads_configured = False


def _default_threads() -> None:
    global _threads_configured
    if not _threads_configured:
        _threads_configured = True
        if "OMP_NUM_THREADS" not in os.environ:
            set_lightning_threads(1)


def _shape(name: str, size: Any) -> tuple[int, ...]:
    """TorchLayer's convention: an int ``1`` is a scalar, an int ``n`` is ``(n,)``, a
    sequence is the shape; numpy integers count as ints."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        if int(size) < 1:
            raise ValueError(f"weight_shapes[{name!r}] must be a positive int or a sequence of them, got {size!r}")
        return () if int(size) == 1 else (int(size),)
    if isinstance(size, Iterable) and not isinstance(size, (str, bytes)):
        shape = tuple(size)
        if all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) >= 1 for d in shape):
            return tuple(int(d) for d in shape)
    raise ValueError(f"weight_shapes[{name!r}] must be a positive int or a sequence of them, got {size!r}")


def _initial_weight(name: str, shape: tuple, init: Any) -> torch.Tensor:
    """A weight from ``init`` (None: uniform [0, 2π); a callable ``f(tensor)`` whose result
    is used when it returns a tensor, else the tensor it filled in place; or a dict of
    callables / tensors per weight, TorchLayer's ``init_method``)."""
    if isinstance(init, Mapping):
        if name not in init:
            raise KeyError(f"init_method has no entry for weight {name!r}")
        init = init[name]
        if isinstance(init, torch.Tensor):
            if tuple(init.shape) != shape:
                raise ValueError(
                    f"init_method[{name!r}] has shape {tuple(init.shape)}; weight_shapes gives {shape}"
                )
            return init.detach().clone()
    empty = torch.empty(shape)
    if init is None:
        return nn.init.uniform_(empty, 0.0, 2 * math.pi)
    if not callable(init):
        raise TypeError(f"init for weight {name!r} must be a callable or a tensor, got {type(init).__name__}")
    out = init(empty)
    if out is None:
        return empty
    out = torch.as_tensor(out).detach()
    if out.numel() != empty.numel():
        raise ValueError(
            f"init returned a tensor of shape {tuple(out.shape)} for weight {name!r} of shape {shape}"
        )
    return out.reshape(shape).to(empty.dtype).clone()


def _qnode_shots(qnode) -> int | None:
    shots = getattr(qnode, "shots", None)
    if shots is None or not shots:
        return None
    if shots.has_partitioned_shots:
        raise ValueError(
            f"QuantumLayer: the QNode has a shot vector {shots}; give one shot count "
            "(outputs with a shot-vector axis are not supported)"
        )
    return int(shots.total_shots)


class QuantumLayer(nn.Module):
    r"""A PennyLane circuit as a torch layer, on lightning.qubit with adjoint gradients.

    The circuit is written in TorchLayer's convention, ``circuit(inputs, **weights)``
    (the inputs argument is found by name, ``input_arg``, anywhere in the signature; a
    circuit without it is called with the weights only), and returns ``qml.expval``,
    ``qml.var``, ``qml.probs`` or a list of them. It may be a plain function or a
    ``qml.QNode``, whose device, shots and differentiation method are then used.
    Weights become parameters in the order of ``weight_shapes``.

    Derivatives of every order with respect to inputs and weights are exact (see
    the module docstring): first derivatives by lightning's adjoint method (one
    vector–Jacobian sweep per sample), higher ones by the two-term parameter-shift
    rule applied to those adjoint gradients. Variances and probabilities are exact
    functions of expectation values (``Var O = ⟨O²⟩ − ⟨O⟩²``; ``p_k`` a signed sum of
    ``Z``-string expectations), so they are exact to every order too. Losses
    containing ``du/dx`` or ``d²u/dx²`` built with ``torch.autograd.grad(...,
    create_graph=True)`` train correctly. Gates are expanded to RX, RY, RZ,
    PhaseShift, IsingXX/YY/ZZ, MultiRZ and fixed gates; operations given only by a
    matrix (``QubitUnitary``, custom operations) are applied as that matrix when
    nothing in it is differentiated. The circuit is re-recorded on every call, so
    angles may be any torch expression of inputs and weights.

    Batches: the circuit's meaning for one sample is ``circuit(x)`` with ``x`` of shape
    ``(F,)``. On the first call the layer checks, at two different samples of that call's
    batch (random ones only if it has no two different rows), whether the circuit also
    handles a batch ``(B, F)`` (``AngleEmbedding``, ``inputs[..., i]``) and gives the same
    angles; if not (``inputs[0]`` indexes the batch), it records the circuit once per
    sample, which is slower but right.

    Args:
        circuit: ``circuit(inputs, **weights)`` or ``circuit(**weights)``, or a
            ``qml.QNode`` wrapping such a function.
        weight_shapes: ``{name: shape}`` of the trainable weights, in order; an int ``n``
            means ``(n,)`` and ``1`` a scalar (TorchLayer's convention).
        wires: number of wires or a sequence of wire labels; default: the QNode's
            device wires, or the wires the circuit touches.
        device: ``"lightning.qubit"`` (default for a plain function), ``"default.qubit"``,
            or another PennyLane device name or instance. Default for a QNode: its device.
        diff_method: ``"adjoint"`` (lightning only), ``"parameter-shift"`` (any device,
            shots included; ``2G`` circuits per sample) or ``"backprop"``
            (``default.qubit`` only; PennyLane's torch simulation, like TorchLayer).
            Default: ``"adjoint"`` on lightning, the QNode's own method on
            ``default.qubit`` (``"best"`` → ``"backprop"``), ``"parameter-shift"`` with shots.
        input_size: expected number of input features; checked on every call if
            given, otherwise fixed by the first call.
        init: initialiser of the weights: a callable ``f(tensor)`` (its return value is
            used; if it returns ``None``, the tensor it filled), or a dict ``{name:
            callable or tensor}``. Default: uniform on ``[0, 2π)``.
        init_method: TorchLayer's name for ``init`` (give one of them).
        input_arg: name of the circuit's inputs argument (TorchLayer's ``input_arg``).

    Shapes:
        inputs ``(..., input_size)`` → outputs ``(..., M)``, with ``M`` the returned
        measurements concatenated in order (a probability vector counts ``2^m``); a
        single ``qml.expval``/``qml.var`` gives ``(...)``. Outputs have the promoted
        dtype of weights and inputs; the simulation runs in complex128.

    Raises:
        ValueError: unknown device/diff_method combination (``"adjoint"`` or
            ``"backprop"`` with shots), weight names that do not match the circuit's
            arguments, bad weight shapes (reported when the circuit is first recorded),
            wrong input width, NaN/Inf inputs or weights, or an operation or
            measurement that cannot be handled.
        TypeError: non-tensor or complex inputs.

    Copies (``copy.deepcopy``), ``pickle`` and ``torch.save(model)`` work at any time:
    the simulator state is a cache rebuilt on demand (a device instance is rebuilt
    from its name and wires). A layer may be called from several threads: each engine
    serialises its runs, and a lock guards the layer's engine cache and the calls it
    keeps for :class:`quflow.QNG`.

    Example:
        >>> import pennylane as qml, torch, quflow
        >>> def circuit(inputs, weights):
        ...     qml.AngleEmbedding(inputs, wires=range(2))
        ...     qml.StronglyEntanglingLayers(weights, wires=range(2))
        ...     return [qml.expval(qml.PauliZ(i)) for i in range(2)]
        >>> layer = quflow.QuantumLayer(circuit, {"weights": (1, 2, 3)}, wires=2)
        >>> layer(torch.zeros(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        circuit: Callable,
        weight_shapes: Mapping[str, int | Sequence[int]],
        wires: int | Sequence | None = None,
        *,
        device: Any = None,
        diff_method: str | None = None,
        input_size: int | None = None,
        init: Callable[[torch.Tensor], Any] | Mapping | None = None,
        init_method: Callable[[torch.Tensor], Any] | Mapping | None = None,
        input_arg: str = "inputs",
    ) -> None:
        super().__init__()
        import pennylane as qml

        shots = None
        qnode = circuit if isinstance(circuit, qml.QNode) else None
        if qnode is not None:
            circuit = qnode.func
            shots = _qnode_shots(qnode)
            if device is None:
                device = qnode.device
            if wires is None and getattr(qnode.device, "wires", None) is not None:
                wires = list(qnode.device.wires)
        if device is None:
            device = "lightning.qubit"
        if not callable(circuit):
            raise TypeError(f"circuit must be a callable, got {type(circuit).__name__}")
        if wires is None:
            wire_list = None
        elif isinstance(wires, numbers.Integral) and not isinstance(wires, bool):
            wire_list = list(range(int(wires)))
        elif isinstance(wires, Sequence) and not isinstance(wires, str):
            wire_list = list(wires)
        else:
            raise TypeError(f"wires must be an int or a sequence of labels, got {wires!r}")
        if wire_list is not None and (not wire_list or len(set(wire_list)) != len(wire_list)):
            raise ValueError(f"wires must be a positive count or distinct labels, got {wires!r}")
        if not isinstance(weight_shapes, Mapping):
            raise TypeError("weight_shapes must be a mapping {name: shape}")
        if not isinstance(input_arg, str):
            raise TypeError(f"input_arg must be a str, got {type(input_arg).__name__}")
        if input_arg in weight_shapes:
            raise ValueError(f"{input_arg!r} is the inputs argument; it must not be in weight_shapes")
        params = inspect.signature(circuit).parameters
        if any(p.kind is p.VAR_POSITIONAL for p in params.values()):
            raise TypeError("the circuit cannot take *args: every argument is passed by name")
        self._has_inputs = input_arg in params
        accepted = [p for p in params if p != input_arg]
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = [k for k in weight_shapes if k not in accepted and not var_kw]
        missing = [
            k for k, p in params.items()
            if k != input_arg and k not in weight_shapes and p.default is p.empty
            and p.kind is not p.VAR_KEYWORD
        ]
        if unknown or missing:
            raise ValueError(
                f"weight_shapes {list(weight_shapes)} do not match the circuit's "
                f"arguments {list(params)}: unknown {unknown}, missing {missing}"
            )
        if input_size is not None:
            input_size = _checks.count("input_size", input_size, minimum=1)
        if init is not None and init_method is not None:
            raise ValueError("give init or init_method (TorchLayer's name for it), not both")
        init = init if init is not None else init_method

        device_name = device if isinstance(device, str) else getattr(device, "name", str(device))
        if diff_method is None:
            if shots:
                diff_method = "parameter-shift"
            elif device_name == "lightning.qubit":
                diff_method = "adjoint"
            elif device_name == "default.qubit":
                own = getattr(qnode, "diff_method", "best") if qnode is not None else "backprop"
                diff_method = "parameter-shift" if own == "parameter-shift" else "backprop"
            else:
                diff_method = "parameter-shift"
        methods = {"adjoint", "parameter-shift", "backprop"}
        if diff_method not in methods:
            raise ValueError(f"diff_method must be one of {sorted(methods)}, got {diff_method!r}")
        if shots and diff_method != "parameter-shift":
            raise ValueError(
                f"the circuit runs with shots={shots}: its values are sampled estimates, and "
                f"diff_method={diff_method!r} needs exact ones; use 'parameter-shift' (unbiased "
                "with shots) or remove the shots"
            )
        if diff_method == "adjoint" and device_name != "lightning.qubit":
            raise ValueError(
                "diff_method='adjoint' runs on lightning.qubit; for device "
                f"{device_name!r} use 'parameter-shift' (or 'backprop' on default.qubit)"
            )
        if diff_method == "backprop" and device_name != "default.qubit":
            raise ValueError(f"diff_method='backprop' needs default.qubit, got {device_name!r}")

        self.circuit = circuit
        self.wires = wire_list
        self.device_name = device_name
        self.diff_method = diff_method
        self.shots = shots
        self.input_size = input_size
        self.input_arg = input_arg
        self._device = device if not isinstance(device, str) else None
        self._reset_caches()

        shapes = {name: _shape(name, size) for name, size in weight_shapes.items()}
        for name, shape in shapes.items():
            weight = _initial_weight(name, shape, init)
            _checks.finite(f"the initial value of weight {name!r}", weight)
            self.register_parameter(name, nn.Parameter(weight))
        self.weight_shapes = shapes

    # ------------------------------------------------------------------ state

    def _reset_caches(self) -> None:
        self._engines: dict = {}
        self._checked = False
        self._per_sample: bool | None = None
        self._single_output = False
        self._qnode = None
        self._stepped: list = []  # the _Calls a backward pass went through (QNG)
        self._stepped_dropped = 0  # calls dropped by the _MAX_STEPPED cap since the last take
        self._trackers: weakref.WeakSet = weakref.WeakSet()  # the QNG optimizers that read them
        self._lock = threading.Lock()  # guards _stepped and _engines

    def __getstate__(self) -> dict:
        """Parameters and settings; simulator engines, QNodes and device instances are
        caches, rebuilt on demand (lightning's state vectors cannot be pickled)."""
        state = self.__dict__.copy()
        for key in ("_engines", "_qnode", "_stepped", "_stepped_dropped", "_trackers", "_device", "_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._device = None
        kept = {k: state[k] for k in ("_checked", "_per_sample", "_single_output") if k in state}
        self._reset_caches()
        self.__dict__.update(kept)

    # ------------------------------------------------------------------ helpers

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.weight_shapes}

    def _device_instance(self):
        import pennylane as qml

        if self._device is None:
            if self.wires is None:
                raise ValueError("QuantumLayer: call the layer once (or give wires=) before using its device")
            self._device = qml.device(self.device_name, wires=self.wires)
        return self._device

    def _engine(self, program: _qp.Program):
        key = program.key()
        with self._lock:
            engine = self._engines.get(key)
        if engine is not None:
            return engine
        if self.device_name == "lightning.qubit" and not self.shots:
            _default_threads()
            engine = _qp.LightningEngine(program)
        else:
            engine = _qp.DeviceEngine(program, self._device_instance(), self.wires, self.shots)
        if self.diff_method == "parameter-shift":
            engine = _qp.ShiftEngine(engine)
        with self._lock:  # another thread may have built the same engine meanwhile: keep one
            if key not in self._engines:
                while len(self._engines) >= _ENGINE_CACHE_SIZE:
                    self._engines.pop(next(iter(self._engines)))
                self._engines[key] = engine
            return self._engines[key]

    def _validate_inputs(self, inputs):
        _checks.tensor("inputs", inputs)
        if inputs.is_complex() or not inputs.is_floating_point():
            raise TypeError(f"inputs must be a real floating tensor, got {inputs.dtype}")
        if inputs.ndim == 0:
            raise ValueError("inputs must have shape (..., features), got a scalar")
        width = inputs.shape[-1]
        if self.input_size is not None and width != self.input_size:
            raise ValueError(
                f"inputs have {width} features per sample; this layer expects {self.input_size}"
            )
        _checks.finite("inputs", inputs)

    def _call_kwargs(self, x, weights) -> dict:
        return weights if x is None else {self.input_arg: x, **weights}

    def _record_raw(self, x, weights, batch, columns=None, what=None):
        """One recording: ``x`` is ``(B, F)`` (batched), ``(F,)`` (one sample) or None;
        ``what`` names ``x`` in errors (default: inputs of its shape)."""
        try:
            return _qp.record(self.circuit, (), self._call_kwargs(x, weights), self.wires, batch, columns)
        except (ValueError, TypeError, IndexError, KeyError, RuntimeError) as err:
            shapes = {k: tuple(v.shape) for k, v in weights.items()}
            what = what or f"inputs of shape {None if x is None else tuple(x.shape)}"
            raise ValueError(f"QuantumLayer: recording the circuit with {what} and weights {shapes} failed: {err}") from err

    def _record(self, x, weights, batch, columns=None):
        """Program and angles ``(B, G)`` for inputs ``x`` ``(B, F)`` (or None)."""
        if x is None or not self._per_sample:
            program, angles = self._record_raw(x, weights, batch, columns)
        else:
            programs, rows, cols = [], [], []
            for b in range(batch):
                c: list | None = [] if columns is not None else None
                p, a = self._record_raw(x[b], weights, 1, c)
                programs.append(p)
                rows.append(a)
                cols.append(c)
            program = programs[0]
            if any(p.key() != program.key() for p in programs[1:]):
                raise ValueError(
                    "QuantumLayer: the circuit's gates or measurements depend on the input "
                    "values (they differ between samples); keep the structure fixed and put "
                    "the inputs into gate angles (an operation given only by a matrix that "
                    "depends on the inputs has no angle: decompose it into rotations; "
                    "BasisEmbedding(inputs) is AngleEmbedding(math.pi * inputs, rotation='X') "
                    "up to a global phase)"
                )
            angles = torch.cat(rows, dim=0)
            if columns is not None:
                for j in range(len(cols[0])):
                    column = torch.stack([c[j][0].reshape(()) for c in cols])
                    columns.append((column, batch > 1) if batch > 1 else (column.reshape(()), False))
        if self.wires is None:
            self.wires = list(program.labels)
        return program, angles

    @staticmethod
    def _probe_rows(x) -> tuple[int, int] | None:
        """Two rows of the batch ``x`` ``(B, F)`` that differ in as many features as
        possible (row 0 and the most different one), or None if all rows are equal."""
        if x is None or x.shape[0] < 2:
            return None
        rows = x.detach()
        differ = rows.ne(rows[:1]) & ~(rows.isnan() & rows[:1].isnan())  # (B, F)
        counts = differ.sum(dim=1)
        j = int(counts.argmax())
        return (0, j) if int(counts[j]) > 0 else None

    def _detect_batching(self, x) -> None:
        """Does ``circuit(X)`` on a batch ``(2, F)`` give the angles of ``circuit(X[0])`` and
        ``circuit(X[1])``? If not, record per sample (``inputs[0]`` indexes the batch).

        ``X`` is two rows of the user's batch ``x`` ``(B, F)`` (so circuits with an input
        domain, ``arccos(inputs)`` or ``BasisEmbedding``, see valid data), two random rows
        only when ``x`` has no two different rows.
        """
        gen = torch.Generator().manual_seed(1)
        pair = self._probe_rows(x)
        if pair is not None:
            probe = x.detach()[list(pair)].to(torch.float64)
            names = [f"sample {pair[0]} of the inputs", f"sample {pair[1]} of the inputs"]
            both = f"samples {pair[0]} and {pair[1]} of the inputs"
        else:
            probe = torch.rand(2, x.shape[-1], generator=gen, dtype=torch.float64) * 2 + 0.3
            names = [f"random inputs of shape ({x.shape[-1]},)"] * 2
            both = f"random inputs of shape (2, {x.shape[-1]})"
        weights = {k: torch.rand(w.shape, generator=gen, dtype=torch.float64) + 0.5 for k, w in self._weights().items()}
        wires = self.wires
        try:
            batched = self._record_raw(probe, weights, 2, what=both)
        except ValueError:
            batched = None
        finally:
            self.wires = wires
        try:
            single = [self._record_raw(probe[b], weights, 1, what=names[b]) for b in range(2)]
        except ValueError:
            if batched is None:
                if pair is None:  # random inputs outside the circuit's input domain:
                    self._per_sample = True  # per sample is right for every circuit
                    return
                raise
            self._per_sample = False
            return
        finally:
            self.wires = wires
        same = (
            batched is not None
            and batched[0].key() == single[0][0].key() == single[1][0].key()
            and torch.allclose(
                batched[1], torch.cat([single[0][1], single[1][1]]), rtol=0, atol=1e-12, equal_nan=True
            )
        )
        self._per_sample = not same

    def _check_weights_used(self, x, batch) -> None:
        """First call: every weight entry must reach some gate angle.

        Runs on detached random copies of the weights (so frozen weights or
        ``torch.no_grad`` cannot hide or fake a dependence) at the user's inputs ``x``
        ``(B, F)`` (or None); an entry that seems unused there is checked again at random
        inputs, so zeros in the user's batch cannot hide a dependence either.
        """
        gen = torch.Generator().manual_seed(0)
        copies = {
            k: (torch.rand(w.shape, generator=gen, dtype=torch.float64) * 2 + 0.5)
            for k, w in self._weights().items()
        }

        def used_entries(probe):  # per weight: which entries reach an angle, (shape) bool
            with torch.enable_grad():
                leaves = {k: w.clone().requires_grad_(True) for k, w in copies.items()}
                program, angles = self._record(probe, leaves, batch)
                self._single_output = program.single_output
                if not leaves:
                    return []
                if angles.numel() == 0 or not angles.requires_grad:
                    grads = [None] * len(leaves)
                else:
                    weight = torch.rand(angles.shape, dtype=angles.dtype, generator=gen) + 0.5
                    grads = torch.autograd.grad((angles * weight).sum(), list(leaves.values()), allow_unused=True)
            return [torch.zeros(w.shape, dtype=torch.bool) if g is None else g.ne(0) for w, g in zip(leaves.values(), grads)]

        used = used_entries(None if x is None else x.detach().to(torch.float64))
        if x is not None and not all(bool(u.all()) for u in used):
            random = torch.rand(batch, x.shape[-1], generator=gen, dtype=torch.float64) + 0.5
            try:
                used = [u | r for u, r in zip(used, used_entries(random))]
            except ValueError:  # the circuit rejects random inputs (an input domain)
                pass
        for (name, w), u in zip(copies.items(), used):
            count = int(u.sum())
            if count != w.numel():
                raise ValueError(
                    f"weight {name!r} of shape {tuple(w.shape)} has {w.numel()} entries but "
                    f"the circuit uses {count} of them: weight_shapes does not match the circuit"
                )

    def _register(self, call: _Call) -> None:
        """A backward pass went through ``call``: keep it for the next QNG step.

        Calls evaluated at other weight values than ``call`` (before an optimizer updated
        the weights: Adam warm-up while a QNG exists) belong to losses already stepped and
        are dropped; at most ``_MAX_STEPPED`` calls are kept.
        """
        with self._lock:
            stepped = [c for c in self._stepped if c.version == call.version]
            stepped.append(call)
            if len(stepped) > _MAX_STEPPED:
                self._stepped_dropped += len(stepped) - _MAX_STEPPED
                stepped = stepped[-_MAX_STEPPED:]
            self._stepped = stepped

    def _clear_stepped(self) -> None:
        with self._lock:
            self._stepped, self._stepped_dropped = [], 0

    def _take_stepped(self) -> tuple[list, int]:
        """Inputs of the calls that backward passes went through since the last take (or
        clear), and how many calls the cap dropped."""
        with self._lock:
            calls, dropped = self._stepped, self._stepped_dropped
            self._stepped, self._stepped_dropped = [], 0
        return [c.inputs for c in calls], dropped

    # ------------------------------------------------------------------ forward

    def forward(self, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the circuit for each sample.

        Args:
            inputs: ``(..., input_size)`` real tensor (any leading batch dimensions, or
                ``(input_size,)`` for one sample); omit for a circuit without inputs.

        Returns:
            ``(..., M)`` outputs (``(...)`` for a single expval/var), in the promoted
            dtype of weights and inputs.
        """
        functorch = getattr(torch._C._functorch, "peek_interpreter_stack", lambda: None)
        if functorch() is not None:
            raise RuntimeError(
                "QuantumLayer does not support torch.func transforms (grad, vmap, jacrev): its "
                "circuits run in lightning's C++ state vector. Use torch.autograd.grad(..., "
                "create_graph=True), whose derivatives are exact to any order, or quflow.pinn.derivatives"
            )
        weights = self._weights()
        for name, w in weights.items():
            _checks.finite(f"weight {name!r}", w)
        dtype = next(iter(weights.values())).dtype if weights else torch.get_default_dtype()
        if self._has_inputs:
            if inputs is None:
                raise ValueError(f"this circuit takes {self.input_arg!r}; call the layer with an inputs tensor")
            self._validate_inputs(inputs)
            lead = inputs.shape[:-1]
            x = inputs.reshape(-1, inputs.shape[-1])
            batch = x.shape[0]
            dtype = torch.promote_types(dtype, inputs.dtype)
        else:
            if inputs is not None:
                raise ValueError(f"this circuit has no {self.input_arg!r} argument; call the layer with no arguments")
            lead, x, batch = (), None, 1
        if batch == 0:
            raise ValueError("inputs have an empty batch")

        if not self._checked:
            if x is not None:
                self._detect_batching(x)
            self._check_weights_used(x, batch)
            self._checked = True
        if self.diff_method == "backprop":
            values, single = self._backprop(x, weights, batch)
        else:
            program, angles = self._record(x, weights, batch)
            raw, _ = _Expval.apply(angles, self._engine(program), True)
            values, single = program.read(raw), program.single_output
        if (
            len(self._trackers) and torch.is_grad_enabled() and values.requires_grad
            and not getattr(_local, "suppress", False)
        ):
            # a quflow.QNG steps this layer: keep this call's inputs in the graph
            values = _Mark.apply(values, _Call(None if x is None else x.detach().clone(), self))
        if self._has_inputs and self.input_size is None:
            self.input_size = x.shape[-1]
        values = values[:, 0] if single else values
        return values.reshape(tuple(lead) + tuple(values.shape[1:])).to(dtype)

    def _backprop(self, x, weights, batch):
        import pennylane as qml

        if self._qnode is None:
            self._qnode = qml.QNode(
                self.circuit, self._device_instance(), interface="torch", diff_method="backprop"
            )

        def combine(out, rows):  # TorchLayer's order: each measurement (rows, -1), concatenated
            out = out if isinstance(out, (list, tuple)) else [out]
            return torch.cat([torch.as_tensor(o).reshape(rows, -1) for o in out], dim=-1)

        if x is not None and self._per_sample:
            values = torch.cat([combine(self._qnode(**self._call_kwargs(x[b], weights)), 1) for b in range(batch)])
        else:
            values = combine(self._qnode(**self._call_kwargs(x, weights)), batch)
        return values, self._single_output

    @property
    def qnode(self):
        """The layer's circuit as a ``qml.QNode`` on its device, with the current weights
        bound: ``qml.draw(layer.qnode)(x)``, ``qml.specs(layer.qnode)(x)``."""
        import pennylane as qml

        layer = self

        def bound(*args, **kwargs):
            weights = {k: w.detach() for k, w in layer._weights().items()}
            return layer.circuit(*args, **kwargs, **weights)

        bound.__signature__ = inspect.Signature(
            [inspect.Parameter(self.input_arg, inspect.Parameter.POSITIONAL_OR_KEYWORD)] if self._has_inputs else []
        )
        bound.__name__ = getattr(self.circuit, "__name__", "circuit")
        kwargs = {"shots": self.shots} if self.shots else {}
        return qml.QNode(bound, self._device_instance(), interface="torch", **kwargs)

    def extra_repr(self) -> str:
        return (
            f"wires={None if self.wires is None else len(self.wires)}, weight_shapes={self.weight_shapes}, "
            f"device={self.device_name!r}, diff_method={self.diff_method!r}"
            + (f", shots={self.shots}" if self.shots else "")
        )
