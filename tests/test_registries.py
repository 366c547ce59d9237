"""The dataset and task registries (issue 27): a new dataset format is a reader and one registration, and
``fedp2eft run`` trains and personalises on it; the config refuses a dataset's own key for another dataset
and an unknown task; ``data.task`` picks the task."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from fedp2eft.cli import main as cli_main
from fedp2eft.data import DatasetSpec, load_dataset_by_name, register_dataset, unregister_dataset
from fedp2eft.errors import UserError
from fl_helpers import tiny_overrides


def jsonl_news(masakhanews_dir, path, languages=("ibo", "yor"), per_split=40) -> list[str]:
    """Real MasakhaNEWS rows rewritten as JSON lines ``{"text", "label", "lang", "split"}`` (labels as names)."""
    ds = load_dataset_by_name("masakhanews", masakhanews_dir, list(languages))
    lines = []
    for lang, data in ds.languages.items():
        for split in ("train", "test"):
            for ex in data.splits[split][:per_split]:
                lines.append(json.dumps({"text": ex.text, "label": ds.label_names[ex.label], "lang": lang, "split": split}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ds.label_names


def load_jsonl_news(d, spec):
    """The whole format: read the lines, group them by language and split, partition as the paper does."""
    from pathlib import Path

    from fedp2eft.data import Example, LanguageData, TextDataset, build_federation

    rows = [json.loads(line) for line in Path(d.path).read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = sorted({r["label"] for r in rows})
    langs: dict[str, LanguageData] = {}
    for r in rows:
        if d.languages and r["lang"] not in d.languages:
            continue
        data = langs.setdefault(r["lang"], LanguageData(r["lang"]))
        data.splits.setdefault(r["split"], []).append(Example(r["text"], labels.index(r["label"]), r["lang"]))
    return build_federation(TextDataset("jsonl-news", labels, langs), spec)


@pytest.fixture
def jsonl_dataset():
    spec = register_dataset(DatasetSpec(name="jsonl-news", task="classification", load=load_jsonl_news,
                                        keys=("clients_per_language",)))
    yield spec
    unregister_dataset("jsonl-news")


def test_a_new_dataset_format_is_a_reader_and_one_registration(tmp_path, masakhanews_dir, jsonl_dataset):
    data = tmp_path / "news.jsonl"
    jsonl_news(masakhanews_dir, data)
    out = tmp_path / "run"
    sets = tiny_overrides(masakhanews_dir, languages=("ibo", "yor"), **{
        "data.dataset": '"jsonl-news"', "data.path": json.dumps(str(data)), "personalise.methods": '["none","lora"]',
        "personalise.pools": '["seen","unseen"]', "experiment.output_dir": json.dumps(str(out))})
    assert cli_main(["run", "configs/quickstart.toml", *[x for s in sets for x in ("--set", s)]]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["pool"]) for r in res["runs"]} == {(m, p) for m in ("none", "lora") for p in ("seen", "unseen")}
    assert all(r["per_language"].keys() == {"ibo", "yor"} and 0 <= r["mean"] <= 1 for r in res["runs"])
    assert res["metric"] == "accuracy" and res["config"]["data"]["dataset"] == "jsonl-news"


def test_a_datasets_own_keys_are_refused_for_another_and_the_task_is_chosen(tmp_path):
    from fedp2eft.config import load_config
    from fedp2eft.setup.federation import task_for

    with pytest.raises(UserError, match=r"data.num_clients: is not read by dataset 'masakhanews' \(only by aya\)"):
        load_config(None, ["data.num_clients=5"])
    with pytest.raises(UserError, match="data.label_column: is not read by dataset 'aya'"):
        load_config(None, ['data.dataset="aya"', 'data.label_column="x"'])
    with pytest.raises(UserError, match="data.task: must be one of"):
        load_config(None, ['data.task="nope"'])
    assert task_for(load_config(None, ['data.dataset="aya"'])).name == "generation"
    assert task_for(load_config(None, [])).name == "classification"
    # data.task overrides the dataset's own; a dataset nobody registered is the user's own TSV folder
    assert task_for(load_config(None, ['data.dataset="aya"', 'data.task="classification"'])).name == "classification"
    assert task_for(load_config(None, ['data.dataset="my-folder"', 'data.label_column="y"'])).name == "classification"


# --- a third task, defined here as a plug-in would define it: one module's worth of code and two registrations

TAGS = ["O", "PER", "LOC"]
NAMES, PLACES, WORDS = ["amina", "kofi", "sade", "tunde"], ["lagos", "accra", "kano", "ibadan"], ["went", "to", "from", "met"]


@dataclass(frozen=True)
class Tagged:
    tokens: tuple[str, ...]
    tags: tuple[int, ...]
    language: str


def tagged_rows(n: int, seed: int, language: str) -> list:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [(rng.choice(NAMES), 1), (rng.choice(WORDS), 0), (rng.choice(PLACES), 2), (rng.choice(WORDS), 0),
                 (rng.choice(NAMES), 1)]
        rows.append(Tagged(tuple(w for w, _ in words), tuple(t for _, t in words), language))
    return rows


def load_tagged(d, spec):
    from fedp2eft.data import Client, Federation

    clients = [Client(f"{lang}-{pool}-{k:02d}", lang, pool, tagged_rows(12, 7 * k + i, lang), tagged_rows(6, 99 + k + i, lang))
               for i, lang in enumerate(("xx", "yy")) for pool in ("seen", "unseen") for k in range(2)]
    return Federation("tagged-toy", TAGS, spec, clients)


class TokenTagging:
    """Token classification: a tag per word, scored per row as the share of its words tagged right."""

    name, metric, metrics = "token-tagging", "token_accuracy", ("token_accuracy",)
    IGNORE = -100

    def encode(self, tokenizer, rows, max_length):
        from fedp2eft.training import EncodedData

        ids, labels = [], []
        for r in rows:
            enc = tokenizer(list(r.tokens), is_split_into_words=True, truncation=True, max_length=max_length)
            first, seen = [], set()
            for w in enc.word_ids():  # the first piece of each word carries its tag
                first.append(self.IGNORE if w is None or w in seen else r.tags[w])
                seen.add(w)
            ids.append(enc["input_ids"])
            labels.append(first)
        return EncodedData(ids, labels, tokenizer.pad_token_id or 0, collate=self.collate)

    def collate(self, data, index):
        import torch

        from fedp2eft.training.batches import padded_inputs

        out = padded_inputs(data, index)
        labels = torch.full(out["input_ids"].shape, self.IGNORE, dtype=torch.long)
        for row, i in enumerate(index):
            labels[row, : len(data.labels[i])] = torch.tensor(data.labels[i])
        out["labels"] = labels
        return out

    def load_model(self, source, num_labels, pooling=None):
        from torch import nn

        from fedp2eft.models import load_classifier

        clf, tok = load_classifier(source, num_labels, pooling)

        class Tagger(nn.Module):  # the backbone and a linear head on every token
            def __init__(self):
                super().__init__()
                self.backbone, self.head = clf.backbone, clf.head

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                return self.head(self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)

        return Tagger(), tok

    def adapted_modules(self, model, head="train"):
        from fedp2eft.tasks import CLASSIFICATION

        return CLASSIFICATION.adapted_modules(model, head)  # all-linear, as for a classifier

    def saved_modules(self, head="train"):
        return ["head"] if head == "train" else None

    def loss(self, outputs, batch):
        from torch.nn import functional as F

        return F.cross_entropy(outputs.flatten(0, 1), batch["labels"].flatten(), ignore_index=self.IGNORE)

    def predict(self, model, data, batch_size=64):
        import torch

        from fedp2eft.training import device_of, model_inputs, to_device

        model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                index = list(range(start, min(start + batch_size, len(data))))
                batch = to_device(data.batch(index), device_of(model))
                tags = model(**model_inputs(batch)).argmax(-1)
                for row in range(len(index)):
                    keep = batch["labels"][row] != self.IGNORE  # positions, not labels: where words start
                    out.append(tags[row][keep].tolist())
        return out

    def probe(self, model, train, test, p, seed):
        return self.predict(model, test, p.eval_batch_size)

    def score(self, outputs, data):
        rows = []
        for pred, labels in zip(outputs, data.labels, strict=True):
            gold = [y for y in labels if y != self.IGNORE]
            rows.append(sum(p == y for p, y in zip(pred, gold, strict=True)) / len(gold))
        return {"token_accuracy": rows}


@pytest.fixture
def tagging_plugin():
    from fedp2eft.tasks import register_task, unregister_task

    register_task("token-tagging", lambda cfg: TokenTagging())
    register_dataset(DatasetSpec(name="tagged-toy", task="token-tagging", load=load_tagged))
    yield
    unregister_dataset("tagged-toy")
    unregister_task("token-tagging")


def test_a_third_task_is_one_class_and_a_registration_and_lora_and_fedp2eft_personalise_it(tmp_path, masakhanews_dir,
                                                                                        tagging_plugin):
    out = tmp_path / "run"
    sets = tiny_overrides(masakhanews_dir, **{
        "data.dataset": '"tagged-toy"', "data.path": '""', "data.languages": "[]", "data.clients_per_language": 10,
        "base_model.kind": '"off-the-shelf"',
        "personalise.methods": '["none","lora","fedp2eft"]', "personalise.pools": '["seen","unseen"]',
        "personalise.budgets": "[2]", "personalise.epochs": 3, "personalise.lr": 1e-2, "fedp2eft.rounds": 2,
        "fedp2eft.r_init": 4, "fedp2eft.lora_alpha": 8, "fedp2eft.batch_size": 8, "experiment.output_dir": json.dumps(str(out))})
    assert cli_main(["run", "configs/quickstart.toml", *[x for s in sets for x in ("--set", s)]]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "token_accuracy"
    runs = {(r["method"], r["pool"]): r for r in res["runs"]}
    assert set(runs) == {(m, p) for m in ("none", "lora", "fedp2eft") for p in ("seen", "unseen")}
    assert all(r["per_language"].keys() == {"xx", "yy"} and 0 <= r["mean"] <= 1 for r in runs.values())
    # the tags follow the word lists: fine-tuning learns them, the untrained head does not
    for pool in ("seen", "unseen"):
        assert runs["lora", pool]["mean"] > runs["none", pool]["mean"] + 0.2
    assert (out / "psg" / "seed0" / "psg.safetensors").is_file()


# --- a new base kind: one federated stage and one registration (here a FedAvg of the classifier head alone)


def head_state(model) -> dict:
    return {f"head.{k}": v.detach().clone() for k, v in model.head.state_dict().items()}


def head_model(base, state):
    import copy

    model = copy.deepcopy(base)
    model.head.load_state_dict({k[len("head."):]: v for k, v in state.items()})
    return model


def head_update(base, state, task, hp, ctx):
    from fedp2eft.training import train_model

    model = head_model(base, state)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.head.parameters())
    for p in params:
        p.requires_grad_(True)
    losses = train_model(model, [{"params": params, "lr": hp.lr}], task.train, hp.local_epochs, hp.batch_size, ctx.seed,
                         loss=task.problem.loss)
    return head_state(model), len(task.train), {"train_loss": sum(losses) / max(len(losses), 1)}


@pytest.fixture
def head_fedavg_kind():
    from fedp2eft.methods.registry import FederatedStage, register_base_kind, unregister_base_kind
    from fedp2eft.methods.standard_fl import BaseModelConfig

    register_base_kind("head-fedavg", FederatedStage(
        name="base_head_fedavg", section="base_model", per_budget=False,
        client_settings=lambda cfg: cfg.base_model, settings_type=BaseModelConfig,
        initial_state=lambda base, hp, ctx: head_state(base), client_update=head_update,
        finalize=lambda base, state, hp, folder, ctx: head_model(base, state)))
    yield
    unregister_base_kind("head-fedavg")


def test_a_new_base_kind_is_one_stage_and_one_registration(tmp_path, masakhanews_dir, head_fedavg_kind):
    out = tmp_path / "run"
    sets = tiny_overrides(masakhanews_dir, **{
        "base_model.kind": '"head-fedavg"', "base_model.lr": 1e-2, "personalise.methods": '["none","lora"]',
        "none.trains_head": "false", "experiment.output_dir": json.dumps(str(out))})
    assert cli_main(["run", "configs/quickstart.toml", *[x for s in sets for x in ("--set", s)]]) == 0
    meta = json.loads((out / "base_model" / "model" / "fedp2eft_classifier.json").read_text())
    assert meta["kind"] == "head-fedavg"
    rounds = [json.loads(line) for line in (out / "base_model" / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and all(r["train_loss"] > 0 for r in rounds)
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["runs"]} == {"none", "lora"} and all(r["base_kind"] == "head-fedavg" for r in res["runs"])
    # the base record names the kind: the folder is refused for another
    from fedp2eft.errors import UserError

    sets2 = [s for s in sets if not s.startswith("base_model.kind")] + ['base_model.kind="standard-fl"']
    assert cli_main(["run", "configs/quickstart.toml", *[x for s in sets2 for x in ("--set", s)]]) == 2
    with pytest.raises(UserError, match="neither a base source"):
        from fedp2eft.bases import base_source
        from fedp2eft.config import load_config

        base_source(load_config(None, ['base_model.kind="nope"']), None)
