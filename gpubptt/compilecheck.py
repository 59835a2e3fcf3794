"""Compile check for every ``@cuda.jit`` kernel, with no GPU: NVVM -> LTO-IR -> nvJitLink -> SASS.

What the CUDA simulator cannot check (typing on the real target, register pressure, spills to local
memory, shared-memory use) a compile check can, without a GPU (DESIGN.md §5). Each kernel is compiled
for each (compute capability, dtype) with ``cuda.compile_all(..., device=False, abi="numba",
output="ltoir")`` and linked with nvJitLink (``-arch=sm_XX -lto -verbose``), the route numba-cuda's
own dispatcher takes at launch when nvJitLink is installed; ptxas' resource report is read from the
link's info log.

Registry: every module named in ``CUDA_KERNEL_MODULES`` (inside ``gpubptt.kernels``) exposes
``signatures(numba_dtype) -> {name: (py_func, argtypes)}``, optionally ``(py_func, argtypes,
options)`` where ``options`` are extra ``cuda.compile_all`` keywords (``fastmath``,
``launch_bounds``, ``lineinfo``) that the kernel is jitted with, so the check compiles what runs.

``libcudadevrt.a`` (needed by grid-sync kernels) is linked the way numba-cuda links it: only when the
kernel needs it. The first link is made without it; if that link fails on an unresolved extern and
the library is found, the link is repeated with it. Linking it unconditionally changes the code
ptxas emits (the Elman forward kernel goes from 40 to 48 registers on sm_80), so an unconditional
link would report figures that no launch sees. ``cudadevrt=True``/``False`` forces either way.

Shared memory: the figure reported is *static* shared memory (``cuda.shared.array`` with a constant
size) plus whatever the toolchain reserves. Dynamic shared memory (``cuda.shared.array(0, ...)``, the
fourth launch parameter) is chosen at launch and appears in no compile log: the tiled and cooperative
variants of the recurrence kernels (``kernels/cuda_blocks.py``) request it, their modules state how
much (``FORWARD_FOOTPRINT``/``BACKWARD_FOOTPRINT``: formulas printed under the table), and
``variant_plans`` works out, for the benchmark shapes on an A100 (sm_80) and an H100 (sm_90), which
variant each gets, the dynamic shared memory it requests, and the blocks per SM and waves that its
registers (from the check) and shared memory imply. A plan whose static plus dynamic shared memory
exceeds the architecture's per-block limit, or whose cooperative grid cannot be resident at once,
fails the check.

Run ``python -m gpubptt.compilecheck`` (the simulator must be off): it prints the table and exits 1 if
any kernel fails to compile or link, or uses local memory (spills or a stack frame). ``--markdown``
adds the README's tables (``format_markdown``), headed by the toolchain's versions (``toolchain``);
``--jobs N`` compiles in N processes (default: one per CPU).
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
from dataclasses import dataclass, field

from .kernels.cuda_compat import cuda, simulator_enabled, target_compute_capability

# Kernel modules inside gpubptt.kernels that the check covers: add a module's name here.
CUDA_KERNEL_MODULES = ("elman_cuda", "lstm_cuda", "gru_cuda", "optim_cuda")

DEFAULT_CCS = ((8, 0), (9, 0))
DEFAULT_DTYPES = ("float32", "float64")

# Per-SM limits shared by sm_80 and sm_90 (CUDA C Programming Guide, "Compute capabilities" table).
REGISTERS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32
MAX_REGISTERS_PER_THREAD = 255
REGISTER_ALLOCATION_UNIT = 256  # registers are given to a warp in units of 256
WARP_SIZE = 32
STATIC_SMEM_LIMIT = 48 * 1024  # static shared memory per block; more needs dynamic smem + opt-in
OCCUPANCY_BLOCK = 256  # the kernels launch at most cuda_blocks.MAX_THREADS = 256 threads per block

# Functions that libcudadevrt.a brings into a link: never the kernel under check.
_DEVRT_MARKERS = ("cuda_device_runtime", "__nv_static_")


@dataclass
class KernelReport:
    """Resources of one kernel compiled for one architecture and dtype (None: not in the log)."""

    kernel: str
    dtype: str
    cc: tuple
    registers: int | None = None
    barriers: int | None = None
    smem_bytes: int | None = None  # static shared memory per block (dynamic smem: see module docs)
    cmem_bytes: int | None = None  # constant bank 0 (kernel parameters)
    stack_bytes: int | None = None  # per-thread stack frame (lives in local memory)
    lmem_bytes: int | None = None  # per-thread local memory as the linker reports it
    spill_stores: int | None = None
    spill_loads: int | None = None
    linked_cudadevrt: bool = False
    entry: str | None = None  # mangled name of the kernel's entry function
    seconds: float = 0.0
    error: str | None = None
    log: str = field(default="", repr=False)

    @property
    def arch(self):
        return "sm_%d%d" % tuple(self.cc)

    @property
    def ok(self):
        """Compiled, linked, and its register count was found in the log."""
        return self.error is None and bool(self.registers)

    @property
    def local_memory_bytes(self):
        """Per-thread local memory: the larger of the stack frame and the reported lmem."""
        return max(self.stack_bytes or 0, self.lmem_bytes or 0)

    @property
    def spills(self):
        return (self.spill_stores or 0) + (self.spill_loads or 0)

    def occupancy(self, block=OCCUPANCY_BLOCK):
        """(resident threads per SM, fraction of the 2048-thread maximum) for ``block``-thread blocks,
        limited by registers, threads and blocks per SM only (not by shared memory, whose dynamic
        part is chosen at launch)."""
        return occupancy(self.registers, block)


def occupancy(registers, block=OCCUPANCY_BLOCK):
    """Threads per SM and occupancy implied by ``registers`` per thread for ``block``-thread blocks
    on sm_80/sm_90 (65536 registers, 2048 threads, 32 blocks per SM; 256-register warp allocation)."""
    if not registers:
        return 0, 0.0
    warps_per_block = -(-block // WARP_SIZE)
    per_warp = -(-registers * WARP_SIZE // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    blocks_by_registers = (REGISTERS_PER_SM // per_warp) // warps_per_block
    blocks_by_threads = MAX_THREADS_PER_SM // (warps_per_block * WARP_SIZE)
    blocks = min(blocks_by_registers, blocks_by_threads, MAX_BLOCKS_PER_SM)
    threads = blocks * block
    return threads, threads / MAX_THREADS_PER_SM


# ----------------------------------------------------------------------------------------------
# Toolchain access


def _require_toolchain():
    """Raise unless a compile check can run here: numba-cuda installed, simulator off, nvJitLink."""
    if simulator_enabled():
        raise RuntimeError(
            "the compile check needs the CUDA simulator off: it compiles with NVVM and links with "
            "nvJitLink, which the simulator replaces. Run it in a separate process without "
            "NUMBA_ENABLE_CUDASIM=1 (e.g. `NUMBA_ENABLE_CUDASIM=0 python -m gpubptt.compilecheck`)."
        )
    if cuda is None:
        raise RuntimeError(
            "the compile check needs numba-cuda (pip install 'gpubptt[cuda13]' or '[cuda12]')"
        )
    try:
        from cuda.bindings import nvjitlink
    except ImportError as exc:
        raise RuntimeError(
            "the compile check needs nvJitLink through cuda-bindings "
            "(installed by numba-cuda[cu12] / numba-cuda[cu13]): %s" % exc
        ) from exc
    return nvjitlink


def find_cudadevrt():
    """Path of libcudadevrt.a matching the installed nvJitLink's CUDA major version, or None."""
    try:  # cuda-pathfinder ships with cuda-bindings >= 12.9 and knows the wheel layouts
        from cuda.pathfinder import find_static_lib

        path = find_static_lib("cudadevrt")
        if path and os.path.isfile(path):
            return path
    except Exception:  # not installed, older layout, or not found: search by hand below
        pass
    try:
        from cuda.bindings import nvjitlink

        major = nvjitlink.version()[0]
    except Exception:
        major = None
    subdirs = ([f"nvidia/cu{major}/lib"] if major else []) + [
        "nvidia/cu13/lib", "nvidia/cu12/lib", "nvidia/cuda_runtime/lib",
    ]
    roots = [p for p in sys.path if p and os.path.isdir(p)]
    candidates = [os.path.join(root, sub, "libcudadevrt.a") for root in roots for sub in subdirs]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates += [os.path.join(os.environ[env], d, "libcudadevrt.a") for d in ("lib64", "lib")]
    candidates += ["/usr/local/cuda/lib64/libcudadevrt.a", "/usr/local/cuda/lib/libcudadevrt.a"]
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def _input_type(nvjitlink, code):
    """nvJitLink input type and bytes of one item of ``cuda.compile_all``'s output."""
    if isinstance(code, (bytes, bytearray)):
        return nvjitlink.InputType.LTOIR, bytes(code)
    if isinstance(code, str):
        return nvjitlink.InputType.PTX, code.encode()
    # numba-cuda LinkableCode subclasses (kernels jitted with link=[...])
    kinds = {
        "LTOIR": "LTOIR", "PTXSource": "PTX", "Cubin": "CUBIN", "Fatbin": "FATBIN",
        "Object": "OBJECT", "Archive": "LIBRARY",
    }
    kind = kinds.get(type(code).__name__)
    if kind is None:
        raise TypeError("cannot link %r (%s)" % (code, type(code).__name__))
    data = code.data
    return getattr(nvjitlink.InputType, kind), data.encode() if isinstance(data, str) else bytes(data)


def _log(nvjitlink, handle, which):
    size = getattr(nvjitlink, f"get_{which}_log_size")(handle)
    if not size:
        return ""
    buf = bytearray(size)
    getattr(nvjitlink, f"get_{which}_log")(handle, buf)
    return bytes(buf).rstrip(b"\x00").decode(errors="replace")


def _link(nvjitlink, codes, cc, devrt_path):
    """Link ``codes`` for ``cc``; returns (ok, info log, error log)."""
    options = [f"-arch=sm_{cc[0]}{cc[1]}", "-lto", "-verbose"]
    handle = nvjitlink.create(len(options), options)
    try:
        for i, code in enumerate(codes):
            kind, data = _input_type(nvjitlink, code)
            nvjitlink.add_data(handle, kind, data, len(data), f"gpubptt_{i}")
        if devrt_path:
            nvjitlink.add_file(handle, nvjitlink.InputType.LIBRARY, devrt_path)
        try:
            nvjitlink.complete(handle)
            ok = True
        except nvjitlink.nvJitLinkError:
            ok = False
        return ok, _log(nvjitlink, handle, "info"), _log(nvjitlink, handle, "error")
    finally:
        nvjitlink.destroy(handle)


# ----------------------------------------------------------------------------------------------
# Log parsing

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"Function properties for '?([^':\s]+)'?:?\s*$")
_METRICS = {
    "registers": re.compile(r"(\d+)\s+registers", re.I),
    "barriers": re.compile(r"(\d+)\s+barriers", re.I),
    "smem_bytes": re.compile(r"(\d+)\s+bytes\s+smem", re.I),
    "cmem_bytes": re.compile(r"(\d+)\s+bytes\s+cmem\[0\]", re.I),
    "stack_bytes": re.compile(r"(\d+)\s+(?:bytes\s+)?stack(?:\s+frame)?\b", re.I),
    "lmem_bytes": re.compile(r"(\d+)\s+bytes\s+lmem", re.I),
    "spill_stores": re.compile(r"(\d+)\s+bytes\s+spill\s+stores", re.I),
    "spill_loads": re.compile(r"(\d+)\s+bytes\s+spill\s+loads", re.I),
}


def parse_link_log(log):
    """Resources per function from an nvJitLink ``-verbose`` info log.

    Two formats occur, and both are read:

        ptxas info    : Compiling entry function 'NAME' for 'sm_80'
        ptxas info    : Function properties for NAME
        ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 40 registers, used 1 barriers, 680 bytes cmem[0]

        info    : Function properties for 'NAME':
        info    : used 48 registers, used 1 barriers, 0 stack, 1024 bytes smem, 856 bytes cmem[0], 0 bytes lmem

    (the second comes when a library such as libcudadevrt.a takes part in the link). ptxas' lines
    win where both give a figure; the linker's lines only fill in what ptxas left out (ptxas prints
    no smem when it is zero, and nvJitLink 13.5's summary prints nonsense barrier counts such as
    "used 347 barriers" for a kernel without any). Returns
    ``(entries, {name: {metric: int}})`` with ``entries`` the kernels ptxas compiled, in order.
    """
    entries, functions, current = [], {}, None
    for line in log.splitlines():
        match = _ENTRY.search(line)
        if match:
            current = match.group(1)
            if current not in entries:
                entries.append(current)
            functions.setdefault(current, {})
            continue
        match = _PROPS.search(line)
        if match:
            current = match.group(1)
            functions.setdefault(current, {})
            continue
        if current is None:
            continue
        from_ptxas = line.lstrip().startswith("ptxas")
        props = functions[current]
        for metric, pattern in _METRICS.items():
            found = pattern.search(line)
            if found and (from_ptxas or metric not in props):
                props[metric] = int(found.group(1))
    return entries, functions


def _pick_entry(entries, functions, py_func):
    """The kernel under check among the functions in the log (libcudadevrt adds its own)."""
    names = entries or [n for n in functions if not any(m in n for m in _DEVRT_MARKERS)]
    if len(names) > 1:  # numba mangles the Python name as <len><name>
        token = "%d%s" % (len(py_func.__name__), py_func.__name__)
        names = [n for n in names if token in n] or names
    return names[0] if names else None


# ----------------------------------------------------------------------------------------------
# The check


def compile_kernel(py_func, argtypes, cc, *, name=None, dtype="", cudadevrt="auto", **options):
    """Compile ``py_func`` as a kernel for ``argtypes`` and compute capability ``cc`` (a tuple such
    as (8, 0)) through NVVM and nvJitLink, and report its resources. Compile and link failures are
    recorded in the report's ``error`` (they do not raise); a missing toolchain or the simulator
    raises RuntimeError. ``cudadevrt``: "auto" (link libcudadevrt.a only when the first link needs
    it, as numba-cuda does), True or False. ``options`` go to ``cuda.compile_all``."""
    nvjitlink = _require_toolchain()
    cc = tuple(cc)
    report = KernelReport(kernel=name or py_func.__name__, dtype=dtype, cc=cc)
    start = time.perf_counter()
    try:
        with target_compute_capability(cc):  # grid-sync kernels compile device functions that ask for it
            codes, _ = cuda.compile_all(
                py_func, tuple(argtypes), device=False, abi="numba", cc=cc, output="ltoir", **options
            )
    except Exception as exc:  # typing/lowering errors: the point of the check is to report them
        report.error = "compile failed: %s: %s" % (type(exc).__name__, str(exc).strip())
        report.seconds = time.perf_counter() - start
        return report

    devrt = find_cudadevrt() if cudadevrt else None
    if cudadevrt is True and devrt is None:
        report.error = "libcudadevrt.a not found (nvidia-cuda-runtime wheel or /usr/local/cuda)"
        report.seconds = time.perf_counter() - start
        return report
    use_devrt = devrt if cudadevrt is True else None
    ok, info, err = _link(nvjitlink, codes, cc, use_devrt)
    if not ok and cudadevrt == "auto" and devrt and "unresolved extern" in err.lower():
        use_devrt = devrt
        ok, info, err = _link(nvjitlink, codes, cc, use_devrt)
    report.linked_cudadevrt = bool(use_devrt)
    report.log = info + (("\n" + err) if err else "")
    report.seconds = time.perf_counter() - start
    if not ok:
        report.error = "nvJitLink failed: " + (err.strip() or "(empty error log)")
        return report

    entries, functions = parse_link_log(info)
    report.entry = _pick_entry(entries, functions, py_func)
    for metric, value in functions.get(report.entry, {}).items():
        setattr(report, metric, value)
    for metric in ("smem_bytes", "stack_bytes", "lmem_bytes", "spill_stores", "spill_loads"):
        if getattr(report, metric) is None and report.registers:
            setattr(report, metric, 0)  # ptxas leaves out zero smem; the rest were printed
    if not report.registers:
        report.error = "linked, but no register count for the kernel in the nvJitLink log"
    return report


def kernel_signatures(dtype, modules=CUDA_KERNEL_MODULES):
    """{kernel name: (py_func, argtypes, options)} over the registered modules for one dtype."""
    from numba import types

    numba_dtype = getattr(types, dtype)
    found = {}
    for module_name in modules:
        module = importlib.import_module("gpubptt.kernels." + module_name)
        for name, entry in module.signatures(numba_dtype).items():
            py_func, argtypes, *rest = entry
            found[name] = (py_func, tuple(argtypes), dict(rest[0]) if rest else {})
    return found


def _compile_named(job):
    """``compile_kernel`` for job = (dtype, kernel name, cc, modules): a worker's unit of work."""
    dtype, name, cc, modules = job
    py_func, argtypes, options = kernel_signatures(dtype, modules)[name]
    return compile_kernel(py_func, argtypes, cc, name=name, dtype=dtype, **options)


def check_all(ccs=DEFAULT_CCS, dtypes=DEFAULT_DTYPES, modules=CUDA_KERNEL_MODULES, jobs=1):
    """Compile every registered kernel for every cc in ``ccs`` and dtype in ``dtypes``; the reports in
    that order (dtype, kernel, cc). With ``jobs`` > 1 that many processes compile side by side (NVVM
    and nvJitLink use one core each); they are spawned, and so import the caller's main module: from a
    script, call it under ``if __name__ == "__main__":``. Every kernel for sm_80 and sm_90 in both
    dtypes took 131 s in one process on a 2-core machine, 72 s in two (the same reports)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive integer, got {jobs!r}")
    _require_toolchain()
    work = [(dtype, name, tuple(cc), modules) for dtype in dtypes for name in kernel_signatures(dtype, modules)
            for cc in ccs]
    jobs = min(len(work), jobs)
    if jobs <= 1:
        return [_compile_named(job) for job in work]
    import concurrent.futures
    import multiprocessing

    # spawned, not forked: the calling process may hold threads (Numba's, a BLAS's) that a fork would copy
    # in the middle of their work
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_named, work))


def _fmt(value):
    return "?" if value is None else str(value)


def format_report(reports, block=OCCUPANCY_BLOCK):
    """A text table of the reports, with the occupancy the register count implies."""
    header = ("kernel", "dtype", "arch", "regs", "smem B", "lmem/stack B", "spill st/ld B",
              "devrt", f"occ@{block}", "s")
    rows = []
    for r in sorted(reports, key=lambda r: (r.kernel, r.dtype, r.cc)):
        if r.error:
            rows.append((r.kernel, r.dtype, r.arch, "FAIL", "", "", "", "", "", "%.2f" % r.seconds))
            continue
        threads, occ = r.occupancy(block)
        rows.append((
            r.kernel, r.dtype, r.arch, _fmt(r.registers), _fmt(r.smem_bytes),
            "%s/%s" % (_fmt(r.lmem_bytes), _fmt(r.stack_bytes)),
            "%s/%s" % (_fmt(r.spill_stores), _fmt(r.spill_loads)),
            "yes" if r.linked_cudadevrt else "no",
            "%.1f%% (%d thr)" % (100 * occ, threads), "%.2f" % r.seconds,
        ))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *map(line, rows)]
    out.append(
        f"smem: static shared memory per block (dynamic smem, set at launch, is in no log: see below). "
        f"occ@{block}: resident threads/SM for {block}-thread blocks limited by "
        f"registers ({REGISTERS_PER_SM}/SM, {REGISTER_ALLOCATION_UNIT}-register warp allocation) and "
        f"{MAX_THREADS_PER_SM} threads/SM; shared memory not counted. devrt: libcudadevrt.a linked."
    )
    notes = dynamic_smem_notes({r.kernel for r in reports})
    if notes:
        out.append("dynamic smem per block, in elements of the dtype (4 B float32, 8 B float64); the other "
                   "kernels request none:")
        out += [f"  {name}: {text}" for name, text in notes]
    for r in reports:
        if r.error:
            out.append(f"FAIL {r.kernel} {r.dtype} {r.arch}: {r.error}")
    return "\n".join(out)


def problems(reports):
    """Human-readable reasons the check fails (empty when every kernel is fine)."""
    found = []
    for r in reports:
        where = f"{r.kernel} {r.dtype} {r.arch}"
        if not r.ok:
            found.append(f"{where}: {r.error or 'no register count'}")
        elif r.spills or r.local_memory_bytes:
            found.append(f"{where}: uses local memory ({r.spill_stores} B spill stores, "
                         f"{r.spill_loads} B spill loads, {r.local_memory_bytes} B stack/lmem)")
        elif (r.smem_bytes or 0) > STATIC_SMEM_LIMIT:
            found.append(f"{where}: {r.smem_bytes} B static shared memory > {STATIC_SMEM_LIMIT} B")
    return found


# ----------------------------------------------------------------------------------------------
# Kernel variants: dynamic shared memory and the plans the benchmark shapes get

# cell family -> (module in gpubptt.kernels, gates)
VARIANT_CELLS = {"elman": ("elman_cuda", 1), "lstm": ("lstm_cuda", 4), "gru": ("gru_cuda", 3)}
# architecture -> the device whose published limits stand for it (kernels/cuda_blocks.py)
VARIANT_DEVICES = {(8, 0): "A100", (9, 0): "H100"}
# the benchmark grid (B, T, D, H), haste's T = 50 shapes included
BENCH_SHAPES = ((64, 100, 512, 512), (64, 100, 64, 256), (128, 50, 128, 512), (32, 200, 32, 128),
                (256, 100, 16, 64), (1, 1000, 8, 64), (4, 1000, 64, 256),
                (1, 50, 128, 128), (16, 50, 128, 128), (64, 50, 128, 128),
                (1, 50, 128, 512), (16, 50, 128, 512), (64, 50, 128, 512))


def _variant_modules():
    for family, (module_name, gates) in VARIANT_CELLS.items():
        module = importlib.import_module("gpubptt.kernels." + module_name)
        yield family, gates, {"forward": module.FORWARD_FOOTPRINT, "backward": module.BACKWARD_FOOTPRINT}


def dynamic_smem_notes(kernels):
    """[(kernel names, formula)] of the dynamic shared memory of the variants among ``kernels``."""
    from .kernels.cuda_blocks import TILES

    notes = []
    for family, _, footprints in _variant_modules():
        for direction, fp in footprints.items():
            tiled = [f"{family}.{direction}.tiled{t}" for t in TILES]
            if any(k in kernels for k in tiled):
                names = f"{family}.{direction}.tiled{{{','.join(map(str, TILES))}}}"
                tiles = " or ".join(map(str, TILES))
                notes.append((names, fp.tiled_text + f"  (tile = {tiles}, threads = the block size)"))
            if f"{family}.{direction}.cooperative" in kernels:
                notes.append((f"{family}.{direction}.cooperative",
                              fp.cooperative_text + "  (units per block, splits per dot product)"))
    return notes


@dataclass
class PlanRow:
    """The variant one shape gets on one architecture, and what its resources imply."""

    cell: str
    direction: str
    shape: tuple  # (B, T, D, H)
    cc: tuple
    device: str
    plan: object  # cuda_blocks.Plan
    kernel: str
    registers: int | None
    static_smem: int
    resident: int  # blocks an SM can hold, as registers, threads and shared memory allow
    waves: float  # rounds of resident blocks the grid needs (a cooperative grid must fit in one)
    smem_limit: int
    sm_count: int

    @property
    def per_sm(self):
        """Blocks the busiest SM runs at once: the grid spread over the SMs, at most ``resident``."""
        return min(self.resident, -(-self.plan.blocks // self.sm_count))

    @property
    def occupancy(self):
        """Resident threads of the busiest SM over the 2048 an SM can hold."""
        return self.per_sm * self.plan.threads / MAX_THREADS_PER_SM


def variant_plans(reports, dtype="float32", shapes=BENCH_SHAPES):
    """The plan ``cuda_blocks.choose`` makes (variant 'auto') for each cell, direction and shape on each
    architecture of ``VARIANT_DEVICES`` checked in ``reports``, with the kernel's registers and
    static shared memory from the reports."""
    from .kernels import cuda_blocks

    itemsize = 4 if dtype == "float32" else 8
    by_key = {(r.kernel, r.dtype, tuple(r.cc)): r for r in reports}
    rows = []
    for cc, device in VARIANT_DEVICES.items():
        limits = getattr(cuda_blocks, device)
        for family, gates, footprints in _variant_modules():
            for shape in shapes:
                B, H = shape[0], shape[3]
                for direction, fp in footprints.items():
                    plan = cuda_blocks.choose(B, H, gates, itemsize, fp, limits, "auto")
                    kernel = f"{family}.{direction}" + {"simple": "", "tiled": f".tiled{plan.tile}",
                                                        "cooperative": ".cooperative"}[plan.variant]
                    report = by_key.get((kernel, dtype, cc))
                    if report is None or not report.ok:
                        continue
                    static = report.smem_bytes or 0
                    by_registers = occupancy(report.registers, plan.threads)[0] // plan.threads
                    resident = min(by_registers, limits.resident_blocks(plan.threads, plan.smem + static))
                    waves = plan.blocks / (limits.sm_count * resident) if resident else float("inf")
                    rows.append(PlanRow(family, direction, shape, cc, device, plan, kernel, report.registers,
                                        static, resident, waves, limits.smem_optin, limits.sm_count))
    return rows


def format_plans(rows):
    """A text table of ``variant_plans`` rows: forward and backward of a shape on one line."""
    import math

    header = ("cell", "B,T,D,H", "arch", "forward: variant grid, dyn smem, regs, blocks/SM used/max, occ",
              "backward: same")
    pairs = {}
    for r in rows:
        pairs.setdefault((r.cell, r.shape, r.cc), {})[r.direction] = r

    def cell(r):
        if r is None:
            return "-"
        p = r.plan
        shape = {"tiled": f" t{p.tile}", "cooperative": f" u{p.units}s{p.splits}"}.get(p.variant, "")
        waves = "" if r.waves <= 1 else f", {math.ceil(r.waves)} waves"
        return (f"{p.variant}{shape} {p.blocks}x{p.threads}, {p.smem / 1024:.1f} KiB, {r.registers} regs, "
                f"{r.per_sm}/{r.resident}, {100 * r.occupancy:.0f}%{waves}")

    table = [(c, ",".join(map(str, s)), "sm_%d%d" % cc, cell(d.get("forward")), cell(d.get("backward")))
             for (c, s, cc), d in pairs.items()]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]

    def line(row):
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *map(line, table)]
    out.append("variant t<tile>: sequences per block; u<units>s<splits>: hidden units per block, partial sums "
               "per dot product. grid: blocks x threads; dyn smem: requested at launch; blocks/SM: used by the "
               "busiest SM / the most registers, threads and shared memory (plus 1 KiB reserved per block) "
               "allow; occ: threads resident on the busiest SM / 2048. sm_80 as an A100 (108 SMs, 163 KiB "
               "opt-in), sm_90 as an H100 (132 SMs, 227 KiB).")
    return "\n".join(out)


def plan_problems(rows):
    """Plans that could not launch as planned: shared memory over the per-block limit, or a cooperative
    grid larger than the GPU holds at once."""
    found = []
    for r in rows:
        where = f"{r.kernel} {r.device} B,T,D,H={r.shape}"
        if r.static_smem + r.plan.smem > r.smem_limit:
            found.append(f"{where}: {r.static_smem} B static + {r.plan.smem} B dynamic shared memory > "
                         f"{r.smem_limit} B")
        if r.plan.variant == "cooperative" and r.waves > 1:
            found.append(f"{where}: cooperative grid of {r.plan.blocks} blocks, {r.resident} resident per SM")
    return found


# ----------------------------------------------------------------------------------------------
# The README's tables (``--markdown``)

# The toolchain's parts as pip installs them: registers can change with any of them.
TOOLCHAIN_PACKAGES = ("numba-cuda", "nvidia-nvvm", "nvidia-nvjitlink")
# The shapes the README's plan table shows: the default grid without haste's T = 50 shapes.
README_SHAPES = BENCH_SHAPES[:7]


def toolchain():
    """'numba-cuda 0.30.4, nvidia-nvvm 13.5.37, nvidia-nvjitlink 13.5.37': the installed versions
    the figures depend on ("not installed by pip" for a part found elsewhere, e.g. a CUDA toolkit)."""
    from importlib import metadata

    parts = []
    for name in TOOLCHAIN_PACKAGES:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed by pip")
    return ", ".join(parts)


def format_markdown(reports, cell="elman", shapes=README_SHAPES, block=OCCUPANCY_BLOCK):
    """The README's two Markdown tables: every kernel's registers (sm_80/sm_90, float32/float64),
    static shared memory and the occupancy its registers allow; and the plan ``cuda_blocks.choose``
    makes for ``cell`` at ``shapes`` (float32). Needs reports for sm_80 and sm_90, both dtypes."""
    by_key = {(r.kernel, r.dtype, tuple(r.cc)): r for r in reports}
    ccs, dtypes = tuple(VARIANT_DEVICES), DEFAULT_DTYPES
    missing = [(k, d, cc) for d in dtypes for k in kernel_signatures(d) for cc in ccs if (k, d, cc) not in by_key]
    if missing:
        raise ValueError(f"format_markdown needs a report for every kernel at sm_80 and sm_90, float32 and "
                         f"float64; missing {len(missing)}, e.g. {missing[0]}")

    def per_arch(kernel, dtype, what):
        return "/".join(what(by_key[(kernel, dtype, cc)]) for cc in ccs)

    out = [f"Compile check: {toolchain()}.", "",
           "| kernel | regs f32 sm_80/sm_90 | regs f64 sm_80/sm_90 | static smem B f32 sm_80/sm_90 (f64) "
           f"| occupancy by registers at {block} threads/block, f32 sm_80/sm_90 |",
           "|---|---|---|---|---|"]
    for kernel in kernel_signatures("float32"):
        regs = [per_arch(kernel, d, lambda r: _fmt(r.registers) if r.ok else "FAIL") for d in dtypes]
        smem = [per_arch(kernel, d, lambda r: str(r.smem_bytes or 0)) for d in dtypes]
        occ = per_arch(kernel, "float32", lambda r: "%g%%" % (100 * r.occupancy(block)[1]))
        shown = smem[0] if smem[0] == smem[1] else f"{smem[0]} ({smem[1]})"
        out.append(f"| `{kernel}` | {regs[0]} | {regs[1]} | {shown} | {occ} |")

    rows = [r for r in variant_plans(reports, "float32", shapes) if r.cell == cell]
    pairs = {}
    for r in rows:
        pairs.setdefault((r.shape, r.cc), {})[r.direction] = r

    def plan(r):
        if r is None:  # its kernel failed the check
            return "-"
        p = r.plan
        shape = {"tiled": f" (tile {p.tile})",
                 "cooperative": f" ({p.units} units/block, {p.splits} split{'s' if p.splits > 1 else ''})"}
        return (f"{p.variant}{shape.get(p.variant, '')}, {p.blocks}×{p.threads}, {p.smem / 1024:.1f} KiB, "
                f"{r.registers} regs, {r.per_sm}/{r.resident} blocks/SM, {100 * r.occupancy:.3g}%")

    out += ["", "| B,T,D,H | arch | forward | backward |", "|---|---|---|---|"]
    for shape in shapes:
        for cc in ccs:
            found = pairs.get((shape, cc), {})
            if found:
                out.append(f"| {','.join(map(str, shape))} | sm_{cc[0]}{cc[1]} | "
                           f"{plan(found.get('forward'))} | {plan(found.get('backward'))} |")
    return "\n".join(out)


def _parse_cc(text):
    """'8.0', '80' or 'sm_80' -> (8, 0)."""
    text = text.lower().removeprefix("sm_")
    major, _, minor = text.partition(".") if "." in text else (text[:-1], "", text[-1:])
    return int(major), int(minor)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gpubptt.compilecheck",
        description="Compile every CUDA kernel through NVVM + nvJitLink (no GPU needed) and report "
        "registers, shared and local memory. Exits 1 on a compile failure or local-memory use.",
    )
    parser.add_argument("--cc", nargs="+", default=["8.0", "9.0"],
                        help="compute capabilities, e.g. 8.0 9.0 (default)")
    parser.add_argument("--dtype", nargs="+", default=list(DEFAULT_DTYPES), choices=DEFAULT_DTYPES)
    parser.add_argument("--log", action="store_true", help="print each nvJitLink info log too")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes compiling side by side (default: one per CPU)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the README's tables (Markdown) after the check; needs the default --cc and "
                        "--dtype")
    args = parser.parse_args(argv)
    try:
        ccs = tuple(_parse_cc(c) for c in args.cc)
    except ValueError:
        parser.error("--cc takes values such as 8.0, 80 or sm_80")
    if args.jobs < 1:
        parser.error(f"--jobs takes a positive integer, got {args.jobs}")
    if args.markdown and (set(ccs) != set(VARIANT_DEVICES) or set(args.dtype) != set(DEFAULT_DTYPES)):
        parser.error("--markdown needs the default --cc 8.0 9.0 and --dtype float32 float64 (the README's "
                     "tables show both)")
    try:
        reports = check_all(ccs=ccs, dtypes=tuple(args.dtype), jobs=args.jobs)
    except RuntimeError as exc:
        print(f"compilecheck: {exc}", file=sys.stderr)
        return 2
    if args.log:
        for r in reports:
            print(f"==== {r.kernel} {r.dtype} {r.arch}\n{r.log}\n")
    print(format_report(reports))
    found = problems(reports)
    if "float32" in args.dtype and set(VARIANT_DEVICES) & set(ccs):
        rows = variant_plans(reports, "float32")
        print("\nVariant chosen for the benchmark shapes (float32), and what its resources imply:")
        print(format_plans(rows))
        found += plan_problems(rows)
    if args.markdown:
        print("\n" + format_markdown(reports))
    for reason in found:
        print("PROBLEM " + reason)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
