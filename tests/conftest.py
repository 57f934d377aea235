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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised model folder (``model.onnx`` + ``metadata.json``), made by the real exporter.

    timm's ``test_resnet`` (about 0.37 M parameters, pool + linear head) with ``torch.manual_seed(0)``,
    input 96x96 (class activation maps 3x3), temperature 1.5, exported with
    :func:`deephealth.training.export.export_model` (ONNX checker + PyTorch vs ONNX Runtime parity).
    Takes a few seconds once per session; needs the [train] extra (skipped without PyTorch).
    """
    torch = pytest.importorskip("torch")
    from deephealth.preprocessing import PreprocessConfig
    from deephealth.training.export import export_model
    from deephealth.training.model import build_model

    torch.manual_seed(0)
    model = build_model("test_resnet")
    out = tmp_path_factory.mktemp("tiny_model")
    return export_model(
        model,
        PreprocessConfig(input_size=96),
        out,
        name="tiny-test-model",
        version="0.0.0-test",
        temperature=1.5,
        metadata_extra={"architecture": {"arch": "test_resnet", "num_classes": 3, "in_chans": 1}},
    )


@pytest.fixture(scope="session")
def gated_model_dir(tiny_model_dir: Path, dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with an input gate fitted by the real fitting code (:func:`deephealth.training.gate_fit.fit_gate`).

    A copy of ``tiny_model_dir``; the gate is fitted on the patient-grouped split of the official
    train folder (seed 0, as training uses): 400 training films and 200 validation films (every
    k-th of each side), 300 classifier positives, 80 films per transformation and 300 "other"
    negatives. Thresholds are real: set on those 200 validation films. About 20 s once per session.
    """
    pytest.importorskip("sklearn")
    import shutil

    import numpy as np

    from deephealth.artifact import ModelArtifact
    from deephealth.manifest import grouped_split, scan
    from deephealth.training.data import decode_records
    from deephealth.training.gate_fit import fit_gate

    out = tmp_path_factory.mktemp("gated_model") / "model"
    shutil.copytree(tiny_model_dir, out)
    train, val = grouped_split(scan(dataset_root).split("train"), 0.1, 0)
    train, val = train[:: max(1, len(train) // 400)][:400], val[:: max(1, len(val) // 200)][:200]
    pre = ModelArtifact.load(out).preprocessing
    fit_gate(out, decode_records(train, pre), np.array([r.label_index for r in train]), decode_records(val, pre),
             n_lr_films=300, n_transformed=80, n_other=300, seed=0)
    return out


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The audit trail's default SQLite file goes to a temporary state folder, never to ~/.local/state."""
    import os

    folder = tmp_path_factory.mktemp("state")
    old = {k: os.environ.get(k) for k in ("DEEPHEALTH_STATE_DIR", "DEEPHEALTH_DATABASE_URL")}
    os.environ["DEEPHEALTH_STATE_DIR"] = str(folder)
    os.environ.pop("DEEPHEALTH_DATABASE_URL", None)
    yield folder
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
