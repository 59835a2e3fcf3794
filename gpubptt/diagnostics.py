"""Gradient diagnostics: the article's sum for dE_N/dWs and dE_N/dWx, one summand per time step.

For the loss at step N alone, E_N, the article writes

    dE_N/dWs = Σ_{i=1..N} dE_N/dY_N · dY_N/dS_N · (Π_{k=i+1..N} dS_k/dS_{k-1}) · dS_i/dWs

(and the same for Wx, and for the biases), and says the products shrink geometrically with N − i
(the vanishing gradient) or grow (the exploding gradient). ``contributions`` returns every summand,
the norm of the gradient reaching each state, dE_N/dS_i = dE_N/dS_N · Π_{k=i+1..N} dS_k/dS_{k-1},
the geometric rate fitted to those norms, and the spectral radius of Ws.

How the backends get them:

- ``reference``: as the article writes them, per sample, in float64: the Jacobian dS_k/dS_{k-1} of
  each step as a matrix, their product from i+1 to N, and dS_i/dW (step i alone, S_{i-1} held fixed)
  as a tensor. Row j of both is the unit vector e_j passed backwards through one step of the
  reference (``reference.cell_step_backward``): a vector-Jacobian product with e_j is row j.
- ``cpu`` and ``cuda``: one forward and one backward kernel with the loss on step N only. The kernel
  writes dRec_i = dE_N/d(recurrent pre-activations of step i) and dU_i (input pre-activations);
  step i's summand is Σ_b dRec_iᵀ S_{i-1} (Σ_b dU_iᵀ x_i for Wx): one batched product over all steps,
  [N, G·H, H], never an N×N object per sample. dE_N/dS_i = dRec_{i+1} Ws, plus for GRU the path
  around the gates, z_{i+1} ⊙ dE_N/dS_{i+1}. On the GPU every array stays CuPy (the properties
  ``rate`` and ``spectral_radius`` read their few numbers back when asked).

The state S is h; for LSTM the step's state is the pair (h, c), so the reference's Jacobians are
2H×2H, and the cell state gets its own norm (see ``Contributions.dc_norm``).
"""
import argparse
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import engine, reference
from .arrays import check_float_array, check_float_type, check_int, check_shape, to_host, xp_of
from .checkpoint import check_output_file
from .losses import loss_and_output_grad, loss_mask
from .model import _Call
from .params import check_params, check_recurrent_weight, gate_rows, gates, layer_suffixes, structure_of
from .report import FIGURE_FORMATS, option_error, save_figure

__all__ = ["contributions", "Contributions", "fit_rate", "spectral_radius", "with_spectral_radius",
           "plot_profile"]

WEIGHTS = ("Wx", "Ws", "bx", "bs")
GATE_NAMES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
KEPT_GATES = {"lstm": ("f", "o"), "gru": ("z",)}


@dataclass
class Contributions:
    """The article's sum for E_N, the loss at step ``step`` = N alone, term by term.

    E_N is what ``bptt(params, x[:N], d[:N], ..., loss_steps="last")`` differentiates: the batch mean
    (1/B) Σ_b E_N of the squared error (or cross-entropy) at step N; later steps do not change it.
    The breakdown is of the top layer (the one Y reads): with num_layers > 1 its input x_i is the
    layer below's state, taken as given, as the article takes x_i.

    step     N
    cell, backend   as called
    keys     {"Wx": ..., "Ws": ..., "bx": ..., "bs": ...}: the parameter keys of the top layer
             ("Ws", or "Ws_l1" with two layers, ...) whose gradient the summands add up to
    dWx      [N, G·H, D_in]  row i-1: step i's summand of dE_N/dWx; Σ over axis 0 is bptt's gradient
    dWs      [N, G·H, H]     row i-1: step i's summand of dE_N/dWs
    dbx, dbs [N, G·H]        the same for the biases (None for a model without them)
    dS_norm  [N] float64     ‖dE_N/dS_i‖, the Frobenius norm of the [B,H] gradient reaching the
                             states of step i (for LSTM: h_i)
    dc_norm  [N] float64 or None (not LSTM): ‖dE_N/dc_i‖, the gradient reaching LSTM's cell state c_i
             by every path: through h_i = o_i tanh(c_i) and through c_{i+1} = f_{i+1} c_i + ...
             (along c, LSTM's "constant error carousel", each step multiplies it by f, not by Ws)
    Ws       the top layer's recurrent weights [G·H, H] (the caller's array), for ``spectral_radius``

    Summands have x's dtype and live where the inputs came from (CuPy in, CuPy out); G·H rows are
    stacked gate blocks (``gates``, PyTorch's order), ``block`` picks one.
    """

    step: int
    cell: str
    backend: str
    keys: dict
    dWx: object
    dWs: object
    dbx: object
    dbs: object
    dS_norm: object
    dc_norm: object
    Ws: object

    @property
    def gates(self):
        """Names of the gate blocks stacked in the G·H rows: ('i','f','g','o'), ('r','z','n'), or
        (cell,) for the Elman cells' single block."""
        return GATE_NAMES.get(self.cell, (self.cell,))

    @property
    def distance(self):
        """N − i for i = 1..N: how many steps before N each row lies (NumPy ints)."""
        return np.arange(self.step - 1, -1, -1)

    def _summands(self, name):
        names = ("dWx", "dWs") + (("dbx", "dbs") if self.dbx is not None else ())
        if name not in names:
            raise ValueError(f"name: expected one of {', '.join(map(repr, names))}, got {name!r}")
        return getattr(self, name)

    def block(self, name, gate):
        """The rows of gate ``gate`` (e.g. 'f') of the per-step summands ``name`` ('dWs', 'dWx', ...)."""
        if gate not in self.gates:
            raise ValueError(f"gate: expected one of {', '.join(map(repr, self.gates))}, got {gate!r}")
        a = self._summands(name)
        H = a.shape[1] // len(self.gates)
        k = self.gates.index(gate)
        return a[:, k * H:(k + 1) * H]

    def block_norms(self, name):
        """[N, G] Frobenius norm of each step's summand of ``name``, per gate block (columns in
        ``gates`` order), float64, on the summands' device: the contribution profile. ``name``: one
        of 'dWx', 'dWs', 'dbx', 'dbs' (the bias ones exist for a model with biases)."""
        a = self._summands(name)
        N, GH = a.shape[:2]
        G = len(self.gates)
        blocks = a.reshape(N, G, GH // G, -1).astype(np.float64)
        return (blocks ** 2).sum(axis=(2, 3)) ** 0.5

    @property
    def rate(self):
        """The geometric rate per step fitted to ``dS_norm`` (see ``fit_rate``): below 1 the gradient
        vanishes, above 1 it explodes. NaN with fewer than two finite nonzero norms."""
        return fit_rate(self.dS_norm)[0]

    @property
    def rate_c(self):
        """``rate`` of ``dc_norm`` (LSTM), None for other cells."""
        return None if self.dc_norm is None else fit_rate(self.dc_norm)[0]

    @property
    def spectral_radius(self):
        """max |eigenvalue| of Ws: a float for the Elman cells, {gate: float} per gate block (its
        H×H rows of Ws) for LSTM and GRU."""
        return spectral_radius(self.Ws, self.cell)


def fit_rate(norms):
    """(rate, scale, used): the least-squares line log norms_i = log scale + (N − i) log rate over the
    steps with a finite nonzero norm, ``norms`` [N] ordered i = 1..N; ``used`` is how many steps it fits.

    A norm of exactly 0 (the gradient vanished entirely, e.g. every ReLU unit off, or underflow) has no
    logarithm, nor has one that overflowed to Inf (an exploding gradient, far back) or is NaN: those
    steps are left out of the fit, so the rate describes the steps that still have a finite gradient;
    ``used`` < N says so. Fewer than two such norms give rate = scale = NaN. ``norms``: a float32 or
    float64 NumPy or CuPy array.
    """
    check_float_type("norms", norms)  # (NaN and Inf allowed: left out, above)
    check_shape("norms", norms, ("N",), (None,))
    norms = np.asarray(to_host(norms), np.float64)
    distance = np.arange(len(norms) - 1, -1, -1, dtype=np.float64)
    keep = _loggable(norms)
    used = int(keep.sum())
    if used < 2:
        return math.nan, math.nan, used
    slope, intercept = np.polyfit(distance[keep], np.log(norms[keep]), 1)
    return float(np.exp(slope)), float(np.exp(intercept)), used


def _loggable(norms):
    """Where ``norms`` has a finite logarithm: finite and > 0."""
    return np.isfinite(norms) & (norms > 0)


def spectral_radius(Ws, cell="tanh"):
    """max |eigenvalue| of the recurrent weights Ws [G·H, H] of ``cell``: a float for the Elman cells,
    {gate: float} for each H×H gate block of LSTM and GRU (read to the host). A Ws of another cell's
    shape is refused (an LSTM's [4H,H] with the default cell='tanh' says to pass cell='lstm'), and so
    is one that is not float32 or float64, holds NaN or Inf, or has H = 0."""
    check_recurrent_weight("Ws", Ws, cell)
    check_float_array("Ws", Ws, (gate_rows(gates(cell)), "H"), (None, None))
    if Ws.shape[1] == 0:
        raise ValueError(f"Ws: expected H of at least 1, got shape {tuple(Ws.shape)}")
    Ws = np.asarray(to_host(Ws), np.float64)
    H = Ws.shape[1]
    radii = {name: float(np.abs(np.linalg.eigvals(Ws[k * H:(k + 1) * H])).max())
             for k, name in enumerate(GATE_NAMES.get(cell, (cell,)))}
    return radii if cell in GATE_NAMES else radii[cell]


def with_spectral_radius(params, radius, cell="tanh"):
    """A copy of ``params`` whose every recurrent matrix (each gate block of each layer's Ws) is
    rescaled to spectral radius ``radius``; the other arrays are shared, not copied.

    ``params`` is validated as ``bptt`` validates it, for the layers and directions its keys name
    ('Ws'; 'Ws_l0', 'Ws_l1', ...; with '_reverse' ones: bidirectional; ``params.structure_of``).
    ``radius`` must lie in the range of normal numbers of params' dtype, and the rescaled Ws must
    stay finite in it; a block of spectral radius 0 (zero or nilpotent) is refused."""
    num_layers, bidirectional = structure_of(params) if isinstance(params, Mapping) else (1, False)
    dtype = check_params(params, cell, num_layers, bidirectional)[4]
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not radius > 0:
        raise ValueError(f"radius: expected a positive number, got {radius!r}")
    low, high = np.finfo(dtype).tiny, np.finfo(dtype).max
    if not float(low) <= radius <= float(high):  # Python compares a huge int with a float exactly
        raise ValueError(f"radius: expected a number that {dtype} holds, {low:.4g} to {high:.4g}, got {radius!r}")
    out = dict(params)
    for _, _, sfx in layer_suffixes(num_layers, bidirectional):
        key = "Ws" + sfx
        Ws = params[key].copy()
        H = Ws.shape[1]
        for k in range(gates(cell)):
            block = Ws[k * H:(k + 1) * H]
            now = spectral_radius(block, "tanh")  # one H×H block
            if not now > 0:
                raise ValueError(f"params[{key!r}]: a gate block has spectral radius 0 (a zero or nilpotent block), "
                                 f"which no scaling brings to {radius!r}")
            with np.errstate(over="ignore", invalid="ignore"):  # refused just below, with the reason
                block *= radius / now
        if not bool(xp_of({key: Ws}).isfinite(Ws).all()):
            raise ValueError(f"radius: {radius!r} rescales params[{key!r}] past what {dtype} holds "
                             f"(entries of a gate block far larger than its spectral radius overflow)")
        out[key] = Ws
    return out


def contributions(params, x, d, *, step=None, s0=None, cell="tanh", output_activation="identity", loss="squared",
                  backend="auto", num_layers=1, bidirectional=False):
    """Every summand of the article's sum for dE_N/dW, N = ``step``; returns ``Contributions``.

    params, x, d, s0, cell, output_activation, loss, backend, num_layers   as ``gpubptt.bptt``
    step    N, an int in 1..T (default T): E_N is the loss at step N alone; x after N is not used,
            d is read at step N only (padding elsewhere, -100 or NaN, is accepted as in ``bptt``)

    Not taken, since the article's sum does not describe them: bidirectional=True (a reverse
    direction's state at step i depends on the steps after i), lengths (pass x[:, b] for one
    sequence), truncate and clip_step (they change the gradient the sum adds up to).
    """
    check_int("step", step, allow_none=True)
    call = _Call(params, x, s0, d, cell, output_activation, backend, num_layers, bidirectional, None, loss=loss,
                 loss_steps="last", loss_at=step)  # E_N: d read at step N alone (N = T: "last")
    if bidirectional:
        raise ValueError("bidirectional: the article's sum follows the forward direction only (a reverse "
                         "direction's state at step i depends on later steps); got bidirectional=True")
    T = call.x.shape[0]
    if step is not None and step > T:
        raise ValueError(f"step: expected 1..T = 1..{T}, got {step}")
    N = T if step is None else step
    sfx = layer_suffixes(num_layers)[-1][2]
    # an exploding gradient overflows to Inf far back: what the norms are there to show, not a warning
    with np.errstate(over="ignore", invalid="ignore"):
        if call.backend.name == "reference":
            sums, dS_norm, dc_norm = _reference_terms(call, N, cell, output_activation, loss, sfx)
        else:
            sums, dS_norm, dc_norm = _engine_terms(call, N, output_activation, loss, sfx)
    sums = call.result(sums)  # x's dtype, where x came from
    if call.backend.host_io:
        dS_norm, dc_norm = to_host((dS_norm, dc_norm))
    return Contributions(step=N, cell=cell, backend=call.backend.name, keys={k: k + sfx for k in WEIGHTS},
                         dWx=sums["Wx"], dWs=sums["Ws"], dbx=sums.get("bx"), dbs=sums.get("bs"),
                         dS_norm=dS_norm, dc_norm=dc_norm, Ws=params["Ws" + sfx])


def _dh_dc(o, c, xp):
    """∂h_i/∂c_i of LSTM (a diagonal, as a vector): h_i = o_i tanh(c_i)."""
    return o * (1 - xp.tanh(c) ** 2)


# --- reference: the article's products, literally ------------------------------------------------

def _dE_dY(loss, y, target, B):
    """dE_N/dY_N of one sample, E_N = (1/B) Σ_o (d_N - Y_N)^2 or -(1/B) log Y_N[d_N]."""
    if loss == "cross_entropy":
        g = np.zeros_like(y)
        g[int(target)] = -1.0 / (B * y[int(target)])
        return g
    return -2.0 * (target - y) / B


def _step_derivatives(cell, w, cache, n):
    """Step k's two factors for one sample: J [n,n] = dS_k/dS_{k-1} and, per weight, dS_k/dW
    [n, *W.shape] with S_{k-1} held fixed. Row j of both is e_j sent back through the step."""
    H = w["Ws"].shape[1]
    J = np.zeros((n, n))
    dS_dW = {k: np.zeros((n,) + w[k].shape) for k in WEIGHTS}
    for j in range(n):
        e = np.zeros(max(n, 2 * H))  # e[:H] is the h part, e[H:2H] the c part (zero but for LSTM)
        e[j] = 1.0
        row = {k: np.zeros_like(w[k]) for k in WEIGHTS}
        _, dh_prev, dc_prev = reference.cell_step_backward(cell, w, cache, e[:H], e[H:2 * H], row)
        J[j] = np.concatenate([dh_prev, dc_prev])[:n]
        for k in WEIGHTS:
            dS_dW[k][j] = row[k]
    return J, dS_dW


def _reference_terms(call, N, cell, output_activation, loss, sfx):
    L = call.structure.num_layers
    x, H = call.x[:N], call.structure.hidden_size
    B = x.shape[1]
    top, runs, _ = reference._run_forward(call.params, x, call.states0, cell, L, False, None)
    Y, _ = reference._outputs(call.params, top, output_activation)
    w = reference._weights(call.params, sfx, cell, H)
    Wy = np.asarray(call.params["Wy"], np.float64)
    n = 2 * H if cell == "lstm" else H  # the state S_i: h_i, or (h_i, c_i) for LSTM
    sums = {k: np.zeros((N,) + w[k].shape) for k in WEIGHTS}
    sq_h, sq_c = np.zeros(N), np.zeros(N)
    for b in range(B):
        caches = runs[b, L - 1, 0]["caches"]
        # dE_N/dY_N · dY_N/dS_N; c_N reaches E_N only through h_N, within step N
        dE_dS_N = np.zeros(n)
        dE_dS_N[:H] = _dE_dY(loss, Y[N - 1, b], call.d[N - 1, b], B) @ reference.g2_jacobian(
            output_activation, Y[N - 1, b]) @ Wy
        P = np.eye(n)  # Π_{k=i+1..N} dS_k/dS_{k-1}: the empty product for i = N
        for i in range(N, 0, -1):
            J, dS_dW = _step_derivatives(cell, w, caches[i - 1], n)
            dE_dS_i = dE_dS_N @ P
            for k in WEIGHTS:  # the article's summand i: dE_N/dS_i · dS_i/dW
                sums[k][i - 1] += np.tensordot(dE_dS_i, dS_dW[k], axes=1)
            sq_h[i - 1] += dE_dS_i[:H] @ dE_dS_i[:H]
            if cell == "lstm":
                cache = caches[i - 1]
                dc = dE_dS_i[H:] + dE_dS_i[:H] * _dh_dc(cache["o"], cache["c"], np)
                sq_c[i - 1] += dc @ dc
            P = P @ J  # now Π_{k=i..N}
    if not call.structure.bias:
        del sums["bx"], sums["bs"]
    return sums, np.sqrt(sq_h), (np.sqrt(sq_c) if cell == "lstm" else None)


# --- cpu, cuda: the backward kernel's per-step gradients -------------------------------------------

def _per_step(a, b):
    """Σ_b a[t,b]ᵀ b[t,b] for every t: [N,B,P] and [N,B,Q] -> [N,P,Q], one batched product."""
    return a.transpose(0, 2, 1) @ b


def _carry_back(a, factor):
    """a_i += factor_{i+1} ⊙ a_{i+1} from i = N-1 down to 1 (in place): a gradient path that skips the
    recurrent product, elementwise from one step to the one before."""
    for i in range(a.shape[0] - 2, -1, -1):
        a[i] += factor[i + 1] * a[i + 1]
    return a


def _engine_terms(call, N, output_activation, loss, sfx):
    st, be, xp = call.structure, call.backend, call.backend.xp
    x, d = call.x[:N], call.d[:N]
    B, H, G, cell = x.shape[1], st.hidden_size, gates(st.cell), st.cell
    lengths = xp.full(B, N, dtype=xp.int32)
    Y, Z, top, saved = engine.forward(call.params, x, call.states0, lengths, st, output_activation, be)
    _, dZ = loss_and_output_grad(Z, Y, d, output_activation, loss, loss_mask(N, lengths, "last", Z.dtype, xp), xp)
    s = saved[-1][0]  # the top layer (one direction)
    # the gates the state gradients need (LSTM's f and o, GRU's z), kept: backward writes over them
    kept = {g: s["gates"][:, :, k * H:(k + 1) * H].copy() for k, g in enumerate(GATE_NAMES.get(cell, ()))
            if g in KEPT_GATES.get(cell, ())}
    _, _, deltas = engine.backward(call.params, x, call.states0, lengths, st, saved, top, dZ, 0, 0.0, be,
                                   return_deltas=True)
    dRec, dU_blocks = deltas[-1]
    h0 = call.states0[-1][0] if cell == "lstm" else call.states0[-1]
    S = s["h"]
    inputs = x if st.num_layers == 1 else saved[-2][0]["h"]
    sums = {"Ws": _per_step(dRec, xp.concatenate([h0[None], S[:-1]])),
            "Wx": xp.empty((N, G * H, inputs.shape[2]), dtype=x.dtype)}
    if st.bias:
        sums["bs"], sums["bx"] = dRec.sum(axis=1), xp.empty((N, G * H), dtype=x.dtype)
    for rows, dU in dU_blocks:
        dU = dU.reshape(N, B, -1)
        sums["Wx"][:, rows] = _per_step(dU, inputs)
        if st.bias:
            sums["bx"][:, rows] = dU.sum(axis=1)
    # dE_N/dS_i: through the output at i = N, through step i+1's pre-activations before
    dS = xp.empty_like(S)
    dS[N - 1] = dZ[N - 1] @ call.params["Wy"]
    dS[:N - 1] = dRec[1:] @ call.params["Ws" + sfx]
    if cell == "gru":
        _carry_back(dS, kept["z"])  # h_{i+1} = ... + z_{i+1} ⊙ h_i
    dc = None
    if cell == "lstm":  # c_i reaches E_N through h_i and through c_{i+1} = f_{i+1} ⊙ c_i + ...
        dc = _carry_back(dS * _dh_dc(kept["o"], s["c"], xp), kept["f"])
    return sums, _norms(dS, xp), (None if dc is None else _norms(dc, xp))


def _norms(a, xp):
    """[N] float64 Frobenius norms of a [N,B,H] per step (float64 first: float32 squares underflow)."""
    a = a.reshape(a.shape[0], -1).astype(xp.float64)
    return xp.sqrt((a * a).sum(axis=1))


# --- the ``gpubptt diagnose`` command -------------------------------------------------------------

def _figure_path(text):
    """argparse type: a file name whose extension is one of FIGURE_FORMATS."""
    if os.path.splitext(text)[1].lower() not in FIGURE_FORMATS:
        raise argparse.ArgumentTypeError(f"expected a file name ending in {', '.join(FIGURE_FORMATS)}, got {text!r}")
    return text


def plot_profile(result, path, title=""):
    """‖dE_N/dS_i‖ (and LSTM's ‖dE_N/dc_i‖) against N − i on a log scale, with the fitted rate, saved
    at ``path`` (PNG, or PDF or SVG by its extension). Returns (path, None), or (None, note) when
    matplotlib is not installed. ``path`` is checked first (``checkpoint.check_output_file``)."""
    check_output_file("path", path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "no PNG: matplotlib is not installed (pip install 'gpubptt[plot]')"
    distance = result.distance
    fig, ax = plt.subplots(figsize=(8, 4.5))
    curves = [("‖dE_N/dS_i‖" + (" (h)" if result.cell == "lstm" else ""), result.dS_norm, "tab:blue")]
    if result.dc_norm is not None:
        curves.append(("‖dE_N/dc_i‖ (cell state c)", result.dc_norm, "tab:green"))
    for label, norms, color in curves:
        norms = np.asarray(to_host(norms), np.float64)
        keep = _loggable(norms)  # a log scale has no 0 or Inf: left out (see fit_rate)
        ax.plot(distance[keep], norms[keep], "o-", ms=3, lw=1, color=color, label=label)
        rate, scale, _ = fit_rate(norms)
        if math.isfinite(rate):
            ax.plot(distance, scale * rate ** distance.astype(np.float64), "--", lw=1, color=color,
                    label=f"fit {scale:.3g} · {rate:.4g}^(N−i)")
    ax.set_yscale("log")
    ax.set_xlabel("N − i  (steps between the state S_i and the loss E_N)")
    ax.set_ylabel("gradient norm (Frobenius, over the batch)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path, None


def add_arguments(p):
    """The options of ``gpubptt diagnose``."""
    from .backend import BACKENDS
    from .params import CELLS

    p.add_argument("--cell", default="tanh", choices=CELLS)
    p.add_argument("--seq-len", type=int, default=100, help="T, time steps of the random input (default 100)")
    p.add_argument("--step", type=int, default=None, help="N, the step whose loss E_N is differentiated (default T)")
    p.add_argument("--hidden", type=int, default=32, help="H (default 32)")
    p.add_argument("--input-size", type=int, default=4, help="D (default 4)")
    p.add_argument("--output-size", type=int, default=1, help="O (default 1)")
    p.add_argument("--batch", type=int, default=4, help="B (default 4)")
    p.add_argument("--layers", type=int, default=1, help="stacked layers; the top one is broken down (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights (PyTorch's initialisation), x and d")
    p.add_argument("--spectral-radius", type=float, default=None, metavar="R",
                   help="rescale Ws (each gate block, every layer) to spectral radius R")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                   help="float64 (default) keeps norms far below 1e-38 visible")
    p.add_argument("--out", default=None, type=_figure_path, metavar="FILE.png",
                   help="write the profile as a figure: .png, .pdf or .svg (needs matplotlib)")


def _rows_to_show(N):
    """Distances N − i for the table: every one up to 9, then every 10th, and the first step."""
    return sorted(set(range(min(N, 10))) | set(range(10, N, 10)) | {N - 1})


def _verdict(rate):
    if not math.isfinite(rate):
        return "no fit (fewer than two finite nonzero norms)"
    if rate < 1:
        return f"vanishing: every 10 steps back it shrinks by a factor of {rate ** -10:.3g}"
    if rate > 1:
        return f"exploding: every 10 steps back it grows by a factor of {rate ** 10:.3g}"
    return "steady"


def main(args):
    """Build a random model and input, print the profile of dE_N, write the PNG; exit status."""
    from .params import init_params

    try:
        dtype = np.dtype(args.dtype)
        params = init_params(args.input_size, args.hidden, args.output_size, dtype=dtype, seed=args.seed,
                             cell=args.cell, num_layers=args.layers)
        if args.spectral_radius is not None:
            try:
                params = with_spectral_radius(params, args.spectral_radius, args.cell)
            except ValueError as e:  # params come from init_params: only the radius can be wrong
                raise ValueError("--spectral-radius: " + str(e).removeprefix("radius: ")) from None
        if args.seq_len < 1 or args.batch < 1:
            raise ValueError(f"--seq-len and --batch: expected positive integers, got {args.seq_len} and {args.batch}")
        rng = np.random.default_rng(args.seed)
        x = rng.standard_normal((args.seq_len, args.batch, args.input_size)).astype(dtype)
        d = rng.standard_normal((args.seq_len, args.batch, args.output_size)).astype(dtype)
        r = contributions(params, x, d, step=args.step, cell=args.cell, backend=args.backend, num_layers=args.layers)
    except (ValueError, TypeError) as e:
        option_error("diagnose", e, args, {"hidden": "hidden_size", "layers": "num_layers"})
        return 2
    N, lstm = r.step, r.cell == "lstm"
    print(f"gpubptt diagnose: cell={r.cell}, T={args.seq_len}, N={N}, B={args.batch}, D={args.input_size}, "
          f"H={args.hidden}, O={args.output_size}, layers={args.layers}, seed={args.seed}, {dtype.name}, "
          f"backend={r.backend}")
    print("E_N is the squared error at step N alone; the gradient reaching the state of step i, and step i's "
          "summand of dE_N/dWs:")
    dS, dWs = (np.asarray(to_host(a), np.float64) for a in (r.dS_norm, r.block_norms("dWs")))
    dc = None if r.dc_norm is None else np.asarray(to_host(r.dc_norm), np.float64)
    head = f"{'i':>6} {'N-i':>5} {'‖dE_N/dS_i‖':>13}" + (f" {'‖dE_N/dc_i‖':>13}" if lstm else "")
    print(head + f" {'‖term i of dE_N/dWs‖':>22}")
    for k in _rows_to_show(N):
        i = N - k
        row = f"{i:>6} {k:>5} {dS[i - 1]:>13.4e}" + (f" {dc[i - 1]:>13.4e}" if lstm else "")
        print(row + f" {np.sqrt((dWs[i - 1] ** 2).sum()):>22.4e}")
    overflowed = int((~np.isfinite(dS)).sum())
    if overflowed:
        hint = f"; --dtype float64 holds up to {np.finfo(np.float64).max:.3g}" if dtype != np.float64 else ""
        print(f"note: {overflowed} of the {N} norms are not finite: the states or the gradient overflowed "
              f"{dtype.name} (largest {np.finfo(dtype).max:.3g}){hint}")
    rate, scale, used = fit_rate(dS)
    print(f"fitted rate per step: {rate:.4g}  (‖dE_N/dS_i‖ ≈ {scale:.3g} · {rate:.4g}^(N−i), least squares over "
          f"{used} of {N} steps): {_verdict(rate)}")
    if lstm:
        rate_c, scale_c, used_c = fit_rate(dc)
        print(f"fitted rate of ‖dE_N/dc_i‖: {rate_c:.4g}  (over {used_c} of {N} steps): {_verdict(rate_c)}")
    radius = r.spectral_radius
    text = (", ".join(f"{g} {v:.4g}" for g, v in radius.items()) + " (per gate block)"
            if isinstance(radius, dict) else f"{radius:.4g}")
    print(f"spectral radius of {r.keys['Ws']}: {text}")
    if args.out:
        title = (f"gpubptt diagnose: cell={r.cell}, H={args.hidden}, N={N}, B={args.batch}, seed={args.seed}\n"
                 f"spectral radius of Ws: {text}")
        path, note = plot_profile(r, args.out, title)
        print(f"wrote {path}" if path else f"{note}; the table above has the numbers")
    return 0
