"""Training data: decode the dataset once into memory as uint8, augment batches on the fly.

Images pass through the same reader and the same preprocessing contract as inference
(:func:`deephealth.readers.read_image` then :func:`deephealth.preprocessing.resize_to_input`), so
the cached ``(N, S, S)`` uint8 array is exactly what inference would feed the network before
normalisation.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from deephealth.evaluation import stability as family
from deephealth.manifest import Record
from deephealth.preprocessing import PreprocessConfig, resize_to_input
from deephealth.readers import read_image

_logger = logging.getLogger(__name__)


def decode_records(records: list[Record], config: PreprocessConfig, workers: int = 2) -> np.ndarray:
    """Read and resize every record's image.

    Args:
        records: dataset records.
        config: preprocessing contract (input size, interpolation).
        workers: decoding threads (Pillow releases the GIL while decoding).

    Returns:
        ``(N, S, S)`` uint8 array in record order.

    Raises:
        deephealth.readers.ImageReadError: if an image cannot be read (training data must be clean).
    """

    def one(r: Record) -> np.ndarray:
        return resize_to_input(read_image(r.path).image, config)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(one, records))
    if not arrays:
        return np.zeros((0, config.input_size, config.input_size), np.uint8)
    return np.stack(arrays)


def to_input(batch_u8: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Torch twin of :func:`deephealth.preprocessing.normalize` for a ``(B, S, S)`` uint8 batch.

    Returns:
        ``(B, 1, S, S)`` float32, ``(q / 255 - mean) / std``.
    """
    x = batch_u8.to(torch.float32).unsqueeze(1) * (1.0 / 255.0)
    return (x - config.mean) / config.std


def sample_augment(
    shape: tuple[int, ...],
    generator: torch.Generator,
    rotate_deg: float,
    scale: float,
    translate: float,
    brightness: float,
    contrast: float,
    gamma: float,
    *,
    zoom_min: float = 0.0,
    zoom_max: float = 0.0,
    aspect: float = 0.0,
    occlude: float = 0.0,
    blur: float = 0.0,
    noise: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Draw the random parameters of :func:`augment` for a batch of ``shape`` ``(B, 1, S, S)``.

    The draws happen in the same order as :func:`augment` always made them, so a seeded run
    reproduces the same augmentations. See :func:`augment` for the meaning of each argument.

    Returns:
        ``{name: tensor}``: per-image ``angle`` (radians), ``sx``/``sy`` (zoom), ``tx``/``ty``
        (normalised translation), ``bottom``/``top`` (occluded band heights, fraction of the
        side, 0 = none), ``gamma``, ``contrast``, ``brightness``, ``blur`` (mix, < 0 sharpens) and
        ``noise`` (a ``(B, 1, S, S)`` noise field already scaled by its per-image std); each ``(B,)``.
    """
    b = shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    angle = u(-rotate_deg, rotate_deg) * (math.pi / 180.0)
    if zoom_min > 0 and zoom_max > 0:
        z = torch.exp(u(math.log(zoom_min), math.log(zoom_max)))
    else:
        z = u(1.0 - scale, 1.0 + scale)
    r = torch.exp(u(-aspect, aspect)) if aspect > 0 else torch.ones(b)
    sx, sy = z * torch.sqrt(r), z / torch.sqrt(r)
    # Output coords u in [-1, 1] sample input x = A u + t; |t| <= 1 - 1/s keeps a zoomed-in crop inside.
    tx = u(-translate, translate) * 2.0 + u(-1.0, 1.0) * torch.clamp(1.0 - 1.0 / sx, min=0.0)
    ty = u(-translate, translate) * 2.0 + u(-1.0, 1.0) * torch.clamp(1.0 - 1.0 / sy, min=0.0)
    p: dict[str, torch.Tensor] = {"angle": angle, "sx": sx, "sy": sy, "tx": tx, "ty": ty,
                                  "bottom": torch.zeros(b), "top": torch.zeros(b)}
    if occlude > 0:
        p["bottom"] = (u(0.0, 1.0) < occlude).float() * u(0.05, 0.30)  # band height, 0 = none
        p["top"] = (u(0.0, 1.0) < occlude / 2).float() * u(0.05, 0.20)
    p["gamma"] = torch.exp(u(-gamma, gamma))
    p["contrast"] = u(1.0 - contrast, 1.0 + contrast)
    p["brightness"] = u(-brightness, brightness)
    p["blur"] = u(-blur, blur) if blur > 0 else torch.zeros(b)
    if noise > 0:
        field = torch.randn(tuple(shape), generator=generator)
        p["noise"] = field * u(0.0, noise).view(b, 1, 1, 1)
    return p


BENIGN_ROTATE_DEG = family.ROTATE_DEG
"""Benign-perturbation family used for consistency training (issue 16), per-image maxima, taken
from the one family definition, :mod:`deephealth.evaluation.stability`: rotation in degrees (3);"""
BENIGN_SHIFT = family.SHIFT_FRACTION
"""translation as a fraction of the side (4 px of a 224 px film);"""
BENIGN_ZOOM = 0.05
"""zoom ``exp(U(-z, z))`` (about a 95 % crop at the extreme: ``-ln(0.95) = 0.051``);"""
BENIGN_GAMMA = 0.1
"""gamma ``exp(U(-g, g))`` (0.905-1.105, about the family's 0.9 and 1.1);"""
BENIGN_BLUR = family.BLUR_AMOUNT
"""blur / unsharp-mask mix added ``U(-b, b)`` (the family's amount, 0.5, of a sigma-1 Gaussian);"""
BENIGN_NOISE = family.NOISE_GREY_LEVELS / 255.0
"""and +-1 grey level of uniform noise. They mirror the stability benchmark's perturbations
(JPEG re-encoding and rescaling excepted, which have no batch twin here)."""


def benign_variant(params: dict[str, torch.Tensor], generator: torch.Generator, shape: tuple[int, ...],
                   strength: float = 1.0) -> dict[str, torch.Tensor]:
    """A second view's parameters: the same augmentation nudged by a benign perturbation.

    Used for consistency training: the network sees the film under one random augmentation and
    under the same augmentation changed by what must not change the diagnosis (a few degrees of
    rotation, a few pixels of shift, a 95 % crop, gamma 0.9-1.1, mild blur or sharpening, +-1 grey
    level), and is penalised when its two predictions differ.

    Args:
        params: :func:`sample_augment` output for the batch.
        generator: torch random generator.
        shape: ``(B, 1, S, S)`` of the batch.
        strength: multiplies every maximum above (1 = the documented family).

    Returns:
        New parameters (the input is not modified).
    """
    b = shape[0]

    def u(lim: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2.0 - 1.0) * lim * strength

    q = dict(params)
    q["angle"] = params["angle"] + u(BENIGN_ROTATE_DEG) * (math.pi / 180.0)
    z = torch.exp(u(BENIGN_ZOOM))
    q["sx"], q["sy"] = params["sx"] * z, params["sy"] * z
    q["tx"] = params["tx"] + u(BENIGN_SHIFT) * 2.0
    q["ty"] = params["ty"] + u(BENIGN_SHIFT) * 2.0
    q["gamma"] = params["gamma"] * torch.exp(u(BENIGN_GAMMA))
    q["blur"] = params["blur"] + u(BENIGN_BLUR)
    grey = (torch.rand(tuple(shape), generator=generator) * 2.0 - 1.0) * BENIGN_NOISE * strength
    q["noise"] = params.get("noise", torch.zeros(())) + grey
    return q


def apply_augment(x01: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply :func:`sample_augment` parameters to a batch (deterministic).

    Args:
        x01: ``(B, 1, S, S)`` float32 in [0, 1].
        p: the parameters.

    Returns:
        ``(B, 1, S, S)`` float32 in [0, 1].
    """
    b = x01.shape[0]
    cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
    sx, sy = p["sx"], p["sy"]
    theta = torch.stack(
        [torch.stack([cos / sx, -sin / sy, p["tx"]], 1), torch.stack([sin / sx, cos / sy, p["ty"]], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if bool((p["bottom"] > 0).any() or (p["top"] > 0).any()):
        size = x.shape[-2]
        rows = torch.arange(size, dtype=torch.float32).view(1, size) / size  # (1, S)
        band = ((rows >= 1.0 - p["bottom"].view(b, 1)) | (rows < p["top"].view(b, 1))).view(b, 1, size, 1)
        x = torch.where(band, x.mean(dim=(2, 3), keepdim=True), x)
    x = x.clamp(1e-6, 1.0) ** p["gamma"].view(b, 1, 1, 1)
    m = x.mean(dim=(2, 3), keepdim=True)
    x = (x - m) * p["contrast"].view(b, 1, 1, 1) + m + p["brightness"].view(b, 1, 1, 1)
    if bool((p["blur"] != 0).any()):
        k1 = torch.exp(-0.5 * torch.arange(-2.0, 3.0) ** 2)
        k1 = k1 / k1.sum()
        smooth = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k1.view(1, 1, 1, 5))
        smooth = F.conv2d(F.pad(smooth, (0, 0, 2, 2), mode="replicate"), k1.view(1, 1, 5, 1))
        x = x + p["blur"].view(b, 1, 1, 1) * (smooth - x)
    if "noise" in p:
        x = x + p["noise"]
    return x.clamp(0.0, 1.0)


def augment(
    x01: torch.Tensor,
    generator: torch.Generator,
    rotate_deg: float,
    scale: float,
    translate: float,
    brightness: float,
    contrast: float,
    gamma: float,
    *,
    zoom_min: float = 0.0,
    zoom_max: float = 0.0,
    aspect: float = 0.0,
    occlude: float = 0.0,
    blur: float = 0.0,
    noise: float = 0.0,
) -> torch.Tensor:
    """Chest-film-safe random augmentation of a batch in [0, 1] (no flips: laterality matters).

    Geometry, one random affine per image (border filled with the image's edge values):
    rotation up to ``rotate_deg`` degrees; zoom ``z`` (> 1 zooms in), uniform in ``1 +- scale``,
    or log-uniform in ``[zoom_min, zoom_max]`` when both are > 0 (a random resized crop: with
    ``zoom_max = 1.4`` the crop can be half the film's area); aspect ratio ``exp(U(-aspect,
    aspect))`` applied as ``(z * sqrt(r), z / sqrt(r))``; translation up to ``translate`` of the
    side, plus, when zoomed in, anywhere that keeps the crop inside the film.

    Field-of-view occlusion (issue 9: training normals are framed wide, so the upper abdomen and
    neck become a "normal" shortcut): with probability ``occlude`` a bottom band of 5-30 % of the
    height, and independently with probability ``occlude / 2`` a top band of 5-20 %, is filled
    with the image's mean.

    Intensity: gamma ``exp(U(-gamma, gamma))``, contrast ``1 +- contrast`` about the image mean,
    brightness ``+- brightness``; then ``x + a * (blur3(x) - x)`` with ``a ~ U(-blur, blur)``
    (``a > 0`` blurs, ``a < 0`` is an unsharp mask; ``blur3`` a Gaussian of sigma 1 px) and
    Gaussian noise of std ``U(0, noise)``. Clipped to [0, 1].

    :func:`sample_augment` draws the parameters and :func:`apply_augment` applies them; this is
    both in one call.

    Args:
        x01: ``(B, 1, S, S)`` float32 in [0, 1].
        generator: torch random generator (seeded for reproducibility).

    Returns:
        ``(B, 1, S, S)`` float32 in [0, 1].
    """
    p = sample_augment(tuple(x01.shape), generator, rotate_deg, scale, translate, brightness, contrast, gamma,
                       zoom_min=zoom_min, zoom_max=zoom_max, aspect=aspect, occlude=occlude, blur=blur, noise=noise)
    return apply_augment(x01, p)


def shift_views(images_u8: np.ndarray, zoom: float = 0.85, mask_bottom: float = 0.20) -> dict[str, np.ndarray]:
    """Validation proxies for the train-to-test field-of-view shift (issue 9), no test images used.

    The official test split's normal films are framed more tightly than the training ones, and a
    model that reads "wide field of view = normal" calls them pneumonia. Two views of validation
    films expose that: a centre crop of ``zoom`` of each side resized back to the full size, and
    the bottom ``mask_bottom`` of the film (upper abdomen) filled with the film's mean grey.
    Normal films must stay normal in both.

    Args:
        images_u8: ``(N, S, S)`` uint8 preprocessed films (the cached training input).
        zoom: kept fraction of each side for the zoomed view, in (0, 1].
        mask_bottom: masked fraction of the height for the masked view, in [0, 1).

    Returns:
        ``{"zoom": (N, S, S) uint8, "mask": (N, S, S) uint8}``.
    """
    n, s = images_u8.shape[0], images_u8.shape[-1]
    if n == 0:
        return {"zoom": images_u8.copy(), "mask": images_u8.copy()}
    c = int(round(s * zoom))
    o = (s - c) // 2
    crop = torch.from_numpy(images_u8[:, o : o + c, o : o + c]).to(torch.float32).unsqueeze(1)
    zoomed = F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False, antialias=False)
    zoomed = zoomed.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
    masked = images_u8.copy()
    rows = int(round(s * mask_bottom))
    if rows:
        means = np.rint(images_u8.reshape(n, -1).mean(1)).astype(np.uint8)
        masked[:, s - rows :, :] = means[:, None, None]
    return {"zoom": zoomed, "mask": masked}


STABILITY_VIEWS: dict[str, dict[str, float]] = {
    "shift_right": {"tx": -2.0 * BENIGN_SHIFT},
    "shift_down": {"ty": -2.0 * BENIGN_SHIFT},
    f"rotate_+{family.ROTATE_DEG:g}": {"angle": math.radians(family.ROTATE_DEG)},
    f"rotate_-{family.ROTATE_DEG:g}": {"angle": -math.radians(family.ROTATE_DEG)},
    f"crop_{round(100 * family.CROP_FRACTION)}": {"zoom": 1.0 / family.CROP_FRACTION},
    **{f"gamma_{g:g}": {"gamma": g} for g in sorted(family.GAMMAS, reverse=True)},
    "blur": {"blur": family.BLUR_AMOUNT},
    "sharpen": {"blur": -family.BLUR_AMOUNT},
}
"""Fixed benign views of validation films for per-epoch stability figures during training (the
full family, with JPEG re-encoding and file-level resampling, is :mod:`deephealth.evaluation.stability`
on the exported model). Keys name the change; values are :func:`apply_augment` parameters
(``tx``/``ty`` in normalised units: ``-2 * 4/224`` moves the content 4 px of 224 right/down)."""


def stability_views(images_u8: np.ndarray) -> dict[str, torch.Tensor]:
    """The :data:`STABILITY_VIEWS` of cached films, as float ``(N, 1, S, S)`` in [0, 1].

    Args:
        images_u8: ``(N, S, S)`` uint8 preprocessed films.

    Returns:
        ``{view name: (N, 1, S, S) float32}``; the content is not re-quantised to 8 bits.
    """
    x = torch.from_numpy(images_u8).to(torch.float32).unsqueeze(1) / 255.0
    n = x.shape[0]
    out: dict[str, torch.Tensor] = {}
    for name, change in STABILITY_VIEWS.items():
        p = {"angle": torch.zeros(n), "sx": torch.ones(n), "sy": torch.ones(n), "tx": torch.zeros(n),
             "ty": torch.zeros(n), "bottom": torch.zeros(n), "top": torch.zeros(n), "gamma": torch.ones(n),
             "contrast": torch.ones(n), "brightness": torch.zeros(n), "blur": torch.zeros(n)}
        for k, v in change.items():
            if k == "zoom":
                p["sx"] = p["sx"] * v
                p["sy"] = p["sy"] * v
            else:
                p[k] = torch.full((n,), float(v))
        out[name] = apply_augment(x, p) if n else x
    return out

