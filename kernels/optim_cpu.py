"""Gradient clipping and fused optimizer updates on the CPU (``@njit``); twins of ``optim_cuda.py``.

One training step is, with no value read back to Python in between (on the GPU: no host round trip):

    sums[:] = 0
    sum_squares(g, limit, sums)             for every parameter gradient (flat views)
    finish_clip(sums, max_norm, counters, info)
    <optimizer>_update(p, g, <state>, info, counters, limit, <hyperparameters>)   for every parameter

``sums``      float64 [2]  Σ g² and Σ clamp(g, limit)² over all gradients
``info``      float64 [3]  out of finish_clip: the global norm before clipping, the clip coefficient
                           applied to the (value-clipped) gradients, 1.0 if the gradients are finite
                           else 0.0 (the step is then skipped: nothing is written)
``counters``  int64   [2]  steps applied (t, the step number of bias corrections), steps skipped
``limit``     float        value clipping to [-limit, limit]; 0 switches it off
``max_norm``  float        global-norm clipping threshold; 0 switches it off

Every array is one-dimensional and C-contiguous (the caller passes ``a.reshape(-1)`` views, so the
updates land in the caller's arrays). Hyperparameters arrive as Python floats and are cast to the
parameter dtype once per call.
"""
import math

import numpy as np
from numba import njit

from . import cache, optim_math  # noqa: F401 (cache: before any function is compiled)
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(optim_math, njit(cache=True))
clamp = _scalar.clamp
sgd_element = _scalar.sgd_element
adam_element = _scalar.adam_element
adagrad_element = _scalar.adagrad_element


@njit(cache=True)
def sum_squares(g, limit, sums):
    """sums[0] += Σ g², sums[1] += Σ clamp(g, limit)², accumulated in float64.

    g     [n]  a flattened gradient
    sums  [2]  float64 accumulators
    """
    lim = g.dtype.type(limit)
    raw = 0.0
    clipped = 0.0
    for i in range(g.size):
        a = np.float64(g[i])
        c = np.float64(clamp(g[i], lim))
        raw += a * a
        clipped += c * c
    sums[0] += raw
    sums[1] += clipped


@njit(cache=True)
def finish_clip(sums, max_norm, counters, info):
    """The global norm, the clip coefficient and the finite flag from ``sums``; count the step.

    Pascanu et al. 2013: the gradients are scaled by max_norm / ‖g‖ when ‖g‖ > max_norm, where ‖g‖
    is the norm of the value-clipped gradients (the raw norm when value clipping is off).
    sums [2] float64, max_norm float, counters [2] int64 (in/out), info [3] float64 (out).
    """
    finite = math.isfinite(sums[0])
    info[0] = math.sqrt(sums[0])
    coef = 1.0
    if finite and max_norm > 0:
        norm = math.sqrt(sums[1])
        if norm > max_norm:
            coef = max_norm / norm
    info[1] = coef
    if finite:
        info[2] = 1.0
        counters[0] += 1
    else:
        info[2] = 0.0
        counters[1] += 1


@njit(cache=True)
def scale(g, limit, info):
    """g <- clamp(g, limit) · info[1] in place, only when info[2] says the gradients are finite.

    g [n], info [3] float64 from finish_clip.
    """
    if info[2] == 0.0:
        return
    lim = g.dtype.type(limit)
    coef = g.dtype.type(info[1])
    for i in range(g.size):
        g[i] = clamp(g[i], lim) * coef


@njit(cache=True)
def sgd_update(p, g, buf, info, counters, limit, lr, momentum, dampening, nesterov, weight_decay):
    """One SGD step (momentum, dampening, Nesterov, L2 weight decay) of p in place.

    p, g [n]; buf [n] the momentum buffer (any size, unused, when momentum is 0); nesterov bool.
    """
    if info[2] == 0.0:
        return
    dt = p.dtype.type
    lim, coef = dt(limit), dt(info[1])
    first = counters[0] == 1
    lr_, mom, damp, wd = dt(lr), dt(momentum), dt(1.0 - dampening), dt(weight_decay)
    for i in range(p.size):
        gi = clamp(g[i], lim) * coef
        b = buf[i] if momentum != 0 else dt(0.0)
        p[i], b = sgd_element(p[i], gi, b, first, lr_, mom, damp, nesterov, wd)
        if momentum != 0:
            buf[i] = b


@njit(cache=True)
def adam_update(p, g, m, v, info, counters, limit, lr, beta1, beta2, eps, weight_decay):
    """One Adam step (bias-corrected, L2 weight decay) of p in place; m, v [n] the moment estimates."""
    if info[2] == 0.0:
        return
    dt = p.dtype.type
    t = counters[0]
    step_size = dt(lr / (1.0 - beta1 ** t))
    bias2_sqrt = dt(math.sqrt(1.0 - beta2 ** t))
    lim, coef = dt(limit), dt(info[1])
    w1, b2, w2 = dt(1.0 - beta1), dt(beta2), dt(1.0 - beta2)
    e, wd = dt(eps), dt(weight_decay)
    for i in range(p.size):
        gi = clamp(g[i], lim) * coef
        p[i], m[i], v[i] = adam_element(p[i], gi, m[i], v[i], step_size, w1, b2, w2, e, bias2_sqrt, wd)


@njit(cache=True)
def adagrad_update(p, g, s, info, counters, limit, lr, lr_decay, eps, weight_decay):
    """One Adagrad step (learning-rate decay, L2 weight decay) of p in place; s [n] the sum of g²."""
    if info[2] == 0.0:
        return
    dt = p.dtype.type
    t = counters[0]
    clr = dt(lr / (1.0 + (t - 1) * lr_decay))
    lim, coef = dt(limit), dt(info[1])
    e, wd = dt(eps), dt(weight_decay)
    for i in range(p.size):
        gi = clamp(g[i], lim) * coef
        p[i], s[i] = adagrad_element(p[i], gi, s[i], clr, e, wd)
