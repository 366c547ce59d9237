"""Instruction-tuned generation (Fed-Aya): a causal LM learns responses to instructions.

Rows are ``data.Instruction``s. A prompt template turns an instruction into the model's prompt:
``"alpaca"`` is the one FedLLM-Bench and the FedP²EFT authors use for Fed-Aya; ``"chat"`` is the
tokenizer's own chat template (one user turn, then the generation prompt); ``"auto"`` takes the chat
template where the tokenizer has one, else Alpaca. A training row is prompt + response + EOS; the loss
is next-token cross-entropy on the response tokens only (prompt and padding labels are −100, and the
vocabulary projection runs only where a label is scored: ``models.CausalLM``). Outputs are greedy
continuations of the prompt (``max_new_tokens``, stopping at EOS or the template's end-of-turn
token), decoded without special tokens and stripped; they are scored per row with METEOR, ROUGE-1
and ROUGE-L over Unicode-aware tokens (``evaluation.text_metrics``), METEOR first (the primary
metric of the report).

Long rows: the instruction is cut so the templated prompt takes at most ``max_prompt_fraction`` of
``max_length`` tokens (at least one instruction token), the response to what remains of ``max_length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..evaluation.text_metrics import GENERATION_METRICS, generation_scores
from ..training import device_of
from ..training.batches import EncodedData, padded_inputs

IGNORE = -100  # a causal-LM label that is not scored (prompt and padding)

TEMPLATES = ("auto", "alpaca", "chat")
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
END_OF_TURN = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>")  # chat templates' end-of-turn pieces


def next_token_batch(data: EncodedData, index: list[int]) -> dict[str, torch.Tensor]:
    """Padded inputs, the token labels (``IGNORE`` on padding) and ``target_mask``: the positions whose
    next token is scored (position t predicts label t + 1)."""
    out = padded_inputs(data, index)
    width = out["input_ids"].shape[1]
    labels = torch.full((len(index), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(index):
        labels[row, : len(data.labels[i])] = torch.tensor(data.labels[i], dtype=torch.long)
    out["labels"] = labels
    out["target_mask"] = torch.cat([labels[:, 1:] != IGNORE, torch.zeros_like(labels[:, :1], dtype=torch.bool)], 1)
    return out


def causal_lm_loss(outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the scored (response) tokens. ``outputs`` are the states at the
    positions of ``batch["target_mask"]`` (``ScoredStates``, what ``CausalLM.forward`` returns with it),
    their logits ([n, vocab]) or full [B, T, vocab] logits."""
    targets = batch["labels"][:, 1:][batch["target_mask"][:, :-1]]
    if hasattr(outputs, "cross_entropy"):  # models.causal_lm.ScoredStates: projected chunk by chunk
        return outputs.cross_entropy(targets)
    if outputs.dim() == 3:
        outputs = outputs[batch["target_mask"]]
    return F.cross_entropy(outputs.float(), targets)


def stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    unk = tokenizer.unk_token_id
    for piece in END_OF_TURN:
        i = tokenizer.convert_tokens_to_ids(piece)
        if isinstance(i, int) and i >= 0 and i != unk:
            ids.add(i)
    return sorted(ids)


@dataclass(frozen=True)
class GenerationTask:
    template: str = "auto"
    max_new_tokens: int = 64
    max_prompt_fraction: float = 0.5
    name: str = "generation"
    metric: str = GENERATION_METRICS[0]
    metrics: tuple[str, ...] = GENERATION_METRICS

    def chat(self, tokenizer) -> bool:
        if self.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise UserError("generation.template = 'chat' but the model's tokenizer has no chat template")
        return self.template == "chat" or (self.template == "auto" and bool(getattr(tokenizer, "chat_template", None)))

    def prompt_ids(self, tokenizer, instruction: str, limit: int) -> list[int]:
        body = tokenizer(instruction, add_special_tokens=False)["input_ids"][:limit]
        text = tokenizer.decode(body)
        if self.chat(tokenizer):
            chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
            return tokenizer(chat, add_special_tokens=False)["input_ids"]  # the template writes its own BOS
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return bos + tokenizer(ALPACA.format(instruction=text), add_special_tokens=False)["input_ids"]  # no EOS

    def encode(self, tokenizer, examples: list, max_length: int) -> EncodedData:
        overhead = len(self.prompt_ids(tokenizer, "", 0))  # the template's own tokens
        limit = max(1, int(self.max_prompt_fraction * max_length) - overhead)
        if overhead + limit >= max_length:
            raise UserError(f"data.max_length = {max_length} leaves no room for a response after the prompt "
                            f"template's {overhead} tokens; raise it")
        end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        if self.chat(tokenizer):
            eot = [i for i in stop_ids(tokenizer) if i != tokenizer.eos_token_id]
            end = eot[0] if eot else end
        ids, labels, prompts = [], [], []
        for ex in examples:
            prompt = self.prompt_ids(tokenizer, ex.prompt, limit)
            room = max(1, max_length - len(prompt))
            response = tokenizer(ex.response, add_special_tokens=False)["input_ids"][: room - 1] + [end]
            ids.append(prompt + response)
            labels.append([IGNORE] * len(prompt) + response)
            prompts.append(prompt)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        return EncodedData(ids, labels, pad, prompt_ids=prompts, references=[ex.response for ex in examples],
                           languages=[ex.language for ex in examples], tokenizer=tokenizer,
                           stop_ids=stop_ids(tokenizer), collate=next_token_batch)

    def load_model(self, source: str, num_labels: int = 0, pooling: str | None = None) -> tuple[nn.Module, Any]:
        from ..models import load_causal_lm
        from ..models.causal_lm import CausalLM

        model, tok = load_causal_lm(source)
        return CausalLM(model), tok

    def adapted_modules(self, model: nn.Module, head: str = "train") -> list[str]:
        from ..training import adapted_modules

        return adapted_modules(model, head)

    def saved_modules(self, head: str = "train") -> list[str] | None:
        return None  # a causal LM has no head that trains as itself

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return causal_lm_loss(outputs, batch)

    @torch.no_grad()
    def probe(self, model: nn.Module, train: EncodedData, test: EncodedData, p, seed: int) -> list[str]:
        return self.predict(model, test, p.eval_batch_size)  # a causal LM has no head to probe

    def predict(self, model: nn.Module, data: EncodedData, batch_size: int = 8) -> list[str]:
        """Greedy continuations of every row's prompt (left-padded batches), decoded with the rows' own
        tokenizer and stripped. ``model`` is a ``CausalLM``, merged or carrying (peft or own) adapters."""
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        lm.eval()
        device = device_of(lm)
        tok = data.tokenizer  # a released ReleasableTokenizer decodes without loading the whole tokenizer
        stops = data.stop_ids if data.stop_ids is not None else stop_ids(tok)
        out: list[str] = []
        for start in range(0, len(data), batch_size):
            rows = data.prompt_ids[start : start + batch_size]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), data.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, seq in enumerate(rows):
                ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                mask[i, width - len(seq):] = 1
            gen = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                              max_new_tokens=self.max_new_tokens, eos_token_id=stops, pad_token_id=data.pad_id)
            for row in gen[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                out.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        return out

    def score(self, outputs: list[Any], data: EncodedData) -> dict[str, list[float]]:
        return generation_scores(outputs, data.references)

