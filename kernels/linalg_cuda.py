"""The large matrix products of the fast path, on the GPU: cuBLAS through CuPy's ``@`` on the current
stream. Twin of ``linalg_cpu.py`` (same function, same arguments)."""


def matmul(a, b, trans_a=False, trans_b=False, out=None, bias=None, accumulate=False):
    """op(a) op(b), with op the transpose where asked, plus ``bias`` in every row when given; a new
    array, or written into ``out``, or added to ``out`` with ``accumulate``."""
    A, B = (a.T if trans_a else a), (b.T if trans_b else b)
    if out is None and accumulate:
        raise ValueError("matmul: accumulate needs out")
    if out is not None and not accumulate and out.flags.c_contiguous:
        product = A.dot(B, out=out)
    else:
        product = A.dot(B)
    if bias is not None:
        product += bias
    if out is None or product is out:
        return product
    if accumulate:
        out += product
    else:
        out[...] = product
    return out


def column_sums(a):
    """Σ over the rows of a 2-D array."""
    return a.sum(axis=0)
