"""The input gate: is this image a frontal chest radiograph the model can be trusted on?

Pipeline position: readers -> **gate** -> preprocessing -> inference. Every image gets a
:class:`Suitability` with one of three outcomes:

- ``accept``: nothing unusual was found;
- ``warn``: classified, but flagged with a reason a clinician can read;
- ``refuse``: not classified (HTTP 422, a CLI error line), unless the caller explicitly overrides
  (``?allow_unsuitable=true``, ``--allow-unsuitable``), which classifies anyway and keeps the flags.

Three kinds of checks, combined (any refusal refuses; otherwise any warning warns):

0. **Header checks** on the facts the DICOM reader recorded (:func:`header_checks`; the header
   decides first, and its reasons come first): a lateral or oblique (0018,5101) View Position, a
   (0008,0016) SOP Class UID that is not a radiograph storage class (CR, DX for presentation or
   processing; a Secondary Capture only with a frontal chest header) and a (0018,0015) Body Part
   Examined naming another part are refused, naming the tag and its value; an adult (0010,1010)
   Patient Age is warned. A missing or empty tag is no reason: the pixels decide.

1. **Image checks** on the reader's output (model-independent, :func:`image_checks`):

   - colour: the reader counts the pixels whose channels differ by at least
     :data:`deephealth.readers.image.COLOR_PIXEL_LEVELS` grey levels (``ImageInfo.color_fraction``)
     and the largest such fraction within one block of an 8 x 8 grid (``color_block_fraction``).
     Judged locally, so a small red arrow or a yellow letter on a grey film is found even though
     the image's mean colour is nearly grey: a block with at least :data:`ANNOTATION_BLOCK_FRACTION`
     coloured pixels warns (burnt-in annotations); a colour image with at least
     :data:`COLOR_REFUSE_FRACTION` coloured pixels overall is refused (a photo or a drawing);
   - aspect ratio (``width / height`` of the file as displayed): chest detectors are about square
     (35 x 43 cm, 43 x 43 cm); outside [:data:`ASPECT_WARN`] the image is warned, outside
     [:data:`ASPECT_REFUSE`] refused (a screenshot strip, a panorama);
   - near-blank: the 1st-99th percentile range of the network input's 8-bit intensities below
     :data:`BLANK_RANGE_LEVELS` grey levels is refused (a blank page with a few specks, an
     overexposed or empty frame). Images with no contrast at all are already refused by the readers;
   - featureless: a mean absolute Laplacian (:func:`detail`) below :data:`FEATURELESS_DETAIL` grey
     levels is refused (smooth gradients, heavily blurred images: no anatomy has edges that soft);
   - **view** (:func:`lung_layout`): a frontal film's column profile shows two dark lung fields
     either side of a bright mediastinum; a lateral film shows one dark field with the spine at
     one edge. A two-lung score below :data:`LAYOUT_REFUSE` is refused, below :data:`LAYOUT_WARN`
     warned -- and refused when the feature-space checks flag the image too (two independent
     signals agree). Thresholds chosen on the patient-grouped validation split (docs/gate.md).

2. **Feature-space checks** on the classifier's own globally pooled penultimate features (the ONNX
   model's ``features`` output, fitted at export by :func:`deephealth.training.gate_fit.fit_gate`
   and stored in ``gate.npz`` beside ``model.onnx``):

   - **Mahalanobis distance** to the nearest class mean with a shared (tied) covariance, within
     the principal subspace of the training features (PCA to at most 128 dimensions) and with
     Ledoit-Wolf shrinkage (Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting
     Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018; Ledoit & Wolf,
     J. Multivariate Anal. 88(2), 2004). Far from every class of the training films -> warn (then
     refuse at the higher threshold).
   - **Residual**: the norm of the feature vector's part outside that principal subspace (the
     PCA reconstruction error; the residual of Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution
     with Virtual-logit Matching", CVPR 2022). Real films live close to the subspace; images the
     network has never seen the like of leave it. In the project's measurements on the validation
     films against unseen stand-ins (drawn CT slices and limbs, half films, crops, documents, noise,
     photos) this score separated them almost perfectly (AUROC 0.97-1.00), better than the
     Mahalanobis distance.
   - a **"frontal chest radiograph?" classifier**: multinomial logistic regression on the
     standardised features, trained at export on training films (with mild exposure and geometry
     changes) against negatives the project makes: the same films inverted and rotated by 90, 180
     and 270 degrees, synthetic images (noise, gradients, flat fields, shapes, rendered documents
     and screenshots), scikit-learn's and matplotlib's sample photos and elevation maps, and the
     pydicom test files (CT, MR, RT dose, secondary captures). Its output names the kind of
     problem: inverted, rotated (by how much), or not a chest radiograph. Rotated films are refused
     with the rotation named, not corrected.
   - the **energy score** ``-logsumexp(logits)`` (Liu, Wang, Owens & Li, "Energy-based
     Out-of-distribution Detection", NeurIPS 2020) is reported among the scores for reference.

   The warn thresholds are set on the validation split (patient-grouped, the checkpoint's own) so
   that at most 1 % of real validation films are flagged; they and the measured false-alarm rate are
   recorded under ``gate`` in ``metadata.json``.

A model folder without gate data still works: the image checks run, the feature checks are skipped
and :attr:`Suitability.feature_checks` is ``False`` (status ``unavailable`` when nothing else is
flagged). This module needs numpy only (no PyTorch, no scikit-learn): it is on the serving path.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deephealth.artifact import ModelArtifactError, sha256_file
from deephealth.readers.dicom import format_age
from deephealth.readers.image import COLOR_WARN_LEVELS

_logger = logging.getLogger(__name__)

GATE_FILE = "gate.npz"
"""File name of the gate's arrays, beside ``model.onnx``."""

ACCEPT, WARN, REFUSE, UNAVAILABLE = "accept", "warn", "refuse", "unavailable"
"""The outcomes (``unavailable``: no gate data for this model and the image checks found nothing)."""

ANNOTATION_BLOCK_FRACTION = 0.02
"""Coloured-pixel fraction within one block of the reader's 8 x 8 grid from which a colour file is
warned for burnt-in coloured annotations (2 % of a block: about 16 pixels of a 224 px image)."""
COLOR_REFUSE_FRACTION = 0.10
"""Coloured-pixel fraction of the whole image from which it is refused as a colour picture."""
ASPECT_WARN = (0.6, 1.7)
"""``width / height`` range outside which an image is warned."""
ASPECT_REFUSE = (0.4, 2.5)
"""``width / height`` range outside which an image is refused."""
BLANK_RANGE_LEVELS = 12
"""1st-99th percentile range (8-bit grey levels, network input) below which an image is refused as near-blank."""
FEATURELESS_DETAIL = 1.0
"""Mean absolute discrete Laplacian (8-bit grey levels, network input) below which an image is refused
as featureless (a smooth gradient, a flat field). Real films measure 2.4 and more at 224 px
(1,445 training and validation films of the pediatric dataset: minimum 2.39, 0.1th percentile 2.50)."""

LR_CLASSES = ("frontal", "inverted", "rotated_90", "rotated_180", "rotated_270", "other")
"""Classes of the "frontal chest radiograph?" classifier, in output order. ``rotated_90`` is a film
rotated 90 degrees clockwise (numpy ``rot90(k=-1)``), ``rotated_270`` one rotated 90 degrees
counter-clockwise."""

_LR_REASONS = {
    "inverted": "it looks like an inverted (negative) chest film: bone dark, air bright; send the film "
    "with bone white",
    "rotated_90": "it looks like a chest film rotated by 90 degrees clockwise; rotate it upright and send it again",
    "rotated_180": "it looks like a chest film turned upside down (rotated by 180 degrees); rotate it "
    "upright and send it again",
    "rotated_270": "it looks like a chest film rotated by 90 degrees counter-clockwise; rotate it upright "
    "and send it again",
    "rotated_side": "it looks like a chest film turned on its side (rotated by 90 degrees); rotate it upright "
    "and send it again",
    "other": "it does not look like a frontal chest radiograph (e.g. a photo, document, screenshot, "
    "lateral view, CT slice or another body part)",
}


LAYOUT_REFUSE = 0.12
"""Two-lung layout score (:func:`lung_layout`) below which an image is refused as not a frontal
chest film. Chosen on the patient-grouped validation split of the official training films (502
films, model-independent: the score reads pixels only): no validation film scores below it
(minimum 0.142); drawn lateral stand-ins score below it in 59 % of cases (docs/gate.md)."""
LAYOUT_WARN = 0.18
"""Two-lung layout score below which an image is warned (and refused if the feature-space checks
flag it too): 0.8 % of the validation films score below it."""

ADULT_AGE_YEARS = 18.0
"""DICOM Patient Age above which the image is warned: the model was trained on children aged 1-5."""

RADIOGRAPH_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}
"""SOP Classes of projection radiographs (DICOM PS3.4 B.5) that may be classified."""
SECONDARY_CAPTURE_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
})
"""Secondary Capture SOP Classes: classified only with a frontal chest header (Body Part Examined
a chest term and View Position AP or PA), since anything can be a secondary capture."""
FRONTAL_VIEWS: frozenset[str] = frozenset({"AP", "PA"})
"""(0018,5101) View Positions of a frontal film."""
LATERAL_VIEWS: frozenset[str] = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LLAT", "RLAT",
                                           "XTABLE LATERAL", "CROSS TABLE LATERAL", "LATERAL DECUBITUS"})
"""View Positions of a lateral film (PS3.3 C.8.11.5.1.1: LL left lateral, RL right lateral, LLD/RLD
left/right lateral decubitus); any value containing the word LATERAL or LAT counts too."""
OBLIQUE_VIEWS: frozenset[str] = frozenset({"LAO", "RAO", "LPO", "RPO", "OBL", "OBLIQUE"})
"""View Positions of an oblique film (left/right anterior/posterior oblique)."""
CHEST_BODY_PARTS: tuple[str, ...] = ("CHEST", "THORAX", "TORAX", "TÓRAX", "THORAC", "LUNG", "PULMON", "TORSO",
                                      "PECHO", "POITRINE", "TORACE")
"""Words of a (0018,0015) Body Part Examined that names the chest (PS3.16 Annex L uses CHEST;
sites write THORAX, TORAX, PECHO, PORTABLE CHEST...)."""
NOT_CHEST_WORDS: tuple[str, ...] = ("SPINE", "COLUMNA", "RACHIS")
"""Words that make a body part another exam even beside a chest word (THORACIC SPINE, TSPINE)."""
UNSPECIFIED_BODY_PARTS: frozenset[str] = frozenset({"", "UNKNOWN", "OTHER", "NONE", "N/A", "NA", "-", "UNSPECIFIED"})
"""Body Part Examined values that say nothing: not a refusal (the pixels decide)."""


ROTATION_SURE = 0.9
"""Share of the two 90-degree classes' probability that one direction must hold before the reason
names it (clockwise or counter-clockwise); below it the reason says "turned on its side" without a
direction (issue 18: a wrong direction misleads more than none). Checked on rotated validation films
(tests/test_gate.py)."""


@dataclass
class Suitability:
    """The gate's verdict on one image.

    Attributes:
        status: ``accept``, ``warn``, ``refuse``, or ``unavailable`` (no feature-space gate for
            this model and the image checks found nothing).
        reasons: one human-readable sentence per problem found (empty for ``accept``).
        scores: the measured values, ``{name: float}``: ``aspect_ratio``, ``intensity_range``
            (8-bit levels), ``detail`` (8-bit levels), ``color_fraction`` / ``color_block_fraction`` (colour files), and with
            a fitted gate ``mahalanobis`` (distance, with ``mahalanobis_warn`` /
            ``mahalanobis_refuse`` thresholds), ``residual`` (with ``residual_warn`` /
            ``residual_refuse``), ``p_frontal`` (probability of a frontal chest film,
            with ``p_frontal_warn`` / ``p_frontal_refuse``) and ``energy``.
        feature_checks: whether the feature-space checks ran (the model has gate data).
    """

    status: str
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    feature_checks: bool = True

    @property
    def refused(self) -> bool:
        """``True`` for ``refuse``."""
        return self.status == REFUSE

    @property
    def flagged(self) -> bool:
        """``True`` for ``warn`` or ``refuse``."""
        return self.status in (WARN, REFUSE)

    def message(self) -> str:
        """The reasons as one line (``"; "``-joined), or the status if there are none."""
        return "; ".join(self.reasons) if self.reasons else self.status

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``status``, ``reasons``, ``scores`` (floats rounded to 4 significant digits), ``feature_checks``."""
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "scores": {k: float(f"{v:.4g}") for k, v in self.scores.items()},
            "feature_checks": bool(self.feature_checks),
        }


class UnsuitableImageError(ValueError):
    """An image the gate refused; ``suitability`` holds the verdict, the message names the file and the reasons.

    A subclass of :class:`ValueError` (like :class:`deephealth.readers.ImageReadError`), so batch
    code that reports bad inputs reports it too.
    """

    def __init__(self, label: str, suitability: Suitability) -> None:
        super().__init__(f"{label}: not suitable for this model: {suitability.message()}")
        self.label = label
        self.suitability = suitability


# ------------------------------------------------------------------------------------ header checks


def _view_kind(view: str) -> str | None:
    """``"lateral"``, ``"oblique"`` or ``None`` for a View Position value (upper-case)."""
    words = set(view.replace("_", " ").replace("-", " ").split())
    if view in LATERAL_VIEWS or words & {"LATERAL", "LAT", "LL", "RL", "LLD", "RLD", "DECUBITUS"}:
        return "lateral"
    if view in OBLIQUE_VIEWS or words & {"OBLIQUE", "OBL", "LAO", "RAO", "LPO", "RPO"}:
        return "oblique"
    return None


def is_chest(body_part: str) -> bool:
    """Whether a Body Part Examined value names the chest (one of :data:`CHEST_BODY_PARTS` in it and none
    of :data:`NOT_CHEST_WORDS`)."""
    text = body_part.upper()
    return any(word in text for word in CHEST_BODY_PARTS) and not any(word in text for word in NOT_CHEST_WORDS)


def header_checks(info: Any) -> tuple[list[str], list[str]]:
    """The verdict of a DICOM header, from the facts the reader recorded on its info object.

    Args:
        info: the reader's :class:`deephealth.readers.ImageInfo`; reads ``view_position``,
            ``sop_class_uid``, ``sop_class_name``, ``body_part`` and ``patient_age`` /
            ``patient_age_years``. Missing attributes or empty values are no reason (pictures
            have none of them): the pixels decide.

    Returns:
        ``(refusals, warnings)``: one sentence each, naming the DICOM tag and its value:

        - View Position lateral (LL, RL, LATERAL, LLD, RLD...) or oblique (LAO, RAO...): refused;
        - SOP Class UID not in :data:`RADIOGRAPH_SOP_CLASSES`: refused (a Secondary Capture
          only without a frontal chest header: Body Part Examined naming the chest and View
          Position AP or PA);
        - Body Part Examined naming another part than the chest: refused;
        - Patient Age above :data:`ADULT_AGE_YEARS`: warned, the age written out
          (:func:`deephealth.readers.dicom.format_age`: ``"adult patient (age 45 years)"``).
    """
    refuse: list[str] = []
    warn: list[str] = []
    view = str(getattr(info, "view_position", None) or "").strip().upper()
    kind = _view_kind(view) if view else None
    if kind:
        article = "an" if kind == "oblique" else "a"
        refuse.append(f"DICOM View Position (0018,5101) is {view}: {article} {kind} view; the model reads only "
                      "frontal (AP or PA) chest films")
    body = str(getattr(info, "body_part", None) or "").strip().upper()
    if body not in UNSPECIFIED_BODY_PARTS and not is_chest(body):
        refuse.append(f"DICOM Body Part Examined (0018,0015) is {body}: not the chest")
    uid = str(getattr(info, "sop_class_uid", None) or "").strip()
    if uid and uid not in RADIOGRAPH_SOP_CLASSES:
        name = getattr(info, "sop_class_name", None)
        named = f"{uid} ({name})" if name else uid
        if uid in SECONDARY_CAPTURE_SOP_CLASSES:
            if not (is_chest(body) and view in FRONTAL_VIEWS):
                refuse.append(f"DICOM SOP Class UID (0008,0016) is {named} without a frontal chest header "
                              "(Body Part Examined CHEST and View Position AP or PA)")
        else:
            refuse.append(f"DICOM SOP Class UID (0008,0016) is {named}: not a radiograph "
                          "(expected CR or DX image storage)")
    years = getattr(info, "patient_age_years", None)
    if years is not None and float(years) > ADULT_AGE_YEARS:
        age = format_age(getattr(info, "patient_age", None)) or f"{float(years):g} years"
        warn.append(f"adult patient (age {age}): the model was trained on children aged 1-5 years")
    return refuse, warn


# ------------------------------------------------------------------------------------- image checks


def intensity_range(quantized: np.ndarray) -> float:
    """1st-99th percentile range of 8-bit intensities, in grey levels (0-255).

    Args:
        quantized: ``(S, S)`` uint8 network input before normalisation
            (:func:`deephealth.preprocessing.resize_to_input`).

    Returns:
        ``p99 - p1`` as a float, from the 256-bin histogram (fast: no sort).
    """
    counts = np.bincount(np.asarray(quantized, dtype=np.uint8).ravel(), minlength=256)
    cdf = np.cumsum(counts) / max(int(counts.sum()), 1)
    lo = int(np.searchsorted(cdf, 0.01))
    hi = int(np.searchsorted(cdf, 0.99))
    return float(hi - lo)


def detail(quantized: np.ndarray) -> float:
    """Mean absolute discrete Laplacian ``|4x - up - down - left - right|`` of the 8-bit input, in grey levels.

    Args:
        quantized: ``(S, S)`` uint8 network input before normalisation.

    Returns:
        A float >= 0; 0 for a flat field or a linear gradient.
    """
    q = np.asarray(quantized)
    if q.shape[0] < 3 or q.shape[1] < 3:
        return 0.0
    # ((((4x - up) - down) - left) - right), in place (no temporaries). For uint8 input in int16,
    # which holds every value exactly (|lap| <= 1020), as float32 does: the same float32 |lap| as
    # the float32 computation, in half its time; other input in float32.
    q = q.astype(np.int16) if q.dtype == np.uint8 else q.astype(np.float32, copy=False)
    lap = q[1:-1, 1:-1] * q.dtype.type(4)
    lap -= q[:-2, 1:-1]
    lap -= q[2:, 1:-1]
    lap -= q[1:-1, :-2]
    lap -= q[1:-1, 2:]
    return float(np.abs(lap, out=lap).astype(np.float32, copy=False).mean())


LAYOUT_GRID = 64
"""Side of the box-averaged copy of the network input that :func:`lung_layout` reads."""
_SMOOTH_5 = np.full(5, 0.2)
"""The 5-column moving-average kernel of :func:`lung_layout`'s profile (float64)."""


@functools.lru_cache(maxsize=8)
def _layout_edges(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block edges of the :data:`LAYOUT_GRID` grid over an ``(h, w)`` image (per size, cached).

    Returns:
        ``(ys, xs, area)``: ``(n + 1,)`` int row and column edges (``linspace(0, side, n + 1)``
        rounded down) and the ``(n, n)`` int64 pixel counts of the blocks, ``n = LAYOUT_GRID``.
    """
    n = LAYOUT_GRID
    ys, xs = np.linspace(0, h, n + 1).astype(int), np.linspace(0, w, n + 1).astype(int)
    area = np.outer(np.diff(ys), np.diff(xs))
    for a in (ys, xs, area):
        a.setflags(write=False)  # shared between calls
    return ys, xs, area


def _run_sums(a: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sums of the rows of ``a`` over the runs ``[edges[i], edges[i + 1])``, adding row after row.

    What ``np.add.reduceat(a, edges[:-1], axis=0)`` computes, with one vectorised step per row of
    a run instead of one per run (runs are short: about 3 rows at 192 px), several times faster.
    Identical for integer-valued input such as the uint8 network input (every sum exact in
    float32 up to 2,048 px); other floats may differ in the last bit (another order of additions).

    Args:
        a: ``(H, W)`` float array; edges: ``(n + 1,)`` increasing int row edges, ``edges[-1] <= H``.

    Returns:
        ``(n, W)`` array of ``a``'s dtype.
    """
    start, stop = edges[:-1], edges[1:]
    out = a[start]  # a copy (fancy indexing)
    for i in range(1, int((stop - start).max())):
        row = start + i
        inside = row < stop
        if inside.all():
            out += a[row]
        else:
            out[inside] += a[row[inside]]
    return out


def _block_sums(q: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``(n, n)`` float32 sums of ``q`` over the blocks between the row edges ``ys`` and column edges ``xs``.

    When every block has the same ``ky x kx`` size (``192 / 64 = 3``: the model's input) the rows
    and then the columns of each block are added with strided slices, else with :func:`_run_sums`.
    Both make the same additions in the same order (first row or column, plus the next, ...), so
    the values are the same bit for bit, for any input.

    Args:
        q: ``(H, W)`` float32 image; ys, xs: ``(n + 1,)`` row and column edges (:func:`_layout_edges`).
    """
    ky, kx = int(ys[1] - ys[0]), int(xs[1] - xs[0])
    if not (ky > 0 and kx > 0 and np.array_equal(ys, np.arange(len(ys)) * ky)
            and np.array_equal(xs, np.arange(len(xs)) * kx)):
        return np.ascontiguousarray(_run_sums(_run_sums(q, ys).T, xs).T)
    rows = q[0::ky].copy()  # (n, W)
    for i in range(1, ky):
        rows += q[i::ky]
    out = rows[:, 0::kx].copy()  # (n, n)
    for j in range(1, kx):
        out += rows[:, j::kx]
    return out


def lung_layout(quantized: np.ndarray) -> float:
    """Two-lung layout score of a film: how much brighter the middle is than both sides.

    The network input is box-averaged to :data:`LAYOUT_GRID` px square; the column means of rows
    20-65 % (the lung fields above the diaphragm), smoothed over 5 columns, form a profile. The
    score is ``min(centre - darkest left, centre - darkest right) / (p99 - p1)``: the brightest
    column of the middle (38-62 % of the width: the mediastinum and spine of a frontal film) minus
    the darkest column on each side (8-45 % and 55-92 %: the two lungs), divided by the image's
    1st-99th percentile intensity range. A frontal film has two dark lungs either side of a bright
    mediastinum (validation films: median 0.47, minimum 0.14); a lateral film has one dark field
    across the middle and the spine at one edge, so one side has no darker column than the middle
    (drawn lateral stand-ins: median 0.10).

    Args:
        quantized: ``(S, S)`` uint8 network input before normalisation.

    Returns:
        The score, a float in about [-1, 1]; 0 for a flat image.
    """
    q = np.asarray(quantized, dtype=np.float32)
    h, w = q.shape
    n = LAYOUT_GRID
    if h < n or w < n:
        return 0.0
    ys, xs, area = _layout_edges(h, w)
    # Block sums, rows then columns (exact for the uint8 input: the reduceat sums bit for bit).
    # Not a matrix product: OpenBLAS would start a second thread for it, which then busy-waits
    # beside ONNX Runtime's threads.
    a = _block_sums(q, ys, xs)  # (n, n) float32, C order
    a /= area
    profile = a[int(0.2 * n):int(0.65 * n)].mean(axis=0)
    # 5-column moving average, the two end columns repeated (np.pad's "edge" mode, without its overhead)
    edged = np.concatenate((profile[:1], profile[:1], profile, profile[-1:], profile[-1:]))
    profile = np.convolve(edged, _SMOOTH_5, mode="valid")
    lo, hi = np.percentile(a, [1, 99])
    centre = profile[int(0.38 * n):int(0.62 * n)].max()
    left, right = profile[int(0.08 * n):int(0.45 * n)].min(), profile[int(0.55 * n):int(0.92 * n)].min()
    return float(min(centre - left, centre - right) / max(float(hi - lo), 1.0))


def image_checks(
    info: Any, quantized: np.ndarray, analysed_shape: tuple[int, int] | None = None
) -> tuple[list[str], list[str], dict[str, float]]:
    """The model-independent checks (colour, aspect ratio, near-blank); see the module docstring.

    Args:
        info: the reader's :class:`deephealth.readers.ImageInfo` (``width``, ``height``,
            ``color_fraction``, ``color_block_fraction``; missing attributes skip their check).
        quantized: ``(S, S)`` uint8 network input before normalisation.
        analysed_shape: ``(height, width)`` of the region the model analyses, in decoded pixels,
            when the preprocessing removed a uniform border (letterboxing); its aspect ratio is
            judged instead of the file's. ``None``: the whole image.

    Returns:
        ``(refusals, warnings, scores)``: reasons to refuse, reasons to warn, and the measured values.
    """
    refuse: list[str] = []
    warn: list[str] = []
    scores: dict[str, float] = {}

    cf = getattr(info, "color_fraction", None)
    cb = getattr(info, "color_block_fraction", None)
    if cf is not None:
        scores["color_fraction"] = float(cf)
        scores["color_block_fraction"] = float(cb or 0.0)
        if cf >= COLOR_REFUSE_FRACTION:
            refuse.append(
                f"colour image ({100 * cf:.0f} % of pixels are coloured): a photo or drawing, not a radiograph"
            )
        elif (cb or 0.0) >= ANNOTATION_BLOCK_FRACTION:
            warn.append(
                f"burnt-in coloured annotations (arrows, letters or marks; up to {100 * cb:.0f} % of a region "
                "is coloured): they hide anatomy and may mislead the model"
            )
        else:
            spread = getattr(info, "color_spread", None)
            if spread is not None and float(spread) > COLOR_WARN_LEVELS:  # tinted, few coloured pixels
                warn.append(
                    f"colour image (channels differ by {float(spread):.1f} grey levels on average): "
                    "it may be a photo rather than a radiograph; converted to grayscale"
                )

    w, h = int(getattr(info, "width", 0) or 0), int(getattr(info, "height", 0) or 0)
    dh, dw = int(getattr(info, "decoded_height", 0) or 0), int(getattr(info, "decoded_width", 0) or 0)
    if analysed_shape is not None and (analysed_shape[0], analysed_shape[1]) != (dh, dw) and w > 0 and h > 0:
        # a border was removed: the analysed box, scaled to the file's full resolution
        ah, aw = analysed_shape
        w, h = round(aw * w / max(dw, 1)), round(ah * h / max(dh, 1))
    if w > 0 and h > 0:
        ratio = w / h
        scores["aspect_ratio"] = ratio
        shape = f"{w} x {h} px, width/height {ratio:.2f}"
        if not ASPECT_REFUSE[0] <= ratio <= ASPECT_REFUSE[1]:
            refuse.append(f"unusual shape for a chest film ({shape}): a screenshot strip or panorama?")
        elif not ASPECT_WARN[0] <= ratio <= ASPECT_WARN[1]:
            warn.append(f"unusual shape for a chest film ({shape}); the model squashes it to a square")

    rng = intensity_range(quantized)
    scores["intensity_range"] = rng
    if rng < BLANK_RANGE_LEVELS:
        refuse.append(
            f"near-blank image (98 % of pixels within {rng:.0f} grey levels): no visible anatomy"
        )
    else:
        det = detail(quantized)
        scores["detail"] = det
        if det < FEATURELESS_DETAIL:
            refuse.append(
                f"featureless image (detail {det:.2f} grey levels, radiographs have 2.4 or more): "
                "a smooth gradient or a heavily blurred picture, no visible anatomy"
            )
    return refuse, warn, scores


# ------------------------------------------------------------------------------------ feature gate


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


@dataclass(frozen=True)
class FeatureGate:
    """The fitted feature-space gate (arrays from ``gate.npz``, thresholds from ``metadata.json``).

    Attributes:
        feat_mean: ``(Cf,)`` float32 mean of the training features (PCA centre).
        components: ``(k, Cf)`` float32 PCA axes (rows, orthonormal).
        class_means: ``(C, k)`` float32 class means of the training films in PCA space.
        precision: ``(k, k)`` float32 inverse of the shared (tied) within-class covariance, Ledoit-Wolf shrunk.
        lr_mean: ``(Cf,)`` float32 standardisation mean for the logistic regression.
        lr_scale: ``(Cf,)`` float32 standardisation scale (> 0).
        lr_coef: ``(K, Cf)`` float32 multinomial logistic-regression weights, classes :data:`LR_CLASSES`.
        lr_intercept: ``(K,)`` float32 intercepts.
        thresholds: ``mahalanobis_warn``, ``mahalanobis_refuse``, ``residual_warn``,
            ``residual_refuse``, ``p_frontal_warn``, ``p_frontal_refuse``.
    """

    feat_mean: np.ndarray
    components: np.ndarray
    class_means: np.ndarray
    precision: np.ndarray
    lr_mean: np.ndarray
    lr_scale: np.ndarray
    lr_coef: np.ndarray
    lr_intercept: np.ndarray
    thresholds: dict[str, float]
    _f64: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)
    """float64 copies of the arrays the scores multiply by, made once (not per image)."""

    ARRAYS = ("feat_mean", "components", "class_means", "precision", "lr_mean", "lr_scale", "lr_coef", "lr_intercept")
    THRESHOLDS = ("mahalanobis_warn", "mahalanobis_refuse", "residual_warn", "residual_refuse",
                  "p_frontal_warn", "p_frontal_refuse")
    OPTIONAL_THRESHOLDS = ("residual_warn", "residual_refuse")
    """Absent in gates fitted before the residual score existed (model 0.2.0 as released): that check is skipped."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_f64", {
            "components": self.components.astype(np.float64),  # (k, Cf)
            "class_means": self.class_means.astype(np.float64),
            "precision": self.precision.astype(np.float64),
            "lr_coef_t": self.lr_coef.T.astype(np.float64),
        })

    @property
    def num_features(self) -> int:
        """``Cf``, the feature dimension this gate was fitted for."""
        return int(self.feat_mean.shape[0])

    def save(self, path: str | Path) -> None:
        """Write the arrays to an ``.npz`` file (uncompressed, no pickled objects)."""
        np.savez(path, **{k: np.asarray(getattr(self, k), dtype=np.float32) for k in self.ARRAYS})

    @classmethod
    def load(cls, path: str | Path, thresholds: dict[str, Any]) -> FeatureGate:
        """Read ``gate.npz`` and the thresholds.

        Raises:
            ModelArtifactError: if the file cannot be read, an array or threshold is missing, or the shapes disagree.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k], dtype=np.float32) for k in cls.ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelArtifactError(f"{path}: cannot read the gate data ({exc})") from exc
        missing = [k for k in cls.THRESHOLDS if k not in thresholds and k not in cls.OPTIONAL_THRESHOLDS]
        if missing:
            raise ModelArtifactError(f"{path}: gate thresholds missing in metadata.json: {', '.join(missing)}")
        cf = arrays["feat_mean"].shape[0]
        k = arrays["components"].shape[0]
        ok = (
            arrays["components"].shape == (k, cf)
            and arrays["class_means"].shape[1:] == (k,)
            and arrays["precision"].shape == (k, k)
            and arrays["lr_mean"].shape == (cf,)
            and arrays["lr_scale"].shape == (cf,)
            and arrays["lr_coef"].shape == (len(LR_CLASSES), cf)
            and arrays["lr_intercept"].shape == (len(LR_CLASSES),)
        )
        if not ok:
            raise ModelArtifactError(f"{path}: gate arrays have inconsistent shapes")
        return cls(**arrays, thresholds={k: float(thresholds[k]) for k in cls.THRESHOLDS if k in thresholds})

    def mahalanobis(self, features: np.ndarray) -> np.ndarray:
        """Distance to the nearest class mean under the shared covariance (Lee et al., 2018).

        Args:
            features: ``(N, Cf)`` pooled features.

        Returns:
            ``(N,)`` float64 distances ``min_c sqrt((z - mu_c)^T P (z - mu_c))`` with
            ``z = (f - mean) @ components.T`` (PCA space) and ``P`` the shrunk precision.
        """
        return self._mahalanobis_pca(self._pca(features)[1])

    def residual(self, features: np.ndarray) -> np.ndarray:
        """Norm of the features' part outside the principal subspace (PCA reconstruction error; Wang et al., 2022).

        Args:
            features: ``(N, Cf)`` pooled features.

        Returns:
            ``(N,)`` float64 ``|c - c V^T V|`` with ``c = f - mean`` and ``V`` the ``(k, Cf)`` PCA axes.
        """
        return self._residual_pca(*self._pca(features))

    def _pca(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(c, z)``: the centred ``(N, Cf)`` float64 features ``f - mean`` and their ``(N, k)``
        PCA coordinates ``c @ V^T``, which the distance and the residual share."""
        c = np.asarray(features, dtype=np.float64) - self.feat_mean
        return c, c @ self._f64["components"].T

    def _mahalanobis_pca(self, z: np.ndarray) -> np.ndarray:
        """:meth:`mahalanobis` from the ``(N, k)`` PCA coordinates."""
        d = z[:, None, :] - self._f64["class_means"][None]  # (N, C, k)
        m2 = np.einsum("nck,kl,ncl->nc", d, self._f64["precision"], d)
        return np.sqrt(np.maximum(m2.min(axis=1), 0.0))

    def _residual_pca(self, c: np.ndarray, z: np.ndarray) -> np.ndarray:
        """:meth:`residual` from the centred features and their PCA coordinates."""
        return np.linalg.norm(c - z @ self._f64["components"], axis=1)

    def lr_probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(N, K)`` float64 probabilities of the classes :data:`LR_CLASSES` (softmax of the logistic regression)."""
        x = (np.asarray(features, dtype=np.float64) - self.lr_mean) / self.lr_scale
        z = x @ self._f64["lr_coef_t"] + self.lr_intercept
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def scores(self, features: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        """All feature-space scores for a batch.

        Args:
            features: ``(N, Cf)`` pooled features; logits: ``(N, 3)`` raw logits.

        Returns:
            ``{"mahalanobis": (N,), "residual": (N,), "p_frontal": (N,), "lr_class": (N,) int,
            "p_rotated_90": (N,), "p_rotated_270": (N,), "energy": (N,)}``.
        """
        p = self.lr_probabilities(features)
        c, z = self._pca(features)  # one projection for both scores
        return {
            "mahalanobis": self._mahalanobis_pca(z),
            "residual": self._residual_pca(c, z),
            "p_frontal": p[:, 0],
            "lr_class": p[:, 1:].argmax(axis=1) + 1,  # the most likely problem, if any
            "p_rotated_90": p[:, LR_CLASSES.index("rotated_90")],
            "p_rotated_270": p[:, LR_CLASSES.index("rotated_270")],
            "energy": -_logsumexp(np.asarray(logits, dtype=np.float64)),
        }


# -------------------------------------------------------------------------------------------- gate


class Gate:
    """Decides accept / warn / refuse for images of one model.

    Args:
        features: the fitted :class:`FeatureGate`, or ``None`` (image checks only).

    Use :meth:`for_artifact` to load the gate a model folder records.
    """

    def __init__(self, features: FeatureGate | None = None) -> None:
        self.features = features

    @property
    def available(self) -> bool:
        """Whether the feature-space checks are fitted for this model."""
        return self.features is not None

    @classmethod
    def for_artifact(cls, artifact: Any, verify: bool = True) -> Gate:
        """The gate a model folder records under ``gate`` in ``metadata.json`` (image checks only if none).

        Args:
            artifact: a :class:`deephealth.artifact.ModelArtifact`.
            verify: check ``gate.npz``'s SHA-256 against ``metadata.json``.

        Raises:
            ModelArtifactError: if the metadata names a gate file that is missing, corrupted
                (checksum) or malformed.
        """
        meta = artifact.metadata.get("gate")
        if not meta:
            _logger.info("model %s has no input gate data: image checks only", artifact.name)
            return cls(None)
        path = Path(artifact.directory) / str(meta.get("file", GATE_FILE))
        if not path.is_file():
            raise ModelArtifactError(f"gate file missing: {path}")
        if verify and meta.get("sha256") and sha256_file(path) != meta["sha256"]:
            raise ModelArtifactError(
                f"{path}: SHA-256 does not match metadata.json: the gate file is corrupted or was replaced"
            )
        return cls(FeatureGate.load(path, meta.get("thresholds", {})))

    def assess(
        self, info: Any, quantized: np.ndarray, features: np.ndarray | None, logits: np.ndarray,
        analysed_shape: tuple[int, int] | None = None,
    ) -> Suitability:
        """The verdict on one image.

        Args:
            info: the reader's :class:`~deephealth.readers.ImageInfo`.
            quantized: ``(S, S)`` uint8 network input before normalisation.
            features: ``(Cf,)`` pooled features of this image (``None`` if the model has none).
            logits: ``(3,)`` raw logits.
            analysed_shape: ``(height, width)`` of the analysed region when a border was removed
                (see :func:`image_checks`).

        Returns:
            The :class:`Suitability`.
        """
        head_refuse, head_warn = header_checks(info)
        refuse, warn, scores = image_checks(info, quantized, analysed_shape)
        layout = lung_layout(quantized)
        scores.update(lung_layout=layout, lung_layout_warn=LAYOUT_WARN, lung_layout_refuse=LAYOUT_REFUSE)
        feature_flag = False
        lr_kind, lr_named = "other", ""  # the feature classifier's named problem when it warned
        fg = self.features
        if fg is not None and features is not None:
            s = fg.scores(np.asarray(features)[None], np.asarray(logits)[None])
            t = fg.thresholds
            d, p, res = float(s["mahalanobis"][0]), float(s["p_frontal"][0]), float(s["residual"][0])
            distances = [("mahalanobis", d, "feature distance")]
            if "residual_warn" in t:
                distances.append(("residual", res, "feature residual"))
                scores.update(residual=res, residual_warn=t["residual_warn"], residual_refuse=t["residual_refuse"])
            scores.update(
                mahalanobis=d, mahalanobis_warn=t["mahalanobis_warn"], mahalanobis_refuse=t["mahalanobis_refuse"],
                p_frontal=p, p_frontal_warn=t["p_frontal_warn"], p_frontal_refuse=t["p_frontal_refuse"],
                energy=float(s["energy"][0]),
            )
            kind = LR_CLASSES[int(s["lr_class"][0])]
            if kind in ("rotated_90", "rotated_270"):
                r90, r270 = float(s["p_rotated_90"][0]), float(s["p_rotated_270"][0])
                if max(r90, r270) < ROTATION_SURE * (r90 + r270):
                    kind = "rotated_side"  # the direction is not clear: name none
            if p < t["p_frontal_refuse"]:
                refuse.append(f"{_LR_REASONS[kind]} (P(frontal chest film) = {p:.2f})")
            elif p < t["p_frontal_warn"]:
                lr_kind, lr_named = kind, f"{_LR_REASONS[kind]} (P(frontal chest film) = {p:.2f}"
                warn.append(f"{_LR_REASONS[kind]} (P(frontal chest film) = {p:.2f}, below {t['p_frontal_warn']:.2f})")
            far = [(label, value, t[f"{name}_refuse"]) for name, value, label in distances if value > t[f"{name}_refuse"]]
            odd = [(label, value, t[f"{name}_warn"]) for name, value, label in distances if value > t[f"{name}_warn"]]
            feature_flag = bool(far or odd or p < t["p_frontal_warn"])
            if far:
                refuse.append("unlike the chest films the model was trained on ("
                              + ", ".join(f"{lb} {v:.1f}, refusal limit {lim:.1f}" for lb, v, lim in far) + ")")
            elif odd and not refuse:  # a refusal already says more than "unusual"
                warn.append("unusual for the chest films the model was trained on ("
                            + ", ".join(f"{lb} {v:.1f}, limit {lim:.1f}" for lb, v, lim in odd)
                            + "): check the result with care")
        if layout < LAYOUT_WARN and not refuse:  # a refusal above already names the problem
            if layout < LAYOUT_REFUSE or feature_flag:
                if lr_kind != "other":  # inverted or rotated: that names the problem better
                    refuse.append(f"{lr_named}, two-lung layout {layout:.2f})")
                else:
                    why = f"below {LAYOUT_REFUSE:.2f}" if layout < LAYOUT_REFUSE else (
                        f"below {LAYOUT_WARN:.2f}, and the network's features are unusual too")
                    refuse.append(f"not a frontal chest film: no two lung fields either side of the mediastinum "
                                  f"(two-lung layout {layout:.2f}, {why}); a lateral view or another projection? "
                                  "send the frontal (PA or AP) film")
                warn = [w for w in warn if not w.startswith(("unusual for the chest films", "it "))]
            else:
                warn.append(f"unusual layout for a frontal chest film (two-lung layout {layout:.2f}, below "
                            f"{LAYOUT_WARN:.2f}): check that this is a frontal (PA or AP) view")
        available = fg is not None and features is not None
        refuse, warn = head_refuse + refuse, head_warn + warn
        if refuse:
            return Suitability(REFUSE, refuse + warn, scores, available)
        if warn:
            return Suitability(WARN, warn, scores, available)
        return Suitability(ACCEPT if available else UNAVAILABLE, [], scores, available)
