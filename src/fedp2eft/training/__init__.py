"""Batching, the local training loop, prediction and the choice of adapted modules: the helpers every
method, the PSG's meta-features and the federated stages share (below ``psg`` and ``methods``)."""

from .batches import EncodedData
from .loop import Loss, device_of, model_inputs, to_device, train_model
from .modules import HEAD_MODES, adapted_modules, copy_sharing_embeddings, linear_module_names, saved_modules
from .proximal import proximal_term
from .recipe import Recipe

__all__ = ["HEAD_MODES", "EncodedData", "adapted_modules", "copy_sharing_embeddings", "device_of", "linear_module_names",
           "proximal_term",
           "Loss", "model_inputs", "Recipe", "saved_modules", "to_device", "train_model"]
