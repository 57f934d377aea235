"""Is a heatmap faithful to the model? Deletion curves and the model-randomisation check.

No lesion boxes exist for the pediatric films, so a heatmap cannot be scored against ground truth.
Two tests from the literature ask instead whether it reflects what the *model* uses:

- **Deletion curve** (Petsiuk et al., 2018, "RISE: Randomized Input Sampling for Explanation of
  Black-box Models", BMVC): delete the network-input pixels in the map's order, most highlighted
  first, in equal steps, and follow the calibrated probability of the class the model predicted on
  the intact film. A faithful map makes it fall fast: a small area under the curve (AUC, fraction
  deleted on the x axis, so in [0, 1]). The baseline is the same deletion in a random pixel order.
  Deleted pixels take the value ``fill`` of the normalised input (0 = the normalisation mean,
  mid-grey for this model's ``mean = std = 0.5``). Ties in the map (a ReLU'd map is 0 over much of
  the film) are broken at random.
- **Model-randomisation check** (Adebayo et al., 2018, "Sanity Checks for Saliency Maps",
  NeurIPS): re-draw the weights of the top layers, cascading down (classifier, then the head
  convolution, then the last blocks...), and recompute the map. A map that still looks the same
  does not depend on what the model learned; the Spearman rank correlation with the trained
  model's map should fall. Weights are re-drawn from a normal distribution with each tensor's own
  mean and standard deviation (BatchNorm running statistics kept); the map compared is the raw
  (pre-ReLU) map of the class the trained model predicted, at its own resolution.

:func:`deletion_curves` needs only numpy and a scoring function (ONNX Runtime in
``benchmarks/bench_evidence.py``); :func:`randomisation_check` needs PyTorch (the ``[train]``
extra) and the model folder's ``weights.pt``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_logger = logging.getLogger(__name__)

DELETION_STEPS = 16
"""Deletion steps: 1/16 of the pixels per step, 17 points from 0 to 100 % deleted."""


def deletion_order(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices, most salient first, ties broken at random.

    Args:
        saliency: ``(H, W)`` map (any real values; larger = more important).
        rng: random generator for the tie-break.

    Returns:
        ``(H * W,)`` int64 flat indices.

    Raises:
        ValueError: if ``saliency`` is not 2-D or has non-finite values.
    """
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"saliency must be 2-D (H, W), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("saliency has NaN or infinite values")
    flat = s.ravel()
    return np.lexsort((rng.random(flat.size), -flat)).astype(np.int64)


def deletion_curves(
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    classes: np.ndarray,
    saliency: np.ndarray | None,
    steps: int = DELETION_STEPS,
    fill: float | np.ndarray = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion curves of a batch of inputs (Petsiuk et al., 2018).

    Args:
        score_fn: ``score_fn(batch, classes)`` -> ``(n,)`` score of ``classes[i]`` for input ``i``
            (e.g. calibrated probability); ``batch`` is ``(n, 1, H, W)`` float32.
        x: ``(N, 1, H, W)`` float32 network inputs.
        classes: ``(N,)`` int class followed for each input (the one predicted on the intact input).
        saliency: ``(N, H, W)`` maps in input pixels; ``None`` for the random-order baseline.
        steps: number of deletion steps (``steps + 1`` points including 0 % and 100 %).
        fill: value deleted pixels take: a number, or an ``(N, 1, H, W)`` array giving each
            pixel its replacement (e.g. a blurred copy of the input, :func:`blurred`).
        seed: seed of the tie-break (and of the random order).

    Returns:
        ``(fractions, scores)``: ``(steps + 1,)`` fraction of pixels deleted and ``(N, steps + 1)``
        float64 scores.

    Raises:
        ValueError: on mismatched shapes or ``steps < 1``.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must be (N, 1, H, W), got {x.shape}")
    n, _, h, w = x.shape
    classes = np.asarray(classes, dtype=np.int64)
    if classes.shape != (n,):
        raise ValueError(f"classes must be ({n},), got {classes.shape}")
    if saliency is not None and np.shape(saliency) != (n, h, w):
        raise ValueError(f"saliency must be ({n}, {h}, {w}), got {np.shape(saliency)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    fill_arr = np.asarray(fill, np.float32)
    if fill_arr.ndim and fill_arr.shape != x.shape:
        raise ValueError(f"fill must be a number or {x.shape}, got {fill_arr.shape}")
    rng = np.random.default_rng(seed)
    counts = np.rint(np.linspace(0.0, 1.0, steps + 1) * h * w).astype(np.int64)
    scores = np.zeros((n, steps + 1), np.float64)
    for i in range(n):
        sal = saliency[i] if saliency is not None else rng.random((h, w))
        order = deletion_order(sal, rng)
        batch = np.repeat(x[i : i + 1], steps + 1, axis=0).reshape(steps + 1, h * w)
        repl = fill_arr[i].ravel() if fill_arr.ndim else None
        for j, c in enumerate(counts):
            batch[j, order[:c]] = repl[order[:c]] if repl is not None else fill_arr
        scores[i] = score_fn(batch.reshape(steps + 1, 1, h, w), np.full(steps + 1, classes[i]))
    return counts / float(h * w), scores


def blurred(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blurred copies of ``(N, 1, H, W)`` inputs (separable kernel, radius 3 sigma, reflected edges).

    The deletion baseline that removes detail but keeps the local brightness: on a radiograph a
    constant fill is itself a finding (grey = opacity, black = air), a blur much less so.

    Returns:
        ``(N, 1, H, W)`` float32.
    """
    x = np.asarray(x, np.float32)
    r = max(1, int(round(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    pad = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    h, w = x.shape[2:]
    rows = sum(k[i] * pad[:, :, i : i + h, :] for i in range(2 * r + 1))  # (N, 1, H, W + 2r)
    return sum(k[i] * rows[:, :, :, i : i + w] for i in range(2 * r + 1)).astype(np.float32)


def curve_auc(fractions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Area under deletion curves (trapezoid rule over the fraction deleted, in [0, 1] for scores in [0, 1]).

    Args:
        fractions: ``(K,)`` increasing fractions from 0 to 1.
        scores: ``(N, K)`` or ``(K,)``.

    Returns:
        ``(N,)`` (or scalar) float64 areas.
    """
    s = np.asarray(scores, np.float64)
    f = np.asarray(fractions, np.float64)
    return np.sum((s[..., 1:] + s[..., :-1]) * 0.5 * np.diff(f), axis=-1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays of equal size (average ranks for ties; NaN if constant)."""
    ra, rb = _rank(np.ravel(a)), _rank(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _rank(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), np.float64)
    ranks[order] = np.arange(len(v), dtype=np.float64)
    vs = v[order]
    # average the ranks of tied values
    starts = np.r_[0, np.flatnonzero(np.diff(vs)) + 1]
    ends = np.r_[starts[1:], len(v)]
    for s, e in zip(starts, ends):
        if e - s > 1:
            ranks[order[s:e]] = (s + e - 1) / 2.0
    return ranks


def summarise(values: Sequence[float] | np.ndarray, seed: int = 0, n_boot: int = 1000) -> dict[str, float]:
    """Mean of per-image values with a 95 % percentile-bootstrap interval over images."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    rng = np.random.default_rng(seed)
    boots = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    return {"mean": float(v.mean()), "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "n": int(v.size)}


DELETION_FILL_SIGMA_FRACTION = 1.0 / 24.0
"""Sigma of the blurred-film fill as a fraction of the input side (8 px at 192 px)."""


def deletion_report(
    predictor: Any,
    sources: Sequence[Any],
    *,
    steps: int = DELETION_STEPS,
    seed: int = 0,
    fill: str = "blur",
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Deletion curves of every map of a model on a set of films, against random deletion.

    Each film is decoded and preprocessed as ``deephealth predict`` does it (the same
    :class:`~deephealth.inference.Predictor`); the class followed is the one the model gives the
    intact film at its shipped operating point (the class its heatmap shows); the map deleted first
    is the displayed heatmap in network-input pixels (ReLU, max-normalised, bilinear,
    :func:`~deephealth.inference.cam_heatmap`). Scores are calibrated probabilities.
    Needs no PyTorch.

    Args:
        predictor: a :class:`deephealth.inference.Predictor`.
        sources: file paths (or anything ``predictor.load`` reads) of the films.
        steps: deletion steps (``steps + 1`` points from 0 to 100 % of the pixels).
        seed: seed of the tie-breaks, the random order and the bootstrap intervals.
        fill: what deleted pixels become: ``"blur"`` (a Gaussian blur of the film, sigma
            :data:`DELETION_FILL_SIGMA_FRACTION` of the side) or ``"mean"`` (0, the normalisation
            mean: mid-grey, which on a radiograph looks like an opacity).
        batch_size: films per ONNX Runtime call when computing the maps.
        progress: show a tqdm bar on stderr (if tqdm is installed).

    Returns:
        A JSON-able dict: ``films`` (scored), ``steps``, ``fill``, ``input_size``,
        ``heatmap_source``, ``predicted_class_counts``, ``errors`` (``[file label, message]`` of
        films that could not be read) and ``maps``: for ``cam``, ``evidence`` (models that have
        one) and ``random``: ``map_shape``, ``fractions`` and ``mean_curve`` (``steps + 1``
        values), ``auc`` and ``auc_by_predicted_class`` (mean with a 95 % bootstrap interval over
        films, :func:`summarise`; lower = faster fall), and for the maps ``auc_minus_random``
        (paired, per film), ``auc_minus_random_by_predicted_class`` and ``share_below_random``
        (share of films whose map beats random deletion, in [0, 1]).

    Raises:
        ValueError: if ``fill`` is unknown, ``steps < 1`` or no film could be read.
    """
    from deephealth.calibration import decide
    from deephealth.inference import calibrated_probabilities, cam_heatmap
    from deephealth.readers import ImageReadError

    if fill not in ("blur", "mean"):
        raise ValueError(f"fill must be 'blur' or 'mean', got {fill!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    s = predictor.input_size
    names = list(predictor.artifact.class_names)
    temp, op = predictor.artifact.temperature, predictor.artifact.operating_point
    xs, errors = [], []
    for src in sources:
        try:
            image, _ = predictor.load(src)
        except ImageReadError as exc:
            errors.append([str(src), " ".join(str(exc).split())])
            continue
        xs.append(predictor._prepare(image)[1])  # (1, S, S): the network input predict scores
    if not xs:
        raise ValueError("deletion curves: none of the films could be read")
    x = np.stack(xs)

    def score(batch: np.ndarray, classes: np.ndarray) -> np.ndarray:
        logits, _ = predictor.infer(batch)
        probs = calibrated_probabilities(logits, temp)
        return probs[np.arange(len(classes)), classes]

    map_sources = ["cam"] + (["evidence"] if predictor.evidence_name else [])
    maps: dict[str, np.ndarray] = {}
    logits = None
    for src in map_sources:
        chunks = [predictor.infer(x[i : i + batch_size], cam=True, source=src) for i in range(0, len(x), batch_size)]
        logits = np.concatenate([c[0] for c in chunks])
        maps[src] = np.concatenate([c[1] for c in chunks])
    probs = calibrated_probabilities(logits, temp)
    classes = decide(probs, op)  # (N,) int64, the label predict gives each film
    sigma = s * DELETION_FILL_SIGMA_FRACTION
    fill_value: float | np.ndarray = blurred(x, sigma) if fill == "blur" else 0.0
    fill_desc = (f"Gaussian blur of the input, sigma {sigma:.0f} px" if fill == "blur"
                 else "0 (the normalisation mean, mid-grey)")
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(map_sources) + 1, unit="map", desc="deletion curves", leave=False)
        except ImportError:
            _logger.info("tqdm not installed; no progress bar")
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        for src in map_sources + ["random"]:
            sal = None if src == "random" else np.stack([cam_heatmap(m[k], (s, s)) for m, k in zip(maps[src], classes)])
            curves[src] = deletion_curves(score, x, classes, sal, steps=steps, fill=fill_value, seed=seed)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    rand_auc = curve_auc(*curves["random"])
    result: dict[str, Any] = {
        "films": int(len(x)), "steps": int(steps), "fill": fill_desc, "input_size": int(s),
        "heatmap_source": predictor.heatmap_source,
        "predicted_class_counts": {c: int(np.sum(classes == i)) for i, c in enumerate(names)},
        "errors": errors, "maps": {},
    }
    for src, (fr, sc) in curves.items():
        auc = curve_auc(fr, sc)
        entry: dict[str, Any] = {
            "map_shape": list(maps[src].shape[2:]) if src in maps else None,
            "fractions": fr.tolist(), "mean_curve": sc.mean(axis=0).tolist(), "auc": summarise(auc, seed),
            "auc_by_predicted_class": {c: summarise(auc[classes == i], seed)
                                       for i, c in enumerate(names) if np.any(classes == i)},
        }
        if src != "random":
            entry["auc_minus_random"] = summarise(auc - rand_auc, seed)
            entry["auc_minus_random_by_predicted_class"] = {
                c: summarise((auc - rand_auc)[classes == i], seed) for i, c in enumerate(names) if np.any(classes == i)}
            entry["share_below_random"] = float(np.mean(auc < rand_auc))
        result["maps"][src] = entry
    return result


# ------------------------------------------------------------------------------- model randomisation

CASCADE = ("classifier", "conv_head", "blocks.6", "blocks.5", "blocks.4")
"""Layers re-drawn, cumulatively, from the top (EfficientNet names; ``conv_head`` includes ``bn2``)."""


RESNET_CASCADE = ("fc", "layer4", "layer3")
"""The same cascade for ResNet-style names."""


def default_cascade(model_args: dict[str, Any]) -> tuple[str, ...]:
    """:data:`CASCADE` for EfficientNet-style architectures, :data:`RESNET_CASCADE` otherwise."""
    return CASCADE if "efficientnet" in str(model_args.get("arch", "")) else RESNET_CASCADE


def _randomise(module: Any, prefixes: Sequence[str], seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    found = set()
    with torch.no_grad():
        for name, p in module.named_parameters():
            top = name.split(".")[0] if not name.startswith("blocks.") else ".".join(name.split(".")[:2])
            if top == "bn2":
                top = "conv_head"
            if top in prefixes:
                found.add(top)
                mean, std = float(p.mean()), float(p.std()) if p.numel() > 1 else 0.0
                p.copy_(torch.randn(p.shape, generator=gen) * (std or 1e-3) + mean)
    missing = [p for p in prefixes if p not in found]
    if missing:
        raise ValueError(f"no parameters named {', '.join(missing)} to randomise in {type(module).__name__}")


def randomisation_check(
    model_args: dict[str, Any],
    state: dict[str, Any],
    x: np.ndarray,
    maps: Sequence[str] = ("cam", "evidence"),
    cascade: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Cascading model-randomisation check (Adebayo et al., 2018) for the CAM and the evidence map.

    Args:
        model_args: ``arch``, ``num_classes``, ``in_chans`` (``weights.pt``).
        state: the trained state dict.
        x: ``(N, 1, S, S)`` float32 network inputs.
        maps: ``"cam"`` (output stride 32, the shipped CAM) and/or ``"evidence"`` (output stride 16).
        cascade: layer groups re-drawn cumulatively from the top; default :func:`default_cascade`.
        seed: seed of the re-drawn weights.
        batch_size: images per PyTorch forward pass.

    Returns:
        ``{map: {"stages": [layer names...], "spearman": {stage: summary}}}`` with
        :func:`summarise` of the per-image Spearman correlation between the trained model's map and
        the randomised model's map of the same class, and ``"class_flip_rate"`` per stage (share of
        images whose arg-max changes, a check that randomisation did change the model).

    Raises:
        ValueError: if a layer group of ``cascade`` names no parameter of the model.
    """
    import torch

    with torch.no_grad():  # a context, never the global switch: callers may train afterwards
        return _randomisation_check(model_args, state, x, maps, tuple(cascade) if cascade else
                                    default_cascade(model_args), seed, batch_size)


def _randomisation_check(model_args: dict[str, Any], state: dict[str, Any], x: np.ndarray, maps: Sequence[str],
                         cascade: tuple[str, ...], seed: int, batch_size: int) -> dict[str, Any]:
    import torch

    from deephealth.training.evidence import _EvidenceNet, dilated_model

    out: dict[str, Any] = {}
    xt = torch.from_numpy(np.asarray(x, np.float32))

    def run(net: Any) -> tuple[np.ndarray, np.ndarray]:
        maps_, logits = [], []
        for i in range(0, len(xt), batch_size):
            m = net(xt[i : i + batch_size])
            maps_.append(m.numpy())
            logits.append(m.mean((2, 3)).numpy())
        return np.concatenate(maps_), np.concatenate(logits)

    for kind in maps:
        stride = 32 if kind == "cam" else 16
        base = dilated_model(model_args, state, output_stride=stride) if stride != 32 else _plain(model_args, state)
        ref_maps, ref_logits = run(_EvidenceNet(base).eval())
        k = ref_logits.argmax(1)
        ref = ref_maps[np.arange(len(k)), k]
        res: dict[str, Any] = {"stages": [], "spearman": {}, "class_flip_rate": {}, "map_shape": list(ref.shape[1:])}
        for depth in range(1, len(cascade) + 1):
            stage = "+".join(cascade[:depth])
            net = dilated_model(model_args, state, output_stride=stride) if stride != 32 else _plain(model_args, state)
            _randomise(net, cascade[:depth], seed)
            rmaps, rlogits = run(_EvidenceNet(net).eval())
            r = rmaps[np.arange(len(k)), k]
            res["stages"].append(stage)
            res["spearman"][stage] = summarise([spearman(a, b) for a, b in zip(ref, r)], seed)
            res["class_flip_rate"][stage] = float(np.mean(rlogits.argmax(1) != k))
            _logger.info("randomisation %s %s: Spearman %.3f", kind, stage, res["spearman"][stage]["mean"])
        out[kind] = res
    return out


def _plain(model_args: dict[str, Any], state: dict[str, Any]) -> Any:
    from deephealth.training.model import architecture_args, build_model

    m = build_model(**architecture_args(model_args))
    m.load_state_dict(state, strict=True)
    return m.eval()
