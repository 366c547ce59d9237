"""Generation metrics that mean something in every script: METEOR, ROUGE-1 and ROUGE-L.

The paper scores Fed-Aya outputs with METEOR and ROUGE (greedy decoding). ``rouge-score``'s default
tokenizer keeps only ``[a-z0-9]``, so Chinese, Arabic, Russian and Telugu outputs score 0 whatever
they say (the authors' numbers carry that flaw). Here every metric uses :func:`tokenize`:

- text is NFKC-normalised and lower-cased;
- a *word* is a run of letters, combining marks and digits (Unicode categories L*, M*, N*), so
  Arabic, Cyrillic, Telugu (whose vowel signs are combining marks), Latin, … split at spaces and
  punctuation;
- every CJK ideograph, kana or Hangul syllable is a token of its own (Chinese and Japanese have no
  spaces; character-level ROUGE is the usual practice for them);
- punctuation, symbols and spaces separate tokens and are dropped.

ROUGE-N / ROUGE-L are ``rouge_score``'s F-measures over these tokens (no stemming); METEOR is nltk's
``meteor_score`` (exact, Porter-stem and WordNet-synonym matches; α 0.9, β 3, γ 0.5) over the same
tokens, with WordNet 3.0 from Debian's packages (``evaluation.wordnet``). Scores are per row; a
language's score is the mean over all rows of the language in a pool.
"""

from __future__ import annotations

import functools
import unicodedata
import warnings

GENERATION_METRICS = ("meteor", "rouge1", "rougeL")

_CJK_RANGES = (
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x2FA1F),  # CJK extensions B-F, compatibility supplement
)


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def tokenize(text: str) -> list[str]:
    """Unicode-aware tokens: words of letters, marks and digits; one token per CJK character."""
    tokens: list[str] = []
    word: list[str] = []
    for ch in unicodedata.normalize("NFKC", text).lower():
        if is_cjk(ch):
            if word:
                tokens.append("".join(word))
                word = []
            tokens.append(ch)
        elif unicodedata.category(ch)[0] in "LMN":
            word.append(ch)
        elif word:
            tokens.append("".join(word))
            word = []
    if word:
        tokens.append("".join(word))
    return tokens


class UnicodeTokenizer:
    """The ``tokenize`` interface ``rouge_score.RougeScorer`` expects."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


@functools.lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False, tokenizer=UnicodeTokenizer())


@functools.lru_cache(maxsize=1)
def _wordnet():
    """nltk's WordNet reader on the assembled Debian WordNet; a clear error when it is missing."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from ..errors import UserError
    from .wordnet import nltk_data_dir

    root = nltk_data_dir() / "corpora" / "wordnet"
    if not (root / "lexnames").is_file():
        raise UserError(f"WordNet for METEOR not found at {root}; run: fedp2eft prepare-wordnet")
    if str(nltk_data_dir()) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_data_dir()))
    with warnings.catch_warnings():  # "multilingual functions are not available": METEOR needs none
        warnings.simplefilter("ignore", UserWarning)
        reader = WordNetCorpusReader(str(root), None)
        reader.synsets("dog")  # load the lazy parts here, inside the filter
    return reader


def meteor(prediction: str, reference: str) -> float:
    """nltk METEOR of one output against one reference, over :func:`tokenize` tokens (0 if either is empty)."""
    from nltk.translate.meteor_score import meteor_score

    hyp, ref = tokenize(prediction), tokenize(reference)
    if not hyp or not ref:
        return 0.0
    return float(meteor_score([ref], hyp, wordnet=_wordnet()))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L F-measures of one output against one reference."""
    scores = _rouge().score(reference, prediction)
    return {"rouge1": scores["rouge1"].fmeasure, "rougeL": scores["rougeL"].fmeasure}


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """Per-row METEOR, ROUGE-1 and ROUGE-L (``GENERATION_METRICS`` order)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} outputs for {len(references)} references")
    out: dict[str, list[float]] = {m: [] for m in GENERATION_METRICS}
    for pred, ref in zip(predictions, references, strict=True):
        out["meteor"].append(meteor(pred, ref))
        for k, v in rouge(pred, ref).items():
            out[k].append(v)
    return out
