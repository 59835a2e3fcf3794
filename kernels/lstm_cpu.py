"""LSTM recurrences on the CPU (``@njit``), torch.nn.LSTM's equations (gates i, f, g, o).

The caller computes U = x Wxᵀ + bx + bs for every step in one product; these loops add h_{t-1} Wsᵀ,
apply the gates (shared scalar math in activations.py) and run backwards for the gate gradients.
Conventions (lengths, reverse, truncate, clip) and the two ways to split the work (``loops``,
``blas``: cpu_variants.py) as in ``elman_cpu.py``, and a third that the gated cells (LSTM, GRU)
share, for small batches and large weights (``units``: the hidden units shared among the threads at
every step); the per-step clipping acts on the whole backpropagated state gradient (dL/dh_t,
dL/dc_t). Twins: ``lstm_cuda.py`` (the units variant is CPU-only: it changes which thread does what,
not the arguments).
"""
import numpy as np
from numba import njit, prange

from . import cache, cpu_variants  # noqa: F401 (cache: before any function is compiled)

_scalar = cpu_variants.compile_activations()
lstm_state = _scalar.lstm_state
sigmoid = _scalar.sigmoid
tanh = _scalar.tanh
lstm_pointwise_backward = _scalar.lstm_pointwise_backward
position = _scalar.position
passes = _scalar.passes
clip_scale = _scalar.clip_scale


@njit(**cpu_variants.JIT_OPTIONS)
def _cell(U, t, b, rec, c, h, Hs, Cs, one):
    """Gates of step t of sequence b from U[t,b] + rec (the recurrent products); writes the gates over
    U[t,b], the states into Hs, Cs and the running state c, h. The formulas of ``lstm_pointwise`` in
    three loops the compiler vectorises: the gates (in rec), the states, the stores. Measured per
    unit, H = 256: ~0.8 ns; one loop doing it all (lstm_pointwise per unit) ran scalar, ~12 ns (too
    many arrays read and written at once for the compiler's overlap checks), and so did loops over
    ``range(2 * H, 3 * H)``, ~4 ns (a loop vectorises here only when it starts at 0)."""
    H = c.size
    for j in range(H):
        rec[j] = sigmoid(rec[j] + U[t, b, j], one)
        rec[H + j] = sigmoid(rec[H + j] + U[t, b, H + j], one)
        rec[2 * H + j] = tanh(rec[2 * H + j] + U[t, b, 2 * H + j], one)
        rec[3 * H + j] = sigmoid(rec[3 * H + j] + U[t, b, 3 * H + j], one)
    for j in range(H):
        c[j], h[j] = lstm_state(rec[j], rec[H + j], rec[2 * H + j], rec[3 * H + j], c[j], one)
    for j in range(4 * H):
        U[t, b, j] = rec[j]
    for j in range(H):
        Cs[t, b, j] = c[j]
        Hs[t, b, j] = h[j]


@njit(**cpu_variants.JIT_OPTIONS)
def _cell_backward(G, Cs, C0, t, tp, first, b, dh, dcn, scale, dG, last):
    """Gate gradients of step t of sequence b from dh = dL/dh_t and dcn = dL/dc_t through c_{t+1}
    (both rescaled by ``scale``); writes them into dG[t,b] and ``last``, and carries dcn to t-1."""
    H = dh.size
    one = G.dtype.type(1.0)
    for j in range(H):
        gf = G[t, b, H + j]
        c_prev = C0[b, j] if first else Cs[tp, b, j]
        di, df, dg, do, dc = lstm_pointwise_backward(dh[j] * scale, dcn[j] * scale, G[t, b, j], gf,
                                                     G[t, b, 2 * H + j], G[t, b, 3 * H + j], Cs[t, b, j], c_prev,
                                                     one)
        last[j] = di
        last[H + j] = df
        last[2 * H + j] = dg
        last[3 * H + j] = do
        dcn[j] = dc * gf
    dG[t, b] = last


@njit(**cpu_variants.JIT_OPTIONS)
def _clip_scale(dh, dcn, clip, one):
    if clip <= 0:
        return one
    sumsq = one - one
    for j in range(dh.size):
        sumsq += dh[j] * dh[j] + dcn[j] * dcn[j]
    return clip_scale(sumsq, clip, one)


def _forward_loops(U, Ws, H0, C0, lengths, reverse, Hs, Cs, tile, shares):
    """Each of ``shares`` threads runs a contiguous run of tiles of ``tile`` sequences, all of them
    one step at a time (``cpu_variants.share_of``); Ws [4H,H] untransposed."""
    T, B, G = U.shape
    one = U.dtype.type(1.0)
    for share in prange(shares):
        lo, hi = cpu_variants.share_of(share, shares, B, tile)
        h = H0[lo:hi].copy()
        c = C0[lo:hi].copy()
        rec = np.empty((tile, G), dtype=U.dtype)
        shortest = lengths[lo:hi].min()
        for i in range(T):
            for first in range(lo, hi, tile):
                n = min(tile, hi - first)
                a, z = first - lo, first - lo + n
                cpu_variants.tile_products(Ws, h[a:z], n, rec)
                _forward_step(U, lengths, reverse, Hs, Cs, i, first, rec, c[a:z], h[a:z], n, one)
                if i >= shortest:
                    cpu_variants.past_end(H0, lengths, reverse, Hs, i, first, h[a:z], n)
                    cpu_variants.past_end(C0, lengths, reverse, Cs, i, first, c[a:z], n)


def _forward_blas(U, WsT, H0, C0, lengths, reverse, Hs, Cs, piece, shares):
    """Each of ``shares`` threads runs a contiguous slice of the batch, its step products as
    ``cpu_variants.products`` forms them for ``piece`` (Wsᵀ from ``transposed_for``)."""
    T, B, G = U.shape
    one = U.dtype.type(1.0)
    for share in prange(shares):
        first, end = cpu_variants.share_of(share, shares, B, 1)
        h = H0[first:end].copy()
        c = C0[first:end].copy()
        rec = np.empty((end - first, G), dtype=U.dtype)
        shortest = lengths[first:end].min()
        for i in range(T):
            cpu_variants.products(h, WsT, rec, piece)
            _forward_step(U, lengths, reverse, Hs, Cs, i, first, rec, c, h, end - first, one)
            if i >= shortest:
                cpu_variants.past_end(H0, lengths, reverse, Hs, i, first, h, end - first)
                cpu_variants.past_end(C0, lengths, reverse, Cs, i, first, c, end - first)


@njit(**cpu_variants.JIT_OPTIONS)
def _forward_step(U, lengths, reverse, Hs, Cs, i, first, rec, c, h, n, one):
    """Step i of sequences first..first+n-1 from their recurrent products rec[q] = h[q] Wsᵀ (those not
    past their end: cpu_variants.past_end)."""
    for q in range(n):
        b = first + q
        L = lengths[b]
        if i < L:
            _cell(U, position(i, L, reverse), b, rec[q], c[q], h[q], Hs, Cs, one)


def _backward_loops(dH_out, W, W_transposed, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0, tile,
                    shares):
    """As ``_forward_loops``, backwards in time; W, W_transposed from cpu_variants.backward_weight (Ws
    [4H,H] or its transpose)."""
    T, B, Gs = G.shape
    H = Gs // 4
    for share in prange(shares):
        lo, hi = cpu_variants.share_of(share, shares, B, tile)
        last = np.zeros((hi - lo, Gs), dtype=G.dtype)  # dG of the later step
        dh = np.empty((tile, H), dtype=G.dtype)  # a tile's last Ws, then dL/dh_t
        dcn = np.zeros((hi - lo, H), dtype=G.dtype)  # dL/dc_t through c_{t+1}
        shortest = lengths[lo:hi].min()
        for i in range(T - 1, -1, -1):
            flows = passes(i + 1, truncate)  # step i+1 starts a chunk of the truncation: nothing flows back
            if not flows:
                dcn[:] = 0
            for first in range(lo, hi, tile):
                n = min(tile, hi - first)
                a, z = first - lo, first - lo + n
                if flows:
                    cpu_variants.backward_products(W, W_transposed, last[a:z], n, dh)
                else:
                    dh[:] = 0
                _backward_step(dH_out, G, Cs, C0, lengths, reverse, clip, dG, i, first, last[a:z], dh, dcn[a:z], n)
                if i >= shortest:
                    cpu_variants.zero_past_end(lengths, i, first, n, dG, last[a:z])
                    cpu_variants.zero_past_end(lengths, i, first, n, dG, dcn[a:z])
        for first in range(lo, hi, tile):
            n = min(tile, hi - first)
            a, z = first - lo, first - lo + n
            cpu_variants.backward_products(W, W_transposed, last[a:z], n, dh)
            dH0[first:first + n] = dh[:n]
            dC0[first:first + n] = dcn[a:z]


def _backward_blas(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0, piece, shares):
    """Each of ``shares`` threads runs a contiguous slice of the batch, its step products as
    ``cpu_variants.products`` forms them for ``piece`` (Ws as it lies)."""
    T, B, Gs = G.shape
    H = Gs // 4
    for share in prange(shares):
        first, end = cpu_variants.share_of(share, shares, B, 1)
        last = np.zeros((end - first, Gs), dtype=G.dtype)  # dG of the later step
        dh = np.zeros((end - first, H), dtype=G.dtype)  # last Ws, then dL/dh_t
        dcn = np.zeros((end - first, H), dtype=G.dtype)  # dL/dc_t through c_{t+1}
        shortest = lengths[first:end].min()
        for i in range(T - 1, -1, -1):
            if not passes(i + 1, truncate):
                dh[:] = 0
                dcn[:] = 0
            else:
                cpu_variants.products(last, Ws, dh, piece)
            _backward_step(dH_out, G, Cs, C0, lengths, reverse, clip, dG, i, first, last, dh, dcn, end - first)
            if i >= shortest:
                cpu_variants.zero_past_end(lengths, i, first, end - first, dG, last)
                cpu_variants.zero_past_end(lengths, i, first, end - first, dG, dcn)
        cpu_variants.products(last, Ws, dH0[first:end], piece)
        dC0[first:end] = dcn


@njit(**cpu_variants.JIT_OPTIONS)
def _backward_step(dH_out, G, Cs, C0, lengths, reverse, clip, dG, i, first, last, dh, dcn, n):
    """Step i (backwards) of sequences first..first+n-1 from dh[q] = (the later step's dG) Ws (those not
    past their end: cpu_variants.zero_past_end)."""
    H = dh.shape[1]
    one = G.dtype.type(1.0)
    for q in range(n):
        b = first + q
        L = lengths[b]
        if i >= L:
            continue
        t = position(i, L, reverse)
        for j in range(H):
            dh[q, j] += dH_out[t, b, j]
        _cell_backward(G, Cs, C0, t, position(i - 1, L, reverse), i == 0, b, dh[q], dcn[q],
                       _clip_scale(dh[q], dcn[q], clip, one), dG, last[q])


@njit(**cpu_variants.JIT_OPTIONS)
def _cell_units(U, t, b, rec, c, h, Hs, Cs, one, u0):
    """``_cell`` for the units u0..u0+n-1 (n = c.size) alone, the units variant's: rec their
    recurrent products ([i, f, g, o] of those units, 4n), c and h their values. Its loops run over
    views of each gate's n values (``_gate_views``): loops over U[t, b, g * H + u0 + j], or over one
    view of U[t, b, u0:] at g * H + j, ran at 5.9 and 5.2 ns a unit against 2.6 (H = 256, 64
    sequences). A function of its own: ``_cell`` written so for any units cost the other variants
    the views' making, ~10 of them a row and step (forward + BPTT at (B,T,D,H) = (1,1000,8,64) 3.1 ->
    3.3 ms)."""
    n = c.size
    ui, uf, ug, uo = _gate_views(U[t, b], u0, n)
    ri, rf, rg, ro = _gate_views(rec, 0, n)
    for j in range(n):
        ri[j] = sigmoid(ri[j] + ui[j], one)
        rf[j] = sigmoid(rf[j] + uf[j], one)
        rg[j] = tanh(rg[j] + ug[j], one)
        ro[j] = sigmoid(ro[j] + uo[j], one)
    for j in range(n):
        c[j], h[j] = lstm_state(ri[j], rf[j], rg[j], ro[j], c[j], one)
    for j in range(n):
        ui[j] = ri[j]
        uf[j] = rf[j]
        ug[j] = rg[j]
        uo[j] = ro[j]
    cs, hs = Cs[t, b, u0:u0 + n], Hs[t, b, u0:u0 + n]
    for j in range(n):
        cs[j] = c[j]
        hs[j] = h[j]


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _gate_views(row, u0, n):
    """The views of units u0..u0+n-1 of gates i, f, g, o in a row of 4 blocks of row.size / 4 units."""
    H = row.size // 4
    return (row[u0:u0 + n], row[H + u0:H + u0 + n], row[2 * H + u0:2 * H + u0 + n],
            row[3 * H + u0:3 * H + u0 + n])


@njit(**cpu_variants.JIT_OPTIONS)
def _cell_backward_units(G, Cs, C0, t, tp, first, b, dh, dcn, scale, dG, last, u0):
    """``_cell_backward`` for the units u0..u0+n-1 (n = dh.size) alone, the units variant's: dh and
    dcn their values, ``last`` a whole row ([i, f, g, o] of every unit). Over views of each gate's
    n values, as ``_cell_units``."""
    n = dh.size
    one = G.dtype.type(1.0)
    gi, gf, gg, go = _gate_views(G[t, b], u0, n)
    di, df, dg, do = _gate_views(last, u0, n)
    c, c_prev = Cs[t, b, u0:u0 + n], C0[b, u0:u0 + n] if first else Cs[tp, b, u0:u0 + n]
    for j in range(n):
        di[j], df[j], dg[j], do[j], dc = lstm_pointwise_backward(dh[j] * scale, dcn[j] * scale, gi[j], gf[j], gg[j],
                                                                  go[j], c[j], c_prev[j], one)
        dcn[j] = dc * gf[j]
    oi, of, og, oo = _gate_views(dG[t, b], u0, n)
    for j in range(n):
        oi[j] = di[j]
        of[j] = df[j]
        og[j] = dg[j]
        oo[j] = do[j]


# The units variant (cpu_variants.py says when and why): each step a parallel region in which each of
# ``slices`` threads runs the units cuts[s]..cuts[s+1]-1 of the whole batch. The hidden state (forward)
# and the gate gradients (backward) that a step's products read are kept in two buffers taken in
# turns, so that no thread writes what another is still reading.
def _forward_units(U, Ws, Wp, cuts, H0, C0, lengths, reverse, Hs, Cs):
    """Wp (``cpu_variants.units_weight``): for thread s's columns of Wsᵀ, the columns of gates i, f,
    g, o of its units one gate after the other, which it packs there itself."""
    T, B, _ = U.shape
    slices = cuts.size - 1
    one = U.dtype.type(1.0)
    for s in prange(slices):
        cpu_variants.pack_units(Ws, Wp, cuts, s, True)
    h, rec = cpu_variants.units_buffers(H0, Wp)
    c = C0.copy()
    for i in range(T):
        prev, now = h[i % 2], h[1 - i % 2]
        for s in prange(slices):
            u0, u1 = cuts[s], cuts[s + 1]
            r = cpu_variants.units_forward_product(prev, Wp, s, u0, u1, 4, rec)
            for b in range(B):
                L = lengths[b]
                if i < L:
                    _cell_units(U, position(i, L, reverse), b, r[b], c[b, u0:u1], now[b, u0:u1], Hs, Cs, one, u0)
                else:  # past the end the state stays put (cpu_variants.past_end)
                    for j in range(u0, u1):
                        now[b, j] = prev[b, j]
                        Hs[i, b, j] = H0[b, j] if reverse else prev[b, j]
                        Cs[i, b, j] = C0[b, j] if reverse else c[b, j]


def _backward_units(dH_out, Ws, Wb, cuts, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    """Wb (``cpu_variants.units_weight``): for thread s's columns of Ws, which it packs there itself.
    With clipping a step takes two regions: the norm of a sequence's state gradient
    sums over every thread's units."""
    T, B, Gs = G.shape
    slices = cuts.size - 1
    for s in prange(slices):
        cpu_variants.pack_units(Ws, Wb, cuts, s, False)
    last, dh, dcn, sumsq = cpu_variants.units_backward_buffers(B, Gs, Gs // 4, slices, G.dtype)
    for i in range(T - 1, -1, -1):
        later, now = last[(i + 1) % 2], last[i % 2]
        flows = passes(i + 1, truncate)  # step i+1 starts a chunk of the truncation: nothing flows back
        for s in prange(slices):
            u0, u1 = cuts[s], cuts[s + 1]
            cpu_variants.units_backward_rows(dH_out, Wb, later, s, u0, u1, flows, lengths, reverse, i, clip, dh, dcn,
                                             sumsq, False)
            if clip <= 0:
                _backward_units_step(G, Cs, C0, lengths, reverse, dG, i, u0, u1, now, dh, dcn, sumsq, clip)
        if clip > 0:
            for s in prange(slices):
                _backward_units_step(G, Cs, C0, lengths, reverse, dG, i, cuts[s], cuts[s + 1], now, dh, dcn, sumsq,
                                     clip)
    for s in prange(slices):  # last[0]: step 0's dG
        cpu_variants.units_backward_end(last[0], Wb, s, cuts[s], cuts[s + 1], dH0, dcn, False)
    dC0[...] = dcn


@njit(**cpu_variants.JIT_OPTIONS)
def _backward_units_step(G, Cs, C0, lengths, reverse, dG, i, u0, u1, now, dh, dcn, sumsq, clip):
    """The units u0..u1-1 of backward step i for every sequence, from dh = dL/dh_t (those past their
    end: no gradient, cpu_variants.units_zero_past_end)."""
    one = G.dtype.type(1.0)
    for b in range(dh.shape[0]):
        L = lengths[b]
        if i >= L:
            cpu_variants.units_zero_past_end(dG, now, dcn, i, b, u0, u1)
            continue
        scale = clip_scale(sumsq[:, b].sum(), clip, one) if clip > 0 else one
        _cell_backward_units(G, Cs, C0, position(i, L, reverse), position(i - 1, L, reverse), i == 0, b,
                             dh[b, u0:u1], dcn[b, u0:u1], scale, dG, now[b], u0)


_forward_kernels = {"loops": cpu_variants.compile_both(_forward_loops),
                    "blas": cpu_variants.compile_both(_forward_blas)}
_backward_kernels = {"loops": cpu_variants.compile_both(_backward_loops),
                     "blas": cpu_variants.compile_both(_backward_blas)}
_forward_units_kernel = njit(parallel=True, **cpu_variants.JIT_OPTIONS)(_forward_units)
_backward_units_kernel = njit(parallel=True, **cpu_variants.JIT_OPTIONS)(_backward_units)


def forward_recurrence(U, Ws, H0, C0, lengths, reverse, Hs, Cs):
    """U      [T,B,4H] gate pre-activations from the inputs; overwritten with the gates (i, f, g, o)
    Ws     [4H,H]   contiguous
    H0, C0 [B,H]    initial hidden and cell state
    lengths [B], reverse: as elman_cpu
    Hs, Cs [T,B,H]  out: hidden and cell states
    """
    units = cpu_variants.units_plan(U.shape[1], Ws)
    if units is not None:
        _forward_units_kernel(U, Ws, *units, H0, C0, lengths, reverse, Hs, Cs)
        return
    variant, tile, shares = cpu_variants.plan(U.shape[1], Ws)
    kernel = cpu_variants.pick(_forward_kernels[variant], shares)
    if variant == "loops":
        kernel(U, Ws, H0, C0, lengths, reverse, Hs, Cs, tile, shares)
    else:
        kernel(U, cpu_variants.transposed_for(Ws, tile), H0, C0, lengths, reverse, Hs, Cs, tile, shares)


def backward_recurrence(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    """dH_out [T,B,H]  dL/dh_t through the output of step t alone (read only here; the CUDA twin may
                     use it as scratch)
    Ws      [4H,H]
    G       [T,B,4H] gates saved by forward; Hs, Cs [T,B,H] states; C0 [B,H]
    lengths, reverse, truncate, clip: as elman_cpu
    dG      [T,B,4H] out: gradients of the gate pre-activations; may be the same array as G
    dH0, dC0 [B,H]   out: dL/dh0, dL/dc0
    """
    units = cpu_variants.units_plan(G.shape[1], Ws)
    if units is not None:
        _backward_units_kernel(dH_out, Ws, *units, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0)
        return
    variant, tile, shares = cpu_variants.plan(G.shape[1], Ws)
    kernel = cpu_variants.pick(_backward_kernels[variant], shares)
    if variant == "loops":
        kernel(dH_out, *cpu_variants.backward_weight(Ws, tile), G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG,
               dH0, dC0, tile, shares)
    else:
        kernel(dH_out, cpu_variants.blas_backward_weight(Ws, tile, Hs), G, Hs, Cs, C0, lengths, reverse, truncate,
               clip, dG, dH0, dC0, tile, shares)
