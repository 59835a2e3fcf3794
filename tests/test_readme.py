"""The README's Python examples run as written (in order, sharing one namespace)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(monkeypatch):
    monkeypatch.setenv("GPUBPTT_BACKEND", "cpu")  # the examples use backend="auto"; keep this tier on the CPU
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python examples"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["grads"]["Ws_l0"].shape[0] == 4 * 16  # the last example: a 2-layer bidirectional LSTM
