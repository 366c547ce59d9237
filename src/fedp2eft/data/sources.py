"""The labelled-text datasets (registered in ``registry``), and finding one: explicit path, then
``$FEDP2EFT_DATA/<name>``, then the hub.

Built in, with their columns:

- ``masakhanews``: 16 African languages, news topics (7 labels), text = headline + text.
- ``xnli``: 15 languages, natural language inference (3 labels), premise/hypothesis pairs.
  A local copy uses the same ``<lang>/{train,dev,test}.tsv`` layout with columns
  ``premise  hypothesis  label`` (label as a name or its index).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .hub import load_hub_dataset
from .partition import Federation, FederationSpec, build_federation
from .records import TextDataset
from .registry import DatasetSpec, dataset_names, get_dataset, register_dataset, register_unregistered
from .tsv import read_tsv_folder


@dataclass(frozen=True)
class TextSource:
    """Where a labelled-text dataset's rows come from and which columns hold what."""

    repo: str
    languages: tuple[str, ...]
    label_names: tuple[str, ...]
    label_column: str
    text_columns: tuple[str, ...]
    pair_column: str | None
    hub_text_fields: tuple[str, ...]
    hub_pair_field: str | None
    labels_file: bool = False  # a local copy may name its labels in labels.txt (XNLI)


# the [data] keys a labelled-text dataset reads beyond the common ones
TEXT_KEYS = ("clients_per_language", "partition", "train_per_pool", "test_per_pool", "label_column", "text_columns",
             "pair_column", "group_size")


def text_federation(name: str):
    """``load`` of a labelled-text dataset: its rows (``load_dataset_by_name``), partitioned per language
    into Dirichlet-skewed clients (``build_federation``)."""
    def load(d, spec: FederationSpec) -> Federation:
        rows = load_dataset_by_name(name, d.path or None, d.languages or None, d.label_column or None,
                                    d.text_columns or None, d.pair_column or None)
        return build_federation(rows, spec)

    return load


def text_dataset(name: str, source: TextSource | None, group: int = 1) -> DatasetSpec:
    return DatasetSpec(name=name, task="classification", load=text_federation(name), keys=TEXT_KEYS,
                       group_size=group, source=source)


def own_tsv_dataset(name: str) -> DatasetSpec:
    """The user's own labelled-text TSV folder under ``name`` (not registered: read from ``data.path``)."""
    return text_dataset(name, None)


register_unregistered(own_tsv_dataset)


MASAKHANEWS = register_dataset(text_dataset("masakhanews", TextSource(
    repo="masakhane/masakhanews",
    languages=tuple(["amh", "eng", "fra", "hau", "ibo", "lin", "lug", "orm", "pcm", "run", "sna", "som", "swa", "tir",
                     "xho", "yor"]),
    label_names=("business", "entertainment", "health", "politics", "religion", "sports", "technology"),
    label_column="category",
    text_columns=("headline", "text"),
    pair_column=None,
    hub_text_fields=("headline", "text"),
    hub_pair_field=None,
)))
XNLI = register_dataset(text_dataset("xnli", TextSource(
    repo="facebook/xnli",
    languages=tuple(["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]),
    label_names=("entailment", "neutral", "contradiction"),
    label_column="label",
    text_columns=("premise",),
    pair_column="hypothesis",
    hub_text_fields=("premise",),
    hub_pair_field="hypothesis",
    labels_file=True,
), group=3))  # rows of one premise (3 hypotheses) stay together


def resolve_local_path(name: str, path: str | os.PathLike | None) -> Path | None:
    """Return the folder to read, or None when the hub should be tried."""
    if path:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise UserError(f"data path for {name!r} not found: {p}")
        return p
    env = os.environ.get("FEDP2EFT_DATA")
    if env:
        p = Path(env).expanduser() / name
        if p.is_dir():
            return p
    return None


def load_dataset_by_name(
    name: str,
    path: str | os.PathLike | None = None,
    languages: list[str] | None = None,
    label_column: str | None = None,
    text_columns: list[str] | None = None,
    pair_column: str | None = None,
) -> TextDataset:
    """Load ``name`` from ``path``, ``$FEDP2EFT_DATA/name`` or the hub, for ``languages`` (all if None).

    ``label_column``, ``text_columns`` (joined with a space) and ``pair_column`` (a second segment, as
    XNLI's hypothesis) name a local copy's TSV columns; None keeps the dataset's own (for a dataset not
    known here: ``label``, ``text`` and no pair)."""
    info = get_dataset(name).source
    local = resolve_local_path(name, path)
    if local is not None:
        if info is None:
            return read_tsv_folder(
                local, name, languages, label_column or "label", text_columns or ["text"], pair_column=pair_column
            )
        return read_tsv_folder(
            local,
            name,
            languages,
            label_column or info.label_column,
            text_columns or list(info.text_columns),
            pair_column=pair_column or info.pair_column,
            label_names=_labels_file(local, info) if info.labels_file else None,
        )
    if info is None:
        raise UserError(
            f"unknown dataset {name!r} and no local copy: known are {dataset_names()}; "
            "for your own data set data.path to a folder of <lang>/{train,dev,test}.tsv"
        )
    langs = languages or list(info.languages)
    unknown = [lang for lang in langs if lang not in info.languages]
    if unknown:
        raise UserError(f"unknown language(s) {unknown} for {name}; available: {list(info.languages)}")
    return load_hub_dataset(
        name, info.repo, langs, list(info.label_names), list(info.hub_text_fields), info.hub_pair_field
    )


def _labels_file(root: Path, info: TextSource) -> list[str]:
    """XNLI files may carry label names or indices; a labels.txt overrides the default names."""
    f = root / "labels.txt"
    if f.is_file():
        return [x.strip() for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    return list(info.label_names)
