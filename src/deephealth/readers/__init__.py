"""Readers: any chest X-ray file (JPEG, PNG, TIFF, DICOM...) to a grayscale float32 (H, W) array in [0, 1]."""

from deephealth.readers.formats import ACCEPTED_FORMATS, ACCEPTED_FORMATS_TEXT, DetectedFormat, detect_format
from deephealth.readers.image import ImageInfo, ImageReadError, ReadResult, UnsupportedFormatError, read_image

__all__ = [
    "ACCEPTED_FORMATS",
    "ACCEPTED_FORMATS_TEXT",
    "DetectedFormat",
    "ImageInfo",
    "ImageReadError",
    "ReadResult",
    "UnsupportedFormatError",
    "detect_format",
    "read_image",
]
