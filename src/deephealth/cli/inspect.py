"""Read image files and show what the model will see.

For each file (folders are searched recursively; hidden files and, as in predict, non-image suffixes
such as notes.txt are skipped and counted on stderr; name a file to read it anyway) the reader decodes the
image exactly as prediction does and reports its format, size, bit depth, DICOM photometric
interpretation and modality, the intensity range of the decoded image (0 = black/air,
1 = white/dense) and any warnings. A file that cannot be used gets a one-line error and the other
files are still processed.

Output: a table by default; with --json, one JSON array of objects with the keys path, ok, format,
width, height, bit_depth, photometric_interpretation, modality, view_position, decoded_width,
decoded_height, mode, transfer_syntax, the colour facts (color_fraction, color_block_fraction,
color_spread), the DICOM header facts the input gate judges (sop_class_uid, sop_class_name,
body_part, patient_age, patient_age_years), min, max, mean, warnings, out (the PNG written, or
null) and error (null when ok). Inspect reads only: the verdict on those facts (lateral view,
adult...) is the input gate's, shown by `deephealth predict`.
With --out DIR, each decoded image is written to DIR/<stem>.png as 8-bit grayscale (a number is
appended when two files share a stem).

Exit status: 0 when every file was read, 1 when at least one failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``deephealth inspect``."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively for image suffixes, as predict does)")
    parser.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write each decoded image to DIR/<stem>.png (8-bit)")


def expand_paths(paths: list[str], skipped: list[str] | None = None) -> list[Path]:
    """Files named on the command line, in order, then the image files under each folder (sorted).

    Inside folders the rule of ``deephealth predict`` applies
    (:func:`deephealth.inputs.is_image_candidate`): hidden files and folders are skipped, and so
    are files with a non-image suffix (``notes.txt``), which are appended to ``skipped`` when a
    list is given. A file named directly is always inspected; a path that does not exist is kept
    so that the reader reports it.
    """
    from deephealth.inputs import is_image_candidate

    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if not f.is_file() or any(part.startswith(".") for part in rel.parts):
                    continue
                if is_image_candidate(f):
                    files.append(f)
                elif skipped is not None:
                    skipped.append(str(f))
        else:
            files.append(p)
    return files


def inspect_file(path: Path, out_dir: Path | None, used_names: set[str]) -> dict[str, Any]:
    """Read one file and describe it; never raises (every failure becomes ``ok: False``)."""
    import numpy as np

    from deephealth.readers import ImageReadError, read_image

    row: dict[str, Any] = {
        "path": str(path), "ok": False, "format": None, "width": None, "height": None,
        "min": None, "max": None, "mean": None, "warnings": [], "out": None, "error": None,
    }
    try:
        result = read_image(path)
        img = result.image
        info = result.info.to_dict()
        info.pop("path", None)
        row.update(info)
        row.update(
            ok=True,
            min=round(float(img.min()), 6),
            max=round(float(img.max()), 6),
            mean=round(float(img.mean()), 6),
            out=None,
            error=None,
        )
        if out_dir is not None:
            from PIL import Image

            target = _unique_png(out_dir, path.stem, used_names)
            pixels = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(target)
            row["out"] = str(target)
    except ImageReadError as exc:
        row.update(error=str(exc))
    except OSError as exc:
        row.update(error=f"{path}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        logger.debug("unexpected error reading %s", path, exc_info=True)
        row.update(error=f"{path}: unexpected error ({type(exc).__name__}: {exc})")
    return row


def _unique_png(out_dir: Path, stem: str, used: set[str]) -> Path:
    name = f"{stem}.png"
    n = 2
    while name in used:
        name = f"{stem}-{n}.png"
        n += 1
    used.add(name)
    return out_dir / name


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'status':6}  {'format':6}  {'size':>11}  {'bits':>4}  {'photometric':11}  {'mod':3}  "
             f"{'min':>5}  {'max':>5}  {'mean':>5}  path"]
    for r in rows:
        if r["ok"]:
            size = f"{r['width']}x{r['height']}"
            lines.append(
                f"{'ok':6}  {r['format']:6}  {size:>11}  {r['bit_depth']:>4}  "
                f"{(r['photometric_interpretation'] or '-'):11}  {(r['modality'] or '-'):3}  "
                f"{r['min']:5.3f}  {r['max']:5.3f}  {r['mean']:5.3f}  {r['path']}"
            )
            if (r["decoded_width"], r["decoded_height"]) != (r["width"], r["height"]):
                lines.append(f"{'':8}decoded at {r['decoded_width']}x{r['decoded_height']}")
            lines.extend(f"{'':8}warning: {w}" for w in r["warnings"])
            if r.get("out"):
                lines.append(f"{'':8}wrote {r['out']}")
        else:
            lines.append(f"{'FAILED':6}  {r['error']}")
    ok = sum(r["ok"] for r in rows)
    lines.append(f"{ok} of {len(rows)} file(s) read, {len(rows) - ok} failed")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Inspect every file; print a table or JSON; 0 if all were read, 1 if any failed."""
    from deephealth.inputs import skipped_line

    skipped: list[str] = []
    files = expand_paths(args.paths, skipped)
    if skipped:
        print(skipped_line(skipped), file=sys.stderr)
    if not files:
        print("deephealth inspect: no files found under " + ", ".join(args.paths), file=sys.stderr)
        return 1
    out_dir: Path | None = args.out
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"deephealth inspect: cannot create output folder {out_dir}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    used: set[str] = set()
    rows = [inspect_file(f, out_dir, used) for f in files]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows))
    return 0 if all(r["ok"] for r in rows) else 1
