"""Rendering: heatmap colours, overlays, previews and the annotated overlay burned into DICOM.

The last stage of the pipeline (docs/architecture.md): :mod:`deephealth.inference` returns arrays
(the decoded image and the heatmap, both ``(H, W)`` float in [0, 1]); the web app, the CLI and the
DICOM output turn them into pictures here, and only here.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deephealth.inference import Prediction

NOTICE = "Decision support, not a diagnosis. Every result must be reviewed by a qualified clinician."
"""The decision-support notice burned into every rendered result that leaves the product as an image."""
REVIEW_LINE = "Borderline result: have it reviewed (the reason is in the SR)."
"""Burned in under the result of a film in the model's review band (``decision.review``)."""
SC_MAX_SIDE = 2048
"""Longest side, in pixels, of the annotated overlay (the DICOM Secondary Capture)."""
PREVIEW_MAX_SIDE = 1024
"""Longest side, in pixels, of the web page's preview and heatmap images."""


def colorize(heat: np.ndarray) -> np.ndarray:
    """Map ``(H, W)`` values in [0, 1] to RGB with the "jet" colour map (blue -> cyan -> yellow -> red).

    Uses the classic piecewise-linear jet definition (as in MATLAB's ``jet``):
    ``r = clip(1.5 - |4x - 3|)``, ``g = clip(1.5 - |4x - 2|)``, ``b = clip(1.5 - |4x - 1|)``.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    x = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    lut = np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)  # (256, 3)
    lut = np.rint(lut * 255.0).astype(np.uint8)
    idx = np.rint(np.clip(heat, 0.0, 1.0) * 255.0).astype(np.intp)
    return lut[idx]


def overlay_png(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> bytes:
    """Blend a heatmap over a grayscale radiograph and encode it as PNG.

    Args:
        image: ``(H, W)`` float in [0, 1], bright = dense (reader output).
        heat: ``(H, W)`` float in [0, 1], same shape as ``image``.
        alpha: weight of the colour map, in [0, 1]: ``out = (1 - alpha) * gray + alpha * jet(heat)``.

    Returns:
        PNG file bytes of an ``(H, W)`` RGB image.

    Raises:
        ValueError: if the shapes differ or ``alpha`` is outside [0, 1].
    """
    if image.shape != heat.shape:
        raise ValueError(f"image {image.shape} and heatmap {heat.shape} must have the same shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = np.clip(np.asarray(image, np.float32), 0.0, 1.0)[..., None] * 255.0  # (H, W, 1)
    rgb = (1.0 - alpha) * gray + alpha * colorize(heat).astype(np.float32)  # (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(np.rint(rgb).astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def prediction_overlay_png(prediction: Prediction, alpha: float = 0.4) -> bytes:
    """PNG bytes of a prediction's heatmap over its decoded image (see :func:`overlay_png`).

    Raises:
        ValueError: if the prediction was made without ``heatmap=True``.
    """
    if prediction.heatmap is None or prediction.image is None:
        raise ValueError(f"{prediction.source}: no heatmap; predict with heatmap=True")
    return overlay_png(prediction.image, prediction.heatmap, alpha)


def shrink(image: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> np.ndarray:
    """A (H, W) float image reduced to at most ``max_side`` pixels a side (area average).

    Returns:
        ``(h, w)`` float32, the same aspect ratio (sides rounded to whole pixels); ``image`` itself
        if it is already small enough.
    """
    h, w = image.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return np.asarray(image, dtype=np.float32)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # (width, height) for Pillow
    small = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def gray_png(image: np.ndarray) -> bytes:
    """PNG bytes (8-bit grayscale, bright = dense) of a ``(H, W)`` float image in [0, 1]."""
    arr = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    buf = io.BytesIO()
    Image.fromarray(np.round(arr * 255.0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size
        return ImageFont.load_default()


def annotated_overlay(prediction: Prediction, alpha: float = 0.4, max_side: int = SC_MAX_SIDE) -> np.ndarray:
    """The heatmap overlay with the result and :data:`NOTICE` burned into a band below the image
    (and :data:`REVIEW_LINE` for a film in the model's review band).

    Args:
        prediction: a prediction made with ``heatmap=True``.
        alpha: heatmap opacity in [0, 1] (as :func:`overlay_png`).
        max_side: the overlay is reduced (area average) so its longest side is at most this.

    Returns:
        ``(H', W', 3)`` uint8 RGB: the overlay (``H x W`` at most ``max_side``) on top of a black
        band with three lines of white text (four for a borderline film).

    Raises:
        ValueError: if the prediction has no heatmap.
    """
    if prediction.heatmap is None or prediction.image is None:
        raise ValueError(f"{prediction.source}: no heatmap; predict with heatmap=True")
    gray = np.clip(prediction.image.astype(np.float32), 0.0, 1.0)[..., None] * 255.0
    rgb = (1.0 - alpha) * gray + alpha * colorize(prediction.heatmap).astype(np.float32)
    img = Image.fromarray(np.rint(rgb).astype(np.uint8), mode="RGB")
    scale = max_side / max(img.size)
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)
    w = img.width
    size = max(10, w // 48)
    font = _font(size)
    from deephealth.labels import CLASS_DESCRIPTIONS

    p = prediction.probabilities
    lines = [
        f"Deep Health: {CLASS_DESCRIPTIONS.get(prediction.label, prediction.label)} "
        f"(P = {p[prediction.label]:.2f})",
        f"P(no pneumonia) {p['normal']:.2f}  P(bacterial) {p['bacterial']:.2f}  P(viral) {p['viral']:.2f}",
        NOTICE,
    ]
    if (prediction.decision or {}).get("review"):
        lines.insert(2, REVIEW_LINE)
    pad = size // 2
    band_h = len(lines) * (size + pad) + pad
    canvas = Image.new("RGB", (w, img.height + band_h), (0, 0, 0))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = img.height + pad
    for line in lines:
        # shrink the font for a line that would not fit the width
        f, s = font, size
        while s > 6 and draw.textlength(line, font=f) > w - 2 * pad:
            s -= 1
            f = _font(s)
        draw.text((pad, y), line, fill=(255, 255, 255), font=f)
        y += size + pad
    return np.asarray(canvas, dtype=np.uint8)
