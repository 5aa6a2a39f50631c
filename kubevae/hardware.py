"""The machine a process runs on: its device, its precision, its threads and its peak FLOP/s.

Each choice is made here, once, for training, evaluation, serving and the benchmarks alike:

- `pick_device`: auto / cpu / cuda / cuda:N, with a clear error when CUDA is asked for and absent.
- `choose_precision`: bf16 autocast + channels_last where the hardware computes bf16 natively
  (a CUDA GPU with bf16, or a CPU with avx512_bf16 or AMX, read from CPUID, never guessed),
  fp32 channels_last otherwise, fp32 under --deterministic.
- `in_threads`: a loop over blocks on torch's threads, each thread computing on one core.
- `threads_per_process`: the cores this process may use (affinity and cgroup quota, so a pod
  limited to 4 CPUs on a 64-core node runs 4 threads, not 64), shared by the processes on it.
- `peak_flops`: the peak that MFU is measured against, with its source (table below).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

PRECISIONS = ("auto", "fp32", "bf16")


# -- device -----------------------------------------------------------------------------------

def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` is the process's GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU."""
    requested = str(requested)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", requested):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
        return torch.device(requested if ":" in requested else f"cuda:{local_rank}")
    raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {requested!r}")


# -- CPU --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str
    family: int
    flags: frozenset[str]
    mhz: float | None
    mhz_source: str


@functools.cache
def cpu_info() -> CpuInfo:
    """The first processor in /proc/cpuinfo, and its highest clock that the OS tells."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    mhz, source = None, "unknown"
    with contextlib.suppress(OSError, ValueError):
        mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
        source = "cpufreq cpuinfo_max_freq"
    if mhz is None and "cpu MHz" in fields:
        mhz, source = float(fields["cpu MHz"]), "/proc/cpuinfo 'cpu MHz'"
    return CpuInfo(model=fields.get("model name", "unknown CPU"), vendor=fields.get("vendor_id", ""),
                   family=int(fields.get("cpu family", "0") or 0),
                   flags=frozenset(fields.get("flags", "").split()), mhz=mhz, mhz_source=source)


def cpu_bf16() -> str | None:
    """'amx' or 'avx512_bf16' when the CPU computes bf16 natively, else None. Asks CPUID through
    torch (the cpuinfo library), and /proc/cpuinfo's flags where torch cannot tell."""
    amx, avx512_bf16 = (getattr(torch.cpu, name, None) for name in
                        ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    if amx is None or avx512_bf16 is None:
        return bf16_from_flags(cpu_info().flags)
    return "amx" if amx() else "avx512_bf16" if avx512_bf16() else None


def bf16_from_flags(flags: frozenset[str]) -> str | None:
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None


def cores_available() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cores, int(quota)) if quota else cores)


def _cgroup_quota() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2
        return None if limit == "max" else int(limit) / int(period)
    with contextlib.suppress(OSError, ValueError):  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    return None


def threads_per_process(processes: int = 1, cores: int | None = None) -> int:
    """Cores per process when `processes` share this machine's cores (at least one)."""
    return max(1, (cores or cores_available()) // max(1, processes))


def thread_env(processes: int) -> dict[str, str]:
    """The environment for a child that runs alongside `processes - 1` others like it. An
    OMP_NUM_THREADS the user set wins; torchrun passes it on to its workers."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(threads_per_process(processes))}


def configure_threads() -> int:
    """Cap torch's threads at the cores this process has, shared with the other processes of its
    node (LOCAL_WORLD_SIZE under torchrun): torch's default is every core of the machine, even
    in a pod whose CPU limit is a few of them. OMP_NUM_THREADS, or a lower setting, wins."""
    if "OMP_NUM_THREADS" not in os.environ:
        share = threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(min(torch.get_num_threads(), share))
    return torch.get_num_threads()


def in_threads(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """[fn(item) for item in items] on torch's threads, each computing on one core (numpy and
    torch let go of the GIL in their loops): an item a thread, not each product spread over
    the cores, whose results then cross between their caches (measured: docs/split.md).
    Torch's thread count is one setting of the process: while this runs, torch work on other
    threads of the process runs on one thread too. Called inside an item, it runs serially."""
    threads = max(1, torch.get_num_threads())
    if threads == 1:
        return [fn(item) for item in items]
    try:
        torch.set_num_threads(1)
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


# -- precision --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    """How the train step computes: `name` is the matmul/conv precision under autocast. The
    parameters, the optimizer state, the reconstruction log-likelihood and the KL stay fp32."""

    name: str  # "fp32" or "bf16"
    channels_last: bool
    device_type: str
    reason: str

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        kind = "bf16 autocast" if self.name == "bf16" else "fp32"
        return f"{kind}, {layout} ({self.reason})"


def choose_precision(requested: str, device: torch.device, deterministic: bool = False) -> Precision:
    """`auto`: bf16 where the device computes it natively, fp32 otherwise or under
    --deterministic. An explicit fp32 or bf16 is obeyed (bf16 on a CPU without it is emulated:
    correct, but slower)."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    kind = device.type
    native = (torch.cuda.is_bf16_supported() if kind == "cuda" else cpu_bf16() is not None)
    where = (torch.cuda.get_device_name(device) if kind == "cuda"
             else f"this CPU has {cpu_bf16()}" if native else "this CPU has no native bf16")
    if requested == "auto":
        if deterministic:
            return Precision("fp32", True, kind, "auto: --deterministic")
        return Precision("bf16" if native else "fp32", True, kind, f"auto: {where}")
    if requested == "bf16" and kind == "cuda" and not native:
        raise ValueError(f"--precision bf16: {where} has no bf16 support; use fp32 or auto")
    note = "" if requested == "fp32" or native else ", emulated: slower than fp32"
    return Precision(requested, True, kind, f"--precision {requested}{note}")


# -- peak FLOP/s ------------------------------------------------------------------------------

# NVIDIA datasheets, dense (without 2:4 sparsity), TFLOP/s. "fp32" is the CUDA-core figure, "tf32"
# the tensor-core one that cuDNN convolutions use for fp32 by default. First match on the device
# name wins, so the more specific names come first.
# Sources: H200 datasheet (nvidia.com/en-us/data-center/h200), H100 datasheet
# (nvidia.com/en-us/data-center/h100), A100 datasheet, L40S, L4 and A10 datasheets.
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.0}),
    ("H200", {"bf16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # SXM
    ("H100", {"bf16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # SXM
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
)

# CPU: peak = cores x FMA units x (SIMD bits / 32) fp32 lanes x 2 FLOP per FMA x clock.
# The FMA datapath by vendor and family (the vendors' optimization manuals): AMD Zen 2-4 have
# two 256-bit FMA pipes (Zen 4 runs AVX-512 as two 256-bit halves), Zen 5 two 512-bit ones;
# Intel cores with AVX-512 are taken to have two 512-bit FMA units (Xeon Gold/Platinum; some
# Silver/Bronze parts have one), Intel cores without it two 256-bit ones.
# bf16: avx512_bf16's VDPBF16PS does 2 products per fp32 lane, so twice the fp32 rate; AMX does
# 1024 bf16 FLOP per cycle per core (Intel's AMX documentation). Emulated bf16 computes in fp32.
AMX_BF16_FLOP_PER_CYCLE = 1024


@dataclass(frozen=True)
class Peak:
    flops: float | None  # per second, for the whole process; None when unknown
    device: str
    source: str


def cpu_fp32_flop_per_cycle(info: CpuInfo | None = None) -> tuple[int, str]:
    info = info or cpu_info()
    if info.vendor == "AuthenticAMD" and info.family >= 0x17:
        bits = 512 if info.family >= 0x1A else 256
        units, why = 2, f"AMD family {info.family:#x}: 2 x {bits}-bit FMA"
    else:
        bits = 512 if "avx512f" in info.flags else 256 if "avx2" in info.flags else 128
        units = 2 if "fma" in info.flags else 1
        why = f"{info.vendor or 'CPU'} with {bits}-bit SIMD: {units} x {bits}-bit FMA"
    return units * bits // 32 * 2, why


def cpu_peak(precision: str, threads: int | None = None, info: CpuInfo | None = None) -> Peak:
    """`info` stands for another CPU (tests); by default this one, whose bf16 CPUID tells."""
    native = cpu_bf16() if info is None else bf16_from_flags(info.flags)
    info = info or cpu_info()
    cores = min(threads or torch.get_num_threads(), cores_available())
    fp32_per_cycle, why = cpu_fp32_flop_per_cycle(info)
    per_cycle, what = fp32_per_cycle, f"{fp32_per_cycle} fp32 FLOP/cycle ({why})"
    if precision == "bf16" and native == "amx":
        per_cycle, what = AMX_BF16_FLOP_PER_CYCLE, f"{AMX_BF16_FLOP_PER_CYCLE} bf16 FLOP/cycle (AMX)"
    elif precision == "bf16" and native == "avx512_bf16":
        per_cycle, what = 2 * fp32_per_cycle, f"{2 * fp32_per_cycle} bf16 FLOP/cycle (avx512_bf16, {why})"
    note = "; bf16 is emulated in fp32 on this CPU" if precision == "bf16" and not native else ""
    if info.mhz is None:
        return Peak(None, info.model, "CPU clock unknown")
    flops = cores * per_cycle * info.mhz * 1e6
    return Peak(flops, f"{info.model} x {cores} cores",
                f"{cores} cores x {what} x {info.mhz / 1000:.2f} GHz ({info.mhz_source}){note}")


def gpu_peak(precision: str, device: torch.device) -> Peak:
    name = torch.cuda.get_device_name(device)
    key = precision
    if precision == "fp32" and torch.backends.cudnn.allow_tf32:
        key = "tf32"
    for pattern, table in GPU_PEAK_TFLOPS:
        if pattern in name:
            return Peak(table[key] * 1e12, name, f"NVIDIA datasheet, {pattern} {key} dense "
                                                 f"{table[key]:g} TFLOP/s")
    return Peak(None, name, f"{name} is not in kubevae.hardware.GPU_PEAK_TFLOPS")


def peak_flops(device: torch.device, precision: str, threads: int | None = None) -> Peak:
    """The peak FLOP/s of `device` for the precision in use, with where the figure comes from."""
    return gpu_peak(precision, device) if device.type == "cuda" else cpu_peak(precision, threads)
