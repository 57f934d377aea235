"""Types shared by the readers: the result, what was learned about a file, the errors and size limits.

:mod:`deephealth.readers.image` and :mod:`deephealth.readers.dicom` both import from here, and
``image`` dispatches to ``dicom``: imports go one way (``image`` -> ``dicom`` -> ``types``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Largest image accepted, in pixels (width x height), checked from the header before decoding.
MAX_PIXELS: int = 50_000_000
#: Smallest accepted shorter side, in pixels; below this a radiograph is too small to diagnose.
MIN_SIDE: int = 64

class ImageReadError(ValueError):
    """A file that cannot be read as a chest radiograph.

    The message is one line: ``"<name>: <problem>"``, e.g.
    ``"scan.jpg: truncated or corrupt JPEG file: image file is truncated (10 bytes not processed)"``.
    """


class UnsupportedFormatError(ImageReadError):
    """A file whose format is not one of :data:`~deephealth.readers.formats.ACCEPTED_FORMATS`
    (the web API answers it with 415 rather than 422).

    Attributes:
        detected: the format recognised (``"HEIC"``, ``"AVIF"``, ``"PDF"``...), ``None`` if unknown.
    """

    def __init__(self, message: str, detected: str | None = None) -> None:
        super().__init__(message)
        self.detected = detected


@dataclass
class ImageInfo:
    """What the reader learned about a file.

    Attributes:
        path: the file's name as given (path, ``name=`` argument, or ``"<bytes>"``).
        format: container format: ``"JPEG"``, ``"PNG"``, ``"TIFF"``, ``"DICOM"``, ``"BMP"``,
            ``"GIF"``, ``"WEBP"``, ...
        width: width of the full-resolution image in pixels, as displayed (after EXIF orientation).
        height: height of the full-resolution image in pixels, as displayed.
        bit_depth: bits per sample of the stored data (1, 8, 16, 32; DICOM: Bits Stored).
        photometric_interpretation: DICOM (0028,0004) Photometric Interpretation
            (``MONOCHROME1``/``MONOCHROME2``/...), or the TIFF photometric tag name; ``None`` for
            other formats.
        modality: DICOM (0008,0060) Modality (``CR``, ``DX``...); ``None`` for other formats.
        view_position: DICOM (0018,5101) View Position (``PA``, ``AP``, ``LL``...) when present.
        warnings: human-readable caveats about the file (inverted MONOCHROME1, a missing Modality,
            EXIF orientation...). Facts that decide whether the model may read the image (view,
            SOP Class, body part, age, colour) are only recorded here; the input gate
            (:mod:`deephealth.gate`) judges them.
        decoded_width: width of the returned array (smaller than ``width`` only when
            ``target_size`` let a JPEG be decoded at reduced scale); defaults to ``width``.
        decoded_height: height of the returned array; defaults to ``height``.
        mode: Pillow mode of the decoded file (``L``, ``RGB``, ``I;16``...) or, for DICOM, the
            numpy dtype of the stored pixels.
        transfer_syntax: DICOM transfer syntax name and UID; ``None`` for other formats.
        color_fraction: for colour files, the fraction (0-1) of pixels whose channels differ by at
            least :data:`COLOR_PIXEL_LEVELS` grey levels (burnt-in coloured annotations, photos);
            ``None`` for greyscale files. Read by the input gate (:mod:`deephealth.gate`).
        color_block_fraction: for colour files, the largest such fraction within one block of a
            :data:`COLOR_GRID` x :data:`COLOR_GRID` grid over the image; ``None`` for greyscale files.
        color_spread: for colour files, the mean over pixels of the largest channel difference, in
            8-bit grey levels (a tinted picture has a spread but few coloured pixels); ``None`` otherwise.
        sop_class_uid: DICOM (0008,0016) SOP Class UID (or the file meta's Media Storage SOP Class
            UID when it is absent); ``None`` for other formats or when missing.
        sop_class_name: the standard name of that UID (``"CR Image Storage"``...), ``None`` if unknown.
        body_part: DICOM (0018,0015) Body Part Examined, stripped and upper-case, when present.
        patient_age: DICOM (0010,1010) Patient Age as written (``"062Y"``), when present.
        patient_age_years: that age in years (``D``/``W``/``M``/``Y`` units; a bare number is
            years), ``None`` when missing or unreadable.
    """

    path: str
    format: str
    width: int
    height: int
    bit_depth: int
    photometric_interpretation: str | None = None
    modality: str | None = None
    view_position: str | None = None
    warnings: list[str] = field(default_factory=list)
    decoded_width: int | None = None
    decoded_height: int | None = None
    mode: str | None = None
    transfer_syntax: str | None = None
    color_fraction: float | None = None
    color_block_fraction: float | None = None
    color_spread: float | None = None
    sop_class_uid: str | None = None
    sop_class_name: str | None = None
    body_part: str | None = None
    patient_age: str | None = None
    patient_age_years: float | None = None

    def __post_init__(self) -> None:
        if self.decoded_width is None:
            self.decoded_width = self.width
        if self.decoded_height is None:
            self.decoded_height = self.height

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (all fields; ``warnings`` is a new list)."""
        return asdict(self)


@dataclass
class ReadResult:
    """A decoded image and what was learned about its file.

    Attributes:
        image: ``(H, W)`` float32 array, values in [0, 1], bright = dense.
        info: what was learned about the file.
    """

    image: np.ndarray
    info: ImageInfo


def check_dimensions(label: str, width: int, height: int) -> None:
    """Refuse images too large to decode safely or too small to diagnose (header sizes, pixels).

    Raises:
        ImageReadError: ``width * height > MAX_PIXELS`` or ``min(width, height) < MIN_SIDE``.
    """
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{label}: image too large to decode safely: {width}x{height} = "
            f"{width * height / 1e6:.1f} megapixels (limit {MAX_PIXELS / 1e6:.0f})"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(
            f"{label}: image too small to diagnose: {width}x{height} px "
            f"(the shorter side must be at least {MIN_SIDE} px)"
        )


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (whitespace runs collapsed), or its type name if empty."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
