"""The preprocessing contract (deephealth.preprocessing) with golden values, and its round trip with
the reader on real dataset images (what training caches == what inference computes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deephealth.preprocessing import PreprocessConfig, normalize, preprocess, resize_to_input
from deephealth.readers import read_image

CFG = PreprocessConfig()  # 224, bilinear, mean 0.5, std 0.25


# --------------------------------------------------------------------------- resize_to_input


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos", "box"])
@pytest.mark.parametrize("shape", [(300, 500), (100, 80), (224, 224)])
def test_constant_image_stays_constant(interpolation: str, shape: tuple[int, int]) -> None:
    img = np.full(shape, 100 / 255, dtype=np.float32)
    q = resize_to_input(img, PreprocessConfig(input_size=32, interpolation=interpolation))
    assert q.dtype == np.uint8 and q.shape == (32, 32)
    assert (q == 100).all()


def test_box_downsample_averages_blocks() -> None:
    # 32x32 -> 16x16 with a box filter: each output pixel is the mean of a 2x2 block.
    blocks = np.array([[0, 40], [80, 120]], dtype=np.float32) / 255  # one 2x2 block's values
    img = np.tile(blocks, (16, 16))
    q = resize_to_input(img, PreprocessConfig(input_size=16, interpolation="box"))
    assert (q == 60).all()  # (0 + 40 + 80 + 120) / 4


def test_whole_image_squashed_not_cropped() -> None:
    # A 64x256 image (wide) with a bright right quarter: after the square resize the bright part
    # is still the right quarter (no crop, aspect ratio not kept).
    img = np.zeros((64, 256), dtype=np.float32)
    img[:, 192:] = 1.0
    q = resize_to_input(img, PreprocessConfig(input_size=32, interpolation="nearest"))
    assert q.shape == (32, 32)
    assert (q[:, :24] == 0).all() and (q[:, 24:] == 255).all()


def test_bilinear_downscale_antialiases() -> None:
    # A 1-px checkerboard downscaled 8x becomes mid-grey with antialiasing (not aliased to 0/255).
    img = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)
    q = resize_to_input(img, PreprocessConfig(input_size=32))
    assert np.abs(q.astype(int) - 128).max() <= 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, 0), (0.5, 128), (1.0, 255), (100 / 255, 100), (-0.5, 0), (1.7, 255), (0.2, 51)],
)
def test_quantisation(value: float, expected: int) -> None:
    img = np.full((16, 16), value, dtype=np.float32)
    assert (resize_to_input(img, PreprocessConfig(input_size=16)) == expected).all()


def test_every_8bit_level_survives_at_input_size() -> None:
    # At the input size there is no resampling: q / 255 -> q for every 8-bit level.
    q = np.arange(256 * 224, dtype=np.int64).reshape(224, 256)[:, :224] % 256
    img = q.astype(np.float32) / 255
    np.testing.assert_array_equal(resize_to_input(img, CFG), q.astype(np.uint8))


# --------------------------------------------------------------------------- normalize / preprocess


def test_normalize_golden_values() -> None:
    q = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    x = normalize(q, CFG)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[-2.0, 2.0], [(128 / 255 - 0.5) / 0.25, (64 / 255 - 0.5) / 0.25]], atol=1e-6)


def test_normalize_keeps_leading_axes() -> None:
    q = np.zeros((3, 16, 16), dtype=np.uint8)
    assert normalize(q, CFG).shape == (3, 16, 16)


def test_preprocess_shape_and_values() -> None:
    img = np.zeros((300, 400), dtype=np.float32)
    img[:, 200:] = 1.0
    x = preprocess(img, CFG)
    assert x.shape == (1, 224, 224) and x.dtype == np.float32
    assert x[0, 100, 0] == pytest.approx(-2.0) and x[0, 100, 223] == pytest.approx(2.0)
    np.testing.assert_array_equal(x, normalize(resize_to_input(img, CFG), CFG)[None])


# --------------------------------------------------------------------------- config


def test_config_round_trip_through_json() -> None:
    cfg = PreprocessConfig(input_size=320, interpolation="bicubic", mean=0.45, std=0.3)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["resize"] == "whole image to square, no crop" and d["quantize_bits"] == 8
    assert PreprocessConfig.from_dict(d) == cfg
    assert PreprocessConfig.from_dict({"input_size": 256, "future_key": 1}) == PreprocessConfig(input_size=256)


@pytest.mark.parametrize(
    "kwargs",
    [{"input_size": 8}, {"input_size": 4096}, {"input_size": 224.0}, {"interpolation": "cubic"}, {"std": 0}, {"std": -1}],
)
def test_bad_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(**kwargs)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3, 64, 64), np.float32), np.zeros(64, np.float32), np.zeros((0, 64), np.float32), [[0.5, 0.5]]],
    ids=["3d", "1d", "empty", "list"],
)
def test_bad_image_raises(bad) -> None:
    with pytest.raises(ValueError):
        resize_to_input(bad, CFG)
    with pytest.raises(ValueError):
        preprocess(bad, CFG)


# --------------------------------------------------------------------------- reader + contract on real data


def sample_images(dataset_root: Path) -> list[Path]:
    files = []
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            found = sorted((dataset_root / split / cls).glob("*.jpeg"))
            files += found[:: max(1, len(found) // 3)][:3]
    return files


def test_dataset_round_trip_is_exact(dataset_root: Path) -> None:
    files = sample_images(dataset_root)
    assert len(files) == 18
    for f in files:
        with Image.open(f) as im:
            assert im.size == (224, 224)
            expected = np.asarray(im.convert("L"))
        q = resize_to_input(read_image(f).image, PreprocessConfig(224))
        np.testing.assert_array_equal(q, expected, err_msg=str(f))
        # bytes (uploads) and paths give the same network input
        x_bytes = preprocess(read_image(f.read_bytes(), name=f.name, target_size=224).image, CFG)
        np.testing.assert_array_equal(x_bytes[0], normalize(expected, CFG))


# ------------------------------------------------------------------------------ uniform borders (issue 11)


def _film(h: int = 120, w: int = 100) -> np.ndarray:
    """A synthetic film with structure everywhere (no uniform line of its own)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return 0.3 + 0.2 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + 0.1 * (yy / h)


def test_content_box_finds_black_padding_and_white_letterbox() -> None:
    from deephealth.preprocessing import content_box

    film = _film()
    canvas = np.zeros((240, 200), np.float32)
    canvas[60:180, 50:150] = film  # centred on a black canvas twice its size
    assert content_box(canvas) == (60, 180, 50, 150)
    letter = np.ones((120, 300), np.float32)
    letter[:, 100:200] = film  # 3:1 letterbox with white bars
    assert content_box(letter) == (0, 120, 100, 200)
    assert content_box(film) == (0, 120, 0, 100)


def test_thin_uniform_edges_are_kept_and_blank_images_untouched() -> None:
    from deephealth.preprocessing import content_box

    film = _film()
    film[:, :4] = 0.0  # 4 of 100 columns black: under 10 %, a collimation edge, not padding
    assert content_box(film) == (0, 120, 0, 100)
    assert content_box(np.zeros((50, 50), np.float32)) == (0, 50, 0, 50)


def test_content_box_shortcut_agrees_with_the_line_statistics() -> None:
    # content_box skips the per-line statistics when neither outermost line is flat; the full
    # computation (every line's range and mean) must give the same box, border or not
    from deephealth.preprocessing import BORDER_TOLERANCE, MIN_BORDER_FRACTION, content_box

    def full(img: np.ndarray) -> tuple[int, int, int, int]:
        def run(lo, hi, mean):
            ok = (hi - lo <= BORDER_TOLERANCE) & (np.abs(mean - mean[0]) <= BORDER_TOLERANCE)
            bad = np.flatnonzero(~ok)
            return int(bad[0]) if bad.size else len(ok)

        def trim(lines, n):
            lo, hi, mean = lines.min(1), lines.max(1), lines.mean(1)
            a = run(lo, hi, mean)
            if a >= n:
                return 0, n
            b = run(lo[::-1], hi[::-1], mean[::-1])
            return (0, n) if a + b < MIN_BORDER_FRACTION * n or n - a - b < 0.25 * n else (a, n - b)

        top, bottom = trim(img, img.shape[0])
        return (top, bottom, *trim(img[top:bottom].T, img.shape[1]))

    rng = np.random.default_rng(3)
    for k in range(60):
        img = _film(int(rng.integers(40, 160)), int(rng.integers(40, 160)))
        h, w = img.shape
        for _ in range(int(rng.integers(0, 3))):  # flat lines or bands on some sides
            side, depth, grey = int(rng.integers(4)), int(rng.integers(1, max(2, h // 3))), float(rng.choice([0.0, 1.0, 0.4]))
            if side == 0:
                img[:depth] = grey
            elif side == 1:
                img[h - depth:] = grey
            elif side == 2:
                img[:, :min(depth, w - 1)] = grey
            else:
                img[:, w - min(depth, w - 1):] = grey
        if k % 5 == 0:
            img[0] = img[0].mean()  # one flat outermost line only
        assert content_box(img) == full(img)


def test_crop_border_contract_makes_padded_and_letterboxed_copies_identical() -> None:
    film = _film()
    canvas = np.zeros((240, 200), np.float32)
    canvas[60:180, 50:150] = film
    on = PreprocessConfig(input_size=32, crop_border=True)
    off = PreprocessConfig(input_size=32)
    np.testing.assert_array_equal(resize_to_input(canvas, on), resize_to_input(film, on))
    assert not np.array_equal(resize_to_input(canvas, off), resize_to_input(film, off))
    assert on.to_dict()["crop_border"] is True and "uniform borders" in on.to_dict()["resize"]
    assert PreprocessConfig.from_dict({"input_size": 32}).crop_border is False  # 0.1.0 metadata
