"""Where the time of the cpu backend's forward + BPTT goes, piece by piece, next to torch-cpu's ops.

    python benchmarks/profile_cpu.py [BxTxDxH,...] [THREADS]      (default: the issue's CPU floor shapes, 1)

Written against the engine and kernels of commit 0a0681f (engine.forward / engine.backward,
kernels/elman_cpu.py's forward_recurrence / backward_recurrence; forward_recurrence_from_input since
5eb2d12, timed with the input product it takes; backward_top, named backward_sequence from afbef91
and taking one sequence until it took many, timed with the products it forms): it wraps those
functions with
timers, so it follows them only as long as their names do. It profiles the gpubptt that Python
imports (printed first): put a checkout first on PYTHONPATH to profile that one.
With one thread every piece runs on the calling thread and is timed by ``time.thread_time`` (that
thread's CPU time), which other processes on a busy machine do not inflate; with more threads the
wall clock is used. Per shape it prints:
- the gpubptt pieces: validation, forward outside the recurrence (x·Wxᵀ, biases, output layer), the
  forward recurrence kernel, loss, the backward recurrence kernel, backward outside it (dWy, dZ·Wy,
  dWs, dWx, dx, bias sums, allocation);
- the same products timed alone (NumPy's BLAS) and the kernel's T per-step [B,H]·[H,H] ``np.dot``
  calls alone (so kernel time less that is its pointwise work and loop overhead);
- torch-cpu's total (same clock) and its top operators from ``torch.profiler`` (wall time with the
  profiler's overhead: read the shares, not the milliseconds).
"""
import gc
import statistics
import sys
import time

import numpy as np
from numba import njit

import gpubptt
from gpubptt import bench, engine, model
from gpubptt.kernels import elman_cpu

THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 1
CLOCK = time.thread_time if THREADS == 1 else time.perf_counter
REPEAT = 7
SHAPES = bench.parse_shapes(sys.argv[1]) if len(sys.argv) > 1 else [
    (64, 100, 64, 256), (128, 50, 128, 512), (32, 200, 32, 128), (256, 100, 16, 64), (1, 1000, 8, 64)]

spent = {}


def timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = CLOCK()
        out = fn(*args, **kwargs)
        spent[name] = spent.get(name, 0.0) + CLOCK() - t0
        return out

    return wrapper


elman_cpu.forward_recurrence = timed("fwd kernel", elman_cpu.forward_recurrence)
elman_cpu.forward_recurrence_from_input = timed("fwd kernel", elman_cpu.forward_recurrence_from_input)
elman_cpu.backward_recurrence = timed("bwd kernel", elman_cpu.backward_recurrence)
elman_cpu.backward_top = timed("bwd kernel", elman_cpu.backward_top)
engine.forward = timed("engine.forward", engine.forward)
engine.backward = timed("engine.backward", engine.backward)
model.loss_and_output_grad = timed("loss", model.loss_and_output_grad)
model._Call.__init__ = timed("validate", model._Call.__init__)


@njit(cache=True)
def per_step_dots(A, W, T):
    out = np.empty_like(A)
    for _ in range(T):
        np.dot(A, W, out)
    return out


def median_ms(fn, repeat=REPEAT):
    fn()
    samples = []
    for _ in range(repeat):
        gc.collect()
        t0 = CLOCK()
        fn()
        samples.append(CLOCK() - t0)
    return statistics.median(samples) * 1e3


def one_bptt(prob):
    spent.clear()
    t0 = CLOCK()
    model.bptt(prob.params, prob.x, prob.d, prob.s0, backend="cpu")
    spent["total"] = CLOCK() - t0
    return dict(spent)


def main():
    from torch.profiler import ProfilerActivity, profile

    with bench.thread_limits(THREADS) as info:
        print(f"gpubptt imported from {gpubptt.__path__[0]}; kernels from {elman_cpu.__file__}")
        print(f"threads: Numba {info['numba']}, BLAS {[b['threads'] for b in info['blas']]}, torch {info.get('torch')}; "
              f"clock {'thread_time' if THREADS == 1 else 'perf_counter'}; median of {REPEAT}")
        for B, T, D, H in SHAPES:
            prob = bench.Problem(B, T, D, H, 1, "tanh", "float32")
            one_bptt(prob)
            one_bptt(prob)
            runs = [one_bptt(prob) for _ in range(REPEAT)]
            med = {k: statistics.median(r[k] for r in runs) * 1e3 for k in runs[0]}
            fk, bk = med["fwd kernel"], med["bwd kernel"]
            pieces = [
                ("validation and copies (model._Call)", med["validate"]),
                ("forward outside the kernel: x·Wxᵀ, biases, output layer", med["engine.forward"] - fk),
                ("forward recurrence kernel (with x·Wxᵀ when from the input)", fk),
                ("loss and dZ", med["loss"]),
                ("backward recurrence kernel (backward_top: with products)", bk),
                ("backward outside the kernel: dWy, dZ·Wy, dWs, dWx, dx, sums", med["engine.backward"] - bk),
            ]
            pieces.append(("the rest (dispatch, s0 packing)", med["total"] - sum(v for _, v in pieces)))
            print(f"\n### B={B} T={T} D={D} H={H}: gpubptt cpu {med['total']:.2f} ms")
            for name, v in pieces:
                print(f"  {name:62s} {v:9.3f} ms {100 * v / med['total']:5.1f}%")
            rng = np.random.default_rng(0)
            X = rng.standard_normal((T * B, D)).astype(np.float32)
            Wx = rng.standard_normal((H, D)).astype(np.float32)
            R = rng.standard_normal((T * B, H)).astype(np.float32)
            Ws = rng.standard_normal((H, H)).astype(np.float32)
            S = rng.standard_normal((B, H)).astype(np.float32)
            gemms = {"x·Wxᵀ": median_ms(lambda: X @ Wx.T), "dWx = dUᵀ·x": median_ms(lambda: R.T @ X),
                     "dx = dU·Wx": median_ms(lambda: R @ Wx), "dWs = Σ dRecᵀ·S": median_ms(lambda: R.T @ R)}
            dots = median_ms(lambda: per_step_dots(S, Ws, T))
            print("  alone: " + ", ".join(f"{k} {v:.3f} ms" for k, v in gemms.items())
                  + f"; T per-step [B,H]·[H,H] np.dot {dots:.3f} ms ({1e3 * dots / T:.2f} µs/step, "
                    f"{2 * B * H * H * T / dots / 1e6:.0f} GFLOP/s)")
            peer = bench._TorchPeer("torch-cpu")
            peer.setup(prob)
            total = median_ms(peer.bptt)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    peer.bptt()
            ops = prof.key_averages()
            all_self = sum(e.self_cpu_time_total for e in ops)
            print(f"  torch-cpu {total:.2f} ms; top operators by self time (profiled, share of the profiled time):")
            for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:7]:
                print(f"    {e.key:52s} {e.count // 3:6d} calls/run {100 * e.self_cpu_time_total / all_self:5.1f}%")


if __name__ == "__main__":
    main()
