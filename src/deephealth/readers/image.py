"""Image reader (minimal bootstrap version; the full reader replaces this module).

API contract (stable):
    read_image(source, *, name=None, target_size=None) -> ReadResult(image, info)
    image: (H, W) float32 in [0, 1], bright = dense.
    ImageReadError(message) with the file name in the message.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


class ImageReadError(ValueError):
    """A file that cannot be read as a chest radiograph; the message names the file and the problem."""


@dataclass
class ImageInfo:
    """What the reader learned about a file."""

    path: str
    format: str
    width: int
    height: int
    bit_depth: int
    photometric_interpretation: str | None = None
    modality: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ReadResult:
    """A decoded image and what was learned about its file."""

    image: np.ndarray
    info: ImageInfo


def read_image(source: str | Path | bytes, *, name: str | None = None, target_size: int | None = None) -> ReadResult:
    """Read a file into a (H, W) float32 array in [0, 1]."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "unknown"
            im = im.convert("L")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"{label}: cannot read image ({exc})") from exc
    h, w = arr.shape
    return ReadResult(arr, ImageInfo(label, fmt, w, h, 8))
