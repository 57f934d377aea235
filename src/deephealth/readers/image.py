"""Read one chest X-ray file (JPEG, PNG, TIFF, BMP, GIF, WebP or DICOM) into a grayscale array.

API contract (stable; training, inference, the web app and ``deephealth inspect`` rely on it)::

    read_image(source, *, name=None, target_size=None) -> ReadResult(image, info)

``image`` is a ``(H, W)`` float32 array with values in [0, 1] where **bright means dense** (bone
white, air black, as a radiologist views it). ``info`` is an :class:`ImageInfo` saying what was
learned about the file. A file that cannot be used raises :class:`ImageReadError` (a
``ValueError``) whose one-line message starts with the file's name and states the problem.

The format is recognised from the content, never from the file name, by the one sniffer of
:mod:`deephealth.readers.formats` (the same policy for the CLI, the API and the page): DICOM (with
the PS3.10 header, or a bare data set) goes to :mod:`deephealth.readers.dicom`; JPEG, PNG, TIFF,
BMP, GIF and WebP to Pillow, which may only use that format's plugin; anything else (HEIC, AVIF,
JPEG 2000, PDF, text...) is refused with :class:`UnsupportedFormatError` naming what it is.

Intensity rules for the Pillow formats (documented choices):

* 8-bit data (modes ``1``, ``L``, ``P``, ``RGB``, ``CMYK`` ...) is converted to Pillow mode ``L``
  (ITU-R 601-2 luma: ``L = R*299/1000 + G*587/1000 + B*114/1000``) and divided by 255 -- no
  contrast stretching. For the dataset's 8-bit JPEGs the result is exactly
  ``np.asarray(pil.convert("L"), np.float32) / 255``, which
  :func:`deephealth.preprocessing.resize_to_input` quantises back to the identical uint8 pixels.
* 16-bit and 32-bit data (modes ``I;16*``, ``I``, ``F``) is min-max scaled over the image's own
  values, as a DICOM viewer does when no window is given, so a 10- or 12-bit range stored in a
  16-bit container comes out with full contrast (a 12-bit ramp spans exactly [0, 1]).
* Transparency (``RGBA``, ``LA``, palette with transparency) is composited over black (air), with a
  warning when any pixel is not fully opaque.
* A colour image whose channels differ noticeably (mean ``max - min`` over channels above
  :data:`COLOR_WARN_LEVELS` grey levels) is still converted, with a warning: it may be a photo
  rather than a radiograph.
* EXIF orientation (tag 0x0112) is honoured with :func:`PIL.ImageOps.exif_transpose`.

Refused, with :class:`ImageReadError`: missing/unreadable/empty files, content that is not an
image or not in an accepted format, images with no contrast (all black, all white or flat:
:func:`check_contrast`, every format), truncated or corrupt files (Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays ``False``,
so missing rows are never filled in; a JPEG whose last scan is not followed by an end-of-image
marker, e.g. zero-padded by an interrupted download, is refused too, and so is one cut short and given an
end-of-image marker, whose missing rows libjpeg fills with flat grey 128: :func:`missing_jpeg_rows`), images larger than :data:`MAX_PIXELS` (checked from the
header, before any pixel buffer is allocated), images whose shorter side is below
:data:`MIN_SIDE`, and multi-frame files (animated GIF/PNG/WebP, multi-page TIFF).
"""

from __future__ import annotations

import io
import logging
import math
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps, ImageStat, UnidentifiedImageError

from deephealth.readers.dicom import read_dicom
from deephealth.readers.formats import PILLOW_PLUGINS, detect_format
from deephealth.readers.types import (  # noqa: F401  (re-exported: the readers' public names)
    MAX_PIXELS,
    MIN_SIDE,
    ImageInfo,
    ImageReadError,
    ReadResult,
    UnsupportedFormatError,
    check_dimensions,
    one_line as _one_line,
)

logger = logging.getLogger(__name__)

#: Largest file accepted, in bytes (a guard against reading a huge non-image into memory).
MAX_FILE_BYTES: int = 512 * 1024 * 1024
#: Smallest accepted range of grey levels (maximum - minimum), as a fraction of full scale
#: (0.02 = about 5 of 255 levels); below it the image is blank (see :func:`check_contrast`).
MIN_CONTRAST: float = 0.02
#: Colour warning threshold: mean over pixels of (max channel - min channel), in 8-bit grey levels.
COLOR_WARN_LEVELS: float = 8.0
#: A pixel counts as coloured (for :attr:`ImageInfo.color_fraction`) when its channels differ by at
#: least this many 8-bit grey levels -- well above JPEG chroma noise on a greyscale film.
COLOR_PIXEL_LEVELS: int = 48
#: :attr:`ImageInfo.color_block_fraction` is the largest coloured fraction over a grid of this many
#: blocks a side (a local judgement: a small red arrow fills a block, not the image).
COLOR_GRID: int = 8

_COLORED_LUT = [255 if v >= COLOR_PIXEL_LEVELS else 0 for v in range(256)]
"""Lookup table marking a pixel as coloured from its channel spread (built once, not per image)."""

_EXIF_ORIENTATION = 0x0112
_TIFF_PHOTOMETRIC = {0: "MinIsWhite", 1: "MinIsBlack", 2: "RGB", 3: "Palette", 5: "CMYK", 6: "YCbCr"}
_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


def read_image(
    source: str | Path | bytes | bytearray | memoryview,
    *,
    name: str | None = None,
    target_size: int | None = None,
) -> ReadResult:
    """Read a radiograph file into a grayscale float32 array, bright = dense.

    Args:
        source: a file path, or the file's bytes (e.g. an upload).
        name: the name used in messages and ``info.path``; defaults to the path, or ``"<bytes>"``.
        target_size: optional speed hint, the side of the network input in pixels. A large JPEG
            may then be decoded at 1/2, 1/4 or 1/8 scale with Pillow's ``draft()``, but never
            below ``2 * target_size`` on the shorter side (so the later resize still
            antialiases); ``info.decoded_width/decoded_height`` then differ from
            ``info.width/height``. Other formats ignore it. ``None``: full resolution.

    Returns:
        ``ReadResult(image, info)``; ``image`` is ``(H, W)`` float32 in [0, 1] (bright = dense),
        ``H, W`` = ``info.decoded_height, info.decoded_width``.

    Raises:
        ImageReadError: the file is missing, empty, not an image, truncated or corrupt, too large
            (more than :data:`MAX_PIXELS`), too small (shorter side below :data:`MIN_SIDE`),
            multi-frame, a DICOM of a non-radiograph modality or of an undecodable transfer
            syntax. The message starts with ``name``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
    else:
        label = name or str(source)
        data = _read_file(Path(source), label)
    if not data:
        raise ImageReadError(f"{label}: empty file (0 bytes)")
    found = detect_format(data)
    if not found.accepted:
        raise UnsupportedFormatError(f"{label}: {found.refusal()}", detected=found.name)
    if found.name == "DICOM":
        result = read_dicom(data, label, bare=found.bare_dicom)
    else:
        result = _read_pillow(data, label, target_size, found.name)
    check_contrast(result.image, label)
    return result


def check_contrast(image: np.ndarray, label: str) -> None:
    """Refuse an image with no usable contrast (all black, all white or flat grey), any format.

    The range of grey levels (maximum - minimum over every pixel) must be at least
    :data:`MIN_CONTRAST`; otherwise the image is blank (compression noise included) and would get
    a confident but meaningless label.

    Args:
        image: ``(H, W)`` float32 in [0, 1] as returned by the readers.
        label: the file's name, for the message.
    Raises:
        ImageReadError: ``"<label>: image has no contrast (all black|all white|flat grey ...)"``.
    """
    lo, hi = float(image.min()), float(image.max())
    if hi - lo >= MIN_CONTRAST:
        return
    mean = (lo + hi) / 2
    if mean < 0.1:
        what = "all black"
    elif mean > 0.9:
        what = "all white"
    else:
        what = f"flat grey, level {mean * 255:.0f} of 255"
    levels = round((hi - lo) * 255)
    spread = "every pixel has the same grey level" if levels == 0 else (
        f"the darkest and brightest pixels differ by only {levels} of 255 grey levels")
    raise ImageReadError(f"{label}: image has no contrast ({what}: {spread}); not a usable radiograph")


def _read_file(path: Path, label: str) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ImageReadError(f"{label}: is a folder, not an image file")
        if size > MAX_FILE_BYTES:
            raise ImageReadError(f"{label}: file too large ({size / 2**20:.0f} MiB, limit {MAX_FILE_BYTES / 2**20:.0f} MiB)")
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{label}: file not found") from None
    except PermissionError:
        raise ImageReadError(f"{label}: permission denied") from None
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot read file ({exc.strerror or exc})") from None


def _open_header(data: bytes, plugins: tuple[str, ...]) -> Image.Image:
    """Open ``data`` (read its header only) with the first of Pillow's ``plugins`` that accepts it.

    This is :func:`PIL.Image.open` restricted to ``plugins``, less Pillow's own size check: above
    ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels) ``Image.open`` prints a
    ``DecompressionBombWarning`` to stderr, and above twice that it raises
    ``DecompressionBombError`` with Pillow's wording and limit. The reader's own limit
    (:data:`MAX_PIXELS`, lower) is checked by the caller from the same header, before any pixel
    buffer exists, so every oversized image gets one message, the project's. (GIF and WebP
    plugins run Pillow's check inside the plugin while opening; the caller reads their size with
    :func:`_canvas_size` first.) The check is skipped
    here rather than by changing ``Image.MAX_IMAGE_PIXELS`` or the warnings filters, which are
    process-wide: other code using Pillow keeps its check, and concurrent requests cannot race.

    Raises:
        UnidentifiedImageError: no plugin in ``plugins`` accepts the header.
        Exception: whatever a plugin raises on a corrupt header (besides the types
            ``Image.open`` treats as "not this format", after which the next plugin is tried).
    """
    Image.preinit()
    fp = io.BytesIO(data)
    prefix = data[:16]
    for name in plugins:
        if name not in Image.OPEN:
            Image.init()
        factory, accept = Image.OPEN[name]
        accepted = not accept or accept(prefix)
        if not accepted or isinstance(accepted, str):  # a string is the plugin's reason to decline
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # as Image.open: not this plugin's
            continue
    raise UnidentifiedImageError("cannot identify image file")


def _canvas_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """The size, ``(width, height)`` in pixels, that Pillow's plugin sizes itself to while *opening* ``data``.

    Most plugins only read a header when opening and the caller checks ``im.size`` before any
    pixel is decoded. Two do more, and run Pillow's own decompression-bomb check (its wording,
    its limit of about 89 / 179 megapixels) inside the plugin, where :func:`_open_header` cannot
    skip it:

    * GIF: the first frame's image descriptor may lie outside the logical screen; Pillow then
      grows the image to ``max(x0 + w, screen_w) x max(y0 + h, screen_h)`` (up to 131070 px a side).
    * WebP: the decoder allocates its canvas (from the VP8X, VP8 or VP8L header) when created.

    So for these two the size is read here, from the same bytes and by the same rules, before
    Pillow sees them.

    Args:
        data: the whole file.
        fmt: the sniffed format name (:data:`deephealth.readers.formats.ACCEPTED_FORMATS`).

    Returns:
        ``(width, height)``, or ``None`` for other formats or when the header is too short to say
        (Pillow then reports the file as corrupt, as before). Never raises.
    """
    if fmt == "GIF":
        return _gif_canvas_size(data)
    if fmt == "WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            w, h = struct.unpack_from("<HH", data, 26)
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _gif_canvas_size(data: bytes) -> tuple[int, int] | None:
    """GIF: the logical screen, grown to cover the first frame's image descriptor (GIF89a spec s. 18, 20).

    Walks the blocks as Pillow's ``GifImageFile._seek(0)`` does: global colour table, then
    extensions (``!``, label, data sub-blocks) until the first image descriptor (``,``). ``None``
    if the header is shorter than 13 bytes; the screen size alone if no descriptor is found.
    """
    if len(data) < 13:
        return None
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos < len(data):
        block = data[pos]
        if block == 0x2C:  # image descriptor: left, top, width, height (little-endian uint16)
            if pos + 9 > len(data):
                break
            x0, y0, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            return max(x0 + w, width), max(y0 + h, height)
        if block == 0x3B:  # trailer: no image
            break
        if block == 0x21:  # extension: label, then sub-blocks until a zero length
            pos += 2
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1
        pos += 1  # the terminator, or (like Pillow) one unknown byte skipped
    return width, height


def _read_pillow(data: bytes, label: str, target_size: int | None, sniffed: str) -> ReadResult:
    canvas = _canvas_size(data, sniffed)
    if canvas is not None and canvas[0] * canvas[1] > MAX_PIXELS:  # before Pillow's own check
        check_dimensions(label, *canvas)
    try:
        # only the plugin(s) of the sniffed format: one policy, and a smaller attack surface
        im = _open_header(data, PILLOW_PLUGINS[sniffed])
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: corrupt {sniffed} file (its header cannot be read)") from None
    except Image.DecompressionBombError:  # a plugin checking a size :func:`_canvas_size` does not know
        raise ImageReadError(
            f"{label}: image too large to decode safely: more than "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels (limit {MAX_PIXELS / 1e6:.0f})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on corrupt headers
        raise ImageReadError(f"{label}: corrupt image header ({_one_line(exc)})") from None

    with im:
        fmt = sniffed  # MPO (a JPEG with extra camera frames) is reported as JPEG
        stored_w, stored_h = im.size
        if stored_w * stored_h > MAX_PIXELS:  # before any pixel buffer exists
            check_dimensions(label, stored_w, stored_h)
        try:
            n_frames = getattr(im, "n_frames", 1)
        except Exception as exc:  # noqa: BLE001 - counting frames parses the whole file
            raise ImageReadError(f"{label}: truncated or corrupt {fmt} file ({_one_line(exc)})") from None
        if n_frames > 1:
            raise ImageReadError(
                f"{label}: multi-frame {fmt} ({n_frames} frames); send a single radiograph image"
            )
        check_dimensions(label, stored_w, stored_h)

        warnings: list[str] = []
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not stop the image
            orientation = 1
            warnings.append("EXIF data is corrupt and was ignored")
        if orientation not in range(1, 9):
            orientation = 1
        width, height = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)

        if fmt == "JPEG":
            # Pillow refuses a JPEG that simply ends early, but a truncated scan followed by an
            # end-of-image marker or by padding (zeros from an interrupted download) decodes
            # "successfully" with invented rows. The last scan (SOS) must be followed by an EOI.
            if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
                raise ImageReadError(
                    f"{label}: truncated or corrupt JPEG file (no end-of-image marker after the image data)"
                )
            if target_size:
                _draft(im, target_size)
        try:
            im.load()
        except Exception as exc:  # noqa: BLE001 - OSError/SyntaxError/ValueError/zlib.error...
            raise ImageReadError(f"{label}: truncated or corrupt {fmt} file ({_one_line(exc)})") from None
        if fmt == "JPEG":
            _check_jpeg_complete(im, data, label, stored_h)

        mode = im.mode
        photometric = None
        if fmt == "TIFF":
            tag = getattr(im, "tag_v2", {}).get(262)
            photometric = _TIFF_PHOTOMETRIC.get(tag, None if tag is None else str(tag))
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
            warnings.append(f"EXIF orientation {orientation} applied (image rotated/flipped upright)")
        color: dict[str, float] = {}
        image = _to_gray(im, warnings, color)

    info = ImageInfo(
        path=label,
        format=fmt,
        width=width,
        height=height,
        bit_depth=_BIT_DEPTH.get(mode, 8),
        photometric_interpretation=photometric,
        warnings=warnings,
        decoded_width=int(image.shape[1]),
        decoded_height=int(image.shape[0]),
        mode=mode,
        color_fraction=color.get("fraction"),
        color_block_fraction=color.get("block_fraction"),
        color_spread=color.get("spread"),
    )
    for w in warnings:
        logger.debug("%s: %s", label, w)
    return ReadResult(image, info)


#: JPEG start-of-frame markers (ITU-T T.81 table B.1: SOF0-3, 5-7, 9-11, 13-15) and the progressive ones.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_PROGRESSIVE = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
#: The grey level libjpeg outputs for a block whose coefficients are all zero (the level shift of
#: 8-bit data), in every channel of a YCbCr or greyscale JPEG.
_JPEG_ZERO_BLOCK_LEVEL = 128


def jpeg_mcu_height(data: bytes) -> tuple[int, bool] | None:
    """Height of one MCU row of a JPEG, in pixels at full scale, and whether it is progressive.

    Read from the frame header (SOFn, ITU-T T.81 B.2.2): a single-component (greyscale) frame is
    coded in 8x8 blocks, so an MCU row is 8 pixels high; an interleaved multi-component frame's MCU
    is ``8 * Vmax`` pixels high, ``Vmax`` being the largest vertical sampling factor (16 for the
    usual 4:2:0 chroma subsampling, 8 for 4:4:4).

    Args:
        data: the whole JPEG file.

    Returns:
        ``(mcu_height, progressive)``, or ``None`` when no frame header is found before the first
        scan or the marker structure is broken (the caller then skips checks that need it). Never
        raises.
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF:
            if pos + 10 > n:
                return None
            count = data[pos + 9]
            sampling = data[pos + 11:pos + 10 + 3 * count:3]  # H (high nibble), V (low nibble)
            if count < 1 or len(sampling) != count:
                return None
            vmax = max(s & 0x0F for s in sampling) if count > 1 else 1
            return 8 * max(vmax, 1), marker in _JPEG_PROGRESSIVE
        pos += 2 + length
    return None


def missing_jpeg_rows(im: Image.Image, mcu_height: int, scale: int = 1) -> int:
    """Rows at the bottom of a decoded JPEG that the decoder filled in because the data ended early.

    When a baseline JPEG's entropy-coded data stops early but an end-of-image marker follows (a
    file cut and "repaired", or a cut upload with the marker appended), libjpeg does not fail: it
    warns "premature end of data segment" (Pillow silences libjpeg's warnings and returns the same
    status as for a complete file) and decodes every missing block with zero coefficients, i.e.
    flat grey level 128 in every channel, MCU row after MCU row down to the bottom. This looks for
    that trace: a band of whole MCU rows, aligned on MCU-row boundaries, spanning the full width
    and reaching the bottom, in which every pixel of every channel is exactly 128 (with
    vertically subsampled chroma, the band's first row may differ: see ``bleed`` in the code).
    A cut inside the last MCU row (a partial row of blocks) is not recognised.

    A genuine image can only match if its bottom MCU row(s) are exactly 128 in every pixel and
    channel after JPEG coding (e.g. padding with mid-grey 128, which a JPEG encoder reproduces
    exactly): such a file is refused too (a documented limitation; any other padding level, or
    any noise, passes). Only modes ``L`` and ``RGB`` are checked (an Adobe CMYK JPEG's zero block
    is not 128 in every channel).

    Args:
        im: the decoded (loaded) JPEG, possibly at a ``draft()`` scale, before EXIF rotation.
        mcu_height: the MCU-row height at full scale (:func:`jpeg_mcu_height`).
        scale: the ``draft()`` reduction ``k`` (1, 2, 4 or 8) the image was decoded at; an MCU
            row is then ``mcu_height / k`` decoded rows.

    Returns:
        The number of decoded rows in that band, 0 when it is shorter than one full MCU row
        (in particular when the bottom MCU row is not entirely 128: the usual, cheap case, one
        ``getextrema`` over one MCU row).
    """
    if im.mode not in ("L", "RGB"):
        return 0
    width, height = im.size
    step = max(1, mcu_height // max(1, scale))
    # With vertically subsampled chroma (MCU rows of 16), libjpeg's "fancy" upsampling blends the
    # last real chroma row into the first output row of the first missing MCU row: in a colour
    # image that one row is not exactly 128. It is allowed to differ (full-scale decodes only).
    bleed = 1 if mcu_height > 8 and scale == 1 else 0
    flat = [(_JPEG_ZERO_BLOCK_LEVEL, _JPEG_ZERO_BLOCK_LEVEL)] * len(im.getbands())

    def is_flat(first: int, stop: int) -> bool:
        extrema = im.crop((0, first, width, stop)).getextrema()
        return list(extrema if im.mode != "L" else (extrema,)) == flat

    top = height
    row = ((height - 1) // step) * step  # first row of the last (possibly partial) MCU row
    while row >= 0 and is_flat(row, top):
        top = row
        row -= step
    if bleed and row >= 0 and row + bleed < top and is_flat(row + bleed, top):
        return height - row  # the blended first row belongs to the missing MCU row
    missing = height - top
    return missing if missing >= min(step, height) else 0


def _check_jpeg_complete(im: Image.Image, data: bytes, label: str, stored_height: int) -> None:
    """Refuse a decoded JPEG whose bottom rows were invented because its image data ends early.

    See :func:`missing_jpeg_rows` for the trace looked for. ``im`` is loaded, before EXIF
    rotation; ``stored_height`` is the height in the file's header (``im`` may be smaller after
    ``draft()``).

    Raises:
        ImageReadError: ``"<label>: truncated or corrupt JPEG file (its image data ends early: the
            bottom N of H rows are missing ...)"``.
    """
    frame = jpeg_mcu_height(data)
    if frame is None:
        return
    mcu_height, _progressive = frame
    scale = max(1, round(stored_height / max(1, im.height)))
    missing = missing_jpeg_rows(im, mcu_height, scale)
    if missing and missing < im.height:  # all 128: refused by check_contrast as flat grey instead
        rows = min(stored_height, missing * scale)
        raise ImageReadError(
            f"{label}: truncated or corrupt JPEG file (its image data ends early: the bottom {rows} "
            f"of {stored_height} rows are missing, decoded as flat grey 128)"
        )


def _draft(im: Image.Image, target_size: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale, keeping the shorter side >= 2 * target_size."""
    w, h = im.size
    k = 2 * target_size / min(w, h)
    if k >= 0.5:  # no power-of-two reduction keeps the shorter side >= 2 * target_size
        return
    # draft() picks the largest reduction whose result is at least the requested size.
    im.draft(im.mode, (math.ceil(w * k), math.ceil(h * k)))


def _to_gray(im: Image.Image, warnings: list[str], color: dict[str, float] | None = None) -> np.ndarray:
    """Any Pillow image -> (H, W) float32 in [0, 1] following the module's intensity rules.

    ``color``, if given, receives ``fraction`` and ``block_fraction`` for colour images (see
    :attr:`ImageInfo.color_fraction`).
    """
    mode = im.mode
    if mode in ("L", "1"):
        arr = np.asarray(im if mode == "L" else im.convert("L"), dtype=np.float32)
        arr /= 255.0
        return arr
    if mode.startswith("I") or mode == "F":
        return _minmax(np.asarray(im), warnings)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        if mode in ("La", "RGBa"):  # premultiplied alpha
            im = im.convert(mode[:-1] + "A")
            mode = im.mode
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32)
        rgb = im.convert("RGB") if mode == "RGBA" else im.getchannel("L")
        gray = _from_color(rgb, warnings, color) if mode == "RGBA" else np.asarray(rgb, dtype=np.float32) / 255.0
        if alpha.min() < 255:
            warnings.append("transparent pixels were composited over black")
            gray *= alpha / 255.0
        return gray
    if mode != "RGB":  # CMYK, YCbCr, LAB, HSV, I;16 variants handled above
        im = im.convert("RGB")
    return _from_color(im, warnings, color)


def _from_color(im: Image.Image, warnings: list[str], color: dict[str, float] | None = None) -> np.ndarray:
    """RGB image -> luma in [0, 1], warning when the channels are not (nearly) equal.

    ``color``, if given, receives the coloured-pixel ``fraction``, ``block_fraction`` and the mean
    channel ``spread``; the colour verdict is then the input gate's (no warning here, so a small red
    mark gets one message, the gate's). Without ``color`` a tinted image gets a warning here.
    """
    r, g, b = im.split()
    grey = r.tobytes()
    if grey == g.tobytes() and grey == b.tobytes():
        # A grey picture stored as RGB (every JPEG of the dataset): no pixel is coloured and the
        # luma of three equal channels is that channel, exactly what the general path below
        # computes, in a fraction of its time.
        if color is not None:
            color.update(fraction=0.0, block_fraction=0.0, spread=0.0)
        arr = np.frombuffer(grey, dtype=np.uint8).reshape(im.height, im.width).astype(np.float32)
        arr /= 255.0
        return arr
    # max - min over the three channels == the largest pairwise difference (Pillow: ~0.1 ms at 224x224).
    spread = ImageChops.lighter(
        ImageChops.lighter(ImageChops.difference(r, g), ImageChops.difference(g, b)),
        ImageChops.difference(r, b),
    )
    mean_spread = float(ImageStat.Stat(spread).mean[0])
    if color is not None:
        colored = spread.point(_COLORED_LUT)  # (H, W) mode L: 255 where coloured, else 0
        color["fraction"] = float(ImageStat.Stat(colored).mean[0]) / 255.0
        grid = colored.resize((COLOR_GRID, COLOR_GRID), Image.Resampling.BOX)  # block means
        color["block_fraction"] = float(np.asarray(grid, dtype=np.float32).max()) / 255.0
        color["spread"] = mean_spread
    elif mean_spread > COLOR_WARN_LEVELS:
        warnings.append(
            f"colour image (channels differ by {mean_spread:.1f} grey levels on average): "
            "it may be a photo rather than a radiograph; converted to grayscale"
        )
    arr = np.asarray(im.convert("L"), dtype=np.float32)
    arr /= 255.0
    return arr


def _minmax(values: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Min-max scale integer/float data to [0, 1] (float32); a uniform image becomes zeros."""
    arr = values.astype(np.float32)
    if not np.isfinite(arr).all():
        warnings.append("non-finite pixel values were set to the minimum")
        finite = arr[np.isfinite(arr)]
        arr[~np.isfinite(arr)] = finite.min() if finite.size else 0.0
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        warnings.append("uniform image (every pixel has the same value): no contrast")
        return np.zeros_like(arr)
    arr -= lo
    arr /= hi - lo
    return arr
