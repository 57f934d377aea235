"""Reading an uploaded file from a ``multipart/form-data`` request body, in memory only.

Starlette's form parser spools file parts larger than 1 MiB to a temporary file on disk. Medical
images must not be written to disk by this service, so the body is parsed here with
python-multipart's streaming :class:`~python_multipart.multipart.MultipartParser` (RFC 7578), and
the file's bytes are collected in memory. The size limit is enforced while the body is read: the
request is rejected as soon as the file part exceeds the limit, without reading the rest.

The format of the file is recognised by the readers' one sniffer
(:func:`deephealth.readers.formats.detect_format`, re-exported here as :func:`sniff_format`), so
the API, the page and the CLI accept and refuse the same files.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from deephealth.readers.formats import ACCEPTED_FORMATS_TEXT, sniff_format

__all__ = ["FILE_FIELD", "SUPPORTED_FORMATS_TEXT", "Upload", "UploadError", "read_upload", "sniff_format"]

FILE_FIELD = "file"
"""Name of the multipart form field that carries the image."""

MAX_FIELD_BYTES = 1024
"""Largest accepted value of a non-file form field (e.g. ``heatmap=true``), in bytes."""

MAX_PARTS = 16
"""Largest number of parts accepted in one request."""

MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Allowance for boundaries, part headers and small fields when checking ``Content-Length``."""

SUPPORTED_FORMATS_TEXT = ACCEPTED_FORMATS_TEXT
"""The formats accepted, as named in error messages: the readers' one list (:mod:`deephealth.readers.formats`)."""


class UploadError(Exception):
    """A request that cannot be accepted; ``status_code`` is the HTTP status to answer with.

    Attributes:
        status_code: 413 (too large), 415 (unsupported media type) or 422 (malformed request).
        detail: one-line message for the client.
        filename: the file name ``detail`` names, if any (the audit trail removes it from the
            reason it records).
    """

    def __init__(self, status_code: int, detail: str, filename: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.filename = filename


@dataclass
class Upload:
    """The parsed request: the uploaded file and the small form fields.

    Attributes:
        filename: the file name sent by the client (``"upload"`` if none was given).
        content_type: the part's ``Content-Type`` as sent by the client (not trusted), or ``None``.
        data: the file's bytes, held in memory.
        fields: other form fields, name -> value (decoded text, each at most :data:`MAX_FIELD_BYTES`).
        body_bytes: number of request-body bytes read.
    """

    filename: str
    content_type: str | None
    data: bytes
    fields: dict[str, str] = field(default_factory=dict)
    body_bytes: int = 0


def _human_mb(n: int) -> str:
    return f"{round(n / (1024 * 1024), 2):g} MB"


class _Collector:
    """python-multipart callbacks that keep the file part in memory and enforce the limits."""

    def __init__(self, max_file_bytes: int, charset: str) -> None:
        self.max_file_bytes = max_file_bytes
        self.charset = charset
        self.parts = 0
        self.header_name = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None
        self.filename: str | None = None
        self.is_file = False
        self.buffer = bytearray()
        self.file: Upload | None = None
        self.fields: dict[str, str] = {}

    # -- callbacks (signatures fixed by python-multipart) --
    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(422, f"too many form parts (more than {MAX_PARTS})")
        self.headers = {}
        self.name = None
        self.filename = None
        self.is_file = False
        self.buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.strip().lower()] = self.header_value.strip()
        self.header_name = b""
        self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise UploadError(422, "malformed multipart body: a part has no Content-Disposition name")
        self.name = options[b"name"].decode(self.charset, errors="replace")
        if b"filename" in options:
            self.filename = options[b"filename"].decode(self.charset, errors="replace")
        self.is_file = self.name == FILE_FIELD

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self.is_file:
            if len(self.buffer) + n > self.max_file_bytes:
                raise UploadError(
                    413,
                    f"{_clean_filename(self.filename)}: file too large: the limit is {_human_mb(self.max_file_bytes)}",
                    filename=_clean_filename(self.filename),
                )
        elif len(self.buffer) + n > MAX_FIELD_BYTES:
            if self.filename is not None:  # a file sent under another field name (e.g. -F image=@x.jpeg)
                raise UploadError(
                    422, f"no file: send the image in a multipart form field named {FILE_FIELD!r}, not {self.name!r}"
                )
            raise UploadError(422, f"form field {self.name!r} is too long (limit {MAX_FIELD_BYTES} bytes)")
        self.buffer += data[start:end]

    def on_part_end(self) -> None:
        if self.is_file:
            if self.file is not None:
                raise UploadError(422, f"send one file per request (field {FILE_FIELD!r} appears twice)")
            content_type = self.headers.get(b"content-type")
            self.file = Upload(
                filename=_clean_filename(self.filename),
                content_type=content_type.decode("latin-1") if content_type else None,
                data=bytes(self.buffer),
            )
        elif self.name is not None:
            self.fields[self.name] = self.buffer.decode(self.charset, errors="replace")
        self.buffer = bytearray()


def _clean_filename(name: str | None) -> str:
    """The last path component of a client-supplied file name, without control characters."""
    if not name:
        return "upload"
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "upload"


async def read_upload(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    max_file_bytes: int,
) -> Upload:
    """Parse a ``multipart/form-data`` request body into memory, enforcing the size limit.

    Args:
        content_type: the request's ``Content-Type`` header (must be ``multipart/form-data`` with
            a ``boundary``).
        content_length: the request's ``Content-Length`` header, if any; a value above
            ``max_file_bytes`` + :data:`MULTIPART_OVERHEAD_BYTES` is rejected before reading.
        stream: the request body as an async iterator of byte chunks (``Request.stream()``).
        max_file_bytes: largest accepted file, in bytes (> 0).

    Returns:
        The uploaded file and the other form fields.

    Raises:
        UploadError: 413 if the file (or the declared body) exceeds the limit — raised as soon as
            the limit is crossed, the rest of the body is not read; 415 if the request is not
            ``multipart/form-data``; 422 if the body is malformed or has no ``file`` field.
    """
    mime, params = parse_options_header(content_type or "")
    if mime != b"multipart/form-data":
        raise UploadError(
            415,
            f"send the image as multipart/form-data with a field named {FILE_FIELD!r} "
            f"(got Content-Type {content_type or 'none'!r})",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(422, "malformed multipart body: Content-Type has no boundary")
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(422, f"bad Content-Length header {content_length!r}") from None
        if declared > max_file_bytes + MULTIPART_OVERHEAD_BYTES:
            raise UploadError(413, f"file too large: the limit is {_human_mb(max_file_bytes)}")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "utf-8"

    collector = _Collector(max_file_bytes, charset)
    callbacks = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    parser = MultipartParser(boundary, callbacks)
    body_bytes = 0
    try:
        async for chunk in stream:
            body_bytes += len(chunk)
            parser.write(chunk)  # raises 413 as soon as the file part crosses the limit
            if body_bytes > max_file_bytes + MULTIPART_OVERHEAD_BYTES:  # backstop for the whole body
                raise UploadError(413, f"request too large: the file limit is {_human_mb(max_file_bytes)}")
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(422, f"malformed multipart body ({exc})") from None
    if collector.file is None:
        raise UploadError(422, f"no file: send the image in a multipart form field named {FILE_FIELD!r}")
    upload = collector.file
    upload.fields = collector.fields
    upload.body_bytes = body_bytes
    return upload
