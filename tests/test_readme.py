"""The README's Python examples run as written (in order, sharing one namespace), and every gpubptt.* name it
writes resolves after a plain import."""
import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUBPTT_BACKEND", "cpu")  # the examples use backend="auto"; keep this tier on the CPU
    monkeypatch.chdir(tmp_path)  # where the training example writes runs/
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python examples"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["grads"]["Ws_l0"].shape[0] == 4 * 16  # the last example: a 2-layer bidirectional LSTM
    assert namespace["meta"]["step"] == 20 and (tmp_path / "runs" / "sine-py" / "checkpoint.npz").is_file()


# Modules the README names to run (python -m) or as a place in the layout, not as attributes.
NOT_ATTRIBUTES = {"gpubptt.compilecheck", "gpubptt.kernels"}


def test_every_name_the_readme_writes_resolves_after_import_gpubptt():
    """`gpubptt.diagnostics.contributions` and the like, as the README writes them, work after a plain
    ``import gpubptt`` (in a fresh interpreter: this one has imported every submodule already)."""
    names = sorted(set(re.findall(r"\bgpubptt(?:\.[A-Za-z_]\w*)+", README.read_text())) - NOT_ATTRIBUTES)
    assert "gpubptt.diagnostics.contributions" in names, names
    script = ("import gpubptt, sys\n"
              "def has(name):\n"
              "    obj = gpubptt\n"
              "    for part in name.split('.')[1:]:\n"
              "        if not hasattr(obj, part):\n"
              "            return False\n"
              "        obj = getattr(obj, part)\n"
              "    return True\n"
              "print([n for n in sys.argv[1:] if not has(n)])\n")
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
