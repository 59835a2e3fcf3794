"""The public API: ``forward``/``bptt`` on a parameter dict, and the ``RNN`` class that holds one.

Each call validates everything first (arrays.py, params.py), then asks backend.py for the backend,
then runs ``reference`` or ``engine`` (which calls the kernels). Inputs are never modified.
"""
import numpy as np

from . import engine, reference
from .arrays import check_choice, check_float_array, check_int_array, to_device, to_host, xp_of
from .backend import resolve
from .losses import LOSS_STEPS, LOSSES, OUTPUT_ACTIVATIONS
from .params import CELLS, check_params, init_params


def forward(params, x, s0=None, cell="tanh", output_activation="identity", backend="auto"):
    """Run the RNN over a batch of sequences.

    params  dict   Wx [H,D], Ws [H,H], bx [H], bs [H], Wy [O,H], by [O] (bx, bs optional together)
    x       [T,B,D] inputs, float32 or float64 (NumPy, or CuPy for the GPU)
    s0      [B,H]   initial state (zeros if None)
    Returns (Y [T,B,O], S [T,B,H]) of x's dtype, on the device x came from.
    """
    call = _Call(params, x, s0, None, cell, output_activation, None, None, backend)
    if call.backend.name == "reference":
        Y, S, _ = reference.forward(call.params, call.x, call.s0, cell, output_activation)
    else:
        Y, S, _ = engine.forward(call.params, call.x, call.s0, cell, output_activation, call.backend)
    return call.result((Y, S))


def bptt(params, x, d, s0=None, cell="tanh", output_activation="identity", loss="squared",
         loss_steps="all", backend="auto"):
    """Loss and its exact gradients by backpropagation through time.

    d  [T,B,O] desired outputs for loss="squared"; integer classes [T,B] for loss="cross_entropy"
       (which needs output_activation="softmax").
    loss_steps  "all" sums the loss over every step, "last" takes E_T only (many-to-one).
    Returns (L, grads): L a 0-d value of x's dtype; grads[k] = dL/dk for every parameter key k,
    plus grads["x"] = dL/dx [T,B,D] and grads["s0"] = dL/dS0 [B,H].
    """
    call = _Call(params, x, s0, d, cell, output_activation, loss, loss_steps, backend, bptt=True)
    if call.backend.name == "reference":
        L, grads = reference.bptt(call.params, call.x, call.d, call.s0, cell, output_activation, loss, loss_steps)
    else:
        L, grads = engine.bptt(call.params, call.x, call.d, call.s0, cell, output_activation, loss, loss_steps,
                               call.backend)
    return call.result((L, grads))


class _Call:
    """One validated call: its arrays (contiguous, on the compute device) and its backend."""

    def __init__(self, params, x, s0, d, cell, output_activation, loss, loss_steps, backend, bptt=False):
        # bptt: a loss call (loss, loss_steps and d are validated; loss=None is not a way out of that)
        check_choice("cell", cell, CELLS)
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        if bptt:
            check_choice("loss", loss, LOSSES)
            check_choice("loss_steps", loss_steps, LOSS_STEPS)
            if loss == "cross_entropy" and output_activation != "softmax":
                raise ValueError(
                    f"loss='cross_entropy' needs output_activation='softmax', got output_activation={output_activation!r}"
                )
        D, H, O, _, dtype = check_params(params)
        named = {"x": x, "s0": s0, "d": d, **{f"params[{k!r}]": v for k, v in params.items()}}
        xp = xp_of(named)
        check_float_array("x", x, ("T", "B", "D"), (None, None, D), dtype)
        T, B, _ = x.shape
        if T == 0 or B == 0:
            raise ValueError(f"x: expected at least one time step and one sequence, got shape {tuple(x.shape)} (T={T}, B={B})")
        if s0 is not None:
            check_float_array("s0", s0, ("B", "H"), (B, H), dtype)
        if bptt and loss == "cross_entropy":
            check_int_array("d", d, ("T", "B"), (T, B), 0, O)
        elif bptt:
            check_float_array("d", d, ("T", "B", "O"), (T, B, O), dtype)
        self.dtype = dtype
        self.backend = resolve(backend, on_device=xp is not np)
        move = to_device if self.backend.host_io else (lambda a: a)
        contiguous = self.backend.xp.ascontiguousarray  # copies only arrays that are not already
        self.params = {k: contiguous(move(v)) for k, v in params.items()}
        self.x = contiguous(move(x))
        self.s0 = None if s0 is None else contiguous(move(s0))
        self.d = None if d is None else contiguous(move(d))

    def result(self, out):
        """Cast reference results (float64) to the input dtype and move host_io results back."""
        if self.backend.name == "reference":
            return _cast(out, self.dtype)
        return to_host(out) if self.backend.host_io else out


def _cast(out, dtype):
    if isinstance(out, dict):
        return {k: _cast(v, dtype) for k, v in out.items()}
    if isinstance(out, tuple):
        return tuple(_cast(v, dtype) for v in out)
    return np.asarray(out, dtype=dtype)[()]


class RNN:
    """An Elman RNN, S_t = g1(Wx x_t + bx + Ws S_{t-1} + bs), Y_t = g2(Wy S_t + by), with its parameters.

    ``params`` is a plain dict (see ``gpubptt.forward``), initialised as ``gpubptt.init_params``
    does: PyTorch's defaults drawn from ``numpy.random.default_rng(seed)``.
    """

    def __init__(self, input_size, hidden_size, output_size, cell="tanh", output_activation="identity",
                 bias=True, dtype=np.float32, seed=None, backend="auto"):
        check_choice("cell", cell, CELLS)
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        check_choice("backend", backend, ("auto", "reference", "cpu", "cuda"))
        self.cell = cell
        self.output_activation = output_activation
        self.backend = backend
        self.params = init_params(input_size, hidden_size, output_size, bias=bias, dtype=dtype, seed=seed)

    @property
    def input_size(self):
        return self.params["Wx"].shape[1]

    @property
    def hidden_size(self):
        return self.params["Ws"].shape[0]

    @property
    def output_size(self):
        return self.params["Wy"].shape[0]

    def forward(self, x, s0=None):
        """(Y [T,B,O], S [T,B,H]); see ``gpubptt.forward``."""
        return forward(self.params, x, s0, self.cell, self.output_activation, self.backend)

    def bptt(self, x, d, s0=None, loss="squared", loss_steps="all"):
        """(L, grads); see ``gpubptt.bptt``."""
        return bptt(self.params, x, d, s0, self.cell, self.output_activation, loss, loss_steps, self.backend)

    def to_device(self):
        """Move the parameters to the GPU (CuPy arrays); returns self."""
        self.params = to_device(self.params)
        return self

    def to_host(self):
        """Move the parameters to the host (NumPy arrays); returns self."""
        self.params = to_host(self.params)
        return self

    def __repr__(self):
        return (f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}, output_size={self.output_size}, "
                f"cell={self.cell!r}, output_activation={self.output_activation!r}, "
                f"bias={'bx' in self.params}, dtype={np.dtype(self.params['Ws'].dtype).name})")
