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
  shifted (for ``du/dx`` inside a loss: the input angles, not the weights).

This is what makes physics-informed losses (``torch.autograd.grad(u, x,
create_graph=True)``) give correct weight gradients on lightning, where
PennyLane's own adjoint and ``max_diff=1`` parameter-shift silently return wrong
numbers or ``None``.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import _checks
from . import _qprogram as _qp

__all__ = ["QuantumLayer", "set_lightning_threads"]

_ENGINE_CACHE_SIZE = 16


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


class QuantumLayer(nn.Module):
    r"""A PennyLane circuit as a torch layer, on lightning.qubit with adjoint gradients.

    The circuit is a plain function written in TorchLayer's convention,
    ``circuit(inputs, **weights)`` (or ``circuit(**weights)`` for a circuit without
    inputs), that queues PennyLane operations and returns ``qml.expval(obs)`` or a
    list of them. Weights become parameters in the order of ``weight_shapes``,
    initialised uniformly in ``[0, 2π)``.

    Derivatives of every order with respect to inputs and weights are exact (see
    the module docstring): first derivatives by lightning's adjoint method (one
    vector–Jacobian sweep per sample), higher ones by the two-term parameter-shift
    rule applied to those adjoint gradients. Losses containing ``du/dx`` or
    ``d²u/dx²`` built with ``torch.autograd.grad(..., create_graph=True)`` train
    correctly. Gates are expanded to RX, RY, RZ, PhaseShift, IsingXX/YY/ZZ,
    MultiRZ and fixed gates; any PennyLane operation that decomposes into those
    (templates, Rot, CRX, PauliRot, ...) is accepted. The circuit is re-recorded on
    every call, so angles may be any torch expression of inputs and weights.

    Args:
        circuit: ``circuit(inputs, **weights)`` or ``circuit(**weights)``, or a
            ``qml.QNode`` wrapping such a function (its function is used).
        weight_shapes: ``{name: shape}`` of the trainable weights, in order.
        wires: number of wires or a sequence of wire labels.
        device: ``"lightning.qubit"`` (default), ``"default.qubit"``, or another
            PennyLane device name or instance (its wires are the layer's wires).
        diff_method: ``"adjoint"`` (default; lightning only), ``"parameter-shift"``
            (any device; ``2G`` circuits per sample), or ``"backprop"``
            (``default.qubit`` only; PennyLane's torch simulation, like TorchLayer).
        input_size: expected number of input features; checked on every call if
            given, otherwise fixed by the first call.
        init: initialiser applied to each weight tensor (default uniform [0, 2π)).

    Shapes:
        inputs ``(B, input_size)`` or ``(input_size,)`` → outputs ``(B, M)`` or
        ``(M,)`` for ``M`` measurements (``(B,)`` / ``()`` for a single
        ``qml.expval``), in the order the circuit returns them. Outputs have the
        promoted dtype of weights and inputs; the simulation runs in complex128.

    Raises:
        ValueError: unknown device/diff_method combination, weight names that do not
            match the circuit's arguments, bad weight shapes (reported when the
            circuit is first recorded), wrong input width, NaN/Inf inputs, or an
            operation that cannot be expanded.
        TypeError: non-tensor or complex inputs.

    A layer may be called from several threads: each engine serialises its runs.

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
        wires: int | Sequence,
        *,
        device: Any = "lightning.qubit",
        diff_method: str = "adjoint",
        input_size: int | None = None,
        init: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        super().__init__()
        import pennylane as qml

        if isinstance(circuit, qml.QNode):
            circuit = circuit.func
        if not callable(circuit):
            raise TypeError(f"circuit must be a callable, got {type(circuit).__name__}")
        if isinstance(wires, bool) or not isinstance(wires, (int, Sequence)):
            raise TypeError(f"wires must be an int or a sequence of labels, got {wires!r}")
        wire_list = list(range(wires)) if isinstance(wires, int) else list(wires)
        if not wire_list or len(set(wire_list)) != len(wire_list):
            raise ValueError(f"wires must be a positive count or distinct labels, got {wires!r}")
        if not isinstance(weight_shapes, Mapping):
            raise TypeError("weight_shapes must be a mapping {name: shape}")
        params = inspect.signature(circuit).parameters
        self._has_inputs = "inputs" in params
        accepted = [p for p in params if p != "inputs"]
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = [k for k in weight_shapes if k not in accepted and not var_kw]
        missing = [
            k for k, p in params.items()
            if k != "inputs" and k not in weight_shapes and p.default is p.empty
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if unknown or missing:
            raise ValueError(
                f"weight_shapes {list(weight_shapes)} do not match the circuit's "
                f"arguments {list(params)}: unknown {unknown}, missing {missing}"
            )
        if input_size is not None:
            input_size = _checks.count("input_size", input_size, minimum=1)

        device_name = device if isinstance(device, str) else getattr(device, "name", str(device))
        methods = {"adjoint", "parameter-shift", "backprop"}
        if diff_method not in methods:
            raise ValueError(f"diff_method must be one of {sorted(methods)}, got {diff_method!r}")
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
        self.input_size = input_size
        self._device = device if not isinstance(device, str) else None
        self._engines: dict = {}
        self._checked = False
        self._qnode = None
        self._last_inputs: torch.Tensor | None = None

        for name, shape in weight_shapes.items():
            shape = (shape,) if isinstance(shape, int) else tuple(shape)
            if any((not isinstance(s, int)) or s < 1 for s in shape):
                raise ValueError(f"weight_shapes[{name!r}] must be positive ints, got {shape}")
            weight = nn.Parameter(torch.empty(shape))
            if init is None:
                nn.init.uniform_(weight, 0.0, 2 * math.pi)
            else:
                init(weight)
            self.register_parameter(name, weight)
        self.weight_shapes = {k: tuple(getattr(self, k).shape) for k in weight_shapes}

    # ------------------------------------------------------------------ helpers

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.weight_shapes}

    def _device_instance(self):
        import pennylane as qml

        if self._device is None:
            self._device = qml.device(self.device_name, wires=len(self.wires))
        return self._device

    def _engine(self, program: _qp.Program):
        key = program.key()
        engine = self._engines.get(key)
        if engine is None:
            if len(self._engines) >= _ENGINE_CACHE_SIZE:
                self._engines.pop(next(iter(self._engines)))
            if self.device_name == "lightning.qubit":
                _default_threads()
                engine = _qp.LightningEngine(program)
            else:
                engine = _qp.DeviceEngine(program, self._device_instance(), self.wires)
            if self.diff_method == "parameter-shift":
                engine = _qp.ShiftEngine(engine)
            self._engines[key] = engine
        return engine

    def _validate_inputs(self, inputs):
        _checks.tensor("inputs", inputs)
        if inputs.is_complex() or not inputs.is_floating_point():
            raise TypeError(f"inputs must be a real floating tensor, got {inputs.dtype}")
        if inputs.ndim not in (1, 2):
            raise ValueError(
                f"inputs must have shape (batch, features) or (features,), got {tuple(inputs.shape)}"
            )
        width = inputs.shape[-1]
        if self.input_size is not None and width != self.input_size:
            raise ValueError(
                f"inputs have {width} features per sample; this layer expects {self.input_size}"
            )
        _checks.finite("inputs", inputs)

    def _check_weights_used(self, args, batch) -> None:
        """First call: every weight entry must reach some gate angle.

        Runs on detached copies at random inputs (so zeros in the user's batch, frozen
        weights or ``torch.no_grad`` cannot hide or fake a dependence).
        """
        if not self.weight_shapes:
            return
        gen = torch.Generator().manual_seed(0)
        with torch.enable_grad():
            copies = {
                k: (torch.rand(w.shape, generator=gen, dtype=torch.float64) * 2 + 0.5).requires_grad_(True)
                for k, w in self._weights().items()
            }
            probe_args = tuple(torch.rand(a.shape, generator=gen, dtype=torch.float64) + 0.5 for a in args)
            _, angles = self._record(probe_args, copies, batch)
            if angles.numel() == 0 or not angles.requires_grad:
                grads = [None] * len(copies)
            else:
                probe = torch.rand(angles.shape, dtype=angles.dtype, generator=gen) + 0.5
                grads = torch.autograd.grad((angles * probe).sum(), list(copies.values()), allow_unused=True)
        for (name, w), g in zip(copies.items(), grads):
            used = 0 if g is None else int(g.ne(0).sum())
            if used != w.numel():
                raise ValueError(
                    f"weight {name!r} of shape {tuple(w.shape)} has {w.numel()} entries but "
                    f"the circuit uses {used} of them: weight_shapes does not match the circuit"
                )

    # ------------------------------------------------------------------ forward

    def forward(self, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the circuit for each sample.

        Args:
            inputs: ``(B, input_size)`` or ``(input_size,)`` real tensor; omit for a
                circuit without inputs.

        Returns:
            ``(B, M)`` / ``(M,)`` expectation values (``(B,)`` / ``()`` for a single
            measurement), in the promoted dtype of weights and inputs.
        """
        functorch = getattr(torch._C._functorch, "peek_interpreter_stack", lambda: None)
        if functorch() is not None:
            raise RuntimeError(
                "QuantumLayer does not support torch.func transforms (grad, vmap, jacrev): its "
                "circuits run in lightning's C++ state vector. Use torch.autograd.grad(..., "
                "create_graph=True), whose derivatives are exact to any order, or quflow.pinn.derivatives"
            )
        weights = self._weights()
        dtype = next(iter(weights.values())).dtype if weights else torch.get_default_dtype()
        if self._has_inputs:
            if inputs is None:
                raise ValueError("this circuit takes inputs; call the layer with an inputs tensor")
            self._validate_inputs(inputs)
            unbatched = inputs.ndim == 1
            batched = inputs[None] if unbatched else inputs
            args, batch = (batched,), batched.shape[0]
            dtype = torch.promote_types(dtype, inputs.dtype)
        else:
            if inputs is not None:
                raise ValueError("this circuit has no 'inputs' argument; call the layer with no arguments")
            unbatched, args, batch = True, (), 1
        if batch == 0:
            raise ValueError("inputs have an empty batch")

        if self.diff_method == "backprop":
            values = self._backprop(args, weights)
        else:
            program, angles = self._record(args, weights, batch)
            if not self._checked:
                self._check_weights_used(args, batch)
                self._checked = True
            values, _ = _Expval.apply(angles, self._engine(program), True)
            if program.single_output:
                values = values[:, 0]
        if self._has_inputs:
            if self.input_size is None:
                self.input_size = batched.shape[-1]
            self._last_inputs = batched.detach()  # the batch quflow.QNG's metric averages over
        return (values[0] if unbatched else values).to(dtype)

    def _record(self, args, weights, batch, columns=None):
        try:
            return _qp.record(self.circuit, args, weights, self.wires, batch, columns)
        except (ValueError, TypeError, IndexError, KeyError) as err:
            shapes = {k: tuple(v.shape) for k, v in weights.items()}
            raise ValueError(
                f"QuantumLayer: recording the circuit with inputs of shape "
                f"{tuple(args[0].shape) if args else None} and weights {shapes} failed: {err}"
            ) from err

    def _backprop(self, args, weights):
        import pennylane as qml

        if self._qnode is None:
            self._qnode = qml.QNode(
                self.circuit, self._device_instance(), interface="torch", diff_method="backprop"
            )
        out = self._qnode(*args, **weights)
        if isinstance(out, (list, tuple)):
            out = torch.stack([torch.as_tensor(o).reshape(-1) for o in out], dim=-1)
        else:
            out = torch.as_tensor(out).reshape(-1)
        return out  # (B, M) or (B,)

    def extra_repr(self) -> str:
        return (
            f"wires={len(self.wires)}, weight_shapes={self.weight_shapes}, "
            f"device={self.device_name!r}, diff_method={self.diff_method!r}"
        )
