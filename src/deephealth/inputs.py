"""Which files to classify: expand files, folders, glob patterns and manifests into a list of inputs.

One input policy for every command that reads many files (``predict``, ``batch``, ``adapt``):

- a **file** is taken as it is (the readers decide later whether it is an image; a file they
  cannot read becomes an error result naming it, never a crash);
- a **folder** is searched recursively for image files: the suffixes in
  :data:`deephealth.readers.formats.FILE_SUFFIXES` plus files without a suffix (which may be
  DICOM); hidden files are skipped;
- a **glob pattern** (``scans/**/*.dcm``) is expanded, recursively with ``**``;
- a **manifest**, a ``.csv`` or ``.parquet`` file, lists inputs in a column named ``path`` (or
  ``source``, ``file``, ``filename``; the first column otherwise). Relative entries are resolved
  against ``root`` (default: the manifest's folder); entries with a scheme (``s3://...``) are kept as
  they are. Listed files are not checked here: a missing one becomes an error result when read.

This module is on the serving path: it needs only the standard library (plus pyarrow for a Parquet
manifest, imported only then).
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections import Counter
from pathlib import Path

from deephealth.readers.formats import FILE_SUFFIXES

_logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".parquet")
"""Suffixes of files read as manifests (lists of inputs) rather than as images."""

MANIFEST_COLUMNS = ("path", "source", "file", "filename")
"""Column names searched, in this order (case-insensitive), for the inputs of a manifest."""

_GLOB_CHARS = set("*?[")


class ManifestError(ValueError):
    """A manifest cannot be read (missing, empty, unreadable, no usable column); the message names it."""


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` inputs (object storage such as ``s3://bucket/key``), False for local paths."""
    head, sep, _ = path.partition("://")
    # RFC 3986 scheme: a letter then letters, digits, "+", "-", "."; one letter is a Windows drive.
    return bool(sep) and len(head) > 1 and head[0].isalpha() and all(c.isalnum() or c in "+-." for c in head)


def is_manifest(path: str | Path) -> bool:
    """True when ``path`` names a manifest by its suffix (``.csv`` or ``.parquet``, any case)."""
    return str(path).lower().endswith(MANIFEST_SUFFIXES)


def is_image_candidate(path: Path) -> bool:
    """Whether a file found inside a folder is picked up: not hidden, an image suffix or no suffix."""
    return not path.name.startswith(".") and (path.suffix.lower() in FILE_SUFFIXES or path.suffix == "")


def _pick_column(names: list[str], manifest: str) -> str:
    if not names:
        raise ManifestError(f"{manifest}: manifest has no columns")
    lower = {n.strip().lower(): n for n in names}
    for want in MANIFEST_COLUMNS:
        if want in lower:
            return lower[want]
    _logger.info("%s: no column named %s; using the first column %r", manifest, "/".join(MANIFEST_COLUMNS), names[0])
    return names[0]


def read_manifest(manifest: str | Path, root: str | Path | None = None) -> list[str]:
    """The inputs a CSV or Parquet manifest lists.

    Args:
        manifest: a ``.csv`` (with a header row) or ``.parquet`` file.
        root: folder that relative entries are resolved against; ``None`` means the manifest's folder.

    Returns:
        The entries in file order, relative ones joined to ``root``; empty cells are skipped.

    Raises:
        ManifestError: the file cannot be read, has no rows or no columns, or (Parquet) pyarrow is
            not installed. The message starts with the manifest's path.
    """
    name = str(manifest)
    base = Path(root) if root is not None else Path(manifest).parent
    if name.lower().endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ManifestError(f"{name}: a Parquet manifest needs pyarrow (pip install 'deephealth[scale]')") from exc
        try:
            table = pq.read_table(name)
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise ManifestError(f"{name}: cannot read the Parquet manifest ({' '.join(str(exc).split())})") from exc
        col = _pick_column(table.column_names, name)
        values = [v for v in table.column(col).to_pylist()]
    else:
        try:
            with open(name, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                col = _pick_column(list(reader.fieldnames or []), name)
                values = [row.get(col) for row in reader]
        except OSError as exc:
            raise ManifestError(f"{name}: cannot read the manifest ({exc.strerror or exc})") from exc
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ManifestError(f"{name}: not a readable CSV manifest ({exc})") from exc
    out: list[str] = []
    for v in values:
        if v is None or not str(v).strip():
            continue
        entry = str(v).strip()
        if not is_uri(entry) and not os.path.isabs(entry):
            entry = str(base / entry)
        out.append(entry)
    if not out:
        raise ManifestError(f"{name}: the manifest lists no inputs (column {col!r} is empty)")
    return out


SKIP_REASON = "not an image file suffix (name the file itself to read it anyway)"
"""Why a file found inside a folder was not read (its suffix is not an image suffix)."""


def _walk(folder: Path) -> tuple[list[str], list[str]]:
    """One pass over a folder (recursive): ``(images, others)``, each sorted.

    ``images`` are the files :func:`is_image_candidate` takes; ``others`` the visible files (no part
    of the path below ``folder`` starting with ``.``) with a suffix that is not an image suffix.
    """
    images: list[str] = []
    others: list[str] = []
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        if is_image_candidate(f):
            images.append(str(f))
        elif f.suffix and not any(part.startswith(".") for part in f.relative_to(folder).parts):
            others.append(str(f))
    return images, others


def collect_inputs(paths: list[str], *, root: str | Path | None = None,
                   skipped: list[str] | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand command-line paths into the inputs to classify.

    Args:
        paths: files, folders (searched recursively, see :func:`is_image_candidate`), glob
            patterns, CSV/Parquet manifests (see the module doc) and ``scheme://`` URIs (kept).
        root: folder that a manifest's relative entries are resolved against (default: its folder).
        skipped: if given, receives the files that folder (and glob-matched folder) arguments hold
            but that are not taken because of their suffix (notes.txt, report.pdf), each once, in
            the same walk; a file also named directly is read, so it is not listed.

    Returns:
        ``(files, missing)``: inputs in a stable order (each argument's files sorted, a manifest's
        in its order, duplicates dropped) and ``(argument, reason)`` for arguments that match
        nothing or a manifest that cannot be read.
    """
    files: list[str] = []
    missing: list[tuple[str, str]] = []
    seen: set[str] = set()
    others: list[str] = []

    def add(p: str) -> None:
        key = p if is_uri(p) else os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for arg in paths:
        p = Path(arg)
        if is_uri(arg):
            add(arg)
        elif p.is_dir():
            found, other = _walk(p)
            others.extend(other)
            if not found:
                missing.append((arg, "folder contains no image files"))
            for f in found:
                add(f)
        elif p.is_file() and is_manifest(arg):
            try:
                entries = read_manifest(arg, root)
            except ManifestError as exc:
                missing.append((arg, str(exc).removeprefix(f"{arg}: ")))
                continue
            for e in entries:
                add(e)
        elif p.exists():
            add(arg)
        elif _GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            matched = False
            for m in matches:
                mp = Path(m)
                if mp.is_file():
                    add(m)
                    matched = True
                elif mp.is_dir():
                    found, other = _walk(mp)
                    others.extend(other)
                    for f in found:
                        add(f)
                        matched = True
            if not matched:
                missing.append((arg, "no files match this pattern"))
        else:
            missing.append((arg, "no such file or folder"))
    if skipped is not None:
        for f in others:
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                skipped.append(f)
    return files, missing


def skipped_in_folders(paths: list[str], taken: list[str]) -> list[str]:
    """The files that folder arguments hold but :func:`collect_inputs` did not take because of
    their suffix (as its ``skipped`` argument gives them in the same walk).

    Args:
        paths: the command-line arguments, as given to :func:`collect_inputs`.
        taken: the files :func:`collect_inputs` returned (not listed again).

    Returns:
        The skipped files, sorted per folder, each once.
    """
    out: list[str] = []
    collect_inputs(paths, skipped=out)
    done = {os.path.abspath(f) for f in taken}
    return [f for f in out if os.path.abspath(f) not in done]


def skipped_line(skipped: list[str], show: int = 5) -> str:
    """One stderr line: how many files were skipped, by suffix, and the first few names.

    >>> skipped_line(["a/notes.txt", "a/b.csv", "a/c.txt"])
    'skipped 3 file(s) in folders, not image suffixes (.txt 2, .csv 1): a/notes.txt, a/b.csv, a/c.txt; name a file itself to read it anyway'
    """
    by_suffix = Counter(Path(f).suffix.lower() for f in skipped)
    kinds = ", ".join(f"{suf} {n}" for suf, n in by_suffix.most_common())
    names = ", ".join(skipped[:show]) + (f" and {len(skipped) - show} more" if len(skipped) > show else "")
    return (f"skipped {len(skipped)} file(s) in folders, not image suffixes ({kinds}): {names}; "
            "name a file itself to read it anyway")
