"""The one format policy: which file formats are accepted, and the one sniffer that recognises them.

Used by :func:`deephealth.readers.read_image` (hence the CLI, the Python API and evaluation) and by
the web API before it queues an upload, so every interface accepts and refuses the same files with
the same words. The format is recognised from the content ("magic numbers"), never from the name.

Accepted (:data:`ACCEPTED_FORMATS`): JPEG, PNG, TIFF, DICOM, BMP, GIF and WebP. DICOM is recognised
with its PS3.10 header (128-byte preamble then ``DICM``, PS3.10 section 7.1) and also as a bare
data set (no preamble, no ``DICM``, possibly no group 0002 file meta), as some PACS exports and old
tools write them.

Recognised but refused, by name (:data:`UNSUPPORTED`): HEIC/HEIF (iPhone photos), AVIF, JPEG 2000,
JPEG XL, PDF, SVG, Photoshop, ZIP/gzip archives, video... Pillow could read some of them (AVIF,
JPEG 2000), but the policy is one list for every interface: export such a file as JPEG or PNG.
Anything else is "not an image".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "DICOM", "BMP", "GIF", "WEBP")
"""Formats read by :func:`deephealth.readers.read_image`, as :attr:`ImageInfo.format` names them."""

ACCEPTED_FORMATS_TEXT = "JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP"
"""The accepted formats, as named in messages."""

FILE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom"}
)
"""Usual file name suffixes of the accepted formats (lower case), for picking files out of folders.
Files are still recognised by content; DICOM files often have no suffix at all."""

#: Pillow plugins allowed to open each accepted Pillow format (MPO: a JPEG with extra camera
#: frames, e.g. from phones; DIB: BMP without a file header is never sniffed, so not listed).
PILLOW_PLUGINS: dict[str, tuple[str, ...]] = {
    "JPEG": ("JPEG", "MPO"),
    "PNG": ("PNG",),
    "TIFF": ("TIFF",),
    "BMP": ("BMP",),
    "GIF": ("GIF",),
    "WEBP": ("WEBP",),
}

_EXPORT_HINT = "export it as JPEG or PNG (or send the original DICOM)"

#: Refused formats: name -> description used in the refusal message.
UNSUPPORTED: dict[str, str] = {
    "HEIC": "HEIC/HEIF photo (iPhone)",
    "AVIF": "AVIF image",
    "JPEG2000": "JPEG 2000 image",
    "JPEGXL": "JPEG XL image",
    "PDF": "PDF document",
    "SVG": "SVG drawing",
    "PSD": "Photoshop document",
    "ZIP": "ZIP archive",
    "GZIP": "gzip archive",
    "VIDEO": "video (MP4/QuickTime)",
    "ICO": "Windows icon",
    "HTML": "HTML page",
}

# (offset, magic, name) for the accepted formats; DICOM first (its 128-byte preamble may hold
# another format's header, e.g. a TIFF one: PS3.10 section 7.1).
_ACCEPTED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (128, b"DICM", "DICOM"),
    (0, b"\xff\xd8\xff", "JPEG"),  # SOI marker then a marker, ITU-T T.81 annex B
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),  # PNG signature, RFC 2083 section 3.1
    (0, b"II*\x00", "TIFF"),  # TIFF 6.0 section 2, little-endian
    (0, b"MM\x00*", "TIFF"),  # big-endian
    (0, b"BM", "BMP"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
)

# ISO base media file format brands (ISO/IEC 14496-12 'ftyp' box at offset 4).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}
_UNSUPPORTED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),  # JP2 signature box, ISO/IEC 15444-1 annex I
    (0, b"\xff\x4f\xff\x51", "JPEG2000"),  # raw J2K codestream: SOC then SIZ
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEGXL"),  # JPEG XL container, ISO/IEC 18181-2
    (0, b"\xff\x0a", "JPEGXL"),  # JPEG XL bare codestream
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
    (0, b"PK\x03\x04", "ZIP"),
    (0, b"\x1f\x8b", "GZIP"),
    (0, b"\x00\x00\x01\x00", "ICO"),
)


@dataclass(frozen=True)
class DetectedFormat:
    """What the sniffer recognised.

    Attributes:
        name: ``"JPEG"``, ``"PNG"``, ``"TIFF"``, ``"DICOM"``, ``"BMP"``, ``"GIF"``, ``"WEBP"``, a key
            of :data:`UNSUPPORTED` (``"HEIC"``, ``"AVIF"``...), or ``None`` when nothing matched.
        accepted: whether the readers read it (``name in ACCEPTED_FORMATS``).
        bare_dicom: a DICOM data set without the PS3.10 preamble and ``DICM`` prefix.
    """

    name: str | None
    accepted: bool
    bare_dicom: bool = False

    def refusal(self) -> str:
        """Why the file is refused (for a format that is not accepted), without the file's name."""
        if self.name in UNSUPPORTED:
            return f"{UNSUPPORTED[self.name]} is not supported: {_EXPORT_HINT}"
        return f"not an image (unrecognised content; expected {ACCEPTED_FORMATS_TEXT})"


def detect_format(data: bytes) -> DetectedFormat:
    """Recognise a file's format from its first bytes.

    Args:
        data: the file's bytes (the first 4 KiB are enough).

    Returns:
        A :class:`DetectedFormat`. A match only selects the decoder: the content may still be
        truncated or corrupt (the reader then refuses it).
    """
    head = bytes(data[:4096])
    for offset, magic, name in _ACCEPTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return DetectedFormat(name, True)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return DetectedFormat("WEBP", True)
    if is_bare_dicom(head):
        return DetectedFormat("DICOM", True, bare_dicom=True)
    if head[4:8] == b"ftyp":
        # ftyp box: size, 'ftyp', major brand, minor version, compatible brands (to the box's end)
        size = min(struct.unpack_from(">I", head, 0)[0], len(head), 256)
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, size - 3, 4)}
        if brands & _AVIF_BRANDS:
            return DetectedFormat("AVIF", False)
        if brands & _HEIF_BRANDS:
            return DetectedFormat("HEIC", False)
        return DetectedFormat("VIDEO", False)
    for offset, magic, name in _UNSUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return DetectedFormat(name, False)
    text = head[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return DetectedFormat("SVG", False)
    if text.startswith((b"<!doctype html", b"<html")):
        return DetectedFormat("HTML", False)
    return DetectedFormat(None, False)


def sniff_format(data: bytes) -> str | None:
    """The accepted format of ``data`` (``"JPEG"``, ``"DICOM"``...), or ``None`` if it is not one."""
    found = detect_format(data)
    return found.name if found.accepted else None


#: Longest value accepted for one of the leading elements (character set, image type, UIDs, dates).
MAX_LEADING_LENGTH = 1024

# Value representations of DICOM PS3.5 table 6.2-1 (explicit VR encoding).
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


def is_bare_dicom(head: bytes, elements: int = 3) -> bool:
    """Whether ``head`` starts like a DICOM data set without the PS3.10 preamble (PS3.5 section 7.1).

    Walks the first ``elements`` data elements in little endian, implicit or explicit VR: the
    first group must be 0002 (file meta) or 0008 (identifying information, where every image's
    data set starts), tags must increase, and lengths must be defined and at most
    :data:`MAX_LEADING_LENGTH`. Big endian and data sets starting elsewhere are not recognised.

    Args:
        head: the first bytes of the file (4 KiB is plenty).
        elements: how many leading elements must parse.
    """
    if len(head) < 8 or struct.unpack_from("<H", head, 0)[0] not in (0x0002, 0x0008):
        return False
    return _walk(head, elements, explicit=True) or _walk(head, elements, explicit=False)


_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # 4-byte length (PS3.5 7.1.2)


def _walk(head: bytes, elements: int, *, explicit: bool) -> bool:
    """Whether the first ``elements`` little-endian data elements of ``head`` parse plausibly."""
    pos, last = 0, -1
    for _ in range(elements):
        if pos + 8 > len(head):
            return pos == len(head) and last >= 0  # a tiny data set that ends here
        tag = (struct.unpack_from("<H", head, pos)[0] << 16) | struct.unpack_from("<H", head, pos + 2)[0]
        if tag <= last:
            return False
        if not explicit:
            length, pos = struct.unpack_from("<I", head, pos + 4)[0], pos + 8
        elif head[pos + 4 : pos + 6] not in _VRS:
            return False
        elif head[pos + 4 : pos + 6] in _LONG_VRS:
            if pos + 12 > len(head):
                return False
            length, pos = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
        else:
            length, pos = struct.unpack_from("<H", head, pos + 6)[0], pos + 8
        if length > MAX_LEADING_LENGTH:  # undefined length (FFFFFFFF) or implausible
            return False
        last, pos = tag, pos + length
    return True
