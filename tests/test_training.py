"""Training: config precedence, augmentation, a one-epoch smoke run on real images, pretrained weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deephealth.cli import main  # noqa: E402
from deephealth.preprocessing import PreprocessConfig, normalize, resize_to_input  # noqa: E402
from deephealth.readers import read_image  # noqa: E402
from deephealth.training.config import TrainConfig, load_config, save_config  # noqa: E402
from deephealth.training.data import augment, decode_records, to_input  # noqa: E402
from deephealth.training.model import CamModel, PretrainedWeightsUnavailable, build_model  # noqa: E402


def test_config_precedence(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nlr: 0.01\ninput_size: 128\n")
    c = load_config(y, epochs=3, lr=None)
    assert (c.epochs, c.lr, c.input_size, c.arch) == (3, 0.01, 128, "resnet18")
    assert c.preprocessing == PreprocessConfig(128, "bilinear", 0.5, 0.25, crop_border=True)
    save_config(c, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == c


@pytest.mark.parametrize(
    ("text", "match"),
    [("epoch: 3\n", "unknown config key"), ("epochs: three\n", "must be int"), ("device: tpu\n", "device"),
     ("input_size: 8\n", "input_size")],
)
def test_config_errors(tmp_path: Path, text: str, match: str) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(y)


def test_release_recipe_is_a_valid_config() -> None:
    c = load_config(Path(__file__).parents[1] / "configs" / "release.yaml")
    assert (c.arch, c.init, c.input_size, c.crop_border) == ("efficientnet_lite0", "imagenet", 192, True)
    assert c.target_sensitivity == 0.95 and c.select_metric == "shift_balanced_accuracy"
    for other in ("release-0.2.0.yaml", "explore/lite0-cons-a.yaml", "explore/lite0-fov-a.yaml", "baselines/prototype-linear-probe.yaml", "explore/resnet18-224.yaml",
                  "explore/lite0-cons-ft.yaml", "explore/lite0-cons-ft224.yaml", "explore/lite0-aa.yaml"):
        assert load_config(Path(__file__).parents[1] / "configs" / other).epochs >= 1


def test_to_input_matches_numpy_contract() -> None:
    q = np.array([[[0, 128, 255]]], dtype=np.uint8)
    pre = PreprocessConfig(input_size=16)
    x = to_input(torch.from_numpy(q), pre)
    assert x.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(x.numpy().ravel(), [-2.0, (128 / 255 - 0.5) / 0.25, 2.0], atol=1e-6)
    np.testing.assert_allclose(x.numpy()[:, 0], normalize(q, pre), atol=1e-6)


def test_augment_identity_when_disabled_and_bounded_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32, generator=g)
    same = augment(x, g, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    torch.testing.assert_close(same, x.clamp(1e-6, 1.0), atol=1e-5, rtol=0)
    y = augment(x, g, 10.0, 0.1, 0.06, 0.1, 0.2, 0.25)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.allclose(y, x)


def test_augment_never_flips_left_right() -> None:
    # A bright left half must stay mostly on the left under the strongest allowed settings.
    x = torch.zeros(64, 1, 32, 32)
    x[..., :16] = 1.0
    y = augment(x, torch.Generator().manual_seed(1), 10.0, 0.1, 0.06, 0.0, 0.0, 0.0)
    assert bool((y[..., :16].mean((1, 2, 3)) > y[..., 16:].mean((1, 2, 3)) + 0.5).all())


def test_cam_model_logits_equal_mean_of_cam() -> None:
    torch.manual_seed(0)
    m = CamModel(build_model("resnet18")).eval()
    logits, cam, features = m(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 3) and cam.shape == (2, 3, 2, 2) and features.shape == (2, 512)
    torch.testing.assert_close(cam.mean((2, 3)), logits, atol=1e-5, rtol=1e-5)
    # the pooled features are what the linear head reads
    torch.testing.assert_close(features @ m.head.weight.T + m.head.bias, logits, atol=1e-5, rtol=1e-5)


def test_decode_records_uses_the_contract(dataset_root: Path) -> None:
    from deephealth.manifest import scan

    recs = scan(dataset_root).split("test")[:3]
    pre = PreprocessConfig(input_size=96)
    arr = decode_records(recs, pre)
    assert arr.shape == (3, 96, 96) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[1], resize_to_input(read_image(recs[1].path).image, pre))


@pytest.mark.slow
def test_one_epoch_smoke_training_on_real_images(tmp_path: Path, dataset_root: Path) -> None:
    status = main([
        "train", "--data", str(dataset_root), "--max-train-images", "48", "--epochs", "1", "--input-size", "64",
        "--batch-size", "16", "--out-dir", str(tmp_path), "--name", "smoke", "--quiet", "--num-threads", "2",
        "--backbone-lr-ratio", "0.25",
    ])
    assert status == 0
    run = tmp_path / "smoke"
    for f in ("config.yaml", "history.csv", "curves.png", "best.pt", "calibration.json", "summary.json"):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert 0.0 <= float(rows[0]["val_accuracy"]) <= 1.0 and float(rows[0]["train_loss"]) > 0
    # Both parameter groups' rates are logged; "lr" is the head's (the rate --lr names).
    lr_head, lr_backbone = float(rows[0]["lr_head"]), float(rows[0]["lr_backbone"])
    assert lr_head > 0 and lr_backbone == pytest.approx(0.25 * lr_head, rel=1e-9)
    assert float(rows[0]["lr"]) == lr_head
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_args"] == {"arch": "resnet18", "num_classes": 3, "in_chans": 1}
    assert ckpt["preprocessing"]["input_size"] == 64 and ckpt["temperature"] > 0
    assert abs(ckpt["data"]["n_train"] - 48) <= 1  # class-stratified subset, rounded per class
    calib = json.loads((run / "calibration.json").read_text())
    assert calib["val_nll_after"] <= calib["val_nll_before"] + 1e-9
    model = build_model("resnet18")
    model.load_state_dict(ckpt["model_state"])


def test_history_lr_columns_name_the_head_and_backbone_rates() -> None:
    """The history row's learning rates come from the head's and the backbone's parameter groups,
    whatever their order in the optimiser (the backbone's group comes first in a real run)."""
    from deephealth.training.loop import _lr_columns

    w = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    opt = torch.optim.AdamW([{"params": [w[0]], "lr": 0.003}, {"params": [w[1]], "lr": 0.01},
                             {"params": [w[2]], "lr": 0.003}], lr=0.01)
    assert _lr_columns(opt, [False, True, False]) == {"lr": 0.01, "lr_head": 0.01, "lr_backbone": 0.003}
    with pytest.raises(ValueError, match="one flag per parameter group"):
        _lr_columns(opt, [False, True])
    with pytest.raises(ValueError, match="no head parameter group"):
        _lr_columns(opt, [False, False, False])


def test_pretrained_offline_fails_at_once_with_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsUnavailable, match="--pretrained-file"):
        build_model("resnet18", pretrained=True)


def test_train_cli_pretrained_offline_exits_2(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", "--pretrained", "true", "--out-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download ImageNet weights") and "Traceback" not in err


def test_init_checkpoint_loads_weights_and_refuses_another_split(tmp_path: Path) -> None:
    from deephealth.training.loop import load_init_checkpoint

    torch.manual_seed(0)
    src = build_model("resnet18")
    cfg = TrainConfig(arch="resnet18", val_fraction=0.1, split_seed=0)
    path = tmp_path / "best.pt"
    torch.save({"model_state": src.state_dict(), "config": {**cfg.to_dict(), "name": "prev"}, "epoch": 7,
                "model_args": {"arch": "resnet18", "num_classes": 3, "in_chans": 1}, "temperature": 1.0,
                "preprocessing": cfg.preprocessing.to_dict()}, path)
    torch.manual_seed(1)
    m = build_model("resnet18")
    assert not torch.equal(m.fc.weight, src.fc.weight)
    info = load_init_checkpoint(m, cfg.replace(init_checkpoint=str(path)))
    torch.testing.assert_close(m.fc.weight, src.fc.weight, rtol=0, atol=0)
    torch.testing.assert_close(m.layer3[0].bn1.running_var, src.layer3[0].bn1.running_var, rtol=0, atol=0)
    assert (info["epoch"], info["name"], len(info["sha256"])) == (7, "prev", 64)
    # A different split would let the starting weights have trained on this run's validation films.
    with pytest.raises(ValueError, match="split_seed is 0 there but 3"):
        load_init_checkpoint(m, cfg.replace(init_checkpoint=str(path), split_seed=3))
    with pytest.raises(ValueError, match="arch is 'resnet18' there but 'resnet34'"):
        load_init_checkpoint(build_model("resnet34"), cfg.replace(arch="resnet34", init_checkpoint=str(path)))
    # BlurPool has no weights, so the state dict would load silently into another network.
    with pytest.raises(ValueError, match="aa_layer is '' there but 'blurpc'"):
        load_init_checkpoint(m, cfg.replace(aa_layer="blurpc", init_checkpoint=str(path)))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_init_checkpoint(m, cfg.replace(init_checkpoint=str(tmp_path / "missing.pt")))
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="garbage.pt: cannot load checkpoint"):
        load_init_checkpoint(m, cfg.replace(init_checkpoint=str(garbage)))


def test_init_checkpoint_refuses_another_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Same val_fraction and split_seed on another dataset folder is another split: refused."""
    from deephealth.manifest import Record, grouped_split
    from deephealth.training.loop import check_same_split, load_init_checkpoint, split_identity

    def records(root: str, n_patients: int) -> list[Record]:
        return [Record(f"{root}/train/{lab}/p{i}_{lab}_{j}.jpeg", "train", lab, f"p{i}")
                for i in range(n_patients) for j, lab in enumerate(("normal", "bacterial", "viral")[: 1 + i % 3])]

    here = split_identity(*grouped_split(records("/data/a", 40), 0.2, 0))
    # The same films under another folder: the same identity.
    assert split_identity(*grouped_split(records("/mnt/copy", 40), 0.2, 0)) == here
    assert here["n_train"] + here["n_val"] == len(records("/data/a", 40)) == 79 and sum(here["val_counts"].values()) == here["n_val"]
    assert len(here["val_sha256"]) == 64
    other = split_identity(*grouped_split(records("/data/a", 41), 0.2, 0))
    assert other["val_sha256"] != here["val_sha256"]

    torch.manual_seed(0)
    cfg = TrainConfig(arch="resnet18", val_fraction=0.2, split_seed=0)
    path = tmp_path / "best.pt"
    torch.save({"model_state": build_model("resnet18").state_dict(), "config": {**cfg.to_dict(), "name": "prev"},
                "epoch": 3, "preprocessing": cfg.preprocessing.to_dict(),
                "data": {"dataset_dir": "/data/a", "n_val": here["n_val"], "val_counts": here["val_counts"],
                         "split": here}}, path)
    with caplog.at_level("INFO", logger="deephealth.training.loop"):
        info = load_init_checkpoint(build_model("resnet18"), cfg.replace(init_checkpoint=str(path)))
    assert "starting from" not in caplog.text  # fit says so only after the split check passed
    assert info["split"] == here and info["dataset_dir"] == "/data/a"
    check_same_split(info, here)  # same films: accepted
    with pytest.raises(ValueError, match=r"validation split differs.*val_sha256.*dataset folder there: /data/a"):
        check_same_split(info, other)
    # A checkpoint from before the fingerprint: its full split's counts are compared.
    old = {**info, "split": {"n_val": here["n_val"], "val_counts": here["val_counts"]}}
    check_same_split(old, here)
    with pytest.raises(ValueError, match="val_counts"):
        check_same_split(old, {**here, "val_counts": {**here["val_counts"], "viral": here["val_counts"]["viral"] + 1}})
    # Nothing recorded (a run on a subset): a warning, not a silent pass.
    with caplog.at_level("WARNING", logger="deephealth.training.loop"):
        check_same_split({**info, "split": None}, other)
    assert "cannot check that its validation films are this run's" in caplog.text


@pytest.mark.needs_data
def test_bundled_model_folder_records_the_fingerprint_of_its_split(dataset_root: Path) -> None:
    """The bundled model's metadata.json -> data.split is the identity of the split its config names,
    recomputed here from the dataset's train file list; continued training from the folder compares it."""
    from deephealth.manifest import grouped_split, scan
    from deephealth.paths import default_model_dir
    from deephealth.training.loop import check_same_split, load_init_checkpoint, split_identity

    folder = default_model_dir()
    meta = json.loads((folder / "metadata.json").read_text())
    prev = meta["training"]["config"]
    assert (prev["val_fraction"], prev["split_seed"], prev["max_train_images"]) == (0.1, 0, 0)
    here = split_identity(*grouped_split(scan(dataset_root).split("train"), 0.1, 0))
    data = meta["data"]
    assert data["split"] == here
    assert here["val_sha256"] == "9618d9779bec0af4edb5a7d3505146b43bfa2820aa6b5764bb13325d01e9cfa7"
    assert (data["n_train"], data["n_val"], data["val_counts"]) == (here["n_train"], here["n_val"], here["val_counts"]) \
        == (4714, 502, {"normal": 140, "bacterial": 234, "viral": 128})

    cfg = TrainConfig(arch=prev["arch"], val_fraction=0.1, split_seed=0, init_checkpoint=str(folder))
    info = load_init_checkpoint(build_model(prev["arch"], drop_rate=prev["drop_rate"]), cfg)
    assert info["split"] == here
    check_same_split(info, here)
    same_counts = {**here, "val_sha256": "0" * 64}  # other films, same counts: no longer passes
    with pytest.raises(ValueError, match="validation split differs.*val_sha256"):
        check_same_split(info, same_counts)


def test_pretrained_from_local_file(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=1000)  # stands in for ImageNet weights
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(src.state_dict(), path)
    m = build_model("resnet18", pretrained_file=path)
    # timm adapts the RGB stem to one channel by summing over the colour axis.
    torch.testing.assert_close(m.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(m.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert m.fc.weight.shape == (3, 512)
    with pytest.raises(PretrainedWeightsUnavailable, match="not found"):
        build_model("resnet18", pretrained_file=tmp_path / "missing.pth")


def test_train_help_documents_every_option_with_its_choices(capsys) -> None:
    """`deephealth train --help`: one line of help per setting, the allowed values listed, and where the
    release recipe is (the defaults are not it)."""
    import dataclasses

    import yaml

    from deephealth.cli.train import FIELD_HELP
    from deephealth.preprocessing import _INTERPOLATIONS
    from deephealth.training.imagenet import SOURCES

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(FIELD_HELP) == sorted(names)
    for name, (text, choices) in FIELD_HELP.items():
        assert text and "\n" not in text, name
        if choices:  # every listed value is accepted, and an unlisted one is refused, by the config itself
            for c in choices:
                TrainConfig(**{name: c})
            with pytest.raises(ValueError):
                TrainConfig(**{name: "no-such-value"})
    assert set(FIELD_HELP["interpolation"][1]) == set(_INTERPOLATIONS)
    assert "efficientnet_lite0/1/2" in FIELD_HELP["init"][0] and sorted(SOURCES) == [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    for name in names:
        flag = "--" + name.replace("_", "-")
        text = " ".join(FIELD_HELP[name][0].split())
        assert flag in out and text in out, name
    assert "--init {random,imagenet} starting weights: random, or imagenet" in out
    assert ("--select-metric {balanced_accuracy,accuracy,nll,macro_auroc,shift_balanced_accuracy} validation "
            "metric") in out
    assert "--arch ARCH timm architecture name, e.g. resnet18, efficientnet_lite0 (the release) (default 'resnet18')" in out
    assert "NOT the released model's recipe: that is configs/release.yaml" in out
    assert "`deephealth train --config configs/release.yaml` reproduces it" in out
    # what the help says of the recipe is what the recipe holds
    recipe = yaml.safe_load((Path(__file__).parents[1] / "configs" / "release.yaml").read_text())
    assert (recipe["arch"], recipe["init"]) == ("efficientnet_lite0", "imagenet")
    assert recipe["consistency_weight"] > 0  # "consistency training"


def test_train_cli_refuses_a_value_outside_the_choices(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--init", "imagenet21k"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --init: invalid choice: 'imagenet21k' (choose from" in err
    # one line naming the command and where to look, not the ~30-line usage block first
    assert err.startswith("deephealth train: error: argument --init") and err.count("\n") == 1
    assert err.rstrip().endswith("(see deephealth train --help)") and "usage:" not in err


def test_readme_reproduce_command_names_the_bundled_models_run() -> None:
    """The README's "Reproduce with `deephealth train --config X` then `deephealth export runs/Y ...
    --version V`" produces the run the bundled model card names: X's run name is Y, and the bundled
    metadata.json says run Y, version V. (On a model swap, update that README line.)"""
    import re

    import yaml

    from deephealth.artifact import ModelArtifact
    from deephealth.paths import default_model_dir

    root = Path(__file__).parents[1]
    readme = " ".join((root / "README.md").read_text().split())
    m = re.search(r"Reproduce with `deephealth train --config (\S+)` then `deephealth export runs/(\S+) --out DIR "
                  r"--version (\S+)`", readme)
    assert m, "README has no reproduce line"
    config, run, version = m.groups()
    assert yaml.safe_load((root / config).read_text())["name"] == run
    model = default_model_dir()
    if not (model / "metadata.json").is_file():
        pytest.skip("no bundled model")
    meta = ModelArtifact.load(model, verify=False).metadata
    assert (meta["version"], meta["training"]["run"]) == (version, run)
    assert meta["training"]["config"]["name"] in ("", run)
