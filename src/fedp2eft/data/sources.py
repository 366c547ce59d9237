"""Finding a dataset: explicit path, then ``$FEDP2EFT_DATA/<name>``, then the hub.

Known datasets and their columns:

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
from .records import TextDataset
from .tsv import read_tsv_folder


@dataclass(frozen=True)
class DatasetInfo:
    repo: str
    languages: tuple[str, ...]
    label_names: tuple[str, ...]
    label_column: str
    text_columns: tuple[str, ...]
    pair_column: str | None
    hub_text_fields: tuple[str, ...]
    hub_pair_field: str | None
    group_size: int = 1  # consecutive rows sharing one premise, kept whole by the pool split (XNLI: 3)


KNOWN: dict[str, DatasetInfo] = {
    "masakhanews": DatasetInfo(
        repo="masakhane/masakhanews",
        languages=tuple(["amh", "eng", "fra", "hau", "ibo", "lin", "lug", "orm", "pcm", "run", "sna", "som", "swa", "tir", "xho", "yor"]),
        label_names=("business", "entertainment", "health", "politics", "religion", "sports", "technology"),
        label_column="category",
        text_columns=("headline", "text"),
        pair_column=None,
        hub_text_fields=("headline", "text"),
        hub_pair_field=None,
    ),
    "xnli": DatasetInfo(
        repo="facebook/xnli",
        languages=tuple(["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]),
        label_names=("entailment", "neutral", "contradiction"),
        label_column="label",
        text_columns=("premise",),
        pair_column="hypothesis",
        hub_text_fields=("premise",),
        hub_pair_field="hypothesis",
        group_size=3,
    ),
}


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
    info = KNOWN.get(name)
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
            label_names=_xnli_labels(local, info) if name == "xnli" else None,
        )
    if info is None:
        raise UserError(
            f"unknown dataset {name!r} and no local copy: known are {sorted(KNOWN)}; "
            "for your own data set data.path to a folder of <lang>/{train,dev,test}.tsv"
        )
    langs = languages or list(info.languages)
    unknown = [lang for lang in langs if lang not in info.languages]
    if unknown:
        raise UserError(f"unknown language(s) {unknown} for {name}; available: {list(info.languages)}")
    return load_hub_dataset(
        name, info.repo, langs, list(info.label_names), list(info.hub_text_fields), info.hub_pair_field
    )


def group_size(name: str) -> int:
    """Rows per premise group of a dataset (1: rows are independent)."""
    info = KNOWN.get(name)
    return info.group_size if info is not None else 1


def _xnli_labels(root: Path, info: DatasetInfo) -> list[str]:
    """XNLI files may carry label names or indices; a labels.txt overrides the default names."""
    f = root / "labels.txt"
    if f.is_file():
        return [x.strip() for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    return list(info.label_names)
