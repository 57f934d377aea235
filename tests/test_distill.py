"""Distillation from released models: soft targets, the split and contract checks, the loss, a run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deephealth.cli import main  # noqa: E402
from deephealth.inference import Predictor  # noqa: E402
from deephealth.manifest import grouped_split, scan  # noqa: E402
from deephealth.paths import default_model_dir  # noqa: E402
from deephealth.preprocessing import PreprocessConfig  # noqa: E402
from deephealth.training.config import TrainConfig  # noqa: E402
from deephealth.training.data import decode_records  # noqa: E402
from deephealth.training.distill import _check_teacher, check_teachers, teacher_dirs, teacher_targets  # noqa: E402
from deephealth.training.loop import distill_loss, split_identity  # noqa: E402


def _bundled():
    p = Predictor(num_threads=1)
    return p, p.artifact.preprocessing


def test_teacher_dirs_splits_commas() -> None:
    assert teacher_dirs(" a/b , ,c ") == [Path("a/b"), Path("c")]
    assert teacher_dirs("") == []


def test_distill_loss_known_values() -> None:
    uniform = torch.zeros(2, 3)
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # KL(one-hot || uniform) = ln 3; the loss is scaled by tau^2 and z / tau is still uniform
    assert float(distill_loss(uniform, one_hot, 1.0)) == pytest.approx(math.log(3), abs=1e-6)
    assert float(distill_loss(uniform, one_hot, 2.0)) == pytest.approx(4 * math.log(3), abs=1e-5)
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    assert float(distill_loss(z, torch.softmax(z / 2.0, dim=1), 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(z, torch.softmax(z, dim=1), 2.0)) > 0.01


def test_teacher_targets_are_the_predict_probabilities_at_the_teachers_temperature(dataset_root: Path) -> None:
    """With tau = the teacher's calibration temperature, the soft target of a film is exactly what
    `predict` says of that film's file: the two paths (contract decode + ONNX, reader + pipeline) agree."""
    p, pre = _bundled()
    recs = sorted(scan(dataset_root).split("train"), key=lambda r: r.path)[::700][:6]
    x = decode_records(recs, pre)
    y = np.array([r.label_index for r in recs])
    art = p.artifact
    targets, prov = teacher_targets([art.directory], x, y, pre, tau=art.temperature,
                                    val_fraction=art.metadata["data"]["val_fraction"],
                                    split_seed=art.metadata["data"]["split_seed"], split_id=None, num_threads=1)
    assert targets.shape == (6, 3) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
    for rec, t in zip(recs, targets):
        np.testing.assert_allclose(t, p.predict(rec.path, allow_unsuitable=True).probs, atol=1e-5)
    assert prov[0]["name"] == art.name and prov[0]["version"] == art.version and prov[0]["sha256"] == art.sha256
    assert prov[0]["train_accuracy"] == pytest.approx(float((targets.argmax(1) == y).mean()))
    # a softer temperature flattens every row; two copies of one teacher average to the same targets
    soft, _ = teacher_targets([art.directory, art.directory], x, y, pre, tau=4.0,
                              val_fraction=0.1, split_seed=0, split_id=None, num_threads=1)
    assert (soft.max(1) < targets.max(1)).all()
    one, _ = teacher_targets([art.directory], x, y, pre, tau=4.0, val_fraction=0.1, split_seed=0, split_id=None,
                             num_threads=1)
    np.testing.assert_allclose(soft, one, atol=1e-7)


def test_teacher_checks_refuse_another_contract_or_split(dataset_root: Path, caplog) -> None:
    p, pre = _bundled()
    art = p.artifact
    train, val = grouped_split(scan(dataset_root).split("train"), 0.1, 0)
    here = split_identity(train, val)
    # the bundled model records the counts and the fingerprint of this very split: accepted
    assert (art.metadata["data"]["n_val"], art.metadata["data"]["val_counts"]) == (here["n_val"], here["val_counts"])
    assert art.metadata["data"]["split"] == here
    check_teachers([art.directory], pre, 0.1, 0, here)

    def fake(pre_: PreprocessConfig = pre, **data) -> SimpleNamespace:
        return SimpleNamespace(directory=Path("/models/t"), preprocessing=pre_,
                               metadata={"data": {"val_fraction": 0.1, "split_seed": 0, **data}})

    with pytest.raises(ValueError, match=r"/models/t: its preprocessing differs .*std is 0.25 there but 0.5 here"):
        _check_teacher(fake(PreprocessConfig(pre.input_size, pre.interpolation, pre.mean, 0.25, pre.crop_border)),
                       pre, 0.1, 0, here)
    with pytest.raises(ValueError, match="split_seed is 0 there but 3 here"):
        _check_teacher(fake(), pre, 0.1, 3, here)
    other_counts = {**here["val_counts"], "viral": here["val_counts"]["viral"] + 1}
    with pytest.raises(ValueError, match="validation split differs .*val_counts"):
        _check_teacher(fake(n_val=here["n_val"], val_counts=other_counts), pre, 0.1, 0, here)
    with pytest.raises(ValueError, match="val_sha256"):
        _check_teacher(fake(split={**here, "val_sha256": "0" * 64}), pre, 0.1, 0, here)
    _check_teacher(fake(split=here), pre, 0.1, 0, here)
    with caplog.at_level("WARNING", logger="deephealth.training.distill"):
        _check_teacher(fake(), pre, 0.1, 0, here)
    assert "records no validation split" in caplog.text
    with pytest.raises(ValueError, match="distill teacher .*missing"):
        check_teachers([Path("/no/such/missing")], pre, 0.1, 0, here)
    with pytest.raises(ValueError, match="at least one teacher"):
        check_teachers([], pre, 0.1, 0, here)


def test_config_requires_teachers_with_a_weight() -> None:
    with pytest.raises(ValueError, match="go together"):
        TrainConfig(distill_weight=1.0)
    with pytest.raises(ValueError, match="go together"):
        TrainConfig(distill_teachers="a")
    with pytest.raises(ValueError, match="distill_temperature"):
        TrainConfig(distill_weight=1.0, distill_teachers="a", distill_temperature=0.0)


@pytest.mark.slow
def test_distilled_smoke_run_records_its_teacher_and_refuses_another_split(tmp_path: Path, dataset_root: Path,
                                                                          capsys) -> None:
    art = Predictor(num_threads=1).artifact
    pre = art.preprocessing
    args = ["train", "--data", str(dataset_root), "--max-train-images", "32", "--epochs", "1",
            "--input-size", str(pre.input_size), "--mean", str(pre.mean), "--std", str(pre.std),
            "--crop-border", "true", "--batch-size", "16", "--out-dir", str(tmp_path), "--quiet",
            "--num-threads", "2", "--distill-teachers", str(default_model_dir()), "--distill-weight", "1.0"]
    assert main(args + ["--name", "kd"]) == 0
    summary = json.loads((tmp_path / "kd" / "summary.json").read_text())
    (t,) = summary["distill_teachers"]
    assert (t["name"], t["version"], t["sha256"]) == (art.name, art.version, art.sha256)
    assert 0.5 <= t["train_accuracy"] <= 1.0  # it trained on these films
    capsys.readouterr()
    assert main(args + ["--name", "kd-other", "--split-seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "distill teacher" in err and "split_seed is 0 there but 1 here" in err and "Traceback" not in err
    assert not (tmp_path / "kd-other").exists()  # a refused run leaves no folder behind
