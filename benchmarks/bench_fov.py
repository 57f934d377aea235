"""Field-of-view sensitivity (issue 9): does a model still call normal films normal when zoomed in?

The 0.1.0 model learnt "wide field of view = normal": a centre crop of 85 % of each side turned
64 % -> 31 % of the official test split's normal films into pneumonia. This prints, for a model
and a split, the share of normal films called normal (at the model's operating point) with the
whole film and with centre crops of 85 % and 70 % of each side (resized back by the
preprocessing contract), and the share of pneumonia films called normal. Prints figures; asserts
nothing. The validation version of this proxy is what training selects on (``shift_metrics``);
run it on the test split only for reporting.

Usage:
    python benchmarks/bench_fov.py [--model DIR] [--split test] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deephealth import paths  # noqa: E402
from deephealth.cpu import describe  # noqa: E402
from deephealth.inference import Predictor  # noqa: E402
from deephealth.manifest import scan  # noqa: E402
from deephealth.readers import read_image  # noqa: E402

CROPS = (1.0, 0.85, 0.7)


def centre_crop(image: np.ndarray, keep: float) -> np.ndarray:
    """The centre ``keep`` of each side of an ``(H, W)`` image."""
    h, w = image.shape
    ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
    t, l = (h - ch) // 2, (w - cw) // 2
    return image[t : t + ch, l : l + cw]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--data-root", default=None, help="Kermany-layout folder (default: ../shared/data/chest_xray_224)")
    args = ap.parse_args()
    pred = Predictor(args.model or paths.default_model_dir())
    records = scan(Path(args.data_root) if args.data_root else paths.dataset_dir()).split(args.split)
    normal = [r for r in records if r.label == "normal"]
    pneu = [r for r in records if r.label != "normal"]
    print(f"model {pred.artifact.name} {pred.artifact.version}; split {args.split}: {len(normal)} normal, "
          f"{len(pneu)} pneumonia films; CPU {describe()}")
    print(f"{'centre crop':>12} | {'normals called normal':>22} | {'pneumonia called normal':>24}")
    for keep in CROPS:
        shares = []
        for group in (normal, pneu):
            imgs = [centre_crop(read_image(r.path).image, keep) for r in group]
            res = pred.predict_many(imgs, batch_size=64)
            shares.append(np.mean([getattr(x, "label", None) == "normal" for x in res]))
        print(f"{keep:>11.0%} | {100 * shares[0]:>21.1f} % | {100 * shares[1]:>23.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
