"""The personalisation strategy generator (PSG): meta-features and the generator network; also
FedL2P's learning-rate generator, which maps the same features to per-matrix learning rates."""

from .features import client_lambdas, feature_modules, meta_features
from .generator import PSG
from .lr_generator import LRGenerator

__all__ = ["PSG", "LRGenerator", "client_lambdas", "feature_modules", "meta_features"]
