"""Datasets: the prepared on-disk layout (``paired``) and the dataset registry / download code."""
from .paired import PairedImages, PatchSampler, TrainPatches, pair_paths, read_meta

__all__ = ["PairedImages", "PatchSampler", "TrainPatches", "pair_paths", "read_meta"]
