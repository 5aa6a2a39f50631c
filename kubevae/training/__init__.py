"""Training: one loop that runs the same on one process, under torchrun and in a PyTorchJob."""
