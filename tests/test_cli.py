"""The ``gpubptt`` command line: ``info`` and ``check``."""
import subprocess
import sys

import numpy as np
import pytest

import gpubptt
from gpubptt.cli import main


def test_info_names_versions_backend_and_gpu(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"gpubptt {gpubptt.__version__}" in out
    for word in ("Python", "NumPy", "Numba", "numba-cuda", "CuPy"):
        assert word in out
    assert "backend: cpu (auto: " in out  # no GPU and no simulator in this tier
    assert "GPU: none found" in out


def test_info_reports_the_environment_override(capsys, monkeypatch):
    monkeypatch.setenv("GPUBPTT_BACKEND", "reference")
    assert main(["info"]) == 0
    assert "backend: reference (GPUBPTT_BACKEND=reference)" in capsys.readouterr().out


def test_check_cpu_passes_and_prints_errors_per_gradient(capsys):
    assert main(["check", "--backend", "cpu", "--dtype", "float64", "--cell", "tanh"]) == 0
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if line.startswith("cell")][0]
    for name in ("Wx", "Ws", "bx", "bs", "Wy", "by", "x", "s0"):
        assert f" {name}" in header
    assert out.rstrip().endswith("OK: every output and gradient matches the reference")


def test_check_fails_with_status_1_when_a_gradient_is_wrong(capsys, monkeypatch):
    from gpubptt import engine

    real_backward = engine.backward

    def broken_backward(*args, **kwargs):
        grads, ds0 = real_backward(*args, **kwargs)
        grads["Ws"] = grads["Ws"] * np.float32(1.01)
        return grads, ds0

    monkeypatch.setattr(engine, "backward", broken_backward)
    assert main(["check", "--backend", "cpu", "--cell", "tanh"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out.splitlines()[-1]


def test_check_reports_an_unavailable_backend(capsys):
    assert main(["check", "--backend", "cuda"]) == 1
    assert "NUMBA_ENABLE_CUDASIM" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "gpubptt", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"gpubptt {gpubptt.__version__}"


def _header(out):
    return [line for line in out.splitlines() if line.startswith("cell")][0].split()


def test_check_cpu_lstm_two_layers_bidirectional(capsys):
    assert main(["check", "--backend", "cpu", "--cell", "lstm", "--layers", "2", "--bidirectional"]) == 0
    out = capsys.readouterr().out
    assert "num_layers=2, bidirectional=True" in out
    header = _header(out)
    # one column per group of parameters over layers and directions (Wx_l0, Wx_l1_reverse, ...)
    for name in ("Y", "S", "L", "Wx*", "Ws*", "bx*", "bs*", "Wy", "by", "x", "s0"):
        assert name in header, header
    assert not any("_l" in column for column in header), header
    rows = [line for line in out.splitlines() if line.startswith("lstm ")]
    assert len(rows) == 4 and all(line.endswith("  OK") for line in rows), out
    assert out.rstrip().endswith("OK: every output and gradient matches the reference")


@pytest.mark.parametrize("argv", [["--cell", "gru"], ["--cell", "gru", "--dtype", "float64", "--layers", "2"]],
                         ids=["gru", "gru-f64-2layers"])
def test_check_cpu_gru(capsys, argv):
    assert main(["check", "--backend", "cpu", *argv]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("gru ")]
    assert len(rows) == 4 and all(line.endswith("  OK") for line in rows), out
    header = _header(out)
    for name in (("Wx*", "Ws*") if "--layers" in argv else ("Wx", "Ws")):
        assert name in header, header
    assert out.rstrip().endswith("OK: every output and gradient matches the reference")


def test_check_fails_when_a_deep_lstm_gradient_is_wrong(capsys, monkeypatch):
    from gpubptt import engine

    real_backward = engine.backward

    def broken_backward(*args, **kwargs):
        grads, ds0 = real_backward(*args, **kwargs)
        grads["bs_l1_reverse"] = grads["bs_l1_reverse"] * np.float32(1.01)
        return grads, ds0

    monkeypatch.setattr(engine, "backward", broken_backward)
    assert main(["check", "--backend", "cpu", "--cell", "lstm", "--layers", "2", "--bidirectional"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out.splitlines()[-1]
    assert any(line.startswith("lstm ") and line.endswith("FAIL") for line in out.splitlines()), out
