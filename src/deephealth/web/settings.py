"""Service settings, read from environment variables with the ``DEEPHEALTH_`` prefix.

=============================  ===========================================================
Variable                       Meaning
=============================  ===========================================================
``DEEPHEALTH_MODEL_DIR``       model folder (``model.onnx`` + ``metadata.json``); default:
                               the model bundled in the package (:func:`deephealth.paths.default_model_dir`)
``DEEPHEALTH_MAX_UPLOAD_MB``   largest accepted upload in MiB (default 32); larger uploads get
                               HTTP 413, enforced while the request body is read
``DEEPHEALTH_MAX_CONCURRENCY`` images decoded and classified at the same time (default 4);
                               further requests wait their turn (bounds memory: a 50-megapixel
                               image takes 200 MB as float32)
``DEEPHEALTH_LOG_LEVEL``       log level of the ``deephealth`` loggers (default ``INFO``)
``DEEPHEALTH_AUDIT``           record every prediction in the audit trail (default ``true``);
                               the server's setting only: the CLI records with ``--audit``
``DEEPHEALTH_DATABASE_URL``    SQLAlchemy URL of the audit trail; default: the SQLite file
                               ``audit.sqlite3`` in ``DEEPHEALTH_STATE_DIR`` (default
                               ``~/.local/state/deephealth``); PostgreSQL:
                               ``postgresql+psycopg://user:password@host/deephealth``
``DEEPHEALTH_ADMIN_API_KEY``   enables ``GET /api/v1/audit`` for clients that send it as
                               ``Authorization: Bearer <key>``; unset (default): that route is off
``DEEPHEALTH_ROOT_PATH``       URL path under which a reverse proxy publishes the app, e.g.
                               ``/deephealth`` (the proxy strips it before forwarding); the pages,
                               ``/docs``, ``/redoc`` and OpenAPI ``servers`` then point under it.
                               Default: empty (served at ``/``)
=============================  ===========================================================

Settings are parsed by pydantic-settings (https://docs.pydantic.dev/latest/concepts/pydantic_settings/).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deephealth.paths import default_model_dir

# One path segment: RFC 3986 "unreserved" characters only (no spaces, '?', '#', '%' or non-ASCII).
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def normalize_root_path(value: str) -> str:
    """Check and normalise the URL path prefix a reverse proxy serves the app under.

    Args:
        value: e.g. ``/deephealth`` or ``/apps/deephealth/``; surrounding spaces and trailing
            slashes are removed; ``""`` or ``/`` mean no prefix.

    Returns:
        The prefix without a trailing slash (``/deephealth``), or ``""`` for none.

    Raises:
        ValueError: the value is not an absolute URL path made of plain segments (letters, digits,
            ``.``, ``_``, ``~``, ``-``): it is a full URL, lacks the leading ``/``, has an empty
            (``//``), ``.`` or ``..`` segment, or other characters. The message shows the value.
    """
    text = value.strip()
    if text in ("", "/"):
        return ""
    if not text.startswith("/"):
        hint = " (a path, not a full URL)" if "://" in text else ""
        raise ValueError(f"must start with '/', e.g. /deephealth{hint}; got {value!r}")
    text = text.rstrip("/")
    for segment in text[1:].split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise ValueError(
                "must be a URL path such as /deephealth or /apps/deephealth: segments of letters, digits, "
                f"'.', '_', '~' or '-', no empty, '.' or '..' segment; got {value!r}"
            )
    return text


class Settings(BaseSettings):
    """Configuration of the web service.

    Attributes:
        model_dir: model folder; ``None`` means :func:`deephealth.paths.default_model_dir`.
        max_upload_mb: upload limit in MiB (1 MiB = 1,048,576 bytes), > 0.
        max_concurrency: most images decoded and classified at once, >= 1.
        log_level: level name for the ``deephealth`` loggers (``DEBUG``, ``INFO``, ``WARNING``...).
        audit: record every prediction in the audit trail (:mod:`deephealth.audit`).
        database_url: the audit trail's database; ``None`` means :func:`deephealth.audit.database_url`.
        admin_api_key: key of ``GET /api/v1/audit``; ``None`` turns that route off.
        root_path: URL prefix the app is published under by a reverse proxy that strips it
            (``/deephealth``), normalised by :func:`normalize_root_path`; ``""`` for none.
    """

    model_config = SettingsConfigDict(env_prefix="DEEPHEALTH_", extra="ignore")

    model_dir: Path | None = None
    max_upload_mb: float = Field(default=32.0, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    log_level: str = "INFO"
    audit: bool = True
    database_url: str | None = None
    admin_api_key: SecretStr | None = None
    root_path: str = ""

    @field_validator("root_path")
    @classmethod
    def _check_root_path(cls, value: str) -> str:
        return normalize_root_path(value)

    @property
    def max_upload_bytes(self) -> int:
        """The upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    def resolved_model_dir(self) -> Path:
        """The model folder to load: ``model_dir`` or the default one."""
        return Path(self.model_dir) if self.model_dir is not None else default_model_dir()
