"""The ONNX graph of a trained network: its input/output names, opset, and the export itself.

The graph is :class:`deephealth.training.model.CamModel` exported with PyTorch's TorchScript ONNX
exporter (``torch.onnx.export(..., dynamo=False)``, one self-contained file with the weights
embedded) and a dynamic batch axis: input ``image`` ``(N, 1, S, S)`` float32; outputs ``logits``
``(N, 3)``, ``cam`` ``(N, 3, h, w)`` (class activation maps, Zhou et al., 2016) and ``features``
``(N, Cf)`` (pooled penultimate features, read by the input gate). One job of the export
(:mod:`deephealth.training.export` runs them in order).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from deephealth.artifact import ExportError  # noqa: F401  (re-exported; defined without PyTorch)
from deephealth.training.model import CamModel


INPUT_NAME = "image"
LOGITS_NAME = "logits"
CAM_NAME = "cam"
FEATURES_NAME = "features"
OPSET = 17


def export_onnx(cam_model: CamModel, path: Path, input_size: int, opset: int) -> None:
    """Write ``cam_model`` to ``path`` as ONNX (opset ``opset``, dynamic batch axis, names above).

    Args:
        cam_model: the network wrapped to output logits, CAM and features.
        path: the ``.onnx`` file to write.
        input_size: ``S``, the side of the square input in pixels.
        opset: the ONNX opset version.
    """
    dummy = torch.zeros(2, 1, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's DeprecationWarning / TracerWarnings
        torch.onnx.export(
            cam_model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[LOGITS_NAME, CAM_NAME, FEATURES_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}, CAM_NAME: {0: "batch"},
                          FEATURES_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
