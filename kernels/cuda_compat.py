"""The one module that imports ``numba.cuda``: a move away from numba-cuda changes this file only.

``cuda`` is None when no CUDA target is installed (the base install: NumPy, Numba, SciPy).

It is also the one module that reaches into numba-cuda's internals, in three small places, each
for something numba-cuda 0.30 has no public API for:

- ``target_compute_capability(cc)``: compiling for a given architecture with no driver (the compile
  check). Device functions that numba-cuda itself provides as ``@overload``s, such as
  ``cuda.cg.this_grid()``, are compiled through a dispatcher that asks ``get_current_device()`` for
  the compute capability, which fails without a driver; the context manager answers it.
- ``allow_dynamic_shared_memory``: raising a compiled kernel's dynamic shared memory limit above
  the default 48 KiB (``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES``, the opt-in every GPU
  since Volta needs for larger blocks), set on the kernel handle the way numba-cuda sets its own
  shared-memory carveout.
- ``compiled_kernel``: the compiled overload a launch with given arguments runs, whose
  ``max_cooperative_grid_blocks`` (public) bounds a cooperative grid.
"""
import contextlib
import functools
import importlib.util
import types as _pytypes

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


# ----------------------------------------------------------------------------------------------
# Device limits and kernel attributes (used by cuda_blocks.py to choose a kernel variant)


@functools.lru_cache(maxsize=None)
def _device_limits(device_id):
    dev = cuda.get_current_device()
    optin = int(getattr(dev, "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", 0) or 0)
    per_block = int(dev.MAX_SHARED_MEMORY_PER_BLOCK)
    return {
        "sm_count": int(dev.MULTIPROCESSOR_COUNT),
        "smem_per_block": per_block,
        "smem_optin": max(optin, per_block),
        "smem_per_sm": int(dev.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
        "cooperative": bool(getattr(dev, "COOPERATIVE_LAUNCH", 1)),
    }


def device_limits():
    """Limits of the current GPU as a dict: ``sm_count``, ``smem_per_block`` (dynamic shared memory a
    kernel gets without opting in, 48 KiB), ``smem_optin`` (the most it can opt in to: 163 KiB on an
    A100, 227 KiB on an H100), ``smem_per_sm``, ``cooperative`` (cooperative launches supported).
    None without a GPU."""
    if not gpu_available():
        return None
    return dict(_device_limits(cuda.get_current_device().id))


def compiled_kernel(kernel, args):
    """The compiled kernel (numba-cuda's ``_Kernel``) that ``kernel[...](*args)`` runs, compiled now
    if it was not already, exactly as a launch would compile it; None under the simulator."""
    if simulator_enabled():
        return None
    return kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))


def static_shared_memory(compiled):
    """Bytes of static shared memory per block of a ``compiled_kernel`` (0 under the simulator)."""
    return 0 if compiled is None else int(compiled.shared_mem_per_block)


def cooperative_grid_limit(compiled, threads, dynamic_smem):
    """The largest cooperative grid a ``compiled_kernel`` can be launched with for this block size and
    dynamic shared memory (``_Kernel.max_cooperative_grid_blocks``); 1 under the simulator."""
    if compiled is None:
        return 1
    return int(compiled.max_cooperative_grid_blocks(threads, dynamic_smem))


_dynamic_smem_allowed = {}


def allow_dynamic_shared_memory(compiled, nbytes):
    """Let a ``compiled_kernel`` launch with ``nbytes`` of dynamic shared memory per block above the
    default 48 KiB (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES). Returns True when set (or not
    needed: the simulator), False when it could not be set, so the caller can choose a smaller
    configuration."""
    if compiled is None:
        return True
    try:
        from cuda.bindings import driver as binding
        from numba.cuda.cudadrv.driver import driver

        cufunc = compiled._codelibrary.get_cufunc()
        if _dynamic_smem_allowed.get(id(cufunc), (None, 0))[1] >= nbytes:
            return True
        attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        driver.cuKernelSetAttribute(attr, int(nbytes), cufunc.handle, cufunc.device.id)
    except Exception:  # pragma: no cover - needs a GPU; an older or newer numba-cuda layout
        return False
    _dynamic_smem_allowed[id(cufunc)] = (cufunc, nbytes)  # the reference keeps the id unique
    return True


@contextlib.contextmanager
def target_compute_capability(cc):
    """Within the block, numba-cuda compiles device functions for compute capability ``cc`` (a tuple
    such as (9, 0)) instead of asking the driver for the current device's: what the compile check
    needs to compile grid-synchronising kernels (``cuda.cg.this_grid()``) on a machine with no GPU.
    Not thread-safe; meant for the compile check's own process."""
    from numba.cuda import dispatcher

    saved = dispatcher.get_current_device
    target = _pytypes.SimpleNamespace(compute_capability=tuple(cc), id=0)
    dispatcher.get_current_device = lambda: target
    try:
        yield
    finally:
        dispatcher.get_current_device = saved
