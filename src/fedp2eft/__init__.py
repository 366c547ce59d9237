"""fedp2eft: federated learning to personalise parameter-efficient fine-tuning (FedP²EFT)."""

__version__ = "0.1.0"
