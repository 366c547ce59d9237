"""The dataset and task registries (issue 27): a new dataset format is a reader and one registration, and
``fedp2eft run`` trains and personalises on it; the config refuses a dataset's own key for another dataset
and an unknown task; ``data.task`` picks the task."""

from __future__ import annotations

import json

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
