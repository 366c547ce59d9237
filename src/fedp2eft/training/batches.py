"""Tokenised client data and padded mini-batches. How a batch's labels are laid out is the task's: each
``EncodedData`` carries its task's ``collate`` (one label per row here by default; next-token labels in
``tasks.generation``), so nothing below the tasks guesses the problem from the labels' shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def padded_inputs(data: EncodedData, index: list[int]) -> dict[str, torch.Tensor]:
    """The rows' token ids right-padded to the longest, their attention mask and (pairs) token type ids."""
    width = max(len(data.input_ids[i]) for i in index)
    ids = torch.full((len(index), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for row, i in enumerate(index):
        seq = data.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if data.token_type_ids is not None:
        tt = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            seq = data.token_type_ids[i]
            tt[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        out["token_type_ids"] = tt
    return out


def one_label_per_row(data: EncodedData, index: list[int]) -> dict[str, torch.Tensor]:
    """Padded inputs and ``labels``: one class index per row (classification)."""
    out = padded_inputs(data, index)
    out["labels"] = torch.tensor([data.labels[i] for i in index])
    return out


@dataclass
class EncodedData:
    """Token id lists (unpadded) and labels of one split of one client, and how they batch (``collate``).

    Classification: ``labels`` holds one class index per row. Causal-LM instruction tuning: ``labels``
    holds one token-label list per row (the response's ids, ignored on the prompt), ``prompt_ids``
    the prompt alone (what decoding starts from), ``references`` the reference responses and
    ``languages`` each row's language (a client may speak several)."""

    input_ids: list[list[int]]
    labels: list
    pad_id: int
    token_type_ids: list[list[int]] | None = None
    prompt_ids: list[list[int]] | None = None
    references: list[str] | None = None
    languages: list[str] | None = None
    tokenizer: object | None = None  # generation: what encoded the rows decodes the outputs
    stop_ids: list[int] | None = None  # generation: the tokens that end a decoded output
    collate: Callable[[EncodedData, list[int]], dict[str, torch.Tensor]] = one_label_per_row  # the task's batching

    _PER_ROW = ("input_ids", "labels", "token_type_ids", "prompt_ids", "references", "languages")

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: list[int]) -> dict[str, torch.Tensor]:
        return self.collate(self, index)

    def subset(self, index: list[int]) -> EncodedData:
        rows = {k: None if getattr(self, k) is None else [getattr(self, k)[i] for i in index] for k in self._PER_ROW}
        return EncodedData(pad_id=self.pad_id, tokenizer=self.tokenizer, stop_ids=self.stop_ids, collate=self.collate,
                           **rows)

    def split(self, fraction: float, seed: int) -> tuple[EncodedData, EncodedData]:
        """A seeded random split: ``(1 − fraction, fraction)`` of the rows; each part keeps at least one row."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        k = min(max(1, round(fraction * len(self))), len(self) - 1)
        return self.subset(sorted(order[k:])), self.subset(sorted(order[:k]))

    def batches(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False):
        order = torch.randperm(len(self), generator=generator).tolist() if shuffle else list(range(len(self)))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])
