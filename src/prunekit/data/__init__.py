"""Datasets by name, device-resident loaders with on-device augmentation, splits and scoring data."""

from .datasets import DATASETS, ArrayDataset, Dataset, DatasetInfo, cache_dir, get_info, list_datasets, load_dataset
from .loader import DeviceLoader, class_balanced_indices, random_crop_flip, scoring_batches, split_validation

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "Dataset",
    "DatasetInfo",
    "DeviceLoader",
    "cache_dir",
    "class_balanced_indices",
    "get_info",
    "list_datasets",
    "load_dataset",
    "random_crop_flip",
    "scoring_batches",
    "split_validation",
]
