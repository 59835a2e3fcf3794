"""``gpubptt train`` and ``gpubptt sample`` end to end on tiny sizes (CPU), resume, Ctrl-C, and every
bad input: the message and the exit status."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gpubptt import checkpoint as ckpt
from gpubptt.cli import main

TINY = ["--hidden", "4", "--batch", "2", "--steps", "3", "--backend", "cpu", "--quiet"]


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    return f


@pytest.mark.parametrize("task,extra", [
    ("sine", ["--seq-len", "8"]),
    ("adding", ["--seq-len", "8", "--cell", "relu", "--optimizer", "sgd", "--momentum", "0.9", "--nesterov"]),
    ("copy", ["--delay", "3", "--optimizer", "adagrad", "--clip-value", "1"]),
    ("text", ["--seq-len", "10", "--cell", "lstm", "--layers", "2"]),
    ("sine", ["--seq-len", "6", "--cell", "gru", "--clip-step", "1", "--tbptt", "2", "4"]),
])
def test_every_task_trains_end_to_end(tmp_path, capsys, text_file, task, extra):
    out = tmp_path / "run"
    args = ["train", "--task", task, *TINY, *extra, "--out", str(out), "--clip-norm", "5", "--eval-every", "2"]
    if task == "text":
        args += ["--text", str(text_file)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("trained 3 steps in ") and "; test " in stdout and "(baseline " in stdout
    arrays, meta = ckpt.load(out)
    assert meta["step"] == 3 and meta["task"]["name"] == task
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "test" in r] == [2, 3]


def test_tbptt_and_resume_from_the_command_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--task", "sine", "--seq-len", "8", "--hidden", "4", "--batch", "2", "--backend", "cpu",
            "--quiet", "--tbptt", "4", "4"]
    assert main([*base, "--steps", "3", "--out", out]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", out, "--steps", "5", "--quiet"]) == 0
    assert "trained 2 steps (steps 4 to 5) in " in capsys.readouterr().out
    assert ckpt.load(out)[1]["step"] == 5
    assert ckpt.load(out)[1]["train"]["tbptt"] == [4, 4]
    metrics = open(os.path.join(out, "metrics.jsonl")).read()
    records = [json.loads(line) for line in metrics.splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    files = [ckpt.path_in(out), os.path.join(out, "metrics.jsonl"), os.path.join(out, "training.png")]
    saved = open(ckpt.path_in(out), "rb").read()
    stamps = [os.stat(f).st_mtime_ns for f in files]
    # resumed at its total: nothing trained, nothing appended or rewritten, and it says so
    assert main(["train", "--resume", out, "--quiet"]) == 0
    assert [os.stat(f).st_mtime_ns for f in files] == stamps
    printed = capsys.readouterr().out
    assert "nothing to train: the checkpoint is at step 5 already (raise --steps to go on)" in printed
    assert "; test mse " in printed and f"checkpoint: {ckpt.path_in(out)}" in printed
    assert open(os.path.join(out, "metrics.jsonl")).read() == metrics
    assert open(ckpt.path_in(out), "rb").read() == saved
    assert main(["train", "--resume", out, "--hidden", "8", "--steps", "7", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "gpubptt train: error: --resume" in err and "options differ from the checkpoint" in err
    assert "--hidden 8 (the checkpoint has 4)" in err and "--seed 3 (the checkpoint has 0)" in err
    assert main(["train", "--resume", out, "--steps", "7", "--delay", "3", "--layers", "1"]) == 2
    err = capsys.readouterr().err  # a setting the checkpoint does not have, in words (not Python's None)
    assert "--delay 3 (the checkpoint has none)" in err and "None" not in err
    assert "--layers" not in err  # (one layer is what the checkpoint has)


def test_resume_can_switch_clipping_off_but_not_change_the_optimizer(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--task", "sine", "--seq-len", "5", *TINY, "--optimizer", "sgd", "--momentum", "0.9",
                 "--nesterov", "--clip-norm", "1", "--clip-value", "3", "--clip-step", "2", "--out", out]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", out, "--steps", "5", "--momentum", "0", "--quiet"]) == 2
    assert "--momentum 0.0 (the checkpoint has 0.9)" in capsys.readouterr().err
    assert main(["train", "--resume", out, "--steps", "5", "--tbptt", "2", "2", "--quiet"]) == 2
    assert "--tbptt 2 2 (the checkpoint has none: full BPTT)" in capsys.readouterr().err
    assert main(["train", "--resume", out, "--steps", "5", "--clip-norm", "off", "--clip-step", "off", "--quiet"]) == 0
    meta = ckpt.load(out)[1]
    assert (meta["step"], meta["train"]["clip_norm"], meta["train"]["clip_value"], meta["train"]["clip_step"]) \
        == (5, None, 3.0, None)  # the clip not named keeps the checkpoint's value
    assert meta["optimizer"]["hyper"]["momentum"] == 0.9 and meta["optimizer"]["hyper"]["nesterov"] is True
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", out, "--clip-norm", "of"])
    assert e.value.code == 2 and "argument --clip-norm: expected a number or 'off', got 'of'" in capsys.readouterr().err


def test_sample_command(tmp_path, capsys, text_file):
    out = str(tmp_path / "run")
    assert main(["train", "--task", "text", "--text", str(text_file), "--seq-len", "10", *TINY, "--out", out]) == 0
    capsys.readouterr()
    assert main(["sample", out, "--length", "20", "--prime", "the ", "--seed", "2"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("the ") and len(text) == 24
    assert main(["sample", out, "--seed", "-1"]) == 2
    assert "gpubptt sample: error: --seed: expected an integer >= 0, got -1" in capsys.readouterr().err
    assert main(["sample", out, "--prime", "XYZ"]) == 2
    assert "gpubptt sample: error: --prime: characters not in the model's vocabulary: 'XYZ'" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing")]) == 2
    assert f"gpubptt sample: error: directory: {tmp_path / 'nothing'} holds no checkpoint" in capsys.readouterr().err
    # with a prime the checkpoint alone is enough: the same text once the training file is gone
    text_file.rename(tmp_path / "moved.txt")
    assert main(["sample", out, "--length", "20", "--prime", "the ", "--seed", "2"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == text
    assert main(["sample", out]) == 2  # the default prime is drawn from the training text's frequencies
    assert "(the default prime is drawn from the training text's character frequencies; give a prime to sample " \
           "without it)" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "--steps: expected a positive integer, got 0"),
    (["--batch", "-1"], "--batch: expected a positive integer, got -1"),
    (["--lr", "0"], "--lr: expected a finite number > 0, got 0.0"),
    (["--lr", "-0.5"], "--lr: expected a finite number > 0, got -0.5"),
    (["--hidden", "0"], "--hidden: expected a positive integer, got 0"),
    (["--layers", "0"], "--layers: expected a positive integer, got 0"),
    (["--clip-norm", "-1"], "--clip-norm: expected a positive finite number, got -1.0"),
    (["--clip-value", "0"], "--clip-value: expected a positive finite number, got 0.0"),
    (["--clip-step", "-2"], "--clip-step: expected a positive finite number, got -2.0"),
    (["--tbptt", "8", "4"], "--tbptt: k2 (steps backpropagated) must be >= k1 (steps between updates), got k1=8, k2=4"),
    (["--seq-len", "0"], "--seq-len: expected a positive integer, got 0"),
    (["--delay", "4"], "--delay: only the copy task takes a delay"),
    (["--momentum", "0.9"], "--momentum/--nesterov: apply to --optimizer sgd only, got --optimizer adam"),
])
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--task", "sine", "--backend", "cpu", "--quiet", "--out", str(out), *args]) == 2
    assert f"gpubptt train: error: {message}" in capsys.readouterr().err
    assert not out.exists()  # nothing written for a refused run


@pytest.mark.parametrize("args,message", [
    (["--task", "mnist"], "argument --task: invalid choice: 'mnist'"),
    (["--task", "sine", "--cell", "gru2"], "argument --cell: invalid choice: 'gru2'"),
    (["--task", "sine", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["--task", "sine", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
])
def test_unknown_choices_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["train", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_diverging_run_exits_1_with_the_reason(tmp_path, capsys):
    args = ["train", "--task", "sine", *TINY, "--optimizer", "sgd", "--lr", "1e38", "--out", str(tmp_path / "r")]
    with np.errstate(over="ignore", invalid="ignore"):
        assert main(args) == 1
    assert "gpubptt train: error: the run diverged: after the update of step 1" in capsys.readouterr().err


def test_task_is_required_without_resume(capsys):
    assert main(["train", "--quiet"]) == 2
    assert "--task: required (one of sine, adding, copy, text) unless --resume DIR is given" in capsys.readouterr().err
    assert main(["train", "--resume", "", "--quiet"]) == 2
    assert "gpubptt train: error: --resume: expected the run directory to continue, got ''" in capsys.readouterr().err


def test_out_that_is_a_file_and_an_occupied_out(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("")
    assert main(["train", "--task", "sine", *TINY, "--out", str(f)]) == 2
    assert f"out: {f} is a file, expected a directory" in capsys.readouterr().err
    out = str(tmp_path / "run")
    assert main(["train", "--task", "sine", "--seq-len", "5", *TINY, "--out", out]) == 0
    before = open(ckpt.path_in(out), "rb").read()
    assert main(["train", "--task", "sine", "--seq-len", "5", *TINY, "--out", out]) == 2
    assert "already holds a checkpoint; pass resume=True (--resume) to continue it" in capsys.readouterr().err
    assert open(ckpt.path_in(out), "rb").read() == before


@pytest.mark.parametrize("content,message", [
    (b"", "is empty; expected a UTF-8 text file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "is not text (it holds NUL bytes)"),
])
def test_bad_text_files(tmp_path, capsys, content, message):
    f = tmp_path / "in.txt"
    f.write_bytes(content)
    assert main(["train", "--task", "text", "--text", str(f), *TINY, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_corrupted_checkpoint_on_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--task", "sine", "--seq-len", "5", *TINY, "--out", out]) == 0
    path = ckpt.path_in(out)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-100])
    capsys.readouterr()
    assert main(["train", "--resume", out, "--quiet"]) == 2
    assert "is corrupted" in capsys.readouterr().err
    assert open(path, "rb").read() == data[:-100]  # left as it was found


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    """A real SIGINT to a real process: it finishes its step, saves, and exits without a traceback."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpubptt", "train", "--task", "sine", "--seq-len", "5", "--hidden", "4",
           "--batch", "2", "--steps", "100000000", "--backend", "cpu", "--log-every", "1", "--out", str(out),
           "--checkpoint-every", "1000000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: continue with gpubptt train --resume" in stderr
    step = ckpt.load(out)[1]["step"]
    assert step >= 1 and stdout.startswith(f"trained {step} steps")
