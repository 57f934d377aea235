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


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (units in the field comments).

    Data: ``data_dir`` (Kermany layout; empty = ``paths.dataset_dir()``), ``val_fraction`` of train
    patients held out per class, ``split_seed``. Model: timm ``arch``, ``drop_rate``,
    ``pretrained`` (ImageNet through timm, online only) or ``pretrained_file`` (local weights).
    Input: ``input_size`` (px), ``interpolation``, ``mean``/``std`` (the preprocessing contract).
    Optimisation: AdamW with ``lr`` (peak), ``weight_decay``, linear warm-up for ``warmup_epochs``
    then cosine decay to ``lr * min_lr_ratio``, ``batch_size``, ``epochs`` (max),
    ``label_smoothing``, class-weighted cross-entropy (``class_weighting``: ``balanced`` or
    ``none``), weight EMA with ``ema_decay`` per step (0 = off), early stopping after
    ``patience`` epochs without improvement of ``select_metric`` on validation.
    Augmentation (chest-film safe, no horizontal flip): rotation up to ``aug_rotate`` degrees,
    scale in ``1 +- aug_scale``, translation up to ``aug_translate`` (fraction of the side),
    brightness +- ``aug_brightness``, contrast ``1 +- aug_contrast``, gamma ``exp(+- aug_gamma)``.
    Runtime: ``device`` (cpu|cuda), ``bf16`` autocast, ``channels_last``, ``num_threads`` (0 = torch
    default), ``seed``, ``max_train_images`` (0 = all; for smoke tests), ``out_dir``, ``name``.
    """

    data_dir: str = ""
    val_fraction: float = 0.1
    split_seed: int = 0
    arch: str = "resnet18"
    drop_rate: float = 0.2
    pretrained: bool = False
    pretrained_file: str = ""
    input_size: int = 192
    interpolation: str = "bilinear"
    mean: float = 0.5
    std: float = 0.25
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
    aug_rotate: float = 10.0
    aug_scale: float = 0.10
    aug_translate: float = 0.06
    aug_brightness: float = 0.10
    aug_contrast: float = 0.20
    aug_gamma: float = 0.25
    device: str = "cpu"
    bf16: bool = True
    channels_last: bool = True
    num_threads: int = 0
    seed: int = 0
    max_train_images: int = 0
    out_dir: str = "runs"
    name: str = ""

    def __post_init__(self) -> None:
        if self.class_weighting not in ("balanced", "none"):
            raise ValueError(f"class_weighting must be 'balanced' or 'none', got {self.class_weighting!r}")
        if self.select_metric not in ("balanced_accuracy", "accuracy", "nll", "macro_auroc"):
            raise ValueError(f"unknown select_metric {self.select_metric!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        self.preprocessing  # validates input_size, interpolation, std

    @property
    def preprocessing(self) -> PreprocessConfig:
        """The preprocessing contract this run trains with (saved in the model's metadata)."""
        return PreprocessConfig(self.input_size, self.interpolation, self.mean, self.std)

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
