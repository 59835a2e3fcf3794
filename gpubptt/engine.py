"""Forward and BPTT for the ``cpu`` and ``cuda`` backends (DESIGN.md §4).

Only the recurrence is sequential. Everything else is large matrix products over many of the T·B
rows (on the CPU SciPy's BLAS or the register-blocked product, ``kernels/linalg_cpu.py``; cuBLAS
through CuPy on the GPU): over all rows, over a time chunk's in backward (``time_chunks``), or formed
inside the CPU kernels (``from_input``, ``backward_top``). Per layer and direction:

    forward:  U = input Wxᵀ + bx (+ bs)  ->  kernel: the recurrence over time, gates fused
              (Elman with a one-part input: the kernels take the input and Wx, ``from_input``; the CPU
              kernels form each step's input product in the time loop when D is small enough)
    backward: kernel: the reverse-time recurrence  ->  dWs = Σ_t dRec_tᵀ S_{t-1},
              dWx = Σ_t dU_tᵀ input_t, d input = dU Wx : one product each (a time chunk's)
and for the output layer: Z = S Wyᵀ + by, Y = g2(Z); dWy = Σ_t dZ_tᵀ S_t, dS = dZ Wy (per chunk).

A layer's input is a list of parts: [x] for layer 0, the layer below's directions [S_fwd, S_rev]
above it; products with a concatenation are sums of products with the parts, so nothing is
concatenated. Arrays are validated, contiguous and of one dtype; ``be.xp`` is NumPy or CuPy.

Saved for backward (rule 5), per layer and direction: the states h [T,B,H] (and c for LSTM), the gate
activations [T,B,G·H] (LSTM, GRU; written over U in place) and Ws_n h + bs_n [T,B,H] (GRU). Backward
reuses those buffers in place for the gradients.

Backward runs the time in a few chunks, latest first (``time_chunks``; Elman and GRU): dL/dS_t from
above, the reverse-time recurrence and every product of a chunk are done before the next chunk's
dL/dS_t exists, so that gradient is never whole ([T,B,H] beside the saved states would double the
Elman cell's memory); dL/d(the state before a chunk) is added to the next chunk's last processed step.
A kernel module may take the top layer's whole direction instead (``takes_top``, ``backward_top``:
the CPU Elman kernels, where the chunks' calls and passes over memory cost more than the products
lose by being formed inside the kernel).
"""
from dataclasses import dataclass

from . import losses
from .kernels.activations import CODES, passes, states_before
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
    """S_t = g1(U_t + S_{t-1} Wsᵀ); gradients of the pre-activation serve Wx, bx, Ws and bs alike.

    A cell's ``backward`` runs the steps of one time chunk (``pos``, positions; see ``time_chunks``) from
    dH, dL/d(the chunk's states) not counting the later steps; s0 the state before the chunk. It
    returns dRec (the recurrent pre-activations' gradients), the input ones' as [(gate rows, dU)],
    and dL/d(the state before the chunk). ``chunks``: whether the cell's state is the h alone, so
    that dL/dh passes from chunk to chunk through dH (LSTM's c would need a kernel input too)."""

    family, fuse_bs, chunks, from_input = "elman", True, True, True

    def forward(self, k, U, p, sfx, s0, lengths, reverse, cell, xp):
        k.forward_recurrence(U, p["Ws" + sfx], s0, lengths, reverse, CODES[cell], U)
        return {"h": U}

    def forward_from_input(self, k, X, bias, p, sfx, s0, lengths, reverse, cell, xp):
        S = xp.empty(X.shape[:2] + s0.shape[1:], dtype=X.dtype)
        k.forward_recurrence_from_input(X, p["Wx" + sfx], bias, p["Ws" + sfx], s0, lengths, reverse, CODES[cell], S)
        return {"h": S}

    def backward(self, k, dH, st, pos, p, sfx, s0, lengths, reverse, cell, truncate, clip, xp):
        ds0 = xp.empty_like(s0)
        k.backward_recurrence(dH, p["Ws" + sfx], st["h"][pos], lengths, reverse, CODES[cell], truncate, clip, dH, ds0)
        return dH, [(slice(None), dH)], ds0


class _LSTM:
    family, fuse_bs, chunks, from_input = "lstm", True, False, False

    def forward(self, k, U, p, sfx, s0, lengths, reverse, cell, xp):
        h0, c0 = s0
        shape = U.shape[:2] + h0.shape[1:]
        Hs, Cs = xp.empty(shape, dtype=U.dtype), xp.empty(shape, dtype=U.dtype)
        k.forward_recurrence(U, p["Ws" + sfx], h0, c0, lengths, reverse, Hs, Cs)
        return {"h": Hs, "c": Cs, "gates": U}

    def backward(self, k, dH, st, pos, p, sfx, s0, lengths, reverse, cell, truncate, clip, xp):
        dh0, dc0 = xp.empty_like(s0[0]), xp.empty_like(s0[1])
        dG = st["gates"]
        k.backward_recurrence(dH, p["Ws" + sfx], dG, st["h"], st["c"], s0[1], lengths, reverse, truncate, clip,
                              dG, dh0, dc0)
        return dG, [(slice(None), dG)], (dh0, dc0)


class _GRU:
    """bs stays out of U: bs_n sits inside the reset gate, n = tanh(U_n + r ⊙ (Ws_n h + bs_n))."""

    family, fuse_bs, chunks, from_input = "gru", False, True, False

    def forward(self, k, U, p, sfx, s0, lengths, reverse, cell, xp):
        H = s0.shape[1]
        Hs, Gn = xp.empty(U.shape[:2] + (H,), dtype=U.dtype), xp.empty(U.shape[:2] + (H,), dtype=U.dtype)
        bs = p["bs" + sfx] if "bs" + sfx in p else xp.zeros(3 * H, dtype=U.dtype)
        k.forward_recurrence(U, p["Ws" + sfx], bs, s0, lengths, reverse, Hs, Gn)
        return {"h": Hs, "gates": U, "gn": Gn}

    def backward(self, k, dH, st, pos, p, sfx, s0, lengths, reverse, cell, truncate, clip, xp):
        H = s0.shape[1]
        dRec, dNx = st["gates"][pos], st["gn"][pos]  # written over the saved gates
        ds0 = xp.empty_like(s0)
        k.backward_recurrence(dH, p["Ws" + sfx], dRec, dNx, st["h"][pos], s0, lengths, reverse, truncate,
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


def _product_with_parts(parts, W, mm, bias=None):
    """Σ_q parts[q] W[:, cols_q]ᵀ (+ bias) over [T·B, ·] rows: the product with the concatenated parts."""
    out, col = None, 0
    for part in parts:
        width = part.shape[-1]
        if out is None:
            out = mm(_rows(part), W[:, col:col + width], trans_b=True, bias=bias)
        else:
            mm(_rows(part), W[:, col:col + width], trans_b=True, out=out, accumulate=True)
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
            bias = None
            if st.bias:
                bias = p["bx" + sfx] + p["bs" + sfx] if ops.fuse_bs else p["bx" + sfx]
            s0 = states0[layer * st.dirs + direction]
            if ops.from_input and len(parts) == 1:  # the kernels take the input product (in the time loop)
                layer_saved.append(ops.forward_from_input(k, parts[0], bias, p, sfx, s0, lengths, direction, st.cell, xp))
                continue
            U = _product_with_parts(parts, p["Wx" + sfx], mm, bias)  # [T·B, G·H]: every step's input product at once
            U = U.reshape(T, B, G * H)
            layer_saved.append(ops.forward(k, U, p, sfx, s0, lengths, direction, st.cell, xp))
        saved.append(layer_saved)
        parts = [s["h"] for s in layer_saved]
    Z = _product_with_parts(parts, p["Wy"], mm, p["by"]).reshape(T, B, -1)
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


def backward(params, x, states0, lengths, structure, saved, top, dZ, truncate, clip, be, return_deltas=False,
             full_lengths=False):
    """Gradients of every parameter, of x and of each initial state, from dL/dZ.

    ``full_lengths``: the caller knows every length is T (lets the reverse direction run in time
    chunks, see ``time_chunks``).

    With ``return_deltas=True`` a third result lists per layer and direction (in ``layer_suffixes``
    order) what the kernel wrote: (dRec, dU_blocks), dRec [T,B,G·H] the gradients of the recurrent
    pre-activations (Σ_t dRec_tᵀ S_prev(t) = dWs) and dU_blocks [(gate rows, dU)] those of the input
    pre-activations (Σ_t dU_tᵀ input_t = dWx[rows]; dU [T,B,rows] or its [T·B,rows] view): per step
    t, before the sums over t and b (used by gpubptt.diagnostics; the time then runs in one chunk)."""
    xp, p, st = be.xp, params, structure
    T, B, D = x.shape
    H = st.hidden_size
    ops = _ops(st.cell)
    k, linalg = be.kernels(ops.family), be.kernels("linalg")
    mm, sums = linalg.matmul, linalg.column_sums
    dZ2 = _rows(dZ)
    grads = {"Wy": xp.empty_like(p["Wy"]), "by": sums(dZ2)}
    for direction, S in enumerate(top):
        mm(dZ2, _rows(S), trans_a=True, out=grads["Wy"][:, direction * H:(direction + 1) * H])

    def upstream_top(direction, pos, out):  # dL/dS_t through the output layer, one time chunk at a time
        Wy = p["Wy"][:, direction * H:(direction + 1) * H]
        rows = (pos.stop - pos.start) * B
        return mm(dZ2[pos.start * B:pos.stop * B], Wy, out=out[:rows]).reshape(pos.stop - pos.start, B, H)

    upstream = upstream_top
    ds0 = [None] * (st.num_layers * st.dirs)
    deltas = [None] * (st.num_layers * st.dirs)
    suffixes = layer_suffixes(st.num_layers, st.bidirectional)
    for layer in reversed(range(st.num_layers)):
        parts = [x] if layer == 0 else [s["h"] for s in saved[layer - 1]]
        dinputs = [xp.empty_like(part) for part in parts]  # dL/d(each part), written chunk by chunk
        for _, direction, sfx in suffixes[layer * st.dirs:(layer + 1) * st.dirs]:
            s, idx = saved[layer][direction], layer * st.dirs + direction
            s0 = states0[idx]
            h0 = s0[0] if isinstance(s0, tuple) else s0
            chunks = [(0, T)]
            if ops.chunks and not return_deltas and (full_lengths or not direction):
                chunks = time_chunks(T, B, H, x.dtype.itemsize, truncate)
            Wx, Ws = p["Wx" + sfx], p["Ws" + sfx]
            dWs = dWx = None  # made once the first kernel has returned (its scratch, a packed Ws, gone then), or by it
            dbx = xp.empty_like(Wx[:, 0]) if st.bias else None
            dbs = xp.empty_like(Ws[:, 0]) if st.bias and not ops.fuse_bs else None  # GRU: Σ dRec (bs_n's differs)
            carry = None  # dL/d(the state before the chunk done last), passed on to the next chunk
            if (layer == st.num_layers - 1 and len(parts) == 1 and not return_deltas
                    and getattr(k, "takes_top", lambda *_: False)(s["h"], Ws, Wx, full_lengths or not direction)):
                # the kernel module runs the whole direction, products included, in one call
                ds0[idx] = xp.empty_like(h0)
                dWs, dWx = k.backward_top(dZ, p["Wy"][:, direction * H:(direction + 1) * H], Ws, Wx, s["h"], h0,
                                          parts[0], lengths, direction, CODES[st.cell], truncate, clip,
                                          xp.empty_like(Ws[:, 0]) if dbx is None else dbx, dinputs[0], direction,
                                          ds0[idx])
                chunks = []
            # the top layer's chunks take turns in one buffer (a new array each made a heap fragmented
            # by earlier calls grow: measured peak memory 1.84x the bound at (16,50,128,512) after the
            # bench's other shapes, 1.18x in a fresh process)
            longest = max((i1 - i0 for i0, i1 in chunks), default=0)
            buffer = xp.empty((longest * B, H), dtype=x.dtype) if layer == st.num_layers - 1 and chunks else None
            for i0, i1 in reversed(chunks):
                pos = slice(T - i1, T - i0) if direction else slice(i0, i1)
                dH = upstream(direction, pos, buffer)
                if carry is not None:
                    dH[0 if direction else -1] += carry  # the chunk's first processed step is its last
                first, add = i0 == 0, i1 < T  # add: a chunk done before wrote the sums
                before = s0 if first else s["h"][T - i0 if direction else i0 - 1]  # the state before the chunk
                c_lengths = lengths
                if len(chunks) > 1:
                    c_lengths = xp.clip(lengths - i0, 0, i1 - i0).astype(lengths.dtype, copy=False)
                dRec, dU_blocks, dstate = ops.backward(k, dH, s, pos, p, sfx, before, c_lengths, direction, st.cell,
                                                       truncate, clip, xp)
                if dWs is None:
                    dWs, dWx = xp.empty_like(Ws), xp.empty_like(Wx)
                carry = dstate if passes(i0, truncate) else None
                if first:
                    ds0[idx] = dstate
                if dbs is not None:
                    _add_or_write(dbs, add, sums(_rows(dRec)))
                _recurrent_weight_grad(dWs, add, dRec, s["h"], h0, pos.start, direction, mm)
                for block, (rows, dU) in enumerate(dU_blocks):
                    dU = _rows(dU)
                    if dbx is not None:
                        _add_or_write(dbx[rows], add, sums(dU))
                    col = 0
                    for q, part in enumerate(parts):
                        width = part.shape[-1]
                        mm(dU, _rows(part[pos]), trans_a=True, out=dWx[rows, col:col + width], accumulate=add)
                        mm(dU, Wx[rows, col:col + width], out=_rows(dinputs[q][pos]), accumulate=direction or block)
                        col += width
                if return_deltas:
                    deltas[idx] = (dRec, dU_blocks)
                del dH, dRec, dU_blocks, dU  # before the next chunk's dH is formed
            del buffer  # before the next direction's
            grads["Ws" + sfx], grads["Wx" + sfx] = dWs, dWx
            if st.bias:
                grads["bx" + sfx] = dbx
                # with bs folded into U (Elman, LSTM) its gradient is bx's; GRU's differs in the n block
                grads["bs" + sfx] = dbx.copy() if ops.fuse_bs else dbs
        upstream = (lambda d, pos, out, dparts=dinputs: dparts[d][pos])
    grads["x"] = dinputs[0]
    return (grads, ds0, deltas) if return_deltas else (grads, ds0)


def _add_or_write(dest, add, value):
    if add:
        dest += value
    else:
        dest[...] = value


def _recurrent_weight_grad(dWs, add, dRec, S, s0, start, reverse, mm):
    """dWs (+)= Σ_t dRec_tᵀ S_prev(t) over the chunk of positions start.. (dRec's rows), the states
    before the steps as ``states_before`` finds them."""
    n, T = dRec.shape[0], S.shape[0]
    lo, a, b = states_before(start, n, T, reverse)
    if a < b:
        mm(_rows(dRec[a - lo:b - lo]), _rows(S[a:b]), trans_a=True, out=dWs, accumulate=add)
    if lo < 0 or lo + n > T:
        mm(dRec[n - 1 if lo + n > T else 0], s0, trans_a=True, out=dWs, accumulate=add or a < b)


# A chunk costs a few calls and a kernel launch, and little weight-sized work: the weight gradients
# are summed in place by BLAS, and the CPU kernels read Ws as it is in backward (kernels/cpu_variants.py,
# backward_weight: a transposed copy only for tiles of fewer than 4 sequences at H < 128, made again for
# each chunk).
# Peak memory of forward + BPTT / lower bound by chunks (1, 2, 3, 4), tanh, float32, 2 cores: (B,T,D,H)
# = (64,50,128,512) 1.82 1.55 1.55 1.34; (128,50,128,512) 1.83 1.48 1.35 1.35; (64,100,64,256) 1.83
# 1.45 1.33 1.26; (4,1000,64,256) 1.82 1.44 1.32 1.21; (64,50,128,128) 1.52 1.31 1.23 1.19;
# (1,1000,8,64) 1.80 1.46 1.28 1.28; (16,50,128,512) 1.48 1.25 1.18 1.14-1.18 at 7.9-9.7, 8.1-8.3,
# 8.2-8.6, 8.8-8.9 ms. Time, same process alternating: (1,1000,8,64) 1.49 1.50 1.47 ms (and 2.03 1.65
# 1.68 in a noisier run); (64,50,128,128) 8.2 ms in one chunk, 9.7 in four (+19 % in that run; 10.6
# against 11.9 in another); (64,50,128,512) 29.7 31.0 - 32.4 ms.
CHUNK_BYTES = 1 << 16  # a chunk's [Tc,B,H] gradient at least this
CHUNK_ROWS_PER_UNIT = 0.5  # and Tc·B at least this many times H
MAX_CHUNKS = 4


def time_chunks(T, B, H, itemsize, truncate):
    """Processing-step ranges [(i0, i1), ...] covering 0..T-1 that backward runs one at a time, so
    that the [T,B,H] gradient reaching the states is never whole: up to MAX_CHUNKS chunks, each of at
    least CHUNK_BYTES and CHUNK_ROWS_PER_UNIT·H rows. Under truncation a chunk holds whole truncation
    windows (the kernels count the window from the chunk's first step)."""
    n = max(1, min(MAX_CHUNKS, T, T * B * H * itemsize // CHUNK_BYTES, int(T * B // (CHUNK_ROWS_PER_UNIT * H))))
    size = -(-T // n)
    if truncate > 0:
        size = -(-size // truncate) * truncate
    return [(i, min(i + size, T)) for i in range(0, T, size)]
