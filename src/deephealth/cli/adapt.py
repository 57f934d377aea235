"""Adapt a model to a site's own films (AdaBN): re-estimate BatchNorm statistics on unlabelled images.

Reads every image in --images (a folder, searched recursively, or files), re-estimates the
network's BatchNorm statistics on them with no labels and no weight update (Li et al., 2016), and
writes a new model folder with the adaptation's provenance (number of films, their SHA-256, date,
source model) in metadata.json. Temperature and operating point stay the source model's (fitted on
labelled validation data). Needs the [train] extra (PyTorch).

Example: deephealth adapt --images /data/site-films --out models/site-adapted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--images", required=True, nargs="+", metavar="PATH",
                        help="the site's unlabelled films: folders (recursive), files or glob patterns")
    parser.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    parser.add_argument("--model", default=None, metavar="DIR", help="source model folder (default: the bundled model)")
    parser.add_argument("--min-images", type=int, default=None, metavar="N", help="fewest readable films (default 100)")
    parser.add_argument("--name", default=None, help="model name (default: <source>-adapted)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Adapt and export; prints the new folder and what was used. Exit 0 ok, 2 on failure."""
    try:
        from deephealth.training.adapt import MIN_IMAGES, AdaptError, adapt_model
    except ImportError as exc:
        print(f"deephealth adapt needs the [train] extra (PyTorch): {exc}", file=sys.stderr)
        return 2
    from deephealth.artifact import ModelArtifactError
    from deephealth.paths import default_model_dir

    from deephealth.inputs import collect_inputs  # the same file picking as predict

    files, missing = collect_inputs(args.images)
    for arg, reason in missing:
        print(f"skipped {arg}: {reason}", file=sys.stderr)
    if not files:
        print(f"error: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 2
    files = [Path(f) for f in files]
    bad: list[str] = []

    def on_error(path: Path, msg: str) -> None:
        bad.append(f"{path}: {msg}")

    try:
        out = adapt_model(args.model or default_model_dir(), files, args.out,
                          min_images=args.min_images if args.min_images is not None else MIN_IMAGES,
                          name=args.name, on_error=on_error, progress=not args.quiet)
    except (AdaptError, ModelArtifactError, ValueError) as exc:
        for line in bad:
            print(f"skipped {line}", file=sys.stderr)
        print(f"adapt failed: {exc}", file=sys.stderr)
        return 2
    for line in bad:
        print(f"skipped {line}", file=sys.stderr)
    print(f"site-adapted model written to {out} ({len(files) - len(bad)} films used, {len(bad)} skipped)")
    print(f"score it: deephealth evaluate --model {out} --data YOUR_LABELLED.csv")
    return 0
