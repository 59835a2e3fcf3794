"""``gpubptt bench``: time forward + BPTT (and forward alone) against every peer, in one process.

    python -m gpubptt bench --cell tanh --dtype float32 --threads 2 --json out.json --markdown out.md
    from gpubptt import bench; result = bench.run(cell="tanh", shapes=[(64, 100, 64, 256)], threads=2)

What is timed
-------------
One problem per shape (B, T, D, H) with O outputs (``output_size``, default O = 1: the issue's floors
are a tanh RNN with a linear output and the squared loss, and one output keeps the output layer's share
of the work negligible, so the recurrence is what is measured; ``--output-size`` changes it):

    fwd+bptt  L = (1/B) Σ_t Σ_b Σ_o (d - Y)^2 with Y = S Wyᵀ + by, and every gradient: the parameters,
              dL/dx and dL/dS0 (an s0 is passed, for LSTM (h0, c0), so every peer computes the same set)
    fwd       Y and S only (PyTorch under ``torch.no_grad()``)

Peers, each given the same weights, inputs and targets, side by side in this process:

    reference   gpubptt's plain-NumPy spec (slow: its cost is projected from a run on a slice of the
                batch and time first; an entry whose projected run exceeds ``reference_budget_s`` is
                marked skipped, otherwise it gets as many timed runs as fit the budget, at least one)
    cpu         gpubptt's ``@njit`` kernels + SciPy's BLAS on one thread
    cuda        gpubptt's ``@cuda.jit`` kernels + cuBLAS, CuPy arrays already on the GPU (a real GPU
                only: the CUDA simulator is never benchmarked)
    torch-cpu   ``torch.nn.RNN`` (``nonlinearity=cell``) / ``nn.LSTM`` / ``nn.GRU`` + ``nn.Linear``,
                backward included, ``torch.set_num_threads(threads)``
    torch-cuda  the same on the GPU (cuDNN)

A peer that cannot run the cell (``torch.nn.RNN`` has no sigmoid or identity cell) is reported
unavailable with the reason: its probe on a tiny problem raised.

Timing: per peer, ``warmup`` untimed runs (Numba compiles or loads its cache, PyTorch picks its
kernels) whose results are checked, and ``MEMORY_RUNS`` untimed runs measuring memory (one for the
reference; the cpu peer one more for its live peak); then, peer after peer, a pause of ``settle_s``
(the previous peer's idle BLAS and OpenMP threads spin for up to ~0.1 s and would take the cores
from the next one), ``warmup`` runs again and ``repeat`` timed runs in a row, as a training loop
calls them; the median is reported and every sample kept in the JSON. On a shared machine other
processes take cores from the threads being timed (a 2-thread run that loses a core waits at every
barrier, easily 10x slower): each block records the cores other processes used while it ran
(``other_processes_cores``, from /proc/stat less this process's time) and a block above
the cores the peer leaves free plus ``QUIET_CORES`` is run again, up to ``retries`` times, keeping
the quietest (``attempts`` says how many blocks ran, ``disturbed`` whether even the kept one was); the load
average before and after the whole run is in the metadata.
Where the machine stays busy, ``clock='cpu'`` with ``threads=1`` times the host peers by this process's
CPU time (``time.process_time``) instead: the work done, not the waiting for a core (shared caches
and clock frequency still feel the neighbours). It says nothing about multi-thread scaling. CPU peers
are timed with ``time.perf_counter`` around the call; GPU peers with CUDA events on their stream
(CuPy's, or PyTorch's). The garbage collector runs once before a block of timed runs and is
paused during it: a full collection between two runs walks every Python object and leaves the caches
cold, which a training loop does not do (measured: B=1, T=1000, H=64, 1.34 ms per call with a
collection before each, 0.68 ms without).

Correctness of what is timed: the first untimed run's results are compared with an oracle, the
reference backend's (float64 inside) when it runs on that shape, else the cpu backend on float64
copies of the same inputs: the loss's relative error and the largest relative error (max-norm) of
any gradient, or of Y for ``fwd``. ``check.ok`` is false past ``TOLERANCE`` and ``gpubptt bench`` then
exits with status 1, so a fast wrong peer cannot pass unnoticed.

FLOPs (``flops``): the multiply-adds of the matrix products, 2 FLOPs each, with G = 1 (Elman),
4 (LSTM), 3 (GRU):

    forward   F = 2·T·B·(G·H·D + G·H·H + O·H)        input, recurrent and output products
    fwd+bptt  3·F: every product of the forward has two of the same size in the backward (the
              gradient with respect to its input, dL/dx and the delta recurrence included, and the
              one with respect to its weights)

Pointwise work (activations, biases, loss) and the B·H·H product of dL/dS0 are not counted.
GFLOP/s = FLOPs / median time.

Memory: the extra memory one call needs, the smallest of ``MEMORY_RUNS`` untimed memory runs (one for
the reference): on the CPU a call's resident-set rise counts every page it touches, and the first
call after another peer's can find a heap that peer left fragmented (measured in the full tanh grid:
a 2.56x rise over the bound at (64,50,128,128), 1.64x in a process of its own).
    CPU peers: the rise of the process's peak resident set over its resident set just before the
      call (Linux: ``gc.collect()`` and glibc's ``malloc_trim(0)`` return freed memory first, then
      writing 5 to ``/proc/self/clear_refs`` resets the peak, ``VmHWM`` of ``/proc/self/status``).
      It counts every allocation: NumPy's, Numba's inside kernels, PyTorch's. Elsewhere the fallback
      is ``tracemalloc``'s peak, which sees NumPy's arrays only (PyTorch's memory is then unknown).
    cuda: the peak of bytes in use in CuPy's memory pool during the call (a ``cupy.cuda.MemoryHook``).
    torch-cuda: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before.
The cpu peer's live peak (``live_peak_bytes``, ``live_ratio``), from one more untimed run: the peak of
NumPy's buffers in use during the call over those in use before (``tracemalloc``, which NumPy tells of
its buffers; the kernels' own few [B,H] rows are not seen). Unlike the resident set it does not depend
on how earlier calls left the heap: in the full tanh grid at d500485 the rise read 1.57x the bound at
(64,50,128,128) and the live peak 1.16x; in a process of its own the rise read 1.22x.
The lower bound (``memory_lower_bound``) is what forward must keep for backward plus what the call
returns: the saved states (S [T,B,H] for Elman; h, c and 4 gates, 6·H per step, for LSTM; h, r, z, n
and the recurrent n-term, 5·H per step, for GRU), the outputs Y [T,B,O], and the gradients (every
parameter, dL/dx [T,B,D], dL/dS0 [B,H], for LSTM dL/dc0 too); for ``fwd``, the Y [T,B,O] and S [T,B,H] it returns.

The median is the figure reported (GFLOP/s and ratios are computed from it); ``ms_min``, the fastest
run, is kept beside it: on a shared machine the gap between the two shows the interference.

Ratios: ``ratios[q]`` of an entry is the median time of peer q over this entry's, on the same shape
and mode: how many times faster this entry is than q (below 1: slower).

Threads: ``threads`` sets Numba's (``numba.set_num_threads``) and PyTorch's (``torch.set_num_threads``),
restored afterwards. The BLAS libraries' counts are recorded, not set: gpubptt's CPU backend runs
the BLAS it calls (SciPy's) on one thread on purpose (kernels/cpu_variants.py) and never calls
NumPy's; PyTorch brings its own.
"""
import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import tracemalloc
from importlib import metadata

import numpy as np

from . import model
from .arrays import check_bool, check_dtype, check_int
from .params import CELLS, gates

# (B, T, D, H): PyTorch's own RNN benchmark shape, the floor shapes, then haste's T = 50 grid
DEFAULT_SHAPES = (
    (64, 100, 512, 512),
    (64, 100, 64, 256),
    (128, 50, 128, 512),
    (32, 200, 32, 128),
    (256, 100, 16, 64),
    (1, 1000, 8, 64),
    (4, 1000, 64, 256),
    (1, 50, 128, 128), (16, 50, 128, 128), (64, 50, 128, 128),
    (1, 50, 128, 512), (16, 50, 128, 512), (64, 50, 128, 512),
)
QUICK_SHAPES = ((2, 8, 3, 4), (3, 12, 5, 7))  # --quick: tiny, for CI
QUICK_REPEAT = 2
DEFAULT_REPEAT = 7
DEFAULT_OUTPUT_SIZE = 1
DEFAULT_REFERENCE_BUDGET_S = 20.0
DEFAULT_SETTLE_S = 0.25  # pause before each peer's timed block (see _measure_mode)
DEFAULT_RETRIES = 3  # timed blocks run again while other processes take the cores (see _timed_block)
QUIET_CORES = 0.25  # other processes' CPU use, in cores, beyond the free ones, that disturbs a timed block
RETRY_PAUSE_S = 2.0

MEMORY_RUNS = 3
SAVED_PER_STEP = {"lstm": 6, "gru": 5}  # multiples of B·H that forward keeps per step (Elman: 1)
KNOWN_CELLS = tuple(CELLS)
TORCH_RNN_CELLS = ("tanh", "relu")  # torch.nn.RNN's nonlinearity choices
PEERS = ("reference", "cpu", "cuda", "torch-cpu", "torch-cuda")
BACKEND_CHOICES = ("all",) + PEERS + ("torch",)
MODES = ("fwd+bptt", "fwd")
MODE_CHOICES = {"both": MODES, "bptt": ("fwd+bptt",), "fwd": ("fwd",)}
DTYPES = ("float32", "float64")
# Largest relative error accepted in check.ok. float64: peers sum in other orders, ~1e-15 per
# operation, 1e-8 leaves room for T = 1000 steps. float32: ~6e-8 per operation growing over T steps
# and through products of up to 512 terms; measured at most 6e-6 on the default grid (tanh, every
# peer, benchmarks/cpu-2core-2026-11-24.json); 1e-3 still fails any real bug, which is off by O(1).
TOLERANCE = {"float32": 1e-3, "float64": 1e-8}


# ---------------------------------------------------------------------------------------------
# formulas


def flops(B, T, D, H, O, cell="tanh", mode="fwd+bptt"):
    """FLOPs of the matrix products (2 per multiply-add): forward 2·T·B·(G·H·D + G·H·H + O·H);
    fwd+bptt three times that (see the module's docstring)."""
    check_mode(mode)
    G = gates(cell)
    forward = 2 * T * B * (G * H * D + G * H * H + O * H)
    return forward if mode == "fwd" else 3 * forward


def memory_lower_bound(B, T, D, H, O, cell="tanh", itemsize=4, mode="fwd+bptt"):
    """Bytes a call must hold at its peak at least (see the module's docstring)."""
    check_mode(mode)
    if mode == "fwd":
        return itemsize * T * B * (H + O)
    G = gates(cell)
    saved = SAVED_PER_STEP.get(cell, 1) * T * B * H + T * B * O
    params = G * H * D + G * H * H + 2 * G * H + O * H + O
    states0 = (2 if cell == "lstm" else 1) * B * H  # dL/dS0; LSTM: dL/dh0 and dL/dc0
    return itemsize * (saved + params + T * B * D + states0)


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, MODES))}, got {mode!r}")


# ---------------------------------------------------------------------------------------------
# arguments


def parse_shapes(text):
    """'64x100x64x256,1x1000x8x64' -> [(64, 100, 64, 256), (1, 1000, 8, 64)], as (B, T, D, H)."""
    if not isinstance(text, str):
        raise TypeError(f"shapes: expected a string like '64x100x64x256,1x1000x8x64', got {type(text).__name__}")
    shapes = []
    for part in text.split(","):
        sizes = part.strip().lower().split("x")
        try:
            shape = tuple(int(s) for s in sizes)
        except ValueError:
            shape = ()
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(
                f"shapes: expected comma-separated BxTxDxH with four positive integers "
                f"(e.g. 64x100x64x256,1x1000x8x64), got {part.strip()!r} in {text!r}")
        shapes.append(shape)
    return shapes


def check_shapes(shapes):
    """A list of (B, T, D, H) tuples of positive ints (or a '64x100x64x256,...' string)."""
    if isinstance(shapes, str):
        return parse_shapes(shapes)
    try:
        out = [tuple(s) for s in shapes]
    except TypeError:
        raise TypeError(f"shapes: expected a list of (B, T, D, H) tuples, got {shapes!r}") from None
    for s in out:
        if len(s) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in s):
            raise ValueError(f"shapes: expected (B, T, D, H) with four positive integers, got {s!r}")
    if not out:
        raise ValueError("shapes: expected at least one (B, T, D, H), got none")
    out = [tuple(int(v) for v in s) for s in out]
    twice = sorted({s for s in out if out.count(s) > 1})
    if twice:  # the results and their ratios are keyed by the shape
        raise ValueError(f"shapes: each (B, T, D, H) once, got {', '.join(map(str, twice))} more than once")
    return out


def check_peers(backend):
    """'all', or a comma-separated list (or list) of peers; 'torch' means torch-cpu and torch-cuda."""
    if not isinstance(backend, (str, list, tuple)):
        raise TypeError(f"backend: expected a string or a list of peer names, got {type(backend).__name__}")
    names = backend.split(",") if isinstance(backend, str) else list(backend)
    if not names:
        raise ValueError("backend: expected at least one peer, got none")
    peers = []
    for n in (n.strip() if isinstance(n, str) else n for n in names):
        if n not in BACKEND_CHOICES:
            raise ValueError(f"backend: expected 'all' or a comma-separated list of "
                             f"{', '.join(map(repr, PEERS + ('torch',)))}, got {n!r}")
        for p in PEERS if n == "all" else ("torch-cpu", "torch-cuda") if n == "torch" else (n,):
            if p not in peers:
                peers.append(p)
    return peers


# ---------------------------------------------------------------------------------------------
# threads


def numba_max_threads():
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


@contextlib.contextmanager
def thread_limits(threads, use_torch=True):
    """Set Numba's and PyTorch's thread counts to ``threads`` (None: leave them), yield a dict of what
    is in force (the BLAS libraries' counts too), restore them on exit."""
    import numba
    from .kernels import cpu_variants  # noqa: F401  sets the BLAS Numba's np.dot calls to one thread: recorded as in force

    info = {"requested": threads}
    undo = []
    # PyTorch is imported before Numba's threading layer starts: that layer loads the system's
    # libgomp.so.1, and a PyTorch loaded after it binds to that one instead of its own, which made its
    # RNN 30-70x slower with 2 threads here (measured at B=32, T=200, H=128: ~1.7 s instead of ~25 ms).
    torch = _torch()[0] if use_torch else None
    try:
        if threads is not None:
            limit = numba_max_threads()
            if threads > limit:
                raise ValueError(f"threads: at most NUMBA_NUM_THREADS={limit} on this machine (set NUMBA_NUM_THREADS "
                                 f"before Python starts to allow more), got {threads}")
            old = numba.get_num_threads()
            numba.set_num_threads(threads)
            undo.append(lambda: numba.set_num_threads(old))
        info["numba"] = numba.get_num_threads()
        # BLAS is left as it is: gpubptt's CPU backend runs the BLAS it calls (SciPy's) on one thread
        # on purpose (kernels/cpu_variants.py) and never calls NumPy's; PyTorch has its own
        info["blas"] = _blas_info()
        info["openmp"] = _loaded_libraries("gomp", "iomp", "libomp")
        if torch is not None:
            if threads is not None:
                old_torch = torch.get_num_threads()
                torch.set_num_threads(threads)
                undo.append(lambda: torch.set_num_threads(old_torch))
            info["torch"] = torch.get_num_threads()
        yield info
    finally:
        for fn in reversed(undo):
            fn()


def _loaded_libraries(*names):
    """Paths of the shared libraries loaded in this process whose file name contains one of ``names``."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if any(n in p.rsplit("/", 1)[-1] for n in names))


def _blas_info():
    """The BLAS libraries loaded in this process, their thread counts and the kernels they run
    (``architecture``: OpenBLAS's core type, kernels/cpu_variants.py) (threadpoolctl)."""
    import threadpoolctl

    return [{"library": i["filepath"], "api": i["internal_api"], "threads": i["num_threads"],
             "architecture": i.get("architecture")}
            for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def _torch():
    """(torch module, None) or (None, why not)."""
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install
        return None, f"PyTorch is not importable ({type(e).__name__}: {e})"
    return torch, None


def _cuda_gpu():
    """(True, description) when gpubptt's cuda backend can run on a real GPU, else (False, why)."""
    from .backend import cuda_status

    kind, detail = cuda_status()
    if kind == "gpu":
        return True, detail
    if kind == "simulator":
        return False, "the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): it is never benchmarked"
    return False, detail


def _version(*dists):
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


# ---------------------------------------------------------------------------------------------
# the problem


class Problem:
    """One shape's parameters, inputs and targets (NumPy, host), drawn from ``seed``.

    Parameters are uniform on [-1/sqrt(H), 1/sqrt(H)] (PyTorch's default) in the order Wx, Ws, bx,
    bs, Wy, by; x, d ~ N(0, 1); s0 ~ N(0, 0.25): [B,H], or for LSTM the pair (h0, c0).
    """

    def __init__(self, B, T, D, H, O, cell, dtype, seed=0):
        self.B, self.T, self.D, self.H, self.O = B, T, D, H, O
        self.cell, self.dtype = cell, np.dtype(dtype)
        G = gates(cell)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(H)
        shapes = {"Wx": (G * H, D), "Ws": (G * H, H), "bx": (G * H,), "bs": (G * H,), "Wy": (O, H), "by": (O,)}
        self.params = {k: rng.uniform(-bound, bound, s).astype(self.dtype) for k, s in shapes.items()}
        self.x = rng.standard_normal((T, B, D)).astype(self.dtype)
        self.d = rng.standard_normal((T, B, O)).astype(self.dtype)
        s0 = [(0.5 * rng.standard_normal((B, H))).astype(self.dtype) for _ in range(2 if cell == "lstm" else 1)]
        self.s0 = tuple(s0) if cell == "lstm" else s0[0]

    @property
    def shape(self):
        return self.B, self.T, self.D, self.H

    def sliced(self, B, T):
        """The same problem on the first B sequences and T steps (for projecting the reference's cost)."""
        p = Problem.__new__(Problem)
        p.__dict__.update(self.__dict__)
        p.B, p.T = B, T
        p.x, p.d = self.x[:T, :B], self.d[:T, :B]
        p.s0 = tuple(a[:B] for a in self.s0) if isinstance(self.s0, tuple) else self.s0[:B]
        return p

    def astype(self, dtype):
        p = Problem.__new__(Problem)
        p.__dict__.update(self.__dict__)
        p.dtype = np.dtype(dtype)
        p.params = {k: v.astype(dtype) for k, v in self.params.items()}
        p.x, p.d = self.x.astype(dtype), self.d.astype(dtype)
        p.s0 = tuple(a.astype(dtype) for a in self.s0) if isinstance(self.s0, tuple) else self.s0.astype(dtype)
        return p


# ---------------------------------------------------------------------------------------------
# peers: set up on a problem, then fwd() / bptt() run one call; results() brings it to the host


class _GpubpttPeer:
    gpu = False

    def __init__(self, name):
        self.name = name
        self.backend = name

    def setup(self, prob):
        self.prob = prob
        self.args = (prob.params, prob.x, prob.d, prob.s0)

    def bptt(self):
        params, x, d, s0 = self.args
        return model.bptt(params, x, d, s0, self.prob.cell, "identity", "squared", "all", backend=self.backend)

    def fwd(self):
        params, x, _, s0 = self.args
        return model.forward(params, x, s0, self.prob.cell, "identity", backend=self.backend)

    def results(self, out, mode):
        """{'L': float, 'grads': {key: host array}} or {'Y': host array}."""
        from .arrays import to_host

        out = to_host(out)
        if mode == "fwd":
            return {"Y": np.asarray(out[0])}
        return {"L": float(out[0]), "grads": _flat(out[1])}

    def synchronize(self):
        pass

    def timer(self):
        return _cpu_timer

    def memory(self, fn):
        return _host_peak_bytes(fn)

    def live_memory(self, fn):
        """(live peak bytes, result) of one call (the module's docstring), or None: measured for the
        cpu backend, whose arrays are all NumPy's (the reference's per-step temporaries are not of
        interest and its runs are slow)."""
        return _traced_peak_bytes(fn) if self.name == "cpu" else None

    def device(self):
        return _cpu_model()


class _CudaPeer(_GpubpttPeer):
    gpu = True

    def setup(self, prob):
        from .arrays import to_device

        self.prob = prob
        self.args = to_device((prob.params, prob.x, prob.d, prob.s0))

    def synchronize(self):
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    def timer(self):
        import cupy

        return _event_timer(cupy.cuda.Event, cupy.cuda.get_elapsed_time, self.synchronize)

    def memory(self, fn):
        return _cupy_peak_bytes(fn, self.synchronize)

    def device(self):
        from .kernels.cuda_compat import device_description

        dev = device_description()
        return f"{dev[0]} (compute capability {dev[1][0]}.{dev[1][1]})" if dev else None


class _TorchPeer:
    def __init__(self, name):
        self.name = name
        self.gpu = name == "torch-cuda"

    def setup(self, prob):
        torch = _torch()[0]
        self.torch, self.prob = torch, prob
        dev = torch.device("cuda" if self.gpu else "cpu")
        dtype = {"float32": torch.float32, "float64": torch.float64}[prob.dtype.name]
        D, H, O = prob.D, prob.H, prob.O
        kw = dict(bias=True, dtype=dtype, device=dev)
        if prob.cell == "lstm":
            rnn = torch.nn.LSTM(D, H, **kw)
        elif prob.cell == "gru":
            rnn = torch.nn.GRU(D, H, **kw)
        elif prob.cell in TORCH_RNN_CELLS:
            rnn = torch.nn.RNN(D, H, nonlinearity=prob.cell, **kw)
        else:
            raise ValueError(f"cell {prob.cell!r}: torch.nn.RNN has nonlinearity 'tanh' or 'relu' only")
        lin = torch.nn.Linear(H, O, **kw)
        p = prob.params

        def tensor(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        with torch.no_grad():
            for name, key in (("weight_ih_l0", "Wx"), ("weight_hh_l0", "Ws"), ("bias_ih_l0", "bx"), ("bias_hh_l0", "bs")):
                getattr(rnn, name).copy_(tensor(p[key]))
            lin.weight.copy_(tensor(p["Wy"]))
            lin.bias.copy_(tensor(p["by"]))
        self.rnn, self.lin = rnn, lin
        self.x = tensor(prob.x).requires_grad_()
        s0 = prob.s0 if isinstance(prob.s0, tuple) else (prob.s0,)
        self.s0 = tuple(tensor(a)[None].contiguous().requires_grad_() for a in s0)  # [1,B,H]: h0 (, c0)
        self.h0 = self.s0 if prob.cell == "lstm" else self.s0[0]
        self.d = tensor(prob.d)
        self.leaves = list(rnn.parameters()) + list(lin.parameters()) + [self.x, *self.s0]

    def bptt(self):
        for t in self.leaves:
            t.grad = None
        S, _ = self.rnn(self.x, self.h0)
        Z = self.lin(S)
        L = ((self.d - Z) ** 2).sum() / self.prob.B
        L.backward()
        return L

    def fwd(self):
        with self.torch.no_grad():
            S, _ = self.rnn(self.x, self.h0)
            return self.lin(S), S

    def results(self, out, mode):
        if mode == "fwd":
            return {"Y": out[0].detach().cpu().numpy()}
        names = {"Wx": self.rnn.weight_ih_l0, "Ws": self.rnn.weight_hh_l0, "bx": self.rnn.bias_ih_l0,
                 "bs": self.rnn.bias_hh_l0, "Wy": self.lin.weight, "by": self.lin.bias, "x": self.x}
        grads = {k: t.grad.detach().cpu().numpy() for k, t in names.items()}
        s0 = tuple(t.grad[0].detach().cpu().numpy() for t in self.s0)
        grads["s0"] = s0 if self.prob.cell == "lstm" else s0[0]
        return {"L": float(out.item()), "grads": _flat(grads)}

    def synchronize(self):
        if self.gpu:
            self.torch.cuda.synchronize()

    def timer(self):
        if not self.gpu:
            return _cpu_timer
        torch = self.torch
        return _event_timer(lambda: torch.cuda.Event(enable_timing=True), lambda a, b: a.elapsed_time(b),
                            self.synchronize)

    def live_memory(self, fn):
        return None  # PyTorch allocates its tensors itself: tracemalloc does not see them

    def memory(self, fn):
        if not self.gpu:
            return _host_peak_bytes(fn)
        torch = self.torch
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated", out

    def device(self):
        if self.gpu:
            return self.torch.cuda.get_device_name()
        return _cpu_model()


def _flat(grads):
    """{key: host array}, a pair (LSTM's dL/d(h0, c0)) split into 's0[0]' and 's0[1]'."""
    out = {}
    for k, v in grads.items():
        if isinstance(v, (tuple, list)):
            out.update({f"{k}[{i}]": np.asarray(a) for i, a in enumerate(v)})
        else:
            out[k] = np.asarray(v)
    return out


def _make_peer(name):
    if name in ("reference", "cpu"):
        return _GpubpttPeer(name)
    if name == "cuda":
        return _CudaPeer(name)
    return _TorchPeer(name)


def _availability(name, cell, dtype):
    """(True, device) or (False, why): the peer exists here and runs ``cell`` on a tiny problem."""
    if name == "cuda":
        ok, why = _cuda_gpu()
        if not ok:
            return False, why
    elif name.startswith("torch"):
        torch, why = _torch()
        if torch is None:
            return False, why
        if name == "torch-cuda" and not torch.cuda.is_available():
            return False, "PyTorch has no CUDA device here (torch.cuda.is_available() is False)"
    peer = _make_peer(name)
    try:
        peer.setup(Problem(2, 3, 2, 3, 1, cell, dtype, seed=1))
        peer.results(peer.bptt(), "fwd+bptt")
        peer.results(peer.fwd(), "fwd")
    except Exception as e:
        return False, f"cell {cell!r} does not run: {type(e).__name__}: {e}"
    return True, peer.device()


# ---------------------------------------------------------------------------------------------
# timing and memory


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter  # the host peers' clock, set by run() for its duration


def _cpu_timer(fn):
    """(milliseconds, result) of one call on the host clock."""
    t0 = _clock()
    out = fn()
    t1 = _clock()
    return (t1 - t0) * 1e3, out


def _event_timer(make_event, elapsed_ms, synchronize):
    def timer(fn):
        synchronize()
        start, end = make_event(), make_event()
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return float(elapsed_ms(start, end)), out

    return timer


_RSS_METHOD = None


def _rss_method():
    """True when the resident-set peak can be reset and read (Linux with glibc), tested once."""
    global _RSS_METHOD
    if _RSS_METHOD is None:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _RSS_METHOD = _proc_status("VmHWM") is not None
        except (OSError, AttributeError):
            _RSS_METHOD = False
    return _RSS_METHOD


def _proc_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k == key:
                return int(v.split()[0]) * 1024
    return None


def _host_peak_bytes(fn):
    """(extra bytes at the peak of one call, method, result); see the module's docstring."""
    if _rss_method():
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        out = fn()
        return max(_proc_status("VmHWM") - before, 0), "peak RSS rise (VmHWM after clear_refs, malloc_trim)", out
    nbytes, out = _traced_peak_bytes(fn)
    return nbytes, "tracemalloc peak (NumPy arrays only)", out


def _traced_peak_bytes(fn):
    """(peak bytes traced during one call over those traced before, result): ``tracemalloc``, which
    sees NumPy's buffers and Python's objects, not memory other libraries allocate themselves."""
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        out = fn()
        return tracemalloc.get_traced_memory()[1] - before, out
    finally:
        if started:
            tracemalloc.stop()


def _cupy_peak_bytes(fn, synchronize):
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "gpubptt_bench_peak"

        def __init__(self):
            self.in_use = self.peak = 0

        def malloc_postprocess(self, **kw):
            self.in_use += kw["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kw):
            self.in_use -= kw["mem_size"]

    synchronize()
    hook = PeakHook()
    with hook:
        out = fn()
        synchronize()
    return hook.peak, "CuPy memory pool peak in use", out


# ---------------------------------------------------------------------------------------------
# correctness


def _relative_error(a, ref):
    from .selfcheck import relative_error

    return relative_error(a, ref)


def _compare(res, oracle, mode):
    """{'loss_rel_err', 'grad_rel_err'} or {'Y_rel_err'}: this run's results against the oracle's."""
    if mode == "fwd":
        return {"Y_rel_err": _relative_error(res["Y"], oracle["Y"])}
    keys = sorted(oracle["grads"])  # a gradient the peer lacks counts as an infinite error
    errors = [(_relative_error(res["grads"][k], oracle["grads"][k]) if k in res["grads"] else math.inf, k)
              for k in keys]
    worst = max(errors, key=lambda e: (math.isnan(e[0]), e[0]), default=(None, None))  # NaN is the worst
    L0 = oracle["L"]
    return {"loss": res["L"], "loss_rel_err": abs(res["L"] - L0) / max(abs(L0), 1e-30),
            "grad_rel_err": worst[0], "worst_grad": worst[1], "grads_compared": keys}


# ---------------------------------------------------------------------------------------------
# the run


def run(cell="tanh", shapes=None, dtype="float32", threads=None, repeat=None, backend="all", quick=False,
        output_size=DEFAULT_OUTPUT_SIZE, mode="both", warmup=1, reference_budget_s=DEFAULT_REFERENCE_BUDGET_S,
        settle_s=None, retries=None, clock="wall", seed=0, log=None):
    """Run the benchmark; return a JSON-ready dict {'meta': ..., 'peers': ..., 'results': [...]}.

    cell      'tanh', 'relu', 'sigmoid', 'identity', 'lstm' or 'gru' (a peer that cannot run it is
              reported unavailable with the reason)
    shapes    [(B, T, D, H), ...] or '64x100x64x256,...'; default DEFAULT_SHAPES (QUICK_SHAPES if quick)
    dtype     'float32' or 'float64'
    threads   CPU threads for Numba and PyTorch (None: as they are); the BLAS libraries' counts are
              recorded, not set (module docstring)
    repeat    timed runs per entry (default 7, or 2 if quick); the reference may get fewer
    backend   'all' or a comma-separated list of peers: reference, cpu, cuda, torch-cpu, torch-cuda, torch
    mode      'both', 'bptt' (forward + BPTT) or 'fwd' (forward alone)
    settle_s  pause before each peer's timed runs (default 0.25 s, 0 if quick)
    retries   how often a timed block disturbed by other processes is run again (default 3, 0 if quick)
    clock     'wall' (time.perf_counter) or 'cpu' (time.process_time: this process's CPU time, every
              thread; with threads=1 it measures the work and not the waiting, for a busy shared
              machine; GPU peers keep CUDA events)
    output_size  O, the output layer's width (default 1)
    warmup    untimed runs before each peer's timed ones (default 1)
    reference_budget_s  seconds the reference may take per entry: fewer repeats, or skipped (and the
              check falls back to the cpu backend on float64 copies) when one run would take longer
    seed      the problem's random weights and data
    log       a function taking one line of progress (None: silent)
    """
    if not isinstance(cell, str) or cell not in KNOWN_CELLS:
        raise ValueError(f"cell: expected one of {', '.join(map(repr, KNOWN_CELLS))}, got {cell!r}")
    dtype = check_dtype("dtype", dtype).name  # 'float32', np.float32, np.dtype alike
    if not isinstance(mode, str) or mode not in MODE_CHOICES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, MODE_CHOICES))}, got {mode!r}")
    shapes = check_shapes(shapes if shapes is not None else QUICK_SHAPES if quick else DEFAULT_SHAPES)
    repeat = check_int("repeat", repeat if repeat is not None else QUICK_REPEAT if quick else DEFAULT_REPEAT)
    if threads is not None:
        threads = check_int("threads", threads)
    output_size = check_int("output_size", output_size)
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ValueError(f"warmup: expected a non-negative integer, got {warmup!r}")
    if not isinstance(reference_budget_s, (int, float)) or isinstance(reference_budget_s, bool) \
            or not reference_budget_s > 0:
        raise ValueError(f"reference_budget_s: expected a positive number of seconds, got {reference_budget_s!r}")
    requested = check_peers(backend)
    if not isinstance(clock, str) or clock not in CLOCKS:
        raise ValueError(f"clock: expected 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise ValueError(f"clock: 'cpu' sums the CPU time of every thread, spinning included: it needs threads=1, "
                         f"got threads={threads!r}")
    settle_s = (0.0 if quick else DEFAULT_SETTLE_S) if settle_s is None else settle_s
    if isinstance(settle_s, bool) or not isinstance(settle_s, (int, float)) or not 0 <= settle_s < math.inf:
        raise ValueError(f"settle_s: expected a finite non-negative number of seconds, got {settle_s!r}")
    retries = (0 if quick else DEFAULT_RETRIES) if retries is None else retries
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ValueError(f"retries: expected a non-negative integer, got {retries!r}")
    seed = check_int("seed", seed, low=0)
    if log is not None and not callable(log):
        raise TypeError(f"log: expected a function taking one line, or None, got {type(log).__name__}")
    check_bool("quick", quick)
    log = log or (lambda line: None)
    modes = MODE_CHOICES[mode]
    tol = TOLERANCE[dtype]

    use_torch = any(p.startswith("torch") for p in requested)
    load_before = _loadavg()
    global _clock
    _clock = CLOCKS[clock]
    with _restore_clock(), thread_limits(threads, use_torch=use_torch) as thread_info:
        peers, unavailable = {}, {}
        for name in requested:
            ok, detail = _availability(name, cell, dtype)
            if ok:
                peers[name] = {"available": True, "device": detail}
            else:
                unavailable[name] = {"available": False, "reason": detail}
                log(f"{name}: unavailable: {detail}")
        results = []
        for shape in shapes:
            results.extend(_run_shape(shape, output_size, cell, dtype, list(peers), modes, repeat, warmup,
                                      reference_budget_s, tol, settle_s, retries, seed, log))
        memory_methods = sorted({r["memory_method"] for r in results if r.get("memory_method")})
    _add_ratios(results)
    meta = _meta(cell, dtype, threads, repeat, warmup, output_size, reference_budget_s, tol, thread_info, quick,
                 memory_methods)
    meta["settle_s"], meta["retries"], meta["quiet_cores"] = settle_s, retries, QUIET_CORES
    meta["clock"] = clock
    meta["load_average"] = {"before": load_before, "after": _loadavg()}
    return {"meta": meta, "peers": {**peers, **unavailable}, "results": results}


@contextlib.contextmanager
def _restore_clock():
    global _clock
    try:
        yield
    finally:
        _clock = time.perf_counter


def _run_shape(shape, O, cell, dtype, names, modes, repeat, warmup, budget, tol, settle_s, retries, seed, log):
    B, T, D, H = shape
    prob = Problem(B, T, D, H, O, cell, dtype, seed=seed)
    itemsize = prob.dtype.itemsize
    log(f"shape B={B} T={T} D={D} H={H} O={O}")
    out = []
    for mode in modes:
        entries = []
        for name in names:
            e = {"B": B, "T": T, "D": D, "H": H, "O": O, "cell": cell, "dtype": dtype, "mode": mode, "peer": name,
                 "flops": flops(B, T, D, H, O, cell, mode),
                 "memory_lower_bound_bytes": memory_lower_bound(B, T, D, H, O, cell, itemsize, mode)}
            entries.append(e)
        _measure_mode(prob, mode, entries, repeat, warmup, budget, tol, settle_s, retries, log)
        out.extend(entries)
    return out


def _measure_mode(prob, mode, entries, repeat, warmup, budget, tol, settle_s, retries, log):
    """Warm up, check and measure memory of every peer, then time each in turn."""
    oracle, oracle_name = None, None
    runners = []
    for e in entries:
        peer = _make_peer(e["peer"])
        try:
            if e["peer"] == "reference":
                projected = _project_reference(peer, prob, mode)
                e["reference_projected_s"] = projected
                if projected > budget:
                    e.update(status="skipped", reason=f"projected {projected:.1f} s per run > the reference budget "
                                                      f"of {budget:g} s")
                    log(f"  {mode:8s} {e['peer']:10s} skipped: {e['reason']}")
                    continue
            peer.setup(prob)
            fn = peer.fwd if mode == "fwd" else peer.bptt
            first = None
            for _ in range(0 if e["peer"] == "reference" else warmup):
                r = fn()
                peer.synchronize()
                first = first if first is not None else peer.results(r, mode)
                del r
            nbytes = None
            for _ in range(1 if e["peer"] == "reference" else MEMORY_RUNS):
                t0 = time.perf_counter()
                run_bytes, method, r = peer.memory(fn)
                untimed_s = time.perf_counter() - t0
                nbytes = run_bytes if nbytes is None else min(nbytes, run_bytes)
                first = first if first is not None else peer.results(r, mode)
                del r
            live = peer.live_memory(fn)
            if live is not None:
                live, r = live
                del r
        except Exception as ex:
            e.update(status="error", reason=f"{type(ex).__name__}: {ex}")
            log(f"  {mode:8s} {e['peer']:10s} error: {e['reason']}")
            continue
        e["peak_bytes"], e["memory_method"] = int(nbytes), method
        e["memory_ratio"] = nbytes / e["memory_lower_bound_bytes"]
        e["live_peak_bytes"] = None if live is None else int(live)
        e["live_ratio"] = None if live is None else live / e["memory_lower_bound_bytes"]
        if e["peer"] == "reference":
            oracle, oracle_name = first, "reference"
            e["repeats"] = max(1, min(repeat, int(budget / max(untimed_s, 1e-9))))
        else:
            e["repeats"] = repeat
        runners.append((e, peer, fn, first))
    fallback = oracle is None
    if fallback:
        oracle, oracle_name = _fallback_oracle(prob, mode)
    for e, peer, fn, first in runners:
        if oracle is None:
            e["check"] = {"oracle": None, "ok": None, "reason": oracle_name}
            continue
        if fallback and e["peer"] == "cpu" and prob.dtype == np.float64:  # the same computation: no check
            e["check"] = {"oracle": None, "ok": None, "reason": "the reference was not run, and the fallback oracle "
                          "(the cpu backend on float64) is this very run"}
            continue
        errs = _compare(first, oracle, mode)
        worst = [v for k, v in errs.items() if k.endswith("_rel_err") and v is not None]
        e["check"] = {"oracle": oracle_name, **errs, "tolerance": tol, "ok": all(v <= tol for v in worst)}  # NaN fails
    samples = {}
    for e, peer, fn, _ in runners:
        # Each peer is timed in a block of consecutive runs, as a training loop calls it, after a pause
        # that lets the previous peer's idle threads stop spinning: OpenBLAS's workers spin ~0.1 s after
        # a call, libgomp's a while too, and on a small machine they take the cores from the next peer
        # (measured: torch's RNN 2-35x slower right after a NumPy product on 2 cores).
        try:
            samples[id(e)] = _timed_block(peer, fn, e, warmup, settle_s, retries, log)
        except Exception as ex:
            e.update(status="error", reason=f"{type(ex).__name__}: {ex}")
            log(f"  {mode:8s} {e['peer']:10s} error: {e['reason']}")
            samples.pop(id(e), None)
    for e, _, _, _ in runners:
        if id(e) not in samples:
            continue
        ms = samples[id(e)]
        e.update(status="ok", ms=statistics.median(ms), ms_min=min(ms), ms_all=ms, repeats=len(ms))
        e["gflops"] = e["flops"] / (e["ms"] * 1e6)
        c = e["check"]
        log(f"  {mode:8s} {e['peer']:10s} {e['ms']:10.3f} ms  {e['gflops']:7.2f} GFLOP/s  "
            f"peak {e['peak_bytes'] / 1e6:8.2f} MB ({e['memory_ratio']:.2f}x bound"
            + (f", live {e['live_ratio']:.2f}x" if e["live_ratio"] is not None else "") + ")  "
            f"check {'ok' if c['ok'] else 'no oracle' if c['ok'] is None else 'FAILED'}")


def _timed_block(peer, fn, e, warmup, settle_s, retries, log):
    """The samples (ms) of one peer's block of timed runs, with the CPU time other processes took
    meanwhile recorded in ``e``. A block is disturbed when they took more than the cores this peer
    leaves free (the machine's less its threads: 1 for the reference and the GPU peers, which drive
    one host thread) plus ``QUIET_CORES``; a disturbed block is run again, up to ``retries`` times,
    and the quietest kept."""
    import numba

    threads = 1 if peer.gpu or e["peer"] == "reference" else numba.get_num_threads()
    allowed = max(0, (os.cpu_count() or 1) - threads) + QUIET_CORES
    if _clock is CLOCKS["cpu"] and not peer.gpu:
        allowed = float("inf")  # CPU time: what other processes take does not count
    best = None
    for attempt in range(1 + retries):
        if attempt:
            time.sleep(RETRY_PAUSE_S)
        time.sleep(settle_s)
        for _ in range(0 if e["peer"] == "reference" else warmup):
            r = fn()
            peer.synchronize()
            del r
        timer = peer.timer()
        meter = _OtherCpu()
        ms = []
        gc.collect()
        gc.disable()
        try:
            for _ in range(e["repeats"]):
                t, r = timer(fn)
                del r
                ms.append(t)
        finally:
            gc.enable()
        others = meter.cores()
        if best is None or (others is not None and others < best[1]):
            best = (ms, others)
        if others is None or others <= allowed:
            break
        if attempt < retries:
            log(f"  {e['mode']:8s} {e['peer']:10s} other processes took {others:.2f} cores: timing again")
    e["other_processes_cores"] = None if best[1] is None else round(best[1], 3)
    e["disturbed"] = best[1] is not None and best[1] > allowed
    e["attempts"] = attempt + 1
    return best[0]


class _OtherCpu:
    """Cores used by other processes since construction: the machine's busy time (/proc/stat) less
    this process's (/proc/self/stat, every thread), over the wall time. None where /proc is missing."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(v) - v[3] - v[4]  # all but idle and iowait
        return time.perf_counter(), busy, int(own[11]) + int(own[12])  # utime + stime

    def cores(self):
        end = self._read()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        other = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(other, 0) / ticks / max(wall, 1e-9)


def _project_reference(peer, prob, mode):
    """Seconds one reference run of the whole problem would take, from a run on a slice of it: the
    reference loops over every sequence and step alike, so its cost grows as B·T."""
    b, t = min(prob.B, 2), min(prob.T, 8)
    small = prob.sliced(b, t)
    peer.setup(small)
    fn = peer.fwd if mode == "fwd" else peer.bptt
    ms, _ = _cpu_timer(fn)
    return ms / 1e3 * (prob.B * prob.T) / (b * t)


def _fallback_oracle(prob, mode):
    """The cpu backend on float64 copies of the problem: (results, name) or (None, why not)."""
    peer = _GpubpttPeer("cpu")
    try:
        peer.setup(prob.astype(np.float64))
        fn = peer.fwd if mode == "fwd" else peer.bptt
        return peer.results(fn(), mode), "cpu backend on float64 copies (the reference was not run)"
    except Exception as ex:
        return None, f"no oracle: the reference was not run and the cpu backend failed ({type(ex).__name__}: {ex})"


def _add_ratios(results):
    times = {}
    for r in results:
        if r.get("status") == "ok":
            times.setdefault((r["B"], r["T"], r["D"], r["H"], r["mode"]), {})[r["peer"]] = r["ms"]
    for r in results:
        if r.get("status") == "ok":
            same = times[(r["B"], r["T"], r["D"], r["H"], r["mode"])]
            r["ratios"] = {q: ms / r["ms"] for q, ms in same.items() if q != r["peer"]}


def _loadavg():
    """The 1, 5 and 15 minute load averages (a busy shared machine shows here), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu_arch():
    """The CPU as the kernels were compiled for it: LLVM's name for it and its widest vector extension
    (the CPU kernels' speed depends on both: 16 vector registers with AVX2, 32 with AVX-512)."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    names = {"avx512f": "AVX-512", "avx2": "AVX2", "avx": "AVX", "neon": "NEON"}
    widest = next((name for flag, name in names.items() if features.get(flag)), "no AVX")
    return f"{llvm.get_host_cpu_name()}, {widest}"


def _git_commit():
    """The commit of the checkout gpubptt runs from, or why there is none (an installed copy)."""
    here = os.path.dirname(os.path.abspath(__file__))
    none = "no git checkout (an installed copy)"
    try:
        top = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10)
        ours = os.path.realpath(os.path.join(top.stdout.strip(), "gpubptt")) == os.path.realpath(here)
        if top.returncode != 0 or not ours:  # (a site-packages inside some other repository is not our checkout)
            return none
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return none
    if out.returncode != 0:
        return none
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _command(args=None):
    """The command line of this process as a user would type it, or, when ``main`` was called from
    Python (tests, notebooks), the ``gpubptt bench`` command equivalent to its ``args``."""
    if sys.argv[1:2] == ["bench"]:  # gpubptt bench ... or python -m gpubptt bench ...
        return " ".join(shlex.quote(w) for w in ["gpubptt"] + sys.argv[1:])
    if args is None:
        return " ".join(shlex.quote(w) for w in [os.path.basename(sys.executable), *sys.argv])
    words = ["gpubptt", "bench"]
    for opt in ("cell", "shapes", "dtype", "threads", "repeat", "backend", "mode", "output_size", "warmup",
                "reference_budget", "settle", "retries", "clock", "json", "markdown"):
        v = getattr(args, opt, None)
        if v is not None:
            if opt == "shapes":
                v = ",".join("x".join(map(str, shape)) for shape in v)
            words += ["--" + opt.replace("_", "-"), str(v)]
    if getattr(args, "quick", False):
        words.append("--quick")
    return " ".join(shlex.quote(w) for w in words)


def _cpu_step_products():
    """How the cpu backend's blas variant forms its step products here (kernels/cpu_variants.py)."""
    from .kernels import cpu_variants

    if cpu_variants.register_enabled():
        mib = 1 << 20
        return (f"blas variant: register-blocked (kernels/register_gemm.py) in float32 for H a multiple of "
                f"{cpu_variants.register_gemm.COLUMNS} (shares of {cpu_variants.REGISTER_MIN_SHARE}+ sequences a "
                f"thread, or 1 up to H = {cpu_variants.REGISTER_SINGLE_MAX_HIDDEN}), else BLAS; LSTM and GRU "
                f"with the units shared among the threads (units variant) from a Ws of "
                f"{cpu_variants.UNITS_IDLE_MIN_BYTES / mib:g} MiB where a thread would idle, else "
                f"{cpu_variants.UNITS_MIN_BYTES / mib:g} MiB and {cpu_variants.UNITS_MIN_BYTES_PER_ROW >> 10} KiB a "
                f"sequence of a thread's share")
    return "BLAS"


def _numba_codegen():
    """The CPU Numba compiles the kernels' loops for: its name, and the features it was given apart from
    the host's (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``; e.g. -prefer-256-bit, which makes LLVM
    vectorise them 512 bits wide on AVX-512 hosts, where its tuning prefers 256: README, Vector width)."""
    import llvmlite.binding as llvm
    from numba.core import config

    name = config.CPU_NAME or llvm.get_host_cpu_name()
    if config.CPU_FEATURES is None:
        return f"cpu {name}, the host's features"
    host = set(llvm.get_host_cpu_features().flatten().split(","))
    extra = [f for f in config.CPU_FEATURES.split(",") if f and f not in host]
    given = "beyond the host's: " + " ".join(extra) if extra else "the host's"
    return f"cpu {name}, NUMBA_CPU_FEATURES ({given})"


def _meta(cell, dtype, threads, repeat, warmup, O, budget, tol, thread_info, quick, memory_methods):
    from . import __version__

    torch, _ = _torch() if "torch" in sys.modules else (None, None)
    return {
        "command": _command(),
        "date": datetime.datetime.now().astimezone().strftime("%a %b %d %H:%M:%S %Z %Y"),
        "gpubptt": __version__,
        "git_commit": _git_commit(),
        "cell": cell, "dtype": dtype, "output_size": O, "output": "linear (identity g2)", "loss": "squared, every step",
        "repeat": repeat, "warmup": warmup, "quick": quick, "reference_budget_s": budget, "tolerance": tol,
        "threads": thread_info,
        "cpu_step_products": _cpu_step_products(),
        "numba_codegen": _numba_codegen(),
        "cpu": _cpu_model(), "cpu_arch": _cpu_arch(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "numba": _version("numba"),
                     "numba-cuda": _version("numba-cuda"), "scipy": _version("scipy"),
                     "cupy": _version("cupy-cuda13x", "cupy-cuda12x", "cupy"),
                     "torch": getattr(torch, "__version__", None),
                     "cudnn": (torch.backends.cudnn.version() if torch is not None and torch.cuda.is_available() else None)},
        "flops": "forward 2*T*B*(G*H*D + G*H*H + O*H), fwd+bptt 3x that; G = 1 Elman, 4 LSTM, 3 GRU",
        "memory_methods": memory_methods,
        "live_memory": "tracemalloc peak of NumPy's buffers in use during the call over those in use before",
        "memory_lower_bound": "fwd+bptt: saved states (S [T,B,H]; LSTM 6H, GRU 5H per step) + Y [T,B,O] + every "
                              "gradient (parameters, x, s0 (LSTM: h0 and c0)); fwd: Y + S",
        "ratios": "ratios[q] = median ms of peer q / median ms of this entry (times faster than q)",
    }


# ---------------------------------------------------------------------------------------------
# output


def _fmt_ratio(v):
    return f"{v:.3g}x" if v < 100 else f"{v:.0f}x"


def to_markdown(result):
    """The result as Markdown: the run's facts, then one table row per shape, mode and peer."""
    meta, peers = result["meta"], result["peers"]
    names = [p for p in PEERS if p in peers and peers[p]["available"]]
    th = meta["threads"]
    blas = ", ".join(f"{os.path.basename(str(b['library']))}={b['threads']}"
                     + (f" ({b['architecture']})" if b.get("architecture") else "") for b in th.get("blas", []))
    v = meta["versions"]
    lines = [
        f"# gpubptt bench: cell {meta['cell']}, {meta['dtype']}, O = {meta['output_size']}",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; gpubptt {meta['gpubptt']} at {meta['git_commit']}",
        f"- CPU: {meta['cpu']} ({meta.get('cpu_arch')}; {meta['cpu_count']} CPUs); {meta['platform']}; "
        f"load average (1, 5, 15 min) "
        f"{meta.get('load_average', {}).get('before')} before, {meta.get('load_average', {}).get('after')} after",
        f"- threads: requested {th.get('requested')}; Numba {th.get('numba')}; BLAS (as found) {blas}; "
        f"torch {th.get('torch', 'not loaded')}; cpu step products: {meta.get('cpu_step_products', 'not recorded')}; "
        f"Numba codegen: {meta.get('numba_codegen', 'not recorded')}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None),
        "- peers: " + "; ".join(
            f"{p}: {info['device']}" if info["available"] else f"{p}: unavailable ({info['reason']})"
            for p, info in peers.items()),
        f"- timing: {'CPU time of the process (time.process_time)' if meta.get('clock') == 'cpu' else 'wall clock'}; "
        f"per peer, median of {meta['repeat']} consecutive runs after a {meta.get('settle_s', 0):g} s pause "
        f"and {meta['warmup']} warm-up run(s); "
        f"the reference runs at most {meta['reference_budget_s']:g} s per entry",
        f"- GFLOP/s: {meta['flops']}",
        f"- ×peer: {meta['ratios']}",
        f"- memory: {'; '.join(meta['memory_methods']) or 'n/a'}; live (cpu): {meta.get('live_memory', 'n/a')}; "
        f"bound: {meta['memory_lower_bound']}",
        f"- check: largest relative error of the loss and every gradient (fwd: Y) against the oracle, "
        f"tolerance {meta['tolerance']:g}",
        "",
    ]
    header = ["B", "T", "D", "H", "mode", "peer", "ms", "min ms", "others' cores", "GFLOP/s"] + [f"×{p}" for p in names] + \
             ["peak MB", "bound MB", "peak/bound", "live/bound", "check"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if h not in ("mode", "peer", "check") else "---" for h in header) + "|")
    for r in result["results"]:
        row = [str(r[k]) for k in ("B", "T", "D", "H")] + [r["mode"], r["peer"]]
        if r.get("status") != "ok":
            row += [r.get("status", "?"), "—", "—", "—"] + ["—"] * len(names) + ["—", f"{r['memory_lower_bound_bytes'] / 1e6:.2f}",
                                                                      "—", "—", r.get("reason", "")]
        else:
            row += [f"{r['ms']:.3f}" + (f" ({r['repeats']} runs)" if r["repeats"] != meta["repeat"] else ""),
                    f"{r['ms_min']:.3f}", _fmt_cores(r.get("other_processes_cores"), r.get("disturbed")), f"{r['gflops']:.2f}"]
            row += ["—" if p == r["peer"] or p not in r["ratios"] else _fmt_ratio(r["ratios"][p]) for p in names]
            row += [f"{r['peak_bytes'] / 1e6:.2f}", f"{r['memory_lower_bound_bytes'] / 1e6:.2f}",
                    f"{r['memory_ratio']:.2f}", "—" if r.get("live_ratio") is None else f"{r['live_ratio']:.2f}",
                    _check_text(r["check"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _fmt_cores(v, disturbed=False):
    return "?" if v is None else f"{v:.2f}" + (" (disturbed)" if disturbed else "")


def _check_text(c):
    if c["ok"] is None:
        return c.get("reason", "no oracle")
    errs = [c.get("loss_rel_err"), c.get("grad_rel_err"), c.get("Y_rel_err")]
    worst = max((e for e in errs if e is not None), default=0.0)
    return f"{'ok' if c['ok'] else 'FAILED'} ({worst:.1e})"


def failed_checks(result):
    """Entries that ran and whose results disagree with the oracle."""
    return [r for r in result["results"] if r.get("status") == "ok" and r["check"]["ok"] is False]


# ---------------------------------------------------------------------------------------------
# command line


def positive_int_arg(text):
    """argparse type: a positive integer, else the option's usage error (status 2)."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _nonnegative_int(text):
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def _nonnegative_float(text):
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite non-negative number, got {text!r}")
    return v


def _shapes_arg(text):
    try:
        return parse_shapes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("shapes: ")) from None


def _backend_arg(text):
    try:
        check_peers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("backend: ")) from None
    return text


def add_arguments(p):
    """The ``gpubptt bench`` options (the logic lives here; cli.py only registers the subcommand)."""
    p.add_argument("--cell", default="tanh", choices=KNOWN_CELLS,
                   help="g1 of the Elman RNN, or a gated cell; a peer that cannot run it is reported unavailable")
    p.add_argument("--shapes", type=_shapes_arg, default=None, metavar="BxTxDxH,...",
                   help="e.g. 64x100x64x256,1x1000x8x64 (default: the 13 shapes of the README's performance "
                   "grid; --quick: tiny shapes)")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--threads", type=positive_int_arg, default=None,
                   help="CPU threads for Numba and PyTorch (default: as they are; BLAS's are recorded)")
    p.add_argument("--repeat", type=positive_int_arg, default=None,
                   help=f"timed runs per entry, median reported (default {DEFAULT_REPEAT}; --quick {QUICK_REPEAT})")
    p.add_argument("--backend", type=_backend_arg, default="all", metavar="PEERS",
                   help="'all' or a comma-separated list of reference, cpu, cuda, torch-cpu, torch-cuda, torch")
    p.add_argument("--mode", default="both", choices=tuple(MODE_CHOICES),
                   help="forward + BPTT ('bptt'), forward alone ('fwd'), or both")
    p.add_argument("--output-size", type=positive_int_arg, default=DEFAULT_OUTPUT_SIZE, help="O (default 1)")
    p.add_argument("--warmup", type=_nonnegative_int, default=1, help="untimed runs before the memory runs and timing (default 1)")
    p.add_argument("--reference-budget", type=_positive_float, default=DEFAULT_REFERENCE_BUDGET_S, metavar="SECONDS",
                   help="the reference backend's time per entry: skipped when one run is projected to take longer, "
                        "else as many runs as fit (default 20)")
    p.add_argument("--settle", type=_nonnegative_float, default=None, metavar="SECONDS",
                   help=f"pause before each peer's timed runs (default {DEFAULT_SETTLE_S:g}; --quick 0)")
    p.add_argument("--retries", type=_nonnegative_int, default=None,
                   help=f"run a timed block again while other processes take the cores it needs (beyond "
                        f"{QUIET_CORES:g}) "
                        f"(default {DEFAULT_RETRIES}; --quick 0)")
    p.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                   help="host peers' clock: wall (default) or cpu, this process's CPU time, which ignores what "
                        "other processes take (needs --threads 1)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    p.add_argument("--quick", action="store_true", help=f"tiny shapes, {QUICK_REPEAT} runs: for CI")


def main(args):
    """Run ``gpubptt bench`` from parsed arguments; 0 if something ran and every peer that could run
    did and agrees with the oracle where checked, 1 if not, 2 for options that do not go together."""
    try:
        result = run(cell=args.cell, shapes=args.shapes, dtype=args.dtype, threads=args.threads, repeat=args.repeat,
                     backend=args.backend, quick=args.quick, output_size=args.output_size, mode=args.mode,
                     warmup=args.warmup, reference_budget_s=args.reference_budget, settle_s=args.settle,
                     retries=args.retries, clock=args.clock,
                     log=lambda line: print(line, file=sys.stderr, flush=True))
    except (ValueError, TypeError) as e:  # run's checks, before any work
        print(f"gpubptt bench: error: {e}", file=sys.stderr)
        return 2
    result["meta"]["command"] = _command(args)
    table = to_markdown(result)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    bad = failed_checks(result)
    for r in bad:
        print(f"FAIL: {r['peer']} {r['mode']} at B={r['B']} T={r['T']} D={r['D']} H={r['H']} disagrees with "
              f"the {r['check']['oracle']}: {_check_text(r['check'])}", file=sys.stderr)
    errors = [r for r in result["results"] if r.get("status") == "error"]
    for r in errors:
        print(f"ERROR: {r['peer']} {r['mode']} at B={r['B']} T={r['T']} D={r['D']} H={r['H']} did not run: "
              f"{r['reason']}", file=sys.stderr)
    ran = any(r.get("status") == "ok" for r in result["results"])
    if not ran:
        why = [f"{p}: {info['reason']}" for p, info in result["peers"].items() if not info["available"]]
        print("ERROR: nothing ran: " + ("; ".join(why) or "every entry was skipped or failed (see the table)"),
              file=sys.stderr)
    return 1 if bad or errors or not ran else 0
