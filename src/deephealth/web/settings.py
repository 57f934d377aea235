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
``DEEPHEALTH_AUDIT``           record every prediction in the audit trail (default ``true``)
``DEEPHEALTH_DATABASE_URL``    SQLAlchemy URL of the audit trail; default: the SQLite file
                               ``audit.sqlite3`` in ``DEEPHEALTH_STATE_DIR`` (default
                               ``~/.local/state/deephealth``); PostgreSQL:
                               ``postgresql+psycopg://user:password@host/deephealth``
``DEEPHEALTH_ADMIN_API_KEY``   enables ``GET /api/v1/audit`` for clients that send it as
                               ``Authorization: Bearer <key>``; unset (default): that route is off
=============================  ===========================================================

Settings are parsed by pydantic-settings (https://docs.pydantic.dev/latest/concepts/pydantic_settings/).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from deephealth.paths import default_model_dir


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
    """

    model_config = SettingsConfigDict(env_prefix="DEEPHEALTH_", extra="ignore")

    model_dir: Path | None = None
    max_upload_mb: float = Field(default=32.0, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    log_level: str = "INFO"
    audit: bool = True
    database_url: str | None = None
    admin_api_key: SecretStr | None = None

    @property
    def max_upload_bytes(self) -> int:
        """The upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    def resolved_model_dir(self) -> Path:
        """The model folder to load: ``model_dir`` or the default one."""
        return Path(self.model_dir) if self.model_dir is not None else default_model_dir()
