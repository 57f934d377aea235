"""Readers: any chest X-ray file (JPEG, PNG, TIFF, DICOM...) to a grayscale float32 (H, W) array in [0, 1]."""

from deephealth.readers.image import ImageInfo, ImageReadError, ReadResult, read_image

__all__ = ["ImageInfo", "ImageReadError", "ReadResult", "read_image"]
