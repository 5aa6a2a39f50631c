"""The smoke test both backends run against a served model: one V1 and one V2 request."""

from __future__ import annotations

from typing import Any

import numpy as np

from kubevae.client import Client


def smoke_test(url: str, model_name: str, *, host: str | None = None,
               headers: dict[str, str] | None = None) -> dict[str, Any]:
    """V1 encode and V2 reconstruct of one blank-but-for-a-square image; raises on failure."""
    results: dict[str, Any] = {}
    with Client(url, model_name, protocol="v2", host=host, headers=headers) as v2:
        if not v2.ready():
            raise RuntimeError(f"{url}: model {model_name!r} is not ready")
        h, w, c = v2.image_shape()
        image = np.zeros((1, h, w, c), np.uint8)
        image[:, h // 4: h // 2, w // 4: w // 2] = 255
        out = v2.reconstruct(image)
        _expect(out["image"].shape == image.shape, f"V2 reconstruct returned {out['image'].shape}")
        results["V2 reconstruct"] = f"ok, request id {out.request_id}"
    with Client(url, model_name, protocol="v1", host=host, headers=headers) as v1:
        out = v1.encode(image)
        _expect(out["mu"].ndim == 2 and len(out["mu"]) == 1 and np.isfinite(out["mu"]).all(),
                f"V1 encode returned mu of shape {out['mu'].shape}")
        results["V1 encode"] = f"ok, latent size {out['mu'].shape[1]}, request id {out.request_id}"
    return results


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise RuntimeError(f"smoke test failed: {message}")
