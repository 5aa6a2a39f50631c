"""The MLflow pyfunc flavor of a kubevae model, logged as "models from code".

MLflow stores this file and the model folder (safetensors + config.json) and runs the file to
load the model: nothing is pickled, so loading a registered model never unpickles anything.
`predict` takes uint8 images N x H x W x C and returns the posterior means N x D.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Schema, TensorSpec

from kubevae.model import VAE, load_model

ARTIFACT_KEY = "model_dir"


class VAEPyfunc(PythonModel):
    def load_context(self, context):
        self.vae = load_model(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        images = torch.as_tensor(np.asarray(model_input, dtype=np.uint8))
        with torch.inference_mode():
            mu, _ = self.vae.encode(VAE.to_unit(images))
        return mu.numpy()


def signature(image_shape: tuple[int, int, int], latent_dim: int) -> ModelSignature:
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, latent_dim))]))


def log_pyfunc(model_dir: str | Path, image_shape: tuple[int, int, int], latent_dim: int,
               name: str = "model") -> Any:
    """Log the model folder as a pyfunc model of the active run; returns the ModelInfo."""
    import kubevae

    with warnings.catch_warnings():
        # MLflow nags about type hints and input examples; the explicit signature covers both.
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        return _log(model_dir, image_shape, latent_dim, name, kubevae)


def _log(model_dir, image_shape, latent_dim, name, kubevae):
    return mlflow.pyfunc.log_model(
        name=name, python_model=str(Path(__file__)), artifacts={ARTIFACT_KEY: str(model_dir)},
        signature=signature(image_shape, latent_dim), code_paths=[str(Path(kubevae.__file__).parent)],
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "safetensors", "numpy",
                          f"mlflow=={mlflow.__version__}"])


mlflow.models.set_model(VAEPyfunc())
