"""GRU recurrences on the GPU (``@cuda.jit``): twins of ``gru_cpu.py``, same arguments in the same
order. A thread owns hidden units j and computes their three gates.

Three variants of each kernel, chosen per call by ``cuda_blocks.choose`` (override:
``GPUBPTT_CUDA_VARIANT=simple|tiled|cooperative|auto``; see ``cuda_blocks.py``): simple (block b owns
sequence b, Ws read from global memory), tiled (a block owns ``tile`` sequences, Wsᵀ [H,3H] or Ws
[3H,H] and the tile's state in shared memory, the three gates of a unit accumulated for the whole
tile in registers) and cooperative (the units, with all three gates of each, split across the blocks
of a cooperative grid, each keeping its columns of Wsᵀ/Ws in shared memory; one grid synchronisation
per step, two with clipping). They differ only in the order of the floating-point sums.
"""
from . import activations
from .cuda_blocks import MAX_THREADS, TILES, Footprint, block_sum, block_sums, device_empty, run, split_sum
from .cuda_compat import cuda, device_jit, kernel_jit
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, device_jit)
gru_pointwise = _scalar.gru_pointwise
gru_pointwise_backward = _scalar.gru_pointwise_backward
position = _scalar.position
passes = _scalar.passes
clip_scale = _scalar.clip_scale


def _forward_kernel(U, WsT, bs, H0, lengths, reverse, Hs, Gn):
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
            h_prev = H0[b] if i == 0 else Hs[position(i - 1, L, reverse), b]
            for j in range(tid, H, nt):
                ar = U[t, b, j] + bs[j]
                az = U[t, b, H + j] + bs[H + j]
                hn = bs[2 * H + j]
                for k in range(H):
                    hk = h_prev[k]
                    ar += hk * WsT[k, j]
                    az += hk * WsT[k, H + j]
                    hn += hk * WsT[k, 2 * H + j]
                r, z, n, h = gru_pointwise(ar, az, U[t, b, 2 * H + j], hn, h_prev[j], one)
                U[t, b, j] = r
                U[t, b, H + j] = z
                U[t, b, 2 * H + j] = n
                Gn[t, b, j] = hn
                Hs[t, b, j] = h
        else:
            for j in range(tid, H, nt):
                Hs[i, b, j] = H0[b, j] if reverse else Hs[L - 1, b, j]
        cuda.syncthreads()


def _backward_kernel(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
    T = G.shape[0]
    H = Hs.shape[2]
    one = G.dtype.type(1.0)
    scratch = cuda.shared.array(MAX_THREADS, G.dtype)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for j in range(tid, H, nt):
        dH0[b, j] = 0  # carries dh_{t+1} z_{t+1} (the path around the gates); dL/dh0 at the end
    for i in range(T - 1, -1, -1):
        if i < L:
            t = position(i, L, reverse)
            flows = i + 1 < L and passes(i + 1, truncate)
            later = dRec[position(i + 1, L, reverse), b] if flows else dRec[t, b]
            h_prev = H0[b] if i == 0 else Hs[position(i - 1, L, reverse), b]
            sumsq = one - one
            for j in range(tid, H, nt):
                dh = dH_out[t, b, j]
                if flows:
                    dh += dH0[b, j]
                    for m in range(3 * H):
                        dh += later[m] * Ws[m, j]
                dH_out[t, b, j] = dh
                sumsq += dh * dh
            scale = clip_scale(block_sum(sumsq, scratch), clip, one) if clip > 0 else one
            for j in range(tid, H, nt):
                dh = dH_out[t, b, j] * scale
                z = G[t, b, H + j]
                dr, dz, dn, dhn = gru_pointwise_backward(dh, G[t, b, j], z, G[t, b, 2 * H + j], Gn[t, b, j],
                                                         h_prev[j], one)
                dRec[t, b, j] = dr
                dRec[t, b, H + j] = dz
                dRec[t, b, 2 * H + j] = dhn
                dNx[t, b, j] = dn
                dH0[b, j] = dh * z
        else:
            for m in range(tid, 3 * H, nt):
                dRec[i, b, m] = 0
            for j in range(tid, H, nt):
                dNx[i, b, j] = 0
        cuda.syncthreads()
    first = dRec[position(0, L, reverse), b]
    for k in range(tid, H, nt):
        acc = dH0[b, k]
        for m in range(3 * H):
            acc += first[m] * Ws[m, k]
        dH0[b, k] = acc


def _make_tiled_forward(tile):
    gates_tile = 3 * tile

    def tiled_forward(U, WsT, bs, H0, lengths, reverse, Hs, Gn):
        # Shared memory: Wsᵀ [H, 3H] (w[k·3H + m]), then two h buffers [tile, H] (one read, one
        # written per step). acc[g·tile + q]: gate g (r, z, and Ws_n h + bs_n), sequence q.
        T = U.shape[0]
        B = U.shape[1]
        H = Hs.shape[2]
        G = 3 * H
        one = U.dtype.type(1.0)
        zero = one - one
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b0 = cuda.blockIdx.x * tile
        sm = cuda.shared.array(0, U.dtype)
        hg = H * G
        th = tile * H
        for m in range(tid, hg, nt):
            sm[m] = WsT[m // G, m % G]
        for m in range(tid, th, nt):
            b = b0 + m // H
            sm[hg + m] = H0[b, m % H] if b < B else zero
            sm[hg + th + m] = zero  # the other buffer: rows past the batch are read, never written
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
                    acc[q] = U[t, b, j] + bs[j] if active else zero
                    acc[tile + q] = U[t, b, H + j] + bs[H + j] if active else zero
                    acc[2 * tile + q] = bs[2 * H + j]
                for k in range(H):
                    wr = sm[k * G + j]
                    wz = sm[k * G + H + j]
                    wn = sm[k * G + 2 * H + j]
                    for q in range(tile):
                        hk = sm[cur + q * H + k]
                        acc[q] += hk * wr
                        acc[tile + q] += hk * wz
                        acc[2 * tile + q] += hk * wn
                for q in range(tile):
                    b = b0 + q
                    if b < B:
                        L = lengths[b]
                        if i < L:
                            t = position(i, L, reverse)
                            hn = acc[2 * tile + q]
                            r, z, n, h = gru_pointwise(acc[q], acc[tile + q], U[t, b, 2 * H + j], hn,
                                                       sm[cur + q * H + j], one)
                            U[t, b, j] = r
                            U[t, b, H + j] = z
                            U[t, b, 2 * H + j] = n
                            Gn[t, b, j] = hn
                            Hs[t, b, j] = h
                            sm[nxt + q * H + j] = h
                        else:
                            Hs[i, b, j] = H0[b, j] if reverse else sm[cur + q * H + j]
                            sm[nxt + q * H + j] = sm[cur + q * H + j]
            cuda.syncthreads()

    tiled_forward.__name__ = tiled_forward.__qualname__ = f"_tiled{tile}_forward_kernel"
    return tiled_forward


def _make_tiled_backward(tile):
    def tiled_backward(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
        # Shared memory: Ws [3H, H] (w[m·H + j]); two buffers [tile, 3H] of the recurrent gradients
        # (step i+1's, read; step i's, written: zero where no gradient flows on); the carried dh·z
        # [tile, H] (zero where none flows); dh [tile, H]; then [tile, threads] for the norms.
        T = G.shape[0]
        B = G.shape[1]
        H = Hs.shape[2]
        GH = 3 * H
        one = G.dtype.type(1.0)
        zero = one - one
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b0 = cuda.blockIdx.x * tile
        sm = cuda.shared.array(0, G.dtype)
        hg = GH * H
        tg = tile * GH
        th = tile * H
        cab = hg + 2 * tg
        dhb = cab + th
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
                        acc[q] = dH_out[position(i, lengths[b], reverse), b, j] + sm[cab + q * H + j]
                for m in range(GH):
                    w = sm[m * H + j]
                    for q in range(tile):
                        acc[q] += sm[cur + q * GH + m] * w
                for q in range(tile):
                    sm[dhb + q * H + j] = acc[q]
                    sq[q] += acc[q] * acc[q]
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
                            scale = clip_scale(sm[red + q * nt], clip, one) if clip > 0 else scale0
                            h_prev = H0[b, j] if i == 0 else Hs[position(i - 1, L, reverse), b, j]
                            dh = sm[dhb + q * H + j] * scale
                            z = G[t, b, H + j]
                            dr, dz, dn, dhn = gru_pointwise_backward(dh, G[t, b, j], z, G[t, b, 2 * H + j],
                                                                     Gn[t, b, j], h_prev, one)
                            dRec[t, b, j] = dr
                            dRec[t, b, H + j] = dz
                            dRec[t, b, 2 * H + j] = dhn
                            dNx[t, b, j] = dn
                            keep = passes(i, truncate)
                            sm[nxt + q * GH + j] = dr if keep else zero
                            sm[nxt + q * GH + H + j] = dz if keep else zero
                            sm[nxt + q * GH + 2 * H + j] = dhn if keep else zero
                            sm[cab + q * H + j] = dh * z if keep else zero
                        else:
                            for g in range(3):
                                dRec[i, b, g * H + j] = zero
                                sm[nxt + q * GH + g * H + j] = zero
                            dNx[i, b, j] = zero
                            sm[cab + q * H + j] = zero
            cuda.syncthreads()
        first = hg + tg - ((T - 1) % 2) * tg  # the buffer step 0 wrote
        for k in range(tid, H, nt):
            for q in range(tile):
                acc[q] = sm[cab + q * H + k]
            for m in range(GH):
                w = sm[m * H + k]
                for q in range(tile):
                    acc[q] += sm[first + q * GH + m] * w
            for q in range(tile):
                if b0 + q < B:
                    dH0[b0 + q, k] = acc[q]

    tiled_backward.__name__ = tiled_backward.__qualname__ = f"_tiled{tile}_backward_kernel"
    return tiled_backward


def _coop_forward_kernel(U, WsT, bs, H0, lengths, reverse, units, splits, Hs, Gn):
    # Block c owns units j0..j0+units-1, all three gates of each, of every sequence. Shared memory:
    # its columns of Wsᵀ [H, 3, units] (w[(k·3 + g)·units + jj]), then partial sums [3, B, splits, units].
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
    cols = 3 * units
    part = H * cols
    slots = B * splits * units
    for m in range(tid, part, nt):
        g = (m % cols) // units
        j = j0 + m % units
        sm[m] = WsT[m // cols, g * H + j] if j < H else zero
    cuda.syncthreads()
    for i in range(T):
        for s in range(tid, slots, nt):
            jj = s % units
            ks = (s // units) % splits
            b = s // (units * splits)
            L = lengths[b]
            ar = zero
            az = zero
            an = zero
            if i < L and j0 + jj < H:
                h_prev = H0[b] if i == 0 else Hs[position(i - 1, L, reverse), b]
                for k in range(ks, H, splits):
                    hk = h_prev[k]
                    ar += hk * sm[k * cols + jj]
                    az += hk * sm[k * cols + units + jj]
                    an += hk * sm[k * cols + 2 * units + jj]
            sm[part + s] = ar
            sm[part + slots + s] = az
            sm[part + 2 * slots + s] = an
        cuda.syncthreads()
        for o in range(tid, B * units, nt):
            jj = o % units
            b = o // units
            j = j0 + jj
            if j < H:
                L = lengths[b]
                if i < L:
                    t = position(i, L, reverse)
                    ar = U[t, b, j] + bs[j]
                    az = U[t, b, H + j] + bs[H + j]
                    hn = bs[2 * H + j]
                    for ks in range(splits):
                        s = (b * splits + ks) * units + jj
                        ar += sm[part + s]
                        az += sm[part + slots + s]
                        hn += sm[part + 2 * slots + s]
                    h_prev = H0[b, j] if i == 0 else Hs[position(i - 1, L, reverse), b, j]
                    r, z, n, h = gru_pointwise(ar, az, U[t, b, 2 * H + j], hn, h_prev, one)
                    U[t, b, j] = r
                    U[t, b, H + j] = z
                    U[t, b, 2 * H + j] = n
                    Gn[t, b, j] = hn
                    Hs[t, b, j] = h
                else:
                    Hs[i, b, j] = H0[b, j] if reverse else Hs[L - 1, b, j]
        grid.sync()


def _coop_backward_kernel(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, units, splits, sums, dRec,
                          dNx, dH0):
    # Block c owns units k0..k0+units-1 of every sequence. Shared memory: its columns of Ws
    # [3H, units] (w[m·units + kk]), the partial sums [B, splits, units], then [B, units] for the
    # norms. dH0[b, j] carries dh_{t+1} z_{t+1} from step to step, as in the simple variant.
    T = G.shape[0]
    B = G.shape[1]
    H = Hs.shape[2]
    GH = 3 * H
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
            dH0[o // units, k0 + o % units] = zero
    cuda.syncthreads()
    for i in range(T - 1, -1, -1):
        for s in range(tid, slots, nt):
            kk = s % units
            ks = (s // units) % splits
            b = s // (units * splits)
            L = lengths[b]
            acc = zero
            if i + 1 < L and passes(i + 1, truncate) and k0 + kk < H:
                later = dRec[position(i + 1, L, reverse), b]
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
                        dh += dH0[b, j]
                        dh += split_sum(sm, part, b, kk, units, splits)
                    dH_out[t, b, j] = dh
                    sq = dh * dh
                else:
                    for g in range(3):
                        dRec[i, b, g * H + j] = zero
                    dNx[i, b, j] = zero
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
                h_prev = H0[b, j] if i == 0 else Hs[position(i - 1, L, reverse), b, j]
                dh = dH_out[t, b, j] * scale
                z = G[t, b, H + j]
                dr, dz, dn, dhn = gru_pointwise_backward(dh, G[t, b, j], z, G[t, b, 2 * H + j], Gn[t, b, j],
                                                         h_prev, one)
                dRec[t, b, j] = dr
                dRec[t, b, H + j] = dz
                dRec[t, b, 2 * H + j] = dhn
                dNx[t, b, j] = dn
                dH0[b, j] = dh * z
        grid.sync()
    for s in range(tid, slots, nt):
        kk = s % units
        ks = (s // units) % splits
        b = s // (units * splits)
        acc = zero
        if k0 + kk < H:
            first = dRec[position(0, lengths[b], reverse), b]
            for m in range(ks, GH, splits):
                acc += first[m] * sm[m * units + kk]
        sm[part + s] = acc
    cuda.syncthreads()
    for o in range(tid, B * units, nt):
        kk = o % units
        b = o // units
        k = k0 + kk
        if k < H:
            acc = dH0[b, k] + split_sum(sm, part, b, kk, units, splits)
            dH0[b, k] = acc


forward_kernel = kernel_jit(_forward_kernel)
backward_kernel = kernel_jit(_backward_kernel)
tiled_forward_kernels = {tile: kernel_jit(_make_tiled_forward(tile)) for tile in TILES}
tiled_backward_kernels = {tile: kernel_jit(_make_tiled_backward(tile)) for tile in TILES}
coop_forward_kernel = kernel_jit(_coop_forward_kernel)
coop_backward_kernel = kernel_jit(_coop_backward_kernel)

# Dynamic shared memory of each variant, in elements (cuda_blocks.Footprint).
FORWARD_FOOTPRINT = Footprint(
    tiled=lambda tile, H, threads: 3 * H * H + 2 * tile * H,
    cooperative=lambda B, H, units, splits: 3 * H * units + 3 * B * splits * units,
    tiled_text="3H·H + 2·tile·H", cooperative_text="3H·units + 3·B·splits·units",
)
BACKWARD_FOOTPRINT = Footprint(
    tiled=lambda tile, H, threads: 3 * H * H + 6 * tile * H + 2 * tile * H + tile * threads,
    cooperative=lambda B, H, units, splits: 3 * H * units + B * splits * units + B * units,
    tiled_text="3H·H + 8·tile·H + tile·threads", cooperative_text="3H·units + B·splits·units + B·units",
)


def forward_recurrence(U, Ws, bs, H0, lengths, reverse, Hs, Gn):
    """Arguments as ``gru_cpu.forward_recurrence``. Returns the Plan it launched. The kernels read Wsᵀ."""
    B, H = U.shape[1], Hs.shape[2]
    args = (U, Ws.T.copy(), bs, H0, lengths, reverse)

    def build(plan):
        if plan.variant == "tiled":
            return tiled_forward_kernels[plan.tile], args + (Hs, Gn)
        if plan.variant == "cooperative":
            return coop_forward_kernel, args + (plan.units, plan.splits, Hs, Gn)
        return forward_kernel, args + (Hs, Gn)

    return run(B, H, 3, U.dtype.itemsize, FORWARD_FOOTPRINT, build, U)


def backward_recurrence(dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip, dRec, dNx, dH0):
    """Arguments as ``gru_cpu.backward_recurrence``. Returns the Plan it launched."""
    B, H = G.shape[1], Hs.shape[2]
    args = (dH_out, Ws, G, Gn, Hs, H0, lengths, reverse, truncate, clip)

    def build(plan):
        if plan.variant == "tiled":
            return tiled_backward_kernels[plan.tile], args + (dRec, dNx, dH0)
        if plan.variant == "cooperative":
            sums = device_empty(G, (plan.blocks, B))
            return coop_backward_kernel, args + (plan.units, plan.splits, sums, dRec, dNx, dH0)
        return backward_kernel, args + (dRec, dNx, dH0)

    return run(B, H, 3, G.dtype.itemsize, BACKWARD_FOOTPRINT, build, G)


def signatures(numba_dtype):
    """Argument types of each kernel for one float dtype, for the compile check."""
    from numba import types

    a3, a2, a1 = (types.Array(numba_dtype, n, "C") for n in (3, 2, 1))
    lengths = types.Array(types.int32, 1, "C")
    i64, f64 = types.int64, types.float64
    fwd = (a3, a2, a1, a2, lengths, i64)
    bwd = (a3, a2, a3, a3, a3, a2, lengths, i64, i64, f64)
    found = {
        "gru.forward": (_forward_kernel, fwd + (a3, a3)),
        "gru.backward": (_backward_kernel, bwd + (a3, a3, a2)),
    }
    for tile in TILES:
        found[f"gru.forward.tiled{tile}"] = (tiled_forward_kernels[tile].py_func, fwd + (a3, a3))
        found[f"gru.backward.tiled{tile}"] = (tiled_backward_kernels[tile].py_func, bwd + (a3, a3, a2))
    found["gru.forward.cooperative"] = (_coop_forward_kernel, fwd + (i64, i64, a3, a3))
    found["gru.backward.cooperative"] = (_coop_backward_kernel, bwd + (i64, i64, a2, a3, a3, a2))
    return found
