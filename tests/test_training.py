"""The trainer: TBPTT windows and their equivalences, resume bit-identity, Ctrl-C, the NaN guard,
the exploding-gradient demonstration, checkpoints (atomic, validated), sampling, bad input."""
import json
import os
import re
import signal

import numpy as np
import pytest

import gpubptt
from gpubptt import checkpoint as ckpt
from gpubptt import optim, training
from gpubptt.training import tbptt_windows, train


def small_model(seed=0, cell="tanh", D=1, H=6, O=1, out="identity", dtype=np.float64, **structure):
    return gpubptt.RNN(D, H, O, cell=cell, output_activation=out, dtype=dtype, seed=seed, backend="cpu", **structure)


def params_equal(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


# -- windows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,tbptt,steps,expected", [
    (10, None, "all", [(0, 10, 10, None)]),
    (10, (10, 10), "all", [(0, 10, 10, None)]),
    # the last stretch (1 new step) still backpropagates k2 = 3 steps, from step 7
    (10, (3, 3), "all", [(0, 3, 3, 3), (3, 6, 3, 6), (6, 9, 3, 7), (7, 10, 1, None)]),
    # k2 > k1: every window reaches k2 steps back; next_start is where the next window begins
    (10, (3, 5), "all", [(0, 3, 3, 1), (1, 6, 3, 4), (4, 9, 3, 5), (5, 10, 1, None)]),
    # the loss at the last step only: run forward to T - k2, then one window of k2 steps
    (10, (3, 5), "last", [(0, 9, 0, 5), (5, 10, 1, None)]),
    (10, (4, 10), "last", [(0, 10, 1, None)]),
    (10, None, "last", [(0, 10, 1, None)]),
])
def test_tbptt_windows(T, tbptt, steps, expected):
    assert tbptt_windows(T, tbptt, steps) == expected


def test_full_length_tbptt_is_full_bptt_exactly():
    """TBPTT(T, T) and tbptt=None are one bptt + one optimizer step per batch: bit-identical to doing
    that by hand."""
    task = gpubptt.tasks.make_task("sine", seq_len=12, dtype=np.float64)
    runs = []
    for tbptt in (None, (12, 12)):
        m = small_model()
        train(m, task, 3, batch_size=4, optimizer="sgd", lr=0.1, tbptt=tbptt, progress=False)
        runs.append(m.params)
    m = small_model()
    opt = optim.SGD(m.params, lr=0.1, backend="cpu")
    rng = np.random.default_rng([0, 1])  # the trainer's data generator for seed 0
    for _ in range(3):
        x, d = task.batch(rng, 4)
        opt.step(m.bptt(x, d)[1])
    assert params_equal(runs[0], runs[1]) and params_equal(runs[0], m.params)


def test_tbptt_k_k_carries_the_state_and_cuts_the_gradient():
    """TBPTT(4, 4) over T = 12: three updates per batch, each a bptt over 4 steps started from the
    state the previous window ended in, with no gradient through that state."""
    task = gpubptt.tasks.make_task("sine", seq_len=12, dtype=np.float64)
    m = small_model()
    train(m, task, 3, batch_size=2, optimizer="sgd", lr=0.1, tbptt=(4, 4), progress=False)
    ref = small_model()
    opt = optim.SGD(ref.params, lr=0.1, backend="cpu")
    x, d = task.batch(np.random.default_rng([0, 1]), 2)
    state = None
    for start in (0, 4, 8):
        xs, ds = x[start:start + 4], d[start:start + 4]
        _, S = ref.forward(xs, state)
        next_state = S[-1].copy()
        opt.step(ref.bptt(xs, ds, s0=state)[1])
        state = next_state
    assert params_equal(m.params, ref.params)


def test_tbptt_k1_lt_k2_matches_windows_by_hand():
    task = gpubptt.tasks.make_task("sine", seq_len=10, dtype=np.float64)
    m = small_model()
    train(m, task, 4, batch_size=2, optimizer="sgd", lr=0.1, tbptt=(3, 5), progress=False)
    ref = small_model()
    opt = optim.SGD(ref.params, lr=0.1, backend="cpu")
    x, d = task.batch(np.random.default_rng([0, 1]), 2)
    state = None
    for start, end, k, next_start in tbptt_windows(10, (3, 5), "all"):
        _, grads, new_state = gpubptt.bptt(ref.params, x[start:end], d[start:end], state, loss_steps=k,
                                           return_state=True, state_step=(next_start or end) - start, backend="cpu")
        opt.step(grads)
        state = new_state
    assert params_equal(m.params, ref.params)


def _tbptt_by_sequence(params, x, d, lengths, tbptt, loss_steps, lr):
    """TBPTT(k1, k2) of one batch of sequences of their own lengths, each sequence run alone (B = 1, no
    lengths: its rows up to its end) and the batch's gradient their mean: SGD on a copy of params.
    Returns (params, logged losses): one update for each window where some sequence has a step in the
    loss, those being its steps among the window's new ones ('all') or its last step ('last')."""
    params = {k: v.copy() for k, v in params.items()}
    T, B = x.shape[:2]
    states, losses = [None] * B, []
    for start, end, new, next_start in tbptt_windows(T, tbptt, "all"):
        upto = end if next_start is None else next_start  # where the state carried on is taken
        if loss_steps == "all":
            steps = [max(0, min(n, end) - (end - new)) for n in lengths]
        else:
            steps = [int(end - new <= n - 1 < end) for n in lengths]
        total, L = {k: np.zeros_like(v) for k, v in params.items()}, 0.0
        for b, n in enumerate(lengths):
            if n <= start:
                continue  # ended before this window: no loss, no state to carry on
            xb, db = x[start:min(end, n), b:b + 1], d[start:min(end, n), b:b + 1]
            carried = min(upto, n) - start
            if steps[b]:
                Lb, g, state = gpubptt.bptt(params, xb, db, states[b], loss_steps=steps[b], return_state=True,
                                            state_step=carried, backend="cpu")
                L += float(Lb) / B
                for k in total:
                    total[k] += g[k] / B
            else:
                state = gpubptt.forward(params, xb[:carried], states[b], return_state=True, backend="cpu")[2]
            states[b] = state
        if any(steps):
            for k in params:
                params[k] = params[k] - lr * total[k]
            losses.append(L / np.mean(steps))
    return params, losses


@pytest.mark.parametrize("tbptt", [(3, 3), (3, 5), (4, 4)])
@pytest.mark.parametrize("loss_steps", ["all", "last"])
def test_tbptt_with_lengths_is_each_sequence_alone_window_by_window(tbptt, loss_steps):
    """TBPTT over sequences of their own lengths: in each window a sequence has its steps up to its
    end, its loss on its steps among the window's new ones (or on its last step where the window
    has it), the state carried from its own previous window; a window where no sequence has a step
    in the loss is no update, and the batch ends once every sequence has. Padding (NaN) is never read."""
    rng = np.random.default_rng(5)
    T, B = 11, 4
    lengths = np.array([11, 7, 2, 5])
    x = rng.standard_normal((T, B, 1))
    d = rng.standard_normal((T, B, 1))
    for b, n in enumerate(lengths):
        x[n:, b], d[n:, b] = np.nan, np.nan
        if loss_steps == "last":
            d[:n - 1, b] = np.nan
    m = small_model()
    expected, losses = _tbptt_by_sequence(m.params, x, d, lengths, tbptt, loss_steps, 0.1)
    x = np.nan_to_num(x, nan=1e3)  # x past an end is read (the state stays put there), never used
    r = train(m, [(x, d, lengths)], len(losses), loss_steps=loss_steps, tbptt=tbptt, optimizer="sgd", lr=0.1,
              log_every=1, progress=False)
    for k in expected:
        np.testing.assert_allclose(m.params[k], expected[k], rtol=1e-12, atol=1e-14)
    assert [h["loss"] for h in r.history if "loss" in h] == pytest.approx(losses, rel=1e-12)


@pytest.mark.parametrize("loss_steps", ["all", "last"])
def test_tbptt_with_lengths_of_t_is_tbptt_without_them(loss_steps):
    task = gpubptt.tasks.make_task("sine" if loss_steps == "all" else "adding", seq_len=10, dtype=np.float64)
    batches = [task.batch(np.random.default_rng(i), 3) for i in range(2)]
    runs = []
    for with_lengths in (False, True):
        m = small_model(D=task.input_size)
        data = [(x, d, np.full(3, 10)) if with_lengths else (x, d) for x, d in batches]
        train(m, data, 6 if loss_steps == "all" else 2, loss_steps=loss_steps, tbptt=(3, 5), optimizer="sgd",
              lr=0.1, progress=False)
        runs.append(m.params)
    assert params_equal(*runs)


def test_clip_step_and_gated_cells_reach_bptt():
    """clip_step goes to bptt's per-time-step clipping: one step equals bptt(clip_step=c) + an update."""
    task = gpubptt.tasks.make_task("sine", seq_len=8, dtype=np.float64)
    m = small_model(cell="lstm", num_layers=2)
    train(m, task, 1, batch_size=2, optimizer="sgd", lr=0.1, clip_step=0.01, progress=False)
    ref = small_model(cell="lstm", num_layers=2)
    x, d = task.batch(np.random.default_rng([0, 1]), 2)
    _, grads = ref.bptt(x, d, clip_step=0.01)
    _, unclipped = ref.bptt(x, d)
    assert not np.allclose(grads["Ws_l0"], unclipped["Ws_l0"])  # the threshold did act
    optim.SGD(ref.params, lr=0.1, backend="cpu").step(grads)
    assert params_equal(m.params, ref.params)


def test_bidirectional_models_train_on_whole_sequences_only():
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    r = train(small_model(bidirectional=True), task, 2, batch_size=2, progress=False)
    assert r.steps == 2
    with pytest.raises(ValueError, match=r"tbptt: a bidirectional model reads each sequence whole"):
        train(small_model(bidirectional=True), task, 2, tbptt=(3, 3), progress=False)


# -- checkpoints, resume, Ctrl-C ------------------------------------------------------------------


def _interrupt_at(step):
    def callback(at, trainer):
        if at == step:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does
    return callback


@pytest.mark.parametrize("stop,structure", [
    (3, {}),
    (6, {}),  # in the middle of a batch (4 windows per batch): the carried state is in the checkpoint
    (6, dict(cell="lstm", num_layers=2)),  # a carried (h, c) pair of [2,B,H] arrays
    (5, dict(cell="gru")),
])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, stop, structure):
    task = gpubptt.tasks.make_task("sine", seq_len=12, dtype=np.float32)
    common = dict(batch_size=3, optimizer="adam", lr=0.01, clip_norm=1.0, tbptt=(3, 3), progress=False,
                  eval_every=4)
    straight = small_model(dtype=np.float32, **structure)
    full = train(straight, task, 10, out=tmp_path / "a", **common)
    assert not full.interrupted and full.steps == 10

    m = small_model(dtype=np.float32, **structure)
    first = train(m, task, 10, out=tmp_path / "b", callback=_interrupt_at(stop), **common)
    assert first.interrupted and first.steps == stop
    assert ckpt.load(tmp_path / "b")[1]["step"] == stop
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    resumed_model = small_model(seed=99, dtype=np.float32, **structure)  # other weights: the checkpoint's win
    second = train(resumed_model, task, 10, out=tmp_path / "b", resume=True, **common)
    assert second.steps == 10 and second.resumed_from == stop and full.resumed_from == 0 and not second.interrupted
    assert params_equal(resumed_model.params, straight.params)
    a, b = ckpt.load(tmp_path / "a"), ckpt.load(tmp_path / "b")
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)
    steps_logged = [r["step"] for r in map(json.loads, open(tmp_path / "b" / "metrics.jsonl")) if "loss" in r]
    assert steps_logged == list(range(1, 11))


def test_tbptt_over_lengths_resumed_inside_a_batch_is_bit_identical(tmp_path):
    """The windows of a batch of sequences of their own lengths, stopped between two of them: the
    resumed run carries the checkpoint's state into the next window and ends where the straight one does."""
    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((10, 3, 1)), rng.standard_normal((10, 3, 1)), lengths)
               for lengths in ([10, 4, 7], [2, 9, 5])]
    common = dict(optimizer="adam", lr=0.01, tbptt=(3, 3), progress=False)
    straight = small_model()
    train(straight, batches, 9, out=tmp_path / "a", **common)
    first = train(small_model(), batches, 9, out=tmp_path / "b", callback=_interrupt_at(2), **common)
    assert first.interrupted and first.steps == 2
    assert ckpt.load(tmp_path / "b")[1]["position"]["in_batch"]  # stopped between two windows of a batch
    resumed = small_model(seed=99)
    train(resumed, batches, 9, out=tmp_path / "b", resume=True, **common)
    assert params_equal(resumed.params, straight.params)


def test_ctrl_c_without_out_stops_cleanly():
    m = small_model()
    r = train(m, gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64), 50,
              batch_size=2, progress=False, callback=_interrupt_at(2))
    assert r.interrupted and r.steps == 2 and r.checkpoint is None


def test_resume_refuses_another_model_and_leaves_the_checkpoint_alone(tmp_path):
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    train(small_model(), task, 2, batch_size=2, out=tmp_path, progress=False)
    before = (tmp_path / ckpt.FILENAME).read_bytes()
    with pytest.raises(ckpt.CheckpointError, match=r"written for model hidden_size=6, got model hidden_size=7"):
        train(small_model(H=7), task, 4, batch_size=2, out=tmp_path, resume=True, progress=False)
    with pytest.raises(ckpt.CheckpointError, match=r"written for model cell='tanh', got model cell='relu'"):
        train(small_model(cell="relu"), task, 4, batch_size=2, out=tmp_path, resume=True, progress=False)
    with pytest.raises(ckpt.CheckpointError, match=r"written for batch_size=2, got batch_size=3"):
        train(small_model(), task, 4, batch_size=3, out=tmp_path, resume=True, progress=False)
    with pytest.raises(ckpt.CheckpointError, match=r"written for optimizer='adam', got optimizer='sgd'"):
        train(small_model(), task, 4, batch_size=2, optimizer="sgd", out=tmp_path, resume=True, progress=False)
    with pytest.raises(ckpt.CheckpointError, match=r"written for optimizer beta1=0\.9, got optimizer beta1=0\.8"):
        train(small_model(), task, 4, batch_size=2, optimizer_options={"betas": (0.8, 0.999)}, out=tmp_path,
              resume=True, progress=False)
    with pytest.raises(ckpt.CheckpointError, match=r"written for optimizer weight_decay=0\.0, got optimizer "
                                                   r"weight_decay=0\.1"):
        m = small_model()
        train(m, task, 4, batch_size=2, optimizer=optim.Adam(m.params, weight_decay=0.1), out=tmp_path, resume=True,
              progress=False)
    assert (tmp_path / ckpt.FILENAME).read_bytes() == before


def test_resume_keeps_the_learning_rate_it_is_given(tmp_path):
    """lr may change on resume: given (as lr, or as an Optimizer's own) it replaces the checkpoint's;
    not given, the checkpoint's is taken."""
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    train(small_model(), task, 2, batch_size=2, lr=0.01, out=tmp_path / "a", progress=False)
    for run in ("b", "c"):
        train(small_model(), task, 2, batch_size=2, lr=0.01, out=tmp_path / run, progress=False)
    m = small_model()
    opt = optim.Adam(m.params, lr=0.5)
    train(m, task, 3, batch_size=2, optimizer=opt, out=tmp_path / "a", resume=True, progress=False)
    assert opt.lr == 0.5
    r = train(small_model(), task, 3, batch_size=2, lr=0.2, out=tmp_path / "b", resume=True, progress=False)
    assert r.steps == 3 and json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert ckpt.load(tmp_path / "b")[1]["optimizer"]["hyper"]["lr"] == 0.2
    train(small_model(), task, 3, batch_size=2, out=tmp_path / "c", resume=True, progress=False)
    assert ckpt.load(tmp_path / "c")[1]["optimizer"]["hyper"]["lr"] == 0.01


def test_resume_refuses_fewer_steps_than_the_checkpoint_has_done(tmp_path):
    """steps counts the earlier run's steps: asking a checkpoint at step 3 for 2 in all is refused
    before anything is loaded or written; as many as it has done trains nothing."""
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    train(small_model(), task, 3, batch_size=2, out=tmp_path, progress=False)
    before = (tmp_path / ckpt.FILENAME).read_bytes()
    mine = small_model(seed=99)
    theirs = {k: v.copy() for k, v in mine.params.items()}
    with pytest.raises(ValueError, match=r"steps: the checkpoint .* is at step 3; .* takes 3 or more, got 2"):
        train(mine, task, 2, batch_size=2, out=tmp_path, resume=True, progress=False)
    assert (tmp_path / ckpt.FILENAME).read_bytes() == before
    assert params_equal(mine.params, theirs)
    assert train(mine, task, 3, batch_size=2, out=tmp_path, resume=True, progress=False).steps == 3


def test_load_model_gives_the_trained_model_and_its_task_back(tmp_path):
    """gpubptt.load_model: the run's structure and final parameters, the task that reproduces the
    run's test figures, the metadata; the checkpoint untouched; a run on batches has no task."""
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    m = small_model(cell="gru", num_layers=2)
    run = train(m, task, 3, batch_size=2, out=tmp_path / "sine", progress=False)
    before = (tmp_path / "sine" / ckpt.FILENAME).read_bytes()
    loaded = gpubptt.load_model(tmp_path / "sine", backend="cpu")
    model, task2, meta = loaded
    assert loaded.model is model and (model.cell, model.num_layers, model.hidden_size) == ("gru", 2, 6)
    assert model.params is not m.params and params_equal(model.params, m.params)
    assert meta["step"] == 3 and meta["task"] == task.config() and task2.config() == task.config()
    x, d = task2.test_set()
    assert task2.metrics(model.forward(x)[0], d) == run.test
    assert (tmp_path / "sine" / ckpt.FILENAME).read_bytes() == before
    batches = [task.batch(np.random.default_rng(0), 2)]
    train(small_model(), batches, 1, out=tmp_path / "list", progress=False)
    assert gpubptt.load_model(tmp_path / "list").task is None
    with pytest.raises(ckpt.CheckpointError, match=r"directory: .*holds no checkpoint"):
        gpubptt.load_model(tmp_path / "nothing-here")


@pytest.mark.parametrize("structure", [dict(cell="tanh", dtype=np.float64, bias=False),
                                       dict(cell="lstm", num_layers=2, bidirectional=True, dtype=np.float32)],
                         ids=["tanh-f64-nobias", "lstm-2-bi-f32"])
def test_a_model_saved_by_hand_loads_back(tmp_path, structure):
    """RNN.save for a model trained in one's own loop: load_model gives the same structure and weights."""
    m = gpubptt.RNN(3, 5, 2, seed=1, backend="cpu", **structure)
    path = m.save(tmp_path / "m")
    assert path == str(tmp_path / "m" / ckpt.FILENAME)
    model, task, meta = gpubptt.load_model(tmp_path / "m", backend="cpu")
    assert repr(model) == repr(m) and task is None and meta["step"] == 0
    assert model.params.keys() == m.params.keys() and params_equal(model.params, m.params)
    assert all(model.params[k].dtype == m.params[k].dtype for k in m.params)
    with pytest.raises(ValueError, match=r"directory: .* already holds a checkpoint; pass overwrite=True"):
        m.save(tmp_path / "m")
    with pytest.raises(ckpt.CheckpointError, match=r"holds a model saved by RNN\.save, not a training run: there "
                                                   r"is nothing to resume; load it with gpubptt\.load_model"):
        train(model, [(np.zeros((2, 1, 3)), np.zeros((2, 1, 2)))], 2, out=tmp_path / "m", resume=True, progress=False)
    m.params["Wy"][...] = 0
    m.save(tmp_path / "m", overwrite=True)
    assert np.all(gpubptt.load_model(tmp_path / "m").model.params["Wy"] == 0)


def test_repr_of_a_model_whose_params_do_not_fit_it():
    m = gpubptt.RNN(4, 6, 2, cell="lstm", num_layers=2)
    m.params = gpubptt.init_params(4, 6, 2)  # one tanh layer's keys
    assert repr(m) == "RNN(cell='lstm', num_layers=2, bidirectional=False, params: 6 arrays that do not fit this structure)"


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    train(small_model(), task, 2, batch_size=2, out=tmp_path, progress=False)
    path = tmp_path / ckpt.FILENAME
    data = bytearray(path.read_bytes())
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:]):
        path.write_bytes(bytes(damage(data)))
        with pytest.raises(ckpt.CheckpointError, match=r"checkpoint .* is corrupted"):
            train(small_model(), task, 4, batch_size=2, out=tmp_path, resume=True, progress=False)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ckpt.CheckpointError, match=r"is corrupted or not a checkpoint"):
        ckpt.load(tmp_path)
    # a damaged zip directory: the compression method of the first entry set to one zipfile lacks, or
    # the entry marked encrypted
    central = data.find(b"PK\x01\x02")
    for offset, bits, error in ((10, 0xFF, "NotImplementedError"), (8, 0x01, "RuntimeError")):
        at = central + offset
        path.write_bytes(bytes(data[:at]) + bytes([data[at] ^ bits]) + bytes(data[at + 1:]))
        with pytest.raises(ckpt.CheckpointError, match=rf"is corrupted or not a checkpoint: {error}"):
            ckpt.load(tmp_path)


def test_a_run_directory_that_cannot_be_written_is_refused_before_anything(tmp_path, monkeypatch):
    """Before the steps (their checkpoint could not be saved) and before a resume loads the checkpoint."""
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    train(small_model(), task, 2, batch_size=2, out=tmp_path, progress=False)
    real_access = os.access
    monkeypatch.setattr(ckpt.os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(tmp_path)
                        else real_access(p, mode))  # as a read-only file system answers (root ignores modes)
    m = small_model(seed=4)
    before = {k: v.copy() for k, v in m.params.items()}
    with pytest.raises(ValueError, match=r"^out: cannot write in .*read-only file system\)$"):
        train(m, task, 4, batch_size=2, out=tmp_path, resume=True, progress=False)
    assert params_equal(m.params, before)


def test_stale_temporary_files_are_cleared_in_the_run_directory_only(tmp_path):
    """A directory name with glob characters names itself, not others that match it as a pattern."""
    run, other = tmp_path / "g[1]", tmp_path / "g1"
    run.mkdir()
    other.mkdir()
    for d in (run, other):
        (d / ".checkpoint-stale.tmp").write_bytes(b"left by a killed save")
    ckpt.save(run, {"w": np.zeros(2)}, {"step": 1})
    assert not (run / ".checkpoint-stale.tmp").exists() and (other / ".checkpoint-stale.tmp").exists()


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    ckpt.save(tmp_path, {"w": np.arange(4.0)}, {"step": 1})
    before = (tmp_path / ckpt.FILENAME).read_bytes()

    def dies_halfway(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save(tmp_path, {"w": np.zeros(4)}, {"step": 2})
    assert (tmp_path / ckpt.FILENAME).read_bytes() == before
    assert os.listdir(tmp_path) == [ckpt.FILENAME]  # no temporary file left behind
    monkeypatch.undo()
    arrays, meta = ckpt.load(tmp_path)
    assert meta["step"] == 1 and np.array_equal(arrays["w"], np.arange(4.0))


def test_save_refuses_what_it_could_not_read_back(tmp_path):
    """checkpoint.save: its own entries' names, object arrays and a directory in the file's place are
    refused before anything is written."""
    with pytest.raises(ValueError, match=r"arrays: 'meta' is the name of the checkpoint's own entry"):
        ckpt.save(tmp_path / "a", {"meta": np.zeros(2)}, {"step": 1})
    with pytest.raises(ValueError, match=r"meta: 'format' and 'version' are written by the checkpoint itself"):
        ckpt.save(tmp_path / "a", {"w": np.zeros(2)}, {"version": 99})
    with pytest.raises(TypeError, match=r"arrays\['w'\]: expected an array of numbers, got dtype object"):
        ckpt.save(tmp_path / "a", {"w": np.array([None, 1])}, {"step": 1})
    assert os.listdir(tmp_path / "a") == []
    (tmp_path / "b" / ckpt.FILENAME).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"directory: .*checkpoint\.npz is a directory, where the checkpoint goes"):
        gpubptt.RNN(3, 4, 2).save(tmp_path / "b", overwrite=True)
    assert os.listdir(tmp_path / "b") == [ckpt.FILENAME]


def test_out_directory_rules(tmp_path):
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"out: .*file is a file, expected a directory"):
        train(small_model(), task, 2, out=f, progress=False)
    train(small_model(), task, 2, batch_size=2, out=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"out: .*run already holds a checkpoint; pass resume=True"):
        train(small_model(), task, 2, batch_size=2, out=tmp_path / "run", progress=False)
    with pytest.raises(ckpt.CheckpointError, match=r"resume: .*empty holds no checkpoint"):
        train(small_model(), task, 2, out=tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ValueError, match=r"resume: needs out"):
        train(small_model(), task, 2, resume=True, progress=False)
    # another run's files without a checkpoint are not overwritten; an empty log holds nothing to lose
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.jsonl").write_text('{"step": 1}\n')
    (mine / "training.png").write_bytes(b"a figure")
    with pytest.raises(ValueError, match=r"out: .*mine already holds metrics\.jsonl and training\.png \(with no "
                                         r"checkpoint to resume\); a new run would overwrite them"):
        train(small_model(), task, 2, batch_size=2, out=mine, progress=False)
    assert (mine / "metrics.jsonl").read_text() == '{"step": 1}\n' and (mine / "training.png").read_bytes() == b"a figure"
    (mine / "training.png").unlink()
    (mine / "metrics.jsonl").write_text("")
    assert train(small_model(), task, 2, batch_size=2, out=mine, progress=False).steps == 2
    # a directory where a run file goes: refused before any work, fresh or resumed
    for f in ("metrics.jsonl", "training.png", ckpt.FILENAME):
        odd = tmp_path / f"odd-{f}"
        (odd / f).mkdir(parents=True)
        with pytest.raises(ValueError, match=rf"out: .*{re.escape(f)} is a directory, where the run writes its"):
            train(small_model(), task, 2, out=odd, progress=False)
    (tmp_path / "run" / "training.png").unlink(missing_ok=True)  # (none without matplotlib)
    (tmp_path / "run" / "training.png").mkdir()
    with pytest.raises(ValueError, match=r"out: .*training\.png is a directory"):
        train(small_model(), task, 4, batch_size=2, out=tmp_path / "run", resume=True, progress=False)


# -- the guard and clipping in training -------------------------------------------------------------


def test_nan_gradients_are_skipped_counted_and_reported(tmp_path, monkeypatch):
    m = small_model()
    real = m.bptt
    calls = []

    def sometimes_nan(*args, **kwargs):
        L, grads = real(*args, **kwargs)[:2]
        calls.append(1)
        if len(calls) == 2:
            grads["Ws"] = grads["Ws"] * np.nan
        return L, grads

    monkeypatch.setattr(m, "bptt", sometimes_nan)
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    seen = {}

    def watch(step, trainer):
        seen[step] = {k: v.copy() for k, v in m.params.items()}

    r = train(m, task, 3, batch_size=2, out=tmp_path, progress=False, callback=watch, log_every=1)
    assert r.skipped == 1
    assert params_equal(seen[1], seen[2])  # step 2 changed nothing
    assert not params_equal(seen[2], seen[3])
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r.get("applied") for r in records if "loss" in r] == [True, False, True]
    assert [r["grad_norm"] is None for r in records if "loss" in r] == [False, True, False]  # NaN -> null


def test_global_norm_clipping_tames_an_exploding_rnn():
    """A tanh RNN whose recurrent weight has spectral radius 3 (the article's exploding gradient):
    plain SGD blows up (non-finite gradients are skipped, the loss grows without bound); with
    global-norm clipping the loss stays finite and falls."""
    def exploding_model():
        m = small_model(H=8)
        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))
        m.params["Ws"][...] = 3.0 * q
        return m

    task = gpubptt.tasks.make_task("sine", dtype=np.float64)
    kw = dict(batch_size=8, optimizer="sgd", lr=0.2, progress=False, log_every=1)
    with np.errstate(over="ignore", invalid="ignore"):
        wild = train(exploding_model(), task, 100, **kw)
    tame = train(exploding_model(), task, 100, clip_norm=1.0, **kw)
    losses = [r["loss"] for r in tame.history if "loss" in r]
    assert all(v is not None and np.isfinite(v) for v in losses) and tame.skipped == 0
    assert max(r["grad_norm"] for r in tame.history if "loss" in r) > 100  # the gradient did explode
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])  # measured: 0.24 after 1.0
    wild_losses = [r["loss"] for r in wild.history if "loss" in r]
    assert wild.skipped > 0 or max(v or np.inf for v in wild_losses) > 1e6 * wild_losses[0]


def test_an_update_that_overflows_the_parameters_is_a_divergence_not_a_bad_batch():
    """Finite gradients, an update past float32's range: the next check of the parameters (the next
    step's, or the test evaluation's) raises FloatingPointError saying so; parameters that are not
    finite before the run starts are the model's error, not the batch's."""
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((5, 2, 1)).astype(np.float32), rng.standard_normal((5, 2, 1)).astype(np.float32))]
    task = gpubptt.tasks.make_task("sine", seq_len=5)
    for data in (batches, task):
        with np.errstate(over="ignore", invalid="ignore"), \
                pytest.raises(FloatingPointError, match=r"^the run diverged: after the update of step 1, "
                                                        r"model\.params\['\w+'\]: contains NaN or Inf"):
            train(small_model(dtype=np.float32), data, 3, batch_size=2 if data is task else None, optimizer="sgd",
                  lr=1e38, progress=False)
    m = small_model(dtype=np.float32)
    m.params["Ws"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^model\.params\['Ws'\]: contains NaN or Inf$"):
        train(m, batches, 3, progress=False)


def _poison_at(step):
    def callback(at, trainer):  # as if the update of that step had overflowed Ws
        if at == step:
            trainer.model.params["Ws"][0, 0] = np.inf
    return callback


@pytest.mark.parametrize("where", ["last step", "forward-only window"])
def test_a_divergence_is_caught_wherever_the_parameters_are_next_read(tmp_path, where):
    """At the end of a run (no later step reads them; nothing is checkpointed), and in TBPTT's windows
    that only run forward (the adding task's before its last)."""
    if where == "last step":
        rng = np.random.default_rng(5)
        batches = [(rng.standard_normal((5, 2, 1)), rng.standard_normal((5, 2, 1)))]
        run = dict(task_or_batches=batches, steps=2, callback=_poison_at(2), out=tmp_path / "r")
    else:
        run = dict(task_or_batches="adding", steps=3, tbptt=(10, 20), batch_size=2, callback=_poison_at(1))
    model = small_model(D=1 if where == "last step" else 2)
    with pytest.raises(FloatingPointError, match=r"^the run diverged: after the update of step \d, "
                                                 r"model\.params\['Ws'\]: contains NaN or Inf"):
        train(model, progress=False, **run)
    if where == "last step":
        assert not ckpt.exists(tmp_path / "r")


def test_a_resumed_log_keeps_whole_records_up_to_the_checkpoint(tmp_path):
    """Records past the checkpoint's step go, and so does a torn last line (a run killed while
    writing), so that the next record starts on a line of its own; a log with neither is left as it is."""
    from gpubptt.report import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    for text, step, expected in (('{"step": 1}\n{"step": 2}\n{"step": 3, "lo', 3, [1, 2]),
                                 ('{"step": 1}\n{"step": 2}\n{"step": 3}\n', 2, [1, 2]),
                                 ('{"step": 1}\nnull\n{"step": "x"}\n[2]\n{"step": 2}\n', 5, [1, 2])):  # edited
        path.write_text(text)
        log = MetricsLog(str(path), fresh=False)
        log.keep_until(step)
        log.write([{"step": 9}])
        assert [r["step"] for r in read_metrics(path)] == expected + [9]
    whole = path.stat().st_mtime_ns
    MetricsLog(str(path), fresh=False).keep_until(9)
    assert path.stat().st_mtime_ns == whole


# -- other data, tasks and sampling ------------------------------------------------------------------


def test_training_on_a_list_of_batches():
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((5, 2, 1)), rng.integers(0, 3, (5, 2))) for _ in range(2)]
    m = small_model(O=3, out="softmax")
    r = train(m, batches, 4, optimizer="adagrad", lr=0.1, progress=False)
    assert r.steps == 4 and r.test is None and r.loss is not None
    with pytest.raises(TypeError, match=r"task_or_batches\[0\]: expected a pair \(x, d\) or a triple "
                                        r"\(x, d, lengths\), got ndarray"):
        train(m, [batches[0][0]], 4, progress=False)
    with pytest.raises(TypeError, match=r"task_or_batches\[1\]: .* got a tuple of 4"):
        train(m, [batches[0], batches[1] + (None, None)], 4, progress=False)
    with pytest.raises(TypeError, match=r"task_or_batches: expected a task name .* got dict"):
        train(m, {"x": 1}, 4, progress=False)
    for name, value, why in (("eval_every", 1, "one's own batches have no test set"),
                             ("batch_size", 8, "one's own batches come as they are"),
                             ("seed", 0, "one's own batches are drawn by no generator of ours")):
        with pytest.raises(ValueError, match=rf"^{name}: applies to a task's batches; {why}.*, got {name}={value}$"):
            train(m, batches, 4, progress=False, **{name: value})  # a task's setting, not silently ignored
    with pytest.raises(TypeError, match=r"task_or_batches\[1\]: x: expected a NumPy or CuPy array, got list"):
        train(m, [batches[0], (batches[1][0].tolist(), batches[1][1])], 4, progress=False)
    with pytest.raises(TypeError, match=r"task_or_batches\[0\]: d: expected a NumPy or CuPy array, got list"):
        train(m, [(batches[0][0], batches[0][1].tolist())], 4, progress=False)
    # a batch that bptt refuses is named, with the step it was drawn for
    wide = (rng.standard_normal((5, 2, 2)), batches[1][1])
    with pytest.raises(ValueError, match=r"^task_or_batches\[1\] \(at step 2\): x: expected shape \[T,B,D\]"):
        train(m, [batches[0], wide], 4, progress=False)


def test_many_to_one_batches_train_as_bptt_on_each_sequences_last_step():
    """loss_steps='last' for one's own batches: each step is bptt(..., loss_steps='last') (with lengths:
    each sequence's own last step); d elsewhere is not read (NaN there); TBPTT runs the earlier windows
    forward only, as for the adding task."""
    rng = np.random.default_rng(6)
    T, B = 7, 3
    batches = []
    for lengths in (None, np.array([7, 4, 2])):
        x = rng.standard_normal((T, B, 1))
        d = np.full((T, B, 1), np.nan)
        last = np.full(B, T) if lengths is None else lengths
        d[last - 1, np.arange(B)] = rng.standard_normal((B, 1))
        batches.append((x, d) if lengths is None else (x, d, lengths))
    m = small_model()
    r = train(m, batches, 4, loss_steps="last", optimizer="sgd", lr=0.1, progress=False, log_every=1)
    by_hand = small_model()
    opt = optim.SGD(by_hand.params, lr=0.1, backend="cpu")
    for i in range(4):
        x, d, *lengths = batches[i % 2]
        L, g = by_hand.bptt(x, d, loss_steps="last", lengths=lengths[0] if lengths else None)
        opt.step(g)
        assert r.history[i]["loss"] == pytest.approx(float(L))  # one loss step a sequence
    assert params_equal(m.params, by_hand.params)
    windowed = small_model()  # TBPTT(3, 3) over T = 7: forward over [0, 4), then the window [4, 7) is the step
    train(windowed, batches[:1], 1, loss_steps="last", tbptt=(3, 3), optimizer="sgd", lr=0.1, progress=False)
    by_hand = small_model()
    x, d = batches[0]
    state = by_hand.forward(x[:4], return_state=True)[2]
    optim.SGD(by_hand.params, lr=0.1, backend="cpu").step(by_hand.bptt(x[4:], d[4:], state, loss_steps="last")[1])
    assert params_equal(windowed.params, by_hand.params)
    with pytest.raises(ValueError, match=r"loss_steps: expected one of 'all', 'last', got 2"):
        train(small_model(), batches, 2, loss_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"loss_steps: the sine task puts its loss on 'all' steps, got "
                                         r"loss_steps='last'"):
        train(small_model(), "sine", 2, loss_steps="last", progress=False)


def test_batches_from_an_iterable_train_as_the_same_list():
    """An iterable that starts afresh at each iter() (a DataLoader-like object) is read pass after pass
    and trains bit for bit as the list; so does an iterator long enough for the run."""
    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((5, 2, 1)), rng.standard_normal((5, 2, 1))) for _ in range(3)]

    class Loader:
        def __iter__(self):
            return iter(batches)

    listed = small_model()
    train(listed, batches, 7, progress=False)
    for source in (Loader(), iter(batches * 3)):
        m = small_model()
        r = train(m, source, 7, progress=False)
        assert r.steps == 7 and r.ran_out is None and params_equal(m.params, listed.params)


def test_a_generator_that_ends_ends_the_run_and_a_resume_skips_what_it_used(tmp_path):
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((5, 2, 1)), rng.standard_normal((5, 2, 1))) for _ in range(5)]
    straight = small_model()
    train(straight, batches, 5, progress=False)
    m = small_model()
    first = train(m, (b for b in batches[:3]), 5, out=tmp_path, progress=False)
    assert first.steps == 3 and first.ran_out == "task_or_batches ran out after 3 batches, at step 3 of 5"
    assert ckpt.load(tmp_path)[1]["step"] == 3
    resumed = small_model(seed=9)
    untouched = {k: v.copy() for k, v in resumed.params.items()}
    with pytest.raises(ValueError, match=r"^task_or_batches ran out after 2 batches while skipping the batches the "
                                         r"checkpoint .* has used \(a resumed run reads it from its start\)$"):
        train(resumed, (b for b in batches[:2]), 5, out=tmp_path, resume=True, progress=False)
    assert params_equal(resumed.params, untouched)  # refused before the checkpoint was loaded
    second = train(resumed, (b for b in batches), 5, out=tmp_path, resume=True, progress=False)  # from the start
    assert second.steps == 5 and second.ran_out is None and params_equal(resumed.params, straight.params)


@pytest.mark.parametrize("source,error,match", [
    (iter([]), ValueError, r"^task_or_batches: the iterable holds no batch$"),
    (np.zeros((5, 2, 1)), TypeError, r"^task_or_batches: expected a task name .* got ndarray$"),
    (7, TypeError, r"^task_or_batches: expected a task name .* got int$"),
])
def test_iterables_that_are_not_batches(source, error, match):
    with pytest.raises(error, match=match):
        train(small_model(), source, 3, progress=False)


def test_a_bad_batch_from_an_iterable_is_named_by_its_place():
    rng = np.random.default_rng(4)
    good = (rng.standard_normal((5, 2, 1)), rng.standard_normal((5, 2, 1)))
    with pytest.raises(TypeError, match=r"^task_or_batches' batch 1: x: expected a NumPy or CuPy array, got list$"):
        train(small_model(), iter([good, (good[0].tolist(), good[1])]), 3, progress=False)
    wide = (rng.standard_normal((5, 2, 2)), good[1])
    with pytest.raises(ValueError, match=r"^task_or_batches' batch 2 \(at step 3\): x: expected shape"):
        train(small_model(), iter([good, good, wide]), 3, progress=False)
    with pytest.raises(ValueError, match=r"^task_or_batches' batch 1 \(at step 4\): lengths: values must lie in "
                                         r"\[1, 5\], got values in \[3, 6\]$"):  # checked before TBPTT's windows
        train(small_model(), iter([good, (*good, np.array([6, 3]))]), 4, tbptt=(2, 2), progress=False)  # 3 windows a batch


def test_batches_with_lengths_train_as_bptt_with_those_lengths():
    """A list of (x, d, lengths) batches (pairs may sit among them) steps the optimizer with
    bptt(x, d, lengths=lengths), exactly as a hand-written loop; padding past the lengths (-100) is
    never read; the logged loss is per step of the mean length."""
    rng = np.random.default_rng(1)
    T, B, O = 7, 3, 4
    x = [rng.standard_normal((T, B, 1)) for _ in range(2)]
    d = [rng.integers(0, O, (T, B)) for _ in range(2)]
    lengths = [3, 7, 1]
    d[0][3:, 0], d[0][1:, 2] = -100, -100
    batches = [(x[0], d[0], lengths), (x[1], d[1])]
    by_train, by_hand = small_model(O=O, out="softmax"), small_model(O=O, out="softmax")
    run = train(by_train, batches, 4, optimizer="sgd", lr=0.1, log_every=1, progress=False)
    sgd = optim.SGD(by_hand.params, lr=0.1)
    losses = []
    for step in range(4):
        xb, db, *n = batches[step % 2]
        L, grads = by_hand.bptt(xb, db, loss="cross_entropy", lengths=n[0] if n else None)
        sgd.step(grads)
        losses.append(float(L) / (np.mean(n[0]) if n else T))
    assert params_equal(by_train.params, by_hand.params)
    assert [r["loss"] for r in run.history if "loss" in r] == pytest.approx(losses, rel=1e-12)
    whole = small_model(O=O, out="softmax")
    train(whole, [(x[0], np.where(d[0] < 0, 0, d[0])), (x[1], d[1])], 4, optimizer="sgd", lr=0.1, progress=False)
    assert not params_equal(whole.params, by_train.params)  # the lengths did something
    with pytest.raises(ValueError, match=r"lengths: expected shape \[B\] = \(3,\), got \(2,\)"):
        train(small_model(O=O, out="softmax"), [(x[0], d[1], [1, 2])], 1, progress=False)
    with pytest.raises(ValueError, match=r"task_or_batches\[0\]: lengths: expected one integer per sequence \[B\], "
                                         r"got \[\[4\], \[3, 2\]\]"):
        train(small_model(O=O, out="softmax"), [(x[0], d[1], [[4], [3, 2]])], 1, progress=False)


def test_text_training_and_sampling(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world, hello rnn. " * 30, encoding="utf-8")
    task = gpubptt.tasks.make_task("text", seq_len=10, text=f)
    m = gpubptt.RNN(task.input_size, 8, task.output_size, output_activation="softmax", seed=0, backend="cpu")
    r = train(m, task, 5, batch_size=4, lr=0.01, out=tmp_path / "run", progress=False)
    assert set(r.test) == {"bits_per_char"}
    text = training.sample_text(tmp_path / "run", length=30, prime="hel", seed=1)
    assert text.startswith("hel") and len(text) == 33 and set(text) <= set(task.vocab)
    assert training.sample_text(tmp_path / "run", length=30, prime="hel", seed=1) == text  # seeded
    with pytest.raises(ValueError, match=r"prime: characters not in the model's vocabulary: 'Z'"):
        training.sample_text(tmp_path / "run", prime="Z")
    with pytest.raises(ValueError, match=r"temperature: expected a positive finite number, got 0"):
        training.sample_text(tmp_path / "run", temperature=0)
    train(small_model(), gpubptt.tasks.make_task("sine", seq_len=5, dtype=np.float64), 1, batch_size=2,
          out=tmp_path / "sine", progress=False)
    with pytest.raises(ValueError, match=r"sample: the checkpoint in .* was trained on sine; sampling needs a text"):
        training.sample_text(tmp_path / "sine")
    assert gpubptt.load_model(tmp_path / "run").task.sha256 == task.sha256
    # the training text moved away: the model still loads (and samples from a prime), without its task
    f.rename(tmp_path / "moved.txt")
    with pytest.warns(UserWarning, match=r"load_model: the run's text task cannot be rebuilt \(text: cannot read"):
        loaded = gpubptt.load_model(tmp_path / "run")
    assert loaded.task is None and params_equal(loaded.model.params, m.params)
    assert training.sample_text(tmp_path / "run", length=30, prime="hel", seed=1) == text


def test_progress_bar_and_plot(tmp_path, capsys):
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    r = train(small_model(), task, 20, batch_size=2, out=tmp_path, log_every=5, eval_every=10)
    err = capsys.readouterr().err
    assert "step 20/20 [####################] loss " in err and " |g| " in err and "steps/s" in err
    assert "step 10: test mse " in err and "(baseline mse " in err
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.plot is None and "matplotlib is not installed" in r.note
    else:
        assert r.plot == str(tmp_path / "training.png") and (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_matplotlib_gives_a_note(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    r = train(small_model(), gpubptt.tasks.make_task("sine", seq_len=5, dtype=np.float64), 2, batch_size=2,
              out=tmp_path, progress=False)
    assert r.plot is None and r.note == "no plot: matplotlib is not installed (pip install 'gpubptt[plot]')"


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(steps=0), ValueError, r"steps: expected a positive integer, got 0"),
    (dict(batch_size=-1), ValueError, r"batch_size: expected a positive integer, got -1"),
    (dict(lr=0.0), ValueError, r"lr: expected a finite number > 0, got 0.0"),
    (dict(lr=-1e-3), ValueError, r"lr: expected a finite number > 0, got -0.001"),
    (dict(clip_norm=0), ValueError, r"clip_norm: expected a positive finite number, got 0"),
    (dict(clip_value=-1.0), ValueError, r"clip_value: expected a positive finite number, got -1.0"),
    (dict(clip_step=0.0), ValueError, r"clip_step: expected a positive finite number, got 0.0"),
    (dict(tbptt=(5, 3)), ValueError, r"tbptt: k2 \(steps backpropagated\) must be >= k1 .* got k1=5, k2=3"),
    (dict(tbptt=(0, 3)), ValueError, r"tbptt k1: expected a positive integer, got 0"),
    (dict(tbptt=5), TypeError, r"tbptt: expected a pair \(k1, k2\) or None, got 5"),
    (dict(optimizer="rmsprop"), ValueError, r"optimizer: expected one of 'sgd', 'adam', 'adagrad', got 'rmsprop'"),
    (dict(seed=-1), ValueError, r"seed: expected an integer >= 0, got -1"),
    (dict(eval_every=0), ValueError, r"eval_every: expected a positive integer or None, got 0"),
    (dict(checkpoint_every=-5), ValueError, r"checkpoint_every: expected a positive integer or None, got -5"),
    (dict(loss="hinge"), ValueError, r"loss: the sine task trains with 'squared', got loss='hinge'"),
])
def test_bad_training_arguments(kwargs, error, match):
    args = dict(steps=2, batch_size=2, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        train(small_model(), gpubptt.tasks.make_task("sine", seq_len=5, dtype=np.float64), **args)


def test_bad_model_or_task():
    with pytest.raises(TypeError, match=r"model: expected a gpubptt.RNN, got dict"):
        train({"Wx": 1}, "sine", 2)
    with pytest.raises(ValueError, match=r"task: expected one of 'sine', 'adding', 'copy', 'text', got 'mnist'"):
        train(small_model(), "mnist", 2)
    with pytest.raises(ValueError, match=r"model.output_activation: the copy task needs 'softmax', got 'identity'"):
        train(small_model(D=10, O=10), "copy", 2)
    with pytest.raises(ValueError, match=r"model.input_size: the adding task needs 2, got 1"):
        train(small_model(), "adding", 2)
    with pytest.raises(TypeError, match=r"task: generates float32 data but the model's parameters are float64"):
        train(small_model(), gpubptt.tasks.make_task("sine"), 2)


def test_an_optimizer_made_by_the_caller_is_used_and_keeps_its_settings():
    """train(optimizer=SGD(model.params, ...)) steps that optimizer; lr or optimizer_options beside it
    would be ignored, so they are refused, as is an optimizer made for other parameters."""
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    m = small_model()
    sgd = gpubptt.optim.SGD(m.params, lr=0.05, momentum=0.9)
    before = {k: v.copy() for k, v in m.params.items()}
    assert train(m, task, 2, batch_size=2, optimizer=sgd, progress=False).steps == 2
    assert not params_equal(m.params, before) and int(sgd.state_dict()["steps"]) == 2
    with pytest.raises(ValueError, match=r"lr: set when an Optimizer is made; .*SGD\(\.\.\.\).* got lr=0\.1"):
        train(m, task, 2, batch_size=2, optimizer=sgd, lr=0.1, progress=False)
    with pytest.raises(ValueError, match=r"optimizer_options: set when an Optimizer is made"):
        train(m, task, 2, batch_size=2, optimizer=sgd, optimizer_options={"momentum": 0.5}, progress=False)
    with pytest.raises(ValueError, match=r"optimizer: was made for other parameters"):
        train(small_model(), task, 2, batch_size=2, optimizer=sgd, progress=False)


def test_optimizer_options_are_named_checked_before_training():
    task = gpubptt.tasks.make_task("sine", seq_len=6, dtype=np.float64)
    m = small_model()
    before = {k: v.copy() for k, v in m.params.items()}
    with pytest.raises(ValueError, match=r"optimizer_options: optimizer='adam' takes betas, eps, weight_decay; "
                                         r"got 'momentum'"):
        train(m, task, 2, batch_size=2, optimizer="adam", optimizer_options={"momentum": 0.9}, progress=False)
    with pytest.raises(TypeError, match=r"optimizer_options: expected a dict of keyword arguments \(names as "
                                        r"strings\) or None, got list"):
        train(m, task, 2, batch_size=2, optimizer="sgd", optimizer_options=[("momentum", 0.9)], progress=False)
    with pytest.raises(TypeError, match=r"optimizer_options: .* got the keys \[1\]"):
        train(m, task, 2, batch_size=2, optimizer="sgd", optimizer_options={1: 2}, progress=False)
    # other arguments checked before any step, not at the first use
    for kw, error, match in ((dict(callback=5), TypeError, r"callback: expected a function of \(step, trainer\)"),
                             (dict(progress="no"), TypeError, r"progress: expected True or False, got 'no'"),
                             (dict(resume=1), TypeError, r"resume: expected True or False, got 1")):
        with pytest.raises(error, match=match):
            train(m, task, 2, batch_size=2, **{"progress": False, **kw})
    assert params_equal(m.params, before)
    assert train(m, task, 2, batch_size=2, optimizer="sgd", optimizer_options={"momentum": 0.9, "nesterov": True},
                 progress=False).steps == 2
