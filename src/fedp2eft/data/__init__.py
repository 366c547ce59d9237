"""Datasets by name (``registry``: each declares its reader, task, partition and keys), their sources (local
folder, $FEDP2EFT_DATA, hub) and the paper's federated partitions."""

from . import aya  # noqa: F401  (registers "aya")
from .partition import Client, Federation, FederationSpec, build_federation
from .records import Example, Instruction, LanguageData, TextDataset
from .registry import DatasetSpec, dataset_names, get_dataset, register_dataset, unregister_dataset
from .sources import load_dataset_by_name

__all__ = [
    "Client",
    "DatasetSpec",
    "Example",
    "Instruction",
    "Federation",
    "FederationSpec",
    "LanguageData",
    "TextDataset",
    "build_federation",
    "dataset_names",
    "get_dataset",
    "load_dataset_by_name",
    "register_dataset",
    "unregister_dataset",
]
