"""Memory saving that leaves results unchanged: a tokenizer released once its clients are encoded (and
each client encoded once per process), gradient checkpointing with the same update, and a memory-mapped
model's pages given back after a full read. Peaks are measured by ``benchmarks/memory.py``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedp2eft.config import from_dict
from fedp2eft.data.partition import Client
from fedp2eft.data.records import Example
from fedp2eft.errors import SettingError, UserError
from fedp2eft.memory import release_file_pages
from fedp2eft.models.loading import load_classifier
from fedp2eft.models.memory_saving import ReleasableTokenizer, held, set_gradient_checkpointing
from fedp2eft.models.packaged import xlmr_tokenizer
from fedp2eft.setup.federation import client_task, client_tasks
from fedp2eft.tasks.classification import ClassificationTask
from fedp2eft.training import train_model


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    xlmr_tokenizer().save_pretrained(folder)
    return folder


def counting_tokenizer(folder):
    from transformers import AutoTokenizer

    loads = []

    def load():
        loads.append(1)
        return AutoTokenizer.from_pretrained(folder)

    return ReleasableTokenizer(load, key=str(folder), folder=folder), loads


def test_a_releasable_tokenizer_loads_when_used_and_held_blocks_keep_it(tokenizer_folder):
    tok, loads = counting_tokenizer(tokenizer_folder)
    assert not loads and "released" in repr(tok)
    ids = tok(["Habari ya asubuhi"])["input_ids"]
    assert ids == xlmr_tokenizer()(["Habari ya asubuhi"])["input_ids"] and len(loads) == 1
    assert tok.pad_token_id == xlmr_tokenizer().pad_token_id and len(tok) == len(xlmr_tokenizer())
    tok.release()
    assert "released" in repr(tok)
    with held(tok):
        with held(tok):
            tok("a")
        tok.release()  # inside a held block: kept
        tok("b")
        assert "loaded" in repr(tok)
    assert "released" in repr(tok) and len(loads) == 2


def test_a_released_tokenizer_saves_its_files_without_loading_and_they_load_the_same(tokenizer_folder, tmp_path):
    from transformers import AutoTokenizer

    tok, loads = counting_tokenizer(tokenizer_folder)
    tok.save_pretrained(tmp_path)
    assert not loads and (tmp_path / "tokenizer.json").is_file()
    text = ["Ìròyìn tuntun láti Èkó", "ዘጠኝ ግብ በተስተናገደበት ጨዋታ"]
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == xlmr_tokenizer()(text)["input_ids"]


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A small byte-fallback BPE tokenizer (Gemma-3's and Llama's kind) trained on a few lines, saved."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "\u2581")
    bpe.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    bpe.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    lines = ["Habari ya asubuhi", "Ìròyìn tuntun láti Èkó", "the news of the morning", "ዘጠኝ ግብ"] * 20
    specials = ["<pad>", "<unk>", "<bos>", "<eos>", "<end_of_turn>"]
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=400, special_tokens=specials + bytes_))
    folder = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                            eos_token="<eos>").save_pretrained(folder)
    return folder


def test_a_released_bpe_tokenizer_decodes_like_the_loaded_one_without_loading_it(bpe_folder):
    import random

    tok, loads = counting_tokenizer(bpe_folder)
    assert tok.decoder() is not None and not loads  # vocabulary, specials and decoder; no merges
    rng = random.Random(0)
    rows = [[rng.randrange(400) for _ in range(rng.randrange(1, 20))] for _ in range(300)]
    rows += [[2, 4, 0, *r[:4], 3] for r in rows[:20]]  # special tokens among them
    released = [[tok.decode(r, skip_special_tokens=skip) for r in rows] for skip in (True, False)]
    assert not loads
    loaded = [[tok.loaded.decode(r, skip_special_tokens=skip) for r in rows] for skip in (True, False)]
    assert released == loaded and len(loads) == 1
    assert any("<eos>" in t for t in released[1]) and not any("<eos>" in t for t in released[0])


def test_each_client_is_encoded_once_per_process_and_the_tokenizer_released_after(tokenizer_folder):
    tok, loads = counting_tokenizer(tokenizer_folder)
    rows = [Example(text=f"habari {i}", label=i % 2, language="swa") for i in range(5)]
    clients = [Client(f"swa-seen-0{k}", "swa", "seen", rows[k:], rows[:2]) for k in range(3)]
    problem = ClassificationTask()
    tasks = client_tasks(clients, tok, 32, problem)
    assert len(loads) == 1 and "released" in repr(tok)  # one load for the list, released after
    again = client_task(clients[1], tok, 32, ClassificationTask())  # a new task object, same settings
    assert again is tasks[1] and len(loads) == 1
    assert client_task(clients[1], tok, 16, problem) is not tasks[1] and len(loads) == 2  # another length
    assert clients[0] == copy.copy(clients[0]) and "encoded" not in repr(clients[0])


def one_step(model, seed=0):
    data = ClassificationTask().encode(xlmr_tokenizer(), [
        Example(text=f"row {i} " * (i + 1), label=i % 3, language="swa") for i in range(8)], 24)
    params = [p for p in model.parameters() if p.requires_grad]
    train_model(model, [{"params": params, "lr": 1e-2}], data, 1, 4, seed, loss=ClassificationTask().loss)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_trains_to_the_same_weights():
    torch.manual_seed(0)
    base, _ = load_classifier("tiny-bert", 3)
    plain, checkpointed = copy.deepcopy(base), copy.deepcopy(base)
    assert set_gradient_checkpointing(checkpointed, True)
    copied = copy.deepcopy(checkpointed)  # copies inherit it (a stage trains a copy of the base)
    assert copied.backbone.is_activation_checkpointing
    torch.manual_seed(1)
    a = one_step(plain)
    torch.manual_seed(1)
    b = one_step(copied)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6  # dropout replayed in the recompute
    assert any((a[k] - base.state_dict()[k]).abs().max() > 0 for k in a)  # it did train
    set_gradient_checkpointing(copied, False)
    assert not copied.backbone.is_activation_checkpointing


def test_the_checkpointing_setting_names_where_it_applies():
    from fedp2eft.fl.engines import checkpointed
    from fedp2eft.methods.registry import federated_stages, get_stage

    base_stage = get_stage("base_model")
    psg = next(s for s in federated_stages().values() if s.section != "base_model")
    for mode, expect in (("off", (False, False)), ("base", (True, False)), ("all", (True, True))):
        cfg = from_dict({"experiment": {"gradient_checkpointing": mode}})
        assert (checkpointed(cfg, base_stage), checkpointed(cfg, psg)) == expect
    with pytest.raises((SettingError, UserError), match="gradient_checkpointing"):
        from_dict({"experiment": {"gradient_checkpointing": "sometimes"}})


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="madvise(MADV_PAGEOUT): Linux")
def test_pages_of_a_memory_mapped_tensor_are_given_back_and_read_again_unchanged(tmp_path):
    def rss_file() -> int:
        return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("RssFile")) * 1024

    path = tmp_path / "weights.bin"
    values = np.random.default_rng(0).standard_normal(8 * 2**20 // 4).astype(np.float32)  # 8 MiB
    values.tofile(path)
    mapped = torch.from_numpy(np.memmap(path, dtype=np.float32, mode="c"))  # private, as safetensors maps
    total = float(mapped.double().sum())  # a full read: every page resident
    before = rss_file()
    advised = release_file_pages([mapped, torch.ones(2**20)])  # the second maps no file: skipped
    if advised == 0:
        pytest.skip("madvise(MADV_PAGEOUT) is unavailable here")
    assert advised >= 7 * 2**20 and rss_file() < before - 4 * 2**20
    assert float(mapped.double().sum()) == total and torch.equal(mapped[:5], torch.from_numpy(values[:5]))


def test_only_an_untied_input_embedding_table_is_read_by_rows():
    """Personalisation and federated clients give back the file pages of the tables whose rows a client reads
    (``row_read_tables``): a classifier's word embeddings; never a tied causal LM's, whose output projection
    reads all of it every step."""
    from fedp2eft.models.causal_lm import CausalLM
    from fedp2eft.models.memory_saving import row_read_tables
    from fedp2eft.models.tiny import build_tiny

    classifier, _ = load_classifier("tiny-bert", 3)
    tables = row_read_tables(classifier)
    assert len(tables) == 1 and tables[0] is classifier.backbone.get_input_embeddings().weight
    lm = CausalLM(build_tiny("tiny-llama", causal_lm=True)[0])
    assert lm.backbone.get_output_embeddings().weight is lm.backbone.get_input_embeddings().weight
    assert row_read_tables(lm) == []
    assert row_read_tables(torch.nn.Linear(2, 2)) == []
