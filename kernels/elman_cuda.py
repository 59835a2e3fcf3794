"""Elman RNN recurrences on the GPU (``@cuda.jit``): twins of ``elman_cpu.py``, same arguments in the
same order, same conventions (lengths, reverse, truncate, clip).

One launch runs the whole time loop (a persistent kernel), in one of three variants chosen per call
by ``cuda_blocks.choose`` from the shape and the device (override: ``GPUBPTT_CUDA_VARIANT=simple|
tiled|cooperative|auto``; the variants and the rule are described in ``cuda_blocks.py``):

- simple: block b owns sequence b, its threads own hidden units, and each step reads the previous
  step's vector from the array the previous step wrote and Ws from global memory (one
  ``syncthreads`` per step);
- tiled: a block owns ``tile`` sequences, keeps Ws (Wsᵀ forward) and the tile's state in dynamic
  shared memory, each thread accumulates its unit for the whole tile in registers;
- cooperative: the hidden units are split across the blocks of a cooperative grid, each keeping its
  columns of Wsᵀ (its columns of Ws backward) in shared memory; every block serves the whole batch,
  and the grid synchronises once per step.

The variants differ only in the order of the floating-point sums. The input products and the
weight-gradient sums are cuBLAS products, done by the caller or, in ``forward_recurrence_from_input``,
before the forward kernel (the CPU twin can fuse it). The Python functions launch on the
stream of their arrays (CuPy's current one) and never wait for the GPU.
"""
from . import activations, linalg_cuda
from .cuda_blocks import MAX_THREADS, TILES, Footprint, block_sum, block_sums, device_empty, run, split_sum
from .cuda_compat import cuda, device_jit, kernel_jit
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(activations, device_jit)
activate = _scalar.activate
derivative_from_output = _scalar.derivative_from_output
position = _scalar.position
passes = _scalar.passes
clip_scale = _scalar.clip_scale


def _forward_kernel(U, WsT, S0, lengths, reverse, act, S):
    T = U.shape[0]
    H = U.shape[2]
    one = U.dtype.type(1.0)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for i in range(T):
        if i < L:
            t = position(i, L, reverse)
            prev = S0[b] if i == 0 else S[position(i - 1, L, reverse), b]
            for j in range(tid, H, nt):
                acc = U[t, b, j]
                for k in range(H):
                    acc += prev[k] * WsT[k, j]
                S[t, b, j] = activate(act, acc, one)
        else:
            for j in range(tid, H, nt):
                S[i, b, j] = S0[b, j] if reverse else S[L - 1, b, j]
        cuda.syncthreads()


def _backward_kernel(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0):
    T = S.shape[0]
    H = S.shape[2]
    one = S.dtype.type(1.0)
    scratch = cuda.shared.array(MAX_THREADS, S.dtype)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = lengths[b]
    for i in range(T - 1, -1, -1):
        if i < L:
            t = position(i, L, reverse)
            flows = i + 1 < L and passes(i + 1, truncate)
            later = delta[position(i + 1, L, reverse), b] if flows else delta[t, b]
            sumsq = one - one
            for k in range(tid, H, nt):
                g = dS_out[t, b, k]
                if flows:
                    for j in range(H):
                        g += later[j] * Ws[j, k]
                if clip > 0:
                    delta[t, b, k] = g  # kept until the norm over the block is known
                    sumsq += g * g
                else:
                    delta[t, b, k] = g * derivative_from_output(act, S[t, b, k], one)
            if clip > 0:
                scale = clip_scale(block_sum(sumsq, scratch), clip, one)
                for k in range(tid, H, nt):
                    delta[t, b, k] = delta[t, b, k] * scale * derivative_from_output(act, S[t, b, k], one)
        else:
            for k in range(tid, H, nt):
                delta[i, b, k] = 0
        cuda.syncthreads()
    first = delta[position(0, L, reverse), b]
    for k in range(tid, H, nt):
        acc = one - one
        for j in range(H):
            acc += first[j] * Ws[j, k]
        dS0[b, k] = acc


def _make_tiled_forward(tile):
    def tiled_forward(U, WsT, S0, lengths, reverse, act, S):
        # Shared memory: Wsᵀ [H·H] (w[k·H + j]), then two state buffers [tile, H]; step i reads one
        # and writes the other, so one syncthreads per step suffices.
        T = U.shape[0]
        B = U.shape[1]
        H = U.shape[2]
        one = U.dtype.type(1.0)
        zero = one - one
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b0 = cuda.blockIdx.x * tile
        sm = cuda.shared.array(0, U.dtype)
        hh = H * H
        th = tile * H
        for m in range(tid, hh, nt):
            sm[m] = WsT[m // H, m % H]
        for m in range(tid, th, nt):
            b = b0 + m // H
            sm[hh + m] = S0[b, m % H] if b < B else zero
            sm[hh + th + m] = zero  # the other buffer: rows past the batch are read, never written
        cuda.syncthreads()
        acc = cuda.local.array(tile, U.dtype)  # registers: the loops over it are unrolled
        for i in range(T):
            cur = hh + (i % 2) * th
            nxt = hh + th - (i % 2) * th
            for j in range(tid, H, nt):
                for q in range(tile):
                    acc[q] = zero
                    b = b0 + q
                    if b < B and i < lengths[b]:
                        acc[q] = U[position(i, lengths[b], reverse), b, j]
                for k in range(H):
                    w = sm[k * H + j]
                    for q in range(tile):
                        acc[q] += sm[cur + q * H + k] * w
                for q in range(tile):
                    b = b0 + q
                    if b < B:
                        L = lengths[b]
                        if i < L:
                            s = activate(act, acc[q], one)
                            S[position(i, L, reverse), b, j] = s
                            sm[nxt + q * H + j] = s
                        else:
                            S[i, b, j] = S0[b, j] if reverse else sm[cur + q * H + j]
                            sm[nxt + q * H + j] = sm[cur + q * H + j]
            cuda.syncthreads()

    tiled_forward.__name__ = tiled_forward.__qualname__ = f"_tiled{tile}_forward_kernel"
    return tiled_forward


def _make_tiled_backward(tile):
    def tiled_backward(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0):
        # Shared memory: Ws [H·H] (w[j·H + k]), two buffers [tile, H] of deltas (step i+1's, read;
        # step i's, written: zero where no gradient flows on), then [tile, threads] for the norms.
        T = S.shape[0]
        B = S.shape[1]
        H = S.shape[2]
        one = S.dtype.type(1.0)
        zero = one - one
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        b0 = cuda.blockIdx.x * tile
        sm = cuda.shared.array(0, S.dtype)
        hh = H * H
        th = tile * H
        red = hh + 2 * th
        for m in range(tid, hh, nt):
            sm[m] = Ws[m // H, m % H]
        for m in range(tid, 2 * th, nt):
            sm[hh + m] = zero
        cuda.syncthreads()
        acc = cuda.local.array(tile, S.dtype)
        sq = cuda.local.array(tile, S.dtype)
        for i in range(T - 1, -1, -1):
            par = (T - 1 - i) % 2
            cur = hh + par * th
            nxt = hh + th - par * th
            for q in range(tile):
                sq[q] = zero
            for k in range(tid, H, nt):
                for q in range(tile):
                    acc[q] = zero
                    b = b0 + q
                    if b < B and i < lengths[b]:
                        acc[q] = dS_out[position(i, lengths[b], reverse), b, k]
                for j in range(H):
                    w = sm[j * H + k]
                    for q in range(tile):
                        acc[q] += sm[cur + q * H + j] * w
                for q in range(tile):
                    b = b0 + q
                    if b < B:
                        L = lengths[b]
                        if i < L:
                            t = position(i, L, reverse)
                            if clip > 0:
                                sm[nxt + q * H + k] = acc[q]  # kept until the tile's norms are known
                                sq[q] += acc[q] * acc[q]
                            else:
                                d = acc[q] * derivative_from_output(act, S[t, b, k], one)
                                delta[t, b, k] = d
                                sm[nxt + q * H + k] = d if passes(i, truncate) else zero
                        else:
                            delta[i, b, k] = zero
                            sm[nxt + q * H + k] = zero
            if clip > 0:
                for q in range(tile):
                    sm[red + q * nt + tid] = sq[q]
                block_sums(sm, red, tile)
                for k in range(tid, H, nt):
                    for q in range(tile):
                        b = b0 + q
                        if b < B and i < lengths[b]:
                            t = position(i, lengths[b], reverse)
                            scale = clip_scale(sm[red + q * nt], clip, one)
                            d = sm[nxt + q * H + k] * scale * derivative_from_output(act, S[t, b, k], one)
                            delta[t, b, k] = d
                            sm[nxt + q * H + k] = d if passes(i, truncate) else zero
            cuda.syncthreads()
        first = hh + th - ((T - 1) % 2) * th  # the buffer step 0 wrote
        for k in range(tid, H, nt):
            for q in range(tile):
                acc[q] = zero
            for j in range(H):
                w = sm[j * H + k]
                for q in range(tile):
                    acc[q] += sm[first + q * H + j] * w
            for q in range(tile):
                if b0 + q < B:
                    dS0[b0 + q, k] = acc[q]

    tiled_backward.__name__ = tiled_backward.__qualname__ = f"_tiled{tile}_backward_kernel"
    return tiled_backward


def _coop_forward_kernel(U, WsT, S0, lengths, reverse, act, units, splits, S):
    # Block c owns units j0..j0+units-1 of every sequence. Shared memory: its columns of Wsᵀ
    # [H, units] (w[k·units + jj]), then the partial sums [B, splits, units]. Slot (b, ks, jj) sums
    # k = ks, ks + splits, ... of S_{t-1}[b] Wsᵀ[:, j]; one thread per output adds the slots in order.
    T = U.shape[0]
    B = U.shape[1]
    H = U.shape[2]
    one = U.dtype.type(1.0)
    zero = one - one
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    j0 = cuda.blockIdx.x * units
    grid = cuda.cg.this_grid()
    sm = cuda.shared.array(0, U.dtype)
    part = H * units
    for m in range(tid, part, nt):
        j = j0 + m % units
        sm[m] = WsT[m // units, j] if j < H else zero
    cuda.syncthreads()
    slots = B * splits * units
    for i in range(T):
        for s in range(tid, slots, nt):
            jj = s % units
            ks = (s // units) % splits
            b = s // (units * splits)
            L = lengths[b]
            acc = zero
            if i < L and j0 + jj < H:
                prev = S0[b] if i == 0 else S[position(i - 1, L, reverse), b]
                for k in range(ks, H, splits):
                    acc += prev[k] * sm[k * units + jj]
            sm[part + s] = acc
        cuda.syncthreads()
        for o in range(tid, B * units, nt):
            jj = o % units
            b = o // units
            j = j0 + jj
            if j < H:
                L = lengths[b]
                if i < L:
                    t = position(i, L, reverse)
                    acc = U[t, b, j] + split_sum(sm, part, b, jj, units, splits)
                    S[t, b, j] = activate(act, acc, one)
                else:
                    S[i, b, j] = S0[b, j] if reverse else S[L - 1, b, j]
        grid.sync()


def _coop_backward_kernel(dS_out, Ws, S, lengths, reverse, act, truncate, clip, units, splits, sums, delta, dS0):
    # Block c owns units k0..k0+units-1 of every sequence. Shared memory: its columns of Ws
    # [H, units] (w[j·units + kk]), the partial sums [B, splits, units], then [B, units] for the
    # norms. With clipping, each block writes its part of each sequence's squared norm to
    # sums[c, b]; after a second grid sync every block adds them in the same order.
    T = S.shape[0]
    B = S.shape[1]
    H = S.shape[2]
    one = S.dtype.type(1.0)
    zero = one - one
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    c = cuda.blockIdx.x
    nb = cuda.gridDim.x
    k0 = c * units
    grid = cuda.cg.this_grid()
    sm = cuda.shared.array(0, S.dtype)
    part = H * units
    red = part + B * splits * units
    for m in range(tid, part, nt):
        k = k0 + m % units
        sm[m] = Ws[m // units, k] if k < H else zero
    cuda.syncthreads()
    slots = B * splits * units
    for i in range(T - 1, -1, -1):
        for s in range(tid, slots, nt):
            kk = s % units
            ks = (s // units) % splits
            b = s // (units * splits)
            L = lengths[b]
            acc = zero
            if i + 1 < L and passes(i + 1, truncate) and k0 + kk < H:
                later = delta[position(i + 1, L, reverse), b]
                for j in range(ks, H, splits):
                    acc += later[j] * sm[j * units + kk]
            sm[part + s] = acc
        cuda.syncthreads()
        for o in range(tid, B * units, nt):
            kk = o % units
            b = o // units
            k = k0 + kk
            g = zero
            if k < H:
                L = lengths[b]
                if i < L:
                    t = position(i, L, reverse)
                    g = dS_out[t, b, k] + split_sum(sm, part, b, kk, units, splits)
                    if clip > 0:
                        delta[t, b, k] = g  # kept until the norm over the grid is known
                    else:
                        delta[t, b, k] = g * derivative_from_output(act, S[t, b, k], one)
                else:
                    delta[i, b, k] = zero
            sm[red + o] = g * g
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
                k = k0 + kk
                L = lengths[b]
                if k < H and i < L:
                    t = position(i, L, reverse)
                    scale = clip_scale(sm[red + b], clip, one)
                    delta[t, b, k] = delta[t, b, k] * scale * derivative_from_output(act, S[t, b, k], one)
        grid.sync()
    for s in range(tid, slots, nt):
        kk = s % units
        ks = (s // units) % splits
        b = s // (units * splits)
        acc = zero
        if k0 + kk < H:
            first = delta[position(0, lengths[b], reverse), b]
            for j in range(ks, H, splits):
                acc += first[j] * sm[j * units + kk]
        sm[part + s] = acc
    cuda.syncthreads()
    for o in range(tid, B * units, nt):
        kk = o % units
        b = o // units
        if k0 + kk < H:
            acc = split_sum(sm, part, b, kk, units, splits)
            dS0[b, k0 + kk] = acc


forward_kernel = kernel_jit(_forward_kernel)
backward_kernel = kernel_jit(_backward_kernel)
tiled_forward_kernels = {tile: kernel_jit(_make_tiled_forward(tile)) for tile in TILES}
tiled_backward_kernels = {tile: kernel_jit(_make_tiled_backward(tile)) for tile in TILES}
coop_forward_kernel = kernel_jit(_coop_forward_kernel)
coop_backward_kernel = kernel_jit(_coop_backward_kernel)

# Dynamic shared memory of each variant, in elements (cuda_blocks.Footprint).
FORWARD_FOOTPRINT = Footprint(
    tiled=lambda tile, H, threads: H * H + 2 * tile * H,
    cooperative=lambda B, H, units, splits: H * units + B * splits * units,
    tiled_text="H·H + 2·tile·H", cooperative_text="H·units + B·splits·units",
)
BACKWARD_FOOTPRINT = Footprint(
    tiled=lambda tile, H, threads: H * H + 2 * tile * H + tile * threads,
    cooperative=lambda B, H, units, splits: H * units + B * splits * units + B * units,
    tiled_text="H·H + 2·tile·H + tile·threads", cooperative_text="H·units + B·splits·units + B·units",
)


def forward_recurrence(U, Ws, S0, lengths, reverse, act, S):
    """S_t = g1(U_t + S_{t-1} Wsᵀ); arguments as ``elman_cpu.forward_recurrence``. Returns the Plan
    it launched (variant, grid, shared memory). The kernels read Wsᵀ."""
    B, H = U.shape[1], U.shape[2]
    args = (U, Ws.T.copy(), S0, lengths, reverse, act)

    def build(plan):
        if plan.variant == "tiled":
            return tiled_forward_kernels[plan.tile], args + (S,)
        if plan.variant == "cooperative":
            return coop_forward_kernel, args + (plan.units, plan.splits, S)
        return forward_kernel, args + (S,)

    return run(B, H, 1, U.dtype.itemsize, FORWARD_FOOTPRINT, build, U)


def forward_recurrence_from_input(X, Wx, bias, Ws, S0, lengths, reverse, act, S):
    """S_t = g1(X_t Wxᵀ + bias + S_{t-1} Wsᵀ); arguments as ``elman_cpu.forward_recurrence_from_input``.
    U = X Wxᵀ + bias is one cuBLAS product first, written into S, then ``forward_recurrence`` runs in
    place. Returns the Plan it launched."""
    T, B, D = X.shape
    linalg_cuda.matmul(X.reshape(T * B, D), Wx, trans_b=True, bias=bias, out=S.reshape(T * B, S.shape[2]))
    return forward_recurrence(S, Ws, S0, lengths, reverse, act, S)


def backward_recurrence(dS_out, Ws, S, lengths, reverse, act, truncate, clip, delta, dS0):
    """delta_t = (dS_out_t + delta_{t+1} Ws) ⊙ g1'(S_t); arguments as ``elman_cpu.backward_recurrence``.
    Returns the Plan it launched."""
    B, H = S.shape[1], S.shape[2]
    args = (dS_out, Ws, S, lengths, reverse, act, truncate, clip)

    def build(plan):
        if plan.variant == "tiled":
            return tiled_backward_kernels[plan.tile], args + (delta, dS0)
        if plan.variant == "cooperative":
            sums = device_empty(S, (plan.blocks, B))
            return coop_backward_kernel, args + (plan.units, plan.splits, sums, delta, dS0)
        return backward_kernel, args + (delta, dS0)

    return run(B, H, 1, S.dtype.itemsize, BACKWARD_FOOTPRINT, build, S)


def signatures(numba_dtype):
    """Argument types of each kernel for one float dtype, for the compile check."""
    from numba import types

    a3, a2 = types.Array(numba_dtype, 3, "C"), types.Array(numba_dtype, 2, "C")
    lengths = types.Array(types.int32, 1, "C")
    i64, f64 = types.int64, types.float64
    fwd = (a3, a2, a2, lengths, i64, i64)
    bwd = (a3, a2, a3, lengths, i64, i64, i64, f64)
    found = {
        "elman.forward": (_forward_kernel, fwd + (a3,)),
        "elman.backward": (_backward_kernel, bwd + (a3, a2)),
    }
    for tile in TILES:
        found[f"elman.forward.tiled{tile}"] = (tiled_forward_kernels[tile].py_func, fwd + (a3,))
        found[f"elman.backward.tiled{tile}"] = (tiled_backward_kernels[tile].py_func, bwd + (a3, a2))
    found["elman.forward.cooperative"] = (_coop_forward_kernel, fwd + (i64, i64, a3))
    found["elman.backward.cooperative"] = (_coop_backward_kernel, bwd + (i64, i64, a2, a3, a2))
    return found
