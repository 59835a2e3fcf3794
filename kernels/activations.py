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

import numpy as np

# Activation codes passed to kernels (kernels branch on an int, uniformly across threads).
IDENTITY = 0
TANH = 1
RELU = 2
SIGMOID = 3

CODES = {"identity": IDENTITY, "tanh": TANH, "relu": RELU, "sigmoid": SIGMOID}


# tanh(x) ~ x P(x^2) / Q(x^2) on [-9, 9] (beyond, float32's tanh is +-1), P and Q of degree 4 in x^2,
# fitted by us to minimise the largest relative error (iteratively reweighted least squares in
# float64): 2.1e-8 in exact arithmetic, 3.8e-7 (about 6 ulp) evaluated in float32. It needs only
# multiply-adds and one division, so the CPU loops over hidden units vectorise (libm's tanhf does not).
# float64 keeps math.tanh.
# Module-level NumPy float32 scalars: Numba freezes them into the code as float32 constants.
P0, P1, P2, P3, P4 = map(np.float32, (1.0, 0.1338101327419281, 0.003495573066174984, 2.0608853446901776e-05,
                                      1.3354374495122556e-08))
Q0, Q1, Q2, Q3, Q4 = map(np.float32, (1.0, 0.46714329719543457, 0.025876924395561218, 0.0003285611164756119,
                                      7.776434358675033e-07))
TANH32_LIMIT = np.float32(9.0)
PRECISION_PROBE = np.float32(2.0 ** -30)


def single_precision(one):
    """True when ``one`` is a float32: 1 + 2^-30 rounds to 1 only in single precision. The operands
    are constants, so the compiler folds the test and keeps one branch."""
    return one + PRECISION_PROBE == one


def tanh(a, one):
    """tanh(a): the rational approximation above for float32, math.tanh for float64."""
    if not single_precision(one):
        return math.tanh(a)
    x = min(max(a, -TANH32_LIMIT), TANH32_LIMIT)
    z = x * x
    p = (((P4 * z + P3) * z + P2) * z + P1) * z + P0
    q = (((Q4 * z + Q3) * z + Q2) * z + Q1) * z + Q0
    return min(max(x * p / q, -one), one)


def sigmoid(a, one):
    """1 / (1 + exp(-a)) without overflow; for float32 (1 + tanh(a/2)) / 2, which vectorises (its
    error is absolute, below 3e-8: values under ~1e-7 come out as 0)."""
    if single_precision(one):
        half = one / (one + one)
        return half + half * tanh(half * a, one)
    if a >= 0:
        return one / (one + math.exp(-a))
    e = math.exp(a)
    return e / (one + e)


def activate(code, a, one):
    """g(a) for the activation with the given code."""
    if code == TANH:
        return tanh(a, one)
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
    g = tanh(g_pre, one)
    o = sigmoid(o_pre, one)
    c, h = lstm_state(i, f, g, o, c_prev, one)
    return i, f, g, o, c, h


def lstm_state(i, f, g, o, c_prev, one):
    """The LSTM state from its gates: c = f c_prev + i g, h = o tanh(c). Returns (c, h)."""
    c = f * c_prev + i * g
    return c, o * tanh(c, one)


def lstm_pointwise_backward(dh, dc_next, i, f, g, o, c, c_prev, one):
    """Backward through one LSTM unit.

    dh: dL/dh_t (output and later steps); dc_next: dL/dc_t through c_{t+1} (that is dc_{t+1} f_{t+1}).
    Returns the gradients of the four gate pre-activations and dc = dL/dc_t; the caller carries
    dc · f to step t-1.
    """
    tc = tanh(c, one)
    dc = dc_next + dh * o * (one - tc * tc)
    return (dc * g * i * (one - i), dc * c_prev * f * (one - f), dc * i * (one - g * g),
            dh * tc * o * (one - o), dc)


def gru_pointwise(r_pre, z_pre, n_x, hn, h_prev, one):
    """One GRU unit, torch.nn.GRU's equations: r, z = sigmoid(pre-activations of input and state),
    n = tanh(n_x + r hn) with n_x = (Wx_n x + bx_n) and hn = (Ws_n h_prev + bs_n),
    h = (1 - z) n + z h_prev. Returns (r, z, n, h)."""
    r = sigmoid(r_pre, one)
    z = sigmoid(z_pre, one)
    n, h = gru_state(r, z, n_x, hn, h_prev, one)
    return r, z, n, h


def gru_state(r, z, n_x, hn, h_prev, one):
    """The GRU state from its gates r, z: n = tanh(n_x + r hn), h = (1 - z) n + z h_prev. Returns (n, h)."""
    n = tanh(n_x + r * hn, one)
    return n, (one - z) * n + z * h_prev


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


def passes(i, truncate):
    """Whether the gradient of processing step i flows on to step i-1 under truncation ``truncate``
    (0: full BPTT): not across a step that starts a chunk of ``truncate`` steps (k, 2k, ...); at
    step 0 it always does (to the initial state)."""
    return i == 0 or not (truncate > 0 and i % truncate == 0)


def states_before(start, n, T, reverse):
    """For the steps at times start..start+n-1 (rows 0..n-1 of their gradients), where the state
    before each one's step was saved: (lo, a, b), lo the time of the state before the first row's
    step (S_{t-1} forward, S_{t+1} in reverse; past a sequence's end the reverse direction's states
    hold S0, so the shift is right for every length), S[a:b] the saved ones, paired with rows a-lo..
    b-lo. The one row left out (lo < 0: row 0 forward; lo + n > T: row n-1 in reverse) has S0."""
    lo = start + 1 if reverse else start - 1
    return lo, max(lo, 0), min(lo + n, T)


def clip_scale(sumsq, clip, one):
    """The factor that rescales a vector of squared norm ``sumsq`` to norm ``clip`` when it is longer
    (the article's per-step clipping); 1 when ``clip`` <= 0 (off) or the vector is short enough."""
    if clip > 0 and sumsq > clip * clip:
        return one * clip / math.sqrt(sumsq)
    return one
