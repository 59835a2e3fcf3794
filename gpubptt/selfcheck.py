"""``gpubptt check``: run forward + BPTT on small random problems on one backend and compare every
output and gradient with the reference (float64 loops). This is how a user verifies an install.
"""
import math
from collections.abc import Iterable

import numpy as np

from .arrays import check_bool, check_choice, check_dtype, check_int, to_host
from .backend import resolve
from .model import bptt, forward
from .params import CELLS, init_params

# (T, B, D, H, O, lengths): small enough for the CUDA simulator, with B = 1, T = 1, H not a power of
# two, and sequences of different lengths in one batch
SHAPES = ((5, 3, 4, 7, 3, (5, 2, 4)), (1, 1, 2, 3, 2, None))
# and on the cpu backend, shapes where its fast paths run (kernels/cpu_variants.py): float32 with H a
# multiple of 32 on an AVX-512 host takes the register-blocked step products; one sequence with an
# LSTM or GRU weight of 1 MiB or more (H = 320) on two threads or more, the units variant
CPU_SHAPES = ((4, 3, 5, 64, 2, (4, 1, 3)), (3, 1, 4, 320, 2, None))
# (output_activation, loss, loss_steps)
LOSS_SETUPS = (("identity", "squared", "all"), ("softmax", "cross_entropy", "last"))
# Largest relative error accepted per dtype. float64: the backends sum in another order than the
# reference, ~1e-15 per operation; float32: rounding of ~6e-8 per operation grows over the steps
# and the products, measured below 1e-5 on these sizes; 1e-4 leaves margin without hiding a bug.
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}


def relative_error(a, ref):
    """max |a - ref| / max |ref| (the largest over both arrays of a pair such as LSTM's (h, c)); NaN
    when a holds NaN, Inf when the shapes (or the number of arrays) differ: both fail any tolerance."""
    if isinstance(ref, tuple):
        if not isinstance(a, tuple) or len(a) != len(ref):
            return math.inf
        errors = [relative_error(x, r) for x, r in zip(a, ref)]
        return math.nan if any(math.isnan(e) for e in errors) else max(errors)
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        return math.inf
    if not ref.size:
        return 0.0
    return float(np.abs(a - ref).max()) / max(float(np.abs(ref).max()), 1e-30)


def run_check(backend="auto", dtype="float32", cells=CELLS, num_layers=1, bidirectional=False, seed=0, write=print):
    """Compare ``backend`` with the reference; write one table row per problem; True if all pass.
    ``cells``: a cell name or a sequence of them."""
    dtype = check_dtype("dtype", dtype)
    tol = TOLERANCE[dtype.name]
    if not isinstance(cells, (str, Iterable)):
        raise TypeError(f"cells: expected a cell name or a list of them, got {cells!r}")
    cells = (cells,) if isinstance(cells, str) else tuple(cells)
    if not cells:
        raise ValueError("cells: expected at least one cell, got none (there would be nothing to check)")
    for cell in cells:
        check_choice("cells", cell, CELLS)
    if not callable(write):
        raise TypeError(f"write: expected a function that takes a line of text (print), got {write!r}")
    rng = np.random.default_rng(check_int("seed", seed, low=0, allow_none=True))
    structure = dict(num_layers=check_int("num_layers", num_layers),
                     bidirectional=check_bool("bidirectional", bidirectional))
    n_states = num_layers * (2 if bidirectional else 1)
    ok, header = True, None
    shapes = SHAPES + (CPU_SHAPES if resolve(backend, on_device=False).name == "cpu" else ())
    for cell in cells:
        for out, loss, steps in LOSS_SETUPS:
            for T, B, D, H, O, lengths in shapes:
                params = init_params(D, H, O, dtype=dtype, seed=int(rng.integers(2**31)), cell=cell, **structure)
                x = rng.standard_normal((T, B, D)).astype(dtype)
                shape = (B, H) if n_states == 1 else (n_states, B, H)
                s0 = (0.5 * rng.standard_normal(shape)).astype(dtype)
                if cell == "lstm":
                    s0 = (s0, (0.5 * rng.standard_normal(shape)).astype(dtype))
                d = (rng.integers(0, O, (T, B)) if loss == "cross_entropy"
                     else rng.standard_normal((T, B, O)).astype(dtype))
                kw = dict(structure, lengths=lengths)
                ref_Y, ref_S = forward(params, x, s0, cell, out, backend="reference", **kw)
                ref_L, ref_g = bptt(params, x, d, s0, cell, out, loss, steps, backend="reference", **kw)
                Y, S = to_host(forward(params, x, s0, cell, out, backend=backend, **kw))
                L, g = to_host(bptt(params, x, d, s0, cell, out, loss, steps, backend=backend, **kw))
                errors = {"Y": relative_error(Y, ref_Y), "S": relative_error(S, ref_S), "L": relative_error(L, ref_L)}
                for k in ref_g:  # one column per gradient; Wx* is the largest over the layers' Wx_l0, ...
                    column = k if k == k.split("_")[0] else k.split("_")[0] + "*"
                    e = relative_error(g[k], ref_g[k]) if k in g else math.inf
                    errors[column] = e if math.isnan(e) else max(errors.get(column, 0.0), e)
                passed = all(e <= tol for e in errors.values())
                ok &= passed
                if header is None:
                    header = f"{'cell':9s}{'loss':28s}{'T,B,D,H,O':12s}" + "".join(f"{k:>9s}" for k in errors)
                    write(f"max relative error against the reference, {dtype.name}, tolerance {tol:g}, "
                          f"num_layers={num_layers}, bidirectional={bidirectional}")
                    write(header + "  result")
                write(f"{cell:9s}{f'{loss}/{out}/{steps}':28s}{f'{T},{B},{D},{H},{O}':12s}"
                      + "".join(f"{e:9.1e}" for e in errors.values()) + ("  OK" if passed else "  FAIL"))
    write("OK: every output and gradient matches the reference" if ok else "FAIL: some results differ from the reference")
    return ok
