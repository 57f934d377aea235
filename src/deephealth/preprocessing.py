"""The preprocessing contract: one pure function from a decoded radiograph to the model input.

Training, evaluation and inference all call :func:`preprocess` (or its two stages
:func:`resize_to_input` and :func:`normalize`) with the :class:`PreprocessConfig` stored in the
model's ``metadata.json``. Nobody else resizes or normalises.

The dataset in ``chest_xray_224`` was made by resizing each whole original radiograph (non-square,
about 1000-2900 px) to a 224x224 square **without cropping** and saving it as an 8-bit JPEG. The
contract reproduces that for any upload: the whole image is resized to a square (aspect ratio not
preserved), with an antialiasing filter, and the intensities are quantised to 8 bits as the training
JPEGs were. A 224x224 dataset image therefore reaches the network exactly as training saw it.

Pipeline (input: reader output, ``(H, W)`` float32 in [0, 1], bright = dense):

0. when ``crop_border`` is on (models from 0.2.0): remove uniform borders -- letterboxing or
   padding of one grey level (black, white or any other) covering at least
   :data:`MIN_BORDER_FRACTION` of the height or width (:func:`content_box`). Without it a film
   centred on a canvas twice its size, or letterboxed 3:1, is squashed into a different shape and
   the model reads it differently (issue 11). Thin uniform edges (under 10 %) are left alone;
   on the training data this crops 12 of 5,216 films;
1. resize the whole image to ``(input_size, input_size)`` with Pillow's ``interpolation`` filter
   (Pillow antialiases when downsampling), in 32-bit float;
2. clip to [0, 1] and quantise to 8 bits: ``round(x * 255)`` (uint8);
3. normalise: ``(q / 255 - mean) / std`` -> float32, shape ``(1, input_size, input_size)``.

Stages 1-2 are :func:`resize_to_input` (training caches its uint8 output in memory), stage 3 is
:func:`normalize`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that defines how an image becomes model input; saved in ``metadata.json``.

    Attributes:
        input_size: side of the square network input, in pixels (the whole image is resized to
            ``input_size x input_size``; no crop, aspect ratio not kept, as in the dataset).
        interpolation: Pillow resampling filter name: ``nearest``, ``bilinear``, ``bicubic``,
            ``lanczos`` or ``box``.
        mean: intensity subtracted after scaling to [0, 1].
        std: divisor after subtracting ``mean``.
        crop_border: remove uniform borders before resizing (:func:`content_box`); ``False`` for
            models exported before 0.2.0, whose metadata lacks the key.
    """

    input_size: int = 224
    interpolation: str = "bilinear"
    mean: float = 0.5
    std: float = 0.25
    crop_border: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or not 16 <= self.input_size <= 2048:
            raise ValueError(f"input_size must be an int in [16, 2048], got {self.input_size!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as stored under ``preprocessing`` in ``metadata.json``."""
        resize = ("uniform borders (>= 10 % of a side) removed, then the rest resized to a square"
                  if self.crop_border else "whole image to square, no crop")
        return {"resize": resize, "quantize_bits": 8, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected a 2-D grayscale array (H, W), got shape {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    return np.asarray(image, dtype=np.float32)


MIN_BORDER_FRACTION = 0.10
"""A uniform border is removed only when, on its axis, it covers at least this share of the side."""
BORDER_TOLERANCE = 4.0 / 255.0
"""Largest intensity range within one border line, and largest difference of its mean from the
outermost line's, for the line to count as uniform (absorbs JPEG noise in a black canvas)."""


def _uniform_run(lo: np.ndarray, hi: np.ndarray, mean: np.ndarray) -> int:
    """Number of leading lines that are flat and of the same grey as the first line."""
    ok = (hi - lo <= BORDER_TOLERANCE) & (np.abs(mean - mean[0]) <= BORDER_TOLERANCE)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else len(ok)


def content_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """The image without its uniform borders (letterboxing, padding), as a half-open box.

    Rows are trimmed first (top, bottom), then columns (left, right) of the remaining rows. A line
    is part of a border when its intensities span at most :data:`BORDER_TOLERANCE` and its mean is
    within that of the outermost line. An axis is cropped only when its two borders together cover
    at least :data:`MIN_BORDER_FRACTION` of that side and leave at least a quarter of it.

    Args:
        image: ``(H, W)`` float array in [0, 1] (reader output).

    Returns:
        ``(top, bottom, left, right)`` in pixels: the content is ``image[top:bottom, left:right]``;
        ``(0, H, 0, W)`` when nothing is cropped.

    Raises:
        ValueError: if ``image`` is not a non-empty 2-D array.
    """
    img = _check_image(image)
    h, w = img.shape

    def trim(lines: np.ndarray, n: int) -> tuple[int, int]:
        first, last = lines[0], lines[-1]
        if first.max() - first.min() > BORDER_TOLERANCE and last.max() - last.min() > BORDER_TOLERANCE:
            return 0, n  # neither outermost line is flat, so no border (most films): no line statistics needed
        lo, hi, mean = lines.min(1), lines.max(1), lines.mean(1)
        a = _uniform_run(lo, hi, mean)
        if a >= n:
            return 0, n  # all flat: a blank image is the readers' business, not a border
        b = _uniform_run(lo[::-1], hi[::-1], mean[::-1])
        if a + b < MIN_BORDER_FRACTION * n or n - a - b < 0.25 * n:
            return 0, n
        return a, n - b

    top, bottom = trim(img, h)
    left, right = trim(img[top:bottom].T, w)
    return top, bottom, left, right


def resize_to_input(
    image: np.ndarray, config: PreprocessConfig, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Stages 0-2 of the contract: border crop (if configured), resize to a square, 8-bit quantisation.

    Args:
        image: ``(H, W)`` float array with values in [0, 1] (bright = dense), as returned by
            :func:`deephealth.readers.read_image`. Values outside [0, 1] are clipped.
        config: the model's preprocessing config.
        box: the :func:`content_box` of ``image`` when the caller has it already (inference keeps
            it to place the heatmap); computed here when ``None``. Ignored without ``crop_border``.

    Returns:
        ``(S, S)`` uint8 array, ``S = config.input_size``.

    Raises:
        ValueError: if ``image`` is not a non-empty 2-D array.
    """
    img = _check_image(image)
    if config.crop_border:
        top, bottom, left, right = box if box is not None else content_box(img)
        img = img[top:bottom, left:right]
    size = config.input_size
    if img.shape != (size, size):
        pil = Image.fromarray(np.ascontiguousarray(img), mode="F")
        pil = pil.resize((size, size), resample=_INTERPOLATIONS[config.interpolation])
        img = np.asarray(pil, dtype=np.float32)
    x = np.clip(img, 0.0, 1.0)  # a new array: scaled and rounded in place, no further temporaries
    x *= 255.0
    return np.rint(x, out=x).astype(np.uint8)


def normalize(quantized: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Stage 3 of the contract: uint8 intensities to normalised float32 network input.

    Args:
        quantized: ``(..., S, S)`` uint8 array from :func:`resize_to_input` (any leading axes).
        config: the model's preprocessing config.

    Returns:
        float32 array of the same shape, ``(q / 255 - mean) / std``.
    """
    x = quantized.astype(np.float32)  # a new array: the three steps below run in place, in this order
    x *= np.float32(1.0 / 255.0)
    x -= np.float32(config.mean)
    x /= np.float32(config.std)
    return x


def preprocess(
    image: np.ndarray, config: PreprocessConfig, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Full contract: reader output to one network input.

    Args:
        image: ``(H, W)`` float array in [0, 1], bright = dense.
        config: the model's preprocessing config (``metadata.json`` -> ``preprocessing``).
        box: precomputed :func:`content_box` (see :func:`resize_to_input`).

    Returns:
        ``(1, S, S)`` float32 array (channel-first, one channel), ready to be stacked into an
        ``(N, 1, S, S)`` batch.

    Raises:
        ValueError: if ``image`` is not a non-empty 2-D array.
    """
    return normalize(resize_to_input(image, config, box), config)[None]
