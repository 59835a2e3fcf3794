"""gpubptt: recurrent networks trained by backpropagation through time, with Numba kernels on the
CPU (``@njit``) and on NVIDIA GPUs (``@cuda.jit``), and a plain-NumPy reference that spells out the
formulas. Notation: x [T,B,D] inputs, S [T,B,H] states, Y [T,B,O] outputs; weights Wx, Ws, bx, bs
(the recurrence) and Wy, by (the output layer), as in ``gpubptt.params``.
"""
__version__ = "0.1.0"

from . import interop
from .arrays import to_device, to_host
from .model import RNN, bptt, forward
from .params import init_params
from . import clipping, diagnostics, optim, tasks
from .training import load_model, train

__all__ = ["RNN", "bptt", "forward", "init_params", "interop", "to_device", "to_host", "train", "load_model",
           "clipping", "diagnostics", "optim", "tasks", "__version__"]
