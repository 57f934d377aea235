"""Stability of the shipped model's answer under benign perturbations of the film (issue 16).

A clinician who uploads the same film twice -- once exported from PACS, once as a screenshot,
slightly rotated or re-compressed -- must get the same answer. This module measures how often the
label changes, and by how much ``P(pneumonia) = 1 - P(normal)`` moves, under a fixed, documented
family of changes that do not change the diagnosis.

The family (:data:`PERTURBATIONS`) is applied to the **decoded 8-bit film**, i.e. to
``rint(255 * x)`` of the reader's ``(H, W)`` output, *before* the preprocessing contract; the
perturbed film then goes through the whole serving path (:class:`deephealth.inference.Predictor`:
border crop, resize, ONNX Runtime, temperature, the shipped operating point), exactly as
``deephealth predict`` would label it. Every perturbation is deterministic (the noise is seeded
from the film's own pixels), so a rerun reproduces every figure.

==================  ===============================================================================
name                change of the decoded ``(H, W)`` uint8 film
==================  ===============================================================================
``jpeg_q90``        JPEG re-encoding at quality 90 (Pillow / libjpeg), decoded again
``noise_1``         +-1 grey level: an integer in {-1, 0, +1} added to each pixel, clipped to [0, 255]
``gamma_0.9``       ``rint(255 * (q / 255) ** 0.9)`` (brighter)
``gamma_1.1``       ``rint(255 * (q / 255) ** 1.1)`` (darker)
``rescale_0.8``     resized to 80 % of each side (Pillow bilinear, antialiased)
``rescale_1.25``    resized to 125 % of each side
``rotate_+3``       rotated 3 degrees counter-clockwise about the centre (bilinear; corners filled
                    with the edge pixels, as training's augmentation does)
``rotate_-3``       rotated 3 degrees clockwise
``shift_left``      content moved 4 px left at 224 px (``round(side * 4 / 224)`` px of the decoded
``shift_right``     film, at least 1); the vacated columns / rows repeat the edge
``shift_up``
``shift_down``
``crop_95``         centre crop keeping 95 % of each side
``blur``            ``q + 0.5 * (G(q) - q)``: half-strength Gaussian blur, sigma 1 px (5 taps)
``sharpen``         ``q - 0.5 * (G(q) - q)``: unsharp mask, same kernel and amount
==================  ===============================================================================

Figures (:func:`summarize_stability`) per perturbation: the **label-flip rate** (share of films
whose 3-class label changes), the pneumonia-vs-normal flip rate, and the 50th / 95th percentile
and maximum of ``|delta P(pneumonia)|``; optionally a 95 % patient-bootstrap interval of the flip
rate. When the model's operating point has a review band (issue 16;
:func:`deephealth.calibration.review_flags`), each answer is a definite label or "review", and
:func:`review_band_figures` adds per perturbation the **contradicting-flip rate** (a definite label
before, a different definite label after) and the **outcome-change rate** (any change of the
answer, into or out of review included); the plain label-flip rate stays the headline figure.
Training's per-epoch validation flips
(:data:`deephealth.training.data.STABILITY_VIEWS`) use the same constants, applied to the cached
224 px input in PyTorch.

numpy and Pillow only (no PyTorch, no scikit-learn): it runs with the serving install.
"""

from __future__ import annotations

import io
import logging
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from deephealth.labels import CLASS_NAMES

_logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the family, in numbers

JPEG_QUALITY = 90
"""Quality of the JPEG re-encoding (Pillow's scale, 1-95)."""
NOISE_GREY_LEVELS = 1
"""Largest grey-level change of the noise (an integer uniform in ``[-n, n]`` per pixel)."""
GAMMAS = (0.9, 1.1)
"""Gamma exponents applied to ``q / 255``."""
RESCALES = (0.8, 1.25)
"""Factors applied to each side of the decoded film."""
ROTATE_DEG = 3.0
"""Rotation, degrees, both ways."""
REFERENCE_SIDE = 224
"""The film side at which the shift is given in pixels (the dataset's films are 224 px)."""
SHIFT_PX = 4
"""Shift in pixels at :data:`REFERENCE_SIDE`; ``SHIFT_PX / REFERENCE_SIDE`` of the side in general."""
SHIFT_FRACTION = SHIFT_PX / REFERENCE_SIDE
"""The shift as a fraction of the side."""
CROP_FRACTION = 0.95
"""Kept fraction of each side of the centre crop."""
BLUR_SIGMA = 1.0
"""Standard deviation, in pixels, of the Gaussian of the blur and the unsharp mask."""
BLUR_AMOUNT = 0.5
"""Strength of the blur (``+``) and of the unsharp mask (``-``): ``q + a * (G(q) - q)``."""
NOISE_SEED = 0
"""Seed of the noise, combined with a CRC-32 of the film's pixels (deterministic per film)."""


def gaussian_kernel(sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The 1-D Gaussian of the blur: ``exp(-k^2 / (2 sigma^2))`` for ``k = -2..2``, normalised.

    Returns:
        ``(5,)`` float64 summing to 1 (training's ``apply_augment`` uses the same 5 taps).
    """
    k = np.arange(-2.0, 3.0)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


# --------------------------------------------------------------------------- the perturbations


def _check_u8(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8 or min(image.shape) < 1:
        raise ValueError(f"expected a non-empty (H, W) uint8 film, got {getattr(image, 'dtype', type(image))} "
                         f"of shape {getattr(image, 'shape', None)}")
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A reader's ``(H, W)`` float image in [0, 1] as the 8-bit film: ``rint(255 * clip(x, 0, 1))``.

    For 8-bit files (every dataset JPEG) this is exactly the file's pixels.
    """
    return np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def jpeg_reencode(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode as a grayscale JPEG of ``quality`` with Pillow and decode it again (same shape)."""
    buf = io.BytesIO()
    Image.fromarray(_check_u8(image), mode="L").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def grey_noise(image: np.ndarray, levels: int = NOISE_GREY_LEVELS, seed: int = NOISE_SEED) -> np.ndarray:
    """Add an integer uniform in ``[-levels, levels]`` to each pixel, clipped to [0, 255].

    The generator is seeded with ``(seed, crc32(pixels))``: the same film always gets the same noise.
    """
    img = _check_u8(image)
    rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(img).tobytes())])
    delta = rng.integers(-levels, levels + 1, size=img.shape)
    return np.clip(img.astype(np.int16) + delta, 0, 255).astype(np.uint8)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """``rint(255 * (q / 255) ** g)`` through a 256-entry table (``g < 1`` brightens)."""
    lut = np.rint(255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** g).astype(np.uint8)
    return lut[_check_u8(image)]


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize each side by ``factor`` (rounded, at least 1 px) with Pillow's antialiased bilinear filter."""
    img = _check_u8(image)
    h, w = img.shape
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return np.asarray(Image.fromarray(img, mode="L").resize(size, resample=Image.Resampling.BILINEAR), dtype=np.uint8)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate counter-clockwise by ``degrees`` about the centre, same shape, bilinear.

    The film is padded by repeating its edge pixels before rotating, so the corners the rotation
    uncovers hold edge values rather than black (as training's ``padding_mode="border"``).
    """
    img = _check_u8(image)
    h, w = img.shape
    m = int(math.ceil(max(h, w) * math.sin(math.radians(abs(degrees))))) + 2
    padded = np.pad(img, m, mode="edge")
    rot = Image.fromarray(padded, mode="L").rotate(degrees, resample=Image.Resampling.BILINEAR)
    return np.asarray(rot, dtype=np.uint8)[m : m + h, m : m + w].copy()


def shift_px(side: int) -> int:
    """Pixels of the shift for a film side: ``round(side * SHIFT_PX / REFERENCE_SIDE)``, at least 1."""
    return max(1, int(round(side * SHIFT_FRACTION)))


def shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move the content ``dx`` px right and ``dy`` px down (negative: left / up), same shape.

    The vacated columns and rows repeat the film's edge column / row.
    """
    img = _check_u8(image)
    h, w = img.shape
    if abs(dx) >= w or abs(dy) >= h:
        raise ValueError(f"shift ({dx}, {dy}) is not smaller than the film ({w}x{h})")
    padded = np.pad(img, ((abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[top : top + h, left : left + w].copy()


def centre_crop(image: np.ndarray, fraction: float = CROP_FRACTION) -> np.ndarray:
    """Keep the central ``round(fraction * side)`` pixels of each side (offset ``(side - kept) // 2``)."""
    img = _check_u8(image)
    h, w = img.shape
    ch, cw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw].copy()


def blur_mix(image: np.ndarray, amount: float, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """``rint(q + amount * (G(q) - q))`` clipped to [0, 255]; ``G`` the separable 5-tap Gaussian with
    edge-replicated borders. ``amount > 0`` blurs, ``amount < 0`` is an unsharp mask."""
    img = _check_u8(image).astype(np.float64)
    k = gaussian_kernel(sigma)
    p = np.pad(img, ((0, 0), (2, 2)), mode="edge")
    s = sum(k[i] * p[:, i : i + img.shape[1]] for i in range(5))
    p = np.pad(s, ((2, 2), (0, 0)), mode="edge")
    s = sum(k[i] * p[i : i + img.shape[0], :] for i in range(5))
    return np.clip(np.rint(img + amount * (s - img)), 0, 255).astype(np.uint8)


def _shift_by(direction: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    def fn(img: np.ndarray) -> np.ndarray:
        return shift(img, direction[0] * shift_px(img.shape[1]), direction[1] * shift_px(img.shape[0]))

    return fn


@dataclass(frozen=True)
class Perturbation:
    """One benign change of a decoded film.

    Attributes:
        name: short identifier (``jpeg_q90``, ``rotate_+3``...), used as a key in ``stability.json``.
        description: what it does, for tables.
        apply: ``(H, W)`` uint8 -> ``(H', W')`` uint8 (only rescale and crop change the shape).
    """

    name: str
    description: str
    apply: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.apply(_check_u8(image))


def _family() -> tuple[Perturbation, ...]:
    g_lo, g_hi = GAMMAS
    r_lo, r_hi = RESCALES
    d = f"{ROTATE_DEG:g}"
    s = f"{SHIFT_PX} px at {REFERENCE_SIDE} px"
    blur = f"sigma {BLUR_SIGMA:g} px, amount {BLUR_AMOUNT:g}"
    return (
        Perturbation(f"jpeg_q{JPEG_QUALITY}", f"JPEG re-encoding, quality {JPEG_QUALITY}", jpeg_reencode),
        Perturbation(f"noise_{NOISE_GREY_LEVELS}", f"±{NOISE_GREY_LEVELS} grey level of noise", grey_noise),
        Perturbation(f"gamma_{g_lo:g}", f"gamma {g_lo:g} (brighter)", lambda q: gamma(q, g_lo)),
        Perturbation(f"gamma_{g_hi:g}", f"gamma {g_hi:g} (darker)", lambda q: gamma(q, g_hi)),
        Perturbation(f"rescale_{r_lo:g}", f"resized to {100 * r_lo:g} % of each side", lambda q: rescale(q, r_lo)),
        Perturbation(f"rescale_{r_hi:g}", f"resized to {100 * r_hi:g} % of each side", lambda q: rescale(q, r_hi)),
        Perturbation(f"rotate_+{d}", f"rotated {d}° counter-clockwise", lambda q: rotate(q, ROTATE_DEG)),
        Perturbation(f"rotate_-{d}", f"rotated {d}° clockwise", lambda q: rotate(q, -ROTATE_DEG)),
        Perturbation("shift_left", f"shifted left {s}", _shift_by((-1, 0))),
        Perturbation("shift_right", f"shifted right {s}", _shift_by((1, 0))),
        Perturbation("shift_up", f"shifted up {s}", _shift_by((0, -1))),
        Perturbation("shift_down", f"shifted down {s}", _shift_by((0, 1))),
        Perturbation(f"crop_{round(100 * CROP_FRACTION)}", f"centre crop, {100 * CROP_FRACTION:g} % of each side",
                     centre_crop),
        Perturbation("blur", f"Gaussian blur ({blur})", lambda q: blur_mix(q, BLUR_AMOUNT)),
        Perturbation("sharpen", f"unsharp mask ({blur})", lambda q: blur_mix(q, -BLUR_AMOUNT)),
    )


PERTURBATIONS: tuple[Perturbation, ...] = _family()
"""The fixed family, in report order (see the module docstring)."""

PERTURBATION_NAMES: tuple[str, ...] = tuple(p.name for p in PERTURBATIONS)

MAX_CHUNK_PIXELS = 32_000_000
"""Scoring holds the perturbed copies of a few films at once; a chunk stops growing past this many
float32 pixels (128 MB), so large DICOMs are taken one film at a time."""

FLIP_TARGET = 0.01
"""Issue 16's target: at most 1 % of films change label under any perturbation."""


def perturbation(name: str) -> Perturbation:
    """The member of :data:`PERTURBATIONS` called ``name``.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    for p in PERTURBATIONS:
        if p.name == name:
            return p
    raise KeyError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATION_NAMES)}")


# --------------------------------------------------------------------------- scoring


@dataclass
class StabilityScores:
    """Predictions of films and of their perturbed copies.

    Attributes:
        perturbations: names of the perturbations, ``P`` of them, in column order.
        sources: label (path or name) of each scored film, ``M`` of them.
        source_index: index of each scored film in the input sequence.
        base_probs: ``(M, 3)`` float64 calibrated probabilities of the unchanged films.
        base_labels: ``(M,)`` int64 labels (class index in :data:`deephealth.labels.CLASS_NAMES`).
        probs: ``(P, M, 3)`` float64 probabilities of the perturbed films.
        labels: ``(P, M)`` int64 labels of the perturbed films.
        errors: ``(label, one-line error)`` of each film that could not be read (not scored).
    """

    perturbations: list[str]
    sources: list[str]
    source_index: list[int]
    base_probs: np.ndarray
    base_labels: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    errors: list[tuple[str, str]]


def score_stability(
    predictor: Any,
    sources: Sequence[Any],
    *,
    names: Sequence[str | None] | None = None,
    perturbations: Sequence[Perturbation] = PERTURBATIONS,
    batch_size: int = 32,
    progress: bool = False,
) -> StabilityScores:
    """Score films and each of their perturbed copies through the shipped Predictor.

    Each film is decoded once with ``predictor.load`` (as ``deephealth predict`` decodes it); the
    unchanged film is scored from that decoded image (identical probabilities to predicting the
    file), and each perturbation of its 8-bit version (:func:`to_uint8`) as an array in [0, 1].
    The gate does not stop anything here (``allow_unsuitable``): stability covers every film.

    Args:
        predictor: a :class:`deephealth.inference.Predictor`.
        sources: file paths (or bytes / arrays, as the Predictor accepts).
        names: optional labels of the sources, for messages.
        perturbations: the family (default: all of :data:`PERTURBATIONS`).
        batch_size: images per ONNX Runtime call.
        progress: show a tqdm bar on stderr (if tqdm is installed).

    Returns:
        The :class:`StabilityScores`; unreadable films are listed in ``errors`` and left out.

    Raises:
        ValueError: if ``batch_size < 1`` or no perturbation is given.
        RuntimeError: if the Predictor fails on a film it decoded (should not happen).
    """
    from deephealth.readers import ImageReadError

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    perts = list(perturbations)
    if not perts:
        raise ValueError("no perturbation to apply")
    n_views = 1 + len(perts)
    films_per_chunk = max(1, batch_size // n_views) * 4
    pixel_budget = MAX_CHUNK_PIXELS
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(sources), unit="film", desc="stability", leave=False)
        except ImportError:
            _logger.info("tqdm not installed; no progress bar")
    kept_labels: list[str] = []
    kept_index: list[int] = []
    errors: list[tuple[str, str]] = []
    all_probs: list[np.ndarray] = []  # per chunk (n_views, n, 3)
    all_labels: list[np.ndarray] = []
    try:
        start = 0
        while start < len(sources):
            arrays: list[np.ndarray] = []
            chunk_n = 0
            pixels = 0
            i = start
            # a chunk: up to films_per_chunk films, fewer when large films would hold too much memory
            while i < len(sources) and i - start < films_per_chunk and (i == start or pixels < pixel_budget):
                i += 1
                k = i - 1
                nm = names[k] if names is not None else None
                label = nm or str(sources[k])
                try:
                    image, _ = predictor.load(sources[k], nm)
                except ImageReadError as exc:
                    errors.append((label, " ".join(str(exc).split())))
                    continue
                q = to_uint8(image)
                arrays.append(np.asarray(image, dtype=np.float32))
                arrays.extend(p(q).astype(np.float32) / np.float32(255.0) for p in perts)
                kept_labels.append(label)
                kept_index.append(k)
                chunk_n += 1
                pixels += sum(a.size for a in arrays[-n_views:])
            if bar is not None:
                bar.update(i - start)
            start = i
            if not chunk_n:
                continue
            results = predictor.predict_many(arrays, batch_size=batch_size, allow_unsuitable=True)
            pr = np.empty((chunk_n, n_views, len(CLASS_NAMES)), dtype=np.float64)
            lb = np.empty((chunk_n, n_views), dtype=np.int64)
            for j, res in enumerate(results):
                if getattr(res, "probs", None) is None:
                    raise RuntimeError(f"{kept_labels[len(kept_labels) - chunk_n + j // n_views]}: "
                                       f"{getattr(res, 'error', 'no prediction')}")
                pr[j // n_views, j % n_views] = np.asarray(res.probs, dtype=np.float64)
                lb[j // n_views, j % n_views] = CLASS_NAMES.index(res.label)
            all_probs.append(pr.transpose(1, 0, 2))
            all_labels.append(lb.T)
    finally:
        if bar is not None:
            bar.close()
    k = len(CLASS_NAMES)
    probs = np.concatenate(all_probs, axis=1) if all_probs else np.zeros((n_views, 0, k))
    labels = np.concatenate(all_labels, axis=1) if all_labels else np.zeros((n_views, 0), dtype=np.int64)
    return StabilityScores(
        perturbations=[p.name for p in perts],
        sources=kept_labels,
        source_index=kept_index,
        base_probs=probs[0],
        base_labels=labels[0],
        probs=probs[1:],
        labels=labels[1:],
        errors=errors,
    )


# --------------------------------------------------------------------------- figures


def flip_figures(base_labels: np.ndarray, labels: np.ndarray, base_probs: np.ndarray,
                 probs: np.ndarray) -> dict[str, Any]:
    """Flip rate and ``|delta P(pneumonia)|`` of one perturbation.

    Args:
        base_labels: ``(M,)`` int labels of the unchanged films (index in ``CLASS_NAMES``, 0 = normal).
        labels: ``(M,)`` int labels of the perturbed films.
        base_probs: ``(M, 3)`` probabilities of the unchanged films.
        probs: ``(M, 3)`` probabilities of the perturbed films.

    Returns:
        ``n``, ``n_flips``, ``flip_rate`` (3-class label changed), ``n_pneumonia_flips``,
        ``pneumonia_flip_rate`` (normal <-> pneumonia changed), ``abs_dp_p50``, ``abs_dp_p95``,
        ``abs_dp_max`` (``P(pneumonia) = 1 - P(normal)``); rates and percentiles are ``None`` when
        ``M = 0``.

    Raises:
        ValueError: if the shapes disagree.
    """
    base_labels, labels = np.asarray(base_labels), np.asarray(labels)
    base_probs, probs = np.asarray(base_probs, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    n = base_labels.shape[0]
    if labels.shape != (n,) or base_probs.shape != (n, len(CLASS_NAMES)) or probs.shape != base_probs.shape:
        raise ValueError(f"shape mismatch: labels {base_labels.shape} / {labels.shape}, "
                         f"probs {base_probs.shape} / {probs.shape}")
    flips = base_labels != labels
    pflips = (base_labels == 0) != (labels == 0)
    dp = np.abs(probs[:, 0] - base_probs[:, 0])  # |delta (1 - P(normal))|
    out: dict[str, Any] = {"n": int(n), "n_flips": int(flips.sum()), "n_pneumonia_flips": int(pflips.sum())}
    if n == 0:
        out.update(flip_rate=None, pneumonia_flip_rate=None, abs_dp_p50=None, abs_dp_p95=None, abs_dp_max=None)
        return out
    out.update(
        flip_rate=float(flips.mean()),
        pneumonia_flip_rate=float(pflips.mean()),
        abs_dp_p50=float(np.percentile(dp, 50)),
        abs_dp_p95=float(np.percentile(dp, 95)),
        abs_dp_max=float(dp.max()),
    )
    return out


def review_band_figures(base_probs: np.ndarray, probs: np.ndarray, operating_point: dict[str, Any] | None
                        ) -> dict[str, Any] | None:
    """Flips once the operating point's review band flags borderline films (issue 16's allowed band).

    With the band, each answer is either a definite label or "review"
    (:func:`deephealth.calibration.review_flags`). Two ways a benign change can alter it:

    * a **contradicting flip**: a definite label before and a *different* definite label after
      (the clinician gets two different answers, neither flagged);
    * an **outcome change**: any change of the answer, into or out of "review" included
      (never fewer than the plain label flips' films that leave the band).

    Args:
        base_probs: ``(M, 3)`` calibrated probabilities of the unchanged films.
        probs: ``(V, M, 3)`` the same films after each of ``V`` perturbations.
        operating_point: the model's operating point; ``None`` is returned without a ``review_band``.

    Returns:
        ``None``, or ``{"review_rate", "n_review", "contradicting_rate": (V,) list,
        "n_contradicting": (V,) list, "outcome_change_rate": (V,) list, "any_contradicting_rate"}``
        (``review_rate``: share of unchanged films flagged; ``any_contradicting_rate``: share of
        films contradicted by at least one perturbation).

    Raises:
        ValueError: if the shapes disagree.
    """
    from deephealth.calibration import REVIEW_NONE, decide, review_flags

    if not operating_point or not operating_point.get("review_band"):
        return None
    base, pert = np.asarray(base_probs, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if base.ndim != 2 or pert.ndim != 3 or pert.shape[1:] != base.shape:
        raise ValueError(f"need (M, 3) and (V, M, 3) probabilities, got {base.shape} and {pert.shape}")
    l0, l1 = decide(base, operating_point), decide(pert, operating_point)
    r0, r1 = review_flags(base, operating_point) != REVIEW_NONE, review_flags(pert, operating_point) != REVIEW_NONE
    contra = ~r0[None] & ~r1 & (l1 != l0[None])
    outcome = np.where(r1, -1, l1) != np.where(r0, -1, l0)[None]
    m = max(base.shape[0], 1)
    return {
        "review_rate": float(r0.sum() / m),
        "n_review": int(r0.sum()),
        "contradicting_rate": [float(c) for c in contra.sum(axis=1) / m],
        "n_contradicting": [int(c) for c in contra.sum(axis=1)],
        "outcome_change_rate": [float(c) for c in outcome.sum(axis=1) / m],
        "any_contradicting_rate": float(contra.any(axis=0).sum() / m),
    }


def flip_rate_ci(flips: np.ndarray, patient_ids: Sequence[str], *, n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap interval of the flip rate, resampling patients (all their films come along).

    Args:
        flips: ``(P, M)`` bool, one row per perturbation (or ``(M,)`` for one).
        patient_ids: ``M`` patient ids.
        n_resamples: bootstrap resamples.
        seed: generator seed.
        alpha: 1 - confidence level.

    Returns:
        ``[[lo, hi], ...]`` per row (``[lo, hi]`` for a 1-D input).
    """
    f = np.atleast_2d(np.asarray(flips, dtype=np.float64))
    if f.shape[1] != len(patient_ids) or f.shape[1] == 0:
        raise ValueError(f"{f.shape[1]} films but {len(patient_ids)} patient ids")
    _, inverse = np.unique(np.asarray(patient_ids, dtype=object).astype(str), return_inverse=True)
    n_pat = int(inverse.max()) + 1
    per_patient = np.zeros((f.shape[0], n_pat))
    np.add.at(per_patient.T, inverse, f.T)
    films = np.bincount(inverse, minlength=n_pat).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_pat, size=(n_resamples, n_pat))
    counts = np.zeros((n_resamples, n_pat))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n_pat), draws.ravel()), 1.0)
    rates = (counts @ per_patient.T) / (counts @ films)[:, None]  # (R, P)
    lo, hi = np.percentile(rates, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    out = [[float(a), float(b)] for a, b in zip(lo, hi)]
    return out if np.asarray(flips).ndim == 2 else out[0]


def summarize_stability(
    scores: StabilityScores,
    *,
    patient_ids: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    operating_point: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-able stability section (``stability.json``, ``metrics.json`` -> ``stability``).

    Args:
        scores: :func:`score_stability` output.
        patient_ids: one per scored film (``scores.sources`` order) for patient-bootstrap 95 %
            intervals of the flip rates; ``None`` or ``n_resamples = 0``: no intervals.
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.
        operating_point: the model's operating point (the one ``scores`` were labelled at); with a
            ``review_band`` in it, the band's figures (:func:`review_band_figures`) are added.

    Returns:
        ``{"n_images", "n_failed", "target_flip_rate", "family": [{name, description}],
        "perturbations": {name: flip_figures(...) [+ "flip_rate_ci"]}, "max_flip_rate",
        "worst_perturbations", "worst", "any_flip_rate"}``. ``worst_perturbations`` lists every
        perturbation whose flip rate equals ``max_flip_rate`` (ties all named, in family order;
        empty when no perturbation flips any label); ``worst`` is its first name (``None`` when
        empty), kept for readers of older summaries. ``any_flip_rate`` is the share of films whose
        label changes under at least one perturbation. With a review band, each perturbation also has
        ``n_contradicting``, ``contradicting_rate``, ``n_outcome_changes`` and
        ``outcome_change_rate``, and a ``review_band`` entry holds ``review_rate``, ``n_review``
        (unchanged films flagged), ``any_contradicting_rate`` (films contradicted by at least one
        perturbation), ``max_contradicting_rate``, ``worst_contradicting_perturbations`` (every
        perturbation at that rate, in family order; empty when none contradicts any film) and
        ``worst_contradicting`` (its first name, or ``None``).
    """
    n = int(scores.base_labels.shape[0])
    desc = {p.name: p.description for p in PERTURBATIONS}
    per: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(scores.perturbations):
        per[name] = flip_figures(scores.base_labels, scores.labels[i], scores.base_probs, scores.probs[i])
    flips = scores.labels != scores.base_labels[None, :]
    if patient_ids is not None and n_resamples > 0 and n:
        if len(patient_ids) != n:
            raise ValueError(f"{len(patient_ids)} patient ids for {n} scored films")
        for name, ci in zip(scores.perturbations, flip_rate_ci(flips, patient_ids, n_resamples=n_resamples,
                                                                seed=seed)):
            per[name]["flip_rate_ci"] = ci
    rates = {k: v["flip_rate"] for k, v in per.items() if v["flip_rate"] is not None}
    max_rate = max(rates.values()) if rates else None
    worst_all = _tied_at(rates, max_rate)
    band = review_band_figures(scores.base_probs, scores.probs, operating_point) if n else None
    band_summary = None
    if band is not None:
        for i, name in enumerate(scores.perturbations):
            per[name].update(
                n_contradicting=band["n_contradicting"][i],
                contradicting_rate=band["contradicting_rate"][i],
                n_outcome_changes=int(round(band["outcome_change_rate"][i] * n)),
                outcome_change_rate=band["outcome_change_rate"][i],
            )
        c_rates = {k: per[k]["contradicting_rate"] for k in scores.perturbations}
        max_c = max(c_rates.values()) if c_rates else None
        worst_c = _tied_at(c_rates, max_c)
        band_summary = {
            "review_rate": band["review_rate"],
            "n_review": band["n_review"],
            "any_contradicting_rate": band["any_contradicting_rate"],
            "max_contradicting_rate": max_c,
            "worst_contradicting_perturbations": worst_c,
            "worst_contradicting": worst_c[0] if worst_c else None,
        }
    return {
        "n_images": n,
        "n_failed": len(scores.errors),
        "target_flip_rate": FLIP_TARGET,
        "bootstrap": ({"n_resamples": n_resamples, "seed": seed, "unit": "patient"}
                      if patient_ids is not None and n_resamples > 0 and n else None),
        "family": [{"name": name, "description": desc.get(name, name)} for name in scores.perturbations],
        "perturbations": per,
        "max_flip_rate": max_rate,
        "worst_perturbations": worst_all,
        "worst": worst_all[0] if worst_all else None,
        "any_flip_rate": float(flips.any(axis=0).mean()) if n else None,
        **({"review_band": band_summary} if band_summary is not None else {}),
    }


def _tied_at(rates: dict[str, float], top: float | None) -> list[str]:
    """The names whose rate equals ``top`` (a positive maximum), in ``rates``' order; ``[]`` when ``top`` is 0 or None.

    Rates of one family share their denominator (the films scored), so a tie is an equal count;
    ``math.isclose`` only absorbs the floating-point division.
    """
    if not top:
        return []
    return [k for k, v in rates.items() if v is not None and math.isclose(v, top, rel_tol=1e-9, abs_tol=0.0)]


def format_table(summary: dict[str, Any]) -> list[str]:
    """A Markdown table of a :func:`summarize_stability` dict (one row per perturbation)."""
    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    desc = {f["name"]: f["description"] for f in summary.get("family", [])}
    has_ci = any("flip_rate_ci" in v for v in summary["perturbations"].values())
    has_band = any("contradicting_rate" in v for v in summary["perturbations"].values())
    head = "| perturbation | change | label flips | " + ("95 % CI | " if has_ci else "") + \
        "normal↔pneumonia flips | \\|ΔP\\| p50 | \\|ΔP\\| p95 | \\|ΔP\\| max |" + \
        (" contradicting flips, with the review band | outcome changes, with the review band |" if has_band else "")
    rule = "|---|---|---:|" + ("---:|" if has_ci else "") + "---:|---:|---:|---:|" + ("---:|---:|" if has_band else "")
    out = [head, rule]
    for name, v in summary["perturbations"].items():
        ci = v.get("flip_rate_ci")
        cells = [f"`{name}`", desc.get(name, name), f"{pct(v['flip_rate'])} ({v['n_flips']})"]
        if has_ci:
            cells.append(f"{pct(ci[0])}–{pct(ci[1])}" if ci else "")
        cells += [f"{pct(v['pneumonia_flip_rate'])} ({v['n_pneumonia_flips']})", num(v["abs_dp_p50"]),
                  num(v["abs_dp_p95"]), num(v["abs_dp_max"])]
        if has_band:
            cells += [f"{pct(v.get('contradicting_rate'))} ({v.get('n_contradicting')})",
                      f"{pct(v.get('outcome_change_rate'))} ({v.get('n_outcome_changes')})"]
        out.append("| " + " | ".join(cells) + " |")
    return out


__all__ = [
    "BLUR_AMOUNT",
    "BLUR_SIGMA",
    "CROP_FRACTION",
    "FLIP_TARGET",
    "MAX_CHUNK_PIXELS",
    "GAMMAS",
    "JPEG_QUALITY",
    "NOISE_GREY_LEVELS",
    "PERTURBATIONS",
    "PERTURBATION_NAMES",
    "RESCALES",
    "ROTATE_DEG",
    "SHIFT_FRACTION",
    "SHIFT_PX",
    "Perturbation",
    "StabilityScores",
    "blur_mix",
    "centre_crop",
    "flip_figures",
    "flip_rate_ci",
    "format_table",
    "gamma",
    "gaussian_kernel",
    "grey_noise",
    "jpeg_reencode",
    "perturbation",
    "rescale",
    "review_band_figures",
    "rotate",
    "score_stability",
    "shift",
    "summarize_stability",
    "to_uint8",
]
