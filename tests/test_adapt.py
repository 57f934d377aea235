"""Site adaptation (AdaBN, Li et al., 2016) and the PyTorch weights shipped beside the ONNX file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deephealth.artifact import ModelArtifact  # noqa: E402
from deephealth.cli import main  # noqa: E402
from deephealth.preprocessing import PreprocessConfig, normalize, resize_to_input  # noqa: E402
from deephealth.readers import read_image  # noqa: E402
from deephealth.training.adapt import AdaptError, adapt_model, load_weights  # noqa: E402
from deephealth.training.export import WEIGHTS_FILE, export_model  # noqa: E402
from deephealth.training.model import build_model  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny resnet (timm test_resnet, seed 0) exported with its PyTorch weights."""
    torch.manual_seed(0)
    model = build_model("test_resnet")
    out = tmp_path_factory.mktemp("adapt_source")
    return export_model(model, PreprocessConfig(input_size=SIZE), out, name="src-model", version="9.9.9",
                        temperature=1.7, metadata_extra={"operating_point": {"threshold": 0.6, "target_sensitivity": 0.95}},
                        model_args={"arch": "test_resnet", "num_classes": 3, "in_chans": 1})


@pytest.fixture(scope="module")
def site_files(dataset_root: Path) -> list[Path]:
    return sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[:12]


def test_export_ships_checked_weights(source_dir: Path) -> None:
    meta = json.loads((source_dir / "metadata.json").read_text())
    w = meta["weights"]
    assert w["file"] == WEIGHTS_FILE
    assert w["sha256"] == hashlib.sha256((source_dir / WEIGHTS_FILE).read_bytes()).hexdigest()
    model = load_weights(ModelArtifact.load(source_dir))
    torch.manual_seed(0)
    same = build_model("test_resnet")
    for k, v in same.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_adabn_sets_first_batchnorm_to_site_statistics(source_dir: Path, site_files: list[Path], tmp_path: Path) -> None:
    out = adapt_model(source_dir, site_files, tmp_path / "adapted", min_images=10, progress=False)
    adapted = load_weights(ModelArtifact.load(out))
    source = load_weights(ModelArtifact.load(source_dir))
    # By hand: the stem's output on the site films, per channel mean and (unbiased) variance.
    pre = PreprocessConfig(input_size=SIZE)
    x = np.stack([normalize(resize_to_input(read_image(p, target_size=SIZE).image, pre), pre) for p in site_files])
    with torch.no_grad():
        conv_out = source.conv1[0](torch.from_numpy(x[:, None]))  # first conv of the deep stem: no BatchNorm before it
    mean = conv_out.mean(dim=(0, 2, 3))
    var = conv_out.var(dim=(0, 2, 3), unbiased=True)
    bn, bn_src = adapted.conv1[1], source.conv1[1]
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(bn_src.running_mean, mean)
    # Learnt weights are untouched.
    assert torch.equal(adapted.conv1[0].weight, source.conv1[0].weight) and torch.equal(bn.weight, bn_src.weight)


def test_adapted_metadata_records_provenance_and_keeps_calibration(source_dir: Path, site_files: list[Path],
                                                                   tmp_path: Path) -> None:
    out = adapt_model(source_dir, site_files, tmp_path / "a", min_images=10, progress=False)
    art = ModelArtifact.load(out)
    ad = art.metadata["adaptation"]
    assert art.name == "src-model-adapted" and art.version == "9.9.9+adapted"
    assert ad["n_images"] == 12 and ad["transductive"] is True
    assert ad["images"][0] == {"file": site_files[0].name,
                               "sha256": hashlib.sha256(site_files[0].read_bytes()).hexdigest()}
    assert ad["source_model"]["version"] == "9.9.9"
    assert art.temperature == pytest.approx(1.7) and art.operating_point["threshold"] == 0.6


def test_adapt_cli_reports_bad_files_and_refuses_too_few(source_dir: Path, site_files: list[Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for p in site_files[:5]:
        (site / p.name).write_bytes(p.read_bytes())
    (site / "broken.jpeg").write_bytes(b"not a jpeg at all")
    rc = main(["adapt", "--images", str(site), "--model", str(source_dir), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "broken.jpeg" in err and "5 readable films, but adaptation needs at least 100" in err
    rc = main(["adapt", "--images", str(site), "--model", str(source_dir), "--out", str(tmp_path / "o"),
               "--min-images", "5", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0 and "5 films used, 1 skipped" in out.out and "broken.jpeg" in out.err


def test_adapt_without_weights_is_a_clear_error(tiny_model_dir: Path, site_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(AdaptError, match="no PyTorch weights"):
        adapt_model(tiny_model_dir, site_files, tmp_path / "x", min_images=1, progress=False)


@pytest.mark.slow
def test_adapted_model_refits_its_input_gate_and_review_band_on_the_labelled_split(site_files: list[Path], dataset_root: Path,
                                                                   tmp_path: Path) -> None:
    """The gate reads the network's features, which adaptation changes: it is refitted on the source's
    training split (never on the site's films), so a gated source gives a gated adapted model."""
    from deephealth.training.export import fit_run_gate, fit_run_review_band

    config = {"val_fraction": 0.1, "split_seed": 0, "max_train_images": 160, "seed": 0, "data_dir": str(dataset_root)}
    torch.manual_seed(0)
    src = export_model(build_model("test_resnet"), PreprocessConfig(input_size=SIZE), tmp_path / "src", name="g",
                       version="1", temperature=1.0, metadata_extra={"training": {"config": config},
                                                                     "operating_point": {"threshold": 0.5}},
                       model_args={"arch": "test_resnet", "num_classes": 3, "in_chans": 1})
    assert fit_run_gate(src, config) is not None
    assert fit_run_review_band(src, config) is not None
    out = adapt_model(src, site_files, tmp_path / "adapted", min_images=10, progress=False)
    src_meta, new_meta = (json.loads((d / "metadata.json").read_text()) for d in (src, out))
    src_gate, new_gate = src_meta["gate"], new_meta["gate"]
    assert (out / new_gate["file"]).is_file() and new_gate["sha256"] != src_gate["sha256"]
    assert new_gate["validation"]["flagged_fraction"] <= 0.05  # thresholds set on the labelled validation films
    # the review band too: refitted on the same 40 validation films through the adapted network
    src_band, new_band = (m["operating_point"]["review_band"] for m in (src_meta, new_meta))
    assert new_band["validation"]["films"] == src_band["validation"]["films"] == 40
    assert new_meta["operating_point"]["threshold"] == 0.5  # the operating point itself is the source's
    assert new_band["pneumonia_logit_margin"] != src_band["pneumonia_logit_margin"]


@pytest.mark.parametrize(("source", "expected"), [
    ("0.3.0", "0.3.0+adapted"),
    ("0.3.0+lite0.aa", "0.3.0+lite0.aa.adapted"),  # an exported run's local label gets one more part
    ("9.9.9+adapted", "9.9.9+adapted.adapted"),
])
def test_adapted_version_is_pep440(source: str, expected: str) -> None:
    from packaging.version import Version

    from deephealth.training.adapt import adapted_version

    assert adapted_version(source) == expected
    assert str(Version(expected)) == expected  # valid PEP 440, normalised form unchanged
