"""FedL2P (Lee et al. 2023), laid out as peft lays out a tuner: ``generator`` (the learning-rate generator,
its parameterisations), ``hypergrad`` (the IFT/Neumann hypergradient of the rates), ``method`` (the
``[fedl2p]`` config, the client settings, one client's federated round, the personalisation, the stage and
the registrations of ``fedl2p`` and ``fedl2p-paper``)."""

from .generator import PARAMETERISATIONS, LRGenerator
from .method import (
    FEDL2P_STAGE,
    FedL2PConfig,
    FedL2PMeta,
    FedL2PMethod,
    FedL2PSettings,
    fedl2p_client_update,
    fedl2p_stage,
    meta_optimisers,
    meta_step,
    new_lr_generator,
    settings_generator,
)

__all__ = ["FEDL2P_STAGE", "PARAMETERISATIONS", "FedL2PConfig", "FedL2PMeta", "FedL2PMethod", "FedL2PSettings", "LRGenerator",
           "fedl2p_client_update", "fedl2p_stage", "meta_optimisers", "meta_step", "new_lr_generator",
           "settings_generator"]
