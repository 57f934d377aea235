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

    Args:
        x01: ``(B, 1, S, S)`` float32 in [0, 1].
        generator: torch random generator (seeded for reproducibility).

    Returns:
        ``(B, 1, S, S)`` float32 in [0, 1].
    """
    b = x01.shape[0]

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
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos / sx, -sin / sy, tx], 1), torch.stack([sin / sx, cos / sy, ty], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if occlude > 0:
        size = x.shape[-2]
        rows = torch.arange(size, dtype=torch.float32).view(1, size) / size  # (1, S)
        bottom = (u(0.0, 1.0) < occlude).float() * u(0.05, 0.30)  # band height, 0 = none
        top = (u(0.0, 1.0) < occlude / 2).float() * u(0.05, 0.20)
        band = ((rows >= 1.0 - bottom.view(b, 1)) | (rows < top.view(b, 1))).view(b, 1, size, 1)
        x = torch.where(band, x.mean(dim=(2, 3), keepdim=True), x)
    g = torch.exp(u(-gamma, gamma)).view(b, 1, 1, 1)
    x = x.clamp(1e-6, 1.0) ** g
    c = u(1.0 - contrast, 1.0 + contrast).view(b, 1, 1, 1)
    m = x.mean(dim=(2, 3), keepdim=True)
    x = (x - m) * c + m + u(-brightness, brightness).view(b, 1, 1, 1)
    if blur > 0:
        k1 = torch.exp(-0.5 * torch.arange(-2.0, 3.0) ** 2)
        k1 = k1 / k1.sum()
        smooth = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k1.view(1, 1, 1, 5))
        smooth = F.conv2d(F.pad(smooth, (0, 0, 2, 2), mode="replicate"), k1.view(1, 1, 5, 1))
        x = x + u(-blur, blur).view(b, 1, 1, 1) * (smooth - x)
    if noise > 0:
        x = x + torch.randn(x.shape, generator=generator) * u(0.0, noise).view(b, 1, 1, 1)
    return x.clamp(0.0, 1.0)


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
