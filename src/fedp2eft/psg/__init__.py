"""The personalisation strategy generator (PSG): meta-features and the generator network."""

from .features import feature_modules, meta_features
from .generator import PSG

__all__ = ["PSG", "feature_modules", "meta_features"]
