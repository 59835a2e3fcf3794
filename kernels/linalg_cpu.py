"""The large matrix products of the fast path, on the CPU: SciPy's BLAS through Numba's ``np.dot``,
which runs on the calling thread (cpu_variants). The engine calls ``matmul`` for every product that
does not depend on the previous step (input products, output layer, weight gradients); NumPy's own
BLAS, whose pool of threads would spin between calls and starve the kernels' threads (measured: a
serial kernel 40 times slower for ~50 ms after a two-thread NumPy product on a 2-core machine), is
not used. Twin: ``linalg_cuda.py`` (cuBLAS through CuPy).
"""
import numpy as np
from numba import njit

from . import cpu_variants


@njit(**cpu_variants.JIT_OPTIONS)
def _dot(A, B, out):
    np.dot(A, B, out)


def _blas_layout(a):
    return a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) op(b), with op the transpose where asked; a new array. An operand whose layout BLAS
    cannot take (a column slice) is copied first: those are weights or GRU gate blocks."""
    A = _blas_layout(a.T if trans_a else a)
    B = _blas_layout(b.T if trans_b else b)
    out = np.empty((A.shape[0], B.shape[1]), dtype=np.result_type(A, B))
    _dot(A, B, out)
    return out
