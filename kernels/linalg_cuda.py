"""The large matrix products of the fast path, on the GPU: cuBLAS through CuPy's ``@`` on the current
stream. Twin of ``linalg_cpu.py`` (same function, same arguments)."""


def matmul(a, b, trans_a=False, trans_b=False, out=None):
    """op(a) op(b), with op the transpose where asked; a new array, or written into ``out``."""
    return (a.T if trans_a else a).dot(b.T if trans_b else b, out=out)
