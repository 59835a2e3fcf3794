"""Gradient clipping and fused optimizer updates on the GPU (``@cuda.jit``): twins of ``optim_cpu.py``.

Same functions, same arguments, same order, same scalar math (``optim_math.py``); see
``optim_cpu.py`` for the step sequence and the meaning of ``sums``, ``info`` and ``counters``. These
small arrays stay on the device: the clip coefficient, the finite flag and the step counter are
read by the update kernels there, so a training step never waits for the host, and a skipped
(non-finite) step is decided on the GPU too.

Elementwise kernels use a grid-stride loop. ``sum_squares`` reduces each block in shared memory (a
tree of ``syncthreads``, no warp shuffles, so the simulator runs it) and adds the block's partial
sums with one float64 atomic per block. ``finish_clip`` runs in one thread.
"""
import math

from numba import float64

from . import optim_math
from .cuda_compat import cuda, device_jit, kernel_jit, launch_stream
from .scalar import compile_scalar_functions

_scalar = compile_scalar_functions(optim_math, device_jit)
clamp = _scalar.clamp
sgd_element = _scalar.sgd_element
adam_element = _scalar.adam_element
adagrad_element = _scalar.adagrad_element

MAX_THREADS = 256  # a power of two: the reduction halves it
MAX_BLOCKS = 1024  # grid-stride loops cover larger arrays


def _sum_squares_kernel(g, limit, sums):
    partial = cuda.shared.array((2, MAX_THREADS), float64)
    tid = cuda.threadIdx.x
    lim = g.dtype.type(limit)
    raw = float64(0.0)
    clipped = float64(0.0)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < g.size:
        a = float64(g[i])
        c = float64(clamp(g[i], lim))
        raw += a * a
        clipped += c * c
        i += stride
    partial[0, tid] = raw
    partial[1, tid] = clipped
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            partial[0, tid] += partial[0, tid + half]
            partial[1, tid] += partial[1, tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        cuda.atomic.add(sums, 0, partial[0, 0])
        cuda.atomic.add(sums, 1, partial[1, 0])


def _finish_clip_kernel(sums, max_norm, counters, info):
    if cuda.grid(1) != 0:
        return
    finite = math.isfinite(sums[0])
    info[0] = math.sqrt(sums[0])
    coef = float64(1.0)
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


def _scale_kernel(g, limit, info):
    if info[2] == 0.0:
        return
    lim = g.dtype.type(limit)
    coef = g.dtype.type(info[1])
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < g.size:
        g[i] = clamp(g[i], lim) * coef
        i += stride


def _sgd_kernel(p, g, buf, info, counters, limit, lr, momentum, dampening, nesterov, weight_decay):
    if info[2] == 0.0:
        return
    dt = p.dtype.type
    lim = dt(limit)
    coef = dt(info[1])
    first = counters[0] == 1
    lr_ = dt(lr)
    mom = dt(momentum)
    damp = dt(1.0 - dampening)
    wd = dt(weight_decay)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < p.size:
        gi = clamp(g[i], lim) * coef
        b = buf[i] if momentum != 0 else dt(0.0)
        pi, b = sgd_element(p[i], gi, b, first, lr_, mom, damp, nesterov, wd)
        p[i] = pi
        if momentum != 0:
            buf[i] = b
        i += stride


def _adam_kernel(p, g, m, v, info, counters, limit, lr, beta1, beta2, eps, weight_decay):
    if info[2] == 0.0:
        return
    dt = p.dtype.type
    t = counters[0]
    step_size = dt(lr / (1.0 - beta1 ** t))
    bias2_sqrt = dt(math.sqrt(1.0 - beta2 ** t))
    lim = dt(limit)
    coef = dt(info[1])
    w1 = dt(1.0 - beta1)
    b2 = dt(beta2)
    w2 = dt(1.0 - beta2)
    e = dt(eps)
    wd = dt(weight_decay)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < p.size:
        gi = clamp(g[i], lim) * coef
        pi, mi, vi = adam_element(p[i], gi, m[i], v[i], step_size, w1, b2, w2, e, bias2_sqrt, wd)
        p[i] = pi
        m[i] = mi
        v[i] = vi
        i += stride


def _adagrad_kernel(p, g, s, info, counters, limit, lr, lr_decay, eps, weight_decay):
    if info[2] == 0.0:
        return
    dt = p.dtype.type
    t = counters[0]
    clr = dt(lr / (1.0 + (t - 1) * lr_decay))
    lim = dt(limit)
    coef = dt(info[1])
    e = dt(eps)
    wd = dt(weight_decay)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < p.size:
        gi = clamp(g[i], lim) * coef
        pi, si = adagrad_element(p[i], gi, s[i], clr, e, wd)
        p[i] = pi
        s[i] = si
        i += stride


sum_squares_kernel = kernel_jit(_sum_squares_kernel)
finish_clip_kernel = kernel_jit(_finish_clip_kernel)
scale_kernel = kernel_jit(_scale_kernel)
sgd_kernel = kernel_jit(_sgd_kernel)
adam_kernel = kernel_jit(_adam_kernel)
adagrad_kernel = kernel_jit(_adagrad_kernel)


def launch_config(n):
    """(blocks, threads) for n elements: a power of two from 32 to MAX_THREADS threads per block (small
    arrays get small blocks, which keeps the simulator fast), at most MAX_BLOCKS blocks."""
    threads = 32
    while threads < MAX_THREADS and threads < n:
        threads *= 2
    blocks = min(MAX_BLOCKS, max(1, (n + threads - 1) // threads))
    return blocks, threads


def _launch(kernel, first, args):
    blocks, threads = launch_config(first.size)
    kernel[blocks, threads, launch_stream(first)](*args)


def sum_squares(g, limit, sums):
    """sums[0] += Σ g², sums[1] += Σ clamp(g, limit)²; arguments as ``optim_cpu.sum_squares``."""
    _launch(sum_squares_kernel, g, (g, limit, sums))


def finish_clip(sums, max_norm, counters, info):
    """Norm, clip coefficient, finite flag, step counters; arguments as ``optim_cpu.finish_clip``."""
    finish_clip_kernel[1, 1, launch_stream(sums)](sums, max_norm, counters, info)


def scale(g, limit, info):
    """g <- clamp(g, limit) · info[1] when finite; arguments as ``optim_cpu.scale``."""
    _launch(scale_kernel, g, (g, limit, info))


def sgd_update(p, g, buf, info, counters, limit, lr, momentum, dampening, nesterov, weight_decay):
    """One SGD step of p in place; arguments as ``optim_cpu.sgd_update``."""
    _launch(sgd_kernel, p, (p, g, buf, info, counters, limit, lr, momentum, dampening, nesterov, weight_decay))


def adam_update(p, g, m, v, info, counters, limit, lr, beta1, beta2, eps, weight_decay):
    """One Adam step of p in place; arguments as ``optim_cpu.adam_update``."""
    _launch(adam_kernel, p, (p, g, m, v, info, counters, limit, lr, beta1, beta2, eps, weight_decay))


def adagrad_update(p, g, s, info, counters, limit, lr, lr_decay, eps, weight_decay):
    """One Adagrad step of p in place; arguments as ``optim_cpu.adagrad_update``."""
    _launch(adagrad_kernel, p, (p, g, s, info, counters, limit, lr, lr_decay, eps, weight_decay))


def signatures(numba_dtype):
    """Argument types of each kernel for one float dtype, for the compile check."""
    from numba import types

    a1 = types.Array(numba_dtype, 1, "C")
    f64 = types.Array(types.float64, 1, "C")
    i64 = types.Array(types.int64, 1, "C")
    f = types.float64
    return {
        "optim.sum_squares": (_sum_squares_kernel, (a1, f, f64)),
        "optim.finish_clip": (_finish_clip_kernel, (f64, f, i64, f64)),
        "optim.scale": (_scale_kernel, (a1, f, f64)),
        "optim.sgd": (_sgd_kernel, (a1, a1, a1, f64, i64, f, f, f, f, types.boolean, f)),
        "optim.adam": (_adam_kernel, (a1, a1, a1, a1, f64, i64, f, f, f, f, f, f)),
        "optim.adagrad": (_adagrad_kernel, (a1, a1, a1, f64, i64, f, f, f, f, f)),
    }
