"""Metrics and their aggregation: per-language pooling over clients, then the mean over languages."""

from .aggregate import LanguageTally, mean_over_languages, summarise

__all__ = ["LanguageTally", "mean_over_languages", "summarise"]
