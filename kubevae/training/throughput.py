"""Images per second and model FLOPs utilization (MFU) of the train step.

The FLOPs of one train step (forward and backward of the VAE, the loss in fp32) are counted
once, with torch.utils.flop_counter on a copy of the model, per image; MFU is the achieved
FLOP/s over the peak of the devices in use (kubevae.hardware.peak_flops, with its source).
Counting convolutions and matmuls only is the usual MFU convention: the optimizer's and the
activations' elementwise work is not in the numerator.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from kubevae.hardware import Peak
from kubevae.model import VAE, kl_divergence


def train_step_flops_per_image(vae: VAE, x: torch.Tensor, eps: torch.Tensor) -> float:
    """FLOPs of one image's forward + backward pass, counted on a copy (the model, its
    gradients and the RNG stay untouched). `x` and `eps` are a small batch of real inputs."""
    model = copy.deepcopy(vae)
    with FlopCounterMode(display=False) as counter:
        params, mu, logvar = model(x, eps)
        loss = (-model.log_likelihood(x, params) + kl_divergence(mu.float(), logvar.float()).sum(1)).sum()
        loss.backward()
    return counter.get_total_flops() / len(x)


class Meter:
    """Times the train steps of an epoch; `rates` gives images/s and MFU over all processes."""

    def __init__(self, flops_per_image: float, peak: Peak, world_size: int, device: torch.device):
        self.flops_per_image, self.peak, self.world_size, self.device = \
            flops_per_image, peak, world_size, device
        self._start = time.perf_counter()

    def start(self) -> None:
        self._sync()
        self._start = time.perf_counter()

    def rates(self, images: int) -> dict[str, float]:
        """`images`: the images of all processes since start(). MFU is left out when the
        device's peak is unknown (an unknown GPU) rather than printed as a guess."""
        self._sync()
        per_s = images / max(time.perf_counter() - self._start, 1e-9)
        out = {"images_per_s": per_s}
        if self.peak.flops:
            out["mfu"] = per_s * self.flops_per_image / (self.peak.flops * self.world_size)
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
