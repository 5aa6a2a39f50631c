"""kubevae.hardware: device choice, precision choice, threads, the peak table; the FLOP counter."""

import os

import numpy as np
import pytest
import torch

from kubevae import hardware
from kubevae.config import ModelConfig
from kubevae.hardware import CpuInfo, Peak
from kubevae.model import VAE
from kubevae.training.throughput import Meter, train_step_flops_per_image

CPU = torch.device("cpu")


def test_pick_device_is_the_one_choice_and_says_what_is_wrong():
    assert hardware.pick_device("cpu") == CPU
    assert hardware.pick_device("auto") == (torch.device("cuda:0") if torch.cuda.is_available() else CPU)
    with pytest.raises(ValueError, match="--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"):
        hardware.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:1: CUDA is not available"):
            hardware.pick_device("cuda:1")


def test_training_evaluation_and_serving_share_the_device_choice():
    from kubevae.training import distributed
    from serving import model as serving_model
    assert distributed.pick_device is hardware.pick_device
    assert serving_model.pick_device is hardware.pick_device


def test_cpu_bf16_detection_agrees_with_the_kernels_flags():
    """torch asks CPUID; the kernel's /proc/cpuinfo flags must tell the same story."""
    flags = hardware.cpu_info().flags
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this machine")
    assert hardware.cpu_bf16() == hardware.bf16_from_flags(flags)


@pytest.mark.parametrize("native, deterministic, requested, expected", [
    ("avx512_bf16", False, "auto", "bf16"),
    ("amx", False, "auto", "bf16"),
    (None, False, "auto", "fp32"),
    ("avx512_bf16", True, "auto", "fp32"),   # --deterministic: fp32
    ("avx512_bf16", False, "fp32", "fp32"),  # the flag overrides
    (None, False, "bf16", "bf16"),           # obeyed, emulated
])
def test_precision_choice_on_cpu(monkeypatch, native, deterministic, requested, expected):
    monkeypatch.setattr(hardware, "cpu_bf16", lambda: native)
    p = hardware.choose_precision(requested, CPU, deterministic)
    assert (p.name, p.channels_last, p.memory_format) == (expected, True, torch.channels_last)
    assert (p.autocast().fast_dtype == torch.bfloat16) if expected == "bf16" else \
        not isinstance(p.autocast(), torch.autocast)
    if requested == "bf16" and native is None:
        assert "emulated" in p.describe()


def test_precision_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="--precision: expected one of auto, fp32, bf16, got 'fp16'"):
        hardware.choose_precision("fp16", CPU)


def test_cpu_peak_is_cores_times_simd_times_fma_times_clock():
    zen4 = CpuInfo("AMD EPYC 9004", "AuthenticAMD", 0x19, frozenset({"avx512f", "avx512_bf16", "fma"}),
                   2400.0, "test")
    fp32 = hardware.cpu_peak("fp32", threads=1, info=zen4)
    assert fp32.flops == pytest.approx(1 * 2 * (256 // 32) * 2 * 2.4e9)  # 2 x 256-bit FMA pipes
    assert hardware.cpu_peak("bf16", threads=1, info=zen4).flops == pytest.approx(2 * fp32.flops)
    spr = CpuInfo("Intel Xeon Platinum 8480", "GenuineIntel", 6,
                  frozenset({"avx512f", "avx512_bf16", "amx_bf16", "fma"}), 2000.0, "test")
    assert hardware.cpu_peak("fp32", threads=1, info=spr).flops == pytest.approx(2 * 16 * 2 * 2e9)
    assert hardware.cpu_peak("bf16", threads=1, info=spr).flops == pytest.approx(1024 * 2e9)
    old = CpuInfo("old", "GenuineIntel", 6, frozenset({"avx2", "fma"}), 3000.0, "test")
    emulated = hardware.cpu_peak("bf16", threads=1, info=old)
    assert emulated.flops == hardware.cpu_peak("fp32", threads=1, info=old).flops
    assert "emulated" in emulated.source and "3.00 GHz" in emulated.source
    # The process's cores: never more than it has.
    many = hardware.cpu_peak("fp32", threads=10_000, info=old)
    assert many.flops == pytest.approx(hardware.cores_available() * 2 * 8 * 2 * 3e9)


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H200", "bf16", 989.5), ("NVIDIA H100 80GB HBM3", "bf16", 989.5),
    ("NVIDIA H100 PCIe", "bf16", 756.5), ("NVIDIA H200 NVL", "bf16", 835.5),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),  # not the A10's row
    ("NVIDIA A10", "bf16", 125.0), ("NVIDIA L40S", "bf16", 362.0), ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA H100 80GB HBM3", "fp32", 494.5),  # cuDNN runs fp32 convolutions as TF32
])
def test_gpu_peak_comes_from_the_datasheet_table(monkeypatch, name, precision, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    peak = hardware.gpu_peak(precision, torch.device("cuda"))
    assert peak.flops == pytest.approx(tflops * 1e12) and "datasheet" in peak.source


def test_unknown_gpu_has_no_peak_and_no_mfu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    peak = hardware.gpu_peak("bf16", torch.device("cuda"))
    assert peak.flops is None
    assert "mfu" not in Meter(1e6, peak, 1, CPU).rates(10)


def test_threads_per_process_share_the_cores(monkeypatch):
    assert hardware.threads_per_process(4, cores=16) == 4
    assert hardware.threads_per_process(3, cores=2) == 1
    assert 1 <= hardware.cores_available() <= os.cpu_count()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert hardware.thread_env(1) == {"OMP_NUM_THREADS": str(hardware.cores_available())}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.thread_env(8) == {}  # the user's setting wins


def test_flops_are_counted_per_image_and_leave_the_model_alone():
    torch.manual_seed(0)
    vae = VAE(ModelConfig(latent_dim=4))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    x, eps = torch.rand(4, 1, 64, 64), torch.zeros(4, 4)
    rng = torch.get_rng_state()
    per_image = train_step_flops_per_image(vae, x, eps)
    assert per_image == pytest.approx(train_step_flops_per_image(vae, x[:2], eps[:2]))
    assert all(p.grad is None for p in vae.parameters())
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    # Backward costs about twice the forward (no input gradient for the first layer).
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae(x[:1], eps[:1])
    assert 2.5 < per_image / counter.get_total_flops() <= 3.0


def test_mfu_is_achieved_flops_over_the_peak_of_all_processes():
    meter = Meter(flops_per_image=1e9, peak=Peak(1e12, "x", "test"), world_size=2, device=CPU)
    meter._start -= 1.0  # one second ago
    rates = meter.rates(images=100)
    assert rates["images_per_s"] == pytest.approx(100, rel=0.05)
    assert rates["mfu"] == pytest.approx(100 * 1e9 / 2e12, rel=0.05)


def test_in_threads_runs_each_item_once_on_one_core_each_and_restores_the_threads():
    """The result is the serial loop's, in order; inside, torch and the BLAS pool compute on
    one thread (a pool per thread would put threads x cores on the cores); after, torch's
    thread count is what it was, also when an item raises; nested calls run serially."""
    from threadpoolctl import threadpool_info

    from kubevae.hardware import in_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[tuple[int, int, list[int]]] = []

        def work(item: int) -> int:
            blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
            seen.append((item, torch.get_num_threads(), blas))
            inner = in_threads(lambda x: x + 1, [item])    # nested: one thread already
            return (np.arange(50, dtype=np.float64) @ np.ones(50)) * item + inner[0]

        assert in_threads(work, range(7)) == [1225.0 * i + i + 1 for i in range(7)]
        assert sorted(item for item, _, _ in seen) == list(range(7))
        assert all(threads == 1 and all(b == 1 for b in blas) for _, threads, blas in seen)
        assert torch.get_num_threads() == 2

        def fails(item: int) -> int:
            raise ValueError(f"item {item}")

        with pytest.raises(ValueError, match="item"):
            in_threads(fails, [1, 2])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
