"""Export a trained network to the model artifact: ``model.onnx`` + ``metadata.json`` + ``model_summary.txt``.

This module runs the export's jobs in order; each job lives in its own module (issue 18):
:mod:`~deephealth.training.model_summary` (the summary), :mod:`~deephealth.training.onnx_graph`
(names, opset, ``torch.onnx.export``), :mod:`~deephealth.training.parity` (PyTorch vs ONNX Runtime),
:mod:`~deephealth.training.quantize` (int8), :mod:`~deephealth.training.evidence` (the evidence
map) and :mod:`~deephealth.training.gate_fit` (the input gate). Their public names are re-exported
here.

The ONNX graph is :class:`deephealth.training.model.CamModel` exported with PyTorch's TorchScript
ONNX exporter (``torch.onnx.export(..., dynamo=False)``, one self-contained file with the weights
embedded) and a dynamic batch axis:

- input ``image``: ``(N, 1, S, S)`` float32, the stacked output of
  :func:`deephealth.preprocessing.preprocess`;
- output ``logits``: ``(N, 3)`` float32 raw logits (calibrated probabilities are
  ``softmax(logits / temperature)``, temperature scaling, Guo et al., 2017);
- output ``cam``: ``(N, 3, h, w)`` float32 class activation maps in logit units (Zhou et al., 2016),
  ``logits == cam.mean(axis=(2, 3))``;
- output ``features``: ``(N, Cf)`` float32 globally pooled penultimate features (what the linear
  head reads), used by the input gate (:mod:`deephealth.gate`).

After the checks, the input gate is fitted on the exported graph's own outputs
(:func:`deephealth.training.gate_fit.fit_gate`, ``export_run`` only, when the dataset is present):
``gate.npz`` beside ``model.onnx``, thresholds and false-alarm rate under ``gate`` in
``metadata.json``.

Every export is checked before ``metadata.json`` is written (the folder is only complete when it
passes): ``onnx.checker.check_model(full_check=True)``, then PyTorch vs ONNX Runtime agreement on
real dataset images (plus random inputs) within :data:`LOGITS_ATOL` / :data:`CAM_ATOL` (absolute)
and :data:`RTOL` (relative), at batch size 1 and N, and the CAM contract
``logits == mean_hw(cam)``. The figures are recorded under ``export_check`` in ``metadata.json``.

Optionally (``quantize=True``, ``deephealth export --quantize``) the checked float32 graph is
quantized to int8 with ONNX Runtime's static quantization (about 3x less CPU time per image on
CPUs with AVX-512 VNNI); the int8 graph is then compared with the float32 network (calibrated
probabilities within :data:`QUANT_PROB_ATOL`) and recorded under ``export_check.int8``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deephealth import __version__
from deephealth.artifact import ONNX_FILE, sha256_file, write_metadata
from deephealth.gate import GATE_FILE
from deephealth.labels import CLASS_NAMES, INTENDED_USE
from deephealth.manifest import run_split
from deephealth.paths import DEFAULT_MODEL_NAME, portable_path
from deephealth.preprocessing import PreprocessConfig
from deephealth.artifact import WEIGHTS_FILE
from deephealth.training.model import CamModel, architecture_args, build_model
from deephealth.training.model_summary import format_summary, model_summary
from deephealth.training.onnx_graph import (
    CAM_NAME,
    FEATURES_NAME,
    INPUT_NAME,
    LOGITS_NAME,
    OPSET,
    ExportError,
    export_onnx,
)
from deephealth.training.parity import (  # noqa: F401  (tolerances re-exported)
    CAM_ATOL,
    LOGITS_ATOL,
    RTOL,
    check_export,
    dataset_parity_inputs,
)
from deephealth.review_band_fit import fit_run_review_band  # needs no PyTorch; also re-exported here
from deephealth.training.quantize import (  # noqa: F401  (constants re-exported)
    QUANT_CALIBRATION_IMAGES,
    QUANT_PROB_ATOL,
    calibration_inputs,
    check_quantized,
    quantize_int8,
)

_logger = logging.getLogger(__name__)

SUMMARY_FILE = "model_summary.txt"
MAX_ONNX_BYTES = 50 * 1024 * 1024
"""Size above which an export is logged as too large to ship in the package."""


def export_model(
    model: nn.Module,
    preprocessing: PreprocessConfig,
    out_dir: str | Path,
    *,
    name: str = DEFAULT_MODEL_NAME,
    version: str = __version__,
    temperature: float = 1.0,
    class_names: Sequence[str] = CLASS_NAMES,
    metadata_extra: dict[str, Any] | None = None,
    parity_inputs: np.ndarray | None = None,
    parity_names: Sequence[str] | None = None,
    opset: int = OPSET,
    quantize: bool = False,
    calibration: np.ndarray | None = None,
    model_args: dict[str, Any] | None = None,
    evidence: bool = True,
) -> Path:
    """Export a pool+linear classifier to a checked model folder.

    Writes ``model.onnx``, ``model_summary.txt`` and, once the checks pass, ``metadata.json``
    (keys documented in :mod:`deephealth.artifact`) into ``out_dir``; existing files of those
    names are replaced, other files are left alone. Nothing is written if the checks fail.

    Args:
        model: the plain classifier (timm pool+linear model, ``forward_features``/``forward_head``/
            ``get_classifier``), taking ``(N, 1, S, S)`` float32 and returning ``(N, C)`` logits.
        preprocessing: the preprocessing contract the model was trained with.
        out_dir: model folder to write (created if missing).
        name: model name.
        version: model version string.
        temperature: calibration temperature (> 0) fitted on validation.
        class_names: class names in output order; ``len`` must equal the number of logits.
        metadata_extra: extra ``metadata.json`` keys (``architecture``, ``training``, ``data``,
            ``validation_metrics``...); they cannot override the keys this function sets.
        parity_inputs: ``(n, 1, S, S)`` float32 real inputs for the PyTorch vs ONNX Runtime check;
            default :func:`dataset_parity_inputs` (8 dataset images, none if there is no dataset).
        parity_names: names of ``parity_inputs`` for the report.
        opset: ONNX opset version.
        quantize: ship an int8 model (:func:`quantize_int8`; about 3x faster on CPUs with
            AVX-512 VNNI, at a small cost in fidelity, checked by :func:`check_quantized` and
            recorded under ``onnx.quantization`` and ``export_check.int8``). The float32 export
            is still checked against PyTorch first.
        calibration: ``(m, 1, S, S)`` float32 inputs for int8 calibration; default
            :func:`calibration_inputs` (64 training images).
        model_args: ``build_model`` arguments (``arch``, ``num_classes``, ``in_chans``, ``aa_layer``); when given,
            the PyTorch weights are shipped beside the ONNX file as :data:`WEIGHTS_FILE` (float32
            state dict), because ONNX Runtime folds BatchNorm into the convolutions and
            ``deephealth adapt`` needs the BatchNorm layers to re-estimate their statistics.
        evidence: add the evidence map (:mod:`deephealth.training.evidence`: the same weights
            dilated to output stride 16, an extra ``evidence`` output computed only on request,
            shipped outputs checked bit-identical) to a float32 export with ``model_args``; skipped
            for an int8 export, quantised or quantisation-aware trained (logged at INFO; ``deephealth
            export`` prints the reason), and with a warning for an architecture timm cannot dilate.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: if the model has the wrong number of outputs, the temperature is not
            positive, or the ONNX checker or parity check fails.
        ValueError: if the model's classifier is not a single linear layer (from :class:`CamModel`).
    """
    if not temperature > 0:
        raise ExportError(f"temperature must be > 0, got {temperature!r}")
    from deephealth.training.qat import is_qat_model

    qat_model = is_qat_model(model)
    if qat_model and quantize:
        raise ExportError("a quantisation-aware trained model is exported as int8 already; drop --quantize")
    out_dir = Path(out_dir)
    size = preprocessing.input_size
    model = model.eval()
    cam_model = CamModel(model).eval()
    with torch.no_grad():
        logits, cam, _ = cam_model(torch.zeros(1, 1, size, size))
    if logits.shape[1] != len(class_names):
        raise ExportError(f"model has {logits.shape[1]} outputs but {len(class_names)} class names")

    summary = model_summary(model, size)
    if parity_inputs is None:
        parity_inputs, parity_names = dataset_parity_inputs(preprocessing)
        if not len(parity_inputs):
            _logger.warning("no dataset found for the parity check; using random inputs only")
    parity_inputs = np.asarray(parity_inputs, dtype=np.float32)
    if parity_inputs.size == 0:
        parity_inputs = np.zeros((0, 1, size, size), np.float32)

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp_onnx = Path(tmp) / ONNX_FILE
        quant_meta = None
        if qat_model:  # the fake-quantised network becomes a QDQ graph that ONNX Runtime runs in int8
            from deephealth.training.qat import check_qdq, export_qdq_onnx

            counts = export_qdq_onnx(model, tmp_onnx, size, opset)
            check = {"int8": check_qdq(model, tmp_onnx, parity_inputs, temperature)}
            quant_meta = {
                "type": "int8 quantisation-aware training, QDQ, per-channel symmetric weights, uint8 activations",
                "tool": "deephealth.training.qat (torch.ao.quantization fake quantisers, torch.onnx.export)",
                "weight_range": qat_weight_range(model),
                "nodes": counts,
            }
        else:
            export_onnx(cam_model, tmp_onnx, size, opset)
            check = check_export(cam_model, tmp_onnx, parity_inputs, parity_names or [])
        if quantize:
            int8_onnx = Path(tmp) / "model.int8.onnx"
            calib = calibration if calibration is not None else calibration_inputs(preprocessing)
            quant_meta = quantize_int8(tmp_onnx, int8_onnx, np.asarray(calib, dtype=np.float32))
            # export_check describes the float32 graph vs PyTorch; export_check.int8 the shipped int8 graph
            check["int8"] = check_quantized(cam_model, int8_onnx, parity_inputs, temperature)
            int8_onnx.replace(tmp_onnx)
        evidence_meta = None
        if evidence and not quantize and model_args is not None:
            from deephealth.training.evidence import EvidenceError, add_evidence_to_onnx

            try:
                evidence_meta = add_evidence_to_onnx(
                    tmp_onnx, dict(model_args), model.state_dict(), model, parity_inputs,
                    {"input": INPUT_NAME, "logits": LOGITS_NAME, "cam": CAM_NAME, "features": FEATURES_NAME},
                    opset=opset)
            except EvidenceError as exc:
                _logger.warning("no evidence map: %s", exc)
        elif evidence:
            _logger.info("no evidence map: it needs a float32 export with model_args")
        n_bytes = tmp_onnx.stat().st_size
        if n_bytes > MAX_ONNX_BYTES:
            _logger.warning("%s is %.1f MB, more than the %.0f MB the package can ship",
                            ONNX_FILE, n_bytes / 1e6, MAX_ONNX_BYTES / 1e6)
        digest = sha256_file(tmp_onnx)
        shutil.move(str(tmp_onnx), out_dir / ONNX_FILE)
        (out_dir / GATE_FILE).unlink(missing_ok=True)  # a gate fitted for a previous model no longer applies

    weights_meta = None
    if model_args is not None:
        weights_path = out_dir / WEIGHTS_FILE
        torch.save({"model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "model_args": dict(model_args), "preprocessing": preprocessing.to_dict()}, weights_path)
        weights_meta = {"file": WEIGHTS_FILE, "sha256": sha256_file(weights_path),
                        "bytes": int(weights_path.stat().st_size),
                        "purpose": "PyTorch weights (float32 state dict) for deephealth adapt; inference uses the ONNX file"}

    c, h, w = int(cam.shape[1]), int(cam.shape[2]), int(cam.shape[3])
    summary_meta = {
        "parameters": summary["parameters"],
        "trainable_parameters": summary["trainable_parameters"],
        "input_shape": ["N", 1, size, size],
        "output_shapes": {LOGITS_NAME: ["N", c], CAM_NAME: ["N", c, h, w],
                          FEATURES_NAME: ["N", int(summary["feature_shape"][0])]},
        "feature_shape": ["N", *summary["feature_shape"]],
        "layers": summary["layers"],
        "num_leaf_layers": len(summary["leaf_layers"]),
        "summary_file": SUMMARY_FILE,
    }
    title = f"{name} {version}: {type(model).__name__}"
    (out_dir / SUMMARY_FILE).write_text(format_summary(summary, title, size, c))

    metadata: dict[str, Any] = {
        "name": name,
        "version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "deephealth_version": __version__,
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "temperature": float(temperature),
        "onnx": {
            "file": ONNX_FILE,
            "sha256": digest,
            "bytes": int(n_bytes),
            "input": INPUT_NAME,
            "logits": LOGITS_NAME,
            "cam": CAM_NAME,
            "features": FEATURES_NAME,
            "opset": int(opset),
            "dynamic_axes": {INPUT_NAME: {"0": "batch"}, LOGITS_NAME: {"0": "batch"}, CAM_NAME: {"0": "batch"},
                             FEATURES_NAME: {"0": "batch"}},
            "exporter": f"torch.onnx.export (TorchScript, dynamo=False), torch {torch.__version__}",
            "precision": "int8" if quantize or qat_model else "float32",
        },
        "intended_use": INTENDED_USE,
    }
    for key, value in (metadata_extra or {}).items():
        if key in metadata:
            _logger.warning("metadata_extra key %r ignored: set by the exporter", key)
            continue
        metadata[key] = value
    if quant_meta is not None:
        metadata["onnx"]["quantization"] = quant_meta
    if evidence_meta is not None:
        from deephealth.training.evidence import EVIDENCE_FLAG, EVIDENCE_NAME

        metadata["onnx"].update({EVIDENCE_NAME: EVIDENCE_NAME, "evidence_flag": EVIDENCE_FLAG})
        metadata["onnx"]["dynamic_axes"][EVIDENCE_NAME] = {"0": "batch"}
        metadata["evidence"] = evidence_meta
    if weights_meta is not None:
        metadata["weights"] = weights_meta
    metadata["summary"] = summary_meta
    metadata["export_check"] = check
    write_metadata(out_dir, metadata)
    _logger.info("exported %s %s to %s (sha256 %s..., %.1f MB)", name, version, out_dir, digest[:12], n_bytes / 1e6)
    return out_dir


def qat_weight_range(model: nn.Module) -> list[int] | None:
    """``[quant_min, quant_max]`` of a fake-quantised model's weights (``None`` for a float model)."""
    from deephealth.training.qat import qat_summary

    return qat_summary(model)["weight_range"]


# ------------------------------------------------------------------------------------ from a checkpoint

def run_version(run_name: str) -> str:
    """The default version of an exported run: ``<package version>+<run name>`` (a PEP 440 local label:
    each run of characters other than letters and digits becomes one dot), e.g. ``0.3.0+lite0.aa``."""
    label = ".".join(p for p in re.split(r"[^A-Za-z0-9]+", run_name) if p) or "run"
    return f"{__version__}+{label}"


_REQUIRED_KEYS = ("model_state", "model_args", "preprocessing", "temperature")


def _unfinished_run(run_dir: Path, last: dict[str, Any] | None) -> ExportError:
    """The error for a run that has not finished: it has ``last.pt`` (the resumable checkpoint written
    after every epoch) but not yet ``best.pt``, which only the run's end writes.

    Args:
        run_dir: the run folder.
        last: its ``last.pt``'s content when already loaded; ``None`` to read it here (a file that
            cannot be read only loses the epoch numbers from the message).
    """
    import shlex

    if last is None:
        try:
            last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        except Exception:  # truncated or corrupted: --resume says so in its own words
            last = None
    where = ""
    if isinstance(last, dict) and isinstance(last.get("config"), dict):
        where = f" (stopped after epoch {last.get('epoch')} of {last['config'].get('epochs')}, from last.pt)"
    return ExportError(f"the run in {run_dir} has not finished{where}: best.pt, calibration.json and summary.json "
                       f"are written when it ends; finish it first with: "
                       f"deephealth train --resume {shlex.quote(str(run_dir))}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint (``best.pt``) written by the training loop.

    Tries ``torch.load(weights_only=True)`` first (plain dicts, lists, numbers and tensors) and
    falls back to a full unpickle, which is acceptable for the project's own checkpoints.

    Raises:
        ExportError: if the file is missing, unreadable, or lacks a required key
            (``model_state``, ``model_args``, ``preprocessing``, ``temperature``); for a run that
            has not finished (a missing ``best.pt`` beside a ``last.pt``, or a ``last.pt`` given), the
            message says after which epoch it stopped and to finish it with ``deephealth train --resume``.
    """
    path = Path(path)
    if not path.is_file():
        if path.name == "best.pt" and (path.parent / "last.pt").is_file():
            raise _unfinished_run(path.parent, None)
        raise ExportError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for non-plain objects
        _logger.info("%s: weights_only load failed (%s); loading with full unpickling", path, exc)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ExportError(f"{path}: cannot load checkpoint ({type(exc2).__name__}: {exc2})") from exc2
    if not isinstance(ckpt, dict):
        raise ExportError(f"{path}: not a training checkpoint (a {type(ckpt).__name__}, expected a dict)")
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing and "format" in ckpt and "step" in ckpt and isinstance(ckpt.get("config"), dict):
        raise _unfinished_run(path.parent, ckpt)  # a last.pt: the resumable state, not an exportable model
    if missing:
        raise ExportError(f"{path}: not a training checkpoint, missing key(s) {', '.join(missing)}")
    return ckpt


def _jsonable(value: Any) -> Any:
    """Convert tensors / numpy values / paths in nested containers to plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _portable_paths(data: Any) -> Any:
    """A copy of a ``data`` / ``split`` record with its ``dataset_dir`` and ``data_dir`` made portable."""
    if not isinstance(data, dict):
        return data
    return {k: portable_path(v) if k in ("dataset_dir", "data_dir") and isinstance(v, str) else v
            for k, v in data.items()}


def export_run(
    source: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    version: str | None = None,
    checkpoint: str | Path | None = None,
    quantize: bool = False,
    gate: bool = True,
    evidence: bool = True,
    review_band: bool = True,
    review_quantile: float | None = None,
) -> Path:
    """Export a training run (or one checkpoint file) to a checked model folder, with its input gate.

    Args:
        source: a run folder ``runs/<name>/`` (its ``best.pt`` is used) or a checkpoint file.
        out_dir: model folder to write, e.g. ``src/deephealth/models/deephealth-cxr3``.
        name: model name (default :data:`deephealth.paths.DEFAULT_MODEL_NAME`).
        version: model version (default: the package version with the run's name as a local label,
            e.g. ``0.3.0+lite0.aa`` for ``runs/lite0-aa``, so an exported run is never mistaken
            for the released model of that version; the release passes ``--version`` explicitly).
        checkpoint: checkpoint file to use instead of ``<source>/best.pt``.
        quantize: ship an int8 model (see :func:`export_model`).
        review_band: fit the review band on the run's validation split (:func:`fit_run_review_band`;
            skipped with a warning when the dataset is absent).
        review_quantile: the band's quantile (default
            :data:`~deephealth.calibration.REVIEW_QUANTILE`).
        gate: fit the input gate on the exported graph (:func:`fit_run_gate`); skipped with a
            warning when the dataset is not found.
        evidence: add the evidence map (see :func:`export_model`).

    Returns:
        ``out_dir``.

    Raises:
        ExportError: if the run or checkpoint is missing or malformed, the run has not finished
            (no ``best.pt`` yet, or its ``last.pt`` given: the message says to finish it with
            ``deephealth train --resume``), the weights do not fit the architecture, or the export
            fails its checks.
    """
    import json

    source = Path(source)
    if checkpoint is not None:
        ckpt_path = Path(checkpoint)
    elif source.is_dir():
        ckpt_path = source / "best.pt"
    else:
        ckpt_path = source
    if not source.exists():
        raise ExportError(f"run folder or checkpoint not found: {source}")
    run_dir = source if source.is_dir() else ckpt_path.parent
    ckpt = load_checkpoint(ckpt_path)

    model_args = dict(ckpt["model_args"])
    arch = model_args.get("arch")
    if not arch:
        raise ExportError(f"{ckpt_path}: model_args has no 'arch'")
    model = build_model(**architecture_args(model_args))
    qat_bits = (ckpt.get("config") or {}).get("qat_weight_bits") if (ckpt.get("config") or {}).get("qat") else None
    if qat_bits:  # a quantisation-aware trained run: its state dict holds the fake quantisers
        from deephealth.training.qat import prepare_qat

        model = prepare_qat(model, int(qat_bits)).eval()
    try:
        model.load_state_dict(ckpt["model_state"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"{ckpt_path}: weights do not fit {arch}: {first}") from exc
    try:
        pre = PreprocessConfig.from_dict(ckpt["preprocessing"])
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{ckpt_path}: bad preprocessing config ({exc})") from exc

    training: dict[str, Any] = {
        "run": run_dir.name,
        "checkpoint": ckpt_path.name,
        "epoch": ckpt.get("epoch"),
        "config": _portable_paths(ckpt.get("config")),
        "history": ckpt.get("history"),
        "summary": ckpt.get("summary"),
    }
    calib_file = run_dir / "calibration.json"
    extra: dict[str, Any] = {
        "architecture": {**model_args, "wrapper": "CamModel (logits + class activation maps)"},
        "training": training,
        "data": _portable_paths(ckpt.get("data")),  # no absolute path of this machine in the card
        "validation_metrics": ckpt.get("val_metrics"),
    }
    if ckpt.get("operating_point"):
        extra["operating_point"] = ckpt["operating_point"]
    config = ckpt.get("config") or {}
    if config.get("init") == "imagenet":
        from deephealth.training.imagenet import weights_source

        extra["initialisation"] = {"method": "ImageNet-1k weights", **weights_source(config["arch"]).to_dict()}
    else:
        extra["initialisation"] = {"method": "random (trained from scratch)" if not config.get("pretrained")
                                   else "ImageNet weights through timm"}
    if calib_file.is_file():
        try:
            extra["calibration"] = json.loads(calib_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            _logger.warning("%s: not included (%s)", calib_file, exc)
    out = export_model(
        model,
        pre,
        out_dir,
        name=name or DEFAULT_MODEL_NAME,
        version=version or run_version(run_dir.name),
        temperature=float(ckpt["temperature"]),
        metadata_extra=_jsonable(extra),
        quantize=quantize,
        model_args=None if qat_bits else architecture_args(model_args),  # no float32 weights.pt for int8
        evidence=evidence,
    )
    if gate:
        fit_run_gate(out, ckpt.get("config") or {})
    if review_band:
        fit_run_review_band(out, ckpt.get("config") or {}, quantile=review_quantile)
    return out


def fit_run_gate(model_dir: str | Path, config: dict[str, Any], data_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Fit the input gate of an exported model on the patient-grouped split its training run used.

    Re-creates the run's split exactly as training loaded it (:func:`deephealth.manifest.grouped_split`
    of the official ``train`` folder with the checkpoint config's ``val_fraction`` and ``split_seed``,
    then the same ``max_train_images`` subset, which is all of it for a release run), decodes the
    films at the model's input size and calls :func:`deephealth.training.gate_fit.fit_gate`
    (training films: statistics and classifier; validation films: thresholds). Smaller runs get
    proportionally fewer negatives.

    Args:
        model_dir: the exported model folder.
        config: the checkpoint's training config (``data_dir``, ``val_fraction``, ``split_seed``, ``seed``).
        data_dir: dataset folder overriding the config's (default: the config's, else
            :func:`deephealth.paths.dataset_dir`).

    Returns:
        The ``gate`` metadata entry, or ``None`` if no dataset was found (the model then ships
        without feature-space gate; a warning is logged).

    Raises:
        ExportError: if fitting fails.
    """
    from deephealth.artifact import ModelArtifact
    from deephealth.training.data import decode_records
    from deephealth.training.gate_fit import fit_gate

    split = run_split(config, data_dir)
    if split is None:
        _logger.warning("no dataset found: %s ships without the feature-space input gate", model_dir)
        return None
    train_recs, val_recs, provenance = split
    pre = ModelArtifact.load(model_dir, verify=False).preprocessing
    t0 = time.time()
    train_films, val_films = decode_records(train_recs, pre), decode_records(val_recs, pre)
    _logger.info("gate: decoded %d training + %d validation films in %.0f s", len(train_films), len(val_films),
                 time.time() - t0)
    split = {**provenance,
             "method": "patient-grouped, label-stratified (deephealth.manifest.grouped_split), as in training"}
    try:
        n = len(train_films)
        return fit_gate(model_dir, train_films, np.array([r.label_index for r in train_recs]), val_films,
                        n_lr_films=min(1500, n), n_transformed=min(400, max(20, n // 4)),
                        n_other=min(1200, max(60, n // 2)), seed=int(config.get("seed", 0)), split=split)
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"fitting the input gate failed: {exc}") from exc
