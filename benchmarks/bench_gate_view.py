"""Refused and flagged fractions of the input gate on real films and on lateral stand-ins (issue 15).

Usage::

    PYTHONPATH=src python benchmarks/bench_gate_view.py [--model DIR] [--split val|test] [--stand-ins N]

Runs the full Predictor (readers, gate, network) on the films of one split: ``val`` is the
patient-grouped validation split of the official training folder (the split the gate's thresholds
were chosen on, with the model's own ``val_fraction`` and ``split_seed``), ``test`` the official
test folder (reported only: nothing is tuned on it). Then on ``N`` drawn lateral films
(:func:`deephealth.training.gate_fit._lateral_phantom`, seed 2026, not a seed the fitting uses), ``N``
drawn with a validation film's lung texture, and ``N`` half films (one half of a validation film stretched to a full frame), written as PNG files
and read back as a user's upload would be. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--stand-ins", type=int, default=200)
    args = ap.parse_args(argv)

    from deephealth.inference import Predictor, PredictionError
    from deephealth.manifest import grouped_split, scan
    from deephealth.paths import dataset_dir
    from deephealth.training.gate_fit import _half_film, _lateral_phantom

    p = Predictor(args.model)
    root = dataset_dir()
    cfg = ((p.artifact.metadata.get("training") or {}).get("config") or {})
    if args.split == "val":
        _, recs = grouped_split(scan(root).split("train"), float(cfg.get("val_fraction", 0.1)),
                                int(cfg.get("split_seed", 0)))
    else:
        recs = scan(root).split("test")
    films = [str(root / r.path) for r in recs]

    def rates(results: list) -> dict:
        status = [r.suitability.status if r.suitability is not None else "error" for r in results]
        n = len(status)
        return {"images": n, "refused": sum(s == "refuse" for s in status) / n,
                "flagged": sum(s in ("refuse", "warn") for s in status) / n}

    out = {"model": f"{p.artifact.name} {p.artifact.version}", "split": args.split,
           args.split: rates(p.predict_many(films, allow_unsuitable=True))}
    rng = np.random.default_rng(2026)

    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.uint8(np.clip(a, 0, 1) * 255 + 0.5)).save(buf, format="PNG")
        return buf.getvalue()

    _, val = grouped_split(scan(root).split("train"), 0.1, 0)
    val_u8 = [np.asarray(Image.open(root / r.path).convert("L")) for r in val[: args.stand_ins]]
    lat = [png(_lateral_phantom(rng)) for _ in range(args.stand_ins)]
    lat_tex = [png(_lateral_phantom(rng, val_u8[i % len(val_u8)])) for i in range(args.stand_ins)]
    half = [png(_half_film(val_u8[i % len(val_u8)], rng)) for i in range(args.stand_ins)]
    for name, data in (("lateral_stand_ins", lat), ("lateral_stand_ins_textured", lat_tex), ("half_films", half)):
        res = p.predict_many(data, names=[f"{name}-{i}.png" for i in range(len(data))], allow_unsuitable=True)
        out[name] = rates([r for r in res if not isinstance(r, PredictionError) or r.suitability is not None])
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
