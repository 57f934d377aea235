"""Network construction: a timm backbone with one input channel and one logit per class.

Only backbones whose head is global average pooling followed by one linear layer are accepted
(ResNet, RegNet, EfficientNet, DenseNet...), because the class activation map (Zhou et al., 2016,
"Learning Deep Features for Discriminative Localization") is then exact:
``logits[k] = mean_hw(CAM[k])`` with ``CAM[k] = W[k] . F + b[k]`` for the last feature map ``F``.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch
from torch import nn

from deephealth.labels import CLASS_NAMES
from deephealth.training.config import AA_LAYERS
from deephealth.training.imagenet import PretrainedWeightsUnavailable, imagenet_state_dict, weights_source

_logger = logging.getLogger(__name__)

#: The keys of a checkpoint's ``model_args`` that define the architecture (``aa_layer`` only when set).
ARCH_KEYS = ("arch", "num_classes", "in_chans", "aa_layer")


def architecture_args(model_args: dict) -> dict:
    """The architecture-defining subset of a checkpoint's ``model_args`` (keys in :data:`ARCH_KEYS`)."""
    return {k: v for k, v in model_args.items() if k in ARCH_KEYS and (k != "aa_layer" or v)}


def build_model(
    arch: str,
    num_classes: int = len(CLASS_NAMES),
    in_chans: int = 1,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    drop_rate: float = 0.0,
    init: str = "random",
    aa_layer: str = "",
) -> nn.Module:
    """Create a timm classifier with ``in_chans`` input channels and ``num_classes`` logits.

    Args:
        arch: timm architecture name, e.g. ``resnet18``.
        num_classes: number of logits (3: normal, bacterial, viral).
        in_chans: input channels (1: grayscale radiograph).
        pretrained: load ImageNet weights through timm (needs the internet unless
            ``pretrained_file`` is given); timm adapts the RGB stem to one channel by summing.
        pretrained_file: a local timm/PyTorch weights file (``.pth``, ``.bin`` or ``.safetensors``)
            used instead of downloading.
        drop_rate: dropout before the classifier.
        init: ``random`` (timm's initialisation, or the hub/local weights above) or ``imagenet``:
            the ImageNet weights installed with pip (:mod:`deephealth.training.imagenet`, SHA-256
            checked, every tensor's shape checked; EfficientNet-Lite0/1/2 only). The classifier
            starts at zero.
        aa_layer: anti-aliased downsampling in the strided blocks, one of
            :data:`deephealth.training.config.AA_LAYERS` ("" = none; Zhang, ICML 2019). timm places
            it after the depthwise convolution of each stride-2 block, which then runs at stride 1
            (about a quarter more network time for Lite0).

    Returns:
        The model, in training mode, on the CPU. Input ``(N, in_chans, S, S)`` float32,
        output ``(N, num_classes)`` logits.

    Raises:
        PretrainedWeightsUnavailable: if pretrained weights cannot be downloaded or loaded.
        ValueError: if ``arch`` is unknown to timm, ``init`` is not ``random``/``imagenet`` or
            ``aa_layer`` is not in :data:`deephealth.training.config.AA_LAYERS`.
        deephealth.training.imagenet.ImagenetWeightsError: for ``init="imagenet"`` when the weights
            package is missing, the file's SHA-256 differs or a tensor does not fit.
    """
    import timm

    if init not in ("random", "imagenet"):
        raise ValueError(f"init must be 'random' or 'imagenet', got {init!r}")
    if aa_layer not in AA_LAYERS:
        raise ValueError(f"aa_layer must be one of {AA_LAYERS}, got {aa_layer!r}")
    aa_kwargs: dict = {"aa_layer": aa_layer} if aa_layer else {}
    if init == "imagenet":
        weights_source(arch)  # clear error for an unsupported architecture, before building
        model = timm.create_model(arch, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                                  **aa_kwargs)
        missing, unexpected = model.load_state_dict(imagenet_state_dict(arch, model.state_dict()), strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise ValueError(f"ImageNet weights left {missing} missing and {unexpected} unexpected")
        # timm's EfficientNet init draws the classifier from U(+-1/sqrt(num_classes)): with 3 classes
        # and 1280 pretrained features that starts at a loss of ~3. A zero classifier starts at ln 3
        # and lets the pretrained features lead (as in BiT, Kolesnikov et al., 2020).
        head = linear_head(model)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return model

    if arch not in timm.list_models():
        raise ValueError(f"unknown timm architecture {arch!r}")
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate, **aa_kwargs}
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise PretrainedWeightsUnavailable(f"pretrained weights file not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path), "num_classes": 1000}
        pretrained = True
    if pretrained and pretrained_file is None and not _hub_reachable():
        # Fail at once rather than after a minute of download retries.
        raise PretrainedWeightsUnavailable(
            f"cannot download ImageNet weights for {arch!r}: the Hugging Face hub (huggingface.co) is "
            "not reachable from this machine (offline?). Pass a local weights file with "
            "--pretrained-file PATH, or train from scratch without --pretrained."
        )
    try:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except Exception as exc:  # network errors come in many types (OSError, HF hub errors...)
        if aa_layer and isinstance(exc, TypeError):  # e.g. timm's ResNet takes only a layer class
            raise ValueError(f"{arch} does not take aa_layer={aa_layer!r}; EfficientNet-family networks "
                             "(efficientnet_lite0/1/2) do") from exc
        if not pretrained:
            raise
        raise PretrainedWeightsUnavailable(
            f"could not load ImageNet weights for {arch!r} ({type(exc).__name__}: {exc}). "
            "Downloading needs internet access to the Hugging Face hub; offline, pass a local "
            "weights file with --pretrained-file PATH, or train from scratch without --pretrained."
        ) from exc


def _hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout_s`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def linear_head(model: nn.Module) -> nn.Linear:
    """The final linear classifier of a pool+linear model.

    Raises:
        ValueError: if the model's classifier is not a single ``nn.Linear``.
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"class activation maps need a linear classifier, got {type(head).__name__}")
    return head


class CamModel(nn.Module):
    """Wraps a pool+linear classifier to return logits, class activation maps and pooled features.

    ``forward(x)`` with ``x`` of shape ``(N, 1, S, S)`` float32 returns
    ``(logits (N, C), cam (N, C, h, w), features (N, Cf))``; ``cam`` is in logit units,
    ``logits == cam.mean((2, 3))`` (up to dropout, which is off in eval mode); ``features`` is the
    globally pooled penultimate layer the linear head reads (``logits == features @ W.T + b``), used
    by the input gate (:mod:`deephealth.gate`) for its out-of-distribution scores.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = linear_head(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)  # (N, Cf, h, w)
        logits = self.model.forward_head(feats)  # (N, C)
        pooled = feats.mean((2, 3))  # (N, Cf): the global average pool the linear head reads
        w = self.head.weight  # (C, Cf)
        cam = torch.einsum("kc,nchw->nkhw", w, feats) + self.head.bias[None, :, None, None]  # (N, C, h, w)
        return logits, cam, pooled
