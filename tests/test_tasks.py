"""Built-in tasks: what they generate, their baselines (checked against the numbers the docs state),
determinism, and bad input."""
import math

import numpy as np
import pytest

from gpubptt import tasks


def test_sine_is_next_step_prediction_with_the_documented_baseline():
    t = tasks.make_task("sine", seq_len=30)
    x, d = t.batch(np.random.default_rng(0), 5)
    assert x.shape == (30, 5, 1) and d.shape == (30, 5, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[1:], d[:-1])  # d_t = x_{t+1}
    # predicting the last value: E[1 - cos ω] + 2σ², ω ~ U[0.2, 0.6], σ = 0.05
    lo, hi = tasks.Sine.OMEGA
    expected = 1 - (math.sin(hi) - math.sin(lo)) / (hi - lo) + 2 * tasks.Sine.NOISE ** 2
    assert abs(tasks.make_task("sine").baseline["mse"] - expected) < 0.005, (tasks.make_task("sine").baseline, expected)
    assert 0.08 < expected < 0.095  # the "≈ 0.09" of the docs


def test_adding_problem_and_its_one_sixth_baseline():
    t = tasks.make_task("adding", seq_len=10)
    x, d = t.batch(np.random.default_rng(1), 100_000)
    assert x.shape == (10, 100_000, 2) and d.shape == (10, 100_000, 1)
    marks = x[..., 1]
    assert np.all(marks.sum(axis=0) == 2)
    assert np.all(marks[:5].sum(axis=0) == 1) and np.all(marks[5:].sum(axis=0) == 1)  # one in each half
    np.testing.assert_allclose(d[-1, :, 0], (x[..., 0] * marks).sum(axis=0), rtol=1e-6)
    assert np.all(d[:-1] == 0)
    assert t.loss_steps == "last"
    # always answering 1: E[(u1 + u2 - 1)²] = Var(u1 + u2) = 2/12 = 0.1667
    mse = float(np.mean((d[-1, :, 0].astype(np.float64) - 1) ** 2))
    assert abs(mse - 1 / 6) < 0.003, mse
    assert abs(tasks.make_task("adding").baseline["mse"] - 1 / 6) < 0.02  # the fixed test set's value


def test_copy_memory_layout_and_baseline():
    t = tasks.make_task("copy", delay=5)
    assert t.seq_len == 25 and t.input_size == t.output_size == 10 and t.loss == "cross_entropy"
    x, d = t.batch(np.random.default_rng(2), 4)
    tokens = x.argmax(axis=-1)
    assert x.shape == (25, 4, 10) and np.all(x.sum(axis=-1) == 1)  # one-hot
    assert np.all((tokens[:10] >= 1) & (tokens[:10] <= 8))  # data symbols
    assert np.all(tokens[10:14] == 0) and np.all(tokens[14] == 9) and np.all(tokens[15:] == 0)
    np.testing.assert_array_equal(d[-10:], tokens[:10])
    assert np.all(d[:-10] == 0)
    assert t.baseline["cross_entropy"] == pytest.approx(10 * math.log(8) / 25)
    # the memoryless strategy reaches exactly that baseline
    Y = np.zeros((25, 4, 10))
    Y[:-10, :, 0] = 1
    Y[-10:, :, 1:9] = 1 / 8
    assert t.metrics(Y, d)["cross_entropy"] == pytest.approx(t.baseline["cross_entropy"])


def test_text_task(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abcab" * 40, encoding="utf-8")
    t = tasks.make_task("text", seq_len=8, text=f)
    assert t.vocab == "abc" and t.input_size == 3 and t.output_activation == "softmax"
    x, d = t.batch(np.random.default_rng(0), 3)
    assert x.shape == (8, 3, 3) and d.shape == (8, 3)
    np.testing.assert_array_equal(x.argmax(-1)[1:], d[:-1])  # d_t is the character after x_t
    tx, td = t.test_set()
    entropy = -(2 * 0.4 * math.log2(0.4) + 0.2 * math.log2(0.2))  # a, b, c at 0.4, 0.4, 0.2
    assert tx.shape[1] >= 1 and t.baseline["bits_per_char"] == pytest.approx(entropy, abs=0.05)
    assert t.config()["sha256"] and t.config()["vocab"] == "abc"
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + ("abcab" * 40).encode())  # a byte-order mark is no character of the text
    assert tasks.make_task("text", seq_len=8, text=bom).vocab == "abc"


def test_batches_are_determined_by_the_generator_and_the_test_set_is_fixed():
    t = tasks.make_task("adding")
    a = t.batch(np.random.default_rng(5), 3)
    b = t.batch(np.random.default_rng(5), 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(tasks.make_task("adding").test_set()[0], t.test_set()[0])
    c = t.batch(5, 3)  # an integer seed is default_rng(seed)
    np.testing.assert_array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[1], c[1])
    for rng in (-1, 1.5, "5", None):
        with pytest.raises(ValueError, match=r"rng: expected an integer >= 0"):
            t.batch(rng, 3)


@pytest.mark.parametrize("name", ["sine", "adding", "copy"])
def test_metrics_check_the_outputs_shape(name):
    t = tasks.make_task(name)
    x, d = t.batch(0, 3)
    Y = np.full(x.shape[:2] + (t.output_size,), 1.0 / t.output_size)
    assert set(t.metrics(Y, d)) >= {t.metric}
    for bad in (Y[:-1], Y[:, :2], Y[..., :1] if t.output_size > 1 else np.concatenate([Y, Y], -1), Y[0]):
        with pytest.raises(ValueError, match=r"Y: expected the model's outputs \[T,B,O\] = "
                                             rf"\({x.shape[0]}, 3, {t.output_size}\).* got \("):
            t.metrics(bad, d)


@pytest.mark.parametrize("name", ["sine", "adding", "copy"])
def test_metrics_check_the_targets(name):
    """Targets of another shape would broadcast (T = B) or index (negative classes) into a wrong figure."""
    t = tasks.make_task(name, seq_len=3) if name != "copy" else tasks.make_task(name, delay=1)
    x, d = t.batch(0, 3)
    Y = np.full(x.shape[:2] + (t.output_size,), 1.0 / t.output_size)
    if t.loss == "cross_entropy":
        bad = d.copy()
        bad[0, 0] = -1
        cases = [(bad, ValueError, r"d: values must lie in \[0, \d+\], got values in \[-1, "),
                 (d.astype(np.float64), TypeError, r"d: expected an integer dtype, got float64")]
    else:
        cases = [(d[..., 0], ValueError, r"d: expected shape \[T,B,O\] = \(\*, \*, 1\), got \(3, 3\)"),
                 (d.astype(np.int64), TypeError, r"d: expected dtype float32 or float64, got int64")]
    for targets, error, match in cases:
        with pytest.raises(error, match=match):
            t.metrics(Y, targets)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(name="mnist"), ValueError, r"task: expected one of 'sine', 'adding', 'copy', 'text', got 'mnist'"),
    (dict(name="sine", seq_len=0), ValueError, r"seq_len: expected a positive integer, got 0"),
    (dict(name="adding", seq_len=1), ValueError, r"seq_len: the adding problem needs at least 2 steps, got 1"),
    (dict(name="copy", delay=0), ValueError, r"delay: expected a positive integer, got 0"),
    (dict(name="copy", delay=5, seq_len=30), ValueError, r"seq_len: the copy task's length is delay \+ 20 = 25"),
    (dict(name="sine", delay=5), ValueError, r"delay: only the copy task takes a delay"),
    (dict(name="adding", vocab="abc"), ValueError, r"vocab: only the text task has a vocabulary, got vocab='abc'"),
    (dict(name="sine", text="x.txt"), ValueError, r"text: only the text task reads a file"),
    (dict(name="text"), ValueError, r"text: the text task needs a text file \(--text FILE\)"),
    (dict(name="sine", dtype="bogus"), TypeError, r"dtype: expected float32 or float64, got 'bogus'"),
    (dict(name="sine", dtype=None), TypeError, r"dtype: expected float32 or float64, got None"),
    (dict(name="adding", dtype="float16"), TypeError, r"dtype: expected float32 or float64, got 'float16'"),
    (dict(name="copy", dtype=(np.float32, -1)), TypeError, r"dtype: expected float32 or float64, got \("),
    (dict(name="copy", seq_len=30.0), ValueError, r"seq_len: expected a positive integer or None, got 30.0"),
    (dict(name="sine", seq_len=2.0), ValueError, r"seq_len: expected a positive integer, got 2.0"),
])
def test_bad_task_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tasks.make_task(**kwargs)


@pytest.mark.parametrize("content,match", [
    (b"", r"is empty; expected a UTF-8 text file"),
    (b"abc\x00def" * 100, r"is not text \(it holds NUL bytes\)"),
    (b"\xff\xfe\xfa" * 100, r"is not UTF-8 text \(invalid byte at offset 0\)"),
    (b"short text", r"has 10 characters; with seq_len 100 it needs at least 1010"),
])
def test_bad_text_files(tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        tasks.make_task("text", text=f)


def test_missing_text_file_and_directory(tmp_path):
    with pytest.raises(ValueError, match=r"text: cannot read .*nope.txt"):
        tasks.make_task("text", text=tmp_path / "nope.txt")
    with pytest.raises(ValueError, match=r"text: cannot read"):
        tasks.make_task("text", text=tmp_path)
    with pytest.raises(TypeError, match=r"text: expected the path of a text file, got int"):
        tasks.make_task("text", text=3)


@pytest.mark.parametrize("name", ["sine", "adding", "copy"])
def test_metrics_need_the_tasks_length_and_at_least_one_sequence(name):
    """The copy task scores fixed steps: targets of another length gave a wrong figure (accuracy 1.0 on
    3 steps). The others score any length (a longer horizon than trained on). No step or no sequence gave
    NaN."""
    t = tasks.make_task(name)
    T, O = t.seq_len, t.output_size
    x, d = t.batch(0, 2)
    Y = np.full((T, 2, O), 0.1)
    if t.fixed_length:
        with pytest.raises(ValueError, match=rf"d: expected shape \[T,B\] = \({T}, \*\), got \(3, 2\)"):
            t.metrics(Y[:3], d[:3])
    else:
        assert all(math.isfinite(v) for v in t.metrics(Y[:3], d[:3]).values())
    for n, b in ((T, 0),) if t.fixed_length else ((0, 2), (T, 0)):
        with pytest.raises(ValueError, match=rf"d: expected at least one step and one sequence, got shape \({n}, {b}"):
            t.metrics(Y[:n, :b], d[:n, :b])


def test_metrics_check_the_outputs_type_and_leave_them_alone():
    t = tasks.make_task("copy")
    d = np.zeros((30, 2), np.int64)
    Y = np.full((30, 2, 10), 0.1)
    for bad, match in [("abc", r"Y: expected a NumPy or CuPy array, got str"),
                       (Y.tolist(), r"Y: expected a NumPy or CuPy array, got list"),
                       (Y + 1j, r"Y: expected dtype float32 or float64, got complex128"),
                       (np.ones((30, 2, 10), np.int64), r"Y: expected dtype float32 or float64, got int64")]:
        with pytest.raises(TypeError, match=match):
            t.metrics(bad, d)
    Y32 = Y.astype(np.float32)
    before = Y32.copy()
    assert t.metrics(Y32, d)["accuracy"] == 1.0
    np.testing.assert_array_equal(Y32, before)
    Y32[0, 0, 0] = np.nan  # a diverged model's outputs give a NaN figure, which the training log records
    assert math.isnan(t.metrics(Y32, d)["cross_entropy"])


def test_text_vocabulary_is_a_string_of_distinct_characters(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world, this is the text.\n" * 40, encoding="utf-8")
    assert tasks.make_task("text", text=f, vocab=" ,.dehilmorstwx\n").input_size == 16
    with pytest.raises(ValueError, match=r"vocab: expected distinct characters, got repeats of 'lx'"):
        tasks.make_task("text", text=f, vocab=" ,.dehilmorstwxxx\nl")
    for bad in (123, list(" ,.dehilmorstwx\n")):
        with pytest.raises(TypeError, match=rf"vocab: expected a string of distinct characters, got "
                                            rf"{type(bad).__name__}"):
            tasks.make_task("text", text=f, vocab=bad)


def test_text_encode_and_one_hot_refuse_what_is_not_in_the_vocabulary(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abcab" * 40, encoding="utf-8")
    t = tasks.make_task("text", seq_len=8, text=f)
    np.testing.assert_array_equal(t.encode("cab"), [2, 0, 1])
    assert t.one_hot([[2, 0]]).tolist() == [[[0, 0, 1], [1, 0, 0]]]
    with pytest.raises(ValueError, match=r"s: characters not in the vocabulary of 3 characters: 'XZ'"):
        t.encode("aZbX")
    with pytest.raises(TypeError, match=r"s: expected a string, got int"):
        t.encode(5)
    for codes, low, high in (([100], 100, 100), ([0, -1], -1, 0)):
        with pytest.raises(ValueError, match=rf"codes: values must lie in \[0, 2\], got values in \[{low}, {high}\] "
                                             r"\(the vocabulary has 3 characters\)"):
            t.one_hot(codes)
    with pytest.raises(TypeError, match=r"codes: expected an integer dtype, got float64"):
        t.one_hot([1.0])
