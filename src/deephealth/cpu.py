"""What the CPU can do: vector extensions and native bf16, read from the Linux CPU flags.

Timings and the last bits of float results differ between machines of the same kind (ONNX Runtime
and PyTorch pick AVX-512 or AVX2 kernels at run time), so benchmarks print :func:`describe` and
training uses :func:`has_native_bf16` to decide whether bf16 autocast is worth it (``bf16: auto``).

The flags come from ``/proc/cpuinfo`` (Linux); names are the kernel's (``avx2``, ``avx512f``,
``avx512_bf16``, ``amx_bf16``...). Elsewhere, or when the file cannot be read, no flag is known and
every query answers ``False`` / ``"unknown"``: nothing here raises.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuCapability:
    """The CPU's model name and instruction set flags, as the kernel names them.

    ``flags`` is a frozenset of lower-case flag names (empty when unknown). ``model`` is the
    "model name" line (or ``platform.processor()``), "" when unknown.
    """

    model: str
    flags: frozenset[str]

    @property
    def avx2(self) -> bool:
        """AVX2 (256-bit integer and FMA vectors)."""
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        """AVX-512 Foundation (512-bit vectors)."""
        return "avx512f" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        """AVX-512 BF16 (``vdpbf16ps``: bf16 dot products in AVX-512 registers)."""
        return "avx512_bf16" in self.flags

    @property
    def amx_bf16(self) -> bool:
        """Intel AMX tiles with bf16 (``amx_bf16`` and ``amx_tile``)."""
        return "amx_bf16" in self.flags and "amx_tile" in self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX-512 BF16 or AMX-BF16) rather than emulated in fp32."""
        return self.avx512_bf16 or self.amx_bf16

    @property
    def vector_isa(self) -> str:
        """Widest x86 vector extension: ``"AVX-512"``, ``"AVX2"``, ``"AVX"``, ``"SSE4.2"`` or the
        machine name (e.g. ``"aarch64"``) when none of these is present."""
        for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2")):
            if flag in self.flags:
                return name
        return platform.machine() or "unknown"

    def describe(self) -> str:
        """One line for benchmark and report headers, e.g.
        ``"AVX-512, native bf16 (avx512_bf16, amx_bf16) - Intel(R) Xeon(R) ..."``."""
        if not self.flags:
            isa = "CPU flags unknown"
        else:
            kinds = [k for k, ok in (("avx512_bf16", self.avx512_bf16), ("amx_bf16", self.amx_bf16)) if ok]
            bf16 = f"native bf16 ({', '.join(kinds)})" if kinds else "no native bf16"
            isa = f"{self.vector_isa}, {bf16}"
        return f"{isa} - {self.model}" if self.model else isa


def parse_cpuinfo(text: str) -> CpuCapability:
    """Parse the text of ``/proc/cpuinfo`` (first processor's ``flags``/``Features`` and model name).

    Args:
        text: the file's content. x86 lists extensions under ``flags``, ARM under ``Features``.
    Returns:
        A :class:`CpuCapability`; empty flags when no such line exists.
    """
    flags: frozenset[str] = frozenset()
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = frozenset(value.lower().split())
        elif key == "model name" and not model:
            model = " ".join(value.split())
    return CpuCapability(model=model, flags=flags)


@functools.lru_cache(maxsize=1)
def cpu_capability() -> CpuCapability:
    """This machine's CPU capability, read once from ``/proc/cpuinfo``.

    Returns:
        A :class:`CpuCapability` (flags empty when ``/proc/cpuinfo`` is missing or unreadable, e.g.
        on macOS or Windows; ``model`` then falls back to ``platform.processor()``).
    """
    try:
        cap = parse_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        log.debug("cannot read %s: %s", CPUINFO, exc)
        cap = CpuCapability(model="", flags=frozenset())
    if not cap.model:
        cap = CpuCapability(model=platform.processor() or "", flags=cap.flags)
    return cap


def has_native_bf16() -> bool:
    """True when this CPU computes in bf16 natively (AVX-512 BF16 or AMX-BF16).

    Without it, PyTorch's CPU bf16 autocast is emulated and usually slower than fp32, so
    ``bf16: auto`` in training should mean fp32 there.
    """
    return cpu_capability().native_bf16


def describe() -> str:
    """One line naming this machine's vector extension and bf16 support (for benchmark headers)."""
    return cpu_capability().describe()
