"""Scalar math of gradient clipping and of the optimizer updates, shared by both targets.

Plain Python on purpose, like ``activations.py``: ``optim_cpu.py`` compiles these with ``njit`` and
``optim_cuda.py`` with ``cuda.jit(device=True, inline="always")``, so one formula runs on the CPU and
on the GPU. Every value comes in with the parameter's dtype (the kernels cast the hyperparameters
once), so float32 updates stay float32 math, as in ``torch.optim``. Differences such as 1 - beta2
are formed in float64 before the cast, as torch forms them in Python: 1 - float32(0.999) would be off
by 1e-5 relative.

Each update follows PyTorch's single-tensor implementation (``foreach=False``) operation by
operation, so the rounding matches it closely:

    SGD      g += wd·p;  buf = g (first step) or momentum·buf + (1 - dampening)·g;
             g = g + momentum·buf (Nesterov) or buf;  p -= lr·g
    Adam     g += wd·p;  m += (1 - beta1)·(g - m);  v = beta2·v + (1 - beta2)·g·g;
             p -= (lr / (1 - beta1^t)) · m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    Adagrad  g += wd·p;  s += g·g;  p -= (lr / (1 + (t - 1)·lr_decay)) · g / (sqrt(s) + eps)
"""
import math


def clamp(g, limit):
    """g limited to [-limit, limit]; limit <= 0 means no limit (value clipping switched off)."""
    if limit > 0:
        if g > limit:
            return limit
        if g < -limit:
            return -limit
    return g


def sgd_element(p, g, buf, first, lr, momentum, one_minus_dampening, nesterov, weight_decay):
    """(p, buf) after one SGD step of one element; ``buf`` is the momentum buffer."""
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        if first:
            buf = g
        else:
            buf = momentum * buf + one_minus_dampening * g
        if nesterov:
            g = g + momentum * buf
        else:
            g = buf
    return p - lr * g, buf


def adam_element(p, g, m, v, step_size, one_minus_beta1, beta2, one_minus_beta2, eps, bias2_sqrt, weight_decay):
    """(p, m, v) after one Adam step of one element.

    step_size = lr / (1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t) are computed once per step.
    """
    if weight_decay != 0:
        g = g + weight_decay * p
    m = m + one_minus_beta1 * (g - m)  # torch's exp_avg.lerp_(grad, 1 - beta1)
    v = beta2 * v + one_minus_beta2 * g * g
    denom = math.sqrt(v) / bias2_sqrt + eps
    return p - step_size * (m / denom), m, v


def adagrad_element(p, g, s, clr, eps, weight_decay):
    """(p, s) after one Adagrad step of one element; clr = lr / (1 + (t - 1)·lr_decay)."""
    if weight_decay != 0:
        g = g + weight_decay * p
    s = s + g * g
    return p - clr * (g / (math.sqrt(s) + eps)), s
