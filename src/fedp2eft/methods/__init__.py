"""Personalisation methods: one module per method, the same small interface (``interface``), each
registered in ``registry`` when its module is imported — the imports below are the registration."""

from . import none, lora, adalora, fedl2p, pf2lora, fedp2eft, standard_fl, feddpa, dept  # noqa: F401, I001
from .interface import ClientTask, Method, PersonaliseConfig
from .registry import FederatedStage, MethodSpec, get_method, get_spec, method_names, register_method

__all__ = ["ClientTask", "FederatedStage", "Method", "MethodSpec", "PersonaliseConfig",
           "get_method", "get_spec", "method_names", "register_method"]
