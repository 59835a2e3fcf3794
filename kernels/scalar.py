"""Compile a module of plain scalar Python functions for one target (CPU ``njit`` or CUDA device).

The functions in ``kernels/activations.py`` call each other (``activate`` calls ``sigmoid``). Numba
resolves such calls through the function's globals at compile time, so each target gets copies of
the functions whose globals point at that target's compiled versions: one source, two targets.
"""
import types


def compile_scalar_functions(module, jit, overrides=None):
    """Return a namespace with every public function of ``module`` compiled by ``jit``; a name in
    ``overrides`` is taken from there instead (a function the target calls as it is, e.g. one with an
    ``overload`` for it), and the copies call it."""
    overrides = overrides or {}
    namespace = dict(vars(module))
    compiled = {}
    for name, fn in vars(module).items():
        if name in overrides:
            compiled[name] = overrides[name]
        elif isinstance(fn, types.FunctionType) and not name.startswith("_") and fn.__module__ == module.__name__:
            copy = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__, fn.__closure__)
            copy.__qualname__ = fn.__qualname__
            copy.__module__ = fn.__module__
            compiled[name] = jit(copy)
    namespace.update(compiled)  # calls inside the copies now resolve to compiled functions
    return types.SimpleNamespace(**compiled)
