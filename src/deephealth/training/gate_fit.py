"""Fit the input gate (:mod:`deephealth.gate`) for an exported model, at export time.

:func:`fit_gate` runs the **exported ONNX graph** (so the gate sees exactly the features the served
model produces, int8 or float32) on:

- the training films of the checkpoint's own patient-grouped split (class means, shared covariance,
  positives of the "frontal chest radiograph?" classifier, the latter also with mild exposure and
  geometry changes);
- negatives made here (:func:`make_negatives`): a subset of the training films inverted and rotated
  by 90, 180 and 270 degrees, and "other" images: synthetic noise, gradients, flat fields, shapes,
  rendered documents and screenshots (Pillow), small crops of films (partial views), one half of a
  film stretched to a full frame and drawn lateral chest films (stand-ins for lateral views), drawn axial chest-CT-like slices
  and radiograph-like limbs (other body parts), the sample
  photos shipped by scikit-learn (``load_sample_images``) and matplotlib (``sample_data``), the
  elevation maps and the MR/CT slice matplotlib ships, and the images in pydicom's test files;
- the validation films of the same split, only to set the warn thresholds so that at most
  :data:`TARGET_FALSE_ALARM` of them are flagged, and to measure the false-alarm rate.

Nothing is downloaded: every negative is generated or read from an installed package. Needs
scikit-learn (``[train]`` extra). About 2-4 minutes on 2 CPU cores for the full training split
(dominated by the network runs; about 10 000 images).
"""

from __future__ import annotations

import gzip
import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from deephealth.artifact import sha256_file
from deephealth.gate import (
    GATE_FILE, LAYOUT_REFUSE, LAYOUT_WARN, LR_CLASSES, ROTATION_SURE, FeatureGate, Gate, lung_layout,
)
from deephealth.preprocessing import PreprocessConfig, normalize, resize_to_input

_logger = logging.getLogger(__name__)

TARGET_FALSE_ALARM = 0.01
"""Largest fraction of real validation films the feature-space checks may flag (warn or refuse)."""
PCA_DIM = 128
"""Largest PCA dimension of the Mahalanobis score (at most half the feature dimension, so a residual remains)."""
REFUSE_DISTANCE_FACTOR = 1.5
"""``mahalanobis_refuse = max(REFUSE_DISTANCE_FACTOR * mahalanobis_warn, largest validation distance)``."""
P_FRONTAL_REFUSE_MAX = 0.05
"""``p_frontal_refuse = min(P_FRONTAL_REFUSE_MAX, p_frontal_warn / 2, smallest validation P)``."""

_FRONTAL, _INVERTED, _ROT90, _ROT180, _ROT270, _OTHER = range(len(LR_CLASSES))


# ------------------------------------------------------------------------------------------ images


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    a = np.where(np.isfinite(a), a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F").resize(
        (w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _random_crop(a: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    h, w = a.shape
    s = rng.uniform(lo, hi)
    ch, cw = max(8, int(h * s * rng.uniform(0.8, 1.2))), max(8, int(w * s * rng.uniform(0.8, 1.2)))
    ch, cw = min(ch, h), min(cw, w)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return a[y : y + ch, x : x + cw]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


_WORDS = ("patient report date name result normal value units the and of total invoice page figure table "
          "chapter summary notes file edit view help settings account login password search results "
          "analysis dose mg ml lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod").split()


def _text_line(rng: np.random.Generator, n: int) -> str:
    return " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), n))


def _document(rng: np.random.Generator) -> np.ndarray:
    """A rendered page of text (and sometimes a table), dark on light or, 1 in 4, light on dark."""
    w, h = int(rng.integers(300, 700)), int(rng.integers(380, 900))
    bg, fg = int(rng.integers(215, 256)), int(rng.integers(0, 70))
    if rng.random() < 0.25:
        bg, fg = 255 - bg, 255 - fg
    im = Image.new("L", (w, h), bg)
    d = ImageDraw.Draw(im)
    size = int(rng.integers(9, 22))
    font = _font(size)
    y = int(rng.integers(10, 40))
    while y < h - size:
        if rng.random() < 0.1:  # a table row
            for x in range(20, w - 20, int(rng.integers(60, 140))):
                d.rectangle([x, y, x + 55, y + size + 4], outline=fg)
        else:
            d.text((int(rng.integers(10, 40)), y), _text_line(rng, int(rng.integers(3, 14))), fill=fg, font=font)
        y += int(size * rng.uniform(1.3, 2.2))
    return np.asarray(im, dtype=np.float32) / 255.0


def _screenshot(rng: np.random.Generator, photos: Sequence[np.ndarray]) -> np.ndarray:
    """A desktop/app-like screen: title bar, side panel, buttons, text, sometimes an embedded picture."""
    w, h = int(rng.integers(480, 1000)), int(rng.integers(300, 640))
    dark = rng.random() < 0.4
    bg = int(rng.integers(20, 60)) if dark else int(rng.integers(200, 250))
    fg = 255 - bg
    im = Image.new("L", (w, h), bg)
    d = ImageDraw.Draw(im)
    font = _font(int(rng.integers(10, 16)))
    d.rectangle([0, 0, w, int(rng.integers(20, 40))], fill=int(rng.integers(0, 256)))
    side = int(rng.integers(0, w // 3))
    if side:
        d.rectangle([0, 40, side, h], fill=int(np.clip(bg + rng.integers(-40, 41), 0, 255)))
        for y in range(60, h - 20, 28):
            d.text((8, y), _text_line(rng, 2), fill=fg, font=font)
    if photos and rng.random() < 0.5:
        p = _random_crop(photos[int(rng.integers(len(photos)))], rng, 0.4, 1.0)
        pw, ph = int((w - side) * rng.uniform(0.3, 0.7)), int(h * rng.uniform(0.3, 0.6))
        im.paste(Image.fromarray(np.uint8(_resize(p, pw, ph) * 255)), (side + 20, 50))
    for _ in range(int(rng.integers(3, 12))):
        x, y = int(rng.integers(side, max(side + 1, w - 120))), int(rng.integers(45, h - 30))
        if rng.random() < 0.5:
            d.rounded_rectangle([x, y, x + int(rng.integers(50, 120)), y + 24], 5,
                                fill=int(rng.integers(0, 256)), outline=fg)
        else:
            d.text((x, y), _text_line(rng, int(rng.integers(2, 8))), fill=fg, font=font)
    return np.asarray(im, dtype=np.float32) / 255.0


def _synthetic(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Noise, gradients, flat fields and shapes, ``(H, W)`` float32 in [0, 1]."""
    h, w = int(rng.integers(128, 512)), int(rng.integers(128, 512))
    if kind == "uniform_noise":
        return rng.random((h, w), dtype=np.float32)
    if kind == "gaussian_noise":
        return np.clip(rng.normal(rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3), (h, w)), 0, 1).astype(np.float32)
    if kind == "smooth_noise":
        n = Image.fromarray(np.uint8(rng.random((h, w)) * 255))
        a = np.asarray(n.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 25)))), np.float32)
        return _minmax(a)
    if kind == "salt_pepper":
        a = np.full((h, w), rng.uniform(0, 1), np.float32)
        m = rng.random((h, w))
        a[m < 0.05] = 0.0
        a[m > 0.95] = 1.0
        return a
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "linear_gradient":
        t = rng.uniform(0, 2 * np.pi)
        a = _minmax(np.cos(t) * xx / w + np.sin(t) * yy / h)
        a = a * rng.uniform(0.3, 1.0) + rng.uniform(0, 0.3)
    elif kind == "radial_gradient":
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a = _minmax(np.hypot(yy - cy, xx - cx))
        a = 1 - a if rng.random() < 0.5 else a
    elif kind == "flat":
        a = np.full((h, w), rng.uniform(0.05, 0.95), np.float32)
    else:  # shapes
        im = Image.new("L", (w, h), int(rng.integers(0, 256)))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 15))):
            box = sorted(rng.integers(0, w, 2).tolist()), sorted(rng.integers(0, h, 2).tolist())
            xy = [box[0][0], box[1][0], box[0][1], box[1][1]]
            fill = int(rng.integers(0, 256))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(xy, fill=fill)
        a = np.asarray(im, np.float32) / 255.0
    noise = rng.uniform(0.0, 0.06)
    return np.clip(a + rng.normal(0, noise, a.shape), 0, 1).astype(np.float32)


def _blurred(im: Image.Image, rng: np.random.Generator) -> np.ndarray:
    a = np.asarray(im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 3.0)))), np.float32) / 255.0
    return np.clip(a + rng.normal(0, rng.uniform(0.005, 0.03), a.shape), 0, 1).astype(np.float32)


def _ct_phantom(rng: np.random.Generator) -> np.ndarray:
    """An axial chest-CT-like slice: body ellipse on black, two dark lungs, bright spine and ribs, a table."""
    n = int(rng.integers(160, 400))
    im = Image.new("L", (n, n), int(rng.integers(0, 25)))
    d = ImageDraw.Draw(im)
    cx, cy = n / 2 + rng.uniform(-0.05, 0.05) * n, n / 2 + rng.uniform(-0.05, 0.05) * n
    rx, ry = n * rng.uniform(0.32, 0.46), n * rng.uniform(0.22, 0.36)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.integers(90, 150)), outline=int(rng.integers(150, 220)),
              width=int(rng.integers(1, 5)))
    for side in (-1, 1):  # lungs
        lx = cx + side * rx * rng.uniform(0.35, 0.55)
        lw, lh = rx * rng.uniform(0.28, 0.42), ry * rng.uniform(0.5, 0.8)
        d.ellipse([lx - lw, cy - lh, lx + lw, cy + lh * 0.9], fill=int(rng.integers(5, 45)))
    sr = ry * rng.uniform(0.12, 0.2)  # vertebra
    d.ellipse([cx - sr, cy + ry - 3.2 * sr, cx + sr, cy + ry - 1.2 * sr], fill=int(rng.integers(200, 256)))
    for t in np.linspace(0.15 * np.pi, 0.85 * np.pi, int(rng.integers(4, 9))):  # rib sections
        for side in (-1, 1):
            x, y = cx + side * rx * 0.92 * np.cos(t), cy + ry * 0.92 * np.sin(t) * side * 0 + ry * 0.9 * np.sin(t) - ry * 0.2
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=230)
    if rng.random() < 0.6:  # the table
        y = cy + ry + n * rng.uniform(0.03, 0.08)
        d.rectangle([n * 0.1, y, n * 0.9, y + n * 0.02], fill=int(rng.integers(100, 200)))
    return _blurred(im, rng)


def _limb_phantom(rng: np.random.Generator) -> np.ndarray:
    """A radiograph of another body part: soft-tissue silhouettes with long bones and joints on black."""
    w, h = int(rng.integers(160, 420)), int(rng.integers(200, 480))
    im = Image.new("L", (w, h), int(rng.integers(0, 30)))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):  # limbs or fingers
        x0 = rng.uniform(0.15, 0.85) * w
        x1 = x0 + rng.uniform(-0.3, 0.3) * w
        y0, y1 = rng.uniform(-0.1, 0.3) * h, rng.uniform(0.7, 1.1) * h
        tissue = float(rng.uniform(0.06, 0.2)) * w
        d.line([(x0, y0), (x1, y1)], fill=int(rng.integers(70, 130)), width=int(2 * tissue))
        bone = tissue * rng.uniform(0.35, 0.6)
        d.line([(x0, y0), (x1, y1)], fill=int(rng.integers(170, 240)), width=int(bone))
        d.line([(x0, y0), (x1, y1)], fill=int(rng.integers(120, 170)), width=max(1, int(bone * 0.4)))  # marrow
        for tj in rng.uniform(0.2, 0.8, int(rng.integers(0, 3))):  # joints
            jx, jy, r = x0 + tj * (x1 - x0), y0 + tj * (y1 - y0), bone * 0.8
            d.ellipse([jx - r, jy - r, jx + r, jy + r], fill=int(rng.integers(180, 250)))
            d.line([(jx - r, jy), (jx + r, jy)], fill=60, width=2)
    return _blurred(im, rng)


def _half_film(film: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One side of a frontal film stretched to a full frame: one lung field and the spine at an edge,
    as a lateral view shows (an approximation; no lateral films are available)."""
    a = film.astype(np.float32) / 255.0 if film.dtype == np.uint8 else film
    h, w = a.shape
    half = a[:, : w // 2] if rng.random() < 0.5 else a[:, w // 2 :]
    if rng.random() < 0.5:
        half = half[:, ::-1]
    return _resize(np.ascontiguousarray(half), int(w * rng.uniform(0.8, 1.1)), h)


def _lateral_phantom(rng: np.random.Generator, film: np.ndarray | None = None) -> np.ndarray:
    """A drawn lateral chest film (a stand-in: no licensable lateral films are available offline).

    The layout of a lateral view: body filling the frame, one large dark lung field between the
    sternum (front) and the spine (a column of bright vertebral bodies near the back edge, slight
    kyphosis), the heart as a soft-tissue blob in front and below, diaphragm domes, the trachea,
    faint rib arcs, often the raised arms over the upper front; blurred, with smooth "lung
    marking" noise and film noise, facing left or right at random, random exposure (gamma).
    With ``film`` (a frontal film, ``(S, S)`` uint8 or float in [0, 1]) the fine structure of one of
    its lungs (ribs, vessels: the film minus a blurred copy) is laid over the lung field and the
    body, so the stand-in carries a real film's texture in a lateral layout.
    Returns ``(H, W)`` float32 in [0, 1], ``W`` 180-420 px.
    """
    w = int(rng.integers(180, 420)); h = int(w * rng.uniform(0.95, 1.3))
    im = Image.new("F", (w, h), float(rng.uniform(0.0, 0.12)))
    d = ImageDraw.Draw(im)
    # body: rounded thorax filling most of the frame
    bx0, bx1 = w * rng.uniform(-0.05, 0.12), w * rng.uniform(0.88, 1.05)
    d.rounded_rectangle([bx0, -h * 0.1, bx1, h * 1.1], radius=int(w * 0.2), fill=float(rng.uniform(0.45, 0.65)))
    # lung field: large dark ellipse-ish polygon between sternum and spine
    lx0, lx1 = bx0 + (bx1 - bx0) * rng.uniform(0.1, 0.2), bx0 + (bx1 - bx0) * rng.uniform(0.72, 0.82)
    ly0, ly1 = h * rng.uniform(0.05, 0.18), h * rng.uniform(0.68, 0.85)
    lung = float(rng.uniform(0.08, 0.28))
    d.ellipse([lx0, ly0, lx1, ly1 + (ly1 - ly0) * 0.25], fill=lung)
    # diaphragm: bright below domes (posterior sulcus deeper)
    pts = [(x, ly1 - (ly1 - ly0) * 0.12 * np.sin(np.pi * (x - lx0) / max(lx1 - lx0, 1)) + (x - lx0) / w * h * 0.08)
           for x in np.linspace(lx0 - 10, lx1 + 10, 20)]
    d.polygon(pts + [(lx1 + 10, h * 1.1), (lx0 - 10, h * 1.1)], fill=float(rng.uniform(0.55, 0.75)))
    # heart: anterior-inferior blob
    hx0 = lx0 + (lx1 - lx0) * rng.uniform(-0.05, 0.1); hx1 = lx0 + (lx1 - lx0) * rng.uniform(0.45, 0.65)
    hy0 = ly0 + (ly1 - ly0) * rng.uniform(0.35, 0.5); hy1 = ly1 + (ly1 - ly0) * 0.1
    d.ellipse([hx0, hy0, hx1, hy1], fill=float(rng.uniform(0.45, 0.62)))
    # trachea: dark band from top to the hilum
    tx = lx0 + (lx1 - lx0) * rng.uniform(0.45, 0.6)
    d.line([(tx, 0), (tx + w * 0.05, ly0 + (ly1 - ly0) * 0.4)], fill=lung * 0.8, width=max(2, int(w * 0.04)))
    # spine: vertebral bodies along the posterior side, slight kyphosis
    sx = bx0 + (bx1 - bx0) * rng.uniform(0.8, 0.9); vw = w * rng.uniform(0.07, 0.11); vh = h * rng.uniform(0.05, 0.07)
    y = -vh * rng.uniform(0, 1); bright = float(rng.uniform(0.7, 0.9))
    while y < h:
        off = w * 0.03 * np.sin(np.pi * y / h)
        d.rectangle([sx - vw / 2 + off, y, sx + vw / 2 + off, y + vh * 0.82], fill=bright)
        d.rectangle([sx + vw / 2 + off, y + vh * 0.2, sx + vw * 1.3 + off, y + vh * 0.6], fill=bright * 0.85)  # pedicles
        y += vh
    # sternum: thin bright line at the front
    stx = bx0 + (bx1 - bx0) * rng.uniform(0.05, 0.12)
    d.line([(stx, h * 0.05), (stx + w * 0.04, h * 0.6)], fill=float(rng.uniform(0.6, 0.85)), width=max(2, int(w * 0.02)))
    # ribs: faint oblique arcs across the lung field
    for k in range(int(rng.integers(6, 11))):
        yy = ly0 + (ly1 - ly0) * (k + rng.uniform(0, 0.5)) / 10
        d.arc([lx0 - w * 0.2, yy - h * 0.1, sx, yy + h * 0.3], 200, 340, fill=float(lung + 0.12), width=max(1, int(w * 0.012)))
    # arms raised: soft tissue band over the upper anterior chest
    if rng.random() < 0.6:
        ax = lx0 + (lx1 - lx0) * rng.uniform(0.1, 0.5)
        d.line([(ax, -h * 0.05), (ax + w * rng.uniform(-0.1, 0.1), h * 0.4)], fill=float(rng.uniform(0.35, 0.55)),
               width=int(w * rng.uniform(0.1, 0.2)))
    im8 = Image.fromarray((np.clip(np.asarray(im, np.float32), 0, 1) * 255).astype(np.uint8))
    a = np.asarray(im8.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 3.0)) * w / 224)), np.float32) / 255.0
    # lung markings: smooth noise
    if film is not None:  # a real lung's fine structure over the lung field and the body
        f = film.astype(np.float32) / 255.0 if film.dtype == np.uint8 else np.asarray(film, np.float32)
        fh, fw = f.shape
        x0 = int(fw * (0.08 if rng.random() < 0.5 else 0.55))
        crop = f[int(fh * 0.12):int(fh * 0.72), x0:x0 + int(fw * 0.37)]
        im_c = Image.fromarray(np.uint8(np.clip(crop, 0, 1) * 255))
        detail = (np.asarray(im_c, np.float32) - np.asarray(im_c.filter(ImageFilter.GaussianBlur(4)), np.float32)) / 255
        detail = np.asarray(Image.fromarray(detail, mode="F").resize((w, h), Image.Resampling.BILINEAR), np.float32)
        a = a + detail * float(rng.uniform(0.4, 0.9))
    n = rng.normal(0, 1, (h // 8 + 1, w // 8 + 1)).astype(np.float32)
    n = np.asarray(Image.fromarray(n).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    a = a + n * float(rng.uniform(0.01, 0.04)) + rng.normal(0, rng.uniform(0.003, 0.02), a.shape).astype(np.float32)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    a = np.clip(a, 0, 1)
    a = a ** np.float32(np.exp(rng.uniform(-0.3, 0.3)))
    return np.ascontiguousarray(a, np.float32)


SYNTHETIC_KINDS = ("uniform_noise", "gaussian_noise", "smooth_noise", "salt_pepper", "linear_gradient",
                   "radial_gradient", "flat", "shapes")


def package_images() -> list[tuple[str, np.ndarray]]:
    """Greyscale images shipped by installed packages, ``[(name, (H, W) float32 in [0, 1])]``.

    scikit-learn's two sample photos; matplotlib's sample photos, logo, elevation maps and MR/CT
    slice (``s1045.ima.gz``); every single-image pixel array of pydicom's test files (CT, MR, NM,
    RT dose, segmentation, ultrasound, secondary captures) with both sides >= 32 px. Packages or
    files that are missing or undecodable are skipped (logged at debug level).
    """
    out: list[tuple[str, np.ndarray]] = []
    try:
        from sklearn.datasets import load_sample_images

        for name, img in zip(("sklearn china.jpg", "sklearn flower.jpg"), load_sample_images().images):
            out.append((name, np.asarray(Image.fromarray(img).convert("L"), np.float32) / 255.0))
    except Exception as exc:  # noqa: BLE001 - optional source
        _logger.debug("sklearn sample images unavailable: %s", exc)
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        for f in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
            if (sample / f).is_file():
                with Image.open(sample / f) as im:
                    out.append((f"matplotlib {f}", np.asarray(im.convert("L"), np.float32) / 255.0))
        for f in ("topobathy.npz", "jacksboro_fault_dem.npz"):
            if (sample / f).is_file():
                with np.load(sample / f) as z:
                    key = "topo" if "topo" in z else "elevation" if "elevation" in z else z.files[0]
                    out.append((f"matplotlib {f}", _minmax(z[key])))
        if (sample / "s1045.ima.gz").is_file():
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(gzip.decompress((sample / "s1045.ima.gz").read_bytes())), force=True)
            out.append(("matplotlib s1045.ima", _minmax(ds.pixel_array)))
    except Exception as exc:  # noqa: BLE001
        _logger.debug("matplotlib sample data unavailable: %s", exc)
    out.extend(pydicom_images())
    return out


def pydicom_images() -> list[tuple[str, np.ndarray]]:
    """Pixel data of pydicom's bundled test files (middle frame, greyscale, min-max scaled), both sides >= 32 px."""
    import warnings

    try:
        import pydicom
    except ImportError:
        return []
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    out = []
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    pydicom_logger.setLevel(logging.CRITICAL)  # its decoders log every deliberately broken test file
    try:
        for f in sorted(folder.glob("*.dcm")):
            a = _dicom_pixels(pydicom, f, warnings)
            if a is not None:
                out.append((f"pydicom {f.name}", a))
    finally:
        pydicom_logger.setLevel(level)
    return out


def _dicom_pixels(pydicom: Any, f: Path, warnings: Any) -> np.ndarray | None:
    """One test file's middle frame as greyscale in [0, 1]; ``None`` if unusable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(f)
            if "PixelData" not in ds:
                return None
            a = np.asarray(ds.pixel_array)
        except Exception:  # noqa: BLE001 - codecs missing, deliberately broken test files
            return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        a = a[frames // 2]
    if a.ndim == 3:  # colour: luma
        a = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim != 2 or min(a.shape) < 32:
        return None
    return _minmax(a)


def _augment_film(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild exposure and geometry changes a real frontal film may show (positives of the classifier)."""
    im = Image.fromarray(np.ascontiguousarray(a, np.float32), mode="F")
    w, h = im.size
    if rng.random() < 0.5:  # small rotation
        im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR, fillcolor=float(rng.uniform(0, 0.2)))
    if rng.random() < 0.5:  # zoom in (crop) or out (pad), aspect changes
        s = rng.uniform(0.8, 1.0)
        cw, ch = int(w * s * rng.uniform(0.9, 1.1)), int(h * s)
        cw = min(cw, w)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.3:
        pad = int(w * rng.uniform(0.02, 0.12))
        canvas = Image.new("F", (im.size[0] + 2 * pad, im.size[1] + 2 * pad), float(rng.uniform(0, 0.1)))
        canvas.paste(im, (pad, pad))
        im = canvas
    out = np.asarray(im, np.float32)
    out = np.clip(out, 1e-6, 1) ** np.float32(np.exp(rng.uniform(-0.4, 0.4)))
    m = out.mean()
    out = (out - m) * np.float32(rng.uniform(0.75, 1.3)) + m + np.float32(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape).astype(np.float32)
    return np.clip(out, 0, 1).astype(np.float32)


def make_negatives(
    films: np.ndarray, rng: np.random.Generator, *, n_transformed: int = 400, n_other: int = 1200
) -> tuple[list[np.ndarray], np.ndarray]:
    """The classifier's negatives.

    Args:
        films: ``(M, S, S)`` uint8 training films (network input before normalisation).
        rng: random generator (seeded by the caller).
        n_transformed: films per transformation (inverted, rotated 90, 180, 270 degrees).
        n_other: "other" images (synthetic, documents, screenshots, package images, film crops).

    Returns:
        ``(images, labels)``: ``(H, W)`` float32 images in [0, 1] and their :data:`LR_CLASSES` indices.
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    idx = rng.permutation(len(films))
    for j, (label, fn) in enumerate((
        (_INVERTED, lambda a: 1.0 - a),
        (_ROT90, lambda a: np.rot90(a, k=-1)),
        (_ROT180, lambda a: np.rot90(a, k=2)),
        (_ROT270, lambda a: np.rot90(a, k=1)),
    )):
        chosen = idx[(j * n_transformed) % max(len(films), 1):][:n_transformed]
        if len(chosen) < n_transformed:
            chosen = rng.choice(len(films), n_transformed)
        for i in chosen:
            a = films[i].astype(np.float32) / 255.0
            if rng.random() < 0.5:
                a = _augment_film(a, rng)
            images.append(np.ascontiguousarray(fn(a)))
            labels.append(label)

    packaged = [a for _, a in package_images()]
    photos = [a for a in packaged if min(a.shape) >= 64]
    makers: list[Callable[[], np.ndarray]] = [
        *(lambda k=k: _synthetic(rng, k) for k in SYNTHETIC_KINDS),
        lambda: _document(rng),
        lambda: _document(rng),
        lambda: _screenshot(rng, photos),
        lambda: _screenshot(rng, photos),
        lambda: _random_crop(films[int(rng.integers(len(films)))].astype(np.float32) / 255.0, rng, 0.2, 0.35),
        lambda: _ct_phantom(rng),
        lambda: _ct_phantom(rng),
        lambda: _limb_phantom(rng),
        lambda: _limb_phantom(rng),
        lambda: _half_film(films[int(rng.integers(len(films)))], rng),
        lambda: _lateral_phantom(rng),
        lambda: _lateral_phantom(rng, films[int(rng.integers(len(films)))]),
        lambda: _lateral_phantom(rng, films[int(rng.integers(len(films)))]),
    ]
    if packaged:
        def from_package() -> np.ndarray:
            a = packaged[int(rng.integers(len(packaged)))]
            a = _random_crop(a, rng, 0.35, 1.0) if rng.random() < 0.7 else a
            if rng.random() < 0.3:
                a = 1.0 - a
            if rng.random() < 0.5:
                a = np.rot90(a, k=int(rng.integers(0, 4)))
            return np.ascontiguousarray(a, dtype=np.float32)

        makers += [from_package] * 6  # about a third of the "other" images
    for _ in range(n_other):
        images.append(makers[int(rng.integers(len(makers)))]())
        labels.append(_OTHER)
    return images, np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------- features


def _run_features(
    session: Any, input_name: str, logits_name: str, features_name: str,
    inputs: Iterator[np.ndarray], n: int, batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the ONNX graph on ``n`` normalised ``(1, S, S)`` inputs; returns ``(logits (n, 3), features (n, Cf))``."""
    logits, feats = [], []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            lo, fe = session.run([logits_name, features_name], {input_name: np.stack(batch)})
            logits.append(lo)
            feats.append(fe)
            batch.clear()

    for x in inputs:
        batch.append(x)
        if len(batch) == batch_size:
            flush()
    flush()
    if not feats:
        raise ValueError("no images to compute features on")
    return np.concatenate(logits), np.concatenate(feats).astype(np.float32)


def _inputs_u8(films: np.ndarray, pre: PreprocessConfig) -> Iterator[np.ndarray]:
    for q in films:
        yield normalize(q, pre)[None]


def _inputs_float(images: Sequence[np.ndarray], pre: PreprocessConfig) -> Iterator[np.ndarray]:
    for a in images:
        yield normalize(resize_to_input(a, pre), pre)[None]


# ------------------------------------------------------------------------------------------ fitting


def _fit_arrays(
    train_feats: np.ndarray, train_labels: np.ndarray, lr_feats: np.ndarray, lr_labels: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    k = int(min(PCA_DIM, train_feats.shape[1] // 2, len(train_feats) - 1))
    pca = PCA(n_components=k, random_state=seed).fit(train_feats)
    z = pca.transform(train_feats)
    classes = np.unique(train_labels)
    means = np.zeros((int(train_labels.max()) + 1, k))
    for c in classes:
        means[c] = z[train_labels == c].mean(axis=0)
    # classes absent from the training films (tiny runs) get the overall mean
    for c in set(range(len(means))) - set(classes.tolist()):
        means[c] = z.mean(axis=0)
    lw = LedoitWolf().fit(z - means[train_labels])
    scaler = StandardScaler().fit(lr_feats)
    scale = np.where(scaler.scale_ > 1e-6, scaler.scale_, 1.0)
    lr = LogisticRegression(C=0.05, max_iter=3000, class_weight="balanced", random_state=seed)
    lr.fit((lr_feats - scaler.mean_) / scale, lr_labels)
    coef = np.zeros((len(LR_CLASSES), lr_feats.shape[1]))
    icpt = np.full(len(LR_CLASSES), -30.0)  # a class with no examples is never predicted
    for row, c in enumerate(lr.classes_):
        coef[c], icpt[c] = (lr.coef_[row], lr.intercept_[row]) if len(lr.classes_) > 2 else (0, 0)
    if len(lr.classes_) == 2:  # binary problem (tiny runs): sklearn returns one row for classes_[1]
        coef[lr.classes_[1]], icpt[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
        icpt[lr.classes_[0]] = 0.0
    return {
        "feat_mean": pca.mean_, "components": pca.components_, "class_means": means,
        "precision": lw.precision_, "lr_mean": scaler.mean_, "lr_scale": scale,
        "lr_coef": coef, "lr_intercept": icpt,
    }


def choose_thresholds(val_distance: np.ndarray, val_residual: np.ndarray, val_p_frontal: np.ndarray,
                      target: float = TARGET_FALSE_ALARM) -> dict[str, float]:
    """Warn and refuse thresholds from the validation films' scores.

    The warn thresholds are the ``(1 - q)`` quantiles of the distances and residuals and the ``q``
    quantile of ``P(frontal)``, with the largest ``q`` (searched from ``target / 3`` down) for which
    at most ``target`` of the films exceed any of them. The refuse thresholds lie beyond every
    validation film: ``max(REFUSE_DISTANCE_FACTOR * warn, 1.05 * max)`` for the distance and the
    residual, ``min(P_FRONTAL_REFUSE_MAX, warn / 2, min P / 2)`` for ``P(frontal)``.

    Args:
        val_distance: ``(n,)`` Mahalanobis distances of real validation films.
        val_residual: ``(n,)`` their feature residuals.
        val_p_frontal: ``(n,)`` their ``P(frontal)``.
        target: largest flagged fraction.

    Returns:
        ``{"mahalanobis_warn", "mahalanobis_refuse", "residual_warn", "residual_refuse",
        "p_frontal_warn", "p_frontal_refuse"}``.
    """
    d = np.asarray(val_distance, np.float64)
    r = np.asarray(val_residual, np.float64)
    p = np.asarray(val_p_frontal, np.float64)
    q = target / 3
    while True:
        t_d = float(np.quantile(d, 1 - q, method="higher"))
        t_r = float(np.quantile(r, 1 - q, method="higher"))
        t_p = float(np.quantile(p, q, method="lower"))
        if np.mean((d > t_d) | (r > t_r) | (p < t_p)) <= target or q < 1e-4:
            break
        q /= 1.25
    return {
        "mahalanobis_warn": t_d,
        "mahalanobis_refuse": max(REFUSE_DISTANCE_FACTOR * t_d, float(d.max()) * 1.05),
        "residual_warn": t_r,
        "residual_refuse": max(REFUSE_DISTANCE_FACTOR * t_r, float(r.max()) * 1.05),
        "p_frontal_warn": t_p,
        "p_frontal_refuse": min(P_FRONTAL_REFUSE_MAX, t_p / 2, float(p.min()) * 0.5),
    }


def _flags(s: dict[str, np.ndarray], t: dict[str, float], level: str) -> np.ndarray:
    """Which images the feature checks flag at ``level`` (``warn``: warn or refuse; ``refuse``)."""
    return ((s["mahalanobis"] > t[f"mahalanobis_{level}"]) | (s["residual"] > t[f"residual_{level}"])
            | (s["p_frontal"] < t[f"p_frontal_{level}"]))


def _view_verdicts(layout: np.ndarray, feat_warn: np.ndarray, feat_refuse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(refused, flagged)`` by the view and feature checks together, as :meth:`deephealth.gate.Gate.assess` decides."""
    refused = feat_refuse | (layout < LAYOUT_REFUSE) | ((layout < LAYOUT_WARN) & feat_warn)
    return refused, refused | feat_warn | (layout < LAYOUT_WARN)


def view_check_figures(
    gate: FeatureGate, val_films: np.ndarray, val_s: dict[str, np.ndarray], thresholds: dict[str, float],
    run: Callable[[Iterator[np.ndarray], int], tuple[np.ndarray, np.ndarray]], pre: PreprocessConfig,
    rng: np.random.Generator, n_stand_ins: int = 200,
) -> dict[str, Any]:
    """The view check's figures for the metadata: validation films, fresh lateral stand-ins, rotations.

    Args:
        gate: the fitted feature gate; val_films: ``(V, S, S)`` uint8 validation films;
        val_s: ``gate.scores`` of the validation films; thresholds: the gate's thresholds;
        run: runs the ONNX graph on ``(inputs, n)`` and returns ``(logits, features)``;
        pre: the model's preprocessing; rng: generator for the stand-ins (a seed the fit did not use);
        n_stand_ins: drawn lateral films and half films to measure on.

    Returns:
        ``{"layout_refuse", "layout_warn", "validation": {...}, "lateral_stand_ins": {...},
        "half_films": {...}, "rotated_validation_films": {...}}``: refused and flagged fractions
        of each set by the feature and view checks together (the image's other checks excluded),
        and for validation films rotated by 90 degrees either way how often the reason names the
        right direction, the wrong one, or none (:data:`deephealth.gate.ROTATION_SURE`).
    """
    def verdicts(films: Sequence[np.ndarray], s: dict[str, np.ndarray]) -> dict[str, Any]:
        layout = np.array([lung_layout(q) for q in films])
        ref, flag = _view_verdicts(layout, _flags(s, thresholds, "warn"), _flags(s, thresholds, "refuse"))
        return {"images": int(len(films)), "refused_fraction": float(ref.mean()), "flagged_fraction": float(flag.mean()),
                "layout_refused_fraction": float((layout < LAYOUT_REFUSE).mean()),
                "layout_flagged_fraction": float((layout < LAYOUT_WARN).mean())}

    out: dict[str, Any] = {"layout_refuse": LAYOUT_REFUSE, "layout_warn": LAYOUT_WARN,
                           "validation": verdicts(list(val_films), val_s)}
    for name, make in (("lateral_stand_ins", lambda: _lateral_phantom(rng)),
                       ("lateral_stand_ins_textured",
                        lambda: _lateral_phantom(rng, val_films[int(rng.integers(len(val_films)))])),
                       ("half_films", lambda: _half_film(val_films[int(rng.integers(len(val_films)))], rng))):
        images = [resize_to_input(make(), pre) for _ in range(n_stand_ins)]
        lo, fe = run(_inputs_u8(np.stack(images), pre), len(images))
        out[name] = verdicts(images, gate.scores(fe, lo))
        out[name]["source"] = {
            "lateral_stand_ins": "drawn by deephealth.training.gate_fit._lateral_phantom (fresh seed)",
            "lateral_stand_ins_textured": "the same, with a validation film's lung texture",
            "half_films": "one half of a validation film stretched to a full frame",
        }[name]
    rot = [np.ascontiguousarray(np.rot90(q, k=k)) for q in val_films for k in (-1, 1)]  # clockwise, counter-clockwise
    lo, fe = run(_inputs_u8(np.stack(rot), pre), len(rot))
    s = gate.scores(fe, lo)
    r90, r270 = s["p_rotated_90"], s["p_rotated_270"]
    truth = np.tile([True, False], len(val_films))  # True: rotated clockwise (class rotated_90)
    sure = np.maximum(r90, r270) >= ROTATION_SURE * (r90 + r270)
    said_cw = r90 > r270
    flagged = _flags(s, thresholds, "warn")
    out["rotated_validation_films"] = {
        "images": int(len(rot)), "flagged_fraction": float(flagged.mean()),
        "direction_right": float((sure & (said_cw == truth)).mean()),
        "direction_wrong": float((sure & (said_cw != truth)).mean()),
        "direction_unnamed": float((~sure).mean()),
        "direction_wrong_without_rule": float((said_cw != truth).mean()),
    }
    return out


def fit_gate(
    model_dir: str | Path,
    train_films: np.ndarray,
    train_labels: np.ndarray,
    val_films: np.ndarray,
    *,
    n_lr_films: int = 1500,
    n_transformed: int = 400,
    n_other: int = 1200,
    seed: int = 0,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the gate for an exported model folder and write ``gate.npz`` and ``metadata.json["gate"]``.

    Args:
        model_dir: exported model folder (``model.onnx`` with a ``features`` output, ``metadata.json``).
        train_films: ``(M, S, S)`` uint8 training films (network input before normalisation;
            :func:`deephealth.training.data.decode_records` output).
        train_labels: ``(M,)`` int class indices of ``train_films``.
        val_films: ``(V, S, S)`` uint8 validation films, used only for the thresholds and the
            false-alarm rate.
        n_lr_films: training films used as the classifier's positives (each also once augmented).
        n_transformed: films per transformation among the negatives (inverted, rotated 90/180/270).
        n_other: "other" negatives (synthetic, documents, screenshots, package images, crops).
        seed: seed of every random choice.
        split: description of the data split, recorded in the metadata.

    Returns:
        The ``gate`` metadata entry (also written into ``metadata.json``).

    Raises:
        ValueError: if there are no training or validation films, or the model has no ``features`` output.
    """
    import onnxruntime as ort

    from deephealth.artifact import METADATA_FILE, ModelArtifact, session_options, write_metadata

    t0 = time.time()
    model_dir = Path(model_dir)
    if len(train_films) < 10 or len(val_films) < 10:
        raise ValueError(f"the gate needs training and validation films (got {len(train_films)} and {len(val_films)})")
    art = ModelArtifact.load(model_dir, verify=False)
    onnx_meta = art.metadata["onnx"]
    feat_name = onnx_meta.get("features")
    if not feat_name:
        raise ValueError(f"{model_dir}: the model has no features output; re-export it")
    pre = art.preprocessing
    sess = ort.InferenceSession(str(art.onnx_path), session_options(graph_optimization=False),
                                providers=["CPUExecutionProvider"])
    run = lambda it, n: _run_features(sess, onnx_meta["input"], onnx_meta["logits"], feat_name, it, n)  # noqa: E731
    rng = np.random.default_rng(seed)

    _, train_f = run(_inputs_u8(train_films, pre), len(train_films))
    val_logits, val_f = run(_inputs_u8(val_films, pre), len(val_films))
    _logger.info("gate: features of %d training + %d validation films in %.0f s", len(train_films), len(val_films),
                 time.time() - t0)
    pos_idx = rng.permutation(len(train_films))[:n_lr_films]
    aug = [_augment_film(train_films[i].astype(np.float32) / 255.0, rng) for i in pos_idx]
    _, aug_f = run(_inputs_float(aug, pre), len(aug))
    neg_images, neg_labels = make_negatives(train_films, rng, n_transformed=n_transformed, n_other=n_other)
    _, neg_f = run(_inputs_float(neg_images, pre), len(neg_images))
    t_feat = time.time() - t0
    _logger.info("gate: features of %d augmented films and %d negatives; %.0f s so far", len(aug), len(neg_images), t_feat)

    lr_x = np.concatenate([train_f[pos_idx], aug_f, neg_f])
    lr_y = np.concatenate([np.zeros(len(pos_idx) + len(aug), np.int64), neg_labels])
    arrays = _fit_arrays(train_f, np.asarray(train_labels, np.int64), lr_x, lr_y, seed)
    provisional = FeatureGate(**{k: np.asarray(v, np.float32) for k, v in arrays.items()},
                              thresholds={k: 0.0 for k in FeatureGate.THRESHOLDS})
    val_s = provisional.scores(val_f, val_logits)
    thresholds = choose_thresholds(val_s["mahalanobis"], val_s["residual"], val_s["p_frontal"])
    gate = FeatureGate(**{k: np.asarray(v, np.float32) for k, v in arrays.items()}, thresholds=thresholds)
    val_s = gate.scores(val_f, val_logits)
    val_flag, val_refuse = _flags(val_s, thresholds, "warn"), _flags(val_s, thresholds, "refuse")
    neg_s = gate.scores(neg_f, np.zeros((len(neg_f), 3)))
    neg_flag = _flags(neg_s, thresholds, "warn")

    view = view_check_figures(gate, val_films, val_s, thresholds, run, pre, np.random.default_rng(seed + 1))

    gate.save(model_dir / GATE_FILE)
    entry: dict[str, Any] = {
        "file": GATE_FILE,
        "sha256": sha256_file(model_dir / GATE_FILE),
        "thresholds": thresholds,
        "validation": {
            "films": int(len(val_films)),
            "flagged_fraction": float(val_flag.mean()),
            "refused_fraction": float(val_refuse.mean()),
            "target_flagged_fraction": TARGET_FALSE_ALARM,
            "note": "feature-space checks only; thresholds set on these films (patient-grouped validation split)",
        },
        "view_check": view,
        "training_negatives_flagged": {
            name: float(neg_flag[neg_labels == i].mean())
            for i, name in enumerate(LR_CLASSES) if np.any(neg_labels == i)
        },
        "method": {
            "mahalanobis": f"min over classes, shared covariance (Lee et al., NeurIPS 2018), PCA to "
                           f"{arrays['components'].shape[0]} dims, Ledoit-Wolf shrinkage",
            "residual": "norm of the features outside that PCA subspace (reconstruction error; the residual "
                        "of ViM, Wang et al., CVPR 2022)",
            "classifier": "multinomial logistic regression on standardised features, classes "
                          + ", ".join(LR_CLASSES),
            "energy": "-logsumexp(logits) (Liu et al., NeurIPS 2020), reported only",
            "image_checks": "colour (local), aspect ratio, near-blank, featureless, two-lung layout (view) "
                            "(deephealth.gate)",
            "header_checks": "DICOM View Position, SOP Class UID, Body Part Examined, Patient Age "
                             "(deephealth.gate.header_checks)",
        },
        "data": {
            "train_films": int(len(train_films)),
            "classifier_positives": int(len(pos_idx) + len(aug)),
            "classifier_negatives": {name: int(np.sum(neg_labels == i)) for i, name in enumerate(LR_CLASSES)
                                     if np.any(neg_labels == i)},
            "split": split,
            "lateral_stand_ins": "no real lateral films were used (none licensed for this offline; the ieee8023 "
                                 "covid-chestxray-dataset laterals are reserved for independent evaluation): "
                                 "lateral films drawn by deephealth.training.gate_fit._lateral_phantom (project "
                                 "code, MIT), part with a training film's lung texture, and half films; film pixels "
                                 "from the Kermany pediatric dataset (doi:10.17632/rscbjbr9sj.2, CC BY 4.0)",
        },
        "fit_seconds": round(time.time() - t0, 1),
        "feature_seconds": round(t_feat, 1),
    }
    meta = dict(art.metadata)
    meta["gate"] = entry
    write_metadata(model_dir, meta)
    Gate.for_artifact(ModelArtifact.load(model_dir, verify=False))  # reload check
    _logger.info("gate fitted in %.0f s: validation flagged %.2f %%, thresholds %s (%s)",
                 entry["fit_seconds"], 100 * entry["validation"]["flagged_fraction"], thresholds, METADATA_FILE)
    return entry
