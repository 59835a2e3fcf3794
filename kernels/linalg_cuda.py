"""The large matrix products of the fast path, on the GPU: cuBLAS through CuPy's ``@`` on the current
stream. Twin of ``linalg_cpu.py`` (same function, same arguments)."""


def matmul(a, b, trans_a=False, trans_b=False, out=None, bias=None):
    """op(a) op(b), with op the transpose where asked, plus ``bias`` in every row when given; a new
    array, or written into ``out``."""
    out = (a.T if trans_a else a).dot(b.T if trans_b else b, out=out)
    if bias is not None:
        out += bias
    return out


def column_sums(a):
    """Σ over the rows of a 2-D array."""
    return a.sum(axis=0)
