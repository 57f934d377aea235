"""Inference with ONNX Runtime: a radiograph in, a calibrated three-class prediction and a heatmap out.

This module is the serving path and must never import PyTorch (a test checks this in a subprocess);
it needs only numpy, Pillow, the readers and onnxruntime.

Pipeline for one image: :func:`deephealth.readers.read_image` (``(H, W)`` float32 in [0, 1]) ->
:func:`deephealth.preprocessing.preprocess` (``(1, S, S)`` float32, the model's contract from
``metadata.json``) -> ONNX Runtime (``logits`` ``(N, 3)``, ``features`` ``(N, Cf)`` when the model
has them, and ``cam`` ``(N, 3, h, w)`` only when a heatmap is asked for) -> the input gate
(:mod:`deephealth.gate`: accept / warn / refuse, from the image and the features; a refused image
raises :class:`~deephealth.gate.UnsuitableImageError` unless ``allow_unsuitable``) -> calibrated
probabilities ``softmax(logits / T)`` (temperature scaling, Guo et al., 2017, "On Calibration of
Modern Neural Networks", ICML) -> label at the model's operating point
(:func:`deephealth.calibration.decide`: pneumonia when ``1 - P(normal)`` reaches the threshold
fitted on validation, ``metadata.json`` -> ``operating_point``; arg-max for a model without one).

Heatmap: the class activation map (Zhou et al., 2016, "Learning Deep Features for Discriminative
Localization", CVPR) of the predicted class, ``CAM_k = W_k . F + b_k`` over the last feature map
``F``, computed inside the ONNX graph. When the model folder has an evidence map
(``metadata.json`` -> ``onnx.evidence``; :mod:`deephealth.training.evidence`, docs/evidence.md) the
heatmap is drawn from it instead: the CAM of the same weights with the last stage dilated, twice
as fine (12 x 12 cells at 192 px instead of 6 x 6), computed only when a heatmap is asked for
(the graph's ``evidence_on`` input). Either map is passed through ReLU, divided by its maximum (an
all-zero map stays zero) and upsampled with Pillow's bilinear filter to the analysed part of the
decoded image (the whole image, or its content box when the contract removed a uniform border;
the border gets zero). Because preprocessing squashes that part to a square without further
cropping, upsampling the ``(h, w)`` map straight onto it is the exact geometric inverse.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from deephealth.artifact import ModelArtifact, ModelArtifactError, session_options
from deephealth.calibration import decide, describe_decision, softmax
from deephealth.gate import Gate, Suitability, UnsuitableImageError
from deephealth.labels import CLASS_NAMES
from deephealth.paths import default_model_dir
from deephealth.preprocessing import content_box, normalize, resize_to_input
from deephealth.readers import ImageInfo, ImageReadError, read_image

_logger = logging.getLogger(__name__)

DEFAULT_SPIN_US = 50
"""Default longest busy-wait, in microseconds, of an idle ONNX Runtime intra-op thread before it
sleeps (see :class:`Predictor`, argument ``spinning``)."""

Box = tuple[int, int, int, int]
"""``(top, bottom, left, right)`` half-open pixel box of a decoded image."""

Source = Union[str, Path, bytes, np.ndarray]
"""What :meth:`Predictor.predict` accepts: a file path, the file's bytes, or an ``(H, W)`` array in [0, 1]."""

__all__ = [
    "Prediction",
    "PredictionError",
    "Predictor",
    "calibrated_probabilities",
    "cam_heatmap",
    "ImageReadError",
    "ModelArtifactError",
    "Suitability",
    "UnsuitableImageError",
]


# ------------------------------------------------------------------------------------------ maths


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled softmax (Guo et al., 2017).

    Args:
        logits: ``(..., C)`` raw logits (any float dtype).
        temperature: ``T > 0`` fitted on validation data.

    Returns:
        ``(..., C)`` float64 probabilities ``softmax(logits / T)``, each row summing to 1.
    """
    return softmax(logits, temperature)


def cam_heatmap(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """One class activation map to an image-aligned heatmap.

    Args:
        cam: ``(h, w)`` class activation map of one class, in logit units (Zhou et al., 2016).
        shape: ``(H, W)`` of the decoded image it must align with, in pixels.

    Returns:
        ``(H, W)`` float32 in [0, 1]: ``relu(cam) / max(relu(cam))`` upsampled with Pillow's
        bilinear filter (pixel-centre aligned); all zeros if the map has no positive value.
    """
    m = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    peak = float(m.max()) if m.size else 0.0
    if not np.isfinite(peak) or peak <= 0.0:
        return np.zeros(shape, dtype=np.float32)
    m = m / peak
    h, w = shape
    up = Image.fromarray(np.ascontiguousarray(m), mode="F").resize((w, h), resample=Image.Resampling.BILINEAR)
    return np.clip(np.asarray(up, dtype=np.float32), 0.0, 1.0)


# ------------------------------------------------------------------------------------------ results


def _image_facts(info: Any, border_crop: tuple[int, int, int, int] | None) -> dict[str, Any] | None:
    d = _info_dict(info)
    if d is not None and border_crop is not None:
        t, b, l, r = border_crop
        d["border_crop"] = {"top": t, "bottom": b, "left": l, "right": r}
    return d


def _info_dict(info: Any) -> dict[str, Any] | None:
    if info is None:
        return None
    if is_dataclass(info):
        return {k: v for k, v in asdict(info).items() if k != "warnings"}
    return {k: v for k, v in vars(info).items() if k != "warnings"}


@dataclass
class Prediction:
    """The model's answer for one image.

    Attributes:
        source: the file path or name the image came from (``<bytes>`` / ``<array>`` if unnamed).
        label: predicted class name (``normal``, ``bacterial`` or ``viral``).
        label_index: predicted class index on the prototype's scale: 0 no pneumonia,
            1 bacterial pneumonia, 2 viral pneumonia.
        probabilities: calibrated probability of every class, ``{class name: float}``, summing to 1.
        probs: the same as a ``(3,)`` float64 array in class order.
        logits: ``(3,)`` float32 raw logits.
        warnings: the reader's warnings about the file (e.g. an unusual DICOM).
        info: what the reader learned about the file (format, size, bit depth...).
        heatmap: ``(H, W)`` float32 in [0, 1] class activation map of the predicted class, aligned
            with the decoded image (the reader may decode a large JPEG at a reduced scale, so
            ``(H, W)`` can be a fraction of the file's size; both cover the whole image), or
            ``None`` if no heatmap was asked for.
        image: the decoded ``(H, W)`` float32 image in [0, 1], kept only with a heatmap (for
            :func:`deephealth.rendering.prediction_overlay_png`), else ``None``.
        border_crop: ``(top, bottom, left, right)`` of the decoded image that was analysed when
            the preprocessing contract removed a uniform border (letterboxing, padding), in decoded
            pixels; ``None`` when nothing was removed.
        decision: how the label follows from the probabilities
            (:func:`deephealth.calibration.describe_decision`: rule, pneumonia probability,
            the operating point's threshold and target sensitivity).
        suitability: the input gate's verdict (:class:`~deephealth.gate.Suitability`: accept,
            warn, refuse -- only with ``allow_unsuitable`` -- or unavailable).
    """

    source: str
    label: str
    label_index: int
    probabilities: dict[str, float]
    probs: np.ndarray
    logits: np.ndarray
    warnings: list[str] = field(default_factory=list)
    info: ImageInfo | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    border_crop: tuple[int, int, int, int] | None = None
    decision: dict[str, Any] | None = None
    suitability: Suitability | None = None

    ok = True
    """Always ``True`` (``PredictionError.ok`` is ``False``), for uniform handling of batch results."""

    def to_dict(self, include_heatmap: bool = False) -> dict[str, Any]:
        """JSON-able dict: source, ok, label, label_index, probabilities, logits, warnings, image info.

        Args:
            include_heatmap: add ``heatmap`` as nested lists (large: one float per pixel).
        """
        d: dict[str, Any] = {
            "source": self.source,
            "ok": True,
            "label": self.label,
            "label_index": int(self.label_index),
            "probabilities": {k: float(v) for k, v in self.probabilities.items()},
            "logits": [float(v) for v in self.logits],
            "warnings": list(self.warnings),
            "image": _image_facts(self.info, self.border_crop),
            "decision": self.decision,
        }
        if self.suitability is not None:
            d["suitability"] = self.suitability.to_dict()
        if include_heatmap and self.heatmap is not None:
            d["heatmap"] = self.heatmap.tolist()
        return d


@dataclass
class PredictionError:
    """An input that could not be classified, in a batch.

    Attributes:
        source: the file path or name.
        error: one line naming the file and the problem.
        suitability: the input gate's verdict when the gate refused the image, else ``None``.
    """

    source: str
    error: str
    suitability: Suitability | None = None

    ok = False
    """Always ``False`` (``Prediction.ok`` is ``True``)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: source, ok (False), error, and ``suitability`` for a refused image."""
        d: dict[str, Any] = {"source": self.source, "ok": False, "error": self.error}
        if self.suitability is not None:
            d["suitability"] = self.suitability.to_dict()
        return d


# ------------------------------------------------------------------------------------------ predictor


def _source_label(source: Any, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    return f"<{type(source).__name__}>"


class Predictor:
    """Classifies chest radiographs with an exported model folder using ONNX Runtime (no PyTorch).

    Example:
        >>> p = Predictor()                       # the bundled model
        >>> r = p.predict("chest.jpeg", heatmap=True)
        >>> r.label, r.probabilities["viral"]
        >>> from deephealth.rendering import prediction_overlay_png
        >>> open("overlay.png", "wb").write(prediction_overlay_png(r))

    Args:
        model_dir: model folder with ``model.onnx`` and ``metadata.json``; ``None`` means
            :func:`deephealth.paths.default_model_dir` (``DEEPHEALTH_MODEL_DIR`` or the bundled model).
        num_threads: ONNX Runtime intra-op threads; ``None`` means ``os.cpu_count()``.
        spinning: how long ONNX Runtime's idle intra-op threads busy-wait for the next operator
            before they sleep (``session.intra_op.allow_spinning`` and
            ``session.intra_op.spin_duration_us``): ``False`` or ``0`` never; a positive ``int``
            at most that many microseconds; ``True`` ONNX Runtime's own, much longer, spin.
            ``None`` reads ``DEEPHEALTH_ORT_SPINNING`` (``0``, ``1`` for ``True``, or a number of
            microseconds) and defaults to :data:`DEFAULT_SPIN_US`. Waking a sleeping thread costs
            more than the gap between two operators, so a short spin speeds up a single film on
            otherwise idle cores; on a CPU that something else keeps busy, spinning threads take
            the cores that work needs. ``benchmarks/bench_spinning.py`` on the project's 2-core
            machine (AMD EPYC, 2 threads, the 624 test JPEGs, modes interleaved, p50): idle,
            8.68 ms at 50 us, 9.57 ms off, 8.74 ms with ONNX Runtime's own spin; beside one busy
            process, 12.05, 10.66 and 16.90 ms. Probabilities are identical in every mode.
        verify: check the ONNX file's (and ``gate.npz``'s) SHA-256 against ``metadata.json``
            (default, recommended).

    Attributes:
        gate: the model's input gate (:class:`deephealth.gate.Gate`); ``gate.available`` is
            ``False`` for a model exported without gate data (image checks only).

    Raises:
        ModelArtifactError: if the folder is missing or incomplete, a checksum does not match,
            the class names differ from :data:`deephealth.labels.CLASS_NAMES`, or ONNX Runtime
            cannot load the model or it lacks the inputs/outputs named in ``metadata.json``.
    """

    def __init__(self, model_dir: str | Path | None = None, *, num_threads: int | None = None, verify: bool = True,
                 spinning: bool | None = None) -> None:
        import onnxruntime as ort

        directory = Path(model_dir) if model_dir is not None else default_model_dir()
        if not directory.is_dir():
            raise ModelArtifactError(f"model folder not found: {directory}")
        self.artifact: ModelArtifact = ModelArtifact.load(directory, verify=verify)
        if tuple(self.artifact.class_names) != CLASS_NAMES:
            raise ModelArtifactError(
                f"{directory}: class names {list(self.artifact.class_names)} differ from the expected "
                f"{list(CLASS_NAMES)} (order matters: 0 normal, 1 bacterial, 2 viral)"
            )
        onnx_meta = self.artifact.metadata["onnx"]
        self.input_name: str = onnx_meta["input"]
        self.logits_name: str = onnx_meta["logits"]
        self.cam_name: str = onnx_meta["cam"]
        self.features_name: str | None = onnx_meta.get("features")
        self.evidence_name: str | None = onnx_meta.get("evidence") or None
        self.evidence_flag: str | None = onnx_meta.get("evidence_flag") if self.evidence_name else None
        self.gate = Gate.for_artifact(self.artifact, verify=verify)
        if self.gate.available and not self.features_name:
            raise ModelArtifactError(f"{directory}: metadata.json has gate data but no onnx.features output")
        self.num_threads = int(num_threads or os.cpu_count() or 1)

        opts = session_options()  # ORT_ENABLE_ALL, ONNX Runtime's log at ERROR (the evidence_on default)
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.spin_us: int | None = _spin_setting(spinning)
        self.spinning = self.spin_us != 0
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.spin_us:  # None: ONNX Runtime's own duration
            opts.add_session_config_entry("session.intra_op.spin_duration_us", str(self.spin_us))
        try:
            self.session = ort.InferenceSession(
                str(self.artifact.onnx_path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelArtifactError(f"{self.artifact.onnx_path}: ONNX Runtime cannot load the model ({msg})") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self.input_name not in inputs:
            raise ModelArtifactError(f"{self.artifact.onnx_path}: no input named {self.input_name!r}")
        for out in (self.logits_name, self.cam_name, self.features_name, self.evidence_name):
            if out is not None and out not in outputs:
                raise ModelArtifactError(f"{self.artifact.onnx_path}: no output named {out!r}")
        overridable = {i.name for i in self.session.get_overridable_initializers()}
        if self.evidence_name and (not self.evidence_flag or self.evidence_flag not in overridable):
            raise ModelArtifactError(f"{self.artifact.onnx_path}: the evidence map needs the boolean input "
                                     f"named by onnx.evidence_flag ({self.evidence_flag!r}), which the graph lacks")
        s = self.artifact.preprocessing.input_size
        shape = list(inputs[self.input_name].shape)
        if len(shape) != 4 or shape[1] != 1 or any(isinstance(d, int) and d != s for d in shape[2:]):
            raise ModelArtifactError(
                f"{self.artifact.onnx_path}: input shape {shape} does not match the preprocessing contract (N, 1, {s}, {s})"
            )
        _logger.info(
            "loaded model %s %s from %s (%d threads, spinning %s)",
            self.artifact.name, self.artifact.version, directory, self.num_threads, self.spin_description,
        )

    # -- low level ---------------------------------------------------------------------------------

    @property
    def spin_description(self) -> str:
        """The spinning mode in words: ``"off"``, ``"up to 50 us"`` or ``"on (ONNX Runtime's own)"``."""
        if not self.spinning:
            return "off"
        return f"up to {self.spin_us} us" if self.spin_us else "on (ONNX Runtime's own)"

    @property
    def heatmap_source(self) -> str:
        """Which map heatmaps are drawn from: ``"evidence"`` (the finer evidence map) or ``"cam"``."""
        return "evidence" if self.evidence_name else "cam"

    @property
    def input_size(self) -> int:
        """Side ``S`` of the square network input, in pixels (from ``metadata.json``)."""
        return self.artifact.preprocessing.input_size

    def infer(self, batch: np.ndarray, cam: bool = False, source: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the network on preprocessed inputs.

        Args:
            batch: ``(N, 1, S, S)`` float32, stacked :func:`~deephealth.preprocessing.preprocess` outputs.
            cam: also return the maps heatmaps are drawn from.
            source: which maps: ``None`` for :attr:`heatmap_source` (what :meth:`predict` draws),
                ``"cam"`` for the class activation map of the last feature map (``logits ==
                mean_hw(cam)``), ``"evidence"`` for the evidence map (models that have one).

        Returns:
            ``(logits, maps)``: ``(N, 3)`` float32 raw logits and ``(N, 3, h, w)`` float32 maps in
            logit units (``None`` unless ``cam``); ``(h, w)`` is ``S/32`` for the CAM and ``S/16``
            for the evidence map.

        Raises:
            ValueError: if ``batch`` does not have shape ``(N, 1, S, S)``, or ``source`` is unknown
                or ``"evidence"`` for a model without an evidence map.
        """
        logits, cams, _ = self._run(batch, cam, source)
        return logits, cams

    def _run(self, batch: np.ndarray, cam: bool, source: str | None = None
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`infer` plus the ``(N, Cf)`` pooled features (``None`` if the model has none)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (1, s, s):
            raise ValueError(f"expected a (N, 1, {s}, {s}) batch, got {batch.shape}")
        source = source or self.heatmap_source
        if source not in ("cam", "evidence"):
            raise ValueError(f"source must be 'cam' or 'evidence', got {source!r}")
        if source == "evidence" and not self.evidence_name:
            raise ValueError(f"{self.artifact.directory}: this model has no evidence map")
        feeds: dict[str, np.ndarray] = {self.input_name: batch}
        map_name = self.cam_name
        if cam and source == "evidence":
            map_name = self.evidence_name
            feeds[self.evidence_flag] = np.array(True)  # the branch runs only when asked for
        names = [self.logits_name] + ([map_name] if cam else [])
        if self.features_name:
            names.append(self.features_name)
        out = dict(zip(names, self.session.run(names, feeds)))
        return out[self.logits_name], out.get(map_name) if cam else None, (
            out[self.features_name] if self.features_name else None)

    def load(self, source: Source, name: str | None = None) -> tuple[np.ndarray, ImageInfo]:
        """Decode one input for this model (reduced-scale decoding of large files is allowed).

        Args:
            source: file path, file bytes, or an ``(H, W)`` float array in [0, 1] (bright = dense).
            name: label used in messages and results instead of the path.

        Returns:
            ``(image, info)``: ``(H, W)`` float32 in [0, 1] and the reader's :class:`ImageInfo`.

        Raises:
            ImageReadError: if the input cannot be read; the message names the file and the problem.
        """
        label = _source_label(source, name)
        if isinstance(source, np.ndarray):
            return self._load_array(source, label)
        if isinstance(source, (bytearray, memoryview)):
            source = bytes(source)
        if not isinstance(source, (str, Path, bytes)):
            raise ImageReadError(f"{label}: unsupported input type {type(source).__name__}")
        # The reader turns missing files, folders and OS errors into ImageReadError itself.
        result = read_image(source, name=name, target_size=self.input_size)
        return result.image, result.info

    @staticmethod
    def _load_array(arr: np.ndarray, label: str) -> tuple[np.ndarray, ImageInfo]:
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ImageReadError(f"{label}: expected a 2-D grayscale array (H, W), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ImageReadError(f"{label}: expected a real-valued array, got dtype {arr.dtype}")
        image = np.asarray(arr, dtype=np.float32)
        if not np.isfinite(image).all():
            raise ImageReadError(f"{label}: array contains NaN or infinite values")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageReadError(
                f"{label}: array values must be in [0, 1] (bright = dense), got [{lo:.4g}, {hi:.4g}]"
            )
        h, w = image.shape
        return image, ImageInfo(path=label, format="array", width=w, height=h, bit_depth=32)

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, Box]:
        """The preprocessing contract for one decoded image.

        Returns:
            ``(q, x, box)``: the ``(S, S)`` uint8 input before normalisation (for the gate), the
            ``(1, S, S)`` float32 network input (:func:`deephealth.preprocessing.preprocess`) and
            the content box analysed.
        """
        pre = self.artifact.preprocessing
        box = content_box(image) if pre.crop_border else (0, image.shape[0], 0, image.shape[1])
        q = resize_to_input(image, pre, box)
        return q, normalize(q, pre)[None], box

    def _assess(self, info: ImageInfo, q: np.ndarray, box: Box, features: np.ndarray | None,
                logits: np.ndarray) -> Suitability:
        """The input gate's verdict on one image (the analysed box gives the aspect ratio)."""
        top, bottom, left, right = box
        return self.gate.assess(info, q, features, logits, analysed_shape=(bottom - top, right - left))

    def _result(
        self, label: str, image: np.ndarray, info: ImageInfo, logits: np.ndarray, cam: np.ndarray | None,
        box: Box | None = None, suitability: Suitability | None = None,
    ) -> Prediction:
        probs = calibrated_probabilities(logits, self.artifact.temperature)  # (3,) float64
        k = int(decide(probs, self.artifact.operating_point))
        h, w = image.shape
        top, bottom, left, right = box if box is not None else (0, h, 0, w)
        cropped = (top, bottom, left, right) != (0, h, 0, w)
        heat = None
        if cam is not None:  # the map covers the analysed box; zero over a removed border
            heat = np.zeros((h, w), np.float32)
            heat[top:bottom, left:right] = cam_heatmap(cam[k], (bottom - top, right - left))
        warnings = list(getattr(info, "warnings", []) or [])
        if cropped:
            warnings.append(
                f"uniform border removed before analysis: rows {top}-{bottom} and columns {left}-{right} "
                f"of the {w}x{h} decoded image were analysed"
            )
        return Prediction(
            source=label,
            label=CLASS_NAMES[k],
            label_index=k,
            probabilities={c: float(p) for c, p in zip(CLASS_NAMES, probs)},
            probs=probs,
            logits=np.asarray(logits, dtype=np.float32),
            warnings=warnings,
            info=info,
            heatmap=heat,
            border_crop=(top, bottom, left, right) if cropped else None,
            decision=describe_decision(probs, self.artifact.operating_point),
            image=image if cam is not None else None,
            suitability=suitability,
        )

    # -- public ------------------------------------------------------------------------------------

    def predict(
        self, source: Source, *, name: str | None = None, heatmap: bool = False, allow_unsuitable: bool = False
    ) -> Prediction:
        """Classify one radiograph, after the input gate.

        Args:
            source: file path (JPEG, PNG, DICOM... anything the readers accept), the file's bytes,
                or an ``(H, W)`` float array in [0, 1] (bright = dense).
            name: label for messages and :attr:`Prediction.source` (e.g. an upload's file name).
            heatmap: also compute the class activation heatmap of the predicted class.
            allow_unsuitable: classify an image the gate refuses anyway (its
                :attr:`Prediction.suitability` keeps the refusal and the reasons).

        Returns:
            The :class:`Prediction`, with :attr:`~Prediction.suitability` set.

        Raises:
            ImageReadError: if the input cannot be read as a radiograph (message names the file).
            UnsuitableImageError: if the gate refuses the image and ``allow_unsuitable`` is false
                (message names the file and the reasons; ``.suitability`` holds the verdict).
        """
        label = _source_label(source, name)
        image, info = self.load(source, name)
        q, x, box = self._prepare(image)
        logits, cams, feats = self._run(x[None], cam=heatmap)  # x[None]: (1, 1, S, S)
        verdict = self._assess(info, q, box, feats[0] if feats is not None else None, logits[0])
        if verdict.refused and not allow_unsuitable:
            raise UnsuitableImageError(label, verdict)
        return self._result(label, image, info, logits[0], cams[0] if cams is not None else None, box, verdict)

    def predict_many(
        self,
        sources: Iterable[Source],
        *,
        batch_size: int = 32,
        heatmap: bool = False,
        progress: bool | Callable[[int], None] = False,
        names: Sequence[str | None] | None = None,
        allow_unsuitable: bool = False,
    ) -> list[Prediction | PredictionError]:
        """Classify many radiographs, running the network in batches; never raises for a bad input.

        Inputs are decoded and preprocessed ``batch_size`` at a time (so memory stays bounded),
        then run through the network together. Results keep the input order.

        Args:
            sources: paths, bytes or arrays, as for :meth:`predict`.
            batch_size: images per network run (>= 1).
            heatmap: also compute heatmaps (keeps each decoded image in memory for overlays).
            progress: ``True`` shows a tqdm progress bar on stderr (if tqdm is installed); a callable
                is called with the number of inputs finished after each batch.
            names: optional labels, one per source (``None`` entries fall back to the path).
            allow_unsuitable: classify images the gate refuses too (see :meth:`predict`); otherwise
                each comes back as a :class:`PredictionError` carrying its ``suitability``.

        Returns:
            One :class:`Prediction` or :class:`PredictionError` per input, in input order.

        Raises:
            ValueError: if ``batch_size < 1`` or ``names`` has a different length.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sources = list(sources)
        if names is not None and len(names) != len(sources):
            raise ValueError(f"{len(names)} names for {len(sources)} sources")
        bar = None
        callback: Callable[[int], None] | None = progress if callable(progress) else None
        if progress is True:
            try:
                from tqdm import tqdm

                bar = tqdm(total=len(sources), unit="img", desc="predict", leave=False)
            except ImportError:
                _logger.info("tqdm not installed; no progress bar")

        results: list[Prediction | PredictionError] = []
        try:
            for start in range(0, len(sources), batch_size):
                chunk = sources[start : start + batch_size]
                loaded: list[tuple[int, str, np.ndarray, ImageInfo, np.ndarray, np.ndarray, Box]] = []
                chunk_results: list[Prediction | PredictionError | None] = [None] * len(chunk)
                for i, src in enumerate(chunk):
                    nm = names[start + i] if names is not None else None
                    label = _source_label(src, nm)
                    try:
                        image, info = self.load(src, nm)
                        q, x, box = self._prepare(image)  # (S, S) uint8, (1, S, S) float32
                    except ImageReadError as exc:
                        chunk_results[i] = PredictionError(label, _one_line(exc, label))
                        continue
                    except Exception as exc:  # a broken decoder must not stop the batch
                        _logger.debug("unexpected error on %s", label, exc_info=True)
                        chunk_results[i] = PredictionError(label, f"{label}: cannot process ({type(exc).__name__}: {_one_line(exc, None)})")
                        continue
                    loaded.append((i, label, image, info, q, x, box))
                if loaded:
                    batch = np.stack([item[5] for item in loaded])  # (n, 1, S, S)
                    logits, cams, feats = self._run(batch, cam=heatmap)
                    for j, (i, label, image, info, q, _, box) in enumerate(loaded):
                        verdict = self._assess(info, q, box, feats[j] if feats is not None else None, logits[j])
                        if verdict.refused and not allow_unsuitable:
                            chunk_results[i] = PredictionError(label, str(UnsuitableImageError(label, verdict)), verdict)
                            continue
                        cam = cams[j] if cams is not None else None
                        # keep the decoded image only when an overlay may be wanted
                        chunk_results[i] = self._result(label, image, info, logits[j], cam, box, verdict)
                results.extend(r for r in chunk_results if r is not None)
                done = len(results)
                if bar is not None:
                    bar.update(len(chunk))
                if callback is not None:
                    callback(done)
        finally:
            if bar is not None:
                bar.close()
        return results


def _spin_setting(spinning: bool | int | None) -> int | None:
    """``Predictor(spinning=...)`` as microseconds: ``0`` off, ``N > 0`` bounded, ``None`` ONNX Runtime's own.

    A ``DEEPHEALTH_ORT_SPINNING`` that is not ``0``, ``1`` or a whole number of microseconds is
    logged as a warning and the default used: it changes speed only, never a probability.

    Raises:
        ValueError: if the ``spinning`` argument is negative or neither a bool nor an int.
    """
    if spinning is None:
        raw = os.environ.get("DEEPHEALTH_ORT_SPINNING", "").strip()
        if not raw:
            return DEFAULT_SPIN_US
        if not raw.isdigit():
            _logger.warning("DEEPHEALTH_ORT_SPINNING=%r is not 0, 1 or a number of microseconds; using the "
                            "default (spin up to %d us)", raw, DEFAULT_SPIN_US)
            return DEFAULT_SPIN_US
        spinning = True if raw == "1" else int(raw)
    if isinstance(spinning, bool):
        return None if spinning else 0
    if not isinstance(spinning, int) or spinning < 0:
        raise ValueError(f"spinning must be a bool or a number of microseconds >= 0, got {spinning!r}")
    return spinning


def _one_line(exc: BaseException, label: str | None) -> str:
    """An exception as one line; prefixed with ``label`` unless it already names it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if label and label not in text:
        text = f"{label}: {text}"
    return text
