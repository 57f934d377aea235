"""Input kinds from public bug reports (issue 11): bare DICOM data sets, Presentation LUT Shape,
blank images, Float Pixel Data, and one format policy for the CLI, the API and the page.

Every input is built here with pydicom and Pillow; values are known pixels and known messages.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from deephealth.cli import main
from deephealth.readers import (
    ACCEPTED_FORMATS,
    ImageReadError,
    UnsupportedFormatError,
    detect_format,
    read_image,
)
from deephealth.readers.formats import is_bare_dicom

from test_readers_dicom import make_dicom, to_bytes

# 12-bit ramp with structure: value (y, x) = (x * 31 + y * 7) % 4096
RAMP12 = ((np.arange(96)[None, :] * 31 + np.arange(80)[:, None] * 7) % 4096).astype(np.uint16)


def scaled(v: float) -> float:
    """What the reader gives for a RAMP12 value: min-max scaled (12-bit data without a window)."""
    return (float(v) - RAMP12.min()) / (RAMP12.max() - RAMP12.min())


def dx_dataset(arr: np.ndarray = RAMP12, photometric: str = "MONOCHROME2", **elements) -> Dataset:
    """A DX data set with file meta (the DICOM reader tests' builder), 12-bit for uint16 data."""
    return make_dicom(arr, photometric=photometric, bits_stored=12 if arr.dtype == np.uint16 else 8, **elements)


def full_file(ds: Dataset) -> bytes:
    return to_bytes(ds)


def bare_dataset(ds: Dataset, *, implicit: bool = True) -> bytes:
    """The data set alone: no preamble, no 'DICM', no group 0002."""
    bare = Dataset(ds)  # shallow copy without file meta
    buf = io.BytesIO()
    bare.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


GRAY8 = (np.arange(80 * 96).reshape(80, 96) % 256).astype(np.uint8)


# ----------------------------------------------------------------------------------- 1. bare DICOM


def test_bare_implicit_vr_dataset_reads_like_the_full_file():
    ds = dx_dataset()
    full, bare = full_file(ds), bare_dataset(ds)
    assert bare[128:132] != b"DICM" and b"DICM" not in bare[:200] and bare[:2] == b"\x08\x00"
    assert detect_format(bare).name == "DICOM" and detect_format(bare).bare_dicom
    a, b = read_image(full, name="full.dcm"), read_image(bare, name="bare")
    np.testing.assert_array_equal(b.image, a.image)
    assert b.image[10, 20] == pytest.approx(scaled(RAMP12[10, 20]), abs=1e-6)
    assert (b.info.format, b.info.modality, b.info.width, b.info.height) == ("DICOM", "DX", 96, 80)
    assert b.info.transfer_syntax == f"Implicit VR Little Endian ({ImplicitVRLittleEndian})"
    assert any("without the PS3.10 header" in w for w in b.info.warnings)


def test_bare_explicit_vr_dataset_and_meta_without_preamble():
    ds = dx_dataset()
    ref = read_image(full_file(ds)).image
    explicit = read_image(bare_dataset(ds, implicit=False), name="bare-explicit")
    np.testing.assert_array_equal(explicit.image, ref)
    assert explicit.info.transfer_syntax == f"Explicit VR Little Endian ({ExplicitVRLittleEndian})"
    # group 0002 present, but no 128-byte preamble and no "DICM"
    no_preamble = full_file(ds)[132:]
    assert no_preamble[:2] == b"\x02\x00"
    res = read_image(no_preamble, name="meta-only")
    np.testing.assert_array_equal(res.image, ref)
    assert not any("Transfer Syntax UID is missing" in w for w in res.info.warnings)


def test_bare_dataset_is_classified_like_the_full_file(tiny_model_dir, tmp_path, capsys):
    from deephealth.inference import Predictor

    ds = dx_dataset()
    p = Predictor(tiny_model_dir)
    # a synthetic ramp, not a chest film: the view check refuses it (issue 15); the override
    # classifies it so that the two readings can be compared
    a = p.predict(full_file(ds), name="full.dcm", allow_unsuitable=True)
    b = p.predict(bare_dataset(ds), name="bare", allow_unsuitable=True)
    assert b.ok and b.label == a.label and a.suitability.to_dict() == b.suitability.to_dict()
    np.testing.assert_array_equal(b.probs, a.probs)
    # the CLI: a file without extension (as PACS exports write them)
    f = tmp_path / "IM0001"
    f.write_bytes(bare_dataset(ds))
    rc = main(["predict", str(f), "--model", str(tiny_model_dir), "--format", "json", "--allow-unsuitable"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "not an image" not in out + err and '"label": "%s"' % a.label in out


def test_not_dicom_starting_like_a_group_is_not_taken_for_one():
    assert not is_bare_dicom(b"\x08\x00\x05\x00" + b"\xff" * 20)  # length far too large
    assert not is_bare_dicom(b"\x08\x00\x16\x00\x04\x00\x00\x00abcd\x08\x00\x10\x00")  # tags decrease
    assert not is_bare_dicom(b"\x10\x00\x10\x00" + bytes(20))  # starts at group 0010
    with pytest.raises(UnsupportedFormatError, match="not an image"):
        read_image(b"\x08\x00\x05\x00" + b"\xff" * 200, name="x")


# ----------------------------------------------------------------------------- 2. Presentation LUT


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted", "contradiction"),
    [
        ("MONOCHROME1", "INVERSE", True, False),  # the normal DX pairing: inverted exactly once
        ("MONOCHROME1", "IDENTITY", True, True),
        ("MONOCHROME2", "INVERSE", False, True),  # follow the Photometric Interpretation, warn
        ("MONOCHROME2", "IDENTITY", False, False),
        ("MONOCHROME1", None, True, False),
    ],
)
def test_presentation_lut_shape(photometric, shape, inverted, contradiction):
    extra = {"PresentationLUTShape": shape} if shape else {}
    res = read_image(full_file(dx_dataset(photometric=photometric, **extra)), name="x.dcm")
    v = scaled(RAMP12[10, 20])
    assert res.image[10, 20] == pytest.approx(1 - v if inverted else v, abs=1e-6)
    assert res.image[0, 0] == (1.0 if inverted else 0.0)
    warned = [w for w in res.info.warnings if "Presentation LUT Shape (2050,0020)" in w]
    assert bool(warned) == contradiction
    if contradiction:
        assert f"{shape} contradicts Photometric Interpretation {photometric}" in warned[0]


# ----------------------------------------------------------------------------------- 4. blank images


def _dicom_flat(value: int) -> bytes:
    return full_file(dx_dataset(np.full((80, 96), value, np.uint16)))


@pytest.mark.parametrize(
    ("name", "data", "what"),
    [
        ("black.png", encode(np.zeros((80, 96), np.uint8), "PNG"), "all black"),
        ("white.png", encode(np.full((80, 96), 255, np.uint8), "PNG"), "all white"),
        ("grey.png", encode(np.full((80, 96), 128, np.uint8), "PNG"), "flat grey, level 128 of 255"),
        ("black.jpg", encode(np.zeros((80, 96), np.uint8), "JPEG"), "all black"),
        ("white.jpg", encode(np.full((80, 96), 255, np.uint8), "JPEG", quality=75), "all white"),
        ("grey-rgb.jpg", encode(np.full((80, 96, 3), 90, np.uint8), "JPEG"), "flat grey"),
        ("grey.bmp", encode(np.full((80, 96), 60, np.uint8), "BMP"), "flat grey"),
        ("grey.tif", encode(np.full((80, 96), 60, np.uint8), "TIFF"), "flat grey"),
        ("grey.webp", encode(np.full((80, 96), 60, np.uint8), "WEBP", lossless=True), "flat grey"),
        ("flat16.png", encode(np.full((80, 96), 3000, np.uint16), "PNG"), "all black"),
        ("flat.dcm", _dicom_flat(1234), "all black"),
        # +-2 grey levels of noise (what a JPEG of a flat image may carry) is still blank
        ("noisy.png", encode((128 + np.random.default_rng(0).integers(-2, 3, (80, 96))).astype(np.uint8), "PNG"),
         "flat grey"),
    ],
)
def test_blank_image_refused_as_no_contrast(name, data, what):
    with pytest.raises(ImageReadError) as err:
        read_image(data, name=name)
    assert str(err.value).startswith(f"{name}: image has no contrast ({what}")
    assert not isinstance(err.value, UnsupportedFormatError)


def test_low_but_real_contrast_is_accepted():
    arr = np.full((80, 96), 100, np.uint8)
    arr[:, 48:] = 106  # 6 grey levels: above the 0.02 (5.1 levels) limit
    res = read_image(encode(arr, "PNG"), name="faint.png")
    assert res.image.max() - res.image.min() == pytest.approx(6 / 255, abs=1e-7)
    arr[:, 48:] = 105  # 5 levels: refused
    with pytest.raises(ImageReadError, match="no contrast"):
        read_image(encode(arr, "PNG"), name="fainter.png")


def test_blank_image_through_cli(tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "black.jpg"
    f.write_bytes(encode(np.zeros((80, 96), np.uint8), "JPEG"))
    rc = main(["predict", str(f), "--model", str(tiny_model_dir)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"{f}: image has no contrast (all black" in out + err and "Traceback" not in err


# --------------------------------------------------------------------------------- 5. float pixels


def _float_dataset(values: np.ndarray, keyword: str = "FloatPixelData", photometric: str = "MONOCHROME2") -> bytes:
    ds = dx_dataset()
    del ds.PixelData
    for k in ("BitsStored", "HighBit", "PixelRepresentation"):
        if k in ds:
            delattr(ds, k)
    ds.BitsAllocated = 64 if keyword == "DoubleFloatPixelData" else 32
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = values.shape
    dtype = np.float64 if keyword == "DoubleFloatPixelData" else np.float32
    setattr(ds, keyword, values.astype(dtype).tobytes())
    return full_file(ds)


FLOATS = (RAMP12.astype(np.float64) - 1000.0) * 0.25  # -250 .. 773.75


@pytest.mark.parametrize(("keyword", "tag"), [("FloatPixelData", "(7FE0,0008)"), ("DoubleFloatPixelData", "(7FE0,0009)")])
def test_float_pixel_data_is_min_max_scaled_with_a_warning(keyword, tag):
    res = read_image(_float_dataset(FLOATS, keyword), name="f.dcm")
    lo, hi = FLOATS.min(), FLOATS.max()
    assert res.image.dtype == np.float32 and res.image.shape == (80, 96)
    assert res.image.min() == 0.0 and res.image.max() == 1.0
    assert res.image[10, 20] == pytest.approx((FLOATS[10, 20] - lo) / (hi - lo), abs=1e-6)
    name = "Float Pixel Data" if keyword == "FloatPixelData" else "Double Float Pixel Data"
    assert any(w.startswith(f"{name} {tag}: floating-point values min-max scaled") for w in res.info.warnings)


def test_float_pixel_data_monochrome1_and_non_finite():
    vals = FLOATS.copy()
    vals[0, 0] = np.nan
    res = read_image(_float_dataset(vals, photometric="MONOCHROME1"), name="f.dcm")
    lo, hi = np.nanmin(vals), np.nanmax(vals)
    assert res.image[10, 20] == pytest.approx(1 - (vals[10, 20] - lo) / (hi - lo), abs=1e-6)
    assert res.image[0, 0] == 1.0  # NaN -> the minimum -> inverted to white
    assert any("non-finite" in w for w in res.info.warnings)


def test_truncated_float_pixel_data_is_named():
    data = _float_dataset(FLOATS)
    with pytest.raises(ImageReadError) as err:
        read_image(data[:-2000], name="cut.dcm")
    assert "Float Pixel Data" in str(err.value) and "(7FE0,0010)" not in str(err.value)


# ------------------------------------------------------------------------------ 6. format policy

HEIC_HEAD = struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic" + bytes(200)


def _refused_formats() -> list[tuple[str, bytes, str]]:
    def pil(fmt: str) -> bytes:
        return encode(np.stack([GRAY8] * 3, axis=2), fmt)

    return [
        ("photo.jpg", pil("AVIF"), "AVIF image is not supported: export it as JPEG or PNG"),
        ("IMG_0001.HEIC", HEIC_HEAD, "HEIC/HEIF photo (iPhone) is not supported: export it as JPEG or PNG"),
        ("scan.jp2", pil("JPEG2000"), "JPEG 2000 image is not supported"),
        ("scan.pdf", pil("PDF"), "PDF document is not supported"),
        ("x.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG drawing is not supported"),
        ("notes.txt", b"cough for 3 days\n" * 10, "not an image (unrecognised content; expected JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP)"),
    ]


def test_accepted_formats_are_read_and_named():
    for fmt in ACCEPTED_FORMATS:
        data = full_file(dx_dataset()) if fmt == "DICOM" else encode(GRAY8, fmt)
        assert detect_format(data).name == fmt
        assert read_image(data, name=f"x.{fmt.lower()}").info.format == fmt


def test_refusals_name_the_detected_format():
    for name, data, message in _refused_formats():
        with pytest.raises(UnsupportedFormatError) as err:
            read_image(data, name=name)
        assert str(err.value) == f"{name}: {message}" or str(err.value).startswith(f"{name}: {message}"), str(err.value)


def test_cli_and_api_agree_on_every_kind(tiny_model_dir, tmp_path, capsys):
    """One policy: the API's status follows the reader's verdict (200 read, 415 format, 422 other).

    The readable kinds are synthetic ramps, not chest films, which the input gate's view check
    refuses (issue 15): both interfaces are asked to override the gate, so the reader alone decides.
    """
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from deephealth.web.app import create_app
    from deephealth.web.settings import Settings

    kinds = [(n, d, 415, m) for n, d, m in _refused_formats()] + [
        ("good.png", encode(GRAY8, "PNG"), 200, None),
        ("bare", bare_dataset(dx_dataset()), 200, None),
        ("black.png", encode(np.zeros((80, 96), np.uint8), "PNG"), 422, "image has no contrast (all black"),
        ("float.dcm", _float_dataset(FLOATS), 200, None),
    ]
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as client:
        for name, data, status, message in kinds:
            r = client.post("/api/v1/predictions?allow_unsuitable=true",
                            files={"file": (name, data, "application/octet-stream")})
            assert r.status_code == status, (name, r.text)
            f = tmp_path / name
            f.write_bytes(data)
            rc = main(["predict", str(f), "--model", str(tiny_model_dir), "--format", "json", "--allow-unsuitable"])
            out, err = capsys.readouterr()
            assert rc == (0 if status == 200 else 1), (name, out, err)
            if message:
                assert r.json()["detail"].startswith(f"{name}: {message}")
                assert f"{f}: {message}" in out + err, (name, out, err)
