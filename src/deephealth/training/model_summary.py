"""A human-readable summary of a network: layers, output shapes, parameters (``model_summary.txt``).

One job of the export (:mod:`deephealth.training.export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deephealth.training.onnx_graph import CAM_NAME, FEATURES_NAME, INPUT_NAME, LOGITS_NAME


def _count_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def model_summary(model: nn.Module, input_size: int) -> dict[str, Any]:
    """Describe a network layer by layer by running one ``(1, 1, S, S)`` input through it.

    Output shapes are recorded with forward hooks on every leaf module, as in Keras'
    ``model.summary()``.

    Args:
        model: a pool+linear classifier (the plain timm model, not the :class:`CamModel` wrapper).
        input_size: ``S``, side of the square input in pixels.

    Returns:
        ``{"parameters": int, "trainable_parameters": int, "layers": [...], "leaf_layers": [...],
        "feature_shape": [C, h, w]}``; ``layers`` lists the top-level children and ``leaf_layers``
        every leaf module, each as ``{"name", "type", "output_shape", "parameters"}`` with the batch
        axis shown as ``"N"``.
    """
    records: dict[str, list[Any]] = {}
    hooks = []

    def _hook(name: str):
        def fn(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                records[name] = ["N", *out.shape[1:]]
            elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
                records[name] = ["N", *out[0].shape[1:]]

        return fn

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    tops = list(model.named_children())
    for name, mod in {**dict(leaves), **dict(tops)}.items():
        hooks.append(mod.register_forward_hook(_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = model.forward_features(torch.zeros(1, 1, input_size, input_size))
            model.forward_head(feats)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    def _row(name: str, mod: nn.Module) -> dict[str, Any]:
        shape = records.get(name)
        return {
            "name": name,
            "type": type(mod).__name__,
            "output_shape": [int(s) if not isinstance(s, str) else s for s in shape] if shape else None,
            "parameters": _count_params(mod),
        }

    return {
        "parameters": _count_params(model),
        "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "feature_shape": [int(s) for s in feats.shape[1:]],
        "layers": [_row(n, m) for n, m in tops],
        "leaf_layers": [_row(n, m) for n, m in leaves],
    }


def format_summary(summary: dict[str, Any], title: str, input_size: int, num_classes: int) -> str:
    """Render :func:`model_summary` as a fixed-width text table (the content of ``model_summary.txt``)."""
    h, w = summary["feature_shape"][1:]
    lines = [
        title,
        "",
        f"input  {INPUT_NAME}: (N, 1, {input_size}, {input_size}) float32 (preprocess() output)",
        f"output {LOGITS_NAME}: (N, {num_classes}) float32 raw logits",
        f"output {CAM_NAME}: (N, {num_classes}, {h}, {w}) float32 class activation maps (logit units)",
        f"output {FEATURES_NAME}: (N, {summary['feature_shape'][0]}) float32 pooled penultimate features",
        "",
    ]
    rows = summary["leaf_layers"]
    name_w = max([len("layer")] + [len(r["name"]) for r in rows])
    type_w = max([len("type")] + [len(r["type"]) for r in rows])
    shape_w = max([len("output shape")] + [len(_shape_str(r["output_shape"])) for r in rows])
    header = f"{'layer':<{name_w}}  {'type':<{type_w}}  {'output shape':<{shape_w}}  {'params':>12}"
    lines += [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name']:<{name_w}}  {r['type']:<{type_w}}  {_shape_str(r['output_shape']):<{shape_w}}  "
            f"{r['parameters']:>12,}"
        )
    lines += [
        "-" * len(header),
        f"{len(rows)} layers, {summary['parameters']:,} parameters "
        f"({summary['trainable_parameters']:,} trainable), "
        f"{summary['parameters'] * 4 / 1e6:.1f} MB as float32",
        "",
    ]
    return "\n".join(lines)


def _shape_str(shape: Sequence[Any] | None) -> str:
    return "?" if shape is None else "(" + ", ".join(str(s) for s in shape) + ")"
