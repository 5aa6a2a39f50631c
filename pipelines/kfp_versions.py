"""The KFP backend versions a compile can target (docs/kfp-versions.md).

2.16 (Kubeflow 26.03's backend) is the default: its YAML is read by 2.16 and 2.17 API servers.
2.17 adds the run's active deadline and TTLs (dsl.PipelineConfig), fields a 2.16 API server does
not know: it then drops the whole Kubernetes platform spec without an error.
"""

KFP_BACKENDS = ("2.16", "2.17")
DEFAULT_KFP_BACKEND = "2.16"
