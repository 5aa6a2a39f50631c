"""kubevae: the core library of a Kubeflow pipeline for beta-VAEs.

It holds everything a pipeline step runs (data, split, model, objectives, training, evaluation,
storage, tracking, CLI) and never imports a Kubernetes or Kubeflow SDK: the components around it
do, and they depend on this package, never the other way round.
"""

__version__ = "0.1.0"
