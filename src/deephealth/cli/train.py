"""Train a model (needs the [train] extra: PyTorch, timm).

Settings come from the TrainConfig defaults, then --config FILE (YAML), then flags; every TrainConfig
field is a flag (e.g. --epochs 30 --input-size 192 --arch resnet18). The released model's recipe is
configs/release.yaml: `deephealth train --config configs/release.yaml` reproduces it. The run folder
(runs/<name>/) receives config.yaml, history.csv, curves.png, best.pt, calibration.json, summary.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

# Field names and types, kept here (no torch import) so --help stays light.
_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _bool(v: str) -> bool:
    try:
        return _BOOL[v.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deephealth.training.config import TrainConfig, field_types

    parser.add_argument("--config", metavar="FILE", help="YAML file of TrainConfig overrides")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        t = field_types()[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if t is bool:
            parser.add_argument(flag, dest=f.name, type=_bool, metavar="true|false", default=None,
                                help=f"(default {str(default).lower()})")
        else:
            parser.add_argument(flag, dest=f.name, type=t, default=None, help=f"(default {default!r})")
    parser.add_argument("--data", dest="data_dir", type=str, default=None, help="alias of --data-dir")


def run(args: argparse.Namespace) -> int:
    import logging

    try:
        from deephealth.training.config import TrainConfig, load_config
        from deephealth.training.loop import fit
        from deephealth.training.model import PretrainedWeightsUnavailable
    except ImportError as exc:
        print(f"error: training needs the [train] extra (pip install 'deephealth[train]'): {exc}", file=sys.stderr)
        return 2
    logging.getLogger("deephealth").setLevel(logging.INFO)
    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    try:
        config = load_config(args.config, **overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_dir = fit(config, progress=not args.quiet)
    except PretrainedWeightsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:  # missing data; an unknown architecture
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run written to {run_dir}")
    print(f"next: deephealth export {run_dir} --out DIR")
    return 0
