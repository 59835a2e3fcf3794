"""The choice of CUDA kernel variant (``kernels/cuda_blocks.py``): the planner's rule and invariants as
plain Python (first tier, no GPU needed), and every variant against the reference on a real GPU
(marked ``gpu``, skipped without one). The variants themselves run in the simulator in
``tests/cudasim/test_cuda_variants_simulator.py``; the multi-block cooperative grid only here, on a GPU.
"""
import numpy as np
import pytest

import gpubptt
from gpubptt.selfcheck import TOLERANCE

from conftest import assert_close, make_problem

from gpubptt.kernels import cuda_compat  # imports without numba-cuda (its cuda is None then)
if cuda_compat.cuda is None:  # pragma: no cover - the base install has no numba-cuda
    pytest.skip("numba-cuda is not installed", allow_module_level=True)

from gpubptt.kernels import cuda_blocks as cb  # noqa: E402
from gpubptt.kernels import elman_cuda, gru_cuda, lstm_cuda  # noqa: E402

MODULES = {"tanh": (elman_cuda, 1), "lstm": (lstm_cuda, 4), "gru": (gru_cuda, 3)}
DEVICES = {"A100": cb.A100, "H100": cb.H100}
# The benchmark grid (B, T, D, H), haste's T = 50 shapes included.
SHAPES = [(64, 100, 512, 512), (64, 100, 64, 256), (128, 50, 128, 512), (32, 200, 32, 128), (256, 100, 16, 64),
          (1, 1000, 8, 64), (4, 1000, 64, 256)] + [(B, 50, 128, H) for B in (1, 16, 64) for H in (128, 512)]


def plan(cell, direction, B, H, limits, variant="auto", itemsize=4):
    module, gates = MODULES[cell]
    footprint = module.FORWARD_FOOTPRINT if direction == "forward" else module.BACKWARD_FOOTPRINT
    return cb.choose(B, H, gates, itemsize, footprint, limits, variant)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_every_plan_fits_the_device(device, cell, direction, itemsize):
    limits = DEVICES[device]
    for B, _, _, H in SHAPES + [(1, 10, 4, 8), (3, 10, 4, 1000), (2048, 10, 4, 32)]:
        for variant in ("auto", "simple", "tiled", "cooperative"):
            try:
                p = plan(cell, direction, B, H, limits, variant, itemsize)
            except ValueError:  # Ws (or its slice per SM) too large for a block's shared memory
                assert variant in ("tiled", "cooperative"), (device, cell, B, H, variant)
                continue
            where = (device, cell, direction, B, H, variant, p)
            assert p.smem + cb.SMEM_RESERVE <= limits.smem_optin, where
            assert 32 <= p.threads <= cb.MAX_THREADS and p.threads & (p.threads - 1) == 0, where
            if p.variant == "tiled":
                assert p.tile in cb.TILES and p.blocks == -(-B // p.tile), where
            if p.variant == "cooperative":
                assert p.blocks <= limits.sm_count and p.blocks * p.units >= H > (p.blocks - 1) * p.units, where
                assert p.splits & (p.splits - 1) == 0 and p.splits <= cb.MAX_SPLITS, where
            if p.variant == "simple":
                assert p.blocks == B and p.smem == 0, where


@pytest.mark.parametrize("device", DEVICES)
def test_the_rule_on_the_benchmark_shapes(device):
    limits = DEVICES[device]
    # one sequence, small H: Ws fits on one SM, a grid sync per step would cost more than the step
    assert plan("tanh", "forward", 1, 64, limits).variant == "tiled"
    assert plan("tanh", "backward", 1, 64, limits).variant == "tiled"
    # four sequences, H = 256: the batch cannot fill the GPU, the units are spread over the SMs
    p = plan("tanh", "forward", 4, 256, limits)
    assert p.variant == "cooperative" and p.blocks > 16 and p.splits > 1, p
    # Ws of 1 MiB fits on no SM: its slices are spread over the SMs
    assert plan("tanh", "forward", 64, 512, limits).variant == "cooperative"
    # many sequences, small H: one block per sequence (or per tile), Ws in shared memory
    p = plan("tanh", "forward", 256, 64, limits)
    assert p.variant == "tiled" and p.blocks * p.tile >= 256, p
    # more sequences than one wave of blocks holds: tiles of four
    assert plan("tanh", "forward", 4096, 64, limits).tile == 4


def test_the_simulator_never_gets_a_multi_block_grid_sync():
    for cell in MODULES:
        for B, _, _, H in SHAPES:
            for direction in ("forward", "backward"):
                assert plan(cell, direction, B, H, cb.SIMULATOR_LIMITS).variant != "cooperative"
                forced = plan(cell, direction, min(B, 4), min(H, 16), cb.SIMULATOR_LIMITS, "cooperative")
                assert forced.variant == "cooperative" and forced.blocks == 1


def test_a_tile_gets_four_sequences_once_every_sm_has_a_block():
    assert plan("tanh", "forward", 5, 3, cb.SIMULATOR_LIMITS).tile == 4  # one SM in the simulator
    assert plan("tanh", "forward", 3, 3, cb.SIMULATOR_LIMITS).tile == 1
    assert plan("tanh", "forward", 64, 64, cb.H100).tile == 1


def test_forcing_a_variant_that_cannot_run_names_the_limit():
    with pytest.raises(ValueError, match="GPUBPTT_CUDA_VARIANT=tiled.*does not fit"):
        plan("lstm", "forward", 4, 512, cb.H100, "tiled")


def test_variant_environment_variable(monkeypatch):
    monkeypatch.delenv(cb.VARIANT_ENV, raising=False)
    assert cb.requested_variant() == "auto"
    for value in ("simple", "Tiled", " cooperative "):
        monkeypatch.setenv(cb.VARIANT_ENV, value)
        assert cb.requested_variant() == value.strip().lower()
    monkeypatch.setenv(cb.VARIANT_ENV, "fast")
    with pytest.raises(ValueError, match="GPUBPTT_CUDA_VARIANT: expected one of 'auto', 'simple', 'tiled', "
                                         "'cooperative', got 'fast'"):
        cb.requested_variant()


class FakeKernel:
    """Records the launch configuration instead of launching."""

    def __init__(self, name):
        self.name, self.launches = name, []

    def __getitem__(self, config):
        return lambda *args: self.launches.append((config, args))


def run_with(monkeypatch, limits, problem, variant="auto", B=4, H=256, cell="tanh"):
    """cuda_blocks.run on a pretend GPU whose compiled kernels' objections come from ``problem``."""
    module, gates = MODULES[cell]
    kernels = {v: FakeKernel(v) for v in cb.VARIANTS}
    monkeypatch.setattr(cb, "current_limits", lambda: limits)
    monkeypatch.setattr(cb, "_problem", lambda kernel, plan, args, limits: problem(plan, limits))
    if variant == "auto":
        monkeypatch.delenv(cb.VARIANT_ENV, raising=False)
    else:
        monkeypatch.setenv(cb.VARIANT_ENV, variant)
    like = np.zeros((1, B, H), np.float32)
    plan = cb.run(B, H, gates, 4, module.FORWARD_FOOTPRINT, lambda p: (kernels[p.variant], (p,)), like)
    (config, args), = [launch for k in kernels.values() for launch in k.launches]
    assert config == (plan.blocks, plan.threads, 0, plan.smem) and args == (plan,)
    return plan


def test_run_shrinks_a_cooperative_grid_to_the_kernels_limit(monkeypatch):
    def limit_40(plan, limits):
        if plan.variant == "cooperative" and plan.blocks > 40:
            return "too many blocks", 40
        return None, None

    plan = run_with(monkeypatch, cb.H100, limit_40)
    assert plan.variant == "cooperative" and 1 < plan.blocks <= 40 and plan.blocks * plan.units >= 256


def test_run_falls_back_when_the_shared_memory_opt_in_is_refused(monkeypatch):
    def no_opt_in(plan, limits):
        return ("refused", None) if plan.smem > limits.smem_per_block else (None, None)

    plan = run_with(monkeypatch, cb.H100, no_opt_in, B=1, H=128)  # tiled wants 65 KiB
    assert plan.smem <= cb.H100.smem_per_block, plan
    with pytest.raises(RuntimeError, match="GPUBPTT_CUDA_VARIANT=tiled: refused"):
        run_with(monkeypatch, cb.H100, no_opt_in, variant="tiled", B=1, H=128)


def test_describe():
    assert cb.describe(cb.Plan("tiled", 2, 32, 132, tile=4)) == "tiled (tile 4, 2 blocks x 32 threads, 132 B smem)"


# ------------------------------------------------------------------------------------------------
# Every variant on a real GPU (multi-block cooperative grids, shared memory above 48 KiB)

GPU = gpubptt.backend.cuda_status()[0] == "gpu"


@pytest.fixture
def launched(monkeypatch):
    """The plans the cell modules launch, in order."""
    plans = []
    for module, _ in MODULES.values():
        def recording(*args, _run=module.run, **kwargs):
            plans.append(_run(*args, **kwargs))
            return plans[-1]
        monkeypatch.setattr(module, "run", recording)
    return plans


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU: the simulator cannot synchronise a multi-block grid")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["simple", "tiled", "cooperative"])
@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
@pytest.mark.parametrize("H,B,options", [
    (300, 3, dict(bidirectional=True, lengths=[7, 3, 5], truncate=3, clip_step=0.05)),
    (64, 3, dict()),
    # H not a multiple of 32 and a batch that leaves the last tile of 4 sequences part-empty
    (33, 5, dict(lengths=[7, 3, 5, 1, 6], clip_step=0.05)),
])
def test_variants_on_the_gpu_match_reference(cell, variant, H, B, options, dtype, monkeypatch, launched):
    if variant == "tiled" and H == 300:
        pytest.skip("Ws with H = 300 does not fit in one block's shared memory (H = 64 runs the tiled "
                    "kernels, the LSTM's above 48 KiB)")
    monkeypatch.setenv(cb.VARIANT_ENV, variant)
    if B == 5:  # tiles of 4 sequences, the second with one (the rule would give tiles of 1 on a large GPU)
        monkeypatch.setattr(cb, "TILES", (4,))
    params, x, s0, d = make_problem(7, B, 4, H, 2, dtype=dtype, seed=5, cell=cell,
                                    bidirectional=options.get("bidirectional", False))
    tol = TOLERANCE[np.dtype(dtype).name]
    L, g = gpubptt.bptt(params, x, d, s0, cell, backend="cuda", **options)
    rL, rg = gpubptt.bptt(params, x, d, s0, cell, backend="reference", **options)
    assert {p.variant for p in launched} == {variant}, launched
    if variant == "cooperative" and H == 300:
        assert all(p.blocks > 1 for p in launched), launched  # a real multi-block grid sync
    if variant == "tiled" and B == 5:
        assert all(p.tile == 4 and p.blocks == 2 for p in launched), launched
    assert_close(L, rL, tol, "L")
    for k in rg:
        assert_close(g[k], rg[k], tol, f"d{k}")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_auto_on_the_gpu_matches_reference_where_it_picks_cooperative(launched):
    params, x, s0, d = make_problem(6, 4, 8, 256, 2, dtype=np.float32, seed=2)
    L, g = gpubptt.bptt(params, x, d, s0, "tanh", backend="cuda", clip_step=0.1)
    rL, rg = gpubptt.bptt(params, x, d, s0, "tanh", backend="reference", clip_step=0.1)
    assert [p.variant for p in launched] == ["cooperative", "cooperative"], launched
    for k in rg:
        assert_close(g[k], rg[k], TOLERANCE["float32"], f"d{k}")
