"""Model loading: hub id, local folder, packaged offline models and tiny random test models."""

from .classifier import SequenceClassifier
from .loading import load_backbone, load_causal_lm, load_classifier, load_tokenizer, resolve
from .packaged import prepare

__all__ = [
    "SequenceClassifier",
    "load_backbone",
    "load_causal_lm",
    "load_classifier",
    "load_tokenizer",
    "prepare",
    "resolve",
]
