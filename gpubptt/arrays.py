"""The NumPy/CuPy boundary: which array module holds the data, moving arrays, validating them.

Every public call validates through these helpers before any kernel runs. Messages name the
argument, what was expected and what came. Nothing here modifies a caller's array.
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(a):
    """True for a CuPy array (data on the GPU)."""
    if type(a) is np.ndarray:  # the common case, answered first (each call validates a dozen arrays)
        return False
    return type(a).__module__.split(".")[0] == "cupy"


def _cupy():
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "CuPy is not installed: install gpubptt with the extra matching your CUDA driver, "
            "pip install 'gpubptt[cuda12]' or 'gpubptt[cuda13]'"
        ) from e
    return cupy


def xp_of(named):
    """The array module (numpy or cupy) of the arrays in ``named`` ({name: array or None}).

    Raises ValueError when host and device arrays are mixed: gpubptt never copies silently.
    """
    on_device = {n for n, a in named.items() if a is not None and is_device_array(a)}
    on_host = {n for n, a in named.items() if a is not None and not is_device_array(a)}
    if on_device and on_host:
        raise ValueError(
            "CuPy (GPU) and NumPy (host) arrays are mixed: "
            f"{', '.join(sorted(on_device))} on the GPU, {', '.join(sorted(on_host))} on the host; "
            "move them to one side with gpubptt.to_device(...) or gpubptt.to_host(...)"
        )
    return _cupy() if on_device else np


def to_device(a):
    """Copy a NumPy array (or a dict/tuple/list of them) to the GPU as CuPy arrays."""
    if isinstance(a, dict):
        return {k: to_device(v) for k, v in a.items()}
    if isinstance(a, (tuple, list)):
        return type(a)(to_device(v) for v in a)
    if a is None or is_device_array(a):
        return a
    cupy = _cupy()
    try:
        return cupy.asarray(a)
    except RuntimeError as e:  # CuPy's CUDARuntimeError: no GPU, or a driver too old for this CuPy
        if not type(e).__module__.startswith("cupy"):
            raise
        raise RuntimeError(f"to_device: cannot copy to a GPU ({e}); moving arrays to the GPU needs an NVIDIA GPU "
                           "with a driver for the installed CuPy (`gpubptt info` shows what was found); "
                           "without one, keep NumPy arrays: backend 'cpu' runs them") from e


def to_host(a):
    """Copy a CuPy array (or a dict/tuple/list of them) to the host as NumPy arrays."""
    if isinstance(a, dict):
        return {k: to_host(v) for k, v in a.items()}
    if isinstance(a, (tuple, list)):
        return type(a)(to_host(v) for v in a)
    if a is not None and is_device_array(a):
        return a.get()
    return a


def shape_text(names, shape):
    """'[T,B,D] = (5, 2, 3)' with None shown as '*' (a size not fixed yet)."""
    sizes = ", ".join("*" if s is None else str(s) for s in shape)
    if len(shape) == 1:
        sizes += ","
    return f"[{','.join(names)}] = ({sizes})"


def check_type(name, a):
    if not (isinstance(a, np.ndarray) or is_device_array(a)):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(a).__name__}")


def check_float_array(name, a, names, shape, dtype=None, where=None, where_text=""):
    """Validate a float array's type, dtype, rank, shape (None = any size) and finiteness.

    ``names`` are the dimension names of the notation table ('T', 'B', ...). ``where``: a boolean array
    over the leading dimensions; only the entries it marks must be finite (``where_text`` says which,
    for the message). Returns the array.
    """
    check_type(name, a)
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(
            f"{name}: dtype {a.dtype} differs from the other arrays' {np.dtype(dtype)} "
            "(float32 and float64 are not mixed; convert with .astype)"
        )
    check_shape(name, a, names, shape)
    values = a if where is None else a[where]
    if values.size and not bool(_xp(a).isfinite(values).all()):
        raise ValueError(f"{name}: contains NaN or Inf{where_text}")
    return a


def check_shape(name, a, names, shape):
    if a.shape == shape:  # the common case, answered without a loop
        return
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        raise ValueError(f"{name}: expected shape {shape_text(names, shape)}, got {tuple(a.shape)}")


def check_int_array(name, a, names, shape, low, high, where=None, where_text=""):
    """Validate an integer array's dtype, shape and that every value (or every one ``where`` marks, as
    in ``check_float_array``) lies in [low, high)."""
    check_type(name, a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype, got {a.dtype}")
    check_shape(name, a, names, shape)
    values = a if where is None else a[where]
    if values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < low or hi >= high:
            raise ValueError(f"{name}: values must lie in [{low}, {high - 1}]{where_text}, "
                             f"got values in [{lo}, {hi}]")
    return a


def check_int(name, value, low=1, allow_none=False):
    """An integer >= low (default: a positive integer); None passes when allowed. Returns int."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name}: expected {kind}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def _xp(a):
    return _cupy() if is_device_array(a) else np
