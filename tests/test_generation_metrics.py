"""METEOR / ROUGE with the Unicode-aware tokenizer, checked against values computed by hand."""

from __future__ import annotations

import pytest

from fedp2eft.evaluation.text_metrics import generation_scores, meteor, rouge, tokenize


def test_tokenize_keeps_words_of_every_script_and_splits_cjk_by_character():
    # Telugu vowel signs are combining marks: the words must stay whole
    assert tokenize("నేను బడికి వెళ్తాను.") == ["నేను", "బడికి", "వెళ్తాను"]
    assert tokenize("我爱北京！") == ["我", "爱", "北", "京"]
    assert tokenize("ذهب الولد، إلى المدرسة") == ["ذهب", "الولد", "إلى", "المدرسة"]
    assert tokenize("Кошка СИДИТ на окне?") == ["кошка", "сидит", "на", "окне"]
    assert tokenize("It's 2024, OK") == ["it", "s", "2024", "ok"]
    assert tokenize("  ... ") == []


# (prediction, reference, ROUGE-1 F, ROUGE-L F, METEOR). By hand: P = R = matches / 4 (or / 3), so
# F = P; METEOR = Fmean · (1 − 0.5 · (chunks / matches)³) with Fmean = P·R / (0.9·P + 0.1·R).
CASES = [
    # zh by character: 我 爱 match (1 chunk of 2): Fmean 0.5, penalty 0.5 · (1/2)³ = 0.0625
    ("我爱上海", "我爱北京", 0.5, 0.5, 0.5 * (1 - 0.0625)),
    # ar: three of four words, one chunk: 0.75 · (1 − 0.5 · (1/3)³)
    ("ذهب الولد إلى البيت", "ذهب الولد إلى المدرسة", 0.75, 0.75, 0.75 * (1 - 0.5 / 27)),
    # ru: кошка | на окне — two chunks of three matches: 0.75 · (1 − 0.5 · (2/3)³)
    ("кошка спит на окне", "кошка сидит на окне", 0.75, 0.75, 0.75 * (1 - 0.5 * 8 / 27)),
    # te: నేను | వెళ్తాను — two chunks of two matches: (2/3) · (1 − 0.5)
    ("నేను ఇంటికి వెళ్తాను", "నేను బడికి వెళ్తాను", 2 / 3, 2 / 3, (2 / 3) * 0.5),
]


@pytest.mark.parametrize("pred,ref,r1,rl,met", CASES)
def test_hand_computed_scores_in_four_scripts(pred, ref, r1, rl, met):
    scores = rouge(pred, ref)
    assert scores["rouge1"] == pytest.approx(r1)
    assert scores["rougeL"] == pytest.approx(rl)
    assert meteor(pred, ref) == pytest.approx(met)


def test_rouge_l_differs_from_rouge_1_when_order_differs():
    # unigrams all match, the longest common subsequence is 2 of 3 tokens
    assert rouge("c a b", "a b c")["rouge1"] == pytest.approx(1.0)
    assert rouge("c a b", "a b c")["rougeL"] == pytest.approx(2 / 3)


def test_meteor_uses_wordnet_synonyms_in_english():
    # "auto" and "car" share a WordNet synset: four matches in one chunk, as for identical text.
    # (nltk 3.10 looks synonyms up on Porter stems, so "automobile" -> "automobil" finds none.)
    assert meteor("the auto is red", "the car is red") == pytest.approx(1 - 0.5 / 64)
    assert meteor("the banana is red", "the car is red") < 0.7


def test_non_latin_outputs_are_not_zero_unlike_rouge_scores_default_tokenizer():
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rouge1"]).score("我爱北京", "我爱北京")["rouge1"].fmeasure
    assert default == 0.0  # the flaw the authors' numbers carry
    assert rouge("我爱北京", "我爱北京")["rouge1"] == pytest.approx(1.0)


def test_generation_scores_per_row_and_empty_output():
    out = generation_scores(["我爱北京", ""], ["我爱北京", "你好"])
    assert set(out) == {"meteor", "rouge1", "rougeL"}
    assert out["rouge1"] == [pytest.approx(1.0), 0.0]
    assert out["meteor"][1] == 0.0
    with pytest.raises(ValueError):
        generation_scores(["a"], [])
