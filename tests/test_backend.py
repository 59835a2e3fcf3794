"""The dispatcher (gpubptt/backend.py, DESIGN.md §3): which backend a call gets and why.

First tier: no GPU, simulator off. ``cuda_status()`` is lru_cached, so these tests never try to
flip it by changing the environment; tests that assume "no CUDA here" skip where there is one.
"""
import sys
import types

import numpy as np
import pytest
from conftest import make_problem

import gpubptt
from gpubptt import backend as bk
from gpubptt import engine, reference
from gpubptt.backend import ENV_VAR, resolve

T, B, D, H, O = 4, 3, 3, 5, 2

CUDA_KIND, CUDA_DETAIL = bk.cuda_status()
no_cuda_here = pytest.mark.skipif(
    CUDA_KIND is not None, reason=f"a CUDA backend is available here ({CUDA_DETAIL}); this checks the CPU-only rules"
)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Start every test without GPUBPTT_BACKEND, whatever the shell has."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def make(dtype=np.float64, bias=True, seed=0):
    rng = np.random.default_rng(seed + 100)
    params = gpubptt.init_params(D, H, O, bias=bias, dtype=dtype, seed=seed)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    d = rng.standard_normal((T, B, O)).astype(dtype)
    s0 = 0.5 * rng.standard_normal((B, H)).astype(dtype)
    return params, x, d, s0


@pytest.fixture
def ran(monkeypatch):
    """Records which implementation a public call ran: 'reference' or the engine's backend name."""
    calls = []
    real_ref_fwd, real_ref_bptt = reference.forward, reference.bptt
    real_eng_fwd, real_eng_bwd = engine.forward, engine.backward

    def ref_fwd(*a, **k):
        calls.append("reference")
        return real_ref_fwd(*a, **k)

    def ref_bptt(*a, **k):
        calls.append("reference")
        return real_ref_bptt(*a, **k)

    def eng_fwd(*a, **k):
        calls.append(a[-1].name)  # the Backend is the last argument
        return real_eng_fwd(*a, **k)

    def eng_bwd(*a, **k):
        calls.append(a[-1].name)
        return real_eng_bwd(*a, **k)

    monkeypatch.setattr(reference, "forward", ref_fwd)
    monkeypatch.setattr(reference, "bptt", ref_bptt)
    monkeypatch.setattr(engine, "forward", eng_fwd)
    monkeypatch.setattr(engine, "backward", eng_bwd)
    return calls


def call_both(backend="auto"):
    params, x, d, s0 = make()
    gpubptt.forward(params, x, s0, backend=backend)
    gpubptt.bptt(params, x, d, s0, backend=backend)


# ------------------------------------------------------------------------------------------------
# precedence: explicit argument > GPUBPTT_BACKEND > auto


@pytest.mark.parametrize("explicit", ["cpu", "reference"])
@pytest.mark.parametrize("env", ["cpu", "reference", "cuda", "auto", "bogus"])
def test_explicit_backend_wins_over_environment(monkeypatch, explicit, env):
    monkeypatch.setenv(ENV_VAR, env)
    b = resolve(explicit, on_device=False)
    assert b.name == explicit and b.xp is np and not b.host_io
    assert b.reason == "backend argument"


@pytest.mark.parametrize("explicit,env", [("cpu", "reference"), ("reference", "cpu"), ("cpu", "cuda")])
def test_explicit_backend_wins_in_calls(monkeypatch, ran, explicit, env):
    monkeypatch.setenv(ENV_VAR, env)
    call_both(explicit)
    assert set(ran) == {explicit}  # bptt runs forward inside: several entries


@pytest.mark.parametrize("explicit,env", [("cpu", "reference"), ("reference", "cpu")])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_explicit_backend_wins_for_deep_gated_cells(monkeypatch, ran, explicit, env, cell):
    monkeypatch.setenv(ENV_VAR, env)
    params, x, s0, d = make_problem(T, B, D, H, O, cell=cell, num_layers=2, bidirectional=True)
    kw = dict(cell=cell, num_layers=2, bidirectional=True, backend=explicit, lengths=[T, 1, 2])
    gpubptt.forward(params, x, s0, return_state=True, **kw)
    gpubptt.bptt(params, x, d, s0, return_state=True, **kw)
    # the engine runs forward then backward (2 + 1 calls); the reference runs bptt and a forward for the state
    assert ran == [explicit] * 3


@pytest.mark.parametrize("env", ["cpu", "reference"])
def test_environment_overrides_auto(monkeypatch, env):
    monkeypatch.setenv(ENV_VAR, env)
    b = resolve("auto", on_device=False)
    assert b.name == env and b.xp is np
    assert b.reason == f"{ENV_VAR}={env}"


@pytest.mark.parametrize("env", ["cpu", "reference"])
def test_environment_overrides_auto_in_calls(monkeypatch, ran, env):
    monkeypatch.setenv(ENV_VAR, env)
    call_both()  # backend="auto", the default
    assert set(ran) == {env}
    ran.clear()
    rnn = gpubptt.RNN(D, H, O, dtype=np.float64, seed=0)  # RNN's backend is "auto" too
    _, x, d, _ = make()
    rnn.forward(x)
    rnn.bptt(x, d)
    assert set(ran) == {env}


def test_a_backend_given_to_an_rnn_method_wins_for_that_call(ran):
    rnn = gpubptt.RNN(D, H, O, dtype=np.float64, seed=0, backend="reference")
    _, x, d, _ = make()
    rnn.forward(x, backend="cpu")
    rnn.bptt(x, d, backend="cpu")
    assert set(ran) == {"cpu"} and rnn.backend == "reference"
    ran.clear()
    rnn.bptt(x, d)
    assert set(ran) == {"reference"}
    with pytest.raises(ValueError, match="backend: expected one of .* got 'gpu'"):
        rnn.forward(x, backend="gpu")


@pytest.mark.parametrize("value", ["bogus", "gpu", "c pu"])
def test_environment_value_validated(monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(ValueError) as info:
        resolve("auto", on_device=False)
    msg = str(info.value)
    assert f"{ENV_VAR}:" in msg and "'auto', 'reference', 'cpu', 'cuda'" in msg and repr(value) in msg, msg


@pytest.mark.parametrize("name,value,read", [
    (ENV_VAR, " Reference ", "reference"), (ENV_VAR, "", "auto"),
    ("GPUBPTT_CPU_VARIANT", "Loops", "loops"), ("GPUBPTT_CPU_VARIANT", " ", "auto"),
    ("GPUBPTT_REGISTER_GEMM", " 0", "0"), ("GPUBPTT_REGISTER_GEMM", "", "1"),
    ("GPUBPTT_KEEP_FREED_MEMORY", "0 ", "0"), ("GPUBPTT_KEEP_FREED_MEMORY", "", "1"),
])
def test_every_environment_variable_is_read_one_way(monkeypatch, name, value, read):
    """Case and surrounding spaces do not matter and empty means unset, for every variable; a value that
    is not a choice is refused with the variable's name (GPUBPTT_KEEP_FREED_MEMORY=false once left the
    setting on in silence)."""
    import platform

    from gpubptt.kernels import cpu_variants

    readers = {ENV_VAR: lambda: bk.requested_backend("auto")[0], "GPUBPTT_CPU_VARIANT": cpu_variants.variant_forced,
               "GPUBPTT_REGISTER_GEMM": cpu_variants.register_enabled,
               "GPUBPTT_KEEP_FREED_MEMORY": cpu_variants._keep_freed_memory}  # (sets what import set already)
    expected = {"GPUBPTT_REGISTER_GEMM": read == "1" and cpu_variants.register_gemm.AVAILABLE,
                "GPUBPTT_KEEP_FREED_MEMORY": read == "1" and platform.libc_ver()[0] == "glibc"}.get(name, read)
    monkeypatch.setenv(name, value)
    assert readers[name]() == expected
    monkeypatch.setenv(name, "false")
    with pytest.raises(ValueError, match=rf"^{name}: expected one of .*, got 'false'$"):
        readers[name]()


@pytest.mark.parametrize("value", ["gpu", None, "", "Auto"])
def test_backend_argument_validated(value):
    with pytest.raises(ValueError) as info:
        resolve(value, on_device=False)
    msg = str(info.value)
    assert "backend:" in msg and "'auto', 'reference', 'cpu', 'cuda'" in msg and repr(value) in msg, msg


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference", "cuda"])
def test_requested_backend_without_environment(backend):
    name, source = bk.requested_backend(backend)
    assert name == backend
    assert source == ("auto" if backend == "auto" else "backend argument")


# ------------------------------------------------------------------------------------------------
# auto, and cuda without a GPU


@no_cuda_here
@pytest.mark.parametrize("env", [None, "", "auto"])
def test_auto_picks_cpu_without_cuda(monkeypatch, env):
    if env is not None:
        monkeypatch.setenv(ENV_VAR, env)  # empty or "auto": the same as unset
    b = resolve("auto", on_device=False)
    assert b.name == "cpu" and b.xp is np and not b.host_io
    # the reason says auto chose, and why: cuda_status's explanation
    assert b.reason == f"auto: {CUDA_DETAIL}"
    assert "simulator is off" in b.reason or "not installed" in b.reason, b.reason


@no_cuda_here
def test_without_numbas_compiler_auto_takes_the_reference(monkeypatch, ran):
    """NUMBA_DISABLE_JIT=1 (numba.config.DISABLE_JIT) leaves the cpu kernels' BLAS calls unreached: their
    results would be garbage, so auto runs the reference and backend='cpu' is refused."""
    import numba

    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    b = resolve("auto", on_device=False)
    assert b.name == "reference" and "NUMBA_DISABLE_JIT=1" in b.reason
    call_both()
    assert set(ran) == {"reference"}
    with pytest.raises(ValueError, match=r"backend='cpu' \(backend argument\) needs Numba's compiler, which "
                                         r"NUMBA_DISABLE_JIT=1 turns off.*use backend='reference'"):
        gpubptt.forward(*make()[:2], backend="cpu")


def _cupy_import_fails(monkeypatch, error):
    import builtins

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "cupy":
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing)


@pytest.mark.parametrize("error,message", [
    (ModuleNotFoundError("No module named 'cupy'", name="cupy"), r"^CuPy is not installed: install gpubptt with"),
    (ImportError("libcudart.so.13: cannot open shared object file"),
     r"^CuPy is installed but cannot be imported \(ImportError: libcudart\.so\.13: cannot open"),
    (OSError("libnvrtc.so: cannot open"), r"^CuPy is installed but cannot be imported \(OSError: libnvrtc"),
], ids=["missing", "broken", "library"])
def test_a_cupy_that_fails_to_import_is_named_apart_from_a_missing_one(monkeypatch, error, message):
    _cupy_import_fails(monkeypatch, error)
    with pytest.raises(RuntimeError, match=message):
        gpubptt.to_device(np.zeros(2))


def test_a_gpu_without_a_working_cupy_is_not_a_cuda_backend(monkeypatch, ran):
    """numba-cuda finds a GPU but CuPy, which moves the data, fails: auto takes the cpu backend and says
    why; backend='cuda' is refused with that reason (not a RuntimeError at the first call)."""
    from gpubptt.kernels import cuda_compat

    if cuda_compat.cuda is None:
        pytest.skip("numba-cuda is not installed: cuda_status stops before it looks for a GPU")
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(cuda_compat, "simulator_enabled", lambda: False)
    monkeypatch.setattr(cuda_compat, "gpu_available", lambda: True)
    _cupy_import_fails(monkeypatch, ModuleNotFoundError("No module named 'cupy'", name="cupy"))
    bk.cuda_status.cache_clear()
    try:
        assert bk.cuda_status() == (None, "a CUDA GPU is available; CuPy is not installed: install gpubptt with the "
                                          "extra matching your CUDA driver, pip install 'gpubptt[cuda12]' or "
                                          "'gpubptt[cuda13]'")
        b = resolve("auto", on_device=False)
        assert b.name == "cpu" and b.reason.startswith("auto: a CUDA GPU is available; CuPy is not installed")
        call_both()
        assert set(ran) == {"cpu"}
        with pytest.raises(ValueError, match=r"backend='cuda' is not available: a CUDA GPU is available; CuPy is not "
                                             r"installed"):
            resolve("cuda", on_device=False)
    finally:
        bk.cuda_status.cache_clear()


@no_cuda_here
def test_auto_runs_cpu_in_calls(ran):
    call_both()
    assert set(ran) == {"cpu"}


def test_cuda_status_is_cached_and_well_formed():
    assert bk.cuda_status() is bk.cuda_status()
    kind, detail = bk.cuda_status()
    assert kind in (None, "gpu", "simulator") and isinstance(detail, str) and detail


def _assert_cuda_unavailable_message(msg, asked="backend='cuda'"):
    for part in (f"{asked} is not available", CUDA_DETAIL, "NUMBA_ENABLE_CUDASIM=1",
                 "pip install", "gpubptt[cuda12]", "gpubptt[cuda13]"):
        assert part in msg, f"{part!r} not in {msg!r}"


@no_cuda_here
def test_cuda_without_gpu_or_simulator_says_how_to_get_one():
    with pytest.raises(ValueError) as info:
        resolve("cuda", on_device=False)
    _assert_cuda_unavailable_message(str(info.value))


@no_cuda_here
def test_cuda_from_environment_without_gpu(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError) as info:
        resolve("auto", on_device=False)
    _assert_cuda_unavailable_message(str(info.value), asked=f"{ENV_VAR}=cuda")  # the setting that asked for it


@no_cuda_here
@pytest.mark.parametrize("which", ["forward", "bptt", "RNN"])
def test_cuda_without_gpu_in_calls(which):
    params, x, d, s0 = make()
    before = {k: v.copy() for k, v in dict(params, x=x, d=d, s0=s0).items()}
    with pytest.raises(ValueError) as info:
        if which == "forward":
            gpubptt.forward(params, x, s0, backend="cuda")
        elif which == "bptt":
            gpubptt.bptt(params, x, d, s0, backend="cuda")
        else:
            gpubptt.RNN(D, H, O, backend="cuda").forward(x.astype(np.float32))
    _assert_cuda_unavailable_message(str(info.value))
    after = dict(params, x=x, d=d, s0=s0)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@no_cuda_here
def test_to_device_without_gpu_says_so_and_moves_nothing():
    """Without a GPU, gpubptt.to_device and RNN.to_device raise a RuntimeError naming to_device and
    what to do instead (CuPy's own error is a bare driver code), and the model keeps its arrays."""
    pytest.importorskip("cupy", reason="CuPy is not installed: to_device says so itself")
    rnn = gpubptt.RNN(D, H, O, seed=0)
    before = {k: v.copy() for k, v in rnn.params.items()}
    for call in (lambda: gpubptt.to_device(np.zeros(3)), rnn.to_device):
        with pytest.raises(RuntimeError, match=r"to_device: cannot copy to a GPU \(.+\).*backend 'cpu'"):
            call()
    assert all(type(v) is np.ndarray and np.array_equal(v, before[k]) for k, v in rnn.params.items())


def test_to_device_wraps_cupys_no_gpu_error_with_a_fake_cupy(monkeypatch):
    """The same wrapping where CuPy is not installed (CI): a stand-in ``cupy`` whose copy raises as
    CuPy's CUDARuntimeError does without a GPU (a RuntimeError from a ``cupy_backends`` module)."""
    class CUDARuntimeError(RuntimeError):
        pass

    CUDARuntimeError.__module__ = "cupy_backends.cuda.api.runtime"

    def asarray(a):
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(asarray=asarray))
    rnn = gpubptt.RNN(D, H, O, seed=0)
    before = {k: v.copy() for k, v in rnn.params.items()}
    message = r"to_device: cannot copy to a GPU \(cudaErrorNoDevice.+\).*backend 'cpu'"
    for call in (lambda: gpubptt.to_device(np.zeros(3)), rnn.to_device):
        with pytest.raises(RuntimeError, match=message):
            call()
    assert all(type(v) is np.ndarray and np.array_equal(v, before[k]) for k, v in rnn.params.items())

    def other_error(a):
        raise RuntimeError("not CuPy's")  # any other RuntimeError passes through unchanged

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(asarray=other_error))
    with pytest.raises(RuntimeError, match=r"^not CuPy's$"):
        gpubptt.to_device(np.zeros(3))


# ------------------------------------------------------------------------------------------------
# host backends refuse device inputs


@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_host_backend_refuses_device_inputs(name):
    with pytest.raises(ValueError) as info:
        resolve(name, on_device=True)
    msg = str(info.value)
    for part in (f"backend={name!r}", "CuPy", "backend='cuda'", "gpubptt.to_host"):
        assert part in msg, f"{part!r} not in {msg!r}"


@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_host_backend_from_environment_refuses_device_inputs(monkeypatch, name):
    monkeypatch.setenv(ENV_VAR, name)
    with pytest.raises(ValueError, match="to_host"):
        resolve("auto", on_device=True)


# ------------------------------------------------------------------------------------------------
# the Backend object


@pytest.mark.parametrize("name", ["cpu", "reference"])
@pytest.mark.parametrize("family", ["elman", "lstm", "gru"])
def test_backend_kernels_module(name, family):
    b = resolve(name, on_device=False)
    mod = b.kernels(family)
    assert mod.__name__ == f"gpubptt.kernels.{family}_cpu"
    assert callable(mod.forward_recurrence) and callable(mod.backward_recurrence)


def test_backend_is_immutable():
    b = resolve("cpu", on_device=False)
    with pytest.raises(AttributeError):
        b.name = "cuda"


# ------------------------------------------------------------------------------------------------
# reference and cpu agree

# Tolerances (rule 6). float64: same formulas, only the summation order differs (BLAS products vs
# loops), T = 4 steps of size-5 sums: errors are a few ulps, 1e-10 leaves a wide margin.
# float32: cpu computes in float32 while reference computes in float64 and casts; eps32 = 1.2e-7,
# amplified by the few products and steps of the recurrence: 1e-4 relative, 1e-5 absolute.
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}
HEADS = [  # (output_activation, loss)
    ("identity", "squared"),
    ("tanh", "squared"),
    ("sigmoid", "squared"),
    ("softmax", "squared"),
    ("softmax", "cross_entropy"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", ["tanh", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize("output_activation,loss", HEADS)
@pytest.mark.parametrize("loss_steps,with_s0,bias", [("all", False, True), ("last", True, True), ("all", True, False)])
def test_reference_and_cpu_agree(dtype, cell, output_activation, loss, loss_steps, with_s0, bias):
    params, x, d, s0 = make(dtype=dtype, bias=bias, seed=1)
    if not with_s0:
        s0 = None
    if loss == "cross_entropy":
        d = np.random.default_rng(5).integers(0, O, size=(T, B))
    tol = TOL[dtype]
    out = {}
    for name in ("reference", "cpu"):
        Y, S = gpubptt.forward(params, x, s0, cell, output_activation, backend=name)
        L, grads = gpubptt.bptt(params, x, d, s0, cell, output_activation, loss, loss_steps, backend=name)
        out[name] = dict(Y=Y, S=S, L=L, **{f"d{k}": v for k, v in grads.items()})
    ref, cpu = out["reference"], out["cpu"]
    assert set(ref) == set(cpu)
    for k in ref:
        # assert_allclose reports the largest absolute and relative error on failure
        np.testing.assert_allclose(cpu[k], ref[k], **tol, err_msg=f"{k}: cpu vs reference ({np.dtype(dtype).name})")


# ------------------------------------------------------------------------------------------------
# CuPy paths (a real GPU only)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_KIND != "gpu", reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_cupy_inputs_refused_by_host_backends(name):
    params, x, d, s0 = make()
    with pytest.raises(ValueError, match="to_host"):
        gpubptt.forward(gpubptt.to_device(params), gpubptt.to_device(x), backend=name)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_KIND != "gpu", reason="needs a CUDA GPU and CuPy")
def test_mixed_host_and_device_inputs_refused():
    params, x, d, s0 = make()
    with pytest.raises(ValueError) as info:
        gpubptt.forward(gpubptt.to_device(params), x, backend="auto")
    msg = str(info.value)
    assert "mixed" in msg and "x" in msg and "to_device" in msg and "to_host" in msg, msg


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_KIND != "gpu", reason="needs a CUDA GPU and CuPy")
def test_auto_picks_cuda_for_cupy_inputs():
    b = resolve("auto", on_device=True)
    assert b.name == "cuda" and not b.host_io and b.reason == "auto: the inputs are CuPy arrays"
