"""The model artifact: a folder holding ``model.onnx`` and ``metadata.json``.

``metadata.json`` is the model's contract, written by ``deephealth export`` and read by inference,
evaluation and the web app. Keys (all required unless marked optional):

- ``name``, ``version`` (str); ``created`` (ISO 8601 UTC);
- ``class_names``: class names in output order (``["normal", "bacterial", "viral"]``);
- ``preprocessing``: :class:`deephealth.preprocessing.PreprocessConfig` as a dict;
- ``temperature``: float > 0, temperature scaling (Guo et al., 2017) fitted on validation:
  calibrated probabilities are ``softmax(logits / temperature)``;
- ``onnx``: ``file``, ``sha256``, ``input`` (name of the ``(N, 1, S, S)`` float32 input),
  ``logits`` (name of the ``(N, C)`` float32 output), ``cam`` (name of the ``(N, C, h, w)``
  float32 class activation map output, in logit units, Zhou et al., 2016), ``opset``; optional
  ``features`` (name of the ``(N, Cf)`` float32 pooled-feature output, models from 0.2.0);
- ``intended_use`` (str); optional: ``architecture``, ``training``, ``data``, ``validation_metrics``,
  ``test_metrics``, ``summary``, ``initialisation`` (where pretrained weights came from: source,
  licence, SHA-256), and ``operating_point``: the decision threshold fitted on validation
  (:func:`deephealth.calibration.fit_operating_point`; absent = arg-max), which every interface
  uses to turn calibrated probabilities into a label; ``gate``: the input gate fitted at export
  (``file`` = ``gate.npz``, its ``sha256``, ``thresholds``, validation false-alarm rate; see
  :mod:`deephealth.gate`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deephealth.preprocessing import PreprocessConfig

METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pt"
"""PyTorch weights shipped beside the ONNX file (for ``deephealth adapt`` and the evidence map); optional."""


class ModelArtifactError(RuntimeError):
    """A model folder that is missing, incomplete, inconsistent or corrupted."""


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported, or an export (or a refit of a model folder) that fails its checks.

    Defined here, without PyTorch, so that the refits that need none (the review band:
    :mod:`deephealth.review_band_fit`) raise the same type as the exporter; re-exported by
    :mod:`deephealth.training.onnx_graph` and :mod:`deephealth.training.export`.
    """


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded, verified model folder.

    Attributes:
        directory: the model folder.
        metadata: the parsed ``metadata.json``.
        onnx_path: path of the ONNX file.
        preprocessing: the preprocessing contract of this model.
        class_names: class names in output order.
        temperature: calibration temperature (> 0).
    """

    directory: Path
    metadata: dict[str, Any]
    onnx_path: Path
    preprocessing: PreprocessConfig
    class_names: tuple[str, ...]
    temperature: float

    @property
    def name(self) -> str:
        """Model name from the metadata."""
        return str(self.metadata.get("name", self.directory.name))

    @property
    def version(self) -> str:
        """Model version from the metadata."""
        return str(self.metadata.get("version", "unknown"))

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The shipped operating point (``metadata.json`` -> ``operating_point``), or ``None`` for arg-max."""
        op = self.metadata.get("operating_point")
        return op if op else None

    @property
    def sha256(self) -> str:
        """SHA-256 of the ONNX file, as recorded in the metadata."""
        return str(self.metadata["onnx"]["sha256"])

    @property
    def decision_fingerprint(self) -> str:
        """SHA-256 (hex) of the decision rule: what turns this model's logits into a label and a review flag.

        The rule lives in ``metadata.json``, not in the ONNX file, so :attr:`sha256` does not see it
        change: the calibration ``temperature``, the whole ``operating_point`` (threshold, and
        ``review_band`` when present) and the input gate's file checksum and thresholds (its
        verdict is part of the answer). The digest is taken over the canonical JSON (``sort_keys``,
        no whitespace) of ``{"temperature": ..., "operating_point": ..., "gate": {"sha256": ...,
        "thresholds": ...}}`` (``null`` for an arg-max model or a model without a gate). Any edit
        inside ``operating_point`` changes it, including its bookkeeping (validation figures, fit
        time): a conservative fingerprint, never a stale one.
        ``deephealth batch`` keys its results by it as well as by :attr:`sha256`.
        """
        gate = self.metadata.get("gate") or None  # its verdict (accept / warn / refuse) is part of the answer
        rule = {"temperature": self.temperature, "operating_point": self.operating_point,
                "gate": {"sha256": gate.get("sha256"), "thresholds": gate.get("thresholds")} if gate else None}
        canonical = json.dumps(rule, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> ModelArtifact:
        """Read and check a model folder.

        Args:
            directory: folder with ``metadata.json`` and the ONNX file it names.
            verify: check the ONNX file's SHA-256 against ``metadata.json``.

        Raises:
            ModelArtifactError: if the folder, a file or a required key is missing, or the
                checksum does not match.
        """
        directory = Path(directory)
        meta_path = directory / METADATA_FILE
        if not meta_path.is_file():
            raise ModelArtifactError(f"no {METADATA_FILE} in model folder {directory}")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelArtifactError(f"{meta_path}: cannot parse ({exc})") from exc
        for key in ("class_names", "preprocessing", "temperature", "onnx"):
            if key not in meta:
                raise ModelArtifactError(f"{meta_path}: missing key {key!r}")
        onnx_meta = meta["onnx"]
        for key in ("file", "sha256", "input", "logits", "cam"):
            if key not in onnx_meta:
                raise ModelArtifactError(f"{meta_path}: missing key onnx.{key}")
        onnx_path = directory / onnx_meta["file"]
        if not onnx_path.is_file():
            raise ModelArtifactError(f"model file missing: {onnx_path}")
        if verify:
            digest = sha256_file(onnx_path)
            if digest != onnx_meta["sha256"]:
                raise ModelArtifactError(
                    f"{onnx_path}: SHA-256 {digest[:12]}... does not match metadata.json "
                    f"({str(onnx_meta['sha256'])[:12]}...): the model file is corrupted or was replaced"
                )
        temperature = float(meta["temperature"])
        if not temperature > 0:
            raise ModelArtifactError(f"{meta_path}: temperature must be > 0, got {temperature}")
        try:
            pre = PreprocessConfig.from_dict(meta["preprocessing"])
        except (TypeError, ValueError) as exc:
            raise ModelArtifactError(f"{meta_path}: bad preprocessing config ({exc})") from exc
        op = meta.get("operating_point")
        if op:
            tau = op.get("threshold") if isinstance(op, dict) else None
            if not isinstance(tau, (int, float)) or not 0.0 < float(tau) < 1.0:
                raise ModelArtifactError(f"{meta_path}: operating_point.threshold must be in (0, 1), got {tau!r}")
            _check_review_band(op.get("review_band"), meta_path)
        return cls(directory, meta, onnx_path, pre, tuple(meta["class_names"]), temperature)


def _check_review_band(band: Any, meta_path: Path) -> None:
    """Refuse a malformed ``operating_point.review_band`` at load time, not on the first film scored."""
    if band is None:
        return
    where = f"{meta_path}: operating_point.review_band"
    if not isinstance(band, dict):
        raise ModelArtifactError(f"{where} must be an object, got {type(band).__name__}")
    for key in ("pneumonia_logit_margin", "type_logit_margin"):
        v = band.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < float("inf"):
            raise ModelArtifactError(f"{where}.{key} must be a number > 0, got {v!r}")
    for key in ("pneumonia_probability_range", "bacterial_share_range"):
        v = band.get(key)
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 1.0 for x in v)):
            raise ModelArtifactError(f"{where}.{key} must be [low, high] in [0, 1], got {v!r}")


def write_metadata(directory: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``metadata.json`` (indented, keys in insertion order) and return its path."""
    path = Path(directory) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def session_options(graph_optimization: bool = True) -> Any:
    """ONNX Runtime session options for the project's own graphs, with ONNX Runtime's log at ERROR.

    The exported graph's ``evidence_on`` input has a default value (an initializer of the same name),
    so that the evidence branch of its ``If`` node runs only when a caller feeds ``True``. ONNX Runtime
    warns about every such input at each session's creation ("Initializer evidence_on appears in graph
    inputs and will not be treated as constant...", with terminal colour codes on stderr): expected
    here, and nothing a user can act on. Errors are still logged, and a graph that cannot be loaded or
    run still raises.

    Args:
        graph_optimization: ``ORT_ENABLE_ALL`` graph optimisations (ONNX Runtime's default otherwise).

    Returns:
        An ``onnxruntime.SessionOptions``.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if graph_optimization:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # ERROR: no warnings about the intended evidence_on default
    return opts
