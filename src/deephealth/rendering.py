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

NOTICE = (
    "Decision support, not a diagnosis and not a medical device. "
    "Every result must be reviewed by a qualified clinician."
)
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


PROBABILITY_NAMES: dict[str, str] = {
    "normal": "no pneumonia",
    "bacterial": "bacterial pneumonia",
    "viral": "viral pneumonia",
}
"""What ``P(...)`` is written of, per class, in the caption's result line: ``P(bacterial pneumonia) 0.87``."""

CAPTION_MIN_FONT = 6
"""Smallest caption font size (pixels) tried before giving up on a word wider than the image."""

CAPTION_MIN_WIDTH = 128
"""Narrowest annotated overlay, in pixels: a narrower film (a 64 px wide one, or a very tall one
reduced to :data:`SC_MAX_SIDE`) is centred on a black canvas this wide, so the caption's longest
unbreakable item (``P(bacterial pneumonia) 0.87``) still fits."""


def caption_lines(prediction: Prediction) -> list[tuple[str, list[str]]]:
    """The caption burned under the annotated overlay, as ``(separator, atoms)`` per line.

    A line is its atoms joined by the separator; it may wrap only between atoms, so that
    ``P(bacterial pneumonia) 0.87`` is never split. Lines: the result with the probability of the
    class it names (``Deep Health: Bacterial pneumonia (e.g. Streptococcus), P(bacterial pneumonia)
    0.87``; the label comes from the operating point, so this is not always the largest
    probability), the three calibrated probabilities, :data:`REVIEW_LINE` for a film in the model's
    review band (``decision.review``), and :data:`NOTICE`.
    """
    from deephealth.labels import CLASS_DESCRIPTIONS

    p = prediction.probabilities
    label = prediction.label
    result = f"Deep Health: {CLASS_DESCRIPTIONS.get(label, label)},".split(" ")
    lines = [
        (" ", [*result, f"P({PROBABILITY_NAMES.get(label, label)}) {p[label]:.2f}"]),
        ("  ", [f"P(no pneumonia) {p['normal']:.2f}", f"P(bacterial) {p['bacterial']:.2f}",
                f"P(viral) {p['viral']:.2f}"]),
        (" ", NOTICE.split(" ")),
    ]
    if (prediction.decision or {}).get("review"):
        lines.insert(2, (" ", REVIEW_LINE.split(" ")))
    return lines


def _wrap(draw: ImageDraw.ImageDraw, sep: str, atoms: list[str], font, width: float) -> list[str] | None:
    """Greedy wrap of ``atoms`` into rows no wider than ``width``; ``None`` if one atom alone is wider."""
    rows: list[str] = []
    row = ""
    for atom in atoms:
        if draw.textlength(atom, font=font) > width:
            return None
        trial = f"{row}{sep}{atom}" if row else atom
        if row and draw.textlength(trial, font=font) > width:
            rows.append(row)
            row = atom
        else:
            row = trial
    if row:
        rows.append(row)
    return rows


def caption_layout(lines: list[tuple[str, list[str]]], width: int) -> tuple[list[tuple[str, tuple[int, int]]], int, int]:
    """Lay the caption out in a band ``width`` pixels wide: wrapped rows, their positions, the font size.

    The font size is ``max(10, width // 48)`` pixels; each line wraps between its atoms to fit
    ``width`` less a margin of half the font size on each side, and only if a single atom is wider
    than that is the font made smaller (down to :data:`CAPTION_MIN_FONT`), so the whole text is
    always drawn, never clipped at the edge (at 224 px, :data:`NOTICE` takes three rows).

    Args:
        lines: :func:`caption_lines` output.
        width: band width in pixels (the overlay's width), >= 1.

    Returns:
        ``(rows, font_size, band_height)``: ``rows`` is ``[(text, (x, y))]`` with ``(x, y)`` the
        top-left of each row within the band (Pillow's default ``"la"`` anchor), ``band_height``
        the band's height in pixels, which holds every row's full text bounding box.

    Raises:
        ValueError: ``width`` is too small for a word of the caption even at the smallest font.
    """
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(10, width // 48)
    while True:
        font = _font(size)
        pad = size // 2
        wrapped = [_wrap(draw, sep, atoms, font, width - 2 * pad) for sep, atoms in lines]
        if all(w is not None for w in wrapped):
            break
        if size <= CAPTION_MIN_FONT:
            raise ValueError(f"a caption {width} px wide cannot hold a word of the caption at {size} px")
        size -= 1
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (size, size // 4)
    step = max(size + pad, ascent + descent + 2)
    rows: list[tuple[str, tuple[int, int]]] = []
    y = pad
    for w in wrapped:
        for text in w or ():
            rows.append((text, (pad, y)))
            y += step
    return rows, size, y + pad


def annotated_overlay(prediction: Prediction, alpha: float = 0.4, max_side: int = SC_MAX_SIDE) -> np.ndarray:
    """The heatmap overlay with the result and :data:`NOTICE` burned into a band below the image
    (and :data:`REVIEW_LINE` for a film in the model's review band).

    The caption (:func:`caption_lines`) is wrapped to the overlay's width (:func:`caption_layout`),
    so every word is drawn however small the film (224 px) or large; an overlay narrower than
    :data:`CAPTION_MIN_WIDTH` is centred on a black canvas that wide.

    Args:
        prediction: a prediction made with ``heatmap=True``.
        alpha: heatmap opacity in [0, 1] (as :func:`overlay_png`).
        max_side: the overlay is reduced (area average) so its longest side is at most this.

    Returns:
        ``(H', W', 3)`` uint8 RGB: the overlay (``H x W`` at most ``max_side``;
        ``W' = max(W, CAPTION_MIN_WIDTH)``) on top of a black band with the caption in white, one
        or more rows per line.

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
    width = max(img.width, CAPTION_MIN_WIDTH)
    try:
        rows, size, band_h = caption_layout(caption_lines(prediction), width)
    except ValueError as exc:
        raise ValueError(f"{prediction.source}: {exc}") from None
    font = _font(size)
    canvas = Image.new("RGB", (width, img.height + band_h), (0, 0, 0))
    canvas.paste(img, ((width - img.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    for text, (x, y) in rows:
        draw.text((x, img.height + y), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas, dtype=np.uint8)
