"""The large matrix products of the fast path, on the CPU: SciPy's BLAS (``sgemm``/``dgemm`` of
``scipy.linalg.cython_blas``, the library Numba's ``np.dot`` calls), called from each of Numba's
threads on its own share of the product; products A B with A's rows of unit stride in float32
register-blocked instead where the host has AVX-512 (``REGISTER_PIECE_ROWS``). The engine calls
``matmul`` for every product that does not depend on the previous step (input products, output
layer, weight gradients). BLAS runs on the calling thread (cpu_variants), so the kernels' threads
are the only ones: concurrent calls from them scale (measured on 2 cores: [6400,256]x[256,256] 6.6
ms on one thread, 3.4 ms on two). NumPy's own BLAS, whose pool of threads would spin between calls
and starve the kernels' threads (a serial kernel 40 times slower for ~50 ms after a two-thread NumPy
product on a 2-core machine), is not used.
Twin: ``linalg_cuda.py`` (cuBLAS through CuPy).

gemm is called directly, not through ``np.dot``, for what np.dot cannot do: operands and results
with a leading dimension (column slices: GRU's gate blocks, a weight's columns) taken as they are,
and ``accumulate`` (β = 1: the weight gradients summed over time chunks in place). Without them each
chunk's dWs was a new [H,H] array added to the sum, and column slices were copied first.

How a product is shared among threads:
- rows: each thread takes a slice of op(a)'s rows and writes those rows of the result (input
  products, dL/d input, the output layer; the weight gradients when an inner share's partial would be
  large);
- inner: op(a) = aᵀ: each thread takes a slice of the K rows of a and b (time steps x sequences) and
  forms a partial [M,N], summed in a fixed order (the weight gradients Σ_t dU_tᵀ input_t, whose K is
  T·B), when the partials are small beside the operands (``INNER_PARTIAL_SHARE``);
- one call when the product is too small for a second thread to pay: fewer than ``MIN_SHARE_FLOPS``
  and fewer than ``MIN_SHARE_BYTES`` a thread (thin products, such as the output layer's with a few
  outputs, do little arithmetic on much memory, and are worth a second thread for its bandwidth).

With a BLAS that has small-product kernels (``cpu_variants.BLAS_SMALL_KERNELS``), a share too large
for them runs as pieces that fit (``_piece``): a sum of products over pieces of K (inner shares and
the weight gradients) or a stack of products over pieces of rows, each packing nothing.
"""
import llvmlite.binding as llvm
import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.extending import get_cython_function_address

from . import cache, cpu_variants, register_gemm  # noqa: F401 (cache: before any function is compiled)

# a thread's share below this (~5-10 µs of BLAS) is not worth a parallel region. Measured on 2 cores
# of an AVX-512 VM, float32, one call / two shares, µs: [64,333]ᵀ[333,64] 27 / 16, [120,128]·[128,128]
# 32 / 24, [64,250]ᵀ[250,64] 23 / 15, [1000,16]·[16,64] 24 / 17; at 1 MFLOP ([64,125]ᵀ[125,64],
# [500,16]·[16,64], [60,64]·[64,128]) the same either way, 9-15.
MIN_SHARE_FLOPS = 1_000_000
# nor one below this many bytes of operands and result. Measured on 2 cores of an AVX-512 VM, one call
# / two shares, ms, float32 (S [M,H], O = 1): Z = S Wyᵀ, dWy = dZᵀ S, dZ Wy at [6400,256] 0.40 / 0.12,
# 0.72 / 0.20, 0.46 / 0.21; at [25600,64] 0.36 / 0.11, 0.61 / 0.11, 0.50 / 0.12; at [2000,64] (0.5 MB)
# 0.006 / 0.008, 0.006 / 0.007, 0.016 / 0.011; at [4000,64] (1 MB) 0.015 / 0.012, 0.013 / 0.011,
# 0.028 / 0.019.
MIN_SHARE_BYTES = 512 << 10
# an inner share of fewer rows writes a whole [M,N] partial for too little work (and holds its memory):
# the rank-B products with the initial state, K = B
MIN_INNER_ROWS = 64
# inner shares only while their partials hold at most this share of the operands' size: the weight
# gradients of H = 512 over a chunk of 832 rows would need a 1 MB partial beside a 1.7 MB operand
INNER_PARTIAL_SHARE = 0.125
MIN_SUM_SHARE = 16384  # values a thread sums at least
# Pieces of a share (with small-product kernels): K or rows of a piece, as many as fit
# cpu_variants.SMALL_PRODUCT up to the most below, in multiples of PIECE_MULTIPLE, and only when at
# least the least below fit. Measured on 2 cores of an AVX-512 VM (OpenBLAS 0.3.30 SkylakeX), float32,
# µs, whole shares / pieces of 64, 128 K: the weight gradients [6400,64]ᵀ[6400,64] 298 / 176, 181;
# [25600,64]ᵀ[25600,64] 1306 / 824, 864; [6400,64]ᵀ[6400,16] 111 / 57, 54; [6400,128]ᵀ[6400,64] 567 /
# 368, 548 (128 no longer small); [6400,128]ᵀ[6400,128] 974 / 743 in pieces of 32, 1006 of 64 (not
# small); 8 or 16 K a piece lost at [3200,256]ᵀ[3200,256] (1674 / 2335, 2680). Pieces of 512 rows:
# [6400,64]·[64,16] 77 / 51, [25600,16]·[16,64] + bias 480 / 450, 1024 rows 72 and 430; no gain for
# N = 1 or K = 1 (the output layer), a loss below 128 rows ([6400,128]·[128,256] 1528 / 2027 in 64).
PIECE_MULTIPLE = 16
PIECE_MAX_INNER, PIECE_MIN_INNER = 128, 32
PIECE_MAX_ROWS, PIECE_MIN_ROWS = 512, 128
# Products op(a) b with op(a) = a of rows of unit stride, in float32, N a multiple of
# register_gemm.COLUMNS, K >= REGISTER_MIN_INNER and M >= REGISTER_MIN_ROWS (b's packed copy then
# costs at most a few % of the product; ``cpu_variants.register_enabled``): register-blocked, on b
# packed, in pieces of REGISTER_PIECE_ROWS rows (whose rows of a stay in L2 while every block of
# columns reads them). Measured on one core, M = 3200, float32, GFLOP/s, BLAS / pieces of 64, 128,
# 256, 512 rows: [.,128]·[128,512] 147 / 173 173 175 175, [.,64]·[64,256] 126 / 168 167 171 166,
# [.,256]·[256,512] 159 / 170 170 170 168, [.,512]·[512,512] 151 / 164 162 163 153,
# [.,128]·[128,2048] 135 / 135 157 151 138, [.,32]·[32,128] 105 / 149 152 150 148, [.,16]·[16,64] 81 /
# 146 153 150 152, [.,2048]·[2048,128] 133 / 156 149 145 146, [.,1024]·[1024,256] 141 / 162 159 150
# 144, [.,768]·[768,64] 117 / 156 153 146 148; [3200,8]·[8,64] 57-63 / 124-131 in one product; all
# 3200 rows in one product, K = 256 and 192 lost (139 against 151-154, 133 against 141-146).
REGISTER_PIECE_ROWS = 128
REGISTER_MIN_INNER = 8
REGISTER_MIN_ROWS = 512

# Fortran BLAS: every argument by reference (transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c,
# ldc). Bound by symbol name (an address in a ctypes function would keep Numba from caching the kernels).
for _name in ("sgemm", "dgemm"):
    llvm.add_symbol(f"gpubptt_{_name}", get_cython_function_address("scipy.linalg.cython_blas", _name))
_sgemm = types.ExternalFunction("gpubptt_sgemm", types.void(*[types.voidptr] * 13))
_dgemm = types.ExternalFunction("gpubptt_dgemm", types.void(*[types.voidptr] * 13))
_NO, _TRANSPOSED = ord("N"), ord("T")
_CODES = {(ta, tb): np.array([_TRANSPOSED if ta else _NO, _TRANSPOSED if tb else _NO], dtype=np.uint8)
          for ta in (False, True) for tb in (False, True)}  # (a's, b's) transpose codes, read-only for BLAS


def _blas_view(x):
    """(transpose code, leading dimension) under which column-major BLAS reads the 2-D array x as xᵀ,
    or None when it cannot (no unit stride): a row-major x (unit last stride) is xᵀ in column-major
    order as it lies ('N'); a column-major one is x ('T')."""
    (r, c), isz = x.shape, x.itemsize
    s0, s1 = x.strides
    if (c == 1 or s1 == isz) and (r == 1 or (s0 > 0 and s0 % isz == 0 and s0 // isz >= c)):
        return _NO, max(1, c if r == 1 else s0 // isz)
    if (r == 1 or s0 == isz) and (c == 1 or (s1 > 0 and s1 % isz == 0 and s1 // isz >= r)):
        return _TRANSPOSED, max(1, r if c == 1 else s1 // isz)
    return None


@njit(**cpu_variants.JIT_OPTIONS)
def _gemm(A, B, C, codes, lda, ldb, ldc, beta):
    """C = A B + beta C through BLAS (C row-major with leading dimension ldc; A, B as ``_blas_view``
    found them): in column-major terms Cᵀ = Bᵀ Aᵀ."""
    _blas_gemm(A.shape[0], A.shape[1], B.shape[1], A, B, C, codes, lda, ldb, ldc, beta)


@njit(**cpu_variants.JIT_OPTIONS)
def gemm(a, trans_a, b, c, beta):
    """c = op(a) b + beta c through BLAS, for the kernels that form products inside their loops: a, b
    and c 2-D, each of unit stride along its rows (any row stride), op(a) = aᵀ with ``trans_a``."""
    M, N = c.shape
    K = a.shape[0] if trans_a else a.shape[1]
    codes = np.empty(2, dtype=np.uint8)
    codes[0], codes[1] = _TRANSPOSED if trans_a else _NO, _NO
    _blas_gemm(M, K, N, a, b, c, codes, _leading(a), _leading(b), _leading(c), beta)


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _leading(x):
    """The leading dimension under which column-major BLAS reads the row-major 2-D x (unit stride along
    its rows) as xᵀ: its row stride; for one row or none, whose stride can be anything, at least its width."""
    return max(1, x.shape[1], x.strides[0] // x.itemsize) if x.shape[0] <= 1 else x.strides[0] // x.itemsize


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def _blas_gemm(M, K, N, A, B, C, codes, lda, ldb, ldc, beta):
    """C [M,N] = op(A) op(B) + beta C, K the inner size, through sgemm/dgemm (codes: A's and B's
    transpose codes)."""
    ints = np.empty(6, dtype=np.int32)
    ints[0], ints[1], ints[2] = N, M, K
    ints[3], ints[4], ints[5] = ldb, lda, ldc
    scalars = np.empty(2, dtype=C.dtype)
    scalars[0], scalars[1] = 1.0, beta
    if C.itemsize == 4:
        _sgemm(codes[1:].ctypes, codes[0:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
               scalars[0:].ctypes, B.ctypes, ints[3:].ctypes, A.ctypes, ints[4:].ctypes, scalars[1:].ctypes,
               C.ctypes, ints[5:].ctypes)
    else:
        _dgemm(codes[1:].ctypes, codes[0:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
               scalars[0:].ctypes, B.ctypes, ints[3:].ctypes, A.ctypes, ints[4:].ctypes, scalars[1:].ctypes,
               C.ctypes, ints[5:].ctypes)


@njit(**cpu_variants.JIT_OPTIONS)
def _add_row(out, lo, hi, bias):
    """out[lo:hi] += bias, a row vector"""
    for i in range(lo, hi):
        for j in range(out.shape[1]):
            out[i, j] += bias[j]


@njit(**cpu_variants.JIT_OPTIONS)
def _gemm_pieces(A, B, C, codes, lda, ldb, ldc, beta, bias, piece, inner):
    """C = A B + beta C (+ bias in every row) in products of ``piece`` K (``inner``: each added to C)
    or ``piece`` rows, the bias added to a piece's rows while they are in cache (a separate pass over
    a [25600,64] float32 result took 0.42 ms, the product itself 0.54)."""
    M, K = A.shape
    if inner:
        for k in range(0, K, piece):
            _gemm(A[:, k:k + piece], B[k:k + piece], C, codes, lda, ldb, ldc, beta if k == 0 else 1.0)
        if bias is not None:
            _add_row(C, 0, M, bias)
    else:
        for m in range(0, M, piece):
            _gemm(A[m:m + piece], B, C[m:m + piece], codes, lda, ldb, ldc, beta)
            if bias is not None:
                _add_row(C, m, min(m + piece, M), bias)


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _gemm_rows(A, B, C, codes, lda, ldb, ldc, beta, bias, piece, shares):
    """Each share's rows of C = A B (+ beta C) (+ bias), in pieces of ``piece`` rows."""
    for s in prange(shares):
        lo, hi = cpu_variants.share_of(s, shares, A.shape[0], 1)
        _gemm_pieces(A[lo:hi], B, C[lo:hi], codes, lda, ldb, ldc, beta, bias, piece, False)


def _register_rows(A, Bp, C, add, bias, piece, shares):
    """Each share's rows of C = A B (C += A B with ``add``) (+ bias), register-blocked on B packed
    (``register_gemm.packed``), in pieces of ``piece`` rows, the bias added to a piece's rows while
    they are in cache."""
    for s in prange(shares):
        lo, hi = cpu_variants.share_of(s, shares, A.shape[0], 1)
        for m in range(lo, hi, piece):
            end = min(m + piece, hi)
            register_gemm.product(A[m:end], Bp, C[m:end], add)
            if bias is not None:
                _add_row(C, m, end, bias)


_register_rows_kernels = cpu_variants.compile_both(_register_rows)


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _gemm_inner(A, B, C, codes, lda, ldb, ldc, beta, partial, piece, shares):
    """C = A B (+ beta C) with the K columns of A and rows of B shared, in pieces of ``piece`` K;
    partial [shares-1, M, N] for all but the first share."""
    K = A.shape[1]
    for s in prange(shares):
        lo, hi = cpu_variants.share_of(s, shares, K, 1)
        if s == 0:
            _gemm_pieces(A[:, lo:hi], B[lo:hi], C, codes, lda, ldb, ldc, beta, None, piece, True)
        else:
            _gemm_pieces(A[:, lo:hi], B[lo:hi], partial[s - 1], codes, lda, ldb, partial.shape[2], 0.0, None,
                         piece, True)
    add_partials(C, partial)


@njit(inline="always", **cpu_variants.JIT_OPTIONS)
def add_partials(C, partial):
    """C += partial[s] for every s in order: the sums formed by the threads after the first."""
    for s in range(partial.shape[0]):
        for i in range(C.shape[0]):
            for j in range(C.shape[1]):
                C[i, j] += partial[s, i, j]


def _shares(M, K, N, split, itemsize):
    most = min(split, max((2 * M * K * N) // MIN_SHARE_FLOPS, (M * K + K * N + M * N) * itemsize // MIN_SHARE_BYTES))
    return 1 if most < 2 else min(get_num_threads(), most)  # Numba's count read only when it matters (~2 µs)


def _piece(extent, other, most, least):
    """The K (or rows) of each piece of a share's product of ``extent`` K (rows) by ``other`` = M·N
    (K·N), ``extent`` itself for one product (``PIECE_*`` above)."""
    if not cpu_variants.BLAS_SMALL_KERNELS:
        return extent
    piece = min(most, cpu_variants.SMALL_PRODUCT // other) // PIECE_MULTIPLE * PIECE_MULTIPLE
    return piece if least <= piece < extent else extent


def matmul(a, b, trans_a=False, trans_b=False, out=None, bias=None, accumulate=False):
    """op(a) op(b), with op the transpose where asked, plus ``bias`` (a vector of the result's width)
    in every row when given; a new array, or written into ``out`` (of the result's shape and dtype,
    unit stride along its rows), or added to ``out`` with ``accumulate``. Operands are read as they
    lie when one of their strides is the item size (BLAS's leading dimension), copied otherwise."""
    A, B = a.T if trans_a else a, b.T if trans_b else b
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"matmul: shapes {A.shape} and {B.shape} do not multiply")
    if out is None:
        if accumulate:
            raise ValueError("matmul: accumulate needs out")
        out = np.empty((A.shape[0], B.shape[1]), dtype=np.result_type(A, B))
    (M, K), N = A.shape, B.shape[1]
    if out.shape != (M, N):
        raise ValueError(f"matmul: out must be of shape {(M, N)}, got {out.shape}")
    if M == 0 or N == 0:
        return out
    if K == 0:
        if not accumulate:
            out[...] = 0
        if bias is not None:
            out += bias
        return out
    dtype = out.dtype
    view_c = _blas_view(out)
    if view_c is None or view_c[0] != _NO:
        raise ValueError(f"matmul: out must have a unit stride along its rows, got strides {out.strides}")
    if A.dtype != dtype:
        A = A.astype(dtype)
    if B.dtype != dtype:
        B = B.astype(dtype)
    if (view_a := _blas_view(A)) is None:
        A = np.ascontiguousarray(A)
        view_a = _blas_view(A)
    if (view_b := _blas_view(B)) is None:
        B = np.ascontiguousarray(B)
        view_b = _blas_view(B)
    (code_a, lda), (code_b, ldb), ldc = view_a, view_b, view_c[1]
    codes = _CODES[code_a == _TRANSPOSED, code_b == _TRANSPOSED]
    beta = 1.0 if accumulate else 0.0
    # (code_a _NO with K > 1: a's rows of unit stride)
    if code_a == _NO and M >= REGISTER_MIN_ROWS and K >= REGISTER_MIN_INNER and cpu_variants.uses_register(B):
        shares = _shares(M, K, N, M, dtype.itemsize)
        cpu_variants.pick(_register_rows_kernels, shares)(A, register_gemm.packed(B), out, accumulate, bias,
                                                          REGISTER_PIECE_ROWS, shares)
        return out
    inner = _shares(M, K, N, K // MIN_INNER_ROWS, dtype.itemsize) if trans_a else 1
    if inner > 1 and (inner - 1) * M * N <= INNER_PARTIAL_SHARE * K * (M + N):
        piece = _piece(-(-K // inner), M * N, PIECE_MAX_INNER, PIECE_MIN_INNER)
        _gemm_inner(A, B, out, codes, lda, ldb, ldc, beta, np.empty((inner - 1, M, N), dtype=dtype), piece, inner)
        if bias is not None:
            out += bias
    elif (shares := _shares(M, K, N, M, dtype.itemsize)) > 1:
        piece = _piece(-(-M // shares), K * N, PIECE_MAX_ROWS, PIECE_MIN_ROWS)
        _gemm_rows(A, B, out, codes, lda, ldb, ldc, beta, bias, piece, shares)
    else:  # without a parallel region: the weight gradients in pieces of K, others in pieces of rows
        if trans_a:
            piece = _piece(K, M * N, PIECE_MAX_INNER, PIECE_MIN_INNER)
        else:
            piece = _piece(M, K * N, PIECE_MAX_ROWS, PIECE_MIN_ROWS)
        _gemm_pieces(A, B, out, codes, lda, ldb, ldc, beta, bias, piece, trans_a)
    return out


def _column_sums(a, partial, shares):
    """partial[s] = Σ of share s's rows, in float64. Each share sums into an array of its own, written
    once: summed in place in ``partial`` the loop ran at half the speed (measured on 2 threads,
    [25600,64] float32: 0.22 ms against 0.11)."""
    for s in prange(shares):
        lo, hi = cpu_variants.share_of(s, shares, a.shape[0], 1)
        acc = np.zeros(a.shape[1])
        for i in range(lo, hi):
            for j in range(a.shape[1]):
                acc[j] += a[i, j]
        partial[s] = acc


_column_sums_kernels = cpu_variants.compile_both(_column_sums)


def column_sums(a):
    """Σ over the rows of a 2-D array (the bias gradients), in float64: each thread sums a share of
    the rows, a small array on the calling thread alone (no parallel region: ~10 µs). Measured on
    one thread, [333,64] float32: 4.2 µs here, 6.7 in NumPy's a.sum(axis=0); [6400,64] 0.16 ms in
    NumPy."""
    shares = max(1, min(get_num_threads(), a.size // MIN_SUM_SHARE))
    partial = np.empty((shares, a.shape[1]))
    cpu_variants.pick(_column_sums_kernels, shares)(a, partial, shares)
    return (partial[0] if shares == 1 else partial.sum(axis=0)).astype(a.dtype)
