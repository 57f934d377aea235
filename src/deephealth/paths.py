"""Default locations: the dataset root and the bundled model. Both are configurable.

- Data: ``DEEPHEALTH_DATA_ROOT`` or ``../shared/data`` relative to the current directory or to the
  repository checkout.
- Model: ``DEEPHEALTH_MODEL_DIR`` or the model bundled inside the package (``deephealth/models/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

_PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_MODELS_DIR = _PACKAGE_DIR / "models"
DEFAULT_MODEL_NAME = "deephealth-cxr3"


def data_root() -> Path:
    """Folder that holds ``chest_xray_224/``, ``chest_xray_224.csv`` and ``dicom/``.

    ``DEEPHEALTH_DATA_ROOT`` wins; otherwise ``../shared/data`` is looked for beside the current
    directory and beside the repository checkout (``src/deephealth/../../..``).
    """
    env = os.environ.get("DEEPHEALTH_DATA_ROOT")
    if env:
        return Path(env)
    candidates = [Path.cwd() / ".." / "shared" / "data", _PACKAGE_DIR.parents[2] / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]


def dataset_dir() -> Path:
    """The Kermany-layout dataset folder, ``<data_root>/chest_xray_224``."""
    return data_root() / "chest_xray_224"


def default_model_dir() -> Path:
    """The model folder inference uses when none is given: ``DEEPHEALTH_MODEL_DIR`` or the bundled one."""
    env = os.environ.get("DEEPHEALTH_MODEL_DIR")
    if env:
        return Path(env)
    return BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME


def state_dir() -> Path:
    """Folder for the service's state (the audit trail's SQLite file).

    ``DEEPHEALTH_STATE_DIR`` wins; otherwise ``$XDG_STATE_HOME/deephealth``, and without
    ``XDG_STATE_HOME`` ``~/.local/state/deephealth`` (XDG Base Directory Specification).
    The folder is not created here.
    """
    env = os.environ.get("DEEPHEALTH_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "deephealth"


def portable_path(path: str | Path | None, base: str | Path | None = None) -> str:
    """A data path as the model card records it: never an absolute path of the exporting machine.

    Args:
        path: a dataset folder as training or export saw it (often absolute, resolved by
            :func:`deephealth.paths.data_root`); ``None`` or ``""`` for the default.
        base: the folder to make it relative to; default the current directory (the checkout that
            ``deephealth export`` runs in, so the default data becomes ``../shared/data/...``).

    Returns:
        ``path`` unchanged when it is relative (as given); an absolute path inside ``base`` or
        beside it (one ``..`` at most) relative to ``base``; any other absolute path reduced to its
        last two parts (``<...>/data/chest_xray_224``); ``""`` for no path.
    """
    if not path:
        return ""
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    rel = os.path.relpath(p, Path(base) if base is not None else Path.cwd())
    if not rel.startswith(os.pardir + os.sep + os.pardir) and rel != os.pardir + os.sep + os.pardir:
        return rel
    return "<...>/" + "/".join(p.parts[-2:])


PORTABLE_PREFIX = "<...>"
"""How :func:`portable_path` marks a path of which only the last two parts were kept."""


def resolve_portable_path(recorded: str | Path, base: str | Path | None = None,
                          configured_root: str | Path | None = None,
                          accept: Callable[[Path], bool] | None = None) -> Path:
    """The existing folder that a path recorded by :func:`portable_path` names on this machine.

    Evaluation reports record their data folder portably (``../shared/data/chest_xray_224``,
    ``<...>/films/chest_xray_224``); code that reads one back and needs the real folder resolves it
    here. Candidates, in order; the first existing folder that ``accept`` takes wins:

    1. an absolute ``recorded`` as it is (reports written before paths were recorded portably);
    2. a relative ``recorded`` against ``base`` (default: the current directory, which is what
       :func:`portable_path` made it relative to when the report was written from a checkout);
    3. the configured data root (``configured_root``, default :func:`data_root`, i.e.
       ``DEEPHEALTH_DATA_ROOT`` or ``../shared/data``) and its parent joined with the recorded
       path's trailing parts, longest first (``<root>/chest_xray_224`` for
       ``../shared/data/chest_xray_224``; ``<parent of root>/data`` for a recorded ``../shared/data``).

    Only the last two parts of an outside path are recorded, so step 3 can name a different folder
    that happens to have the same name: pass ``accept`` (e.g. "the report's files are in it") to
    rule those out.

    Args:
        recorded: the path as a report recorded it.
        base: folder a relative ``recorded`` is taken against first; default the current directory.
        configured_root: the data root to look under; default :func:`data_root`.
        accept: optional check of a candidate folder (it exists when called); ``False`` skips it.

    Returns:
        The folder, absolute and resolved.

    Raises:
        FileNotFoundError: if ``recorded`` is empty or no candidate is an existing folder that
            ``accept`` takes; the message names the recorded path, every place looked at and how
            to point at the data.
    """
    text = str(recorded or "")
    if not text:
        raise FileNotFoundError("no data folder was recorded, so the images cannot be found")
    p = Path(text)
    candidates: list[Path] = []
    if p.is_absolute():
        candidates.append(p)
    elif p.parts[0] != PORTABLE_PREFIX:
        candidates.append((Path(base) if base is not None else Path.cwd()) / p)
    tail = [part for part in p.parts if part not in (PORTABLE_PREFIX, os.pardir, os.curdir, p.anchor)]
    root = Path(configured_root) if configured_root is not None else data_root()
    for n in range(len(tail), 0, -1):
        for folder in (root, root.parent):
            candidates.append(folder.joinpath(*tail[-n:]))
    seen: set[Path] = set()
    for c in candidates:
        c = c.resolve() if c.is_dir() else c
        if c in seen:
            continue
        seen.add(c)
        if c.is_dir() and (accept is None or accept(c)):
            return c
    looked = ", ".join(str(c) for c in seen)
    raise FileNotFoundError(
        f"the data folder recorded as {text!r} was not found on this machine (looked at: {looked}"
        + ("; folders of that name that do not hold the report's files are skipped" if accept else "")
        + "); set DEEPHEALTH_DATA_ROOT to the data root that holds it, or run from the checkout "
        "the report was made in"
    )
