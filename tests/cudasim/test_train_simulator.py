"""``gpubptt train`` on the ``cuda`` backend in Numba's CUDA simulator: the recurrence, clipping and
optimizer kernels together, end to end (second tier: NUMBA_ENABLE_CUDASIM=1). Tiny sizes."""
import json

import numpy as np
import pytest

from gpubptt import checkpoint as ckpt
from gpubptt import tasks
from gpubptt.cli import main

pytestmark = pytest.mark.cudasim


def test_train_command_in_the_simulator(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tasks, "TEST_SEQUENCES", 2)  # every simulated block is Python threads
    out = tmp_path / "run"
    assert main(["train", "--task", "sine", "--seq-len", "4", "--hidden", "3", "--batch", "2", "--steps", "2",
                 "--backend", "cuda", "--clip-norm", "1", "--tbptt", "2", "2", "--quiet", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("trained 2 steps")
    arrays, meta = ckpt.load(out)
    assert meta["step"] == 2 and meta["optimizer"]["steps"] == 2
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) and r["applied"] for r in steps)
