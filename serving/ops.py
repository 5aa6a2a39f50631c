"""The served operations, on batches: validated arrays in, arrays out; no protocol, no HTTP.

A request becomes an `OpRequest` (serving.codec checks it). Requests whose `batch_key` match
are merged by the dynamic batcher and run as one model call by `run_batch`, whose results are
split back per request. Every result is independent of what it was batched with: the random
draws of `score` come from a generator seeded per request, never from a shared one.

Outputs, per operation (the same names on V1, V2 REST and gRPC):
    encode       mu [N, D] FP32, logvar [N, D] FP32
    reconstruct  image [N, H, W, C] UINT8 (mean of p(x|z) at z = posterior mean)
    generate     image [N, H, W, C] UINT8, latent [N, D] FP32
    score        neg_elbo, iwae_nll, recon_nll, kl: [N] FP32, nats per image at beta = 1
    traverse     image [N, S, H, W, C] UINT8, latent [N, S, D] FP32
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kubevae.evaluation.bounds import elbo_terms, iwae_nll
from kubevae.images import to_uint8_hwc, unit_float
from kubevae.model import VAE

# Latents decoded per decoder call (traverse, the IWAE samples of score): bounds peak memory
# (a 64-px decode holds ~130 KB of activations per latent) whatever a request asks for.
MAX_DECODED = 512


@dataclass
class OpRequest:
    """One validated request: images (N x H x W x C, uint8 or float32 in [0, 1]) or latents
    (N x D float32), and the operation's parameters."""

    op: str
    images: np.ndarray | None = None
    latents: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        array = self.images if self.images is not None else self.latents
        return 0 if array is None else len(array)

    @property
    def work(self) -> int:
        """Latents this request decodes (images x k, images x steps, or the image count): the
        unit of the per-request limit and of the batcher's scheduling."""
        factor = {"score": self.params.get("k", 1), "traverse": self.params.get("steps", 1)}
        return self.size * factor.get(self.op, 1)

    def given_images(self) -> np.ndarray:
        """The images of an operation on images (serving.codec checks that they are there)."""
        if self.images is None:
            raise ValueError(f"operation {self.op!r}: the request has no images")
        return self.images

    def given_latents(self) -> np.ndarray:
        """The latents of an operation on latents (serving.codec checks that they are there)."""
        if self.latents is None:
            raise ValueError(f"operation {self.op!r}: the request has no latents")
        return self.latents

    @property
    def batch_key(self) -> Hashable | None:
        """Requests with equal keys may share one model call; None means run alone."""
        if self.op in ("encode", "reconstruct", "generate"):
            return (self.op,)
        if self.op == "score":
            return (self.op, self.params["k"])
        return None


def run_batch(vae: VAE, requests: list[OpRequest]) -> list[dict[str, np.ndarray]]:
    """Run requests that share a batch key as one batch; one result dict per request."""
    op = requests[0].op
    device = vae.input_mean.device
    outputs: Mapping[str, torch.Tensor | np.ndarray]
    with torch.inference_mode():
        if op == "traverse":
            return [traverse(vae, r, device) for r in requests]
        if op == "generate":
            z = torch.from_numpy(np.concatenate([r.given_latents() for r in requests])).to(device)
            outputs = {"image": to_uint8_hwc(vae.mean_image(vae.decode(z))), "latent": z}
        else:
            x = images_to_unit(np.concatenate([unit_float(r.given_images()) for r in requests]), device)
            if op == "encode":
                mu, logvar = vae.encode(x)
                outputs = {"mu": mu, "logvar": logvar}
            elif op == "reconstruct":
                mu, _ = vae.encode(x)
                outputs = {"image": to_uint8_hwc(vae.mean_image(vae.decode(mu)))}
            elif op == "score":
                outputs = score(vae, x, requests)
            else:
                raise ValueError(f"unknown operation {op!r}")
        return split(outputs, [r.size for r in requests])


def score(vae: VAE, x: torch.Tensor, requests: list[OpRequest]) -> dict[str, torch.Tensor]:
    """Negative ELBO at beta = 1 (one posterior sample) and the IWAE-k bound, per image.

    Each request draws from its own generator seeded with its `seed`, so that an image's score
    does not depend on the other requests in the batch. The IWAE part runs per request: its
    k samples already make a batch of k decodes, and measured on CPU one call per request is
    no slower than one call for the whole batch.
    """
    generators = [torch.Generator().manual_seed(r.params["seed"]) for r in requests]
    eps = torch.cat([torch.randn(r.size, vae.config.latent_dim, generator=g)
                     for r, g in zip(requests, generators, strict=True)]).to(x.device)
    recon, kl = elbo_terms(vae, x, eps)
    starts = np.cumsum([0] + [r.size for r in requests])
    iwae = torch.cat([iwae_nll(vae, x[a:b], r.params["k"], g, max_decoded=MAX_DECODED)
                      for r, g, a, b in zip(requests, generators, starts[:-1], starts[1:], strict=True)])
    return {"neg_elbo": recon + kl, "iwae_nll": iwae, "recon_nll": recon, "kl": kl}


def traverse(vae: VAE, request: OpRequest, device: torch.device) -> dict[str, np.ndarray]:
    """Decode S latents per input that differ only in dimension `dim`, set to evenly spaced
    values in [-span, span] (the prior's scale); the other dimensions stay at the posterior
    mean of the input image (or at the given latent)."""
    if request.images is not None:
        z0, _ = vae.encode(images_to_unit(unit_float(request.images), device))
    else:
        z0 = torch.from_numpy(request.given_latents()).to(device)
    steps, dim, span = request.params["steps"], request.params["dim"], request.params["span"]
    z = z0.float().unsqueeze(1).repeat(1, steps, 1)  # N x S x D
    z[:, :, dim] = torch.linspace(-span, span, steps, device=device)
    n, d = z0.shape
    flat = z.reshape(n * steps, d)
    images = np.concatenate([to_uint8_hwc(vae.mean_image(vae.decode(chunk)))
                             for chunk in flat.split(MAX_DECODED)])
    return {"image": images.reshape(n, steps, *images.shape[1:]),
            "latent": z.cpu().numpy().astype(np.float32)}


# -- conversions (pixels: kubevae.images) ----------------------------------------------------
def images_to_unit(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 [0, 1] N x H x W x C -> N x C x H x W tensor on the model's device."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)


def split(outputs: Mapping[str, torch.Tensor | np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    arrays = {name: value.float().cpu().numpy() if isinstance(value, torch.Tensor) else value
              for name, value in outputs.items()}
    results: list[dict[str, np.ndarray]] = []
    start = 0
    for size in sizes:
        results.append({name: array[start:start + size] for name, array in arrays.items()})
        start += size
    return results
