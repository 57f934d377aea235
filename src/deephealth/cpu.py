"""What this CPU can do, for choosing bf16 and for labelling benchmark figures.

Machines of the same kind differ: some have AVX-512 with native bf16 arithmetic (AVX512_BF16, or
Intel AMX), others only AVX2, where bf16 autocast is emulated and 10-15x slower than float32.
Flags are read from ``/proc/cpuinfo`` (Linux); elsewhere the capability is reported as unknown.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty set if unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX-BF16)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_capability() -> str:
    """One line naming the vector extensions that matter for speed, e.g. ``AVX-512 + native bf16``.

    Returns:
        ``"AVX-512 + native bf16"``, ``"AVX-512"``, ``"AVX2"``, ``"SSE4"`` or
        ``"unknown (<machine>)"`` when the flags cannot be read.
    """
    flags = cpu_flags()
    if not flags:
        return f"unknown ({platform.machine()})"
    if "avx512f" in flags:
        return "AVX-512 + native bf16" if has_native_bf16() else "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return "SSE4" if "sse4_2" in flags else platform.machine()
