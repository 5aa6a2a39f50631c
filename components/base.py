"""How every kubevae component is built.

All components run in the project image (the same image runs the PyTorchJob, the Katib trials
and the KServe predictor), which already holds kfp, so KFP does not pip-install it at start.
Component bodies import what they need inside the function: KFP ships the function's source
alone to the pod.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from kfp import dsl

from kubevae import __version__

# The image the components, trials, training pods and predictor run. `make push` builds it;
# set KUBEVAE_IMAGE when compiling to point the pipeline at your registry.
IMAGE = os.environ.get("KUBEVAE_IMAGE", f"ghcr.io/kubevae/kubevae:{__version__}")

# A running step (_KFP_RUNTIME=true) imports kfp.dsl without its decorators and needs only IMAGE
# from here (components.backends.base reads it). Type checkers see the full kfp.dsl.
if TYPE_CHECKING or hasattr(dsl, "component"):
    component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
else:
    component = None
