"""Environment variables that keep hub clients offline and Flower/Ray quiet (facts file, 'network hygiene')."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_offline_env(force: bool = False) -> None:
    """Set the offline/no-telemetry variables (without overriding the user's unless ``force``)."""
    for key, value in OFFLINE_ENV.items():
        if force or key not in os.environ:
            os.environ[key] = value
