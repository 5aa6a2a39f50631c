"""Datasets: the canonical on-disk folder every step reads and writes, and built-in data."""

from kubevae.data.dataset import Dataset, load_splits, write_dataset

__all__ = ["Dataset", "load_splits", "write_dataset"]
