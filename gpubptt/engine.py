"""Forward and BPTT for the ``cpu`` and ``cuda`` backends (DESIGN.md §4).

Only the recurrence is sequential. Everything else is one large matrix product over all T·B rows on
the backend's BLAS (NumPy's on the CPU, cuBLAS through CuPy on the GPU). Per layer and direction:

    forward:  U = input Wxᵀ + bx (+ bs)  ->  kernel: the recurrence over time, gates fused
    backward: kernel: the reverse-time recurrence  ->  dWs = Σ_t dRec_tᵀ S_{t-1},
              dWx = Σ_t dU_tᵀ input_t, d input = dU Wx : one product each
and once: Z = S Wyᵀ + by, Y = g2(Z); dWy = Σ_t dZ_tᵀ S_t, dS = dZ Wy.

A layer's input is a list of parts: [x] for layer 0, the layer below's directions [S_fwd, S_rev]
above it; products with a concatenation are sums of products with the parts, so nothing is
concatenated. Arrays are validated, contiguous and of one dtype; ``be.xp`` is NumPy or CuPy.

Saved for backward (rule 5), per layer and direction: the states h [T,B,H] (and c for LSTM), the gate
activations [T,B,G·H] (LSTM, GRU; written over U in place) and Ws_n h + bs_n [T,B,H] (GRU). Backward
reuses those buffers in place for the gradients.
"""
from dataclasses import dataclass

from . import losses
from .kernels.activations import CODES
from .params import gates, layer_suffixes


@dataclass(frozen=True)
class Structure:
    cell: str
    num_layers: int
    bidirectional: bool
    hidden_size: int
    bias: bool

    @property
    def dirs(self):
        return 2 if self.bidirectional else 1


class _Elman:
    """S_t = g1(U_t + S_{t-1} Wsᵀ); gradients of the pre-activation serve Wx, bx, Ws and bs alike."""

    family, fuse_bs = "elman", True

    def forward(self, k, U, p, sfx, s0, lengths, reverse, cell, xp):
        k.forward_recurrence(U, xp.ascontiguousarray(p["Ws" + sfx].T), s0, lengths, reverse, CODES[cell], U)
        return {"h": U}

    def backward(self, k, dH, st, p, sfx, s0, lengths, reverse, cell, truncate, clip, xp):
        ds0 = xp.empty_like(s0)
        k.backward_recurrence(dH, p["Ws" + sfx], st["h"], lengths, reverse, CODES[cell], truncate, clip, dH, ds0)
        return dH, [(slice(None), dH)], ds0


class _LSTM:
    family, fuse_bs = "lstm", True

    def forward(self, k, U, p, sfx, s0, lengths, reverse, cell, xp):
        h0, c0 = s0
        shape = U.shape[:2] + h0.shape[1:]
        Hs, Cs = xp.empty(shape, dtype=U.dtype), xp.empty(shape, dtype=U.dtype)
        k.forward_recurrence(U, xp.ascontiguousarray(p["Ws" + sfx].T), h0, c0, lengths, reverse, Hs, Cs)
        return {"h": Hs, "c": Cs, "gates": U}

    def backward(self, k, dH, st, p, sfx, s0, lengths, reverse, cell, truncate, clip, xp):
        dh0, dc0 = xp.empty_like(s0[0]), xp.empty_like(s0[1])
        dG = st["gates"]
        k.backward_recurrence(dH, p["Ws" + sfx], dG, st["h"], st["c"], s0[1], lengths, reverse, truncate, clip,
                              dG, dh0, dc0)
        return dG, [(slice(None), dG)], (dh0, dc0)


class _GRU:
    """bs stays out of U: bs_n sits inside the reset gate, n = tanh(U_n + r ⊙ (Ws_n h + bs_n))."""

    family, fuse_bs = "gru", False

    def forward(self, k, U, p, sfx, s0, lengths, reverse, cell, xp):
        H = s0.shape[1]
        Hs, Gn = xp.empty(U.shape[:2] + (H,), dtype=U.dtype), xp.empty(U.shape[:2] + (H,), dtype=U.dtype)
        bs = p["bs" + sfx] if "bs" + sfx in p else xp.zeros(3 * H, dtype=U.dtype)
        k.forward_recurrence(U, xp.ascontiguousarray(p["Ws" + sfx].T), bs, s0, lengths, reverse, Hs, Gn)
        return {"h": Hs, "gates": U, "gn": Gn}

    def backward(self, k, dH, st, p, sfx, s0, lengths, reverse, cell, truncate, clip, xp):
        H = s0.shape[1]
        dRec, dNx = st["gates"], st["gn"]
        ds0 = xp.empty_like(s0)
        k.backward_recurrence(dH, p["Ws" + sfx], st["gates"], st["gn"], st["h"], s0, lengths, reverse, truncate,
                              clip, dRec, dNx, ds0)
        T, B = dRec.shape[:2]
        # the input pre-activations' gradient: r, z as the recurrent ones, n its own
        return dRec, [(slice(0, 2 * H), dRec.reshape(T * B, 3 * H)[:, : 2 * H]), (slice(2 * H, 3 * H), dNx)], ds0


CELL_OPS = {"lstm": _LSTM(), "gru": _GRU()}


def _ops(cell):
    return CELL_OPS.get(cell, _Elman())


def _rows(a):
    """[T,B,...] -> [T·B, last] (a view when possible)."""
    return a.reshape(-1, a.shape[-1])


def _product_with_parts(parts, W, mm):
    """Σ_q parts[q] W[:, cols_q]ᵀ over [T·B, ·] rows: the product with the concatenated parts."""
    out, col = None, 0
    for part in parts:
        width = part.shape[-1]
        term = mm(_rows(part), W[:, col:col + width], trans_b=True)
        out = term if out is None else out + term
        col += width
    return out


def forward(params, x, states0, lengths, structure, output_activation, be):
    """Run every layer and the output layer. Returns (Y, Z, top, saved): ``top`` the last layer's
    states per direction ([T,B,H] each), ``saved`` per layer a list per direction of what backward needs."""
    xp, p, st = be.xp, params, structure
    T, B, _ = x.shape
    H, G = st.hidden_size, gates(st.cell)
    ops = _ops(st.cell)
    k, mm = be.kernels(ops.family), be.kernels("linalg").matmul
    parts, saved = [x], []
    for layer in range(st.num_layers):
        layer_saved = []
        for _, direction, sfx in layer_suffixes(st.num_layers, st.bidirectional)[layer * st.dirs:(layer + 1) * st.dirs]:
            U = _product_with_parts(parts, p["Wx" + sfx], mm)  # [T·B, G·H]: every step's input product at once
            if st.bias:
                U += p["bx" + sfx] + p["bs" + sfx] if ops.fuse_bs else p["bx" + sfx]
            U = U.reshape(T, B, G * H)
            s0 = states0[layer * st.dirs + direction]
            layer_saved.append(ops.forward(k, U, p, sfx, s0, lengths, direction, st.cell, xp))
        saved.append(layer_saved)
        parts = [s["h"] for s in layer_saved]
    Z = (_product_with_parts(parts, p["Wy"], mm) + p["by"]).reshape(T, B, -1)
    return losses.output_activation(Z, output_activation, xp), Z, parts, saved


def final_states(saved, structure, state_step):
    """The state after step ``state_step`` (forward direction) or at the end, per layer and direction,
    in the structure of states0: h [B,H] (or (h, c) for LSTM)."""
    out = []
    for layer_saved in saved:
        for direction, s in enumerate(layer_saved):
            t = 0 if direction else state_step - 1
            out.append((s["h"][t], s["c"][t]) if "c" in s else s["h"][t])
    return out


def backward(params, x, states0, lengths, structure, saved, top, dZ, truncate, clip, be, return_deltas=False):
    """Gradients of every parameter, of x and of each initial state, from dL/dZ.

    With ``return_deltas=True`` a third result lists per layer and direction (in ``layer_suffixes``
    order) what the kernel wrote: (dRec, dU_blocks), dRec [T,B,G·H] the gradients of the recurrent
    pre-activations (Σ_t dRec_tᵀ S_prev(t) = dWs) and dU_blocks [(gate rows, dU)] those of the input
    pre-activations (Σ_t dU_tᵀ input_t = dWx[rows]; dU [T,B,rows] or its [T·B,rows] view): per step
    t, before the sums over t and b (used by gpubptt.diagnostics)."""
    xp, p, st = be.xp, params, structure
    T, B, D = x.shape
    H = st.hidden_size
    ops = _ops(st.cell)
    k, mm = be.kernels(ops.family), be.kernels("linalg").matmul
    dZ2 = _rows(dZ)
    grads = {"Wy": xp.empty_like(p["Wy"]), "by": dZ2.sum(axis=0)}
    dparts = []  # dL/d(output of each direction of the layer above's input)
    for direction, S in enumerate(top):
        grads["Wy"][:, direction * H:(direction + 1) * H] = mm(dZ2, _rows(S), trans_a=True)
        dparts.append(mm(dZ2, p["Wy"][:, direction * H:(direction + 1) * H]).reshape(T, B, H))
    ds0 = [None] * (st.num_layers * st.dirs)
    deltas = [None] * (st.num_layers * st.dirs)
    suffixes = layer_suffixes(st.num_layers, st.bidirectional)
    for layer in reversed(range(st.num_layers)):
        parts = [x] if layer == 0 else [s["h"] for s in saved[layer - 1]]
        dinputs = [None] * len(parts)
        for _, direction, sfx in suffixes[layer * st.dirs:(layer + 1) * st.dirs]:
            s, idx = saved[layer][direction], layer * st.dirs + direction
            s0 = states0[idx]
            dRec, dU_blocks, ds0[idx] = ops.backward(k, dparts[direction], s, p, sfx, s0, lengths, direction,
                                                     st.cell, truncate, clip, xp)
            deltas[idx] = (dRec, dU_blocks)
            grads["Ws" + sfx] = _recurrent_weight_grad(dRec, s["h"], s0[0] if isinstance(s0, tuple) else s0,
                                                       direction, mm)
            Wx = p["Wx" + sfx]
            grads["Wx" + sfx] = dWx = xp.empty_like(Wx)
            dbx = xp.empty_like(Wx[:, 0])
            for rows, dU in dU_blocks:
                dU = _rows(dU)
                dbx[rows] = dU.sum(axis=0)
                col = 0
                for q, part in enumerate(parts):
                    width = part.shape[-1]
                    dWx[rows, col:col + width] = mm(dU, _rows(part), trans_a=True)
                    term = mm(dU, Wx[rows, col:col + width]).reshape(part.shape)
                    dinputs[q] = term if dinputs[q] is None else dinputs[q] + term
                    col += width
            if st.bias:
                grads["bx" + sfx] = dbx
                # with bs folded into U (Elman, LSTM) its gradient is bx's; GRU's differs in the n block
                grads["bs" + sfx] = dbx.copy() if ops.fuse_bs else _rows(dRec).sum(axis=0)
        dparts = dinputs
    grads["x"] = dparts[0]
    return (grads, ds0, deltas) if return_deltas else (grads, ds0)


def _recurrent_weight_grad(dRec, S, s0, reverse, mm):
    """Σ_t dRec_tᵀ S_prev(t): the state before step t is S_{t-1} forward (S0 at t = 0) and S_{t+1} in
    reverse (S0 at t = T-1; past a sequence's end the reverse direction's states hold S0, so the
    shift is right for every length)."""
    T = dRec.shape[0]
    later, earlier = slice(1, T), slice(0, T - 1)
    steps, states = (earlier, later) if reverse else (later, earlier)
    dWs = mm(dRec[T - 1 if reverse else 0], s0, trans_a=True)
    if T > 1:
        dWs += mm(_rows(dRec[steps]), _rows(S[states]), trans_a=True)
    return dWs
