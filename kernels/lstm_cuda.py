"""LSTM recurrences on the GPU (``@cuda.jit``): twins of ``lstm_cpu.py``, same arguments in the same
order. A thread owns hidden units j and computes their four gates, so the gates and the cell state
of unit j never leave the thread that made them.

Three variants of each kernel, chosen per call by ``cuda_blocks.choose`` (override:
``GPUBPTT_CUDA_VARIANT=simple|tiled|cooperative|auto``; see ``cuda_blocks.py``): simple (block b owns
sequence b, Ws read from global memory), tiled (a block owns ``tile`` sequences, Wsᵀ [H,4H] or Ws
[4H,H] and the tile's state in shared memory, the four gates of a unit accumulated for the whole
tile in registers) and cooperative (the units, with all four gates of each, split across the blocks
of a cooperative grid, each keeping its columns of Wsᵀ/Ws in shared memory; one grid synchronisation
per step, two with clipping). They differ only in the order of the floating-point sums.
"""
from . import activations
from .cuda_blocks import MAX_THREADS, TILES, Footprint, block_sum, block_sums, device_empty, run, split_sum
from .cuda_compat import cuda, device_jit, kernel_jit
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, device_jit)
lstm_pointwise = _scalar.lstm_pointwise
lstm_pointwise_backward = _scalar.lstm_pointwise_backward
position = _scalar.position
passes = _scalar.passes
clip_scale = _scalar.clip_scale


def _forward_kernel(U, WsT, H0, C0, lengths, reverse, Hs, Cs):
    T = U.shape[0]
    H = Hs.shape[2]
    one = U.dtype.type(1.0)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for i in range(T):
        if i < L:
            t = position(i, L, reverse)
            tp = position(i - 1, L, reverse)
            h_prev = H0[b] if i == 0 else Hs[tp, b]
            c_prev = C0[b] if i == 0 else Cs[tp, b]
            for j in range(tid, H, nt):
                ai = U[t, b, j]
                af = U[t, b, H + j]
                ag = U[t, b, 2 * H + j]
                ao = U[t, b, 3 * H + j]
                for k in range(H):
                    hk = h_prev[k]
                    ai += hk * WsT[k, j]
                    af += hk * WsT[k, H + j]
                    ag += hk * WsT[k, 2 * H + j]
                    ao += hk * WsT[k, 3 * H + j]
                gi, gf, gg, go, c, h = lstm_pointwise(ai, af, ag, ao, c_prev[j], one)
                U[t, b, j] = gi
                U[t, b, H + j] = gf
                U[t, b, 2 * H + j] = gg
                U[t, b, 3 * H + j] = go
                Cs[t, b, j] = c
                Hs[t, b, j] = h
        else:
            for j in range(tid, H, nt):
                Hs[i, b, j] = H0[b, j] if reverse else Hs[L - 1, b, j]
                Cs[i, b, j] = C0[b, j] if reverse else Cs[L - 1, b, j]
        cuda.syncthreads()


def _backward_kernel(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    T = G.shape[0]
    H = Hs.shape[2]
    one = G.dtype.type(1.0)
    scratch = cuda.shared.array(MAX_THREADS, G.dtype)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for j in range(tid, H, nt):
        dC0[b, j] = 0  # carries dL/dc_t through c_{t+1} from step to step; dL/dc0 at the end
    for i in range(T - 1, -1, -1):
        if i < L:
            t = position(i, L, reverse)
            tp = position(i - 1, L, reverse)
            flows = i + 1 < L and passes(i + 1, truncate)
            later = dG[position(i + 1, L, reverse), b] if flows else dG[t, b]
            c_prev = C0[b] if i == 0 else Cs[tp, b]
            sumsq = one - one
            for j in range(tid, H, nt):
                dh = dH_out[t, b, j]
                if flows:
                    for m in range(4 * H):
                        dh += later[m] * Ws[m, j]
                else:
                    dC0[b, j] = 0
                dH_out[t, b, j] = dh
                sumsq += dh * dh + dC0[b, j] * dC0[b, j]
            scale = clip_scale(block_sum(sumsq, scratch), clip, one) if clip > 0 else one
            for j in range(tid, H, nt):
                gf = G[t, b, H + j]
                di, df, dg, do, dc = lstm_pointwise_backward(
                    dH_out[t, b, j] * scale, dC0[b, j] * scale, G[t, b, j], gf, G[t, b, 2 * H + j],
                    G[t, b, 3 * H + j], Cs[t, b, j], c_prev[j], one)
                dG[t, b, j] = di
                dG[t, b, H + j] = df
                dG[t, b, 2 * H + j] = dg
                dG[t, b, 3 * H + j] = do
                dC0[b, j] = dc * gf
        else:
            for m in range(tid, 4 * H, nt):
                dG[i, b, m] = 0
        cuda.syncthreads()
    first = dG[position(0, L, reverse), b]
    for k in range(tid, H, nt):
        acc = one - one
        for m in range(4 * H):
            acc += first[m] * Ws[m, k]
        dH0[b, k] = acc


def _make_tiled_forward(tile):
    gates_tile = 4 * tile

    def tiled_forward(U, WsT, H0, C0, lengths, reverse, Hs, Cs):
        # Shared memory: Wsᵀ [H, 4H] (w[k·4H + m]), two h buffers [tile, H] (one read, one written per
        # step), then c [tile, H] (each entry owned by one thread). acc[g·tile + q]: gate g, sequence q.
        T = U.shape[0]
        B = U.shape[1]
        H = Hs.shape[2]
        G = 4 * H
        one = U.dtype.type(1.0)
        zero = one - one
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b0 = cuda.blockIdx.x * tile
        sm = cuda.shared.array(0, U.dtype)
        hg = H * G
        th = tile * H
        cb = hg + 2 * th
        for m in range(tid, hg, nt):
            sm[m] = WsT[m // G, m % G]
        for m in range(tid, th, nt):
            b = b0 + m // H
            sm[hg + m] = H0[b, m % H] if b < B else zero
            sm[hg + th + m] = zero  # the other buffer: rows past the batch are read, never written
            sm[cb + m] = C0[b, m % H] if b < B else zero
        cuda.syncthreads()
        acc = cuda.local.array(gates_tile, U.dtype)
        for i in range(T):
            cur = hg + (i % 2) * th
            nxt = hg + th - (i % 2) * th
            for j in range(tid, H, nt):
                for q in range(tile):
                    b = b0 + q
                    active = b < B and i < lengths[b]
                    t = position(i, lengths[b], reverse) if active else 0
                    for g in range(4):
                        acc[g * tile + q] = U[t, b, g * H + j] if active else zero
                for k in range(H):
                    wi = sm[k * G + j]
                    wf = sm[k * G + H + j]
                    wg = sm[k * G + 2 * H + j]
                    wo = sm[k * G + 3 * H + j]
                    for q in range(tile):
                        hk = sm[cur + q * H + k]
                        acc[q] += hk * wi
                        acc[tile + q] += hk * wf
                        acc[2 * tile + q] += hk * wg
                        acc[3 * tile + q] += hk * wo
                for q in range(tile):
                    b = b0 + q
                    if b < B:
                        L = lengths[b]
                        if i < L:
                            t = position(i, L, reverse)
                            gi, gf, gg, go, c, h = lstm_pointwise(acc[q], acc[tile + q], acc[2 * tile + q],
                                                                  acc[3 * tile + q], sm[cb + q * H + j], one)
                            U[t, b, j] = gi
                            U[t, b, H + j] = gf
                            U[t, b, 2 * H + j] = gg
                            U[t, b, 3 * H + j] = go
                            Cs[t, b, j] = c
                            Hs[t, b, j] = h
                            sm[cb + q * H + j] = c
                            sm[nxt + q * H + j] = h
                        else:
                            Hs[i, b, j] = H0[b, j] if reverse else sm[cur + q * H + j]
                            Cs[i, b, j] = C0[b, j] if reverse else sm[cb + q * H + j]
                            sm[nxt + q * H + j] = sm[cur + q * H + j]
            cuda.syncthreads()

    tiled_forward.__name__ = tiled_forward.__qualname__ = f"_tiled{tile}_forward_kernel"
    return tiled_forward


def _make_tiled_backward(tile):
    def tiled_backward(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
        # Shared memory: Ws [4H, H] (w[m·H + j]); two buffers [tile, 4H] of gate gradients (step
        # i+1's, read; step i's, written: zero where no gradient flows on); dc [tile, H], dL/dc_t
        # through c_{t+1} (zero where none flows); dh [tile, H]; then [tile, threads] for the norms.
        T = G.shape[0]
        B = G.shape[1]
        H = Hs.shape[2]
        GH = 4 * H
        one = G.dtype.type(1.0)
        zero = one - one
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b0 = cuda.blockIdx.x * tile
        sm = cuda.shared.array(0, G.dtype)
        hg = GH * H
        tg = tile * GH
        th = tile * H
        dcb = hg + 2 * tg
        dhb = dcb + th
        red = dhb + th
        for m in range(tid, hg, nt):
            sm[m] = Ws[m // H, m % H]
        for m in range(tid, 2 * tg + th, nt):
            sm[hg + m] = zero
        cuda.syncthreads()
        acc = cuda.local.array(tile, G.dtype)
        sq = cuda.local.array(tile, G.dtype)
        for i in range(T - 1, -1, -1):
            par = (T - 1 - i) % 2
            cur = hg + par * tg
            nxt = hg + tg - par * tg
            for q in range(tile):
                sq[q] = zero
            for j in range(tid, H, nt):
                for q in range(tile):
                    acc[q] = zero
                    b = b0 + q
                    if b < B and i < lengths[b]:
                        acc[q] = dH_out[position(i, lengths[b], reverse), b, j]
                for m in range(GH):
                    w = sm[m * H + j]
                    for q in range(tile):
                        acc[q] += sm[cur + q * GH + m] * w
                for q in range(tile):
                    sm[dhb + q * H + j] = acc[q]
                    dc = sm[dcb + q * H + j]
                    sq[q] += acc[q] * acc[q] + dc * dc
            scale0 = one
            if clip > 0:
                for q in range(tile):
                    sm[red + q * nt + tid] = sq[q]
                block_sums(sm, red, tile)
            for j in range(tid, H, nt):
                for q in range(tile):
                    b = b0 + q
                    if b < B:
                        L = lengths[b]
                        if i < L:
                            t = position(i, L, reverse)
                            tp = position(i - 1, L, reverse)
                            scale = clip_scale(sm[red + q * nt], clip, one) if clip > 0 else scale0
                            c_prev = C0[b, j] if i == 0 else Cs[tp, b, j]
                            gf = G[t, b, H + j]
                            di, df, dg, do, dc = lstm_pointwise_backward(
                                sm[dhb + q * H + j] * scale, sm[dcb + q * H + j] * scale, G[t, b, j], gf,
                                G[t, b, 2 * H + j], G[t, b, 3 * H + j], Cs[t, b, j], c_prev, one)
                            dG[t, b, j] = di
                            dG[t, b, H + j] = df
                            dG[t, b, 2 * H + j] = dg
                            dG[t, b, 3 * H + j] = do
                            keep = passes(i, truncate)
                            sm[nxt + q * GH + j] = di if keep else zero
                            sm[nxt + q * GH + H + j] = df if keep else zero
                            sm[nxt + q * GH + 2 * H + j] = dg if keep else zero
                            sm[nxt + q * GH + 3 * H + j] = do if keep else zero
                            sm[dcb + q * H + j] = dc * gf if keep else zero
                        else:
                            for g in range(4):
                                dG[i, b, g * H + j] = zero
                                sm[nxt + q * GH + g * H + j] = zero
                            sm[dcb + q * H + j] = zero
            cuda.syncthreads()
        first = hg + tg - ((T - 1) % 2) * tg  # the buffer step 0 wrote
        for k in range(tid, H, nt):
            for q in range(tile):
                acc[q] = zero
            for m in range(GH):
                w = sm[m * H + k]
                for q in range(tile):
                    acc[q] += sm[first + q * GH + m] * w
            for q in range(tile):
                if b0 + q < B:
                    dH0[b0 + q, k] = acc[q]
                    dC0[b0 + q, k] = sm[dcb + q * H + k]

    tiled_backward.__name__ = tiled_backward.__qualname__ = f"_tiled{tile}_backward_kernel"
    return tiled_backward


def _coop_forward_kernel(U, WsT, H0, C0, lengths, reverse, units, splits, Hs, Cs):
    # Block c owns units j0..j0+units-1, all four gates of each, of every sequence. Shared memory: its
    # columns of Wsᵀ gate by gate, [4, H, units] (w[(g·H + k)·units + jj]), then partial sums [4, B,
    # splits, units]. Gate-major, the threads of a warp (consecutive jj, then ks: k = ks, ks + splits,
    # ...) read consecutive words; as [H, 4, units] those of consecutive ks were 4·units words apart,
    # several on one bank (4-way at 8 units and 32 splits).
    T = U.shape[0]
    B = U.shape[1]
    H = Hs.shape[2]
    one = U.dtype.type(1.0)
    zero = one - one
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    j0 = cuda.blockIdx.x * units
    grid = cuda.cg.this_grid()
    sm = cuda.shared.array(0, U.dtype)
    gate = H * units
    part = 4 * gate
    slots = B * splits * units
    for m in range(tid, part, nt):
        g = m // gate
        j = j0 + m % units
        sm[m] = WsT[(m % gate) // units, g * H + j] if j < H else zero
    cuda.syncthreads()
    for i in range(T):
        for s in range(tid, slots, nt):
            jj = s % units
            ks = (s // units) % splits
            b = s // (units * splits)
            L = lengths[b]
            ai = zero
            af = zero
            ag = zero
            ao = zero
            if i < L and j0 + jj < H:
                h_prev = H0[b] if i == 0 else Hs[position(i - 1, L, reverse), b]
                for k in range(ks, H, splits):
                    hk = h_prev[k]
                    w = k * units + jj
                    ai += hk * sm[w]
                    af += hk * sm[gate + w]
                    ag += hk * sm[2 * gate + w]
                    ao += hk * sm[3 * gate + w]
            sm[part + s] = ai
            sm[part + slots + s] = af
            sm[part + 2 * slots + s] = ag
            sm[part + 3 * slots + s] = ao
        cuda.syncthreads()
        for o in range(tid, B * units, nt):
            jj = o % units
            b = o // units
            j = j0 + jj
            if j < H:
                L = lengths[b]
                if i < L:
                    t = position(i, L, reverse)
                    ai = U[t, b, j]
                    af = U[t, b, H + j]
                    ag = U[t, b, 2 * H + j]
                    ao = U[t, b, 3 * H + j]
                    for ks in range(splits):
                        s = (b * splits + ks) * units + jj
                        ai += sm[part + s]
                        af += sm[part + slots + s]
                        ag += sm[part + 2 * slots + s]
                        ao += sm[part + 3 * slots + s]
                    c_prev = C0[b, j] if i == 0 else Cs[position(i - 1, L, reverse), b, j]
                    gi, gf, gg, go, c, h = lstm_pointwise(ai, af, ag, ao, c_prev, one)
                    U[t, b, j] = gi
                    U[t, b, H + j] = gf
                    U[t, b, 2 * H + j] = gg
                    U[t, b, 3 * H + j] = go
                    Cs[t, b, j] = c
                    Hs[t, b, j] = h
                else:
                    Hs[i, b, j] = H0[b, j] if reverse else Hs[L - 1, b, j]
                    Cs[i, b, j] = C0[b, j] if reverse else Cs[L - 1, b, j]
        grid.sync()


def _coop_backward_kernel(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, units, splits, sums, dG,
                          dH0, dC0):
    # Block c owns units k0..k0+units-1 of every sequence. Shared memory: its columns of Ws
    # [4H, units] (w[m·units + kk]), the partial sums [B, splits, units], then [B, units] for the
    # norms. dC0[b, j] carries dL/dc_t through c_{t+1} from step to step, as in the simple variant.
    T = G.shape[0]
    B = G.shape[1]
    H = Hs.shape[2]
    GH = 4 * H
    one = G.dtype.type(1.0)
    zero = one - one
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    c = cuda.blockIdx.x
    nb = cuda.gridDim.x
    k0 = c * units
    grid = cuda.cg.this_grid()
    sm = cuda.shared.array(0, G.dtype)
    part = GH * units
    slots = B * splits * units
    red = part + slots
    for m in range(tid, part, nt):
        k = k0 + m % units
        sm[m] = Ws[m // units, k] if k < H else zero
    for o in range(tid, B * units, nt):
        if k0 + o % units < H:
            dC0[o // units, k0 + o % units] = zero
    cuda.syncthreads()
    for i in range(T - 1, -1, -1):
        for s in range(tid, slots, nt):
            kk = s % units
            ks = (s // units) % splits
            b = s // (units * splits)
            L = lengths[b]
            acc = zero
            if i + 1 < L and passes(i + 1, truncate) and k0 + kk < H:
                later = dG[position(i + 1, L, reverse), b]
                for m in range(ks, GH, splits):
                    acc += later[m] * sm[m * units + kk]
            sm[part + s] = acc
        cuda.syncthreads()
        for o in range(tid, B * units, nt):
            kk = o % units
            b = o // units
            j = k0 + kk
            sq = zero
            if j < H:
                L = lengths[b]
                if i < L:
                    t = position(i, L, reverse)
                    dh = dH_out[t, b, j]
                    if i + 1 < L and passes(i + 1, truncate):
                        dh += split_sum(sm, part, b, kk, units, splits)
                    else:
                        dC0[b, j] = zero
                    dH_out[t, b, j] = dh
                    sq = dh * dh + dC0[b, j] * dC0[b, j]
                else:
                    for g in range(4):
                        dG[i, b, g * H + j] = zero
            sm[red + o] = sq
        if clip > 0:
            cuda.syncthreads()
            for b in range(tid, B, nt):
                acc = zero
                for kk in range(units):
                    acc += sm[red + b * units + kk]
                sums[c, b] = acc
            grid.sync()
            for b in range(tid, B, nt):
                acc = zero
                for cc in range(nb):
                    acc += sums[cc, b]
                sm[red + b] = acc
            cuda.syncthreads()
        for o in range(tid, B * units, nt):
            kk = o % units
            b = o // units
            j = k0 + kk
            L = lengths[b]
            if j < H and i < L:
                t = position(i, L, reverse)
                scale = clip_scale(sm[red + b], clip, one) if clip > 0 else one
                c_prev = C0[b, j] if i == 0 else Cs[position(i - 1, L, reverse), b, j]
                gf = G[t, b, H + j]
                di, df, dg, do, dc = lstm_pointwise_backward(
                    dH_out[t, b, j] * scale, dC0[b, j] * scale, G[t, b, j], gf, G[t, b, 2 * H + j],
                    G[t, b, 3 * H + j], Cs[t, b, j], c_prev, one)
                dG[t, b, j] = di
                dG[t, b, H + j] = df
                dG[t, b, 2 * H + j] = dg
                dG[t, b, 3 * H + j] = do
                dC0[b, j] = dc * gf
        grid.sync()
    for s in range(tid, slots, nt):
        kk = s % units
        ks = (s // units) % splits
        b = s // (units * splits)
        acc = zero
        if k0 + kk < H:
            first = dG[position(0, lengths[b], reverse), b]
            for m in range(ks, GH, splits):
                acc += first[m] * sm[m * units + kk]
        sm[part + s] = acc
    cuda.syncthreads()
    for o in range(tid, B * units, nt):
        kk = o % units
        b = o // units
        if k0 + kk < H:
            acc = split_sum(sm, part, b, kk, units, splits)
            dH0[b, k0 + kk] = acc


forward_kernel = kernel_jit(_forward_kernel)
backward_kernel = kernel_jit(_backward_kernel)
tiled_forward_kernels = {tile: kernel_jit(_make_tiled_forward(tile)) for tile in TILES}
tiled_backward_kernels = {tile: kernel_jit(_make_tiled_backward(tile)) for tile in TILES}
coop_forward_kernel = kernel_jit(_coop_forward_kernel)
coop_backward_kernel = kernel_jit(_coop_backward_kernel)

# Dynamic shared memory of each variant, in elements (cuda_blocks.Footprint).
FORWARD_FOOTPRINT = Footprint(
    tiled=lambda tile, H, threads: 4 * H * H + 3 * tile * H,
    cooperative=lambda B, H, units, splits: 4 * H * units + 4 * B * splits * units,
    tiled_text="4H·H + 3·tile·H", cooperative_text="4H·units + 4·B·splits·units",
)
BACKWARD_FOOTPRINT = Footprint(
    tiled=lambda tile, H, threads: 4 * H * H + 8 * tile * H + 2 * tile * H + tile * threads,
    cooperative=lambda B, H, units, splits: 4 * H * units + B * splits * units + B * units,
    tiled_text="4H·H + 10·tile·H + tile·threads", cooperative_text="4H·units + B·splits·units + B·units",
)


def forward_recurrence(U, Ws, H0, C0, lengths, reverse, Hs, Cs):
    """Arguments as ``lstm_cpu.forward_recurrence``. Returns the Plan it launched. The kernels read Wsᵀ."""
    B, H = U.shape[1], Hs.shape[2]
    args = (U, Ws.T.copy(), H0, C0, lengths, reverse)

    def build(plan):
        if plan.variant == "tiled":
            return tiled_forward_kernels[plan.tile], args + (Hs, Cs)
        if plan.variant == "cooperative":
            return coop_forward_kernel, args + (plan.units, plan.splits, Hs, Cs)
        return forward_kernel, args + (Hs, Cs)

    return run(B, H, 4, U.dtype.itemsize, FORWARD_FOOTPRINT, build, U)


def backward_recurrence(dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip, dG, dH0, dC0):
    """Arguments as ``lstm_cpu.backward_recurrence``. Returns the Plan it launched."""
    B, H = G.shape[1], Hs.shape[2]
    args = (dH_out, Ws, G, Hs, Cs, C0, lengths, reverse, truncate, clip)

    def build(plan):
        if plan.variant == "tiled":
            return tiled_backward_kernels[plan.tile], args + (dG, dH0, dC0)
        if plan.variant == "cooperative":
            sums = device_empty(G, (plan.blocks, B))
            return coop_backward_kernel, args + (plan.units, plan.splits, sums, dG, dH0, dC0)
        return backward_kernel, args + (dG, dH0, dC0)

    return run(B, H, 4, G.dtype.itemsize, BACKWARD_FOOTPRINT, build, G)


def signatures(numba_dtype):
    """Argument types of each kernel for one float dtype, for the compile check."""
    from numba import types

    a3, a2 = types.Array(numba_dtype, 3, "C"), types.Array(numba_dtype, 2, "C")
    lengths = types.Array(types.int32, 1, "C")
    i64, f64 = types.int64, types.float64
    fwd = (a3, a2, a2, a2, lengths, i64)
    bwd = (a3, a2, a3, a3, a3, a2, lengths, i64, i64, f64)
    found = {
        "lstm.forward": (_forward_kernel, fwd + (a3, a3)),
        "lstm.backward": (_backward_kernel, bwd + (a3, a2, a2)),
    }
    for tile in TILES:
        found[f"lstm.forward.tiled{tile}"] = (tiled_forward_kernels[tile].py_func, fwd + (a3, a3))
        found[f"lstm.backward.tiled{tile}"] = (tiled_backward_kernels[tile].py_func, bwd + (a3, a2, a2))
    found["lstm.forward.cooperative"] = (_coop_forward_kernel, fwd + (i64, i64, a3, a3))
    found["lstm.backward.cooperative"] = (_coop_backward_kernel, bwd + (i64, i64, a2, a3, a2, a2))
    return found
