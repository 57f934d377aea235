"""CPU capability helper: parsing known /proc/cpuinfo texts (AVX2-only, AVX-512 + bf16, AMX, ARM)."""

from __future__ import annotations

from deephealth import cpu

AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2

processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2
"""

AVX512_BF16 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: sse4_2 avx avx2 avx512f avx512dq avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""

AVX512_NO_BF16 = """model name\t: Intel(R) Xeon(R) Gold 6148
flags\t\t: sse4_2 avx avx2 avx512f avx512dq avx512bw avx512vl
"""

ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16
"""


def test_avx2_only_machine_has_no_avx512_and_no_native_bf16():
    cap = cpu.parse_cpuinfo(AVX2_ONLY)
    assert cap.model == "AMD EPYC 7B12"
    assert cap.avx2 and not cap.avx512
    assert not cap.native_bf16
    assert cap.vector_isa == "AVX2"
    assert cap.describe() == "AVX2, no native bf16 - AMD EPYC 7B12"


def test_avx512_with_bf16_and_amx():
    cap = cpu.parse_cpuinfo(AVX512_BF16)
    assert cap.avx512 and cap.avx512_bf16 and cap.amx_bf16 and cap.native_bf16
    assert cap.describe().startswith("AVX-512, native bf16 (avx512_bf16, amx_bf16) - Intel(R) Xeon(R) Platinum 8481C")


def test_avx512_without_bf16_is_not_native_bf16():
    cap = cpu.parse_cpuinfo(AVX512_NO_BF16)
    assert cap.vector_isa == "AVX-512"
    assert not cap.native_bf16


def test_arm_features_line_and_unknown_text():
    cap = cpu.parse_cpuinfo(ARM)
    assert "asimd" in cap.flags and not cap.avx2 and not cap.native_bf16
    empty = cpu.parse_cpuinfo("")
    assert empty.flags == frozenset() and not empty.native_bf16
    assert empty.describe() == "CPU flags unknown"


def test_missing_cpuinfo_answers_false(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "absent")
    cpu.cpu_capability.cache_clear()
    try:
        assert cpu.has_native_bf16() is False
        assert cpu.cpu_capability().flags == frozenset()
    finally:
        cpu.cpu_capability.cache_clear()


def test_this_machine_agrees_with_its_cpuinfo():
    cpu.cpu_capability.cache_clear()
    flags = cpu.cpu_capability().flags
    assert cpu.has_native_bf16() == ("avx512_bf16" in flags or {"amx_bf16", "amx_tile"} <= flags)
    assert isinstance(cpu.describe(), str) and cpu.describe()
