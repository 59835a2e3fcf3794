"""Moving parameters (and gradients) between gpubptt and PyTorch, without importing torch.

A PyTorch model here is ``torch.nn.RNN/LSTM/GRU(..., num_layers, bidirectional)`` followed by an
``nn.Linear`` output layer stored under the prefix ``out.``: its ``state_dict()`` keys are
``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0`` (+ ``_reverse``, other layers) and
``out.weight``, ``out.bias``. They map one to one onto ``Wx``, ``Ws``, ``bx``, ``bs`` (with the suffixes
of ``gpubptt.params.key_suffix``) and ``Wy``, ``by``; gates are stacked in the same order on both sides.
What the state_dict does not hold is the caller's to match: the Elman cell (``nonlinearity='relu'``
is ``cell='relu'``), and the layout of x (``batch_first=True`` modules take x [B,T,D]; gpubptt's x
is [T,B,D], ``x.transpose(1, 0, 2)``). ``to_torch`` gives NumPy arrays: ``load_state_dict`` wants
tensors, ``{k: torch.from_numpy(v) for k, v in ...items()}``.
"""
from collections.abc import Mapping

import numpy as np

from .arrays import check_bool, check_int, is_device_array, to_host
from .params import check_params, check_structure, has_bias, layer_suffixes

__all__ = ["from_torch", "to_torch", "key_map"]

_NAMES = {"Wx": "weight_ih", "Ws": "weight_hh", "bx": "bias_ih", "bs": "bias_hh"}


def key_map(num_layers=1, bidirectional=False, bias=True):
    """{gpubptt key: torch state_dict key} for one structure."""
    check_int("num_layers", num_layers)
    check_bool("bidirectional", bidirectional)
    check_bool("bias", bias)
    keys = {}
    for layer, direction, sfx in layer_suffixes(num_layers, bidirectional):
        torch_sfx = f"_l{layer}" + ("_reverse" if direction else "")
        for ours, theirs in _NAMES.items():
            if bias or ours in ("Wx", "Ws"):
                keys[ours + sfx] = theirs + torch_sfx
    keys.update(Wy="out.weight", by="out.bias")
    return keys


def _as_numpy(value, name):
    """A NumPy copy of a NumPy/CuPy array or a torch tensor (read through its own methods); ``name``
    is the value's place in the caller's dict, for the error message."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor
        try:
            return value.detach().cpu().numpy().copy()
        except TypeError as e:  # a dtype NumPy lacks (bfloat16, ...)
            raise TypeError(f"{name}: expected dtype float32 or float64, got {value.dtype} ({e})") from None
        except RuntimeError as e:  # a tensor without data here: the 'meta' device, ...
            raise ValueError(f"{name}: cannot read the tensor's values (device {value.device}): {e}") from None
    if not (isinstance(value, np.ndarray) or is_device_array(value)):
        raise TypeError(f"{name}: expected a NumPy or CuPy array or a torch tensor, got {type(value).__name__}")
    return np.array(to_host(value), copy=True)


def _key_hint(missing, extra):
    """What the mismatch most likely is, for from_torch's error: a model's state_dict whose recurrent
    layer and output layer sit under other prefixes ('rnn.weight_ih_l0', 'fc.weight'), or an LSTM
    with a projection (proj_size); '' when it is neither."""
    if any(isinstance(k, str) and k.startswith("weight_hr_l") for k in extra):
        return (" (weight_hr_l*: an LSTM made with proj_size, which gpubptt's LSTM does not have; "
                "its h has the cell's width)")
    prefixes = {"recurrent": set(), "output": set()}
    for m in missing:
        tail = m[len("out"):] if m.startswith("out.") else "." + m  # '.weight' or '.weight_ih_l0'
        found = [k[:-len(tail)] for k in extra if isinstance(k, str) and k.endswith(tail) and len(k) > len(tail)]
        if len(found) != 1:
            return ""
        prefixes["output" if m.startswith("out.") else "recurrent"].add(found[0])
    if not missing or any(len(p) > 1 for p in prefixes.values()):
        return ""
    steps = [f"strip the prefix {p + '.'!r}" for p in prefixes["recurrent"]] + \
            [f"rename {p + '.'!r} to 'out.'" for p in prefixes["output"]]
    return f" (the keys look like those of a module holding the layers under prefixes: {' and '.join(steps)})"


def from_torch(state_dict, cell="tanh", num_layers=1, bidirectional=False):
    """A gpubptt parameter dict (NumPy copies) from a PyTorch ``state_dict`` keyed as described above."""
    check_structure(cell, num_layers, bidirectional)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a dict of arrays or tensors, got {type(state_dict).__name__}")
    has_bias = any(isinstance(k, str) and ("bias_ih_l" in k or "bias_hh_l" in k) for k in state_dict)  # any prefix
    mapping = key_map(num_layers, bidirectional, has_bias)
    missing = [k for k in mapping.values() if k not in state_dict]
    extra = sorted((k for k in state_dict if k not in mapping.values()), key=str)
    if missing or extra:
        parts = ([f"missing key(s) {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"unexpected key(s) {', '.join(map(repr, extra))}"] if extra else [])
        raise ValueError(f"state_dict: {'; '.join(parts)} for cell={cell!r}, num_layers={num_layers}, "
                         f"bidirectional={bool(bidirectional)}; expected {', '.join(mapping.values())}"
                         f"{_key_hint(missing, extra)}")
    params = {ours: _as_numpy(state_dict[theirs], f"state_dict[{theirs!r}]")
              for ours, theirs in mapping.items()}
    try:
        check_params(params, cell, num_layers, bidirectional)
    except (ValueError, TypeError) as e:  # name the torch key, not ours
        message = str(e)
        for ours, theirs in mapping.items():
            message = message.replace(f"params[{ours!r}]", f"state_dict[{theirs!r}]")
        raise type(e)(f"{message} (reading a state_dict for cell={cell!r}, num_layers={num_layers}, "
                      f"bidirectional={bool(bidirectional)})") from None
    return params


def to_torch(params_or_grads, cell="tanh", num_layers=1, bidirectional=False):
    """A dict keyed like the PyTorch model's ``state_dict()`` (NumPy copies). Applied to ``grads`` from
    ``gpubptt.bptt`` it gives what torch leaves in each parameter's ``.grad`` (the gradients of the
    inputs and initial states, ``"x"`` and ``"s0"``, have no torch parameter and are left out)."""
    check_structure(cell, num_layers, bidirectional)
    if not isinstance(params_or_grads, Mapping):
        raise TypeError(f"params_or_grads: expected a dict of arrays, got {type(params_or_grads).__name__}")
    values = {k: v for k, v in params_or_grads.items() if k not in ("x", "s0")}
    try:
        check_params(values, cell, num_layers, bidirectional)
    except (ValueError, TypeError) as e:  # name the argument as it is called here
        raise type(e)(f"params_or_grads{str(e).removeprefix('params')}") from None
    return {theirs: _as_numpy(values[ours], f"params_or_grads[{ours!r}]")
            for ours, theirs in key_map(num_layers, bidirectional, has_bias(values)).items()}
