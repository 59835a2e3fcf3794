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
    except ImportError as e:  # depends on the install
        if isinstance(e, ModuleNotFoundError) and e.name == "cupy":
            raise RuntimeError("CuPy is not installed: install gpubptt with the extra matching your CUDA driver, "
                               "pip install 'gpubptt[cuda12]' or 'gpubptt[cuda13]'") from e
        raise RuntimeError(f"CuPy is installed but cannot be imported ({type(e).__name__}: {e}): its CUDA libraries "
                           "may not match the driver; pip install 'gpubptt[cuda12]' or 'gpubptt[cuda13]' installs "
                           "the CuPy for each") from e
    except OSError as e:  # a shared library it loads at import
        raise RuntimeError(f"CuPy is installed but cannot be imported ({type(e).__name__}: {e})") from e
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
    if type(a) is np.ndarray:  # the common case
        return
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name}: got a masked array, whose mask would be ignored: pass a.filled(value) (and, for "
                        "sequences of their own lengths, lengths)")
    if not (isinstance(a, np.ndarray) or is_device_array(a)):
        hint = (" (a torch tensor: pass t.detach().cpu().numpy(), or cupy.asarray(t) for one on the GPU)"
                if type(a).__module__.startswith("torch") else "")
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(a).__name__}{hint}")


class NonFiniteError(ValueError):
    """An array that must be finite holds NaN or Inf (a ValueError whose type says so; callers that
    add context re-raise it as ``type(e)(message)``)."""


class ValueChecks:
    """Checks of array values (finite; integers within a range) queued while a call is validated and
    evaluated together by ``run()``: every reduction runs on its array's own device and the results
    come back in one transfer per array module, so a call on CuPy arrays waits for the GPU once rather
    than once per array. ``run()`` raises the first failing check in the order they were queued.

    ``where`` (optional, per check): a boolean array over the leading dimensions of the array; only
    the entries it marks are checked (``where_text`` says which, for the message). ``immediate``: run
    each check as it is added (a lone array's check).
    """

    def __init__(self, immediate=False):
        self._queue = []
        self.immediate = immediate

    def _add(self, check):
        self._queue.append(check)
        if self.immediate:
            self.run()

    def finite(self, name, a, where=None, where_text=""):
        self._add((name, a, where, where_text, None))

    def within(self, name, a, low, high, where=None, where_text=""):
        """Every (marked) integer of ``a`` in [low, high) (high None: no upper bound)."""
        self._add((name, a, where, where_text, (low, high)))

    @staticmethod
    def _reduce(a, where, bounds):
        """All finite (a 0-d bool), or the (marked) minimum and maximum (two 0-d values), on a's device."""
        xp = _xp(a)
        if where is not None:
            where = where.reshape(where.shape + (1,) * (a.ndim - where.ndim))
        if bounds is None:
            ok = xp.isfinite(a)
            if where is not None:
                ok |= ~where
            return (ok.all(),)
        if where is None:
            return a.min(), a.max()
        info = np.iinfo(a.dtype)
        return xp.where(where, a, info.max).min(), xp.where(where, a, info.min).max()

    @staticmethod
    def _read_back(module, reductions):
        """The 0-d results of ``reductions`` (a list of tuples) as host floats, in one transfer."""
        flat = module.stack([module.asarray(r, dtype=np.float64) for rs in reductions for r in rs])
        values, i, out = to_host(flat), 0, []
        for rs in reductions:
            out.append(tuple(float(v) for v in values[i:i + len(rs)]))
            i += len(rs)
        return out

    def run(self):
        """Evaluate the queued checks (NumPy arrays at once, each array module's others read back together)
        and raise the first failure; the queue is emptied."""
        queue, self._queue = [q for q in self._queue if q[1].size], []
        modules = [_xp(a) for _, a, _, _, _ in queue]
        results = [self._reduce(a, where, bounds) if xp is np else None
                   for (_, a, where, _, bounds), xp in zip(queue, modules)]
        for module in set(modules) - {np}:
            mine = [i for i, xp in enumerate(modules) if xp is module]
            reductions = [self._reduce(queue[i][1], queue[i][2], queue[i][4]) for i in mine]
            for i, values in zip(mine, self._read_back(module, reductions)):
                results[i] = values
        for (name, _, _, where_text, bounds), result in zip(queue, results):
            if bounds is None and not result[0]:
                raise NonFiniteError(f"{name}: contains NaN or Inf{where_text}")
            if bounds is not None and (result[0] < bounds[0] or bounds[1] is not None and result[1] >= bounds[1]):
                expected = f"be >= {bounds[0]}" if bounds[1] is None else f"lie in [{bounds[0]}, {bounds[1] - 1}]"
                raise ValueError(f"{name}: values must {expected}{where_text}, "
                                 f"got values in [{int(result[0])}, {int(result[1])}]")


def check_float_array(name, a, names, shape, dtype=None, where=None, where_text="", checks=None):
    """Validate a float array's type, dtype, rank, shape (None = any size) and finiteness.

    ``names`` are the dimension names of the notation table ('T', 'B', ...). ``where``, ``where_text``:
    as in ``ValueChecks``. ``checks``: a ``ValueChecks`` that takes the finiteness check, to be run
    with the call's other checks (None: checked here and now). Returns the array.
    """
    check_float_type(name, a, dtype)
    check_shape(name, a, names, shape)
    (ValueChecks(immediate=True) if checks is None else checks).finite(name, a, where, where_text)
    return a


def check_float_type(name, a, dtype=None):
    """A NumPy or CuPy array of float32 or float64 (of ``dtype`` when given); its values are not read."""
    check_type(name, a)
    if a.dtype not in FLOAT_DTYPES:
        native = a.dtype.newbyteorder("=")
        hint = (f" (the opposite byte order of this machine's: convert with .astype({native.name!r}))"
                if a.dtype.kind == "f" and native in FLOAT_DTYPES else "")
        raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype.str if hint else a.dtype}{hint}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(
            f"{name}: dtype {a.dtype} differs from the other arrays' {np.dtype(dtype)} "
            "(float32 and float64 are not mixed; convert with .astype)"
        )


def check_shape(name, a, names, shape):
    if a.shape == shape:  # the common case, answered without a loop
        return
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        raise ValueError(f"{name}: expected shape {shape_text(names, shape)}, got {tuple(a.shape)}")


def check_int_array(name, a, names, shape, low, high, where=None, where_text="", checks=None):
    """Validate an integer array's dtype, shape and that every value (or every one ``where`` marks)
    lies in [low, high) (high None: no upper bound); ``where``, ``where_text``, ``checks`` as in
    ``check_float_array``."""
    check_type(name, a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype, got {a.dtype}")
    check_shape(name, a, names, shape)
    (ValueChecks(immediate=True) if checks is None else checks).within(name, a, low, high, where, where_text)
    return a


def check_per_sequence(name, values, B, low, high, most=None):
    """Integers, one per sequence, each in [low, high) (high None: no upper bound), from a list, tuple,
    NumPy or CuPy array [B]: an int32 NumPy array (a copy), values above ``most`` made ``most``.
    ``lengths`` and per-sequence ``loss_steps`` come this way."""
    if isinstance(values, (list, tuple)):
        if any(isinstance(v, (bool, np.bool_)) for v in values):  # NumPy would make True a 1
            raise TypeError(f"{name}: expected integers, got a bool in {values!r}")
        try:
            values = np.asarray(values)
        except ValueError:
            raise TypeError(f"{name}: expected a flat list or array of B integers, got {values!r}") from None
        if values.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integers, got values of dtype {values.dtype}")
    if not hasattr(values, "dtype") or isinstance(values, np.generic):  # np.int64(3): one number
        raise TypeError(f"{name}: expected a list or array of B = {B} integers, got {type(values).__name__} "
                        f"{values!r}")
    check_type(name, values)
    check_int_array(name, values, ("B",), (B,), low, high)
    values = to_host(values)
    return np.array(values if most is None else np.minimum(values, most), dtype=np.int32)


def check_int(name, value, low=1, allow_none=False):
    """An integer >= low (default: a positive integer); None passes when allowed. Returns int."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name}: expected {kind}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_dtype(name, dtype):
    """float32 or float64, as NumPy reads it ('float32', np.float64, a dtype); not None (which NumPy
    reads as float64). Returns the np.dtype."""
    try:
        found = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        found = None
    if found is None or found not in FLOAT_DTYPES:  # (np.dtype('float64') == None is True)
        shown = dtype.__name__ if isinstance(dtype, type) else repr(dtype)  # np.float16, not <class '...'>
        raise TypeError(f"{name}: expected float32 or float64, got {shown}")
    return found


def check_bool(name, value):
    """True or False (a Python or NumPy bool; not 0/1, a string or None). Returns bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def _xp(a):
    return _cupy() if is_device_array(a) else np
