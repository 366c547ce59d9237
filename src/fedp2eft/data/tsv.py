"""Reader for folders of ``<lang>/{train,dev,test}.tsv`` (the MasakhaNEWS authors' layout).

Rows are parsed with a real CSV parser so quoted fields may hold tabs and newlines.
A missing split file is simply absent; a missing folder, an empty file (or a header without
rows), a malformed row, a row without text, an unknown label or a language without any rows is a
:class:`~fedp2eft.errors.UserError` naming the file (and line).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from ..errors import UserError
from .records import Example, LanguageData, TextDataset

SPLITS = ("train", "dev", "test")


def _read_rows(
    path: Path, label_column: str, text_columns: list[str], pair_column: str | None = None
) -> list[tuple[str, str, str | None]]:
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="\t")
            try:
                header = next(reader)
            except StopIteration:
                raise UserError(f"{path}: empty file (no header row); remove it or fill it") from None
            wanted = [label_column, *text_columns] + ([pair_column] if pair_column else [])
            missing = [c for c in wanted if c not in header]
            if missing:
                raise UserError(f"{path}: header lacks column(s) {missing}; header is {header}")
            li = header.index(label_column)
            tis = [header.index(c) for c in text_columns]
            pi = header.index(pair_column) if pair_column else None
            rows = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise UserError(
                        f"{path}: malformed row at line {reader.line_num}: "
                        f"{len(row)} fields, expected {len(header)}"
                    )
                text = " ".join(row[i].strip() for i in tis if row[i].strip())
                if not text:
                    raise UserError(f"{path}: row at line {reader.line_num} has no text in {text_columns}")
                pair = row[pi].strip() if pi is not None else None
                rows.append((row[li].strip(), text, pair))
            if not rows:
                raise UserError(f"{path}: a header and no rows; remove the file or fill it")
            return rows
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: cannot parse as TSV ({exc})") from None


def _label_names(root: Path, languages: list[str]) -> list[str] | None:
    names: set[str] = set()
    found = False
    for candidate in [root / "labels.txt", *[root / lang / "labels.txt" for lang in languages]]:
        if candidate.is_file():
            found = True
            names.update(x.strip() for x in candidate.read_text(encoding="utf-8").splitlines() if x.strip())
    return sorted(names) if found else None


def available_languages(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / f"{s}.tsv").is_file() for s in SPLITS))


def read_tsv_folder(
    root: str | Path,
    name: str,
    languages: list[str] | None = None,
    label_column: str = "category",
    text_columns: tuple[str, ...] | list[str] = ("headline", "text"),
    pair_column: str | None = None,
    label_names: list[str] | None = None,
) -> TextDataset:
    """Read ``root/<lang>/{train,dev,test}.tsv`` for the given languages (all if None)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    present = available_languages(root)
    if languages is None:
        languages = present
    unknown = [lang for lang in languages if lang not in present]
    if unknown:
        raise UserError(f"unknown language(s) {unknown} for {name} at {root}; available: {present}")
    raw: dict[str, dict[str, list[tuple[str, str, str | None]]]] = {}
    for lang in languages:
        raw[lang] = {}
        for split in SPLITS:
            path = root / lang / f"{split}.tsv"
            if path.is_file():
                raw[lang][split] = _read_rows(path, label_column, list(text_columns), pair_column)
        if sum(len(v) for v in raw[lang].values()) == 0:
            raise UserError(f"language {lang!r} of {name} at {root / lang} has no rows")
    if label_names is None:
        label_names = _label_names(root, languages)
    if label_names is None:
        label_names = sorted({r[0] for splits in raw.values() for rows in splits.values() for r in rows})
    index = {lab: i for i, lab in enumerate(label_names)}
    langs: dict[str, LanguageData] = {}
    for lang, splits in raw.items():
        data = LanguageData(lang)
        for split, rows in splits.items():
            examples = []
            for lab, text, pair in rows:
                if lab not in index and lab.isdigit() and int(lab) < len(label_names):
                    lab = label_names[int(lab)]
                if lab not in index:
                    raise UserError(f"{root / lang / (split + '.tsv')}: unknown label {lab!r}; labels are {label_names}")
                examples.append(Example(text=text, label=index[lab], language=lang, text_pair=pair))
            data.splits[split] = examples
        langs[lang] = data
    return TextDataset(name=name, label_names=label_names, languages=langs, source=str(root))
