"""FedP²EFT and the methods built on its pieces, laid out as peft lays out a tuner:

- ``generator``: the PSG network (client features → λ per module and rank, eq. 6-7);
- ``training``: BT-LoRA stage 1 (eq. 1), pruning to a budget and the pruned fine-tuning (Alg. 2);
- ``method``: the ``[fedp2eft]`` config, the PSG's federated round (Alg. 1), the stage, the personalisation
  and the registrations (``fedp2eft``, ``-tuned``, ``-mean1``, ``-widthfree``, ``-paper``);
- ``report``: λ reports and plots;
- ``step``: the step head (``fedp2eft-step``, ``lora-step``, issue 26);
- ``bt_lora_client``: the per-client BT-LoRA baseline (``bt-lora``).

The BT-LoRA layer, its priors, pruning, the fixed A and the export stay in ``adapters/``: LoRA (fixed A,
export) and the export path use them too. The client meta-features are ``psg.features`` (FedL2P's too)."""

from . import bt_lora_client, step  # noqa: F401  (register bt-lora, fedp2eft-step, lora-step)
from .generator import PSG
from .method import (
    PSG_PAPER_STAGE,
    PSG_STAGE,
    FedP2EFTConfig,
    FedP2EFTMethod,
    PSGSettings,
    new_psg,
    psg_client_update,
    regress_psg,
    rescale_to_mean_one,
    settings_psg,
)

__all__ = ["PSG", "PSG_PAPER_STAGE", "PSG_STAGE", "FedP2EFTConfig", "FedP2EFTMethod", "PSGSettings", "new_psg",
           "psg_client_update", "regress_psg", "rescale_to_mean_one", "settings_psg"]
