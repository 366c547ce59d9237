"""What every generator of a personalisation reads and reports: the client meta-features (FedP²EFT eq. 6;
the PSG's and FedL2P's input), module types, and the learned-rate report. The generators themselves are
their methods' (``methods.fedp2eft.generator``, ``methods.fedl2p.generator``)."""

from .features import client_lambdas, feature_modules, meta_features

__all__ = ["client_lambdas", "feature_modules", "meta_features"]
