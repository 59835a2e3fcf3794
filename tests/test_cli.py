"""The ``gpubptt`` command line: ``info`` and ``check``."""
import math
import subprocess
import sys

import numpy as np
import pytest

import gpubptt
from gpubptt.cli import main
from gpubptt.selfcheck import CPU_SHAPES, SHAPES


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


@pytest.mark.parametrize("value,says", [
    ("bogus", "backend: unavailable: GPUBPTT_BACKEND: expected one of 'auto', 'reference', 'cpu', 'cuda', got 'bogus'"),
    ("cuda", "backend: unavailable: GPUBPTT_BACKEND=cuda is not available: "),  # no GPU, no simulator here
])
def test_info_reports_an_override_that_cannot_be_used(capsys, monkeypatch, value, says):
    """info is where a wrong GPUBPTT_BACKEND is looked for: it says what is wrong and goes on."""
    monkeypatch.setenv("GPUBPTT_BACKEND", value)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert says in out and "GPU: none found" in out


def test_check_on_cpu_reaches_its_fast_paths(monkeypatch):
    """The register-blocked products and the units variant are what the cpu backend runs at most real
    shapes on an AVX-512 host: the check's CPU_SHAPES must take them, or a bug there would pass."""
    import numba

    from gpubptt.kernels import cpu_variants
    from gpubptt.selfcheck import run_check

    if not cpu_variants.register_enabled() or numba.get_num_threads() < 2:
        pytest.skip("the fast paths need AVX-512 and two threads; this host has not both")
    taken = {"register": 0, "units": 0}
    uses_register, units_plan = cpu_variants.uses_register, cpu_variants.units_plan

    def counting_register(Ws):
        taken["register"] += bool(uses_register(Ws))
        return uses_register(Ws)

    def counting_units(batch, Ws):
        plan = units_plan(batch, Ws)
        taken["units"] += plan is not None
        return plan

    monkeypatch.setattr(cpu_variants, "uses_register", counting_register)
    monkeypatch.setattr(cpu_variants, "units_plan", counting_units)
    assert run_check(backend="cpu", cells=("tanh", "lstm", "gru"), write=lambda line: None)
    assert taken["register"] > 0 and taken["units"] > 0, taken


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(dtype="float16"), TypeError, "dtype: expected float32 or float64, got 'float16'"),
    (dict(dtype=None), TypeError, "dtype: expected float32 or float64, got None"),
    (dict(cells="tanhh"), ValueError, "cells: expected one of .* got 'tanhh'"),
    (dict(cells=("tanh", "elman")), ValueError, "cells: expected one of .* got 'elman'"),
    (dict(cells=()), ValueError, r"cells: expected at least one cell, got none"),
    (dict(cells=iter([])), ValueError, r"cells: expected at least one cell, got none"),
    (dict(cells=None), TypeError, "cells: expected a cell name or a list of them, got None"),
    (dict(seed=-1), ValueError, "seed: expected an integer >= 0 or None, got -1"),
    (dict(seed=1.5), ValueError, "seed: expected an integer >= 0 or None, got 1.5"),
    (dict(num_layers=2.0), ValueError, "num_layers: expected a positive integer, got 2.0"),
    (dict(bidirectional=1), TypeError, "bidirectional: expected True or False, got 1"),
    (dict(write=5), TypeError, "write: expected a function that takes a line of text"),
])
def test_run_check_bad_arguments(kwargs, error, match):
    """Refused before any work: an empty list of cells would check nothing and report OK."""
    from gpubptt.selfcheck import run_check

    kwargs = {"write": lambda line: None, **kwargs}
    with pytest.raises(error, match=match):
        run_check(backend="cpu", **kwargs)


def test_relative_error_fails_nan_and_mismatched_shapes():
    """What check and bench compare with: NaN anywhere, a shape or an array count that differs, never pass."""
    from gpubptt.selfcheck import relative_error

    ones = np.ones(3)
    assert relative_error(2 * ones, ones) == 1.0
    assert math.isinf(relative_error(ones, np.ones((4, 3))))  # would broadcast
    assert math.isinf(relative_error((ones,), (ones, ones)))  # LSTM's dc0 missing
    assert math.isnan(relative_error((ones, np.array([np.nan, 1, 1])), (ones, ones)))  # NaN in the second of a pair


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


@pytest.mark.skipif(gpubptt.backend.cuda_status()[0] is not None, reason="the cuda backend is available here")
def test_check_reports_an_unavailable_backend(capsys):
    assert main(["check", "--backend", "cuda"]) == 1
    assert "NUMBA_ENABLE_CUDASIM" in capsys.readouterr().out


@pytest.mark.parametrize("layers", ["0", "-2", "two"])
def test_check_refuses_a_bad_layer_count_as_a_usage_error(layers, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--backend", "cpu", "--layers", layers])
    assert exit_.value.code == 2
    assert f"argument --layers: expected a positive integer, got '{layers}'" in capsys.readouterr().err


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
    assert len(rows) == 2 * len(SHAPES + CPU_SHAPES) and all(line.endswith("  OK") for line in rows), out
    assert out.rstrip().endswith("OK: every output and gradient matches the reference")


@pytest.mark.parametrize("argv", [["--cell", "gru"], ["--cell", "gru", "--dtype", "float64", "--layers", "2"]],
                         ids=["gru", "gru-f64-2layers"])
def test_check_cpu_gru(capsys, argv):
    assert main(["check", "--backend", "cpu", *argv]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("gru ")]
    assert len(rows) == 2 * len(SHAPES + CPU_SHAPES) and all(line.endswith("  OK") for line in rows), out
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


@pytest.mark.parametrize("argv,option", [(["bench", "--quick", "--json"], "--json"),
                                         (["bench", "--quick", "--markdown"], "--markdown"),
                                         (["diagnose", "--seq-len", "5", "--out"], "--out")])
def test_an_output_file_that_cannot_be_written_is_refused_before_the_work(argv, option, capsys, tmp_path,
                                                                          monkeypatch):
    """bench and diagnose check where they will write before they measure: a directory given as the
    file, or a parent that cannot be made, is exit status 2 with the option named; nothing runs."""
    import gpubptt.bench
    import gpubptt.diagnostics

    def must_not_run(*args, **kwargs):
        raise AssertionError("the command ran before its output file was checked")

    monkeypatch.setattr(gpubptt.bench, "main", must_not_run)
    monkeypatch.setattr(gpubptt.diagnostics, "main", must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    (tmp_path / "a-dir.png").mkdir()
    for path, fragment in ((tmp_path / "a-dir.png", "is a directory, expected a file name"),
                           (blocker / "out.png", "is a file, expected a directory"),
                           ("", "expected a file name, got ''")):
        if argv[0] == "diagnose" and not path:  # argparse's check of the extension comes first
            with pytest.raises(SystemExit, match="2"):
                main(argv + [""])
            assert "argument --out: expected a file name ending in .png" in capsys.readouterr().err
            continue
        assert main(argv + [str(path)]) == 2
        err = capsys.readouterr().err
        assert f"error: {option}: " in err and fragment in err
    assert blocker.read_text() == "keep"


def test_diagnose_writes_the_figure_in_the_format_its_name_gives(capsys, tmp_path):
    for name, head in (("p.svg", b"<?xml"), ("p.pdf", b"%PDF"), ("p.png", b"\x89PNG")):
        assert main(["diagnose", "--seq-len", "5", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes().startswith(head)
    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--out", str(tmp_path / "p.txt")])
    assert e.value.code == 2
    assert "argument --out: expected a file name ending in .png, .pdf, .svg, got" in capsys.readouterr().err


def test_sizes_past_the_memory_are_an_error_not_a_traceback(capsys):
    assert main(["diagnose", "--hidden", "100000000", "--seq-len", "2"]) == 1
    assert "gpubptt diagnose: error: out of memory: Unable to allocate" in capsys.readouterr().err


def test_an_output_file_in_a_new_directory_is_written(capsys, tmp_path):
    path = tmp_path / "new" / "sub" / "table.md"
    assert main(["bench", "--quick", "--backend", "cpu", "--markdown", str(path)]) == 0
    assert path.read_text().startswith("# gpubptt bench")
