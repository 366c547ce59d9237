"""Loading the same datasets from the Hugging Face hub (needs internet; offline it fails with a clear error)."""

from __future__ import annotations

from ..errors import UserError
from .records import Example, LanguageData, TextDataset

HUB_SPLITS = {"train": "train", "validation": "dev", "test": "test"}


def _load(repo: str, config: str):
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise UserError(f"the 'datasets' package is needed to read {repo} from the hub") from exc
    try:
        return datasets.load_dataset(repo, config)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one line
        raise UserError(
            f"cannot load {repo}/{config} from the hub ({type(exc).__name__}); "
            "point at a local copy with data.path or $FEDP2EFT_DATA"
        ) from None


def load_hub_dataset(
    name: str,
    repo: str,
    languages: list[str],
    label_names: list[str],
    text_fields: list[str],
    pair_field: str | None = None,
) -> TextDataset:
    """Read one hub config per language and map its ClassLabel names onto ``label_names``."""
    index = {lab: i for i, lab in enumerate(label_names)}
    out: dict[str, LanguageData] = {}
    for lang in languages:
        ds = _load(repo, lang)
        data = LanguageData(lang)
        for hub_split, split in HUB_SPLITS.items():
            if hub_split not in ds:
                continue
            part = ds[hub_split]
            feature = part.features["label"]
            names = getattr(feature, "names", None)
            rows = []
            for rec in part:
                lab = names[rec["label"]] if names else str(rec["label"])
                if lab not in index:
                    raise UserError(f"{repo}/{lang}: unknown label {lab!r}")
                text = " ".join(str(rec[f]).strip() for f in text_fields if rec.get(f))
                pair = str(rec[pair_field]) if pair_field else None
                rows.append(Example(text=text, label=index[lab], language=lang, text_pair=pair))
            data.splits[split] = rows
        if data.size() == 0:
            raise UserError(f"language {lang!r} of {repo} has no rows")
        out[lang] = data
    return TextDataset(name=name, label_names=list(label_names), languages=out, source=f"hub:{repo}")
