"""Helpers shared by the benchmarks: where results go, and what machine produced them."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_model() -> tuple[str, list[str]]:
    """(CPU model name, the ISA flags of ISA_FLAGS it has) from /proc/cpuinfo; ('', []) elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), []
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return name, [f for f in ISA_FLAGS if f in flags]


def machine() -> dict:
    """What produced a result: a ratio measured here may not hold on a CPU with other kernels
    (AMX / AVX-512 / VNNI decide which oneDNN and matmul paths torch runs)."""
    import torch

    name, isa = cpu_model()
    return {"cpus": os.cpu_count(), "cpu_model": name, "isa": isa, "torch_cpu_capability":
            torch.backends.cpu.get_cpu_capability(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2))
    print(json.dumps(result, indent=2))
    return path
