"""Compile check: every ``@cuda.jit`` kernel compiles through NVVM and links with nvJitLink for sm_80
and sm_90, float32 and float64, with no GPU; no kernel uses local memory (spills or a stack frame).

First tier (simulator off). ``pytest tests/test_compile.py -s`` prints the resource table. The
toolchain tests skip with a reason where numba-cuda or nvJitLink is missing or the simulator is on;
the log-parsing and occupancy tests run everywhere.
"""
import os
import pathlib

import pytest

from gpubptt import compilecheck
from gpubptt.kernels import cuda_compat

CCS = ((8, 0), (9, 0))
DTYPES = ("float32", "float64")


def _skip_reason():
    if cuda_compat.simulator_enabled():
        return "compile check needs the CUDA simulator off (NUMBA_ENABLE_CUDASIM=1 is set)"
    if cuda_compat.cuda is None:
        return "numba-cuda is not installed (pip install 'gpubptt[cuda13]')"
    try:
        from cuda.bindings import nvjitlink

        nvjitlink.version()
    except Exception as exc:  # ImportError, or a wheel without the nvJitLink library
        return f"nvJitLink (cuda.bindings.nvjitlink) is not usable: {exc}"
    return None


SKIP = _skip_reason()
needs_toolchain = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
KERNELS = sorted(compilecheck.kernel_signatures("float32")) if SKIP is None else ["(no toolchain)"]


@pytest.fixture(scope="module")
def reports():
    found = compilecheck.check_all(ccs=CCS, dtypes=DTYPES, jobs=os.cpu_count() or 1)
    return {(r.kernel, r.dtype, r.cc): r for r in found}


@needs_toolchain
def test_report_table(reports, capsys):
    table = compilecheck.format_report(list(reports.values()))
    with capsys.disabled():
        print("\n" + table)
    assert len(reports) == len(KERNELS) * len(DTYPES) * len(CCS)


@needs_toolchain
@pytest.mark.parametrize("cc", CCS, ids=lambda cc: "sm_%d%d" % cc)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_compiles_without_local_memory(reports, kernel, dtype, cc):
    r = reports[(kernel, dtype, cc)]
    where = f"{kernel} {dtype} sm_{cc[0]}{cc[1]}"
    assert r.error is None, f"{where}: {r.error}\n{r.log}"
    assert r.registers and r.registers > 0, f"{where}: no register count parsed from\n{r.log}"
    assert r.registers <= compilecheck.MAX_REGISTERS_PER_THREAD, where
    assert r.spill_stores == 0 and r.spill_loads == 0, (
        f"{where}: spills {r.spill_stores} B stores / {r.spill_loads} B loads\n{r.log}"
    )
    assert r.local_memory_bytes == 0, f"{where}: {r.local_memory_bytes} B local memory\n{r.log}"
    assert (r.smem_bytes or 0) <= compilecheck.STATIC_SMEM_LIMIT, (
        f"{where}: {r.smem_bytes} B static shared memory > {compilecheck.STATIC_SMEM_LIMIT} B"
    )


@needs_toolchain
@pytest.mark.parametrize("dtype", DTYPES)
def test_variant_plans_fit_each_architecture(reports, dtype):
    """The tiled and cooperative kernels' plans for the benchmark shapes (kernels/cuda_blocks.py): static
    plus dynamic shared memory within the per-block limit of an A100 (sm_80) and an H100 (sm_90), and
    every cooperative grid resident at once, with the registers this check found."""
    rows = compilecheck.variant_plans(list(reports.values()), dtype)
    assert len(rows) == len(compilecheck.BENCH_SHAPES) * 3 * 2 * len(CCS)
    assert {r.plan.variant for r in rows} >= {"tiled", "cooperative"}
    assert compilecheck.plan_problems(rows) == []
    if dtype == "float32":
        print("\n" + compilecheck.format_plans(rows))


@needs_toolchain
def test_processes_side_by_side_give_the_reports_in_order():
    """check_all(jobs=2) spawns two processes; its reports are those of one process, in the same order
    (the optimiser's kernels for sm_80, float32: a few seconds)."""
    def key(r):
        return (r.kernel, r.dtype, r.cc, r.registers, r.smem_bytes, r.spill_stores, r.lmem_bytes, r.error)

    one = compilecheck.check_all(ccs=((8, 0),), dtypes=("float32",), modules=("optim_cuda",))
    two = compilecheck.check_all(ccs=((8, 0),), dtypes=("float32",), modules=("optim_cuda",), jobs=2)
    assert len(one) == len(compilecheck.kernel_signatures("float32", ("optim_cuda",))) > 1
    assert [key(r) for r in two] == [key(r) for r in one]
    with pytest.raises(ValueError, match="jobs: expected a positive integer, got 0"):
        compilecheck.check_all(jobs=0)


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
README_BEGIN, README_END = "<!-- compilecheck:begin -->\n", "\n<!-- compilecheck:end -->"


@needs_toolchain
def test_readme_tables_are_what_the_check_prints(reports):
    """The README's register, shared-memory and plan tables are ``--markdown``'s output, for the
    toolchain its first line names (registers change with it: skipped under another one)."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index(README_BEGIN) + len(README_BEGIN):text.index(README_END)]
    named, here = block.split("\n", 1)[0], f"Compile check: {compilecheck.toolchain()}."
    if named != here:
        pytest.skip(f"the README's tables are for another toolchain ({named!r}; here {here!r}): "
                    "regenerate them with python -m gpubptt.compilecheck --markdown")
    assert block == compilecheck.format_markdown(list(reports.values()))


def _fake_reports(registers=64):
    return [compilecheck.KernelReport(kernel=k, dtype=d, cc=cc, registers=registers, smem_bytes=0)
            for d in DTYPES for k in compilecheck.kernel_signatures(d) for cc in CCS]


def test_markdown_has_a_row_per_kernel_and_per_shape_and_architecture():
    """format_markdown from made-up reports (no toolchain needed): one row per kernel, one per
    (shape, architecture) of the plan table, the registers given; a missing report is an error."""
    found = _fake_reports()
    lines = compilecheck.format_markdown(found).split("\n")
    kernels = [l for l in lines if l.startswith("| `")]
    plans = [l for l in lines if l[:2] == "| " and l[2].isdigit()]
    assert len(kernels) == len(compilecheck.kernel_signatures("float32"))
    assert all("| 64/64 | 64/64 | 0/0 | 50%/50% |" in l for l in kernels), kernels[0]
    assert len(plans) == len(compilecheck.README_SHAPES) * len(CCS)
    assert all(l.count("64 regs") == 2 for l in plans), plans[0]
    with pytest.raises(ValueError, match="missing 1"):
        compilecheck.format_markdown(found[1:])


def test_dynamic_smem_notes_name_every_variant():
    from gpubptt.kernels.cuda_blocks import TILES

    kernels = {f"{cell}.{d}.{v}" for cell in ("elman", "lstm", "gru") for d in ("forward", "backward")
               for v in [f"tiled{t}" for t in TILES] + ["cooperative"]}
    notes = dict(compilecheck.dynamic_smem_notes(kernels))
    assert len(notes) == 12 and all("H" in text for text in notes.values()), notes


@needs_toolchain
@pytest.mark.parametrize("dtype", DTYPES)
def test_signatures_use_the_dtype(dtype):
    """Each module's signatures(numba_dtype) types every float array with that dtype, except arrays
    whose type is the same for both dtypes (fixed-type scratch such as optim's float64 sums and int64
    step counters, or the int32 sequence lengths)."""
    from numba import types

    other = {"float32": "float64", "float64": "float32"}[dtype]
    others = compilecheck.kernel_signatures(other)
    for name, (_, argtypes, _) in compilecheck.kernel_signatures(dtype).items():
        arrays = [(a, b) for a, b in zip(argtypes, others[name][1]) if isinstance(a, types.Array)]
        assert arrays, name
        assert all(a.dtype == getattr(types, dtype) or a == b for a, b in arrays), (name, argtypes)


def test_refuses_the_simulator(monkeypatch):
    monkeypatch.setattr(compilecheck, "simulator_enabled", lambda: True)
    with pytest.raises(RuntimeError, match="simulator off"):
        compilecheck.check_all()


# Logs as nvJitLink 13.5 writes them (names shortened).
PTXAS_LOG = """\
INFO: NVVM70 LTOIR Container created (14316 bytes)
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN3foo7_kernelE' for 'sm_80'
ptxas info    : Function properties for _ZN3foo7_kernelE
ptxas         .     792 bytes stack frame, 1920 bytes spill stores, 1936 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 4096 bytes smem, 792 bytes cumulative stack size, 408 bytes cmem[0]
ptxas info    : Compile time = 36.954 ms
"""

LINKER_LOG = """\
ptxas info    : Compiling entry function '_ZN3foo7_kernelE' for 'sm_90'
ptxas info    : Function properties for _ZN3foo7_kernelE
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 48 registers, used 0 barriers
info    : 13832 bytes gmem
info    : Function properties for '_ZN3foo7_kernelE':
info    : used 48 registers, used 347 barriers, 0 stack, 1024 bytes smem, 856 bytes cmem[0], 0 bytes lmem
info    : Function properties for '__nv_static_51__cuda_device_runtime_cu__Z16memcpy_3d_device':
info    : used 16 registers, used 1 barriers, 0 stack, 3080 bytes smem, 656 bytes cmem[0], 0 bytes lmem
"""


def test_parse_ptxas_log():
    entries, functions = compilecheck.parse_link_log(PTXAS_LOG)
    assert entries == ["_ZN3foo7_kernelE"]
    assert functions["_ZN3foo7_kernelE"] == {
        "registers": 32, "barriers": 1, "smem_bytes": 4096, "cmem_bytes": 408, "stack_bytes": 792,
        "spill_stores": 1920, "spill_loads": 1936,
    }


def test_parse_linker_log_prefers_ptxas_and_skips_cudadevrt():
    entries, functions = compilecheck.parse_link_log(LINKER_LOG)
    props = functions["_ZN3foo7_kernelE"]
    assert entries == ["_ZN3foo7_kernelE"]
    assert props["registers"] == 48
    assert props["barriers"] == 0  # ptxas' figure, not the linker summary's 347
    assert props["smem_bytes"] == 1024 and props["lmem_bytes"] == 0  # only the linker gives these
    assert compilecheck._pick_entry(entries, functions, lambda: None) == "_ZN3foo7_kernelE"


@pytest.mark.parametrize(
    "registers, threads",
    [(32, 2048), (40, 1536), (48, 1280), (64, 1024), (128, 512), (255, 256), (None, 0)],
)
def test_occupancy_of_a_256_thread_block(registers, threads):
    assert compilecheck.occupancy(registers, 256)[0] == threads
