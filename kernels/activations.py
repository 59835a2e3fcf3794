"""Scalar activation functions g1/g2 and their derivatives: the math shared by every kernel.

Plain Python on purpose: ``*_cpu.py`` compiles these with ``numba.njit`` and ``*_cuda.py`` with
``cuda.jit(device=True, inline="always")``, so the CPU and GPU kernels run the same formulas.

Constants come in as ``one`` (a value of the array dtype, ``arr.dtype.type(1.0)`` in a kernel): a
Python float literal would be typed float64 by Numba and silently promote float32 math to float64.
Derivatives are written in terms of the activation's *output* ``s = g(a)``, which is what forward
stores, so backward never needs the pre-activation.
"""
import math

# Activation codes passed to kernels (kernels branch on an int, uniformly across threads).
IDENTITY = 0
TANH = 1
RELU = 2
SIGMOID = 3

CODES = {"identity": IDENTITY, "tanh": TANH, "relu": RELU, "sigmoid": SIGMOID}


def sigmoid(a, one):
    """1 / (1 + exp(-a)), without overflow for large |a|."""
    if a >= 0:
        return one / (one + math.exp(-a))
    e = math.exp(a)
    return e / (one + e)


def activate(code, a, one):
    """g(a) for the activation with the given code."""
    if code == TANH:
        return math.tanh(a)
    if code == RELU:
        return a if a > 0 else one - one
    if code == SIGMOID:
        return sigmoid(a, one)
    return a


def derivative_from_output(code, s, one):
    """g'(a) expressed through s = g(a)."""
    if code == TANH:
        return one - s * s
    if code == RELU:
        return one if s > 0 else one - one
    if code == SIGMOID:
        return s * (one - s)
    return one
