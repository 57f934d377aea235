"""Reader tests for the Pillow formats (JPEG, PNG, TIFF, BMP, GIF, WebP).

Every input is generated here, with golden pixel values; a few real dataset images check the
training contract (see also test_preprocessing.py for the resize round trip).
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from deephealth.readers import ImageInfo, ImageReadError, ReadResult, read_image
from deephealth.readers import types as types_module


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gray_ramp(h: int = 80, w: int = 96) -> np.ndarray:
    """(h, w) uint8 with pixel (y, x) = (3 * x + y) % 256: every value known."""
    y, x = np.mgrid[0:h, 0:w]
    return ((3 * x + y) % 256).astype(np.uint8)


def pillow_l(data: bytes) -> np.ndarray:
    """What training sees: Pillow's own decode converted to L, as float32 / 255."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255


# --------------------------------------------------------------------------- lossless 8-bit formats

RAMP = gray_ramp()
RGB_EQUAL = Image.merge("RGB", [Image.fromarray(RAMP)] * 3)


@pytest.mark.parametrize(
    ("fmt", "image", "kw"),
    [
        ("PNG", Image.fromarray(RAMP), {}),
        ("PNG", RGB_EQUAL, {}),
        ("TIFF", Image.fromarray(RAMP), {}),
        ("TIFF", Image.fromarray(RAMP), {"compression": "tiff_deflate"}),
        ("BMP", Image.fromarray(RAMP), {}),
        ("WEBP", RGB_EQUAL, {"lossless": True}),
        ("PNG", Image.fromarray(RAMP).convert("LA"), {}),  # opaque grayscale + alpha
        ("PNG", RGB_EQUAL.convert("RGBA"), {}),  # opaque RGBA
    ],
    ids=["png-L", "png-rgb", "tiff-L", "tiff-deflate", "bmp", "webp-lossless", "png-LA-opaque", "png-RGBA-opaque"],
)
def test_lossless_8bit_exact(fmt: str, image: Image.Image, kw: dict) -> None:
    res = read_image(encode(image, fmt, **kw), name=f"ramp.{fmt.lower()}")
    assert isinstance(res, ReadResult)
    assert res.image.dtype == np.float32
    assert res.image.shape == RAMP.shape
    np.testing.assert_array_equal(res.image, RAMP.astype(np.float32) / 255)
    assert res.image[10, 20] == np.float32(70 / 255)  # (3*20 + 10) % 256 = 70
    assert res.info.format == fmt
    assert (res.info.width, res.info.height) == (96, 80)
    assert res.info.bit_depth == 8
    assert res.info.warnings == []


def test_palette_png_maps_through_palette() -> None:
    # Palette index i shows grey 255 - i: the reader must output the palette colour, not the index.
    idx = gray_ramp()
    im = Image.frombytes("P", (idx.shape[1], idx.shape[0]), idx.tobytes())
    im.putpalette([c for i in range(256) for c in (255 - i,) * 3])
    res = read_image(encode(im, "PNG"), name="palette.png")
    np.testing.assert_array_equal(res.image, (255 - idx).astype(np.float32) / 255)
    assert res.info.mode == "P"


def test_bilevel_png() -> None:
    arr = np.zeros((64, 64), dtype=bool)
    arr[:, 32:] = True
    res = read_image(encode(Image.fromarray(arr), "PNG"), name="bits.png")
    assert res.info.bit_depth == 1
    assert res.image[0, 0] == 0.0 and res.image[0, 63] == 1.0


def test_single_frame_gif() -> None:
    res = read_image(encode(Image.fromarray(RAMP), "GIF"), name="one.gif")
    assert res.info.format == "GIF"
    np.testing.assert_array_equal(res.image, RAMP.astype(np.float32) / 255)


# --------------------------------------------------------------------------- JPEG family


def smooth_image(h: int = 120, w: int = 160) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (40 + 150 * x / (w - 1) + 40 * y / (h - 1)).round().astype(np.uint8)


@pytest.mark.parametrize(
    ("mode", "kw"),
    [("L", {}), ("L", {"progressive": True}), ("RGB", {}), ("RGB", {"progressive": True, "quality": 80})],
    ids=["baseline-gray", "progressive-gray", "baseline-rgb", "progressive-rgb"],
)
def test_jpeg_matches_training_decode(mode: str, kw: dict) -> None:
    src = smooth_image()
    im = Image.fromarray(src)
    if mode == "RGB":
        im = Image.merge("RGB", [im] * 3)
    data = encode(im, "JPEG", quality=kw.pop("quality", 95), **kw)
    res = read_image(data, name="x.jpg")
    # The training contract: identical to Pillow decode -> convert("L") -> / 255.
    np.testing.assert_array_equal(res.image, pillow_l(data))
    # and close to the source (lossy codec): a few grey levels at most on a smooth ramp.
    assert np.abs(res.image * 255 - src).max() <= 4
    assert res.info.format == "JPEG"
    assert res.info.warnings == []


def test_cmyk_jpeg() -> None:
    # C = M = Y = 0, K = k  ->  grey 255 - k.
    k = smooth_image()
    zeros = Image.new("L", (k.shape[1], k.shape[0]), 0)
    im = Image.merge("CMYK", [zeros, zeros, zeros, Image.fromarray(k)])
    res = read_image(encode(im, "JPEG", quality=95), name="cmyk.jpg")
    assert res.info.mode == "CMYK"
    assert np.abs(res.image * 255 - (255.0 - k)).max() <= 4


def test_colour_photo_warns_but_converts() -> None:
    rgb = np.zeros((80, 80, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 40
    rgb[40:, :, 1] = 100  # bottom half: some green, so the image has contrast
    res = read_image(encode(Image.fromarray(rgb), "PNG"), name="photo.png")
    # ITU-R 601-2 luma as Pillow computes it: (200*299 + 0*587 + 40*114) / 1000 = 64.36 -> 64
    assert res.image[5, 5] == np.float32(64 / 255)
    assert res.image[45, 5] == np.float32(123 / 255)  # + 100 * 587 / 1000 = 123.06 -> 123
    # the colour facts are recorded for the gate, which gives the one colour message (issue 18)
    assert res.info.warnings == [] and res.info.color_fraction == 1.0
    assert res.info.color_spread == pytest.approx((200 + 160) / 2)  # max - min over channels: 200 top, 160 bottom


def test_nearly_grey_rgb_does_not_warn() -> None:
    # JPEG chroma noise on a grey radiograph saved as RGB must not trigger the colour warning.
    rgb = np.stack([RAMP, RAMP, np.clip(RAMP.astype(int) + 2, 0, 255).astype(np.uint8)], axis=2)
    res = read_image(encode(Image.fromarray(rgb), "PNG"), name="greyish.png")
    assert res.info.warnings == []


# --------------------------------------------------------------------------- transparency


def test_transparency_composited_over_black() -> None:
    grey = np.full((64, 64), 200, dtype=np.uint8)
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[:, :32] = 0  # left half fully transparent
    alpha[:, 32:48] = 51  # 20 % opaque
    im = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    for img in (im, im.convert("RGBA")):
        res = read_image(encode(img, "PNG"), name="alpha.png")
        assert res.image[0, 0] == 0.0
        assert res.image[0, 40] == pytest.approx(200 / 255 * 51 / 255, abs=1e-6)
        assert res.image[0, 60] == pytest.approx(200 / 255, abs=1e-6)
        assert any("composited over black" in w for w in res.info.warnings)


# --------------------------------------------------------------------------- 16-bit and float data


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_16bit_png_ramp_has_full_contrast(bits: int) -> None:
    top = 2**bits - 1
    ramp = np.linspace(0, top, 64 * 100).round().astype(np.uint16).reshape(64, 100)
    res = read_image(encode(Image.fromarray(ramp), "PNG"), name=f"ramp{bits}.png")
    assert res.info.bit_depth == 16
    assert res.image.min() == 0.0 and res.image.max() == 1.0
    # a known pixel keeps its relative position in the range
    assert res.image[32, 50] == pytest.approx(ramp[32, 50] / top, abs=1e-6)
    # and it is not near-black: half the pixels are above 0.5
    assert np.median(res.image) == pytest.approx(0.5, abs=0.01)


def test_16bit_min_max_with_offset() -> None:
    # 12-bit detector data that never reaches 0: min-max scaling, documented in the module.
    arr = np.full((64, 64), 1000, dtype=np.uint16)
    arr[:, 32:] = 3000
    arr[0, 0] = 2000
    res = read_image(encode(Image.fromarray(arr), "TIFF"), name="det.tif")
    assert res.info.format == "TIFF" and res.info.bit_depth == 16
    assert res.image[1, 1] == 0.0 and res.image[1, 40] == 1.0
    assert res.image[0, 0] == pytest.approx(0.5)


def test_float_tiff_min_max() -> None:
    arr = np.linspace(-1.0, 3.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    res = read_image(encode(Image.fromarray(arr, mode="F"), "TIFF"), name="f.tif")
    assert res.info.bit_depth == 32
    assert res.image[0, 0] == 0.0 and res.image[-1, -1] == 1.0


def test_uniform_16bit_is_refused_as_no_contrast() -> None:
    arr = np.full((64, 64), 777, dtype=np.uint16)
    with pytest.raises(ImageReadError, match=r"^flat\.png: image has no contrast"):
        read_image(encode(Image.fromarray(arr), "PNG"), name="flat.png")


# --------------------------------------------------------------------------- EXIF orientation


def marker_image() -> Image.Image:
    """Stored 120 wide x 80 high, black, with a white 20x20 marker in the stored top-left corner."""
    arr = np.zeros((80, 120), dtype=np.uint8)
    arr[:20, :20] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (1, (80, 120), "top-left"),
        (3, (80, 120), "bottom-right"),  # rotated 180
        (6, (120, 80), "top-right"),  # display = stored rotated 90 degrees clockwise
        (8, (120, 80), "bottom-left"),  # display = stored rotated 90 degrees counter-clockwise
    ],
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation(fmt: str, orientation: int, shape: tuple[int, int], corner: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(marker_image(), fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    res = read_image(data, name=f"o{orientation}.{fmt.lower()}")
    assert res.image.shape == shape
    assert (res.info.height, res.info.width) == shape
    h, w = shape
    corners = {
        "top-left": res.image[2:18, 2:18],
        "top-right": res.image[2:18, w - 18 : w - 2],
        "bottom-left": res.image[h - 18 : h - 2, 2:18],
        "bottom-right": res.image[h - 18 : h - 2, w - 18 : w - 2],
    }
    for name, patch in corners.items():
        expected = 1.0 if name == corner else 0.0
        assert patch.mean() == pytest.approx(expected, abs=0.03), name
    assert any("EXIF orientation" in w for w in res.info.warnings) == (orientation != 1)


# --------------------------------------------------------------------------- target_size (JPEG draft)


@pytest.mark.parametrize(
    ("size", "target", "decoded"),
    [
        ((2000, 1600), None, (2000, 1600)),  # no hint: full resolution
        ((2000, 1600), 224, (1000, 800)),  # 1/4 would give 400 < 448: stop at 1/2
        ((2000, 1600), 100, (250, 200)),  # 1/8 gives exactly 2 * 100 on the shorter side
        ((1024, 768), 224, (1024, 768)),  # no power-of-two reduction keeps >= 448
    ],
)
def test_target_size_draft(size: tuple[int, int], target: int | None, decoded: tuple[int, int]) -> None:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    arr = ((x + y) * 255 // (w + h)).astype(np.uint8)
    data = encode(Image.fromarray(arr), "JPEG", quality=90)
    res = read_image(data, name="big.jpg", target_size=target)
    assert (res.info.width, res.info.height) == size
    assert (res.info.decoded_width, res.info.decoded_height) == decoded
    assert res.image.shape == (decoded[1], decoded[0])
    if target:
        assert min(decoded) >= 2 * target
    # the reduced decode is still the same picture: the ramp's corners are dark and bright
    assert res.image[0, 0] < 0.05 and res.image[-1, -1] > 0.95


def test_target_size_ignored_for_png() -> None:
    im = Image.new("L", (1200, 1000), 128)
    im.putpixel((0, 0), 0)
    res = read_image(encode(im, "PNG"), target_size=100)
    assert res.image.shape == (1000, 1200)


# --------------------------------------------------------------------------- refusals


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG signature + IHDR claiming width x height, then an empty IDAT."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(RAMP), Image.fromarray(255 - RAMP)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


def truncated(fmt: str, **kw) -> bytes:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray((rng.random((200, 300)) * 255).astype(np.uint8)), fmt, **kw)
    return data[: len(data) // 2]


REFUSALS = [
    ("empty", b"", "empty file"),
    ("text", b"patient,label\n1,normal\n" * 20, "not an image"),
    ("html", b"<!DOCTYPE html><html><body>not an x-ray</body></html>" + b" " * 200, "HTML page is not supported"),
    ("truncated-jpeg", truncated("JPEG"), "truncated or corrupt JPEG"),
    ("truncated-progressive-jpeg", truncated("JPEG", progressive=True), "truncated or corrupt JPEG"),
    ("zero-padded-jpeg", truncated("JPEG") + bytes(20_000), "truncated or corrupt JPEG file (no end-of-image marker"),
    ("zero-padded-progressive", truncated("JPEG", progressive=True) + bytes(20_000), "no end-of-image marker"),
    ("truncated-png", truncated("PNG"), "truncated or corrupt PNG"),
    ("truncated-tiff", truncated("TIFF"), "truncated or corrupt TIFF"),
    ("bomb-png-header", png_header_only(8_000, 7_000), "too large to decode safely: 8000x7000 = 56.0 megapixels (limit 50)"),
    ("bomb-over-pillow-limit", png_header_only(60_000, 60_000), "too large to decode safely"),
    ("tiny", encode(Image.new("L", (32, 32), 100), "PNG"), "too small to diagnose: 32x32"),
    ("thin", encode(Image.new("L", (400, 63), 100), "JPEG"), "too small to diagnose: 400x63"),
    ("animated-gif", animated("GIF"), "multi-frame GIF (2 frames)"),
    ("apng", animated("PNG"), "multi-frame PNG (2 frames)"),
    ("multipage-tiff", animated("TIFF"), "multi-frame TIFF (2 frames)"),
]


@pytest.mark.parametrize(("case", "data", "message"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refused_with_one_line_message(case: str, data: bytes, message: str) -> None:
    with pytest.raises(ImageReadError) as err:
        read_image(data, name=f"{case}.bin")
    text = str(err.value)
    assert text.startswith(f"{case}.bin: "), text
    assert message in text, text
    assert "\n" not in text
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(("width", "height", "megapixels"), [
    (10_000, 6_000, "60.0"),     # over the project's limit, under Pillow's warning threshold (89 MP)
    (12_500, 12_000, "150.0"),   # Pillow would warn (DecompressionBombWarning)
    (20_000, 20_000, "400.0"),   # Pillow would refuse (DecompressionBombError, 179 MP)
])
def test_oversized_header_gets_the_projects_message_and_no_pillow_warning(
        width: int, height: int, megapixels: str, recwarn: pytest.WarningsRecorder) -> None:
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError) as err:
        read_image(png_header_only(width, height), name="big.png")
    assert str(err.value) == (f"big.png: image too large to decode safely: {width}x{height} = "
                              f"{megapixels} megapixels (limit 50)")
    assert [str(w.message) for w in recwarn] == []
    assert Image.MAX_IMAGE_PIXELS == limit_before  # Pillow's process-wide setting is left alone


def gif_frame_beyond_screen(frame_w: int, frame_h: int, left: int = 0, top: int = 0) -> bytes:
    """A 100x80 GIF (logical screen) whose one frame's descriptor claims frame_w x frame_h at (left, top).

    Built byte by byte: header, 2-colour global table, a graphic control extension (so the size
    is found past an extension block), the image descriptor, then a tiny LZW payload (minimum
    code size 2, codes clear / 0 / end) that is far shorter than the frame it claims.
    """
    header = b"GIF89a" + struct.pack("<HHBBB", 100, 80, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    control = b"\x21\xf9\x04\x00\x00\x00\x00\x00"
    descriptor = b"," + struct.pack("<HHHHB", left, top, frame_w, frame_h, 0)
    lzw = b"\x02" + b"\x02\x44\x01" + b"\x00"
    return header + control + descriptor + lzw + b";"


@pytest.mark.parametrize(("frame", "left", "canvas"), [
    ((10_000, 6_000), 0, "10000x6000 = 60.0"),        # Pillow grows the image silently
    ((12_500, 12_000), 0, "12500x12000 = 150.0"),     # Pillow would warn (DecompressionBombWarning)
    ((20_000, 20_000), 0, "20000x20000 = 400.0"),     # Pillow would raise DecompressionBombError
    ((65_535, 65_535), 0, "65535x65535 = 4294.8"),    # the largest frame a descriptor can claim
    ((1_000, 60), 60_000, "61000x80 = 4.9"),          # placed far right: screen height kept
])
def test_gif_frame_beyond_its_screen_gets_the_projects_message(
        frame: tuple[int, int], left: int, canvas: str, recwarn: pytest.WarningsRecorder) -> None:
    # Pillow enlarges a GIF to cover its first frame while *opening* it, and runs its own bomb check
    # there; the reader reads the descriptor first and refuses with the project's message.
    data = gif_frame_beyond_screen(*frame, left=left)
    if left:  # a wide, short canvas: lower the limit so this small case is over it too
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(types_module, "MAX_PIXELS", 4_000_000)
            mp.setattr("deephealth.readers.image.MAX_PIXELS", 4_000_000)
            with pytest.raises(ImageReadError) as err:
                read_image(data, name="wide.gif")
        assert str(err.value) == f"wide.gif: image too large to decode safely: {canvas} megapixels (limit 4)"
    else:
        with pytest.raises(ImageReadError) as err:
            read_image(data, name="bomb.gif")
        assert str(err.value) == f"bomb.gif: image too large to decode safely: {canvas} megapixels (limit 50)"
    assert "decompression bomb" not in str(err.value)
    assert [str(w.message) for w in recwarn] == []


def test_gif_canvas_size_matches_pillows() -> None:
    # The reader's own walk of the GIF blocks finds the size Pillow opens the image at.
    from deephealth.readers.image import _canvas_size

    for frame, left in [((100, 80), 0), ((300, 90), 7), ((9_000, 9_000), 0), ((1_000, 60), 60_000)]:
        data = gif_frame_beyond_screen(*frame, left=left)
        with Image.open(io.BytesIO(data)) as im:
            pillow_size = im.size
        assert _canvas_size(data, "GIF") == pillow_size == (max(frame[0] + left, 100), max(frame[1], 80))
    # a real Pillow-written GIF (comment extension before the frame) and WebP in its three headers
    gif = encode(Image.fromarray(RAMP), "GIF", comment=b"x" * 300)
    assert _canvas_size(gif, "GIF") == (96, 80)
    chunks = set()
    for kw in ({"lossless": True}, {"quality": 80}, {"lossless": True, "exif": b"Exif\x00\x00MM\x00*"}):
        webp = encode(RGB_EQUAL, "WEBP", **kw)
        chunks.add(webp[12:16])
        assert _canvas_size(webp, "WEBP") == (96, 80), webp[12:16]
    assert chunks == {b"VP8L", b"VP8 ", b"VP8X"}
    assert _canvas_size(b"GIF89a", "GIF") is None
    assert _canvas_size(encode(Image.fromarray(RAMP), "PNG"), "PNG") is None


def test_pillows_bomb_error_from_a_plugin_still_gets_the_projects_wording(monkeypatch: pytest.MonkeyPatch) -> None:
    # Safety net: should a plugin raise DecompressionBombError for a size the reader did not read
    # first (here: the pre-check switched off), the message is still the project's, with the limit.
    import deephealth.readers.image as image_module

    monkeypatch.setattr(image_module, "_canvas_size", lambda data, fmt: None)
    with pytest.raises(ImageReadError) as err:
        read_image(gif_frame_beyond_screen(20_000, 20_000), name="bomb.gif")
    limit = 2 * Image.MAX_IMAGE_PIXELS / 1e6
    assert str(err.value) == f"bomb.gif: image too large to decode safely: more than {limit:.0f} megapixels (limit 50)"


def test_webp_canvas_over_pillows_limit_gets_the_projects_message() -> None:
    # VP8X header claiming a 16383x16383 canvas (Pillow's own check would raise at 179 MP).
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (16_382).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    with pytest.raises(ImageReadError) as err:
        read_image(data, name="bomb.webp")
    assert str(err.value) == "bomb.webp: image too large to decode safely: 16383x16383 = 268.4 megapixels (limit 50)"


def test_pillow_still_warns_for_other_callers() -> None:
    # The reader skips Pillow's check for its own files only; Image.open elsewhere is unchanged.
    with pytest.warns(Image.DecompressionBombWarning):
        with Image.open(io.BytesIO(png_header_only(12_500, 12_000))):
            pass


def test_bomb_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a lower limit, a real (decodable) 200x200 image is refused and load() is never called.
    data = encode(Image.new("L", (200, 200)), "PNG")
    monkeypatch.setattr(types_module, "MAX_PIXELS", 30_000)
    called = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: called.append(1))
    with pytest.raises(ImageReadError, match=r"too large to decode safely: 200x200 = 0.0 megapixels"):
        read_image(data, name="b.png")
    assert called == []


def test_bytes_after_jpeg_end_are_tolerated() -> None:
    # Some devices append data after the end-of-image marker; the image itself is complete.
    data = encode(Image.fromarray(smooth_image()), "JPEG", quality=95)
    res = read_image(data + b"vendor trailer", name="t.jpg")
    np.testing.assert_array_equal(res.image, pillow_l(data))


def test_min_side_boundary() -> None:
    res = read_image(encode(Image.fromarray(gray_ramp(500, 64)), "PNG"))
    assert res.image.shape == (500, 64)


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"missing\.png: file not found$"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match=r"is a folder"):
        read_image(tmp_path)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg: empty file"):
        read_image(empty)


def test_path_and_bytes_agree(tmp_path: Path) -> None:
    data = encode(Image.fromarray(RAMP), "PNG")
    f = tmp_path / "scan.dat"  # extension is irrelevant: the content decides
    f.write_bytes(data)
    by_path, by_bytes = read_image(f), read_image(bytearray(data), name="upload")
    np.testing.assert_array_equal(by_path.image, by_bytes.image)
    assert by_path.info.path == str(f) and by_bytes.info.path == "upload"
    assert read_image(data).info.path == "<bytes>"


def test_info_to_dict_and_defaults() -> None:
    info = ImageInfo("a.png", "PNG", 100, 80, 8)
    d = info.to_dict()
    assert d["decoded_width"] == 100 and d["decoded_height"] == 80
    assert d["warnings"] == [] and d["modality"] is None
    assert set(d) >= {"path", "format", "width", "height", "bit_depth", "photometric_interpretation",
                      "modality", "view_position", "warnings"}


# --------------------------------------------------------------------------- real dataset images


def test_real_dataset_images_are_exact(dataset_root: Path) -> None:
    files = sorted(dataset_root.glob("test/*/*.jpeg"))[::150][:5] + sorted(dataset_root.glob("train/*/*.jpeg"))[::1000][:5]
    assert len(files) == 10
    for f in files:
        res = read_image(f)
        assert res.info.format == "JPEG" and (res.info.width, res.info.height) == (224, 224)
        assert res.info.warnings == [], f
        np.testing.assert_array_equal(res.image, pillow_l(f.read_bytes()))
        assert 0.0 <= res.image.min() and res.image.max() <= 1.0


def test_readers_do_not_import_torch() -> None:
    code = "import sys, deephealth.readers as r, deephealth.cli.inspect; " \
           "from deephealth.readers import dicom; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------- JPEG cut short, then given an EOI
# libjpeg decodes the missing MCUs with zero coefficients (flat grey 128) and Pillow reports success;
# the reader recognises that band (readers.image.missing_jpeg_rows) and refuses the file.


def _cut_with_eoi(data: bytes, cut: int) -> bytes:
    return data[:cut] + b"\xff\xd9"


def _dataset_film(dataset_root: Path) -> Path:
    return sorted((dataset_root / "train" / "NORMAL").glob("*.jpeg"))[0]


def test_jpeg_mcu_height_from_the_frame_header(dataset_root: Path) -> None:
    from deephealth.readers.image import jpeg_mcu_height

    film = np.asarray(Image.open(_dataset_film(dataset_root)).convert("L"))
    assert jpeg_mcu_height(_dataset_film(dataset_root).read_bytes()) == (16, False)  # YCbCr 4:2:0
    assert jpeg_mcu_height(encode(Image.fromarray(film), "JPEG")) == (8, False)  # greyscale
    assert jpeg_mcu_height(encode(Image.fromarray(film).convert("RGB"), "JPEG", subsampling=0)) == (8, False)
    assert jpeg_mcu_height(encode(Image.fromarray(film).convert("RGB"), "JPEG", progressive=True)) == (16, True)
    assert jpeg_mcu_height(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan before any frame header
    assert jpeg_mcu_height(b"\xff\xd8garbage") is None


@pytest.mark.parametrize(("cut", "missing"), [(2000, 176), (5000, 64)])
def test_dataset_film_cut_with_eoi_is_refused_naming_the_missing_rows(dataset_root: Path, cut: int, missing: int) -> None:
    # Known values for IM-0115-0001.jpeg (6970 bytes): cut at 5000 bytes, libjpeg decodes rows 160-223
    # as exactly 128; at 2000 bytes rows 48-223. The example of the bug: cut at 5000 was classified
    # "normal 0.982", gate accept, with only 160 real rows.
    path = _dataset_film(dataset_root)
    data = _cut_with_eoi(path.read_bytes(), cut)
    decoded = np.asarray(Image.open(io.BytesIO(data)))  # what Pillow alone does: no error
    assert (decoded[224 - missing:] == 128).all() and not (decoded[224 - missing - 16:224 - missing] == 128).all()
    with pytest.raises(ImageReadError) as err:
        read_image(data, name=path.name)
    assert str(err.value) == (
        f"{path.name}: truncated or corrupt JPEG file (its image data ends early: the bottom {missing} "
        "of 224 rows are missing, decoded as flat grey 128)"
    )


@pytest.mark.parametrize("kind", ["dataset", "grey", "colour420", "colour444", "large-draft"])
def test_jpegs_cut_with_eoi_are_refused_at_many_cut_points(dataset_root: Path, kind: str) -> None:
    films = sorted(dataset_root.glob("t*/*/*.jpeg"))[::1500]
    assert len(films) == 4
    target = None
    for path in films:
        data = path.read_bytes()
        if kind != "dataset":
            grey = np.asarray(Image.open(path).convert("L")).astype(np.int16)
            if kind == "grey":
                data = encode(Image.fromarray(grey.astype(np.uint8)), "JPEG", quality=90)
            elif kind == "large-draft":  # decoded at 1/4 scale by draft(): the MCU row is 4 rows there
                data = encode(Image.fromarray(grey.astype(np.uint8)).resize((1800, 1600)), "JPEG", quality=90)
                target = 224
            else:
                tinted = np.stack([grey + 40, grey, grey - 40], -1).clip(0, 255).astype(np.uint8)
                data = encode(Image.fromarray(tinted), "JPEG", quality=90,
                              subsampling=2 if kind == "colour420" else 0)
        read_image(data, name="whole.jpg", target_size=target)  # the complete file is accepted
        for fraction in (0.2, 0.4, 0.6, 0.8, 0.9):
            with pytest.raises(ImageReadError, match=r"^cut\.jpg: truncated or corrupt JPEG file \(its image "
                                                     r"data ends early: the bottom \d+ of \d+ rows are missing"):
                read_image(_cut_with_eoi(data, int(len(data) * fraction)), name="cut.jpg", target_size=target)


def test_no_dataset_jpeg_looks_cut(dataset_root: Path) -> None:
    # The detector's false-positive rate on every film of the dataset (train, val, test): 0.
    from deephealth.readers.image import jpeg_mcu_height, missing_jpeg_rows

    files = sorted(dataset_root.glob("*/*/*.jpeg"))
    assert len(files) == 5856
    flagged = []
    for path in files:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            frame = jpeg_mcu_height(data)
            assert frame == (16, False), path
            if missing_jpeg_rows(im, frame[0]):
                flagged.append(path.name)
    assert flagged == []


@pytest.mark.parametrize("level", [0, 64, 127, 129, 255])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_letterbox_padding_other_than_mid_grey_128_is_accepted(dataset_root: Path, level: int, mode: str) -> None:
    film = np.asarray(Image.open(_dataset_film(dataset_root)).convert("L"))
    padded = np.full((224 + 48, 224), level, np.uint8)
    padded[:224] = film
    data = encode(Image.fromarray(padded).convert(mode), "JPEG", quality=90)
    assert read_image(data, name="padded.jpg").image.shape == (272, 224)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_padding_with_exactly_128_is_refused_documented_limitation(dataset_root: Path, mode: str) -> None:
    # A flat 128 region is coded as all-zero coefficients and decodes back to exactly 128, so a film
    # padded at the bottom with >= one MCU row of mid-grey 128 is indistinguishable from a cut file.
    film = np.asarray(Image.open(_dataset_film(dataset_root)).convert("L"))
    padded = np.full((224 + 48, 224), 128, np.uint8)
    padded[:224] = film
    data = encode(Image.fromarray(padded).convert(mode), "JPEG", quality=90)
    assert (np.asarray(Image.open(io.BytesIO(data)))[224:] == 128).all()
    with pytest.raises(ImageReadError, match=r"the bottom 48 of 272 rows are missing"):
        read_image(data, name="padded.jpg")
    # the same padding at the top, or in a PNG, is not affected
    top = np.full((224 + 48, 224), 128, np.uint8)
    top[48:] = film
    assert read_image(encode(Image.fromarray(top).convert(mode), "JPEG", quality=90)).image.shape == (272, 224)
    assert read_image(encode(Image.fromarray(padded), "PNG")).image.shape == (272, 224)


def test_an_entirely_mid_grey_jpeg_is_refused_as_flat_not_as_cut() -> None:
    data = encode(Image.new("L", (96, 80), 128), "JPEG")
    with pytest.raises(ImageReadError, match=r"^g\.jpg: image has no contrast \(flat grey, level 128 of 255"):
        read_image(data, name="g.jpg")


def test_progressive_jpeg_cut_in_its_first_scan_is_refused(dataset_root: Path) -> None:
    # A progressive JPEG cut inside its first (DC) scan leaves the later blocks at 128: refused. Cut in a
    # later scan, every block already has its DC value: the image is complete but coarser, and is NOT
    # detected (README, Known limitations).
    film = Image.open(_dataset_film(dataset_root)).convert("RGB")
    data = encode(film, "JPEG", quality=90, progressive=True)
    first_scan, second_scan = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xda"][:2]
    with pytest.raises(ImageReadError, match=r"image data ends early"):
        read_image(_cut_with_eoi(data, (first_scan + second_scan) // 2), name="p.jpg")
    late = read_image(_cut_with_eoi(data, int(len(data) * 0.9)), name="p.jpg")  # the limitation
    assert late.image.shape == (224, 224)
