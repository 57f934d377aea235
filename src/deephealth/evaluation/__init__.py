"""Evaluation of a model: metrics, patient-level bootstrap intervals, plots and the report.

- :mod:`~deephealth.evaluation.metrics`: ``compute_metrics(y_true, probs)``: 3-class metrics, the
  two binary protocols of Kermany et al. (2018), calibration (ECE, Brier, NLL). numpy + scikit-learn.
- :mod:`~deephealth.evaluation.bootstrap`: ``bootstrap_ci(y_true, probs, patient_ids)``: 95 %
  intervals resampling patients, vectorised.
- :mod:`~deephealth.evaluation.dedup`: ``deduplicate(rows, digests)``: each byte-identical image
  counted once, patients sharing an identical image merged into one bootstrap unit.
- :mod:`~deephealth.evaluation.scoring`: ``evaluate_model(predictor, records)``: scores images
  through the shipped ONNX model and the user-facing :class:`deephealth.inference.Predictor`.
- :mod:`~deephealth.evaluation.plots` (matplotlib) and :mod:`~deephealth.evaluation.report`
  (``metrics.json``, ``report.md``, CSVs).

Needs the ``[eval]`` extra (scikit-learn, matplotlib, tqdm). Never imports PyTorch.
"""

from deephealth.evaluation.bootstrap import HEADLINE_METRICS, BootstrapResult, bootstrap_ci
from deephealth.evaluation.metrics import PROTOCOLS, compute_metrics
from deephealth.evaluation.report import build_report, write_report
from deephealth.evaluation.scoring import evaluate_model

__all__ = [
    "HEADLINE_METRICS",
    "PROTOCOLS",
    "BootstrapResult",
    "bootstrap_ci",
    "build_report",
    "compute_metrics",
    "evaluate_model",
    "write_report",
]
