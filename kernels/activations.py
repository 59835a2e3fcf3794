"""Scalar math shared by every kernel: activations g1/g2 and their derivatives, the pointwise
formulas of the LSTM and GRU cells forward and backward, and the time position of a step.

Plain Python on purpose: ``*_cpu.py`` compiles these with ``numba.njit`` and ``*_cuda.py`` with
``cuda.jit(device=True, inline="always")`` (through ``scalar.compile_scalar_functions``), so the CPU
and GPU kernels run the same formulas.

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


def lstm_pointwise(i_pre, f_pre, g_pre, o_pre, c_prev, one):
    """One LSTM unit, torch.nn.LSTM's equations: gates i, f, o = sigmoid, g = tanh,
    c = f c_prev + i g, h = o tanh(c). Returns (i, f, g, o, c, h)."""
    i = sigmoid(i_pre, one)
    f = sigmoid(f_pre, one)
    g = math.tanh(g_pre)
    o = sigmoid(o_pre, one)
    c = f * c_prev + i * g
    return i, f, g, o, c, o * math.tanh(c)


def lstm_pointwise_backward(dh, dc_next, i, f, g, o, c, c_prev, one):
    """Backward through one LSTM unit.

    dh: dL/dh_t (output and later steps); dc_next: dL/dc_t through c_{t+1} (that is dc_{t+1} f_{t+1}).
    Returns the gradients of the four gate pre-activations and dc = dL/dc_t; the caller carries
    dc · f to step t-1.
    """
    tc = math.tanh(c)
    dc = dc_next + dh * o * (one - tc * tc)
    return (dc * g * i * (one - i), dc * c_prev * f * (one - f), dc * i * (one - g * g),
            dh * tc * o * (one - o), dc)


def gru_pointwise(r_pre, z_pre, n_x, hn, h_prev, one):
    """One GRU unit, torch.nn.GRU's equations: r, z = sigmoid(pre-activations of input and state),
    n = tanh(n_x + r hn) with n_x = (Wx_n x + bx_n) and hn = (Ws_n h_prev + bs_n),
    h = (1 - z) n + z h_prev. Returns (r, z, n, h)."""
    r = sigmoid(r_pre, one)
    z = sigmoid(z_pre, one)
    n = math.tanh(n_x + r * hn)
    return r, z, n, (one - z) * n + z * h_prev


def gru_pointwise_backward(dh, r, z, n, hn, h_prev, one):
    """Backward through one GRU unit given dh = dL/dh_t. Returns (dr_pre, dz_pre, dn_pre, dhn):
    the gradients of r's and z's pre-activations, of n's input part n_x, and of hn; the caller
    carries dh · z (the direct path) plus the recurrent products to step t-1."""
    dn_pre = dh * (one - z) * (one - n * n)
    dz_pre = dh * (h_prev - n) * z * (one - z)
    return dn_pre * hn * r * (one - r), dz_pre, dn_pre, dn_pre * r


def position(i, length, reverse):
    """Time index of processing step i (0-based) of a sequence of ``length`` steps: i forward,
    length-1-i in the reverse direction (which starts at the sequence's own last step)."""
    if reverse:
        return length - 1 - i
    return i


def clip_scale(sumsq, clip, one):
    """The factor that rescales a vector of squared norm ``sumsq`` to norm ``clip`` when it is longer
    (the article's per-step clipping); 1 when ``clip`` <= 0 (off) or the vector is short enough."""
    if clip > 0 and sumsq > clip * clip:
        return one * clip / math.sqrt(sumsq)
    return one
