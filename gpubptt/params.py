"""Parameter dictionaries: their keys and shapes, seeded initialisation, validation.

Names and shapes follow the package's notation and PyTorch. For one layer in one direction the keys are
``Wx [G·H,D]``, ``Ws [G·H,H]``, ``bx [G·H]``, ``bs [G·H]`` (``torch.nn.RNN/LSTM/GRU``'s
``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``) and ``Wy [O,H]``, ``by [O]``
(``torch.nn.Linear``'s ``weight``, ``bias``); G = 1 (Elman), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n),
the gates stacked in PyTorch's order. With several layers or both directions every recurrent key
carries PyTorch's suffix: ``Wx_l0``, ``Ws_l1``, ``bx_l0_reverse``, ...; layer l > 0 reads the
layer below's states, both directions concatenated (``Wx_l1 [G·H, 2H]``), and so does ``Wy [O, 2H]``.
"""
import re
from collections.abc import Mapping

import numpy as np

from .arrays import check_bool, check_choice, check_dtype, check_float_array, check_int, check_type

CELLS = ("tanh", "relu", "sigmoid", "identity", "lstm", "gru")
GATES = {"lstm": 4, "gru": 3}


def gates(cell):
    """G: the number of gate blocks stacked in Wx, Ws, bx, bs."""
    return GATES.get(cell, 1)


def gate_rows(G):
    """The rows of a weight of G gate blocks in the notation: 'H', '3H', '4H'."""
    return f"{G}H" if G > 1 else "H"


def key_suffix(layer, direction, num_layers=1, bidirectional=False):
    """'' for a single layer in one direction, else PyTorch's '_l{layer}' plus '_reverse'."""
    if num_layers == 1 and not bidirectional:
        return ""
    return f"_l{layer}" + ("_reverse" if direction else "")


def layer_suffixes(num_layers=1, bidirectional=False):
    """[(layer, direction, suffix)] in PyTorch's order: layer by layer, forward before reverse."""
    return [(layer, direction, key_suffix(layer, direction, num_layers, bidirectional))
            for layer in range(num_layers) for direction in range(2 if bidirectional else 1)]


def param_shapes(input_size, hidden_size, output_size, cell="tanh", num_layers=1, bidirectional=False, bias=True):
    """{key: (shape, dimension names)} of the parameters, in initialisation order."""
    D, H, O = input_size, hidden_size, output_size
    G, dirs = gates(cell), 2 if bidirectional else 1
    gh = gate_rows(G)
    below = "2H" if bidirectional else "H"
    shapes = {}
    for layer, _, sfx in layer_suffixes(num_layers, bidirectional):
        d_in, d_name = (D, "D") if layer == 0 else (dirs * H, below)
        shapes["Wx" + sfx] = ((G * H, d_in), (gh, d_name))
        shapes["Ws" + sfx] = ((G * H, H), (gh, "H"))
        if bias:
            shapes["bx" + sfx] = ((G * H,), (gh,))
            shapes["bs" + sfx] = ((G * H,), (gh,))
    shapes["Wy"] = ((O, dirs * H), ("O", below))
    shapes["by"] = ((O,), ("O",))
    return shapes


def check_structure(cell, num_layers, bidirectional):
    """Validate the model-structure arguments shared by every call."""
    check_choice("cell", cell, CELLS)
    check_int("num_layers", num_layers)
    check_bool("bidirectional", bidirectional)


def init_params(input_size, hidden_size, output_size, bias=True, dtype=np.float32, seed=None, cell="tanh",
                num_layers=1, bidirectional=False):
    """PyTorch's default initialisation, drawn from ``numpy.random.default_rng(seed)``.

    Every recurrent weight and bias is uniform on [-1/sqrt(H), 1/sqrt(H)] (``torch.nn.RNN/LSTM/GRU``);
    the output layer is uniform on [-1/sqrt(F), 1/sqrt(F)] with F its fan-in, H or 2H
    (``torch.nn.Linear``). Keys are drawn in the order of ``param_shapes``, so a seed fixes every value.
    """
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size)):
        check_int(name, v)
    check_structure(cell, num_layers, bidirectional)
    check_bool("bias", bias)
    dtype = check_dtype("dtype", dtype)
    rng = np.random.default_rng(check_int("seed", seed, low=0, allow_none=True))
    params = {}
    for key, (shape, _) in param_shapes(input_size, hidden_size, output_size, cell, num_layers, bidirectional,
                                        bias).items():
        fan_in = shape[-1] if key == "Wy" else (params["Wy"].shape[1] if key == "by" else hidden_size)
        bound = 1.0 / np.sqrt(fan_in)
        params[key] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return params


def check_recurrent_weight(name, Ws, cell):
    """A recurrent weight [G·H, H] of ``cell`` (a NumPy or CuPy array), its shape named in the error
    with the cell whose weight it would be."""
    check_choice("cell", cell, CELLS)
    check_type(name, Ws)
    G = gates(cell)
    if Ws.ndim != 2:
        raise ValueError(f"{name}: expected shape [{gate_rows(G)},H] (2 dimensions), got {tuple(Ws.shape)}")
    rows, H = Ws.shape
    if rows != G * H:  # H is read from Ws's width: its rows must agree
        whose = _whose_weight(rows // H) if H and rows % H == 0 else ""  # (rows != G·H: another G)
        raise ValueError(f"{name}: expected shape [{gate_rows(G)},H] = ({G * H}, {H}) (H = its width) for "
                         f"cell={cell!r}, got {tuple(Ws.shape)}{whose}")
    return Ws


def _whose_weight(G):
    """': [GH,H] is the weight of cell=...' for the error of a recurrent weight given with another cell."""
    cells = [c for c in CELLS if gates(c) == G]
    if not cells:
        return ""
    return f": [{gate_rows(G)},H] is the weight of cell={' or '.join(map(repr, cells))}"


def has_bias(keys):
    """Whether any key is a recurrent bias (bx, bs under any suffix)."""
    return any(isinstance(k, str) and k[:2] in ("bx", "bs") for k in keys)


def structure_of(keys):
    """(num_layers, bidirectional) that parameter keys' suffixes name (_l1, _l0_reverse, ...; none: (1, False))."""
    layers = [int(m.group(1)) for k in keys if isinstance(k, str) for m in [re.search(r"_l(\d+)(_reverse)?$", k)] if m]
    return max(layers) + 1 if layers else 1, any(isinstance(k, str) and k.endswith("_reverse") for k in keys)


def _structure_hint(keys):
    """'; these keys are those of num_layers=L, bidirectional=...' when the keys' suffixes say so."""
    num_layers, bidirectional = structure_of(keys)
    bias = has_bias(keys)
    if set(param_shapes(1, 1, 1, "tanh", num_layers, bidirectional, bias)) != keys:
        return ""
    return f"; these keys are those of num_layers={num_layers}, bidirectional={bidirectional}"


def check_params(params, cell="tanh", num_layers=1, bidirectional=False, checks=None):
    """Validate a parameter dict against the model structure; return (D, H, O, bias, dtype).
    ``checks``: a ``ValueChecks`` that takes the finiteness checks (None: each checked at once)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    keys = set(params)
    first = key_suffix(0, 0, num_layers, bidirectional)
    bias = has_bias(keys)
    expected = list(param_shapes(1, 1, 1, cell, num_layers, bidirectional, bias))
    missing = [k for k in expected if k not in keys]
    unknown = sorted(keys - set(expected), key=repr)  # keys may not all be str
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown key(s) {', '.join(map(repr, unknown))}")
        structure = f"cell={cell!r}, num_layers={num_layers}, bidirectional={bool(bidirectional)}"
        raise ValueError(
            f"params: {'; '.join(parts)}; for {structure} the keys are {', '.join(expected)} "
            f"(the b* keys all present, or all absent for a model without recurrent biases){_structure_hint(keys)}"
        )
    G = gates(cell)
    gh = gate_rows(G)
    for key, names in (("Wx" + first, (gh, "D")), ("Ws" + first, (gh, "H")), ("Wy", ("O", "H"))):
        check_type(f"params[{key!r}]", params[key])
        if params[key].ndim != 2:
            raise ValueError(f"params[{key!r}]: expected shape [{','.join(names)}] (2 dimensions), "
                             f"got {tuple(params[key].shape)}")
    check_recurrent_weight(f"params['Ws{first}']", params["Ws" + first], cell)
    H, D, O = params["Ws" + first].shape[1], params["Wx" + first].shape[1], params["Wy"].shape[0]
    if min(H, D, O) == 0:
        raise ValueError(
            f"params: expected sizes H, D, O of at least 1, got H={H}, D={D}, O={O} "
            f"(params['Ws{first}'] [{gh},H] = {tuple(params['Ws' + first].shape)}, "
            f"params['Wx{first}'] [{gh},D] = {tuple(params['Wx' + first].shape)}, "
            f"params['Wy'] [O,H] = {tuple(params['Wy'].shape)})"
        )
    dtype = params["Wx" + first].dtype
    for key, (shape, names) in param_shapes(D, H, O, cell, num_layers, bidirectional, bias).items():
        check_float_array(f"params[{key!r}]", params[key], names, shape, dtype, checks=checks)
    return D, H, O, bias, dtype
