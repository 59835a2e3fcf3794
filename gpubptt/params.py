"""Parameter dictionaries: their keys and shapes, seeded initialisation, validation.

Names and shapes follow DESIGN.md §1 and PyTorch: ``Wx [H,D]``, ``Ws [H,H]``, ``bx [H]``, ``bs [H]``
are ``torch.nn.RNN``'s ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``;
``Wy [O,H]``, ``by [O]`` are ``torch.nn.Linear``'s ``weight``, ``bias``.
"""
from collections.abc import Mapping

import numpy as np

from .arrays import check_float_array, check_type, FLOAT_DTYPES

CELLS = ("tanh", "relu", "sigmoid", "identity")
RECURRENT_KEYS = ("Wx", "Ws", "bx", "bs")
OUTPUT_KEYS = ("Wy", "by")


def param_shapes(input_size, hidden_size, output_size, bias=True):
    """{key: (shape, dimension names)} of the parameters, in initialisation order."""
    D, H, O = input_size, hidden_size, output_size
    shapes = {"Wx": ((H, D), ("H", "D")), "Ws": ((H, H), ("H", "H"))}
    if bias:
        shapes.update(bx=((H,), ("H",)), bs=((H,), ("H",)))
    shapes.update(Wy=((O, H), ("O", "H")), by=((O,), ("O",)))
    return shapes


def init_params(input_size, hidden_size, output_size, bias=True, dtype=np.float32, seed=None):
    """PyTorch's default initialisation, drawn from ``numpy.random.default_rng(seed)``.

    Every recurrent weight and bias is uniform on [-1/sqrt(H), 1/sqrt(H)] (``torch.nn.RNN``); the
    output layer is uniform on [-1/sqrt(H), 1/sqrt(H)] too (``torch.nn.Linear`` with fan-in H).
    Keys are drawn in the order Wx, Ws, bx, bs, Wy, by, so a seed fixes every value.
    """
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(hidden_size)
    return {
        key: rng.uniform(-bound, bound, size=shape).astype(dtype)
        for key, (shape, _) in param_shapes(input_size, hidden_size, output_size, bias).items()
    }


def check_params(params):
    """Validate a parameter dict; return (D, H, O, bias, dtype)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    keys = set(params)
    has_bias = "bx" in keys or "bs" in keys
    expected = set(param_shapes(1, 1, 1, bias=has_bias))
    missing, unknown = sorted(expected - keys), sorted(keys - expected, key=repr)  # keys may not be str
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown key(s) {', '.join(map(repr, unknown))}")
        raise ValueError(
            f"params: {'; '.join(parts)}; expected Wx, Ws, bx, bs, Wy, by (bx and bs both, or neither "
            "for a model without recurrent biases)"
        )
    for key in ("Wx", "Wy"):
        check_type(f"params[{key!r}]", params[key])
        if params[key].ndim != 2:
            names = ("H", "D") if key == "Wx" else ("O", "H")
            raise ValueError(
                f"params[{key!r}]: expected shape [{','.join(names)}] (2 dimensions), got {tuple(params[key].shape)}"
            )
    H, D = params["Wx"].shape
    O = params["Wy"].shape[0]
    if min(H, D, O) == 0:
        raise ValueError(
            f"params: expected sizes H, D, O of at least 1, got H={H}, D={D}, O={O} "
            f"(params['Wx'] [H,D] = {tuple(params['Wx'].shape)}, params['Wy'] [O,H] = {tuple(params['Wy'].shape)})"
        )
    dtype = params["Wx"].dtype
    for key, (shape, names) in param_shapes(D, H, O, has_bias).items():
        check_float_array(f"params[{key!r}]", params[key], names, shape, dtype)
    return D, H, O, has_bias, dtype
