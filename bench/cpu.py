"""The CPU a bench ran on, in one line: model, cores this process may use, the flags that decide
which precision is fast (avx2, avx512_vnni, avx512_bf16, amx) and what OpenVINO reports it can run."""

from __future__ import annotations

import os
import platform

FLAGS = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def describe() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and model in ("", "unknown CPU", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    shown = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in FLAGS)
    try:
        import openvino as ov

        caps = " ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as err:  # the bench still runs without OpenVINO's view
        caps = f"unknown ({err})"
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    cap = (
        f"; oneDNN capped at {capped} by ONEDNN_MAX_CPU_ISA (its kernels, the convolutions among them, as on"
        " a CPU with only that; OpenVINO's own kernels still use every flag above)"
        if capped
        else ""
    )
    return f"CPU: {model}, {len(os.sched_getaffinity(0))} cores usable; {shown}; OpenVINO capabilities: {caps}{cap}"


if __name__ == "__main__":
    print(describe())
