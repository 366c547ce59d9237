"""Datasets, their sources (local folder, $FEDP2EFT_DATA, hub) and the paper's federated partitions."""

from .records import Example, LanguageData, TextDataset
from .sources import load_dataset_by_name
from .partition import Client, Federation, FederationSpec, build_federation

__all__ = [
    "Example",
    "LanguageData",
    "TextDataset",
    "load_dataset_by_name",
    "Client",
    "Federation",
    "FederationSpec",
    "build_federation",
]
