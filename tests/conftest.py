"""Shared fixtures. The dataset is read from DEEPHEALTH_DATA_ROOT or ../shared/data (never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deephealth.paths import data_root as _data_root


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the shared data (``chest_xray_224/``, ``dicom/``); skips nothing: CI must have it."""
    root = _data_root()
    assert (root / "chest_xray_224").is_dir(), f"dataset not found under {root}; set DEEPHEALTH_DATA_ROOT"
    return root


@pytest.fixture(scope="session")
def dataset_root(data_root: Path) -> Path:
    """The Kermany-layout dataset folder."""
    return data_root / "chest_xray_224"


@pytest.fixture(scope="session")
def dicom_dir(data_root: Path) -> Path:
    """Folder with the two real DICOM files (an adult CR chest PA and a CT slice)."""
    return data_root / "dicom"
