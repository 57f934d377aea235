"""Default locations: the dataset root and the bundled model. Both are configurable.

- Data: ``DEEPHEALTH_DATA_ROOT`` or ``../shared/data`` relative to the current directory or to the
  repository checkout.
- Model: ``DEEPHEALTH_MODEL_DIR`` or the model bundled inside the package (``deephealth/models/``).
"""

from __future__ import annotations

import os
from pathlib import Path

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
