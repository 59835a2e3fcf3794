"""Gradient clipping: by global norm (Pascanu, Mikolov, Bengio 2013) and by value, on every backend.

The seed article ends on the exploding gradient and its cure, "if the gradient > threshold,
normalise it". Three kinds exist in gpubptt:

- per time step, inside the reverse-time recurrence: ``gpubptt.bptt(..., clip_step=c)``;
- global norm over all parameter gradients, here: g <- c·g/‖g‖ when ‖g‖ > c, where ‖g‖ is the
  Euclidean norm of every parameter gradient taken together (``clip_global_norm``). The clipped
  norm is c exactly: ``torch.nn.utils.clip_grad_norm_`` scales by c/(‖g‖ + 1e-6), a relative
  difference of 1e-6/‖g‖;
- by value, min-char-rnn style: every element limited to [-c, c] (``clip_value``).

The functions below clip in place (the ``grads`` dict ``bptt`` returned is the caller's to change),
like ``torch.nn.utils.clip_grad_norm_``; optimizers fuse the same clipping into their update
(``Optimizer.step(grads, clip_norm=..., clip_value=...)``) and then leave ``grads`` untouched.
Only parameter gradients take part: the entries ``"x"`` and ``"s0"`` of a ``bptt`` result are not
parameters and are ignored.

On the ``cuda`` backend the norm is reduced on the GPU and the coefficient applied there by the
kernels of ``kernels/optim_cuda.py``: no value travels to the host, and the norm comes back as a 0-d
CuPy array (read it with ``float(norm)`` when you want it, which waits for the GPU). On ``cpu`` the
``@njit`` twins do the same; ``reference`` spells the formulas out in NumPy float64.

A gradient holding NaN or Inf (or whose squared norm overflows float64) has a non-finite norm:
``clip_global_norm`` then leaves the gradients as they are and returns that norm; ``clip_value``
(which measures no norm) limits ±Inf to ±limit and leaves NaN as NaN. The optimizers judge the
gradients before clipping: a non-finite one skips the step (nothing reaches the weights), which they
count and report.
"""
from collections.abc import Mapping
import math
import numbers

import numpy as np

from .arrays import check_float_type, is_device_array, to_device, to_host, xp_of
from .backend import resolve

__all__ = ["global_norm", "clip_global_norm", "clip_value"]

NON_PARAMETER_GRADS = ("x", "s0")  # entries of a bptt result that are not parameter gradients


def parameter_grads(grads):
    """The entries of ``grads`` that are parameter gradients (everything but "x" and "s0")."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads: expected a dict of arrays, got {type(grads).__name__}")
    return {k: v for k, v in grads.items() if k not in NON_PARAMETER_GRADS}


def check_threshold(name, value, allow_none=True):
    """A clipping threshold: a positive finite number (None, when allowed, means off). Returns float."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive number{' or None' if allow_none else ''}, got {value!r}")
    try:
        as_float = float(value)
    except OverflowError:  # an int past float's range
        as_float = math.inf
    if not (math.isfinite(as_float) and as_float > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return as_float


def check_arrays(name, arrays, dtype=None, in_place=False):
    """Validate a non-empty dict of float arrays of one dtype; return (xp, dtype).

    ``in_place``: the arrays are to be updated in place, through flat views, so each must be
    C-contiguous and writable, and no two may share memory (an array under two keys would be
    updated twice). Values are not read (no finiteness check): checking them would wait for the
    GPU, and non-finite gradients are the guard's business.
    """
    if not arrays:
        raise ValueError(f"{name}: expected at least one parameter array, got none")
    for key, a in arrays.items():
        where = f"{name}[{key!r}]"
        check_float_type(where, a, dtype)
        dtype = a.dtype
        if in_place and not a.flags.c_contiguous:
            raise ValueError(f"{where}: expected a C-contiguous array (it is updated in place), got strides {a.strides}")
        if in_place and not is_device_array(a) and not a.flags.writeable:  # CuPy arrays are always writable
            raise ValueError(f"{where}: expected a writable array (it is updated in place), got a read-only one")
    xp = xp_of({f"{name}[{k!r}]": v for k, v in arrays.items()})
    if in_place:
        check_apart(name, arrays, xp)
    return xp, np.dtype(dtype)


def check_apart(name, arrays, xp):
    """Refuse two entries of ``arrays`` (C-contiguous, on ``xp``'s side) whose memory overlaps: updated in
    place, such an array would be updated once per key. A contiguous array spans [start, start + nbytes):
    sorted by start, each must begin past the furthest end before it."""
    order = {key: i for i, key in enumerate(arrays)}
    starts = {key: a.ctypes.data if xp is np else a.data.ptr for key, a in arrays.items() if a.nbytes}
    furthest, owner = None, None
    for key in sorted(starts, key=starts.get):
        if furthest is not None and starts[key] < furthest:
            first, second = sorted((owner, key), key=order.get)  # named in the caller's order
            raise ValueError(f"{name}[{first!r}] and {name}[{second!r}]: expected separate arrays (each is updated "
                             "in place), got two that share memory")
        end = starts[key] + arrays[key].nbytes
        if furthest is None or end > furthest:
            furthest, owner = end, key


class Reduction:
    """The device-side scalars of one clipping pass: ``sums`` float64 [2], ``info`` float64 [3].

    ``info`` after ``run``: [global norm before clipping, clip coefficient, 1.0 if finite else 0.0]
    (kernels/optim_cpu.py). Lives on the compute device, made once and reused every step.
    """

    def __init__(self, be):
        xp = be.xp  # CuPy for host_io too: the work happens on the GPU
        self.be = be
        self.sums = xp.zeros(2, dtype=np.float64)
        self.info = xp.zeros(3, dtype=np.float64)

    def run(self, flat_grads, limit, max_norm, counters):
        """Reduce ``flat_grads`` (1-D views) and fill ``info``; ``counters`` [2] int64 counts the step."""
        k = self.be.kernels("optim")
        self.sums[...] = 0
        for g in flat_grads:
            k.sum_squares(g, limit, self.sums)
        k.finish_clip(self.sums, max_norm, counters, self.info)
        return self.info


def reference_coefficients(grads, limit=None, max_norm=None):
    """(norm before clipping, coefficient, finite) in float64, as plain NumPy formulas: the spec of
    ``finish_clip``. The coefficient applies to the value-clipped gradients."""
    raw = sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads)
    finite = math.isfinite(raw)
    coef = 1.0
    if finite and max_norm:
        clipped = [np.clip(np.asarray(g, np.float64), -limit, limit) if limit else np.asarray(g, np.float64)
                   for g in grads]
        norm = math.sqrt(sum(float(np.sum(c * c)) for c in clipped))
        if norm > max_norm:
            coef = max_norm / norm
    return math.sqrt(raw), coef, finite


def _prepare(grads, backend, in_place=True):
    """Validated parameter gradients, their backend, and the arrays to compute on (moved to the GPU
    for host_io, to be written back with ``_write_back``). ``in_place``: as in ``check_arrays``."""
    pg = parameter_grads(grads)
    xp, _ = check_arrays("grads", pg, in_place=in_place)
    be = resolve(backend, on_device=xp is not np)
    work = to_device(pg) if be.host_io else pg
    return pg, be, work


def _write_back(pg, work, be):
    if be.host_io:
        for key, g in pg.items():
            g[...] = to_host(work[key])


def global_norm(grads, backend="auto"):
    """‖g‖ over every parameter gradient in ``grads``, a 0-d float64 array on the grads' device.
    ``grads`` is only read: any layout will do (a non-contiguous array is reduced from a contiguous copy)."""
    pg, be, work = _prepare(grads, backend, in_place=False)
    if be.name == "reference":
        return np.asarray(reference_coefficients(list(pg.values()))[0])
    info = Reduction(be).run([g.reshape(-1) for g in work.values()], 0.0, 0.0, be.xp.zeros(2, np.int64))
    return norm_of(info, be)


def clip_global_norm(grads, max_norm, backend="auto"):
    """Scale every parameter gradient by max_norm/‖g‖ when ‖g‖ > max_norm, in place.

    Returns ‖g‖ before clipping as a 0-d float64 array on the grads' device (CuPy on a GPU: reading
    it waits for the GPU, so read it only when you need it). Non-finite gradients are left as they
    are; the returned norm is then NaN or Inf.
    """
    max_norm = check_threshold("max_norm", max_norm, allow_none=False)
    pg, be, work = _prepare(grads, backend)
    if be.name == "reference":
        norm, coef, finite = reference_coefficients(list(pg.values()), None, max_norm)
        if finite and coef != 1.0:
            for g in pg.values():
                g[...] = np.asarray(g, np.float64) * coef
        return np.asarray(norm)
    flat = [g.reshape(-1) for g in work.values()]
    info = Reduction(be).run(flat, 0.0, max_norm, be.xp.zeros(2, np.int64))
    k = be.kernels("optim")
    for g in flat:
        k.scale(g, 0.0, info)
    _write_back(pg, work, be)
    return norm_of(info, be)


def clip_value(grads, limit, backend="auto"):
    """Limit every element of every parameter gradient to [-limit, limit], in place (NaN stays NaN)."""
    limit = check_threshold("limit", limit, allow_none=False)
    pg, be, work = _prepare(grads, backend)
    if be.name == "reference":
        for g in pg.values():
            np.clip(g, -limit, limit, out=g)
        return None
    info = be.xp.asarray(np.array([0.0, 1.0, 1.0]))  # coefficient 1, finite: only the clamp acts
    k = be.kernels("optim")
    for g in work.values():
        k.scale(g.reshape(-1), limit, info)
    _write_back(pg, work, be)
    return None


def norm_of(info, be):
    """A copy of the norm in ``info`` (which the next step overwrites), on the caller's device."""
    norm = info[0, ...].copy()  # 0-d on NumPy too (info[0] would be a NumPy scalar)
    return to_host(norm) if be.host_io else norm
