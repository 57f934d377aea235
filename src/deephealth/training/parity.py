"""The export's parity check: PyTorch vs ONNX Runtime on real dataset films and random inputs.

``onnx.checker.check_model(full_check=True)``, then agreement within :data:`LOGITS_ATOL` /
:data:`CAM_ATOL` (absolute) and :data:`RTOL` (relative), at batch size 1 and N, and the CAM
contract ``logits == mean_hw(cam)``. One job of the export (:mod:`deephealth.training.export`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deephealth.paths import dataset_dir
from deephealth.preprocessing import PreprocessConfig, preprocess
from deephealth.training.model import CamModel
from deephealth.training.onnx_graph import CAM_NAME, FEATURES_NAME, INPUT_NAME, LOGITS_NAME, ExportError

_logger = logging.getLogger(__name__)


LOGITS_ATOL = 1e-4
"""Absolute tolerance for PyTorch vs ONNX Runtime logits (logit units)."""


CAM_ATOL = 1e-3
"""Absolute tolerance for PyTorch vs ONNX Runtime class activation maps (logit units)."""


RTOL = 1e-4
"""Relative tolerance for both outputs (``|a - b| <= atol + rtol * |b|``, numpy ``allclose``)."""


def dataset_parity_inputs(preprocessing: PreprocessConfig, root: str | Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Real radiographs for the PyTorch vs ONNX Runtime check, read and preprocessed as in inference.

    Takes the first 3 normal and 3 pneumonia images of the official ``val`` split and the first
    2 viral images of ``train`` (sorted by name), so all three classes are represented.

    Args:
        preprocessing: the model's preprocessing contract.
        root: Kermany-layout dataset folder; default :func:`deephealth.paths.dataset_dir`.

    Returns:
        ``(x, names)``: ``x`` of shape ``(n, 1, S, S)`` float32 (``n`` = 0 when no dataset is found)
        and the relative file names.
    """
    from deephealth.readers import ImageReadError, read_image

    root = Path(root) if root is not None else dataset_dir()
    files: list[Path] = []
    files += sorted((root / "val" / "NORMAL").glob("*.jpeg"))[:3]
    files += sorted((root / "val" / "PNEUMONIA").glob("*.jpeg"))[:3]
    files += sorted((root / "train" / "PNEUMONIA").glob("*virus*.jpeg"))[:2]
    arrays, names = [], []
    for f in files:
        try:
            arrays.append(preprocess(read_image(f).image, preprocessing))
        except (ImageReadError, ValueError, OSError) as exc:  # a bad file only shrinks the check set
            _logger.warning("parity check: skipping %s (%s)", f, exc)
            continue
        names.append(str(f.relative_to(root)))
    s = preprocessing.input_size
    x = np.stack(arrays) if arrays else np.zeros((0, 1, s, s), np.float32)
    return x.astype(np.float32), names


def check_export(
    cam_model: CamModel,
    onnx_path: Path,
    inputs: np.ndarray,
    input_names: Sequence[str] = (),
    n_random: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Check an exported file: ONNX checker, then PyTorch vs ONNX Runtime agreement.

    Args:
        cam_model: the wrapper that was exported, in eval mode.
        onnx_path: the exported file.
        inputs: ``(n, 1, S, S)`` float32 real inputs (``n`` may be 0).
        input_names: names of the real inputs, recorded in the report.
        n_random: standard-normal random inputs added to the real ones.
        seed: seed of the random inputs.

    Returns:
        The ``export_check`` report: tolerances, largest differences, inputs used, ``passed``.

    Raises:
        ExportError: if the checker fails or an output differs by more than the tolerances.
    """
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise ExportError(f"{onnx_path}: ONNX checker failed: {exc}") from exc

    if inputs.ndim != 4 or inputs.shape[1] != 1:
        raise ExportError(f"parity inputs must have shape (n, 1, S, S), got {inputs.shape}")
    s = inputs.shape[-1]
    rng = np.random.default_rng(seed)
    x = np.concatenate([inputs, rng.standard_normal((n_random, 1, s, s)).astype(np.float32)])
    if len(x) == 0:
        raise ExportError("no inputs for the parity check")

    with torch.no_grad():
        t_logits, t_cam, t_feat = (t.numpy() for t in cam_model(torch.from_numpy(x)))
    from deephealth.artifact import session_options

    sess = ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])
    o_logits, o_cam, o_feat = sess.run([LOGITS_NAME, CAM_NAME, FEATURES_NAME], {INPUT_NAME: x})
    # batch size 1 must give the same rows as the full batch (dynamic batch axis)
    o1_logits, o1_cam = sess.run([LOGITS_NAME, CAM_NAME], {INPUT_NAME: x[:1]})

    report = {
        "onnx_checker": "passed (full_check=True)",
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
        "real_inputs": list(input_names),
        "random_inputs": int(n_random),
        "batch_sizes": [1, int(len(x))],
        "logits_atol": LOGITS_ATOL,
        "cam_atol": CAM_ATOL,
        "rtol": RTOL,
        "logits_max_abs_diff": float(np.max(np.abs(o_logits - t_logits))),
        "cam_max_abs_diff": float(np.max(np.abs(o_cam - t_cam))),
        "features_max_abs_diff": float(np.max(np.abs(o_feat - t_feat))),
        "batch1_logits_max_abs_diff": float(np.max(np.abs(o1_logits - o_logits[:1]))),
        "cam_mean_vs_logits_max_abs_diff": float(np.max(np.abs(o_cam.mean(axis=(2, 3)) - o_logits))),
        "predicted_class_agreement": float(np.mean(o_logits.argmax(1) == t_logits.argmax(1))),
    }
    failures = []
    if not np.allclose(o_logits, t_logits, atol=LOGITS_ATOL, rtol=RTOL):
        failures.append(f"logits differ by up to {report['logits_max_abs_diff']:.3g}")
    if not np.allclose(o_cam, t_cam, atol=CAM_ATOL, rtol=RTOL):
        failures.append(f"cam differs by up to {report['cam_max_abs_diff']:.3g}")
    if not np.allclose(o_feat, t_feat, atol=CAM_ATOL, rtol=RTOL):
        failures.append(f"features differ by up to {report['features_max_abs_diff']:.3g}")
    if not np.allclose(o1_logits, o_logits[:1], atol=LOGITS_ATOL, rtol=RTOL):
        failures.append(f"batch of 1 differs from the batch by {report['batch1_logits_max_abs_diff']:.3g}")
    if not np.allclose(o_cam.mean(axis=(2, 3)), o_logits, atol=LOGITS_ATOL, rtol=RTOL):
        failures.append(f"logits != mean(cam) by up to {report['cam_mean_vs_logits_max_abs_diff']:.3g}")
    report["passed"] = not failures
    if failures:
        raise ExportError(f"{onnx_path}: PyTorch vs ONNX Runtime check failed: " + "; ".join(failures))
    return report
