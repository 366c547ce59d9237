"""Plain records shared by every dataset reader."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One labelled text. ``text_pair`` is the second segment for pair tasks (XNLI hypothesis)."""

    text: str
    label: int
    language: str
    text_pair: str | None = None


@dataclass(frozen=True)
class Instruction:
    """One instruction-tuning row: the instruction (``prompt``), the reference ``response`` and its language."""

    prompt: str
    response: str
    language: str


@dataclass
class LanguageData:
    """The labelled rows of one language, by split name (``train``, ``dev``, ``test``); absent splits are absent."""

    language: str
    splits: dict[str, list[Example]] = field(default_factory=dict)

    def size(self) -> int:
        return sum(len(v) for v in self.splits.values())


@dataclass
class TextDataset:
    """A multilingual classification dataset: languages, the global label names and the rows."""

    name: str
    label_names: list[str]
    languages: dict[str, LanguageData]
    source: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.label_names)
