"""The personalisation strategy generator (PSG): the client meta-features (shared with FedL2P's
learning-rate generator, ``methods.fedl2p.generator``) and the generator network."""

from .features import client_lambdas, feature_modules, meta_features
from .generator import PSG

__all__ = ["PSG", "client_lambdas", "feature_modules", "meta_features"]
