"""The environment variables gpubptt reads, all read one way: spaces around the value and its case do
not matter, and an empty value is the same as none; any other value must be one of the choices
(ValueError naming the variable otherwise).

GPUBPTT_BACKEND (backend.py), GPUBPTT_CPU_VARIANT, GPUBPTT_REGISTER_GEMM, GPUBPTT_KEEP_FREED_MEMORY
(cpu_variants.py), GPUBPTT_CUDA_VARIANT (cuda_blocks.py).
"""
import os


def env_choice(name, choices, default):
    """The value of the environment variable ``name``, one of ``choices`` (lower case), else ``default``
    when it is unset or empty."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {raw!r}")
    return value
