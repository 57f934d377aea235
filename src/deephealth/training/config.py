"""Training configuration: one frozen dataclass, overridable by a YAML file and command-line flags.

Precedence: dataclass defaults < YAML file (``--config``) < flags (``--epochs 30``). The resolved
config is written to ``<run>/config.yaml`` and stored in the checkpoint, so ``deephealth train
--config <run>/config.yaml`` reproduces a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from deephealth.preprocessing import PreprocessConfig

#: Anti-aliasing layers timm can put in the strided blocks (``aa_layer``): "" = none (plain strided
#: convolutions), ``blurpc``: a 3x3 binomial blur with zero padding before subsampling, ``blur``: the
#: same with reflect padding (BlurPool, Zhang, "Making Convolutional Networks Shift-Invariant Again",
#: ICML 2019). The blur has no weights, so ImageNet weights load unchanged.
AA_LAYERS = ("", "blurpc", "blur")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (units in the field comments).

    Data: ``data_dir`` (Kermany layout; empty = ``paths.dataset_dir()``), ``val_fraction`` of train
    patients held out per class, ``split_seed``. Model: timm ``arch``, ``drop_rate``,
    ``aa_layer`` (anti-aliased downsampling, :data:`AA_LAYERS`),
    ``pretrained`` (ImageNet through timm, online only) or ``pretrained_file`` (local weights);
    ``init_checkpoint``: continue from a finished run's ``best.pt`` or a model folder with
    ``weights.pt`` and ``metadata.json`` (same ``arch``, same train/validation split, checked; e.g. a low-learning-rate consistency fine-tune of a release).
    Input: ``input_size`` (px), ``interpolation``, ``mean``/``std``, ``crop_border`` (the
    preprocessing contract, :class:`deephealth.preprocessing.PreprocessConfig`).
    Optimisation: AdamW with ``lr`` (peak), ``weight_decay``, linear warm-up for ``warmup_epochs``
    then cosine decay to ``lr * min_lr_ratio``, ``batch_size``, ``epochs`` (max),
    ``label_smoothing``, class-weighted cross-entropy (``class_weighting``: ``balanced`` or
    ``none``), weight EMA with ``ema_decay`` per step (0 = off), early stopping after
    ``patience`` epochs without improvement of ``select_metric`` on validation
    (``shift_balanced_accuracy`` = mean balanced accuracy over the validation films as they are,
    centre-zoomed to 85 % of each side, and with the bottom 20 % masked: the field-of-view proxies
    of issue 9). ``head_only_epochs``: first train only the classifier on a frozen backbone
    (linear probe, then fine-tune: Kumar et al., ICLR 2022); ``backbone_lr_ratio`` scales the
    backbone's learning rate. ``target_sensitivity``: the shipped operating point, the pneumonia
    threshold that reaches this sensitivity on validation (0 = arg-max).
    Augmentation (chest-film safe, no horizontal flip): rotation up to ``aug_rotate`` degrees,
    scale in ``1 +- aug_scale``, translation up to ``aug_translate`` (fraction of the side),
    brightness +- ``aug_brightness``, contrast ``1 +- aug_contrast``, gamma ``exp(+- aug_gamma)``.
    Field-of-view augmentation: zoom log-uniform in [``aug_zoom_min``, ``aug_zoom_max``] (both 0 =
    ``1 +- aug_scale``; > 1 zooms in, like a random resized crop), aspect ratio ``exp(+- aug_aspect)``,
    crop position anywhere inside the film, bottom / top bands filled with the film's mean with
    probability ``aug_occlude``; blur / unsharp-mask mix up to ``aug_blur``, Gaussian noise up to
    ``aug_noise`` (std, [0, 1] intensity units).
    Consistency training (issue 16, stability): with ``consistency_weight`` > 0 every film is seen
    twice per step, under one random augmentation and under the same augmentation nudged by a
    benign perturbation (:func:`deephealth.training.data.benign_variant`, maxima scaled by
    ``consistency_strength``), and the loss adds ``consistency_weight`` times the Jensen-Shannon
    divergence between the two predicted distributions (as in AugMix, Hendrycks et al., ICLR 2020).
    Distillation (issue 16): with ``distill_weight`` > 0 the loss adds ``distill_weight * tau^2``
    times the KL divergence from the averaged softened predictions of the released models in
    ``distill_teachers`` (comma-separated model folders; same preprocessing and split, checked),
    ``tau = distill_temperature`` (Hinton et al., 2015; :mod:`deephealth.training.distill`).
    Quantisation-aware training (issue 16): with ``qat`` the network is trained with BatchNorm folded
    and int8 rounding simulated as ONNX Runtime runs it (:mod:`deephealth.training.qat`):
    per-channel symmetric weights of ``qat_weight_bits`` bits (7 avoids the u8 x s8 saturation of
    AVX2 CPUs without VNNI; 8 for VNNI-only serving), uint8 activations whose ranges are calibrated
    on ``qat_calibration_images`` un-augmented training films and frozen after
    ``qat_observer_steps`` training steps (0 = at once). ``deephealth export`` then writes a QDQ
    int8 graph. Normally used with ``init_checkpoint`` (a run's ``best.pt`` or a model folder).
    Runtime: ``device`` (cpu|cuda), ``bf16`` autocast (``auto``: only where the CPU has native bf16
    or on CUDA, ``true``, ``false``), ``channels_last``, ``num_threads`` (0 = torch
    default), ``seed``, ``max_train_images`` (0 = all; for smoke tests), ``out_dir``, ``name``.
    """

    data_dir: str = ""
    val_fraction: float = 0.1
    split_seed: int = 0
    arch: str = "resnet18"
    drop_rate: float = 0.2
    aa_layer: str = ""
    pretrained: bool = False
    pretrained_file: str = ""
    init: str = "random"
    init_checkpoint: str = ""
    mode: str = "finetune"
    input_size: int = 192
    interpolation: str = "bilinear"
    mean: float = 0.5
    std: float = 0.25
    crop_border: bool = True
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    class_weighting: str = "balanced"
    ema_decay: float = 0.998
    patience: int = 8
    select_metric: str = "balanced_accuracy"
    head_only_epochs: float = 0.0
    backbone_lr_ratio: float = 1.0
    target_sensitivity: float = 0.0
    aug_rotate: float = 10.0
    aug_scale: float = 0.10
    aug_translate: float = 0.06
    aug_brightness: float = 0.10
    aug_contrast: float = 0.20
    aug_gamma: float = 0.25
    aug_zoom_min: float = 0.0
    aug_zoom_max: float = 0.0
    aug_aspect: float = 0.0
    aug_occlude: float = 0.0
    aug_blur: float = 0.0
    aug_noise: float = 0.0
    consistency_weight: float = 0.0
    consistency_strength: float = 1.0
    distill_teachers: str = ""
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    qat: bool = False
    qat_weight_bits: int = 7
    qat_calibration_images: int = 256
    qat_observer_steps: int = 0
    device: str = "cpu"
    bf16: str = "auto"
    channels_last: bool = True
    num_threads: int = 0
    seed: int = 0
    max_train_images: int = 0
    out_dir: str = "runs"
    name: str = ""

    def __post_init__(self) -> None:
        if self.class_weighting not in ("balanced", "none"):
            raise ValueError(f"class_weighting must be 'balanced' or 'none', got {self.class_weighting!r}")
        if self.init not in ("random", "imagenet"):
            raise ValueError(f"init must be 'random' or 'imagenet', got {self.init!r}")
        if self.aa_layer not in AA_LAYERS:
            raise ValueError(f"aa_layer must be one of {AA_LAYERS}, got {self.aa_layer!r}")
        if self.mode not in ("finetune", "linear_probe"):
            raise ValueError(f"mode must be 'finetune' or 'linear_probe', got {self.mode!r}")
        if self.bf16 not in ("auto", "true", "false"):
            raise ValueError(f"bf16 must be 'auto', 'true' or 'false', got {self.bf16!r}")
        if not 0.0 <= self.target_sensitivity < 1.0:
            raise ValueError(f"target_sensitivity must be in [0, 1), got {self.target_sensitivity!r}")
        if (self.aug_zoom_min > 0) != (self.aug_zoom_max > 0) or self.aug_zoom_min > self.aug_zoom_max:
            raise ValueError("aug_zoom_min and aug_zoom_max must both be 0 or 0 < min <= max")
        if self.select_metric not in ("balanced_accuracy", "accuracy", "nll", "macro_auroc",
                                      "shift_balanced_accuracy"):
            raise ValueError(f"unknown select_metric {self.select_metric!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.consistency_weight < 0 or self.consistency_strength < 0:
            raise ValueError("consistency_weight and consistency_strength must be >= 0")
        if self.distill_weight < 0 or not self.distill_temperature > 0:
            raise ValueError("distill_weight must be >= 0 and distill_temperature > 0")
        if (self.distill_weight > 0) != bool(self.distill_teachers.strip()):
            raise ValueError("distill_weight > 0 and distill_teachers (model folders) go together")
        if self.qat_weight_bits not in (7, 8):
            raise ValueError(f"qat_weight_bits must be 7 or 8, got {self.qat_weight_bits!r}")
        if self.qat and (self.qat_calibration_images < 1 or self.qat_observer_steps < 0):
            raise ValueError("qat needs qat_calibration_images >= 1 and qat_observer_steps >= 0")
        if self.qat and self.mode != "finetune":
            raise ValueError("qat needs mode 'finetune'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        self.preprocessing  # validates input_size, interpolation, std

    def use_bf16(self) -> bool:
        """Whether to run bf16 autocast: ``bf16`` resolved for this machine.

        ``auto`` is on for CUDA and for CPUs with native bf16 arithmetic (AVX512_BF16 or AMX):
        on an AVX2-only CPU bf16 autocast is emulated and 10-15x slower than float32.
        """
        if self.bf16 != "auto":
            return self.bf16 == "true"
        if self.device == "cuda":
            return True
        from deephealth.cpu import has_native_bf16

        return has_native_bf16()

    @property
    def preprocessing(self) -> PreprocessConfig:
        """The preprocessing contract this run trains with (saved in the model's metadata)."""
        return PreprocessConfig(self.input_size, self.interpolation, self.mean, self.std, self.crop_border)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def field_types() -> dict[str, type]:
    """Name -> Python type of each :class:`TrainConfig` field (from its default)."""
    defaults = TrainConfig()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(TrainConfig)}


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file ``path`` (if given), then ``overrides`` (``None`` values ignored).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown key or a value of the wrong type.
    """
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: expected a mapping of config keys")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    types = field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
    if isinstance(values.get("bf16"), bool):  # YAML true/false (configs of 0.1.0)
        values["bf16"] = "true" if values["bf16"] else "false"
    for k, v in values.items():
        t = types[k]
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            values[k] = float(v)
        elif not isinstance(v, t) or (t is int and isinstance(v, bool)):
            raise ValueError(f"config key {k!r} must be {t.__name__}, got {v!r}")
    return TrainConfig(**values)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
