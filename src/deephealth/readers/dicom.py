"""DICOM radiographs (CR, DX) to a grayscale float32 array in [0, 1], bright = dense, with pydicom.

Called by :func:`deephealth.readers.read_image` for content with ``DICM`` at byte offset 128
(DICOM PS3.10 section 7.1), or for a bare data set without that header (no preamble, no ``DICM``,
possibly no group 0002 file meta: read with pydicom's ``force=True``, with a warning; a missing
(0002,0010) Transfer Syntax UID is taken from the encoding pydicom detected); the file name is
never consulted.

Processing order (DICOM PS3.4 section N.2 "Pixel Transformation Sequence"; pydicom's
:func:`pydicom.pixels.apply_voi_lut` documents the same order):

1. decode the stored pixels (``Dataset.pixel_array``; pydicom masks them to (0028,0101) Bits Stored
   and sign-extends when (0028,0103) Pixel Representation is 1); compressed transfer syntaxes use
   whichever pydicom decoder plugin is installed (Pillow handles JPEG Baseline/Extended and
   JPEG 2000; ``deephealth[dicom-codecs]`` adds pylibjpeg for JPEG Lossless, JPEG-LS and HTJ2K),
   except lossy JPEG with 8-bit samples, which is always decoded by Pillow (:data:`PINNED_DECODER`):
   the JPEG standard does not fix the inverse DCT's rounding, and libjpeg-turbo (Pillow) and
   libjpeg (pylibjpeg) differ by one grey level on a few per cent of the pixels, enough to move a
   probability by 0.01; every other syntax decodes to identical pixels with either plugin;
2. modality LUT: (0028,1053) Rescale Slope and (0028,1052) Rescale Intercept, or the Modality LUT
   Sequence (:func:`pydicom.pixels.apply_modality_lut`). An invalid rescale (slope 0, or a
   non-numeric or non-finite slope or intercept) is ignored with a warning, like an invalid window
   in step 3; the window, given in rescaled values, is then ignored too and the stored values are
   min-max scaled;
3. VOI LUT: the first item of the (0028,3010) VOI LUT Sequence, or else the first
   (0028,1050) Window Center / (0028,1051) Window Width pair with (0028,1056) VOI LUT Function
   (:func:`pydicom.pixels.apply_voi_lut`, PS3.3 C.11.2.1.2);
4. scale to [0, 1]: with a VOI transform, by its output range (the values the transform gives
   for the lowest and highest possible inputs); without one, data with Bits Stored <= 8 and no
   rescale is divided by ``2**BitsStored - 1`` like an 8-bit JPEG, anything else is min-max scaled
   over the image (as viewers do when no window is given), so 10/12-bit data in 16-bit words gets
   full contrast;
5. MONOCHROME1 (low values bright) is inverted, ``1 - x``, so bright always means dense; a
   warning says so. (2050,0020) Presentation LUT Shape is never applied on top: INVERSE is what
   MONOCHROME1 already means (PS3.3 C.8.11.6.1), so the image is inverted exactly once; when it
   contradicts the Photometric Interpretation (INVERSE with MONOCHROME2, IDENTITY with
   MONOCHROME1) the Photometric Interpretation is followed and a warning says so.

Float Pixel Data (7FE0,0008) and Double Float Pixel Data (7FE0,0009) (PS3.3 C.7.6.24) are read,
min-max scaled over the image's finite values, with a warning (no window is applied).

Accepted modalities: CR, DX, DR, RG (radiographs) and OT (other, with a warning); a missing
Modality gives a warning. Every other modality (CT, MR, US, NM, PT, XA, RF, MG, PX, ...) is
refused by name. Colour DICOMs (RGB, YBR_*) are converted to grayscale (ITU-R 601 luma) with a
warning; PALETTE COLOR and other photometric interpretations are refused. Multi-frame data
((0028,0008) Number of Frames > 1), images larger than ``MAX_PIXELS`` (from Rows x Columns, before
decoding) or smaller than ``MIN_SIDE``, and pixel data shorter than Rows x Columns need are
refused.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from typing import Any

import numpy as np

from deephealth.readers.types import ImageInfo, ImageReadError, ReadResult, check_dimensions
from deephealth.readers.types import one_line as _one_line

logger = logging.getLogger(__name__)

#: Modalities accepted without comment: Computed/Digital Radiography (PS3.3 C.7.3.1.1.1).
RADIOGRAPH_MODALITIES: frozenset[str] = frozenset({"CR", "DX", "DR", "RG"})
#: Accepted with a warning: "other" (e.g. secondary captures of a radiograph).
UNCERTAIN_MODALITIES: frozenset[str] = frozenset({"OT"})
#: Install hint given when a compressed transfer syntax has no decoder installed.
CODECS_HINT = "install deephealth[dicom-codecs] (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"

#: The pydicom decoder plugin every install uses for a lossy JPEG syntax (DCT-based, so decoders
#: may round differently): JPEG Baseline and 8-bit JPEG Extended go to Pillow, which the core
#: install always has; 12-bit JPEG Extended, which Pillow cannot decode, to pylibjpeg. Lossless
#: syntaxes, JPEG 2000 (Pillow and pylibjpeg both use OpenJPEG) and JPEG-LS give the same pixels
#: with any plugin, so the installed one is used.
PINNED_DECODER: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.4.50": ("pillow", "pillow"),  # JPEG Baseline (Process 1): (<= 8 bits, > 8 bits)
    "1.2.840.10008.1.2.4.51": ("pillow", "pylibjpeg"),  # JPEG Extended (Process 2 & 4)
}

_MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "XA": "X-ray angiography",
    "RF": "radio fluoroscopy",
    "MG": "mammography",
    "PX": "panoramic dental X-ray",
    "IO": "intra-oral X-ray",
    "SR": "structured report",
    "SEG": "segmentation",
    "ECG": "electrocardiogram",
    "ES": "endoscopy",
    "OP": "ophthalmic photography",
    "XC": "external-camera photography",
}
#: Pixel data elements (PS3.3 C.7.6.3 and C.7.6.24), keyword -> tag.
PIXEL_ELEMENTS: dict[str, str] = {
    "PixelData": "(7FE0,0010)",
    "FloatPixelData": "(7FE0,0008)",
    "DoubleFloatPixelData": "(7FE0,0009)",
}
_PIXEL_NAMES = {"PixelData": "pixel data", "FloatPixelData": "Float Pixel Data",
                "DoubleFloatPixelData": "Double Float Pixel Data"}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


def read_dicom(data: bytes, label: str, *, bare: bool = False) -> ReadResult:
    """Decode a DICOM file's bytes into a radiograph array (see the module docstring for the rules).

    Args:
        data: the whole file, with the 128-byte preamble and ``DICM`` prefix, or (``bare=True``) a
            data set without them, as recognised by :func:`deephealth.readers.formats.is_bare_dicom`.
        label: name used in messages and ``info.path``.
        bare: read a data set without the PS3.10 header (pydicom ``force=True``); its transfer
            syntax, absent from the missing file meta, is the encoding pydicom detected (implicit
            or explicit VR little endian), with a warning.

    Returns:
        ``ReadResult(image, info)``: ``image`` ``(Rows, Columns)`` float32 in [0, 1], bright =
        dense; ``info.format == "DICOM"`` with modality, photometric interpretation, view position,
        Bits Stored, transfer syntax and warnings.

    Raises:
        ImageReadError: corrupt or truncated file, no pixel data, non-radiograph modality,
            multi-frame, unsupported photometric interpretation, undecodable transfer syntax
            (the message names it and what to install), too large or too small.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about what we check ourselves below
            ds = pydicom.dcmread(io.BytesIO(data), force=bare)
    except InvalidDicomError as exc:
        raise ImageReadError(f"{label}: not a valid DICOM file ({_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt files
        raise ImageReadError(f"{label}: truncated or corrupt DICOM file ({_one_line(exc)})") from None

    if _pixel_keyword(ds) is None:
        for keyword, tag in PIXEL_ELEMENTS.items():
            group, elem = (int(x, 16) for x in tag.strip("()").split(","))
            if struct.pack("<HH", group, elem) in data or struct.pack(">HH", group, elem) in data:
                # pydicom drops a pixel data element whose value is cut short (it only warns).
                raise ImageReadError(f"{label}: truncated DICOM file: the {_PIXEL_NAMES[keyword]} {tag} is cut short")
    try:
        warnings_: list[str] = []
        _ensure_transfer_syntax(ds, bare, warnings_)
        return _convert(ds, label, warnings_)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed element values surface here
        raise ImageReadError(f"{label}: corrupt DICOM file ({_one_line(exc)})") from None


def _pixel_keyword(ds: Any) -> str | None:
    """Which pixel data element the data set has (:data:`PIXEL_ELEMENTS`), or ``None``."""
    return next((k for k in PIXEL_ELEMENTS if k in ds), None)


def _ensure_transfer_syntax(ds: Any, bare: bool, warnings_: list[str]) -> None:
    """Give a data set without (0002,0010) Transfer Syntax UID the one its encoding shows."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if bare:
        warnings_.append(
            "DICOM file without the PS3.10 header (no 128-byte preamble, 'DICM' prefix or file meta); "
            "read as a bare data set"
        )
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid
    warnings_.append(f"DICOM (0002,0010) Transfer Syntax UID is missing: read as {uid.name}")


def _convert(ds: Any, label: str, warnings: list[str]) -> ReadResult:
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    _check_modality(label, modality, warnings)

    keyword = _pixel_keyword(ds)
    if keyword is None:
        raise ImageReadError(
            f"{label}: DICOM file has no pixel data (7FE0,0010), Float Pixel Data (7FE0,0008) or "
            "Double Float Pixel Data (7FE0,0009); it is not an image"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"{label}: multi-frame DICOM ({frames} frames); send a single radiograph image")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ImageReadError(f"{label}: DICOM Rows/Columns missing or zero ({rows}x{cols})")
    check_dimensions(label, cols, rows)

    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric:
        raise ImageReadError(f"{label}: DICOM (0028,0004) Photometric Interpretation is missing")
    is_color = photometric == "RGB" or photometric.startswith("YBR")
    if photometric not in ("MONOCHROME1", "MONOCHROME2") and not is_color:
        raise ImageReadError(
            f"{label}: DICOM photometric interpretation {photometric} is not supported "
            "(expected MONOCHROME1 or MONOCHROME2)"
        )

    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    ts_text = f"{tsyntax.name} ({tsyntax})" if tsyntax else None
    _check_decoder(label, tsyntax)
    arr = _decode(ds, label, ts_text, keyword, warnings)
    if arr.ndim != (3 if is_color else 2):
        raise ImageReadError(f"{label}: DICOM pixel data has unexpected shape {arr.shape}")
    bits_stored = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 8) or 8)

    if keyword != "PixelData":
        if is_color:
            raise ImageReadError(f"{label}: colour {_PIXEL_NAMES[keyword]} {PIXEL_ELEMENTS[keyword]} is not supported")
        bits_stored = 64 if keyword == "DoubleFloatPixelData" else 32
        warnings.append(
            f"{_PIXEL_NAMES[keyword]} {PIXEL_ELEMENTS[keyword]}: floating-point values min-max scaled to [0, 1] "
            "(no window applied)"
        )
        image = _float_minmax(arr, warnings)
    elif is_color:
        warnings.append(f"colour DICOM ({photometric}) converted to grayscale; a radiograph is normally MONOCHROME2")
        image = _color_to_gray(arr, bits_stored)
    else:
        image = _grayscale(ds, arr, bits_stored, warnings)
    if photometric == "MONOCHROME1":
        # The only inversion: a Presentation LUT Shape INVERSE, which PS3.3 C.8.11.6.1 requires
        # with MONOCHROME1 for DX, describes this same inversion and is not applied again.
        np.subtract(1.0, image, out=image)
        warnings.append("MONOCHROME1 (low values bright): inverted so bright means dense")
    _check_presentation_lut_shape(ds, photometric, warnings)

    # Header facts for the input gate (deephealth.gate.header_checks judges them; a reader decides no verdict).
    view = _text(ds.get("ViewPosition")).upper() or None
    sop_class = _text(ds.get("SOPClassUID")) or _text(ds.file_meta.get("MediaStorageSOPClassUID")) or None
    age_text = _text(ds.get("PatientAge")) or None

    info = ImageInfo(
        path=label,
        format="DICOM",
        width=cols,
        height=rows,
        bit_depth=bits_stored,
        photometric_interpretation=photometric,
        modality=modality,
        view_position=view,
        warnings=warnings,
        mode=str(arr.dtype),
        transfer_syntax=ts_text,
        sop_class_uid=sop_class,
        sop_class_name=_uid_name(sop_class),
        body_part=_text(ds.get("BodyPartExamined")).upper() or None,
        patient_age=age_text,
        patient_age_years=_age_years(age_text),
    )
    for w in warnings:
        logger.debug("%s: %s", label, w)
    return ReadResult(image, info)


def _check_modality(label: str, modality: str | None, warnings: list[str]) -> None:
    if modality is None:
        warnings.append("DICOM (0008,0060) Modality is missing: cannot confirm this is a radiograph")
    elif modality in UNCERTAIN_MODALITIES:
        warnings.append(f"DICOM modality {modality} (other): cannot confirm this is a chest radiograph")
    elif modality not in RADIOGRAPH_MODALITIES:
        what = _MODALITY_NAMES.get(modality)
        named = f"{modality} ({what})" if what else modality
        raise ImageReadError(f"{label}: DICOM modality {named} is not a radiograph (expected CR or DX)")


def _check_decoder(label: str, tsyntax: Any) -> None:
    """Refuse a compressed transfer syntax that no installed pydicom plugin can decode."""
    if tsyntax is None or not tsyntax.is_compressed:
        return
    from pydicom.pixels import get_decoder

    what = f"DICOM transfer syntax {tsyntax.name} ({tsyntax}) cannot be decoded"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageReadError(f"{label}: {what}: no DICOM pixel decoder exists for it") from None
    if not decoder.is_available:
        raise ImageReadError(f"{label}: {what}: {CODECS_HINT}")


def _check_presentation_lut_shape(ds: Any, photometric: str, warnings: list[str]) -> None:
    """(2050,0020) Presentation LUT Shape: never applied (the Photometric Interpretation decides);
    a warning when it contradicts it (INVERSE with MONOCHROME2, IDENTITY with MONOCHROME1)."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    contradicts = {"MONOCHROME2": "INVERSE", "MONOCHROME1": "IDENTITY"}.get(photometric)
    if shape and shape == contradicts:
        done = "inverted" if photometric == "MONOCHROME1" else "not inverted"
        warnings.append(
            f"DICOM Presentation LUT Shape (2050,0020) {shape} contradicts Photometric Interpretation "
            f"{photometric}: followed the Photometric Interpretation ({done}); check the image's polarity"
        )


def _float_minmax(arr: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Float pixel values -> [0, 1] by min-max over the finite values (non-finite set to the minimum)."""
    out = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(out)
    if not finite.all():
        warnings.append("non-finite pixel values (NaN/inf) were set to the minimum")
        out = np.where(finite, out, out[finite].min() if finite.any() else 0.0)
    lo, hi = float(out.min()), float(out.max())
    if hi <= lo:
        return np.zeros(out.shape, dtype=np.float32)  # refused by check_contrast
    return ((out - lo) / (hi - lo)).astype(np.float32)


def _pinned_plugin(ds: Any, tsyntax: Any) -> str | None:
    """The decoder plugin :data:`PINNED_DECODER` fixes for this data set, or ``None`` (any will do)."""
    pins = PINNED_DECODER.get(str(tsyntax)) if tsyntax is not None else None
    if pins is None:
        return None
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 8) or 8)
    return pins[0] if bits <= 8 else pins[1]


def _decode(
    ds: Any, label: str, ts_text: str | None, keyword: str = "PixelData", warnings: list[str] | None = None
) -> np.ndarray:
    """Step 1 of the module docstring: the stored pixel values, as pydicom decodes them.

    Lossy JPEG goes to the :data:`PINNED_DECODER` plugin; should that plugin be missing or fail on
    this file while another installed one succeeds, the other one's pixels are used and
    ``warnings`` says so (the probabilities may then differ from another install's by ~0.01).

    Raises:
        ImageReadError: truncated native pixel data, 12-bit lossy JPEG without pylibjpeg, or no
            installed plugin can decode the data.
    """
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    plugin = _pinned_plugin(ds, tsyntax) if keyword == "PixelData" else None
    if plugin is not None:
        from pydicom.pixels import get_decoder

        if plugin in get_decoder(tsyntax).available_plugins:
            ds.pixel_array_options(decoding_plugin=plugin)
            try:
                return ds.pixel_array
            except Exception as exc:  # noqa: BLE001 - decoder plugins raise RuntimeError/ValueError/...
                reason = _one_line(exc)
            ds.pixel_array_options(decoding_plugin="")
        elif plugin == "pylibjpeg":  # 12-bit lossy JPEG: Pillow cannot decode it at all
            raise ImageReadError(f"{label}: DICOM transfer syntax {ts_text} with more than 8 bits per sample "
                                 f"cannot be decoded: {CODECS_HINT}")
        else:
            reason = "not installed"
        if warnings is not None:
            warnings.append(
                f"DICOM {ts_text}: decoded without the usual {plugin} decoder ({reason}); "
                "probabilities may differ slightly from another installation's"
            )
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        # Native data: refuse short pixel data instead of letting anything pad it.
        bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(keyword) or int(ds.get("BitsAllocated", 8) or 8)
        need = (expected * bits + 7) // 8
        have = len(ds[keyword].value)
        if have < need:
            raise ImageReadError(
                f"{label}: truncated DICOM {_PIXEL_NAMES[keyword]} ({have} bytes, {need} needed for "
                f"{ds.Rows}x{ds.Columns} at {bits} bits)"
            )
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise RuntimeError/ValueError/...
        raise ImageReadError(
            f"{label}: DICOM pixel data cannot be decoded ({ts_text}): {_one_line(exc)}"
        ) from None
    return arr


def _grayscale(ds: Any, arr: np.ndarray, bits_stored: int, warnings: list[str]) -> np.ndarray:
    """Steps 2-4 of the module docstring: modality LUT, VOI LUT/window, scale to [0, 1]."""
    from pydicom.pixels import apply_modality_lut

    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    problem = _invalid_rescale(ds)
    if problem:
        # As for an invalid window: ignored with a warning. The stored values are still the image
        # (a rescale only relabels them), but a window or VOI LUT is given in rescaled values,
        # which are unknown now, so it cannot be applied either.
        also = "; the VOI LUT/window, given in rescaled values, was ignored too" if has_lut or has_window else ""
        warnings.append(
            f"DICOM modality rescale is invalid and was ignored ({problem}){also}; "
            "min-max scaling of the stored values used"
        )
        return _scale_minmax(np.asarray(arr, dtype=np.float32), warnings)
    values = apply_modality_lut(arr, ds) if has_rescale else arr
    if has_lut or has_window:
        try:
            windowed, y0, y1 = (_voi_lut if has_lut else _windowing)(ds, values)
            if y1 != y0 and np.isfinite(y0) and np.isfinite(y1):
                out = (np.asarray(windowed, dtype=np.float64) - y0) / (y1 - y0)
                return np.clip(out, 0.0, 1.0).astype(np.float32)
            warnings.append("DICOM VOI LUT/window has an empty output range; ignored (min-max scaling used)")
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            warnings.append(f"DICOM VOI LUT/window is invalid and was ignored ({_one_line(exc)}); min-max scaling used")
    if not has_rescale and bits_stored <= 8 and arr.dtype.kind == "u":
        out = arr.astype(np.float32)
        out /= float(2**bits_stored - 1)
        return out
    return _scale_minmax(np.asarray(values, dtype=np.float32), warnings)


def _scale_minmax(out: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Min-max scale finite float32 values to [0, 1]; a uniform image becomes zeros, with a warning."""
    lo, hi = float(out.min()), float(out.max())
    if hi <= lo:
        warnings.append("uniform image (every pixel has the same value): no contrast")
        return np.zeros(out.shape, dtype=np.float32)
    return ((out - lo) / (hi - lo)).astype(np.float32)


def _invalid_rescale(ds: Any) -> str | None:
    """Why the data set's (0028,1053) Rescale Slope / (0028,1052) Rescale Intercept cannot be used.

    PS3.3 C.11.1.1.2: output = slope * stored value + intercept. A slope of 0 maps every pixel to the
    intercept (a blank image); a missing, non-numeric or non-finite slope or intercept gives no
    usable value. pydicom applies the pair only when both are present and no (0028,3000) Modality
    LUT Sequence is (which then takes precedence); otherwise nothing is checked here either.

    Args:
        ds: a pydicom ``Dataset``.

    Returns:
        ``None`` when the rescale is usable or not applied; otherwise a short reason naming the
        element and its value, e.g. ``"(0028,1053) Rescale Slope is 0"``. Never raises.
    """
    if ds.get("ModalityLUTSequence") or "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return None
    for tag, name, keyword in (("(0028,1053)", "Rescale Slope", "RescaleSlope"),
                               ("(0028,1052)", "Rescale Intercept", "RescaleIntercept")):
        raw = ds.get(keyword)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return f"{tag} {name} is not a number ({_text(raw) or 'empty'})"
        if not np.isfinite(value):
            return f"{tag} {name} is not finite ({value})"
        if keyword == "RescaleSlope" and value == 0:
            return f"{tag} {name} is 0: every pixel would have the same value"
    return None


def _voi_lut(ds: Any, values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """First VOI LUT Sequence item (PS3.3 C.11.2.1.1) -> (output, lowest, highest table value)."""
    from pydicom.pixels import apply_voi_lut

    if values.dtype.kind == "f":  # after a rescale: the LUT is indexed by integer values
        values = np.rint(values).astype(np.int64)
    windowed = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
    table = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds, index=0, prefer_lut=True)
    return windowed, float(np.min(table)), float(np.max(table))


def _windowing(ds: Any, values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """First Window Center/Width pair (PS3.3 C.11.2.1.2) -> (output, output for -inf, for +inf)."""
    from pydicom.pixels import apply_windowing

    windowed = apply_windowing(values, ds, index=0)
    # Output range of the transform: its values far below and far above the data.
    lo_in, hi_in = float(np.min(values)), float(np.max(values))
    span = max(hi_in - lo_in, 1.0)
    probe = np.array([lo_in - 1e6 * span, hi_in + 1e6 * span], dtype=np.float64)
    y0, y1 = (float(v) for v in apply_windowing(probe, ds, index=0))
    return windowed, y0, y1


def _color_to_gray(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """(H, W, 3) RGB (pydicom converts YBR to RGB) -> ITU-R 601 luma in [0, 1]."""
    rgb = arr.astype(np.float32)
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    gray /= float(2**bits_stored - 1)
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


def _text(value: Any) -> str:
    """A DICOM element's value as stripped text (the first value of a multi-valued one; ``""`` if empty)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    return " ".join(str(value).split())


def _uid_name(uid: str | None) -> str | None:
    """The standard name of a UID (pydicom's dictionary), ``None`` when unknown."""
    if not uid:
        return None
    from pydicom.uid import UID

    name = UID(uid).name
    return None if not name or name == uid else name


_AGE_UNIT_WORDS = {"D": ("day", "days"), "W": ("week", "weeks"), "M": ("month", "months"),
                   "Y": ("year", "years"), "": ("year", "years")}


def format_age(value: Any) -> str | None:
    """DICOM (0010,1010) Patient Age (PS3.5 Age String ``nnnD/W/M/Y``) as a person reads it.

    ``"045Y"`` -> ``"45 years"``, ``"006M"`` -> ``"6 months"``, ``"003W"`` -> ``"3 weeks"``,
    ``"010D"`` -> ``"10 days"``, ``"001Y"`` -> ``"1 year"``; a bare number (not valid AS, but
    written by some devices, e.g. ``"62"``) is read as years, as :attr:`ImageInfo.patient_age_years`
    reads it. Leading zeros are dropped, the unit letter may be lower case.

    Args:
        value: the element's value (a string, pydicom's value, or ``None``).

    Returns:
        The English text, the value's stripped text unchanged when it is not an age string (shown
        as written rather than guessed), or ``None`` for ``None``/empty. Never raises.
    """
    text = _text(value)
    if not text:
        return None
    m = _AGE.match(text)
    if not m:
        return text
    number = float(m.group(1))
    shown = f"{number:g}"
    one, many = _AGE_UNIT_WORDS[m.group(2).upper()]
    return f"{shown} {one if number == 1 else many}"


def _age_years(value: Any) -> float | None:
    """DICOM (0010,1010) Patient Age ``nnnD/W/M/Y`` (PS3.5 AS; a bare number read as years)."""
    if value is None:
        return None
    m = _AGE.match(str(value))
    if not m:
        return None
    return float(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]
