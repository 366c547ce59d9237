"""Test set-up: offline, no telemetry, Flower/Ray homes in a temp folder, shared data located."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from fedp2eft.offline import set_offline_env

set_offline_env(force=True)
_TMP_HOME = tempfile.mkdtemp(prefix="fedp2eft-test-home-")
os.environ.setdefault("FLWR_HOME", os.path.join(_TMP_HOME, "flwr"))

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("FEDP2EFT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def masakhanews_dir() -> Path:
    path = shared_data_dir() / "masakhanews"
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared MasakhaNEWS data missing at {path}")
        pytest.skip(f"shared MasakhaNEWS data not found at {path}")
    return path


@pytest.fixture(scope="session")
def xnli_dir() -> Path:
    path = shared_data_dir() / "xnli"
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared XNLI data missing at {path}")
        pytest.skip(f"shared XNLI data not found at {path}")
    return path


def require_packaged(name: str) -> None:
    from fedp2eft.models import packaged

    if not packaged.is_prepared(name):
        msg = f"packaged model {name} not prepared (run fedp2eft prepare-models {name})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
