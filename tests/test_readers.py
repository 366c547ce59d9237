"""Dataset readers: real MasakhaNEWS, written fixtures, and every bad input as a clear error."""

from __future__ import annotations

import os

import pytest

from fedp2eft.data import load_dataset_by_name
from fedp2eft.data.tsv import read_tsv_folder
from fedp2eft.errors import UserError

HEADER = "category\theadline\ttext\turl\n"


def write_lang(root, lang, files: dict[str, str]):
    d = root / lang
    d.mkdir(parents=True, exist_ok=True)
    for split, body in files.items():
        (d / f"{split}.tsv").write_text(body, encoding="utf-8")


def test_real_masakhanews_counts_and_missing_train(masakhanews_dir):
    ds = load_dataset_by_name("masakhanews", masakhanews_dir, ["yor", "tir"])
    assert len(ds.label_names) == 7
    assert len(ds.languages["yor"].splits["train"]) == 1433
    assert len(ds.languages["yor"].splits["dev"]) == 206
    assert "train" not in ds.languages["tir"].splits  # absent, not an error
    assert len(ds.languages["tir"].splits["test"]) == 272
    ex = ds.languages["yor"].splits["train"][0]
    assert ex.text and ex.language == "yor" and 0 <= ex.label < 7


def test_all_sixteen_languages_load(masakhanews_dir):
    ds = load_dataset_by_name("masakhanews", masakhanews_dir)
    assert len(ds.languages) == 16
    assert sum(d.size() for d in ds.languages.values()) == 20168


def test_quoted_newlines_and_tabs(tmp_path):
    body = HEADER + 'sports\t"Head\nline"\t"text with\ttab\nand newline"\thttp://x\n' + "health\th2\tt2\tu2\n"
    write_lang(tmp_path, "xx", {"test": body})
    ds = read_tsv_folder(tmp_path, "toy")
    rows = ds.languages["xx"].splits["test"]
    assert len(rows) == 2
    assert rows[0].text == "Head\nline text with\ttab\nand newline"
    assert ds.label_names == ["health", "sports"]


def test_malformed_row_names_file_and_line(tmp_path):
    write_lang(tmp_path, "xx", {"train": HEADER + "sports\th\tt\tu\nhealth\tonly-two\n"})
    with pytest.raises(UserError, match=r"train\.tsv: malformed row at line 3"):
        read_tsv_folder(tmp_path, "toy")


def test_missing_folder_and_unknown_language(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_dataset_by_name("masakhanews", tmp_path / "nope")
    write_lang(tmp_path, "xx", {"test": HEADER + "sports\th\tt\tu\n"})
    with pytest.raises(UserError, match=r"unknown language\(s\) \['zz'\]"):
        read_tsv_folder(tmp_path, "toy", ["zz"])


def test_empty_files_and_rows_without_text_are_errors_naming_file_and_line(tmp_path):
    write_lang(tmp_path, "xx", {"train": HEADER, "test": HEADER})
    with pytest.raises(UserError, match=r"xx/(train|test)\.tsv: a header and no rows"):
        read_tsv_folder(tmp_path, "toy")
    write_lang(tmp_path, "xx", {"train": "", "test": HEADER + "sports\th\tt\tu\n"})
    with pytest.raises(UserError, match=r"xx/train\.tsv: empty file"):
        read_tsv_folder(tmp_path, "toy")
    write_lang(tmp_path, "xx", {"train": HEADER + "sports\th\tt\tu\nhealth\t \t\tu\n", "test": HEADER + "sports\th\tt\tu\n"})
    with pytest.raises(UserError, match=r"xx/train\.tsv: row at line 3 has no text in \['headline', 'text'\]"):
        read_tsv_folder(tmp_path, "toy")


def test_unknown_label_against_labels_file(tmp_path):
    write_lang(tmp_path, "xx", {"test": HEADER + "weather\th\tt\tu\n"})
    (tmp_path / "xx" / "labels.txt").write_text("sports\nhealth\n")
    with pytest.raises(UserError, match="unknown label 'weather'"):
        read_tsv_folder(tmp_path, "toy")


def test_missing_column(tmp_path):
    write_lang(tmp_path, "xx", {"test": "category\ttext\nsports\tt\n"})
    with pytest.raises(UserError, match="lacks column"):
        read_tsv_folder(tmp_path, "toy")


def test_xnli_local_fixture_pairs_and_index_labels(tmp_path):
    header = "premise\thypothesis\tlabel\n"
    write_lang(tmp_path, "en", {
        "train": header + "A man eats.\tSomeone eats.\tentailment\nA man eats.\tNobody eats.\t2\n",
        "test": header + "It rains.\tIt is wet.\t0\n",
    })
    write_lang(tmp_path, "sw", {"test": header + "Mvua inanyesha.\tKuna jua.\tcontradiction\n"})
    ds = load_dataset_by_name("xnli", tmp_path)
    assert ds.label_names == ["entailment", "neutral", "contradiction"]
    tr = ds.languages["en"].splits["train"]
    assert tr[0].text == "A man eats." and tr[0].text_pair == "Someone eats." and tr[0].label == 0
    assert tr[1].label == 2
    assert ds.languages["sw"].splits["test"][0].label == 2


def test_env_var_source_then_hub_error(tmp_path, monkeypatch):
    write_lang(tmp_path / "masakhanews", "hau", {"test": HEADER + "sports\th\tt\tu\n"})
    monkeypatch.setenv("FEDP2EFT_DATA", str(tmp_path))
    ds = load_dataset_by_name("masakhanews")
    assert ds.source == str(tmp_path / "masakhanews")
    monkeypatch.setenv("FEDP2EFT_DATA", str(tmp_path / "empty"))
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    with pytest.raises(UserError, match="point at a local copy"):
        load_dataset_by_name("masakhanews", languages=["hau"])
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset_by_name("no-such-set")
