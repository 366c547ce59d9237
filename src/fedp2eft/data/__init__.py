"""Datasets, their sources (local folder, $FEDP2EFT_DATA, hub) and the paper's federated partitions."""

from .partition import Client, Federation, FederationSpec, build_federation
from .records import Example, Instruction, LanguageData, TextDataset
from .sources import load_dataset_by_name

__all__ = [
    "Client",
    "Example",
    "Instruction",
    "Federation",
    "FederationSpec",
    "LanguageData",
    "TextDataset",
    "build_federation",
    "load_dataset_by_name",
]
