"""The CPU description printed beside every speed, and precision auto's choice."""

import torch

from ddpmkit.device import cpu_description, resolve_precision

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni

processor\t: 1
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""

MILAN = ZEN4.replace("model\t\t: 17", "model\t\t: 1").replace(" avx512f avx512bw avx512_bf16 avx512_vnni", "")
SAPPHIRE = ("cpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: avx2 avx512f amx_tile amx_bf16\n")


def test_cpu_description_names_family_model_and_vector_units(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert cpu_description(ZEN4) == "AMD EPYC (family 25 model 17; AVX-512, native bf16), 2 threads"
    assert cpu_description(MILAN) == "AMD EPYC (family 25 model 1; AVX2), 2 threads"
    assert cpu_description(SAPPHIRE) == ("Intel(R) Xeon(R) Platinum 8480+ (family 6 model 143; AMX, native bf16), "
                                         "2 threads")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert cpu_description(MILAN) == "AMD EPYC (family 25 model 1; AVX2), 1 thread"


def test_cpu_description_without_cpuinfo_still_names_something(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    text = cpu_description("")
    assert text.endswith(", 2 threads") and len(text) > len(", 2 threads") + 3


def test_precision_auto_on_cpu_follows_native_bf16(monkeypatch):
    import ddpmkit.device as device

    monkeypatch.setattr(device, "_cpuinfo", lambda: ZEN4)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(device, "_cpuinfo", lambda: MILAN)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
