"""The causal-LM instruction-tuning task on a tiny random decoder and real Aya rows."""

from __future__ import annotations

import copy

import pytest
import torch

from fedp2eft.data.records import Instruction
from fedp2eft.models.causal_lm import CausalLM
from fedp2eft.tasks import GenerationTask
from fedp2eft.tasks.generation import ALPACA, IGNORE
from fedp2eft.training import adapted_modules

ROWS = [Instruction("Translate to French: good morning", "bonjour", "fr"),
        Instruction("写一句话", "我爱北京天安门", "zh"),
        Instruction("Say something long " * 3, "ok " * 40, "en")]


@pytest.fixture(scope="module")
def tiny():
    task = GenerationTask(template="alpaca", max_new_tokens=5)
    model, tok = task.load_model("tiny-llama")
    return task, model, tok


def test_encode_scores_the_response_only_and_ends_with_eos(tiny):
    task, _, tok = tiny
    data = task.encode(tok, ROWS, max_length=40)
    for ids, labels, prompt, _row in zip(data.input_ids, data.labels, data.prompt_ids, ROWS):
        assert ids[: len(prompt)] == prompt and len(ids) <= 40
        assert labels[: len(prompt)] == [IGNORE] * len(prompt)  # the prompt is never a target
        assert labels[len(prompt):] == ids[len(prompt):] and labels[-1] == tok.eos_token_id
        assert tok.eos_token_id not in prompt  # the prompt does not end the sequence
    roomy = task.encode(tok, ROWS[:1], max_length=96)  # room for the whole instruction
    text = tok.decode(roomy.prompt_ids[0], skip_special_tokens=True)  # (XLM-R pieces drop newlines)
    assert text.split() == ALPACA.format(instruction=ROWS[0].prompt).split()
    assert len(roomy.prompt_ids[0]) <= 48  # at most half of max_length ...
    assert len(data.prompt_ids[0]) < len(roomy.prompt_ids[0])  # ... or the template and one instruction token
    assert data.references == [r.response for r in ROWS] and data.languages == ["fr", "zh", "en"]
    assert len(data.input_ids[2]) == 40  # the long response is cut to fit max_length
    batch = data.batch([0, 1, 2])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()  # padding is never a target


def test_loss_depends_only_on_response_logits(tiny):
    task, model, tok = tiny
    data = task.encode(tok, ROWS[:2], max_length=40)
    batch = data.batch([0, 1])
    full = model(batch["input_ids"], batch["attention_mask"])  # [B, T, V]
    sparse = model(batch["input_ids"], batch["attention_mask"], batch["target_mask"])  # scored positions only
    assert sparse.logits().shape == (int(batch["target_mask"].sum()), full.shape[-1])
    assert torch.allclose(task.loss(full, batch), task.loss(sparse, batch), atol=1e-5)
    changed = full.clone()
    changed[~batch["target_mask"]] += torch.randn_like(changed[~batch["target_mask"]])  # prompt and padding
    assert torch.allclose(task.loss(changed, batch), task.loss(full, batch))
    # and it is the HF causal-LM loss over the response tokens
    hf = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"]).loss
    assert torch.allclose(task.loss(sparse, batch), hf, atol=1e-5)


def test_chunked_scored_loss_equals_the_whole_one_in_value_gradient_and_second_derivative(tiny, monkeypatch):
    from fedp2eft.models import causal_lm

    task, model, tok = tiny
    batch = task.encode(tok, ROWS, max_length=40).batch([0, 1, 2])
    mlp = model.backbone.get_decoder().layers[-1].mlp  # above the last attention (whose CPU kernel has no
    params = [mlp.up_proj.weight, mlp.down_proj.weight]  # second derivative), as FedL2P's rates would be

    def value_grad_hvp():
        loss = task.loss(model(batch["input_ids"], batch["attention_mask"], batch["target_mask"]), batch)
        grads = torch.autograd.grad(loss, params, create_graph=True)  # what FedL2P's hypergradient takes
        hvp = torch.autograd.grad(sum((g * g.detach()).sum() for g in grads), params)
        return loss.detach(), [g.detach() for g in grads], hvp

    whole = value_grad_hvp()
    vocab = model.backbone.get_output_embeddings().out_features
    monkeypatch.setattr(causal_lm, "CHUNK_ELEMENTS", 3 * vocab)  # 3 positions per chunk: several chunks
    chunked = value_grad_hvp()
    assert int(batch["target_mask"].sum()) > 6
    assert torch.allclose(whole[0], chunked[0], atol=1e-6)
    for a, b in zip([*whole[1], *whole[2]], [*chunked[1], *chunked[2]]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_adapters_target_every_decoder_linear_but_the_output_projection(tiny):
    _, model, _ = tiny
    names = adapted_modules(model, "train")
    assert names == adapted_modules(model, "adapter")  # no classifier head to adapt
    assert "backbone.lm_head" not in names
    assert any(n.endswith("q_proj") for n in names) and any(n.endswith("down_proj") for n in names)
    assert len(names) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)


def test_batched_greedy_decoding_equals_one_row_at_a_time(tiny):
    task, model, tok = tiny
    data = task.encode(tok, ROWS, max_length=40)
    batched = task.predict(model, data, batch_size=3)
    single = [task.predict(model, data.subset([i]), batch_size=1)[0] for i in range(3)]
    assert batched == single and len(batched) == 3
    scores = task.score(batched, data)
    assert set(scores) == {"meteor", "rouge1", "rougeL"} and all(len(v) == 3 for v in scores.values())


def test_chat_template_is_used_where_the_tokenizer_has_one(tiny):
    task, _, tok = tiny
    tok = copy.deepcopy(tok)
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    auto = GenerationTask(template="auto")
    data = auto.encode(tok, ROWS[:1], max_length=40)
    assert tok.decode(data.prompt_ids[0]).startswith("<|user|>Translate to French")
    alpaca = GenerationTask(template="alpaca").encode(tok, ROWS[:1], max_length=40)
    assert "### Instruction:" in tok.decode(alpaca.prompt_ids[0])
    from fedp2eft.errors import UserError

    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        GenerationTask(template="chat").encode(tok, ROWS[:1], max_length=40)


def test_causal_lm_wrapper_is_the_backbone():
    task = GenerationTask()
    model, _ = task.load_model("tiny-llama")
    assert isinstance(model, CausalLM) and not list(model.head.parameters())
