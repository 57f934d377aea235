"""DICOM reader tests: synthetic CR/DX files built here with pydicom, plus the two real files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from deephealth.readers import ImageReadError, read_image
from deephealth.readers import dicom as dicom_module

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def make_dicom(
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    modality: str | None = "DX",
    compress: str | None = None,
    **elements,
) -> Dataset:
    """A minimal, valid DICOM dataset holding ``arr`` (pydicom's set_pixel_data fills the pixel module)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.set_pixel_data(arr, photometric, bits_stored)
    for key, value in elements.items():
        setattr(ds, key, value)
    if compress:
        ds.compress(compress)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read(ds: Dataset, name: str = "x.dcm"):
    return read_image(to_bytes(ds), name=name)


RAMP12 = (np.arange(64 * 128, dtype=np.int64).reshape(64, 128) * 4095 // (64 * 128 - 1)).astype(np.uint16)


# --------------------------------------------------------------------------- golden pixel values


def test_monochrome2_12bit_full_contrast() -> None:
    res = read(make_dicom(RAMP12))
    assert res.info.format == "DICOM"
    assert res.info.photometric_interpretation == "MONOCHROME2"
    assert res.info.bit_depth == 12 and res.info.modality == "DX"
    assert res.image.dtype == np.float32 and res.image.shape == (64, 128)
    assert res.image.min() == 0.0 and res.image.max() == 1.0
    assert res.image[32, 64] == pytest.approx(RAMP12[32, 64] / 4095, abs=1e-6)
    assert res.info.warnings == []


def test_monochrome1_is_inverted() -> None:
    arr = np.full((64, 64), 1000, dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 0, 4000
    res = read(make_dicom(arr, photometric="MONOCHROME1"))
    # min-max over [0, 4000], then inverted: stored 0 -> 1.0 (bright), 4000 -> 0.0, 1000 -> 0.75
    assert res.image[0, 0] == 1.0
    assert res.image[0, 1] == 0.0
    assert res.image[5, 5] == pytest.approx(0.75)
    assert any("MONOCHROME1" in w and "inverted" in w for w in res.info.warnings)


def test_monochrome1_and_monochrome2_of_the_same_film_agree() -> None:
    # The same radiograph stored both ways must read identically.
    m2 = read(make_dicom(RAMP12)).image
    m1 = read(make_dicom((4095 - RAMP12).astype(np.uint16), photometric="MONOCHROME1")).image
    np.testing.assert_allclose(m1, m2, atol=1e-6)


def test_8bit_without_window_is_divided_by_255() -> None:
    arr = np.zeros((64, 64), dtype=np.uint8)
    arr[1, 1], arr[2, 2] = 128, 250
    res = read(make_dicom(arr, bits_stored=8))
    assert res.image[1, 1] == np.float32(128 / 255)
    assert res.image[2, 2] == np.float32(250 / 255)  # no stretching of 8-bit data
    assert res.image.max() < 1.0


def test_rescale_then_window() -> None:
    # modality LUT: x = 2 * stored - 100; window C = 1000.5, W = 201 (LINEAR, PS3.3 C.11.2.1.2):
    # x <= 900 -> 0, x > 1100 -> 1, else (x - 1000) / 200 + 0.5
    arr = np.full((64, 64), 550, dtype=np.uint16)
    arr[0, :5] = [400, 500, 525, 600, 700]  # x = 700, 900, 950, 1100, 1300
    res = read(make_dicom(arr, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=1000.5, WindowWidth=201))
    np.testing.assert_allclose(res.image[0, :5], [0.0, 0.0, 0.25, 1.0, 1.0], atol=1e-6)
    assert res.image[10, 10] == pytest.approx(0.5)  # x = 1000


def test_first_of_several_windows_is_used() -> None:
    arr = np.full((64, 64), 1000, dtype=np.uint16)
    arr[0, 0] = 1050
    res = read(make_dicom(arr, WindowCenter=[1000.5, 3000], WindowWidth=[101, 10]))
    assert res.image[1, 1] == pytest.approx(0.5)
    assert res.image[0, 0] == pytest.approx(1.0)


def test_window_on_monochrome1() -> None:
    arr = np.full((64, 64), 1000, dtype=np.uint16)
    arr[0, 0] = 950  # 0.25 in the window, 0.75 after inversion
    res = read(make_dicom(arr, photometric="MONOCHROME1", WindowCenter=1000.5, WindowWidth=201))
    assert res.image[0, 0] == pytest.approx(0.75)
    assert res.image[1, 1] == pytest.approx(0.5)


def test_voi_lut_sequence_preferred_over_window() -> None:
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first stored value 0, 8-bit output
    item.add_new(0x00283006, "US", [0, 100, 200, 255])  # LUT Data
    arr = np.zeros((64, 64), dtype=np.uint16)
    arr[0, :4] = [0, 1, 2, 3]
    arr[1, 0] = 4000  # beyond the table: last entry
    ds = make_dicom(arr, WindowCenter=2000, WindowWidth=10)
    ds.VOILUTSequence = Sequence([item])
    res = read(ds)
    np.testing.assert_allclose(res.image[0, :4], [0.0, 100 / 255, 200 / 255, 1.0], atol=1e-6)
    assert res.image[1, 0] == 1.0


def test_invalid_window_is_ignored_with_warning() -> None:
    res = read(make_dicom(RAMP12, WindowCenter=100, WindowWidth=0))
    assert res.image.min() == 0.0 and res.image.max() == 1.0
    assert any("window" in w and "ignored" in w for w in res.info.warnings)


@pytest.mark.parametrize(("slope", "intercept", "reason"), [
    (0, -100, "(0028,1053) Rescale Slope is 0: every pixel would have the same value"),
    ("NaN", 0, "(0028,1053) Rescale Slope is not finite (nan)"),
    ("inf", 0, "(0028,1053) Rescale Slope is not finite (inf)"),
    (1, "-inf", "(0028,1052) Rescale Intercept is not finite (-inf)"),
    (2, "NaN", "(0028,1052) Rescale Intercept is not finite (nan)"),
])
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # the bad values are on purpose
def test_invalid_rescale_is_ignored_with_warning_like_an_invalid_window(slope, intercept, reason) -> None:
    # Before: slope 0 mapped every pixel to the intercept and the file was refused as "no contrast
    # (all black)"; a NaN slope crashed check_contrast with "cannot convert float NaN to integer".
    res = read(make_dicom(RAMP12, RescaleSlope=slope, RescaleIntercept=intercept))
    assert res.info.warnings == [
        f"DICOM modality rescale is invalid and was ignored ({reason}); min-max scaling of the stored values used"
    ]
    # the stored values, min-max scaled: exactly the identity rescale's result
    expected = read(make_dicom(RAMP12, RescaleSlope=1, RescaleIntercept=0))
    np.testing.assert_array_equal(res.image, expected.image)
    assert res.image[0, 0] == 0.0 and res.image[-1, -1] == 1.0


def test_invalid_rescale_also_drops_the_window_given_in_rescaled_values() -> None:
    res = read(make_dicom(RAMP12, RescaleSlope=0, RescaleIntercept=0, WindowCenter=1000.5, WindowWidth=201))
    assert res.info.warnings == [
        "DICOM modality rescale is invalid and was ignored ((0028,1053) Rescale Slope is 0: every pixel would "
        "have the same value); the VOI LUT/window, given in rescaled values, was ignored too; min-max scaling "
        "of the stored values used"
    ]
    np.testing.assert_array_equal(res.image, RAMP12.astype(np.float32) / 4095)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_real_cr_with_rescale_slope_0(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / "cr_chest_pa_rsna.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = 0, 0
    modified = tmp_path / "slope0.dcm"
    ds.save_as(modified)
    res = read_image(modified)
    assert res.info.warnings == [
        "DICOM modality rescale is invalid and was ignored ((0028,1053) Rescale Slope is 0: every pixel would "
        "have the same value); min-max scaling of the stored values used"
    ]
    stored = pydicom.pixels.pixel_array(pydicom.dcmread(modified), decoding_plugin="pillow").astype(np.float32)
    np.testing.assert_allclose(res.image, (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6)


def test_bits_stored_masks_unused_high_bits() -> None:
    # Bits above Bits Stored (e.g. old overlay planes) must not change the picture.
    ds = make_dicom(RAMP12)
    raw = np.frombuffer(ds.PixelData, dtype="<u2") | np.uint16(0xF000)
    ds.PixelData = raw.tobytes()
    res = read(ds)
    assert res.image[32, 64] == pytest.approx(RAMP12[32, 64] / 4095, abs=1e-6)
    assert res.image.max() == 1.0


def test_signed_pixels_with_rescale() -> None:
    arr = np.full((64, 64), -500, dtype=np.int16)
    arr[0, 0], arr[0, 1] = -1000, 1000
    res = read(make_dicom(arr, bits_stored=16, RescaleSlope=1, RescaleIntercept=0))
    assert res.image[0, 0] == 0.0 and res.image[0, 1] == 1.0
    assert res.image[5, 5] == pytest.approx(0.25)


def test_rgb_dicom_converted_with_warning() -> None:
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[..., 0] = 255
    arr[32:, :, 1] = 255  # bottom half yellow: the image has contrast
    res = read(make_dicom(arr, photometric="RGB", bits_stored=8, modality="OT"))
    assert res.image[0, 0] == pytest.approx(0.299, abs=1e-6)
    assert res.image[40, 0] == pytest.approx(0.299 + 0.587, abs=1e-6)
    assert any("colour DICOM" in w for w in res.info.warnings)
    assert any("modality OT" in w for w in res.info.warnings)


# --------------------------------------------------------------------------- compressed transfer syntaxes


def test_rle_lossless_12bit_monochrome1() -> None:
    res = read(make_dicom(RAMP12, photometric="MONOCHROME1", compress=RLELossless))
    assert res.info.transfer_syntax == f"RLE Lossless ({RLELossless})"
    assert res.image[32, 64] == pytest.approx(1 - RAMP12[32, 64] / 4095, abs=1e-6)


def test_jpeg2000_lossless() -> None:
    from pydicom.pixels import get_encoder

    if not get_encoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 encoder installed (pip install deephealth[dicom-codecs])")
    res = read(make_dicom(RAMP12, compress=JPEG2000Lossless))
    assert "JPEG 2000" in res.info.transfer_syntax
    assert res.image[32, 64] == pytest.approx(RAMP12[32, 64] / 4095, abs=1e-6)


def _encapsulated(ds: Dataset, uid: str) -> Dataset:
    """Mark ``ds`` as compressed with ``uid`` and wrap (garbage) bytes as encapsulated pixel data."""
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([b"\xff\xd8 not really compressed \xff\xd9"])
    ds["PixelData"].VR = "OB"
    return ds


def test_missing_codec_names_transfer_syntax_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels import get_decoder

    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})  # as on a machine without pylibjpeg
    ds = _encapsulated(make_dicom(RAMP12), JPEGLSLossless)
    with pytest.raises(ImageReadError) as err:
        read(ds, "ls.dcm")
    assert str(err.value) == (
        "ls.dcm: DICOM transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) "
        "cannot be decoded: install deephealth[dicom-codecs] (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"
    )


def test_transfer_syntax_without_any_decoder() -> None:
    ds = _encapsulated(make_dicom(RAMP12), "1.2.840.10008.1.2.4.100")  # MPEG2 video
    with pytest.raises(ImageReadError, match=r"MPEG2 .*\(1\.2\.840\.10008\.1\.2\.4\.100\) cannot be decoded"):
        read(ds)


def test_corrupt_compressed_pixel_data() -> None:
    ds = _encapsulated(make_dicom(RAMP12), RLELossless)
    with pytest.raises(ImageReadError, match=r"^bad\.dcm: DICOM pixel data cannot be decoded \(RLE Lossless"):
        read(ds, "bad.dcm")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "NM", "PT", "XA", "RF", "MG", "PX", "SR"])
def test_non_radiograph_modalities_refused(modality: str) -> None:
    with pytest.raises(ImageReadError) as err:
        read(make_dicom(RAMP12, modality=modality), "scan.dcm")
    text = str(err.value)
    assert text.startswith(f"scan.dcm: DICOM modality {modality}")
    assert text.endswith("is not a radiograph (expected CR or DX)")


@pytest.mark.parametrize("modality", ["CR", "DX", "DR", "RG"])
def test_radiograph_modalities_accepted(modality: str) -> None:
    res = read(make_dicom(RAMP12, modality=modality))
    assert res.info.modality == modality and res.info.warnings == []


def test_missing_modality_warns() -> None:
    res = read(make_dicom(RAMP12, modality=None))
    assert res.info.modality is None
    assert any("Modality is missing" in w for w in res.info.warnings)


def test_multiframe_refused() -> None:
    frames = np.stack([RAMP12, RAMP12])
    ds = make_dicom(frames)
    assert int(ds.NumberOfFrames) == 2
    with pytest.raises(ImageReadError, match=r"multi-frame DICOM \(2 frames\)"):
        read(ds)


def test_too_large_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dicom(RAMP12)
    ds.Rows, ds.Columns = 10_000, 8_000  # header claims 80 megapixels; pixel data is tiny
    monkeypatch.setattr(Dataset, "pixel_array", property(lambda self: pytest.fail("decoded")))
    with pytest.raises(ImageReadError, match=r"too large to decode safely: 8000x10000 = 80.0 megapixels"):
        read(ds)


def test_too_small_refused() -> None:
    with pytest.raises(ImageReadError, match=r"too small to diagnose: 48x32"):
        read(make_dicom(np.zeros((32, 48), dtype=np.uint16)))


def test_truncated_file_refused() -> None:
    data = to_bytes(make_dicom(RAMP12))
    with pytest.raises(ImageReadError, match=r"^cut\.dcm: truncated"):
        read_image(data[: len(data) - 4000], name="cut.dcm")


def test_short_pixel_data_refused() -> None:
    ds = make_dicom(RAMP12)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(ImageReadError, match=r"truncated DICOM pixel data \(8192 bytes, 16384 needed"):
        read(ds)


def test_no_pixel_data_refused() -> None:
    ds = make_dicom(RAMP12)
    del ds.PixelData
    with pytest.raises(ImageReadError, match=r"no pixel data"):
        read(ds)


def test_palette_color_refused() -> None:
    ds = make_dicom(np.zeros((64, 64), dtype=np.uint8), bits_stored=8)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(ImageReadError, match=r"photometric interpretation PALETTE COLOR is not supported"):
        read(ds)


def test_dicm_magic_with_garbage_refused() -> None:
    data = b"\0" * 128 + b"DICM" + b"\x13\x37" * 100
    with pytest.raises(ImageReadError, match=r"^junk\.dcm: .*DICOM"):
        read_image(data, name="junk.dcm")


# --------------------------------------------------------------------------- recognised by content


def test_recognised_by_content_not_name(tmp_path: Path) -> None:
    dcm = tmp_path / "looks_like.png"
    dcm.write_bytes(to_bytes(make_dicom(RAMP12)))
    png = tmp_path / "looks_like.dcm"
    Image.fromarray(RAMP12[:, :64].astype(np.uint8)).save(png, "PNG")
    assert read_image(dcm).info.format == "DICOM"
    assert read_image(png).info.format == "PNG"


# --------------------------------------------------------------- clinical facts (the gate judges them)


@pytest.mark.parametrize(
    ("elements", "view", "age", "years"),
    [
        ({"ViewPosition": "PA", "PatientAge": "004Y"}, "PA", "004Y", 4.0),
        ({"ViewPosition": "AP", "PatientAge": "018M"}, "AP", "018M", 1.5),
        ({"ViewPosition": "LL"}, "LL", None, None),
        ({"ViewPosition": "RL"}, "RL", None, None),
        ({"PatientAge": "030Y"}, None, "030Y", 30.0),
        ({"PatientAge": "062"}, None, "062", 62.0),  # bare number: years
        ({"PatientAge": "200M"}, None, "200M", 200 / 12),
        ({"PatientAge": "garbage"}, None, "garbage", None),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # the bad ages are on purpose
def test_clinical_facts_are_recorded_not_judged(elements: dict, view, age, years) -> None:
    """The reader records View Position and Patient Age; the lateral and adult verdicts are the gate's
    (deephealth.gate.header_checks, tests/test_gate_view.py), so the reader warns about neither."""
    res = read(make_dicom(RAMP12, **elements))
    assert res.info.warnings == []
    assert (res.info.view_position, res.info.patient_age) == (view, age)
    assert res.info.patient_age_years == (pytest.approx(years) if years is not None else None)
    assert res.info.sop_class_uid == DX_SOP_CLASS


@pytest.mark.parametrize(("value", "shown"), [
    ("045Y", "45 years"), ("001Y", "1 year"), ("006M", "6 months"), ("001M", "1 month"), ("003W", "3 weeks"),
    ("010D", "10 days"), ("001D", "1 day"), ("000D", "0 days"), ("062", "62 years"), ("018m", "18 months"),
    (" 004Y ", "4 years"), ("1.5Y", "1.5 years"), ("garbage", "garbage"), ("", None), (None, None),
])
def test_format_age_writes_the_age_string_out(value, shown) -> None:
    assert dicom_module.format_age(value) == shown


# --------------------------------------------------------------------------- the two real files


def test_real_cr_chest_pa(dicom_dir: Path) -> None:
    path = dicom_dir / "cr_chest_pa_rsna.dcm"
    res = read_image(path)
    info = res.info
    assert (info.format, info.modality, info.view_position) == ("DICOM", "CR", "PA")
    assert info.photometric_interpretation == "MONOCHROME2" and info.bit_depth == 8
    assert (info.width, info.height) == (1024, 1024) and res.image.shape == (1024, 1024)
    assert info.transfer_syntax == "JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50)"
    assert info.warnings == []  # the adult age is a fact for the gate, which warns
    assert (info.patient_age, info.patient_age_years, info.body_part) == ("62", 62.0, "CHEST")
    assert (info.sop_class_uid, info.sop_class_name) == ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage")
    # 8-bit, no window: stored / 255 (whichever JPEG plugin decoded it)
    stored = pydicom.pixels.pixel_array(pydicom.dcmread(path), decoding_plugin="pillow")  # always Pillow (PINNED_DECODER)
    np.testing.assert_array_equal(res.image, stored.astype(np.float32) / 255)
    # golden statistics of this radiograph (decoders differ by at most a grey level or so)
    assert res.image.mean() == pytest.approx(0.629, abs=0.004)
    # bright = dense: the mediastinum (centre) is brighter than the lung fields either side
    centre = res.image[400:600, 480:544].mean()
    lungs = (res.image[400:600, 250:350].mean() + res.image[400:600, 680:780].mean()) / 2
    assert centre > lungs + 0.1


def test_real_ct_refused(dicom_dir: Path) -> None:
    path = dicom_dir / "ct_small.dcm"
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == f"{path}: DICOM modality CT (computed tomography) is not a radiograph (expected CR or DX)"


def test_dicom_constants_are_sane() -> None:
    assert {"CR", "DX"} <= dicom_module.RADIOGRAPH_MODALITIES
    assert "CT" not in dicom_module.RADIOGRAPH_MODALITIES


@pytest.mark.parametrize("keep_bytes", [2_000, 60_000, 120_000])
def test_real_cr_truncated_is_refused_as_truncated(dicom_dir: Path, keep_bytes: int) -> None:
    data = (dicom_dir / "cr_chest_pa_rsna.dcm").read_bytes()[:keep_bytes]
    with pytest.raises(ImageReadError, match=r"^cut\.dcm: .*(truncated|corrupt)"):
        read_image(data, name="cut.dcm")
