"""The one place a backend is chosen (DESIGN.md §3).

``reference``: NumPy loops straight from the formulas, float64 inside (the spec).
``cpu``: ``@njit`` kernels on NumPy arrays.
``cuda``: ``@cuda.jit`` kernels; CuPy arrays and cuBLAS on a real GPU, NumPy arrays under the
simulator (``NUMBA_ENABLE_CUDASIM=1``).

An explicit ``backend=`` wins; else ``GPUBPTT_BACKEND``; else ``auto``: ``cuda`` when the inputs are
CuPy arrays or a GPU with a working CuPy (or the simulator) is available, else ``cpu``, or
``reference`` where NUMBA_DISABLE_JIT=1 leaves the cpu kernels uncompiled.
"""
import functools
import importlib
import os
from dataclasses import dataclass

import numpy as np

from .arrays import _cupy, check_choice
from .kernels.settings import env_choice

BACKENDS = ("auto", "reference", "cpu", "cuda")
ENV_VAR = "GPUBPTT_BACKEND"


@functools.lru_cache(maxsize=None)
def cuda_status():
    """(kind, detail): kind is 'gpu', 'simulator' or None (no CUDA backend), detail says why."""
    try:
        from .kernels import cuda_compat
    except Exception as e:  # pragma: no cover - broken installs
        return None, f"numba.cuda failed to import ({e})"
    if cuda_compat.cuda is None:
        return None, "numba-cuda is not installed"
    if cuda_compat.simulator_enabled():
        return "simulator", "the CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1)"
    if cuda_compat.gpu_available():
        try:
            _cupy()
        except RuntimeError as e:  # the GPU backend moves its data with CuPy
            return None, f"a CUDA GPU is available; {e}"
        return "gpu", "a CUDA GPU is available"
    return None, "no CUDA GPU or driver was found and the simulator is off"


def _jit_disabled():
    import numba

    return bool(numba.config.DISABLE_JIT)


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its name, the array module it computes with, and why it was chosen."""

    name: str
    xp: object
    reason: str
    host_io: bool = False  # NumPy inputs computed on the GPU: moved there once and results moved back

    def kernels(self, family):
        """The kernel module of a cell family ('elman', ...) for this backend."""
        return _kernel_module(family, "cuda" if self.name == "cuda" else "cpu")


@functools.lru_cache(maxsize=None)
def _kernel_module(family, target):
    return importlib.import_module(f"{__package__}.kernels.{family}_{target}")


def requested_backend(backend):
    """The backend asked for: the argument, else GPUBPTT_BACKEND, else 'auto'; validated."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        name = env_choice(ENV_VAR, BACKENDS, "auto")
        if name != "auto":
            return name, f"{ENV_VAR}={os.environ[ENV_VAR]}"
    return backend, "backend argument" if backend != "auto" else "auto"


def resolve(backend, on_device):
    """Choose the backend for inputs that are on the GPU (``on_device``) or on the host."""
    name, source = requested_backend(backend)
    kind, detail = (None, "") if name in ("cpu", "reference") and not on_device else cuda_status()
    if name == "auto":
        if on_device:
            name, why = "cuda", "the inputs are CuPy arrays"
        elif kind is not None:
            name, why = "cuda", detail
        elif _jit_disabled():
            name, why = "reference", f"{detail}, and NUMBA_DISABLE_JIT=1 leaves the cpu backend's kernels uncompiled"
        else:
            name, why = "cpu", detail
        source = f"auto: {why}"
    if name == "cpu" and _jit_disabled():
        raise ValueError(f"backend='cpu' ({source}) needs Numba's compiler, which NUMBA_DISABLE_JIT=1 turns off: its "
                         "kernels call BLAS and a product of their own that only compiled code reaches; use "
                         "backend='reference' to step through the formulas in Python")
    if name in ("cpu", "reference"):
        if on_device:
            raise ValueError(
                f"backend={name!r} runs on host arrays but the inputs are CuPy arrays on the GPU: "
                "use backend='cuda' or move them with gpubptt.to_host(...)"
            )
        return Backend(name, np, source)
    if kind is None:
        asked = source if source.startswith(ENV_VAR) else "backend='cuda'"
        raise ValueError(
            f"{asked} is not available: {detail}. It needs numba-cuda and CuPy (pip install 'gpubptt[cuda12]' "
            "or 'gpubptt[cuda13]') and an NVIDIA GPU with its driver; or, to run the kernels in Numba's CUDA "
            "simulator, numba-cuda and NUMBA_ENABLE_CUDASIM=1 set in the environment before Python starts"
        )
    if kind == "simulator":
        return Backend("cuda", np, source)
    return Backend("cuda", _cupy(), source, host_io=not on_device)
