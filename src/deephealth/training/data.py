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
) -> torch.Tensor:
    """Chest-film-safe random augmentation of a batch in [0, 1] (no flips: laterality matters).

    Random affine (rotation up to ``rotate_deg`` degrees, isotropic scale ``1 +- scale``,
    translation up to ``translate`` of the side; border filled with the image's edge values), then
    gamma ``exp(U(-gamma, gamma))``, contrast ``1 +- contrast`` about the image mean and brightness
    ``+- brightness``; clipped to [0, 1].

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
    s = u(1.0 - scale, 1.0 + scale)
    tx, ty = u(-translate, translate) * 2.0, u(-translate, translate) * 2.0
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)
    g = torch.exp(u(-gamma, gamma)).view(b, 1, 1, 1)
    x = x.clamp(1e-6, 1.0) ** g
    c = u(1.0 - contrast, 1.0 + contrast).view(b, 1, 1, 1)
    m = x.mean(dim=(2, 3), keepdim=True)
    x = (x - m) * c + m + u(-brightness, brightness).view(b, 1, 1, 1)
    return x.clamp(0.0, 1.0)
