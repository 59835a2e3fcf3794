"""The ``gpubptt`` command line (also ``python -m gpubptt``)."""
import argparse
import platform
import sys
from importlib import metadata

from . import __version__


def _version(*dists):
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def _prepare_output_file(option, path):
    """Make sure ``path`` can be written before a command spends minutes on what goes in it: its
    directory is created when missing; an error message naming ``option``, or None."""
    from .checkpoint import check_output_file

    try:
        check_output_file(option, path, create=True)
    except ValueError as e:
        return str(e)
    return None


def cmd_info(args):
    from .backend import requested_backend, resolve
    from .kernels.cuda_compat import device_description

    print(f"gpubptt {__version__}")
    print(f"Python {platform.python_version()}, NumPy {_version('numpy')}, Numba {_version('numba')}, "
          f"numba-cuda {_version('numba-cuda')}, CuPy {_version('cupy-cuda13x', 'cupy-cuda12x', 'cupy')}")
    try:
        requested, source = requested_backend("auto")
        be = resolve("auto", on_device=False)
        print(f"backend: {be.name} ({be.reason})" if requested == "auto" else f"backend: {be.name} ({source})")
    except ValueError as e:  # GPUBPTT_BACKEND names no backend, or one that cannot run here (it says which)
        print(f"backend: unavailable: {e}")
    dev = device_description()
    print(f"GPU: {dev[0]}, compute capability {dev[1][0]}.{dev[1][1]}" if dev else "GPU: none found")
    return 0


def cmd_train(args):
    from .train_cli import run_train

    return run_train(args)


def cmd_sample(args):
    from .train_cli import run_sample

    return run_sample(args)


def cmd_check(args):
    from .params import CELLS
    from .selfcheck import run_check

    cells = CELLS if args.cell == "all" else (args.cell,)
    try:
        ok = run_check(backend=args.backend, dtype=args.dtype, cells=cells, num_layers=args.layers,
                       bidirectional=args.bidirectional)
    except ValueError as e:
        print(f"FAIL: {e}")
        return 1
    return 0 if ok else 1


def cmd_bench(args):
    from .bench import main as bench_main

    return bench_main(args)


def cmd_diagnose(args):
    from .diagnostics import main as diagnose_main

    return diagnose_main(args)


def build_parser():
    from .backend import BACKENDS
    from .params import CELLS

    parser = argparse.ArgumentParser(prog="gpubptt", description="RNNs trained by backpropagation through time.")
    parser.add_argument("--version", action="version", version=f"gpubptt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, the backend auto picks and why, the GPU")
    p.set_defaults(func=cmd_info)
    from .train_cli import add_sample_arguments, add_train_arguments

    p = sub.add_parser("train", help="train an RNN on a built-in task: progress, metrics, plot, checkpoints")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="generate text from a checkpoint of gpubptt train --task text")
    add_sample_arguments(p)
    p.set_defaults(func=cmd_sample)
    from .bench import positive_int_arg

    p = sub.add_parser("check", help="compare a backend's forward + BPTT with the reference")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--cell", default="all", choices=("all",) + CELLS)
    p.add_argument("--layers", type=positive_int_arg, default=1, help="stacked layers (default 1)")
    p.add_argument("--bidirectional", action="store_true", help="run both directions")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("bench", help="time forward + BPTT against the reference, the other backends and PyTorch")
    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench, output_files=("json", "markdown"))
    p = sub.add_parser("diagnose", help="the article's sum for dE_N term by term: vanishing and exploding gradients")
    from .diagnostics import add_arguments as add_diagnose_arguments

    add_diagnose_arguments(p)
    p.set_defaults(func=cmd_diagnose, output_files=("out",))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for attr in getattr(args, "output_files", ()):
        path = getattr(args, attr)
        error = path is not None and _prepare_output_file("--" + attr, path)
        if error:
            print(f"gpubptt {args.command}: error: {error}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except MemoryError as e:  # sizes past this machine's memory (NumPy says how much it wanted)
        print(f"gpubptt {args.command}: error: out of memory: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
