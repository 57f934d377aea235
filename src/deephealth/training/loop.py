"""The training loop: ``fit(config)`` trains, selects, calibrates and saves one run.

A run folder ``<out_dir>/<name>/`` receives ``config.yaml`` (the resolved config), ``history.csv``
(per epoch: the head's and the backbone's learning rates ``lr_head`` and ``lr_backbone``, ``lr``
being the head's, and train/validation loss and accuracy), ``curves.png``, ``best.pt`` (the
checkpoint read by ``deephealth export``), ``calibration.json`` and ``summary.json`` (wall time,
best epoch, validation metrics). The checkpoint keeps the weight-EMA model (Polyak averaging) when ``ema_decay > 0``.

At the end of every epoch ``last.pt`` (:data:`LAST_CHECKPOINT`) is replaced atomically with everything
needed to continue the run exactly: :func:`resume_run` (``deephealth train --resume RUN_DIR``)
continues an interrupted run from the next epoch, and a straight run and an interrupted-and-resumed
one end with the same weights and history metrics. ``fit(..., time_limit_s=...)`` stops cleanly
(:class:`TrainingPaused`) after the last epoch the time limit leaves room for.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import platform
import random
import shlex
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deephealth import __version__
from deephealth.calibration import decide, fit_operating_point, fit_temperature, nll, softmax
from deephealth.cpu import describe as cpu_description
from deephealth.labels import CLASS_NAMES
from deephealth.manifest import (  # split_identity: re-exported, checkpoints and distill use it from here
    Record,
    grouped_split,
    scan,
    split_difference,
    split_identity,
    stratified_subset,
)
from deephealth.paths import dataset_dir
from deephealth.training.config import TrainConfig, save_config
from deephealth.training.data import (
    apply_augment,
    benign_variant,
    decode_records,
    sample_augment,
    shift_views,
    stability_views,
    to_input,
)
from deephealth.training.model import build_model

_logger = logging.getLogger(__name__)

#: The resumable checkpoint in a run folder, replaced at the end of every epoch.
LAST_CHECKPOINT = "last.pt"
#: Version of :data:`LAST_CHECKPOINT`'s layout; :func:`resume_run` refuses another.
LAST_FORMAT = 1
#: Settings ``deephealth train --resume`` may change: where the dataset lies (the split identity is
#: checked) and the CPU threads (a different count may change float rounding, not the recipe).
RESUME_OVERRIDABLE = ("data_dir", "num_threads")


class ResumeError(ValueError):
    """A run folder that cannot be resumed; the message is one line for the user."""


class RunFolderInUse(ValueError):
    """A new run was asked for in a folder that already holds a run; the message is one line for the user."""


#: Files whose presence means a run folder already holds a run (:func:`check_new_run_folder`).
RUN_FILES = ("config.yaml", LAST_CHECKPOINT, "best.pt", "summary.json")
#: Of :data:`RUN_FILES`, those a run writes once its first epoch finished (or at its end).
_TRAINED_FILES = (LAST_CHECKPOINT, "best.pt", "summary.json")


def check_new_run_folder(run_dir: str | Path, *, log: bool = True) -> None:
    """Refuse to start a new run in a folder that already holds one.

    A new run written into an existing run's folder would mix its config.yaml and history.csv with
    the old run's best.pt, summary.json and calibration.json (``deephealth export`` would then pair the
    old weights with the new config), and would make an interrupted run unresumable.

    A folder holding only ``config.yaml`` (a run stopped before its first epoch finished: nothing
    to resume, export or mix with) is accepted, so that ``deephealth train --config
    runs/<name>/config.yaml``, which such a stop advises, starts it again; its config.yaml is replaced.

    Args:
        run_dir: the folder the new run would write (``<out_dir>/<name>``); a missing or empty
            folder, or one without any of :data:`RUN_FILES` but ``config.yaml``, is accepted.
        log: say (INFO) when a config.yaml-only folder is accepted.

    Raises:
        RunFolderInUse: the folder holds ``last.pt``, ``best.pt`` or ``summary.json``; the message says
            whether that run finished or can be resumed, and what to do instead.
    """
    run_dir = Path(run_dir)
    present = [f for f in RUN_FILES if (run_dir / f).is_file()]
    if not any(f in present for f in _TRAINED_FILES):
        if present and log:
            _logger.info("%s holds a run stopped before its first epoch finished; starting it again there", run_dir)
        return
    new = f"start a new run with --name <other name> (or delete {shlex.quote(str(run_dir))} first)"
    if (run_dir / "summary.json").is_file() or (run_dir / "best.pt").is_file():
        msg = f"{run_dir} already holds a finished run ({', '.join(present)}); {new}"
    else:
        msg = (f"{run_dir} already holds an interrupted run, resumable from its {LAST_CHECKPOINT}; continue it "
               f"with: {resume_command(run_dir)}, or {new}")
    raise RunFolderInUse(msg)


class Terminated(KeyboardInterrupt):
    """Raised by ``deephealth train``'s SIGTERM handler (what stops a nohup'ed run when its session or
    container ends): :func:`fit` treats it like Ctrl+C, with the reason ``"terminated (SIGTERM)"``."""

    reason = "terminated (SIGTERM)"


class TrainingPaused(Exception):
    """:func:`fit` stopped before its last epoch, with ``last.pt`` holding the last finished one.

    Attributes:
        run_dir: the run folder.
        epochs_done: the epochs finished and saved in ``last.pt`` (0: nothing can be resumed).
        epochs: the run's planned epochs.
        reason: ``"time limit"``, ``"interrupted"`` (Ctrl+C) or ``"terminated (SIGTERM)"`` (:class:`Terminated`).
        command: the command that continues the run (``None`` when ``epochs_done`` is 0).
    """

    def __init__(self, run_dir: Path, epochs_done: int, epochs: int, reason: str) -> None:
        self.run_dir, self.epochs_done, self.epochs, self.reason = run_dir, epochs_done, epochs, reason
        self.command = resume_command(run_dir) if epochs_done else None
        if self.command:
            msg = (f"{reason}: run {run_dir} stopped after epoch {epochs_done} of {epochs}; "
                   f"continue it with: {self.command}")
        else:
            msg = (f"{reason}: run {run_dir} stopped before its first epoch finished; nothing to resume, start it "
                   f"again with: deephealth train --config {shlex.quote(str(run_dir / 'config.yaml'))}")
        super().__init__(msg)


def resume_command(run_dir: Path) -> str:
    """The shell command that continues the run in ``run_dir`` (``deephealth train --resume RUN_DIR``)."""
    return f"deephealth train --resume {shlex.quote(str(run_dir))}"


class Ema:
    """Exponential moving average of a model's parameters and buffers (Polyak & Juditsky, 1992).

    The effective decay ramps up as ``min(decay, (1 + t) / (10 + t))`` over update steps ``t`` so
    the average is not dominated by the random initialisation early on.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` into the average."""
        self.steps += 1
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        ema_state = self.module.state_dict()
        for k, v in model.state_dict().items():
            e = ema_state[k]
            if v.dtype.is_floating_point:
                e.mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                e.copy_(v)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; returns a torch generator for augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Validation metrics used for model selection: accuracy, balanced accuracy, NLL, macro AUROC.

    Args:
        labels: ``(N,)`` int class indices.
        probs: ``(N, C)`` probabilities.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred = probs.argmax(1)
    out = {
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "nll": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()),
    }
    try:
        out["macro_auroc"] = float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))
    except ValueError:
        out["macro_auroc"] = float("nan")
    return out


@torch.no_grad()
def predict_logits(
    model: nn.Module, images_u8: np.ndarray, config: TrainConfig, bf16: bool, batch_size: int = 64
) -> np.ndarray:
    """Logits ``(N, C)`` float32 of the model in eval mode on cached uint8 images ``(N, S, S)``."""
    model.eval()
    device = torch.device(config.device)
    out = []
    pre = config.preprocessing
    for i in range(0, len(images_u8), batch_size):
        x = to_input(torch.from_numpy(images_u8[i : i + batch_size]), pre).to(device)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_loss"] for h in history], label="train (augmented)")
    a1.plot(ep, [h["val_loss"] for h in history], label="validation")
    a1.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    a2.plot(ep, [h["train_accuracy"] for h in history], label="train (augmented)")
    a2.plot(ep, [h["val_accuracy"] for h in history], label="validation")
    a2.plot(ep, [h["val_balanced_accuracy"] for h in history], label="validation, balanced", linestyle="--")
    a2.set(xlabel="epoch", ylabel="3-class accuracy", title="Accuracy")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fit(
    config: TrainConfig, progress: bool = True, time_limit_s: float | None = None, *,
    resume: dict[str, Any] | None = None,
) -> Path:
    """Train one model and write its run folder (``last.pt`` after every epoch, the rest at the end).

    Args:
        config: the resolved training config.
        progress: show a progress bar per epoch (tqdm, on stderr).
        time_limit_s: stop cleanly, with :class:`TrainingPaused`, after the last epoch that fits in
            this many seconds counted from this call (decoding included): after each epoch the run
            stops when the time so far plus its longest epoch in this call would pass the limit.
            At least one epoch runs. ``None``: no limit.
        resume: continue a run: :func:`load_last_checkpoint`'s result for the run folder (use
            :func:`resume_run`, which also checks ``config`` against it). ``None``: a new run.

    Returns:
        The run folder path (holding ``best.pt``).

    Raises:
        RunFolderInUse: a new run's folder (``out_dir/name``) already holds a run
            (:func:`check_new_run_folder`).
        FileNotFoundError: if the dataset folder is missing.
        ValueError: if the train/validation split differs from an ``init_checkpoint``'s or from the
            resumed run's.
        TrainingPaused: stopped by ``time_limit_s`` or by Ctrl+C (KeyboardInterrupt, or
            :class:`Terminated`) before the run's end; ``last.pt`` holds the last finished epoch.
        deephealth.training.model.PretrainedWeightsUnavailable: for ``pretrained`` while offline.
    """
    from tqdm import tqdm

    t_start = time.time()
    if resume is None:  # refused before minutes of decoding, and before anything is written
        name = config.name or time.strftime("%Y%m%d-%H%M%S") + f"-{config.arch}-{config.input_size}"
        check_new_run_folder(Path(config.out_dir) / name)
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    gen = seed_everything(config.seed)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    bf16 = config.use_bf16()
    _logger.info("CPU: %s; bf16 autocast %s (config: %s)", cpu_description(), "on" if bf16 else "off", config.bf16)

    # Model first: a pretrained-weights failure must come before minutes of decoding.
    # (resuming: the weights come from last.pt, so no download, no starting file and no init checkpoint)
    model = build_model(
        config.arch, pretrained=config.pretrained and resume is None,
        pretrained_file=(config.pretrained_file or None) if resume is None else None,
        drop_rate=config.drop_rate, init=config.init if resume is None else "random", aa_layer=config.aa_layer,
    )
    if resume is not None:
        init_from = resume["init_from"]
    else:
        init_from = load_init_checkpoint(model, config) if config.init_checkpoint else None

    data_dir = Path(config.data_dir) if config.data_dir else dataset_dir()
    manifest = scan(data_dir)
    train_recs, val_recs = grouped_split(manifest.split("train"), config.val_fraction, config.split_seed)
    split_id = split_identity(train_recs, val_recs)
    if resume is not None:
        check_same_split({"path": str(resume["path"]), "split": resume["split"],
                          "dataset_dir": resume["dataset_dir"]}, split_id)
    elif init_from is not None:
        check_same_split(init_from, split_id)
        # said only once the split check passed: a refused run never claims to start from it
        _logger.info("starting from %s (run %s, epoch %s, sha256 %s)", init_from["path"], init_from["name"],
                     init_from["epoch"], init_from["sha256"][:12])
    if config.distill_weight > 0:
        from deephealth.training.distill import check_teachers, teacher_dirs

        check_teachers(teacher_dirs(config.distill_teachers), config.preprocessing, config.val_fraction,
                       config.split_seed, split_id)
    # The run folder only once every check passed: a refused run leaves nothing behind.
    if resume is not None:
        run_dir = Path(resume["run_dir"])  # its config.yaml stays the run's
    else:
        run_dir = Path(config.out_dir) / name
        check_new_run_folder(run_dir, log=False)  # again: another process may have started it meanwhile
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    train_recs = stratified_subset(train_recs, config.max_train_images, config.seed)
    val_recs = stratified_subset(val_recs, config.max_train_images // 4 if config.max_train_images else 0, config.seed)
    pre = config.preprocessing
    t0 = time.time()
    x_train = decode_records(train_recs, pre)
    x_val = decode_records(val_recs, pre)
    y_train = np.array([r.label_index for r in train_recs])
    y_val = np.array([r.label_index for r in val_recs])
    _logger.info("decoded %d train + %d validation images at %d px in %.1f s",
                 len(x_train), len(x_val), pre.input_size, time.time() - t0)
    teacher_t, distill_info = None, None
    if config.distill_weight > 0:
        from deephealth.training.distill import teacher_dirs, teacher_targets

        t0 = time.time()
        targets, distill_info = teacher_targets(
            teacher_dirs(config.distill_teachers), x_train, y_train, pre, tau=config.distill_temperature,
            val_fraction=config.val_fraction, split_seed=config.split_seed, split_id=split_id,
            num_threads=config.num_threads or None)
        teacher_t = torch.from_numpy(targets)
        _logger.info("distillation targets from %d teacher(s) in %.1f s", len(distill_info), time.time() - t0)
    x_val_shift = shift_views(x_val)
    x_val_stab = stability_views(x_val)
    qat_info = None
    if config.qat:  # fold BatchNorm, simulate int8, calibrate the activation ranges on clean training films
        from deephealth.training import qat

        model = qat.prepare_qat(model, config.qat_weight_bits)
        t0 = time.time()
        n_cal = min(config.qat_calibration_images, len(x_train))
        cal_idx = np.linspace(0, len(x_train) - 1, n_cal).round().astype(int)
        qat.calibrate(model, (to_input(torch.from_numpy(x_train[cal_idx[i : i + 32]]), pre)
                              for i in range(0, n_cal, 32)))
        if config.qat_observer_steps == 0:
            qat.freeze_activation_observers(model)
        qat_info = {"weight_bits": config.qat_weight_bits, "calibration_images": n_cal,
                    "observer_steps": config.qat_observer_steps, **qat.qat_summary(model)}
        _logger.info("QAT: %s, calibrated in %.1f s", qat_info, time.time() - t0)

    counts = np.bincount(y_train, minlength=len(CLASS_NAMES)).astype(np.float64)
    if config.class_weighting == "balanced":
        weights = counts.sum() / (len(CLASS_NAMES) * np.maximum(counts, 1.0))
    else:
        weights = np.ones(len(CLASS_NAMES))
    class_w = torch.tensor(weights, dtype=torch.float32, device=device)

    model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    recipe = config  # what the checkpoint records
    if config.mode == "linear_probe":
        _linear_probe(model, x_train, y_train, class_w, config, bf16)
        config = config.replace(epochs=1, ema_decay=0.0)  # one evaluation pass below, no training
    head_params = {id(p) for p in model.get_classifier().parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for n_, p in model.named_parameters():
        groups.setdefault((p.ndim <= 1, id(p) in head_params), []).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": 0.0 if no_wd else config.weight_decay,
             "lr": config.lr * (1.0 if is_head else config.backbone_lr_ratio)}
            for (no_wd, is_head), ps in groups.items()
        ],
        lr=config.lr,
    )
    group_is_head = [is_head for _, is_head in groups]  # in the order of opt.param_groups
    steps_per_epoch = max(1, len(x_train) // config.batch_size)
    total = steps_per_epoch * config.epochs
    warm = max(1, int(config.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = Ema(model, config.ema_decay) if config.ema_decay > 0 else None

    history: list[dict[str, Any]] = []
    best_value, best_epoch, best_state = -math.inf, 0, None
    higher_better = config.select_metric != "nll"
    x_train_t = torch.from_numpy(x_train)
    head_only_steps = int(config.head_only_epochs * steps_per_epoch)
    step = 0
    first_epoch = 1
    run_id = uuid.uuid4().hex  # os.urandom: no seeded generator is touched
    segments: list[dict[str, Any]] = []
    segment_machine = {"cpu_capability": cpu_description(), "bf16_autocast": bf16}  # per segment: CPUs may differ
    wall_before = 0.0  # seconds of the earlier segments of a resumed run
    if resume is not None:
        step, best_value, best_epoch, best_state = _restore_state(resume, model, ema, opt, sched, gen)
        history = [dict(row) for row in resume["history"]]
        first_epoch = resume["epoch"] + 1
        run_id, segments, wall_before = resume["run_id"], list(resume["segments"]), float(resume["wall_time_s"])
        _logger.info("resuming %s after epoch %d of %d (step %d, best epoch %d)", run_dir, resume["epoch"],
                     config.epochs, step, best_epoch)
        before = [seg["bf16_autocast"] for seg in segments if "bf16_autocast" in seg]
        if before and before[-1] != bf16:  # bf16: auto on another kind of CPU (AVX-512 with bf16 vs AVX2)
            _logger.warning("this segment runs with bf16 autocast %s, the previous one ran with it %s (%s): the "
                            "run continues, but it is no longer what one uninterrupted run on either CPU gives",
                            "on" if bf16 else "off", "on" if before[-1] else "off",
                            segments[-1].get("cpu_capability", "another CPU"))
    saved_epoch = first_epoch - 1  # the last epoch in last.pt
    segment_epochs: list[float] = []  # seconds of each epoch run in this call
    if first_epoch > 1 and (first_epoch > config.epochs or saved_epoch - best_epoch >= config.patience):
        _logger.info("every epoch of %s is done; finishing the run", run_dir)
        epochs_to_run = range(0)
    else:
        epochs_to_run = range(first_epoch, config.epochs + 1)
    try:  # Ctrl+C: say how to continue from the last finished epoch
        for epoch in epochs_to_run:
            t_ep = time.time()
            model.train()
            perm = torch.randperm(len(x_train), generator=gen)
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", disable=not progress,
                       leave=False, unit="batch")
            for i in bar:
                if config.mode == "linear_probe":
                    break
                frozen = step < head_only_steps  # linear probe first: backbone frozen, BN statistics kept
                # freeze at the start, unfreeze once at the switch (and set either at a resumed run's first step)
                if step in (0, head_only_steps) or (i == 0 and epoch == first_epoch):
                    for p in model.parameters():
                        p.requires_grad_(not frozen or id(p) in head_params)
                model.train(not frozen)
                step += 1
                if config.qat and config.qat_observer_steps and step == config.qat_observer_steps + 1:
                    from deephealth.training import qat

                    _logger.info("QAT: %d activation observers frozen after %d steps",
                                 qat.freeze_activation_observers(model), config.qat_observer_steps)
                idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
                x01 = x_train_t[idx].to(torch.float32).unsqueeze(1) * (1.0 / 255.0)
                params = sample_augment(tuple(x01.shape), gen, config.aug_rotate, config.aug_scale,
                                        config.aug_translate, config.aug_brightness, config.aug_contrast,
                                        config.aug_gamma, zoom_min=config.aug_zoom_min, zoom_max=config.aug_zoom_max,
                                        aspect=config.aug_aspect, occlude=config.aug_occlude, blur=config.aug_blur,
                                        noise=config.aug_noise)
                views = [apply_augment(x01, params)]
                consistency = config.consistency_weight > 0 and not frozen
                if consistency:  # the same augmentation nudged by a benign perturbation
                    views.append(apply_augment(x01, benign_variant(params, gen, tuple(x01.shape),
                                                                   config.consistency_strength)))
                xb = ((torch.cat(views) - pre.mean) / pre.std).to(device)
                if config.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                yb = torch.from_numpy(y_train[idx.numpy()]).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits_all = model(xb)
                logits_all = logits_all.float()
                logits = logits_all[: len(idx)]
                loss = F.cross_entropy(logits_all, yb.repeat(len(views)), weight=class_w,
                                       label_smoothing=config.label_smoothing)
                if consistency:
                    loss = loss + config.consistency_weight * js_divergence(logits, logits_all[len(idx):])
                if teacher_t is not None:  # every view learns its film's soft target
                    loss = loss + config.distill_weight * distill_loss(
                        logits_all, teacher_t[idx].repeat(len(views), 1).to(device), config.distill_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update(model)
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            eval_model = ema.module if ema is not None else model
            val_logits = predict_logits(eval_model, x_val, config, bf16)
            val_probs = softmax(val_logits)
            vm = classification_metrics(y_val, val_probs)
            vm.update(shift_metrics(eval_model, x_val_shift, y_val, vm, config, bf16))
            vm.update(flip_metrics(eval_model, x_val_stab, val_probs.argmax(1), config, bf16))
            row = {
                "epoch": epoch,
                **_lr_columns(opt, group_is_head),
                "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "val_loss": nll(val_logits, y_val) if len(y_val) else float("nan"),
                "val_accuracy": vm["accuracy"],
                "val_balanced_accuracy": vm["balanced_accuracy"],
                "val_macro_auroc": vm["macro_auroc"],
                "val_shift_balanced_accuracy": vm["shift_balanced_accuracy"],
                "val_normal_kept_zoom85": vm["normal_kept_zoom85"],
                "val_normal_kept_mask20": vm["normal_kept_mask20"],
                "val_flip_rate": vm["flip_rate"],
                "val_flip_rate_max": vm["flip_rate_max"],
                "seconds": time.time() - t_ep,
            }
            history.append(row)
            value = vm[config.select_metric] if config.select_metric != "nll" else -vm["nll"]
            improved = value > best_value
            if improved:
                best_value, best_epoch = value, epoch
                best_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
            _logger.info(
                "epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f bal %.3f auroc %.4f | "
                "shift bal %.3f, normals kept zoom85 %.2f mask20 %.2f | flips %.3f (max %.3f) | %.0f s%s",
                epoch, row["train_loss"], row["train_accuracy"], row["val_loss"], row["val_accuracy"],
                row["val_balanced_accuracy"], row["val_macro_auroc"], row["val_shift_balanced_accuracy"],
                row["val_normal_kept_zoom85"], row["val_normal_kept_mask20"], row["val_flip_rate"],
                row["val_flip_rate_max"], row["seconds"], " *" if improved else "",
            )
            _write_history(history, run_dir)
            segment_epochs.append(row["seconds"])
            this_segment = {"first_epoch": first_epoch, "last_epoch": epoch, "wall_time_s": time.time() - t_start,
                            **segment_machine}
            _save_last(run_dir, {
                "format": LAST_FORMAT, "run_id": run_id, "epoch": epoch, "step": step,
                "config": recipe.to_dict(), "split": split_id, "dataset_dir": str(data_dir), "init_from": init_from,
                "model_state": model.state_dict(),
                "ema_state": ema.module.state_dict() if ema is not None else None,
                "ema_steps": ema.steps if ema is not None else 0,
                "optimizer_state": opt.state_dict(), "scheduler_state": sched.state_dict(),
                "best_value": best_value, "best_epoch": best_epoch,
                # the selected weights; None when they are this epoch's (the EMA's, or the model's without EMA)
                "best_state": None if best_epoch == epoch else best_state,
                "history": history, "rng": _rng_states(gen),
                "segments": segments + [this_segment], "wall_time_s": wall_before + this_segment["wall_time_s"],
                "deephealth_version": __version__,
            })
            saved_epoch = epoch
            if epoch - best_epoch >= config.patience:
                _logger.info("early stop: no improvement of %s for %d epochs", config.select_metric, config.patience)
                break
            elapsed = time.time() - t_start
            if (time_limit_s is not None and epoch < config.epochs
                    and elapsed + max(segment_epochs) > time_limit_s):
                paused = TrainingPaused(run_dir, epoch, config.epochs, "time limit")
                _logger.info("%.2f min of the %.3g min time limit used, the longest epoch took %.2f min: %s",
                             elapsed / 60, time_limit_s / 60, max(segment_epochs) / 60, paused)
                raise paused

        assert best_state is not None
        final = build_model(config.arch, drop_rate=config.drop_rate, aa_layer=config.aa_layer)  # weights below
        if config.qat:
            from deephealth.training import qat

            final = qat.prepare_qat(final, config.qat_weight_bits)
        final.load_state_dict(best_state)
        final.to(device)
        if config.channels_last:
            final = final.to(memory_format=torch.channels_last)
        # Calibrate in float32, as the exported ONNX model runs.
        val_logits = predict_logits(final, x_val, config, bf16=False)
        temperature = fit_temperature(val_logits, y_val) if len(y_val) else 1.0
        calib = {
            "method": "temperature scaling (Guo et al., 2017), fitted on the validation split",
            "temperature": temperature,
            "val_nll_before": nll(val_logits, y_val),
            "val_nll_after": nll(val_logits, y_val, temperature),
        }
        val_probs = softmax(val_logits, temperature)
        val_metrics = classification_metrics(y_val, val_probs)
        val_metrics.update(shift_metrics(final, x_val_shift, y_val, val_metrics, config, False, temperature))
        val_metrics.update(flip_metrics(final, x_val_stab, val_probs.argmax(1), config, False))
        operating_point = None
        if config.target_sensitivity > 0 and len(y_val):
            operating_point = fit_operating_point(val_probs, y_val, config.target_sensitivity)
            pred = decide(val_probs, operating_point)
            val_metrics["accuracy_at_operating_point"] = float((pred == y_val).mean())
            calib["operating_point"] = operating_point
            _logger.info("operating point: pneumonia if 1 - P(normal) >= %.4f (validation sensitivity %.3f, "
                         "specificity %.3f)", operating_point["threshold"], operating_point["val_sensitivity"],
                         operating_point["val_specificity"])
        (run_dir / "calibration.json").write_text(json.dumps(calib, indent=2) + "\n")
        ran = first_epoch <= len(history)  # False: this call only finished a run whose epochs were all done
        segments.append({"first_epoch": first_epoch if ran else None, "last_epoch": len(history) if ran else None,
                         "wall_time_s": time.time() - t_start, **segment_machine})
        wall = wall_before + segments[-1]["wall_time_s"]  # every segment of a resumed run
        data_info = {
            "dataset_dir": str(data_dir),
            "source": "Kermany et al., 2018, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0), 224x224 copies",
            "train_split": "official train split, patient-grouped label-stratified split into train/validation",
            "val_fraction": config.val_fraction,
            "split_seed": config.split_seed,
            "n_train": int(len(y_train)),
            "n_val": int(len(y_val)),
            "train_counts": {c: int(n) for c, n in zip(CLASS_NAMES, np.bincount(y_train, minlength=3))},
            "val_counts": {c: int(n) for c, n in zip(CLASS_NAMES, np.bincount(y_val, minlength=3))},
            "n_train_patients": len({r.patient_id for r in train_recs}),
            "n_val_patients": len({r.patient_id for r in val_recs}),
            "split": split_id,
        }
        summary = {
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "select_metric": config.select_metric,
            "val_metrics": val_metrics,
            "temperature": temperature,
            "wall_time_s": wall,
            "resumed": len(segments) > 1,
            "segments": segments,  # one per deephealth train call; an interrupted epoch's time is not counted
            "run_id": run_id,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": str(torch.__version__),
                        "threads": torch.get_num_threads(), "device": config.device,
                        "cpu_capability": cpu_description(), "bf16_autocast": bf16},
            "deephealth_version": __version__,
        }
        if init_from is not None:
            summary["init_checkpoint"] = init_from
        if distill_info is not None:
            summary["distill_teachers"] = distill_info
        if qat_info is not None:
            summary["qat"] = qat_info
        torch.save(
            {
                "model_state": {k: v.cpu() for k, v in final.state_dict().items()},
                "model_args": {"arch": config.arch, "num_classes": len(CLASS_NAMES), "in_chans": 1,
                               **({"aa_layer": config.aa_layer} if config.aa_layer else {})},
                "config": recipe.to_dict(),
                "preprocessing": pre.to_dict(),
                "temperature": temperature,
                "operating_point": operating_point,
                "val_metrics": val_metrics,
                "epoch": best_epoch,
                "data": data_info,
                "history": history,
                "summary": summary,
            },
            run_dir / "best.pt",
        )
        (run_dir / "summary.json").write_text(json.dumps({**summary, "data": data_info}, indent=2) + "\n")
        _plot_curves(history, run_dir / "curves.png")
        _logger.info("run %s: best epoch %d, val %s, T=%.3f, %.1f min", run_dir, best_epoch,
                     {k: round(v, 4) for k, v in val_metrics.items()}, temperature, wall / 60)
    except KeyboardInterrupt as exc:  # Ctrl+C, or SIGTERM through the CLI's handler (Terminated)
        paused = TrainingPaused(run_dir, saved_epoch, config.epochs, getattr(exc, "reason", "interrupted"))
        _logger.warning("%s", paused)
        raise paused from None
    return run_dir


def _save_last(run_dir: Path, state: dict[str, Any]) -> None:
    """Replace ``run_dir/last.pt`` atomically: a temporary file in the same folder, flushed, then renamed.

    An interruption while writing leaves the previous ``last.pt`` intact (and a stale temporary file
    that the next epoch overwrites).
    """
    final = run_dir / LAST_CHECKPOINT
    tmp = run_dir / (LAST_CHECKPOINT + ".partial")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def _rng_states(gen: torch.Generator) -> dict[str, Any]:
    """Every random state a training epoch draws from, in types ``torch.load(weights_only=True)`` reads.

    ``augment`` is the generator of the batch order and augmentation (:func:`seed_everything`);
    ``torch`` the global CPU generator (dropout); ``numpy`` and ``python`` the global ones
    (unused by the loop today, kept so a future use cannot break resuming silently).
    """
    key, mt, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "augment": gen.get_state(), "torch": torch.get_rng_state(),
        "numpy": {"key": key, "state": torch.from_numpy(np.asarray(mt, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_states(states: dict[str, Any], gen: torch.Generator) -> None:
    """Restore :func:`_rng_states`."""
    gen.set_state(states["augment"])
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _restore_state(
    ckpt: dict[str, Any], model: nn.Module, ema: Ema | None, opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator,
) -> tuple[int, float, int, dict[str, torch.Tensor]]:
    """Load a ``last.pt`` into the freshly built training objects, random states last.

    Returns:
        ``(step, best_value, best_epoch, best_state)`` of the checkpoint's epoch.

    Raises:
        ResumeError: if the checkpoint does not fit the objects (another network or optimiser layout).
    """
    try:
        model.load_state_dict(ckpt["model_state"])
        if ema is not None:
            if ckpt["ema_state"] is None:
                raise ValueError("it holds no EMA weights but the run's config has ema_decay > 0")
            ema.module.load_state_dict(ckpt["ema_state"])
            ema.steps = int(ckpt["ema_steps"])
        opt.load_state_dict(ckpt["optimizer_state"])
        sched.load_state_dict(ckpt["scheduler_state"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ResumeError(f"{ckpt['path']}: does not fit this run's network or optimiser "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r})") from exc
    eval_model = ema.module if ema is not None else model
    best_state = ckpt["best_state"]
    if best_state is None:  # the checkpoint's epoch was the selected one
        best_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
    _set_rng_states(ckpt["rng"], gen)
    return int(ckpt["step"]), float(ckpt["best_value"]), int(ckpt["best_epoch"]), best_state


_LAST_KEYS = ("format", "run_id", "epoch", "step", "config", "split", "dataset_dir", "init_from", "model_state",
              "ema_state", "ema_steps", "optimizer_state", "scheduler_state", "best_value", "best_epoch",
              "best_state", "history", "rng", "segments", "wall_time_s")


def load_last_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read and check a run folder's ``last.pt`` (:func:`fit` writes it after every epoch).

    Args:
        run_dir: a run folder written by ``deephealth train``.

    Returns:
        The checkpoint dict (``epoch``, ``config``, states, ``history``...) with ``path`` (the file)
        and ``run_dir`` added.

    Raises:
        ResumeError: the folder does not exist; it has no ``last.pt`` (a run that finished before
            runs could be resumed, or one stopped before its first epoch ended); ``last.pt`` cannot be
            read (truncated, corrupted) or is not a resumable checkpoint of this version.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"{run_dir}: no such run folder")
    path = run_dir / LAST_CHECKPOINT
    if not path.is_file():
        if (run_dir / "summary.json").is_file():
            raise ResumeError(f"{run_dir} has no {LAST_CHECKPOINT}: it finished before deephealth train "
                              "wrote last.pt (or the file was deleted); nothing to resume")
        if (run_dir / "config.yaml").is_file():
            raise ResumeError(f"{run_dir} has no {LAST_CHECKPOINT}: it stopped before its first epoch finished; "
                              f"start it again with: deephealth train --config {shlex.quote(str(run_dir / 'config.yaml'))}")
        raise ResumeError(f"{run_dir} has no {LAST_CHECKPOINT} and no config.yaml: not a deephealth train run folder")
    try:  # plain dicts, lists, numbers, strings and tensors only
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError, RuntimeError, pickle.UnpicklingError...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ResumeError(f"{path}: cannot read it, the file is truncated or corrupted ({type(exc).__name__}"
                          f"{': ' + first if first else ''})") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _LAST_KEYS):
        raise ResumeError(f"{path}: not a resumable checkpoint written by deephealth train")
    if ckpt["format"] != LAST_FORMAT:
        raise ResumeError(f"{path}: checkpoint format {ckpt['format']!r}, this deephealth reads {LAST_FORMAT}")
    return {**ckpt, "path": path, "run_dir": run_dir}


def resume_run(
    run_dir: str | Path, progress: bool = True, time_limit_s: float | None = None, **overrides: Any,
) -> Path:
    """Continue an interrupted run from the epoch after its ``last.pt`` (``deephealth train --resume``).

    The run goes on with its own resolved config (``run_dir/config.yaml``, which must match the one
    in ``last.pt``) and must see the same train/validation split (:func:`check_same_split`). With
    the same number of CPU threads, the result is the one of an uninterrupted run: same weights,
    same history metrics. ``history.csv`` gets the new epochs; ``summary.json`` records the
    segments (``resumed``; ``segments``, one per call that finished an epoch or the run:
    ``first_epoch``, ``last_epoch``, ``wall_time_s`` up to its last saved epoch or the run's end;
    ``wall_time_s`` = their sum). A run whose epochs are all done but that was stopped before
    writing ``best.pt`` is only finished (its last segment has ``first_epoch`` and ``last_epoch``
    ``None``).

    Args:
        run_dir: the run folder.
        progress: show a progress bar per epoch.
        time_limit_s: as in :func:`fit`, for this call.
        **overrides: settings of :data:`RESUME_OVERRIDABLE` only (``None`` values ignored).

    Returns:
        The run folder.

    Raises:
        ResumeError: see :func:`load_last_checkpoint`; also: the run already finished, an override
            outside :data:`RESUME_OVERRIDABLE`, ``config.yaml`` missing or different from ``last.pt``'s.
        ValueError: the dataset gives another train/validation split (:func:`check_same_split`).
        TrainingPaused, FileNotFoundError: as :func:`fit`.
    """
    from deephealth.training.config import load_config

    overrides = {k: v for k, v in overrides.items() if v is not None}
    refused = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
    if refused:
        raise ResumeError(f"a resumed run keeps its settings; cannot change {', '.join(refused)} "
                          f"(allowed: {', '.join(RESUME_OVERRIDABLE)})")
    ckpt = load_last_checkpoint(run_dir)
    run_dir = ckpt["run_dir"]
    cfg_path = run_dir / "config.yaml"
    try:
        config = load_config(cfg_path)
    except (FileNotFoundError, ValueError) as exc:
        raise ResumeError(f"{run_dir}: cannot read the run's config: {exc}") from exc
    saved, here = ckpt["config"], config.to_dict()
    changed = [k for k in sorted(set(saved) | set(here)) if k not in RESUME_OVERRIDABLE and saved.get(k) != here.get(k)]
    if changed:
        k = changed[0]
        raise ResumeError(f"{cfg_path} differs from the config {LAST_CHECKPOINT} was written with ({k}: "
                          f"{here.get(k)!r} there, {saved.get(k)!r} in {LAST_CHECKPOINT}); a run "
                          "continues with the settings it started with")
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("run_id") == ckpt["run_id"]:
            raise ResumeError(f"{run_dir}: the run already finished ({summary.get('epochs_run')} of {config.epochs} "
                              f"epochs, best epoch {summary.get('best_epoch')}); nothing to resume")
    if config.num_threads and overrides.get("num_threads", config.num_threads) != config.num_threads:
        _logger.warning("the run used %d CPU threads, this segment %d: results may differ from an uninterrupted "
                        "run in the last bits", config.num_threads, overrides["num_threads"])
    return fit(config.replace(**overrides), progress=progress, time_limit_s=time_limit_s, resume=ckpt)


def load_init_checkpoint(model: nn.Module, config: TrainConfig) -> dict[str, Any]:
    """Load the weights of a finished run's checkpoint (``config.init_checkpoint``) into ``model``.

    For continued training of a released model (e.g. a low-learning-rate consistency fine-tune):
    the checkpoint must come from the same architecture and the same patient-grouped
    train/validation split (``val_fraction``, ``split_seed``), otherwise films the new run
    validates on could have been trained on by the starting weights.

    Args:
        model: the freshly built network (``config.arch``), modified in place.
        config: the run's config; ``init_checkpoint`` is a ``best.pt`` written by :func:`fit`, or a
            model folder written by ``deephealth export`` (its ``weights.pt``, with the training
            config and split recorded in its ``metadata.json``; :func:`_model_folder_checkpoint`).

    Returns:
        Provenance for the run's summary: ``{"path", "sha256", "epoch", "name"}``.

    Raises:
        FileNotFoundError: if the checkpoint file does not exist, or the folder lacks ``weights.pt``
            or ``metadata.json``.
        ValueError: if it is unreadable or not a training checkpoint, or its architecture or
            train/validation split differs from ``config``'s.
    """
    from deephealth.artifact import sha256_file

    path = Path(config.init_checkpoint)
    if path.is_dir():
        ckpt, path = _model_folder_checkpoint(path)
    elif not path.is_file():
        raise FileNotFoundError(f"init_checkpoint not found: {path}")
    else:
        try:  # the project's own best.pt holds plain dicts, numbers and tensors
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError...
            raise ValueError(f"init_checkpoint: {path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a training checkpoint (best.pt written by deephealth train)")
    prev = ckpt["config"]
    for key in ("arch", "aa_layer", "val_fraction", "split_seed"):
        if prev.get(key, "") != getattr(config, key):
            raise ValueError(f"{path}: {key} is {prev.get(key)!r} there but {getattr(config, key)!r} in this run; "
                             "continued training needs the same architecture and train/validation split")
    if ckpt.get("preprocessing") != config.preprocessing.to_dict():
        _logger.warning("%s was trained with preprocessing %s; this run uses %s", path, ckpt.get("preprocessing"),
                        config.preprocessing.to_dict())
    model.load_state_dict(ckpt["model_state"])
    digest = sha256_file(path)
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    if data.get("split"):
        split = data["split"]
    elif data and not prev.get("max_train_images"):  # checkpoints before the fingerprint: the full split's counts
        split = {"n_val": data.get("n_val"), "val_counts": data.get("val_counts")}
    else:
        split = None
    return {"path": str(path), "sha256": digest, "epoch": ckpt.get("epoch"), "name": prev.get("name"),
            "dataset_dir": data.get("dataset_dir"), "split": split}


def _model_folder_checkpoint(folder: Path) -> tuple[dict[str, Any], Path]:
    """A released model folder (``weights.pt`` + ``metadata.json``) as a training checkpoint dict.

    The folder's ``metadata.json`` records the training run's config (``training.config``), its
    epoch and its split (``data``), which :func:`load_init_checkpoint` checks like a ``best.pt``'s.

    Returns:
        ``(checkpoint, weights path)``: the checkpoint has ``model_state``, ``config``, ``epoch``,
        ``preprocessing`` and ``data``.

    Raises:
        FileNotFoundError: if ``weights.pt`` or ``metadata.json`` is missing.
        ValueError: if either cannot be read or lacks those keys.
    """
    from deephealth.artifact import METADATA_FILE, WEIGHTS_FILE

    weights, meta_path = folder / WEIGHTS_FILE, folder / METADATA_FILE
    for f in (weights, meta_path):
        if not f.is_file():
            raise FileNotFoundError(f"init_checkpoint: {folder} is a folder without {f.name}")
    try:
        meta = json.loads(meta_path.read_text())
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # json.JSONDecodeError, pickle / torch errors
        raise ValueError(f"init_checkpoint: {folder}: cannot read it ({type(exc).__name__}: {exc})") from exc
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    if not isinstance(state, dict) or "model_state" not in state or not isinstance(training.get("config"), dict):
        raise ValueError(f"init_checkpoint: {folder}: weights.pt or metadata.json lacks model_state / training.config")
    return ({"model_state": state["model_state"], "config": training["config"], "epoch": training.get("epoch"),
             "preprocessing": meta.get("preprocessing", state.get("preprocessing")), "data": meta.get("data")},
            weights)


def check_same_split(init_from: dict[str, Any], split_id: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint whose validation films are not this run's.

    ``val_fraction`` and ``split_seed`` (checked by :func:`load_init_checkpoint`) fix the split only
    for the same dataset: another dataset folder (other films, or a subset) would split differently
    and let the starting weights have trained on this run's validation films.

    Args:
        init_from: :func:`load_init_checkpoint`'s result; its ``split`` is the starting run's
            :func:`split_identity` (or, for checkpoints written before it existed, its full split's
            ``n_val`` and ``val_counts``; ``None`` when the run used a subset).
        split_id: this run's :func:`split_identity`.

    Raises:
        ValueError: if the recorded identity differs from this run's.
    """
    prev = init_from.get("split")
    if not prev:
        _logger.warning("%s records no validation split identity; cannot check that its validation films are this "
                        "run's (dataset folder there: %s)", init_from.get("path"), init_from.get("dataset_dir"))
        return
    k = split_difference(prev, split_id)
    if k is not None:
        raise ValueError(
            f"{init_from.get('path')}: its validation split differs from this run's ({k} {prev[k]!r} there, "
            f"{split_id[k]!r} here; dataset folder there: {init_from.get('dataset_dir')}); continued training needs "
            "the same dataset and train/validation split"
        )


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between two batches of predicted distributions (nats).

    ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``, ``p = softmax(logits_a)``;
    symmetric, bounded by ln 2, zero when the two predictions agree (AugMix's consistency loss,
    Hendrycks et al., ICLR 2020, with two views).

    Args:
        logits_a, logits_b: ``(B, C)`` float logits of the same films under two views.

    Returns:
        A scalar tensor (differentiable through both inputs).
    """
    pa, pb = F.softmax(logits_a, dim=1), F.softmax(logits_b, dim=1)
    log_m = torch.log((0.5 * (pa + pb)).clamp_min(1e-8))
    kl_a = (pa * (torch.log(pa.clamp_min(1e-8)) - log_m)).sum(1)
    kl_b = (pb * (torch.log(pb.clamp_min(1e-8)) - log_m)).sum(1)
    return (0.5 * (kl_a + kl_b)).mean()


def distill_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton et al. (2015)'s distillation loss: ``tau^2 * KL(p_teacher || softmax(z / tau))``, batch mean.

    Args:
        student_logits: ``(B, C)`` float raw logits of the student.
        teacher_probs: ``(B, C)`` float teacher probabilities, already softened by ``tau``
            (:func:`deephealth.training.distill.teacher_targets`), rows summing to 1.
        tau: temperature > 0; ``tau^2`` keeps the gradients' scale independent of it.

    Returns:
        A scalar tensor (nats times ``tau^2``), >= 0, zero when ``softmax(z / tau)`` equals the targets.
    """
    log_q = F.log_softmax(student_logits / tau, dim=1)
    return (tau * tau) * F.kl_div(log_q, teacher_probs, reduction="batchmean")


@torch.no_grad()
def flip_metrics(
    model: nn.Module, views: dict[str, torch.Tensor], plain_pred: np.ndarray, config: TrainConfig, bf16: bool
) -> dict[str, float]:
    """Label flips of validation films under :data:`deephealth.training.data.STABILITY_VIEWS`.

    Args:
        views: :func:`deephealth.training.data.stability_views` of the validation films.
        plain_pred: ``(N,)`` arg-max labels of the unaltered films.

    Returns:
        ``flip_rate`` (mean over the views of the share of films whose arg-max label changes),
        ``flip_rate_max`` (the worst view) and ``flip_<view>`` for each view.
    """
    model.eval()
    device = torch.device(config.device)
    pre = config.preprocessing
    out: dict[str, float] = {}
    for name, x01 in views.items():
        preds = []
        for i in range(0, len(x01), 64):
            x = ((x01[i : i + 64] - pre.mean) / pre.std).to(device)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                preds.append(model(x).float().argmax(1).cpu())
        pred = torch.cat(preds).numpy() if preds else np.zeros(0, int)
        out[f"flip_{name}"] = float(np.mean(pred != plain_pred)) if len(pred) else float("nan")
    rates = [v for v in out.values()]
    out["flip_rate"] = float(np.mean(rates)) if rates else float("nan")
    out["flip_rate_max"] = float(np.max(rates)) if rates else float("nan")
    return out


def shift_metrics(
    model: nn.Module, views: dict[str, np.ndarray], y_val: np.ndarray, plain: dict[str, float],
    config: TrainConfig, bf16: bool, temperature: float = 1.0,
) -> dict[str, float]:
    """Field-of-view proxies on validation (issue 9): the same films zoomed in and abdomen-masked.

    Args:
        views: :func:`deephealth.training.data.shift_views` of the validation films.
        plain: :func:`classification_metrics` of the unaltered films (for the mean).

    Returns:
        ``normal_kept_zoom85`` / ``normal_kept_mask20``: share of validation normals still called
        normal in each view; ``balanced_accuracy_zoom85`` / ``_mask20``; and
        ``shift_balanced_accuracy``, the mean balanced accuracy over the plain and both views.
    """
    from sklearn.metrics import balanced_accuracy_score

    out: dict[str, float] = {}
    bals = [plain["balanced_accuracy"]]
    normal = y_val == 0
    for key, name in (("zoom", "zoom85"), ("mask", "mask20")):
        pred = softmax(predict_logits(model, views[key], config, bf16), temperature).argmax(1)
        bal = float(balanced_accuracy_score(y_val, pred)) if len(y_val) else float("nan")
        out[f"balanced_accuracy_{name}"] = bal
        out[f"normal_kept_{name}"] = float(np.mean(pred[normal] == 0)) if normal.any() else float("nan")
        bals.append(bal)
    out["shift_balanced_accuracy"] = float(np.mean(bals))
    return out


@torch.no_grad()
def _linear_probe(
    model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, class_w: torch.Tensor, config: TrainConfig,
    bf16: bool,
) -> None:
    """The 2020 prototype's method: frozen backbone, cached pooled features, only the last layer fitted.

    As TensorFlow's ``retrain.py`` did for the prototype (Inception V3 "bottlenecks"), the backbone
    runs once over the un-augmented training films; a multinomial logistic regression (class-
    weighted cross-entropy, L2 penalty ``weight_decay``, L-BFGS) is fitted on the cached features
    and written into the model's linear classifier. Nothing else changes.
    """
    model.eval()
    feats = []
    pre = config.preprocessing
    for i in range(0, len(x_train), 64):
        x = to_input(torch.from_numpy(x_train[i : i + 64]), pre)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
    f = torch.cat(feats)
    y = torch.from_numpy(y_train)
    head = model.get_classifier()
    w = torch.zeros_like(head.weight, requires_grad=True)
    b = torch.zeros_like(head.bias, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        with torch.enable_grad():
            loss = F.cross_entropy(f @ w.T + b, y, weight=class_w) + config.weight_decay * 0.5 * (w**2).sum() / len(y)
            loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    head.weight.copy_(w.detach())
    head.bias.copy_(b.detach())
    _logger.info("linear probe: %d cached %d-d features, last layer fitted", len(f), f.shape[1])


def _lr_columns(opt: torch.optim.Optimizer, group_is_head: list[bool]) -> dict[str, float]:
    """The learning rates of a ``history.csv`` row, as the optimiser holds them now.

    Args:
        opt: the optimiser; every head group shares one rate, and every backbone group another
            (``lr * backbone_lr_ratio``), both following the same schedule.
        group_is_head: per entry of ``opt.param_groups``, in order, whether it holds the
            classifier head's parameters.

    Returns:
        ``{"lr_head", "lr_backbone", "lr"}`` (floats): the head's and the backbone's current rates
        (``lr_backbone`` NaN when no group is the backbone's); ``lr`` repeats ``lr_head``, the rate
        that ``--lr`` names (before, ``lr`` was whichever group came first: the backbone's).

    Raises:
        ValueError: ``group_is_head`` does not have one flag per parameter group, or no group is
            the head's.
    """
    if len(group_is_head) != len(opt.param_groups):
        raise ValueError(f"need one flag per parameter group: {len(group_is_head)} flags, "
                         f"{len(opt.param_groups)} groups")
    rates = {True: math.nan, False: math.nan}
    for is_head, group in zip(group_is_head, opt.param_groups):
        if math.isnan(rates[is_head]):
            rates[is_head] = float(group["lr"])
    if math.isnan(rates[True]):
        raise ValueError("no head parameter group in the optimiser")
    return {"lr": rates[True], "lr_head": rates[True], "lr_backbone": rates[False]}


def _write_history(history: list[dict[str, Any]], run_dir: Path) -> None:
    with open(run_dir / "history.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
