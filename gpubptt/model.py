"""The public API: ``forward``/``bptt`` on a parameter dict, and the ``RNN`` class that holds one.

Each call validates everything first (arrays.py, params.py), then asks backend.py for the backend,
then runs ``reference`` or ``engine`` (which calls the kernels). Inputs are never modified.
"""
import numbers

import numpy as np

from . import engine, reference
from .arrays import (ValueChecks, check_bool, check_choice, check_float_array, check_int, check_int_array,
                     check_per_sequence, to_device, to_host, xp_of)
from .backend import BACKENDS, resolve
from .clipping import check_threshold
from .losses import LOSS_STEPS, LOSSES, OUTPUT_ACTIVATIONS, loss_and_output_grad, loss_mask
from .params import check_params, check_structure, has_bias, init_params


def forward(params, x, s0=None, cell="tanh", output_activation="identity", backend="auto", *, num_layers=1,
            bidirectional=False, lengths=None, return_state=False, state_step=None, return_cells=False):
    """Run the RNN over a batch of sequences.

    params   dict of arrays: Wx [G·H,D], Ws [G·H,H], bx, bs [G·H] (optional together), Wy [O,H], by [O];
             with num_layers > 1 or bidirectional=True the recurrent keys carry PyTorch's suffixes
             (Wx_l0, Ws_l1_reverse, ...; see gpubptt.params)
    x        [T,B,D] inputs, float32 or float64 (NumPy, or CuPy for the GPU)
    s0       initial state, zeros if None: [B,H] for one layer in one direction, else
             [num_layers·dirs,B,H] (PyTorch's h0 layout); for cell="lstm" a pair (h0, c0)
    cell     g1: 'tanh', 'relu', 'sigmoid', 'identity' (Elman, G = 1), 'lstm' (G = 4), 'gru' (G = 3)
    output_activation   g2: 'identity', 'tanh', 'sigmoid' or 'softmax'
    backend  'auto' (cuda for CuPy inputs or where a GPU is, else cpu), 'reference', 'cpu', 'cuda';
             the environment variable GPUBPTT_BACKEND takes the place of 'auto' when set
    num_layers, bidirectional   the stack (the params' keys must be of it)
    lengths  [B] integers in 1..T: sequence b is x[:lengths[b], b]; past its end its state stays put
             (forward direction: its final state; reverse: its initial state) and it has no loss
    Returns (Y [T,B,O], S [T,B,dirs·H]) of x's dtype, on the device x came from: S is the top layer's
    hidden states h, both directions concatenated. With return_cells=True (LSTM) the top layer's cell
    states C [T,B,dirs·H] follow S; with return_state=True the state after step ``state_step``
    (default: each sequence's end) comes last, structured like s0, ready to pass on as the next s0.
    """
    call = _Call(params, x, s0, None, cell, output_activation, backend, num_layers, bidirectional, lengths,
                 return_state=return_state, state_step=state_step)
    check_bool("return_cells", return_cells)
    if return_cells and cell != "lstm":
        raise ValueError(f"return_cells: only cell='lstm' has cell states, got cell={cell!r}")
    if call.backend.name == "reference":
        Y, S, finals, C = reference.forward(call.params, call.x, call.states0, cell, output_activation,
                                            num_layers, bidirectional, call.lengths_host, call.state_step,
                                            return_cells=return_cells)
    else:
        Y, _, top, saved = engine.forward(call.params, call.x, call.states0, call.lengths, call.structure,
                                          output_activation, call.backend)
        xp = call.backend.xp
        S = top[0] if len(top) == 1 else xp.concatenate(top, axis=2)
        C = None
        if return_cells:
            cells = [s["c"] for s in saved[-1]]
            C = cells[0] if len(cells) == 1 else xp.concatenate(cells, axis=2)
        finals = engine.final_states(saved, call.structure, call.state_step) if return_state else None
    out = (Y, S) + ((C,) if return_cells else ())
    if return_state:
        out += (call.pack_states(finals),)
    return call.result(out)


def bptt(params, x, d, s0=None, cell="tanh", output_activation="identity", loss="squared", loss_steps="all",
         backend="auto", *, num_layers=1, bidirectional=False, lengths=None, truncate=None, clip_step=None,
         return_state=False, state_step=None):
    """Loss and its exact gradients by backpropagation through time.

    d           [T,B,O] desired outputs for loss="squared"; integer classes [T,B] for
                loss="cross_entropy" (which needs output_activation="softmax"); read only at the
                steps in the loss, so padding elsewhere (-100, NaN) is accepted
    loss_steps  "all" every step, "last" each sequence's last step only (many-to-one), an int k:
                the last k steps of each sequence (k >= its length: all of them), or one int k >= 0
                per sequence [B] (a list or an array; 0: none of that sequence)
    truncate    k: gradient does not flow back across the start of each chunk of k steps (the state
                does flow forward); None: full BPTT
    clip_step   c: the article's clipping, at every step the gradient reaching the state (per
                sequence; for LSTM dL/dh and dL/dc together) is rescaled to norm c when longer;
                L being the batch mean, a sequence's own gradient is bounded by B·c
    Other arguments as ``forward``. Returns (L, grads): L a 0-d value of x's dtype; grads[k] = dL/dk
    for every parameter key k, plus grads["x"] = dL/dx [T,B,D] and grads["s0"] = dL/ds0 structured
    like s0. With return_state=True the state after ``state_step`` comes third, as in ``forward``.
    """
    call = _Call(params, x, s0, d, cell, output_activation, backend, num_layers, bidirectional, lengths,
                 loss=loss, loss_steps=loss_steps, truncate=truncate, clip_step=clip_step, return_state=return_state,
                 state_step=state_step)
    if call.backend.name == "reference":
        L, grads, dstates = reference.bptt(call.params, call.x, call.d, call.states0, cell,
                                           output_activation, loss, call.loss_steps, num_layers, bidirectional,
                                           call.lengths_host, call.truncate, call.clip_step)
        finals = None
        if return_state:
            finals = reference.forward(call.params, call.x, call.states0, cell, output_activation,
                                       num_layers, bidirectional, call.lengths_host, call.state_step)[2]
    else:
        xp, T = call.backend.xp, call.x.shape[0]
        Y, Z, top, saved = engine.forward(call.params, call.x, call.states0, call.lengths, call.structure,
                                          output_activation, call.backend)
        finals = engine.final_states(saved, call.structure, call.state_step) if return_state else None
        mask = loss_mask(T, call.lengths, call.loss_steps, Z.dtype, xp)
        L, dZ = loss_and_output_grad(Z, Y, call.d, output_activation, loss, mask, xp)
        grads, dstates = engine.backward(call.params, call.x, call.states0, call.lengths, call.structure, saved,
                                         top, dZ, call.truncate or 0, call.clip_step or 0.0, call.backend,
                                         full_lengths=call.lengths_host is None or bool((call.lengths_host == T).all()))
    grads["s0"] = call.pack_states(dstates)
    out = (L, grads) + ((call.pack_states(finals),) if return_state else ())
    return call.result(out)


class _Call:
    """One validated call: its arrays (contiguous, on the compute device), its states and backend."""

    def __init__(self, params, x, s0, d, cell, output_activation, backend, num_layers, bidirectional, lengths,
                 loss=None, loss_steps=None, truncate=None, clip_step=None, return_state=False, state_step=None,
                 loss_at=None):
        """``loss_at`` N (diagnostics): the loss is at step N alone, so d is read (and checked) there only."""
        bptt = d is not None or loss is not None
        check_structure(cell, num_layers, bidirectional)
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        check_choice("backend", backend, BACKENDS)
        if bptt:
            check_choice("loss", loss, LOSSES)
            per_sequence = isinstance(loss_steps, (list, tuple)) or getattr(loss_steps, "ndim", 0) == 1
            named = isinstance(loss_steps, str) and loss_steps in LOSS_STEPS
            one_k = isinstance(loss_steps, numbers.Integral) and not isinstance(loss_steps, bool) and loss_steps >= 1
            if not (per_sequence or named or one_k):
                raise ValueError(f"loss_steps: expected 'all', 'last', a positive integer k (the last k steps) "
                                 f"or one integer k >= 0 per sequence [B], got {loss_steps!r}")
            if loss == "cross_entropy" and output_activation != "softmax":
                raise ValueError(
                    f"loss='cross_entropy' needs output_activation='softmax', got output_activation={output_activation!r}"
                )
            truncate = check_int("truncate", truncate, allow_none=True)
            clip_step = check_threshold("clip_step", clip_step)
        check_bool("return_state", return_state)
        state_step = check_int("state_step", state_step, allow_none=True)
        if state_step is not None and bidirectional:
            raise ValueError("state_step: the state after a given step exists for the forward direction only; "
                             "got state_step with bidirectional=True")
        if state_step is not None and not return_state:
            raise ValueError("state_step: picks the state that return_state=True returns; got state_step without it")
        checks = ValueChecks()  # finiteness and ranges, run together below: one wait for a GPU
        D, H, O, bias, dtype = check_params(params, cell, num_layers, bidirectional, checks=checks)
        n_states, lstm = num_layers * (2 if bidirectional else 1), cell == "lstm"
        s0_parts = self._s0_parts(s0, cell, lstm)
        named = {"x": x, "d": d, **s0_parts, **{f"params[{k!r}]": v for k, v in params.items()}}
        xp = xp_of(named)
        check_float_array("x", x, ("T", "B", "D"), (None, None, D), dtype, checks=checks)
        T, B, _ = x.shape
        if T == 0 or B == 0:
            raise ValueError(f"x: expected at least one time step and one sequence, got shape {tuple(x.shape)} (T={T}, B={B})")
        names, shape = (("B", "H"), (B, H)) if n_states == 1 else (("L·dirs", "B", "H"), (n_states, B, H))
        for name, a in s0_parts.items():
            check_float_array(name, a, names, shape, dtype, checks=checks)
        if state_step is not None and state_step > T:
            raise ValueError(f"state_step: expected 1..T = 1..{T}, got {state_step}")
        self.lengths_host = None if lengths is None else check_per_sequence("lengths", lengths, B, 1, T + 1)
        if bptt:
            if per_sequence:  # k >= T: every step; 0: none
                loss_steps = check_per_sequence("loss_steps", loss_steps, B, 0, None, most=T)
            elif isinstance(loss_steps, numbers.Integral):
                loss_steps = min(int(loss_steps), T)  # k >= T: every step
            if truncate is not None:
                truncate = min(truncate, T)  # k >= T: no chunk starts inside the sequence (full BPTT)
            d = self._targets(d, loss, loss_steps, loss_at, T, B, O, dtype, xp, checks)
        checks.run()
        self.dtype, self.n_states, self.lstm = dtype, n_states, lstm
        self.state_step = state_step or T
        self.loss_steps, self.truncate, self.clip_step = loss_steps, truncate, clip_step  # as plain Python values
        self.structure = engine.Structure(cell, num_layers, bool(bidirectional), H, bias)
        self.backend = resolve(backend, on_device=xp is not np)
        cxp = self.backend.xp
        move = to_device if self.backend.host_io else (lambda a: a)
        contiguous = cxp.ascontiguousarray  # copies only arrays that are not already
        self.params = {k: contiguous(move(v)) for k, v in params.items()}
        self.x = contiguous(move(x))
        self.d = None if d is None else contiguous(move(d))
        # full lengths are made on the compute device: no copy from the host, which would wait for the GPU
        self.lengths = cxp.full(B, T, np.int32) if self.lengths_host is None else cxp.asarray(self.lengths_host)
        parts = [contiguous(move(a)) for a in s0_parts.values()] or [cxp.zeros(shape, dtype=dtype)] * (1 + lstm)
        per_layer = [[p] if n_states == 1 else list(p) for p in parts]  # per part, per layer and direction
        self.states0 = list(zip(*per_layer)) if lstm else per_layer[0]  # h0 [B,H] or (h0, c0) each

    @staticmethod
    def _s0_parts(s0, cell, lstm):
        """{name: array} of the pieces of s0: 's0' for one array, 's0[0]', 's0[1]' for (h0, c0)."""
        if s0 is None:
            return {}
        if lstm:
            if not isinstance(s0, (tuple, list)) or len(s0) != 2:
                got = f"a {type(s0).__name__} of {len(s0)}" if isinstance(s0, (tuple, list)) else type(s0).__name__
                raise TypeError(f"s0: cell='lstm' takes a pair (h0, c0), got {got}")
            return {"s0[0]": s0[0], "s0[1]": s0[1]}
        if isinstance(s0, (tuple, list)):
            raise TypeError(f"s0: cell={cell!r} takes one array (only 'lstm' takes a pair (h0, c0)), "
                            f"got a {type(s0).__name__}")
        return {"s0": s0}

    def _targets(self, d, loss, loss_steps, loss_at, T, B, O, dtype, xp, checks):
        """d, checked where it enters the loss: the steps of ``loss_steps`` within each sequence's length,
        or step ``loss_at`` alone (its values by ``checks``). The other entries are never read, so padding
        there (-100, NaN) is accepted; they are replaced by 0 in a copy, the caller's d unchanged."""
        keep = None
        if loss_at is not None:  # (loss_at > T keeps nothing: the caller reports that step)
            keep = loss_mask(T, xp.full(B, min(loss_at, T + 1), np.int32), "last", bool, xp)
        elif self.lengths_host is not None or not isinstance(loss_steps, str) or loss_steps != "all":
            lengths = xp.full(B, T, np.int32) if self.lengths_host is None else xp.asarray(self.lengths_host)
            keep = loss_mask(T, lengths, loss_steps, bool, xp)
        where_text = "" if keep is None else " at the steps in the loss"
        if loss == "cross_entropy":
            check_int_array("d", d, ("T", "B"), (T, B), 0, O, where=keep, where_text=where_text, checks=checks)
        else:
            check_float_array("d", d, ("T", "B", "O"), (T, B, O), dtype, where=keep, where_text=where_text,
                              checks=checks)
        if keep is not None:
            d = xp.where(keep if loss == "cross_entropy" else keep[..., None], d, 0).astype(d.dtype)
        return d

    def pack_states(self, states):
        """Per-layer-and-direction states -> the structure of s0 (copies, on the compute device)."""
        xp = self.backend.xp if self.backend.name != "reference" else np
        if self.lstm:
            return tuple(self._stack([s[i] for s in states], xp) for i in range(2))
        return self._stack(states, xp)

    def _stack(self, arrays, xp):
        return xp.array(arrays[0], copy=True) if self.n_states == 1 else xp.stack(arrays)

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
    """A recurrent network with its parameters: S_t = g1(Wx x_t + bx + Ws S_{t-1} + bs) (or an LSTM or
    GRU cell), stacked ``num_layers`` deep, optionally bidirectional, and Y_t = g2(Wy S_t + by).

    RNN(input_size D, hidden_size H, output_size O, cell='tanh' | 'relu' | 'sigmoid' | 'identity' |
        'lstm' | 'gru', output_activation='identity' | 'tanh' | 'sigmoid' | 'softmax', bias=True
        (bx, bs; the output layer always has by), dtype=np.float32 | np.float64, seed=None (an int
        fixes the weights), backend='auto' | 'reference' | 'cpu' | 'cuda', num_layers=1,
        bidirectional=False)

    ``params`` is a plain dict (see ``gpubptt.forward``), initialised as ``gpubptt.init_params``
    does: PyTorch's defaults drawn from ``numpy.random.default_rng(seed)``. ``save(directory)`` and
    ``gpubptt.load_model(directory)`` write and read it back. An ``Optimizer`` updates the arrays of
    the dict it was made for: after giving the model a new dict (``to_device``, loading weights by
    assignment), make the optimizer anew.
    """

    def __init__(self, input_size, hidden_size, output_size, cell="tanh", output_activation="identity",
                 bias=True, dtype=np.float32, seed=None, backend="auto", num_layers=1, bidirectional=False):
        check_structure(cell, num_layers, bidirectional)
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        check_choice("backend", backend, BACKENDS)
        self.cell = cell
        self.output_activation = output_activation
        self.backend = backend
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.params = init_params(input_size, hidden_size, output_size, bias=bias, dtype=dtype, seed=seed,
                                  cell=cell, num_layers=num_layers, bidirectional=bidirectional)

    @property
    def _first(self):
        return "" if self.num_layers == 1 and not self.bidirectional else "_l0"

    @property
    def input_size(self):
        return self.params["Wx" + self._first].shape[1]

    @property
    def hidden_size(self):
        return self.params["Ws" + self._first].shape[1]

    @property
    def output_size(self):
        return self.params["Wy"].shape[0]

    def _structure(self):
        return dict(num_layers=self.num_layers, bidirectional=self.bidirectional)

    # what the model fixes: given to forward or bptt, a TypeError that says so (not Python's "got
    # multiple values")
    _FIXED = ("params", "cell", "output_activation", "num_layers", "bidirectional")

    def _options(self, method, options):
        for key in self._FIXED:
            if key in options:
                where = ("is the model's" if key == "params"
                         else f"is set when the model is made (RNN(..., {key}=...))")
                raise TypeError(f"{key}: {where}, not an option of RNN.{method}; got {key}={options[key]!r}")
        return options

    def forward(self, x, s0=None, lengths=None, backend=None, **options):
        """(Y [T,B,O], S [T,B,dirs·H]); ``backend`` for this call (default: the model's); see
        ``gpubptt.forward`` for ``options``."""
        return forward(self.params, x, s0, self.cell, self.output_activation,
                       self.backend if backend is None else backend, lengths=lengths, **self._structure(),
                       **self._options("forward", options))

    def bptt(self, x, d, s0=None, loss="squared", loss_steps="all", lengths=None, backend=None, **options):
        """(L, grads); ``backend`` for this call (default: the model's); see ``gpubptt.bptt`` for
        ``options`` (truncate, clip_step, return_state, ...)."""
        return bptt(self.params, x, d, s0, self.cell, self.output_activation, loss, loss_steps,
                    self.backend if backend is None else backend, lengths=lengths, **self._structure(),
                    **self._options("bptt", options))

    def config(self):
        """The structure, as ``RNN(**config)`` rebuilds it (checkpoints store it)."""
        config = {
            "input_size": int(self.input_size), "hidden_size": int(self.hidden_size),
            "output_size": int(self.output_size), "cell": self.cell, "output_activation": self.output_activation,
            "bias": has_bias(self.params),
            "dtype": np.dtype(next(iter(self.params.values())).dtype).name,
        }  # (in this order: the repr's)
        if self.num_layers != 1 or self.bidirectional:
            config.update(num_layers=self.num_layers, bidirectional=self.bidirectional)
        return config

    def save(self, directory, overwrite=False):
        """Write the model (structure and parameters) to ``directory``/checkpoint.npz, atomically, in
        the format of ``gpubptt.train``'s checkpoints; ``gpubptt.load_model(directory)`` reads it
        back. A directory that already holds a checkpoint is refused unless ``overwrite``. Returns
        the file's path."""
        from . import checkpoint

        check_bool("overwrite", overwrite)
        directory = checkpoint.check_directory("directory", directory, writable=True)
        if not overwrite and checkpoint.exists(directory):
            raise ValueError(f"directory: {directory} already holds a checkpoint; pass overwrite=True to replace it")
        check_params(self.params, self.cell, self.num_layers, self.bidirectional)
        arrays = {f"param/{k}": to_host(v) for k, v in self.params.items()}
        return checkpoint.save(directory, arrays, {"model": self.config(), "task": None, "step": 0,
                                                   "saved_by": "RNN.save"}, name="directory")

    def to_device(self):
        """Move the parameters to the GPU (CuPy arrays); returns self."""
        self.params = to_device(self.params)
        return self

    def to_host(self):
        """Move the parameters to the host (NumPy arrays); returns self."""
        self.params = to_host(self.params)
        return self

    def __repr__(self):
        try:
            config = self.config()
        except (KeyError, AttributeError, IndexError, StopIteration, TypeError):  # params that do not fit: say so
            what = f"{len(self.params)} arrays" if isinstance(self.params, dict) else type(self.params).__name__
            return (f"RNN(cell={self.cell!r}, num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                    f"params: {what} that do not fit this structure)")
        parts = [f"{k}={v!r}" if k != "dtype" else f"dtype={v}" for k, v in config.items()]
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return f"RNN({', '.join(parts)})"
