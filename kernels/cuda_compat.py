"""The one module that imports ``numba.cuda``: a move away from numba-cuda changes this file only.

``cuda`` is None when no CUDA target is installed (the base install: NumPy, Numba, SciPy).
"""
import importlib.util

# numba-cuda (the maintained CUDA target) provides numba.cuda. Numba itself still ships a deprecated
# numba.cuda of its own: without numba-cuda installed, gpubptt has no CUDA backend rather than that.
if importlib.util.find_spec("numba_cuda") is not None:
    from numba import cuda
else:  # pragma: no cover - depends on the install
    cuda = None


def simulator_enabled():
    """True when Numba's CUDA simulator is active (NUMBA_ENABLE_CUDASIM=1 when numba.cuda loaded)."""
    if cuda is None:
        return False
    try:
        from numba.cuda import config
    except ImportError:  # pragma: no cover - older layouts keep the flag in numba.config
        from numba import config
    return bool(getattr(config, "ENABLE_CUDASIM", 0))


def gpu_available():
    """True when a real CUDA GPU and driver are usable (never true under the simulator)."""
    if cuda is None or simulator_enabled():
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - broken driver installs
        return False


def device_jit(fn):
    """Compile a plain Python scalar function as an inlined CUDA device function."""
    return cuda.jit(device=True, inline="always")(fn)


def kernel_jit(fn):
    """Compile a plain Python function as a lazily specialised CUDA kernel (no eager signature)."""
    return cuda.jit(fn)


def grid_sync():
    return cuda.cg.this_grid().sync()


def launch_stream(array):
    """The stream a kernel working on ``array`` launches on: CuPy's current stream for CuPy arrays
    (through ``cuda.external_stream``), the default stream otherwise (NumPy under the simulator)."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cuda.external_stream(cupy.cuda.get_current_stream().ptr)
    return 0


def device_description():
    """(name, (major, minor)) of the current GPU, or None without one."""
    if not gpu_available():
        return None
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return name, tuple(dev.compute_capability)
