"""The large matrix products of the fast path, on the CPU: SciPy's BLAS through Numba's ``np.dot``,
called from each of Numba's threads on its own share of the product. The engine calls ``matmul`` for
every product that does not depend on the previous step (input products, output layer, weight
gradients). BLAS runs on the calling thread (cpu_variants), so the kernels' threads are the only
ones: concurrent calls from them scale (measured on 2 cores: [6400,256]x[256,256] 6.6 ms on one
thread, 3.4 ms on two). NumPy's own BLAS, whose pool of threads would spin between calls and starve
the kernels' threads (a serial kernel 40 times slower for ~50 ms after a two-thread NumPy product on
a 2-core machine), is not used. Twin: ``linalg_cuda.py`` (cuBLAS through CuPy).

How a product is shared among threads:
- rows: op(a) C-contiguous [M,K]: each thread takes a slice of its rows and writes its rows of the
  result (input products, dL/d input, the output layer);
- inner: op(a) = aᵀ with a C-contiguous [K,M], op(b) C-contiguous [K,N]: each thread takes a slice of
  the K rows (time steps x sequences) and forms a partial [M,N], summed in a fixed order (the
  weight gradients Σ_t dU_tᵀ input_t, whose K is T·B);
- one call otherwise, or when the product is too small for a second thread to pay (``MIN_SHARE_FLOPS``).
"""
import numpy as np
from numba import get_num_threads, njit, prange

from . import cpu_variants

MIN_SHARE_FLOPS = 2_000_000  # a thread's share below this (~20 µs of BLAS) is not worth a parallel region
# an inner share of fewer rows writes a whole [M,N] partial for too little work (and holds its memory):
# the rank-B products with the initial state, K = B
MIN_INNER_ROWS = 64
MIN_SUM_SHARE = 16384  # values a thread sums at least


@njit(**cpu_variants.JIT_OPTIONS)
def _add_row(out, lo, hi, bias):
    """out[lo:hi] += bias, a row vector"""
    for i in range(lo, hi):
        for j in range(out.shape[1]):
            out[i, j] += bias[j]


@njit(**cpu_variants.JIT_OPTIONS)
def _dot(A, B, out, bias):
    np.dot(A, B, out)
    if bias is not None:
        _add_row(out, 0, out.shape[0], bias)


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _dot_rows(A, B, out, bias, shares):
    """Each share's rows, the bias added while they are in cache (a separate pass over a [25600,64]
    float32 result took 0.42 ms, the product itself 0.54)."""
    M = A.shape[0]
    for s in prange(shares):
        lo, hi = cpu_variants.share_of(s, shares, M, 1)
        np.dot(A[lo:hi], B, out[lo:hi])
        if bias is not None:
            _add_row(out, lo, hi, bias)


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _dot_inner(a, B, out, partial, shares):
    """out = aᵀ B with the K rows of a and B shared; partial [shares-1, M, N] for all but the first."""
    K = a.shape[0]
    for s in prange(shares):
        lo, hi = cpu_variants.share_of(s, shares, K, 1)
        if s == 0:
            np.dot(a[lo:hi].T, B[lo:hi], out)
        else:
            np.dot(a[lo:hi].T, B[lo:hi], partial[s - 1])
    for s in range(shares - 1):
        out += partial[s]


def _blas_layout(a):
    return a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)


def _shares(M, K, N, split):
    return max(1, min(get_num_threads(), split, (2 * M * K * N) // MIN_SHARE_FLOPS))


def matmul(a, b, trans_a=False, trans_b=False, out=None, bias=None):
    """op(a) op(b), with op the transpose where asked, plus ``bias`` (a vector of the result's width)
    in every row when given; a new array, or written into ``out`` (C-contiguous, of the result's shape
    and dtype). An operand whose layout BLAS cannot take (a column slice) is copied first: those are
    weights or GRU gate blocks."""
    A = _blas_layout(a.T if trans_a else a)
    B = _blas_layout(b.T if trans_b else b)
    (M, K), N = A.shape, B.shape[1]
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(A, B))
    if A.flags.c_contiguous and (shares := _shares(M, K, N, M)) > 1:
        _dot_rows(A, B, out, bias, shares)
    elif trans_a and A.T.flags.c_contiguous and B.flags.c_contiguous and (
            shares := _shares(M, K, N, K // MIN_INNER_ROWS)) > 1:
        _dot_inner(A.T, B, out, np.empty((shares - 1, M, N), dtype=out.dtype), shares)
        if bias is not None:
            out += bias
    else:
        _dot(A, B, out, bias)
    return out


@njit(parallel=True, **cpu_variants.JIT_OPTIONS)
def _column_sums(a, partial, shares):
    for s in prange(shares):
        lo, hi = cpu_variants.share_of(s, shares, a.shape[0], 1)
        for i in range(lo, hi):
            for j in range(a.shape[1]):
                partial[s, j] += a[i, j]


def column_sums(a):
    """Σ over the rows of a 2-D array (the bias gradients), each thread summing a share of the rows in
    float64 (more accurate than NumPy's pairwise float32 sums, and in parallel: [6400,64] float32 took
    NumPy 0.16 ms on one thread)."""
    shares = max(1, min(get_num_threads(), a.size // MIN_SUM_SHARE))
    partial = np.zeros((shares, a.shape[1]))
    _column_sums(a, partial, shares)
    return partial.sum(axis=0).astype(a.dtype)
