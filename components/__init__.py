"""KFP components (thin wrappers over kubevae) and the local and Kubernetes backends of the
tune, train and deploy steps. Dependencies point inward: this package imports kubevae, never
the other way round."""
