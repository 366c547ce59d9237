"""Tokenised client data and padded mini-batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.records import Example

IGNORE = -100  # a causal-LM label that is not scored (prompt and padding)


@dataclass
class EncodedData:
    """Token id lists (unpadded) and labels of one split of one client.

    Classification: ``labels`` holds one class index per row. Causal-LM instruction tuning: ``labels``
    holds one token-label list per row (the response's ids, ``IGNORE`` on the prompt), ``prompt_ids``
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

    _PER_ROW = ("input_ids", "labels", "token_type_ids", "prompt_ids", "references", "languages")

    @property
    def token_labels(self) -> bool:
        return bool(self.labels) and isinstance(self.labels[0], list)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: list[int]) -> dict[str, torch.Tensor]:
        width = max(len(self.input_ids[i]) for i in index)
        ids = torch.full((len(index), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            seq = self.input_ids[i]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if self.token_labels:  # next-token targets: position t predicts label t + 1
            labels = torch.full((len(index), width), IGNORE, dtype=torch.long)
            for row, i in enumerate(index):
                labels[row, : len(self.labels[i])] = torch.tensor(self.labels[i], dtype=torch.long)
            out["labels"] = labels
            out["target_mask"] = torch.cat([labels[:, 1:] != IGNORE, torch.zeros_like(labels[:, :1], dtype=torch.bool)], 1)
        else:
            out["labels"] = torch.tensor([self.labels[i] for i in index])
        if self.token_type_ids is not None:
            tt = torch.zeros((len(index), width), dtype=torch.long)
            for row, i in enumerate(index):
                seq = self.token_type_ids[i]
                tt[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            out["token_type_ids"] = tt
        return out

    def subset(self, index: list[int]) -> EncodedData:
        rows = {k: None if getattr(self, k) is None else [getattr(self, k)[i] for i in index] for k in self._PER_ROW}
        return EncodedData(pad_id=self.pad_id, tokenizer=self.tokenizer, **rows)

    def split(self, fraction: float, seed: int) -> tuple[EncodedData, EncodedData]:
        """A seeded random split: ``(1 − fraction, fraction)`` of the rows; each part keeps at least one row."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        k = min(max(1, round(fraction * len(self))), len(self) - 1)
        return self.subset(sorted(order[k:])), self.subset(sorted(order[:k]))

    def batches(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False):
        order = torch.randperm(len(self), generator=generator).tolist() if shuffle else list(range(len(self)))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


def encode(tokenizer, examples: list[Example], max_length: int) -> EncodedData:
    """Tokenise texts (and text pairs) with truncation to ``max_length`` tokens."""
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples]
    has_pair = any(p is not None for p in pairs)
    if has_pair:
        enc = tokenizer(texts, [p or "" for p in pairs], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
    tt = enc.get("token_type_ids") if has_pair else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedData(list(enc["input_ids"]), [ex.label for ex in examples], pad, tt)
