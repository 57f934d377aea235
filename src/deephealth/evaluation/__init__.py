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
:mod:`~deephealth.evaluation.stability` (benign perturbations, used to fit the review band) needs
the serving stack only: the names below are imported on first use (PEP 562), so importing that
module does not pull in scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "HEADLINE_METRICS": "bootstrap",
    "BootstrapResult": "bootstrap",
    "bootstrap_ci": "bootstrap",
    "PROTOCOLS": "metrics",
    "compute_metrics": "metrics",
    "build_report": "report",
    "write_report": "report",
    "evaluate_model": "scoring",
}

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


def __getattr__(name: str) -> Any:
    """The public names above, imported from their submodule on first use.

    Raises:
        AttributeError: ``name`` is not one of them (nor a loaded submodule).
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
