"""Public JSON shapes of the REST API (pydantic models; they also generate the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ClassProbability(BaseModel):
    """One class of the 0/1/2 scale with its calibrated probability."""

    index: int = Field(description="class index on the prototype's scale: 0 normal, 1 bacterial, 2 viral", ge=0)
    name: str = Field(description="class name: normal, bacterial or viral")
    description: str = Field(description="human-readable class name, e.g. 'Bacterial pneumonia (e.g. Streptococcus)'")
    probability: float = Field(description="calibrated probability in [0, 1]; the three sum to 1", ge=0, le=1)


class ModelRef(BaseModel):
    """The model that produced a result."""

    name: str
    version: str
    sha256: str = Field(description="SHA-256 of the ONNX file")


class ImageInfoPublic(BaseModel):
    """What the reader learned about the uploaded file."""

    filename: str = Field(description="file name as uploaded")
    format: str = Field(description="file format detected by the reader, e.g. JPEG, PNG, DICOM")
    width: int = Field(description="full-resolution image width in pixels")
    height: int = Field(description="full-resolution image height in pixels")
    bit_depth: int | None = Field(default=None, description="stored bits per pixel")
    photometric_interpretation: str | None = Field(default=None, description="DICOM (0028,0004), e.g. MONOCHROME2")
    modality: str | None = Field(default=None, description="DICOM (0008,0060), e.g. CR or DX")
    view_position: str | None = Field(default=None, description="DICOM (0018,5101), e.g. PA or AP")
    size_bytes: int = Field(description="uploaded file size in bytes")
    border_crop: dict[str, int] | None = Field(
        default=None,
        description="uniform border (letterboxing, padding) removed before analysis: top, bottom, left, right "
        "of the analysed box in decoded pixels; null when nothing was removed",
    )


class DecisionPublic(BaseModel):
    """How the label follows from the probabilities (the model's operating point), and whether the film is borderline."""

    rule: str = Field(description="the decision rule in words")
    pneumonia_probability: float = Field(description="1 - P(normal): calibrated probability of pneumonia, in [0, 1]")
    threshold: float | None = Field(
        default=None,
        description="pneumonia is called when pneumonia_probability >= threshold (chosen on validation data for "
        "target_sensitivity); null: the label is the most probable class",
    )
    target_sensitivity: float | None = Field(default=None, description="sensitivity the threshold was chosen for")
    review: bool = Field(
        default=False,
        description="true: the film lies in the operating point's review band (P(pneumonia) this close to the "
        "threshold, or called pneumonia with bacterial vs viral this balanced), so a change of the film that does "
        "not change the diagnosis (re-export, slight rotation) can change the label. The label is kept but is no "
        "reliable answer: with review_kind 'pneumonia_vs_normal' give it no weight (a flagged normal is not a "
        "negative result); with 'bacterial_vs_viral' the pneumonia call stands and only its kind is undecided. "
        "Always false for a model without a review band",
    )
    review_kind: str | None = Field(
        default=None, description="with review=true: the borderline decision, machine-readable and never translated: "
        "'pneumonia_vs_normal' or 'bacterial_vs_viral' (null otherwise)"
    )
    review_reason: str | None = Field(
        default=None, description="with review=true: which decision is borderline, in words (null otherwise)"
    )


class SuitabilityPublic(BaseModel):
    """The input gate's verdict: is this a frontal chest radiograph the model can be trusted on?"""

    status: str = Field(
        description="accept; warn (classified, but flagged); refuse (not classified: HTTP 422 unless "
        "allow_unsuitable=true); unavailable (this model has no fitted gate and the image checks found nothing)"
    )
    reasons: list[str] = Field(description="one human-readable sentence per problem found")
    scores: dict[str, float] = Field(
        description="measured values and thresholds: aspect_ratio, intensity_range, color_fraction, "
        "mahalanobis (feature distance) with mahalanobis_warn/_refuse, p_frontal with p_frontal_warn/_refuse, energy"
    )
    feature_checks: bool = Field(description="whether the feature-space checks ran (the model has gate data)")


class UnsuitableResponse(BaseModel):
    """422 answer: ``detail`` names the file and the problem; ``suitability`` is set when the input gate refused it."""

    detail: str
    suitability: SuitabilityPublic | None = Field(
        default=None, description="the gate's verdict, for an image it refused (absent for an unreadable file)"
    )


class PredictionPublic(BaseModel):
    """Response of ``POST /api/v1/predictions``."""

    label: str = Field(description="predicted class name: normal, bacterial or viral")
    label_index: int = Field(description="predicted class on the 0/1/2 scale (0 no pneumonia, 1 bacterial, 2 viral)")
    label_description: str = Field(description="human-readable predicted class")
    probabilities: dict[str, float] = Field(
        description="calibrated probability of each class (normal, bacterial, viral), summing to 1"
    )
    classes: list[ClassProbability] = Field(description="the three classes in index order with their probabilities")
    decision: DecisionPublic | None = Field(default=None, description="how the label follows from the probabilities")
    warnings: list[str] = Field(description="problems noticed in the image that may make the result less reliable")
    suitability: SuitabilityPublic | None = Field(
        default=None, description="the input gate's verdict (status, reasons, scores); a 'refuse' appears here only "
        "with allow_unsuitable=true"
    )
    model: ModelRef
    image: ImageInfoPublic
    heatmap_png: str | None = Field(
        default=None,
        description="with heatmap=true: base64 PNG of the class activation heatmap (jet colours, alpha 0.4) over the "
        "decoded image, longest side at most 1024 px",
    )
    preview_png: str | None = Field(
        default=None,
        description="with preview=true: base64 PNG of the decoded grayscale image as read (before the square resize), "
        "longest side at most 1024 px",
    )
    latency_ms: float = Field(description="server-side time to read and classify the image, in milliseconds")
    intended_use: str = Field(description="decision support, not a diagnosis")


class ClassInfo(BaseModel):
    """A class in the model's output order."""

    index: int
    name: str
    description: str


class ModelCard(BaseModel):
    """Response of ``GET /api/v1/model``: what the model is, how it was scored and what it is for."""

    name: str
    version: str
    sha256: str = Field(description="SHA-256 of the ONNX file")
    classes: list[ClassInfo]
    temperature: float = Field(description="temperature-scaling calibration: probabilities = softmax(logits / T)")
    preprocessing: dict[str, Any] = Field(description="the preprocessing contract (PreprocessConfig)")
    architecture: Any | None = None
    training: Any | None = None
    data: Any | None = None
    validation_metrics: Any | None = Field(default=None, description="metrics on the validation split")
    test_metrics: Any | None = Field(
        default=None, description="headline metrics on the official test split (from the evaluation report)"
    )
    test_review_band: Any | None = Field(
        default=None, description="the review band on the official test split (from the evaluation report): films "
        "flagged (n_review, review_rate, by_reason), accuracy / sensitivity / specificity with flagged films counted "
        "as errors (review_as_error) and among the films not flagged (not_flagged); null without a band",
    )
    summary: Any | None = None
    gate: Any | None = Field(
        default=None, description="the input gate: thresholds, validation false-alarm rate, method (null: not fitted)"
    )
    operating_point: Any | None = Field(
        default=None,
        description="the decision threshold: pneumonia when 1 - P(normal) >= threshold, chosen on validation films for "
        "target_sensitivity (null: arg-max)",
    )
    initialisation: Any | None = Field(
        default=None, description="where pretrained weights came from (source, licence, SHA-256), or random"
    )
    adaptation: Any | None = Field(
        default=None,
        description="for a site-adapted model (deephealth adapt): method, number of films, date, source model "
        "(null: not adapted)",
    )
    created: str | None = None
    intended_use: str


class AuditStatus(BaseModel):
    """The audit trail's state in ``/healthz``."""

    enabled: bool = Field(description="whether predictions are recorded")
    database: str | None = Field(default=None, description="database URL without its password")
    written: int = Field(description="records written since the service started")
    failures: int = Field(description="records that could not be written (database errors); predictions went on")
    error: str | None = Field(default=None, description="the last database error, while it lasts")


class Health(BaseModel):
    """Response of ``GET /healthz``."""

    status: Literal["ok", "degraded"] = Field(
        description="'ok': the model is loaded and, when the audit trail is on, it records; 'degraded': "
        "predictions are served but something they need is failing (see problems), e.g. the audit trail's "
        "last write failed. HTTP status stays 200 either way: monitor this field"
    )
    problems: list[str] = Field(default_factory=list, description="why the status is 'degraded'; empty when 'ok'")
    model: str
    version: str
    max_upload_bytes: int = Field(description="largest accepted upload in bytes")
    audit: AuditStatus | None = Field(default=None, description="state of the audit trail")


class ErrorResponse(BaseModel):
    """Every error: ``detail`` names the problem (and the file, for image errors)."""

    detail: str
