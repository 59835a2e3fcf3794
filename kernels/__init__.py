"""Numba kernels of gpubptt, installed as ``gpubptt.kernels``.

``activations`` holds the scalar math shared by both targets; ``<cell>_cpu`` holds ``@njit`` kernels
and ``<cell>_cuda`` their ``@cuda.jit`` twins with the same arguments in the same order. Nothing here
imports the ``gpubptt`` API above it.
"""
