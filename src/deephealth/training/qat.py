"""Quantisation-aware training (QAT) of a pool+linear classifier for ONNX Runtime's int8 kernels (issue 16).

Post-training static int8 of 0.3.0 (:mod:`deephealth.training.quantize`) changed 7-8 of the 502
validation labels (51 on an AVX2 CPU; docs/model-development.md, sections 10 and 12). QAT (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018) fine-tunes the network with the rounding it will
meet at inference simulated in the forward pass ("fake quantisation", straight-through gradients),
so the weights adapt to it.

The simulated arithmetic is the one ONNX Runtime runs for a QDQ graph on the CPU
(onnxruntime.ai/docs/performance/model-optimizations/quantization.html):

1. BatchNorm is folded into the preceding convolution with its running (eval-mode) statistics
   (:func:`fold_batchnorm`), as ONNX Runtime does at load time; the statistics are frozen.
2. Every convolution's weight is fake-quantised per output channel, symmetric int8
   (``torch.ao.nn.qat.Conv2d``); with ``weight_bits=7`` to the range [-64, 63], which avoids the
   16-bit saturation of the u8 x s8 ``VPMADDUBSW`` kernels ONNX Runtime uses on AVX2 CPUs without
   VNNI (its ``reduce_range`` option, for the same reason). Weight scales follow the weights
   during training (moving-average per-channel observers).
3. Activations are fake-quantised per tensor, asymmetric uint8, at the network input, after each
   convolution (after its ReLU6 where it has one) and after each residual addition: exactly the
   tensors ONNX Runtime's QDQ fusion turns into ``QLinearConv`` / ``QLinearAdd`` inputs and outputs.
   Their ranges come from min/max observers (moving average), calibrated on training films and
   frozen after ``observer_steps`` training steps (:func:`freeze_activation_observers`).
4. The global pooling, the linear classifier, the class activation map and the pooled features
   stay in float32 (well under 1 % of the network's multiply-adds), so :class:`deephealth.training.model.CamModel`'s
   three outputs keep their meaning.

:func:`export_qdq_onnx` exports the fake-quantised network with ``torch.onnx.export``: each fake
quantiser becomes a ``QuantizeLinear`` / ``DequantizeLinear`` pair (opset >= 13), the weights are
stored as int8 initializers, and ONNX Runtime fuses the pairs into integer kernels at load time.
Library parts used: ``torch.ao.quantization.FakeQuantize`` and its observers, ``torch.ao.nn.qat.Conv2d``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.nn import qat as nnqat
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
)

_logger = logging.getLogger(__name__)

ACTIVATION_AVERAGING = 0.01
"""Moving-average constant of the activation range observers (torch's default)."""


class TrainObservedFakeQuantize(FakeQuantize):
    """``torch.ao.quantization.FakeQuantize`` whose observer only updates in training mode.

    Evaluation (validation, export, the weight-EMA copy) never moves a range, so validation films
    cannot leak into the quantisation parameters. Input and output: any float tensor, same shape.
    """

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803 (torch's name)
        if self.training or self.observer_enabled[0] == 0:
            return super().forward(X)
        saved = self.observer_enabled.clone()
        self.observer_enabled[0] = 0
        try:
            return super().forward(X)
        finally:
            self.observer_enabled.copy_(saved)


def activation_fake_quant() -> TrainObservedFakeQuantize:
    """A per-tensor asymmetric uint8 fake quantiser ([0, 255], moving-average min/max observer)."""
    return TrainObservedFakeQuantize(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine, averaging_constant=ACTIVATION_AVERAGING,
    )


def weight_qconfig(weight_bits: int = 8) -> QConfig:
    """The QConfig of the convolutions: per-output-channel symmetric int8 weights.

    Args:
        weight_bits: 8 (range [-128, 127]) or 7 ([-64, 63], no u8 x s8 saturation on AVX2).

    Raises:
        ValueError: for other ``weight_bits``.
    """
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits!r}")
    qmax = 2 ** (weight_bits - 1) - 1
    weight = TrainObservedFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=-qmax - 1, quant_max=qmax, dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric, ch_axis=0, averaging_constant=ACTIVATION_AVERAGING,
    )
    return QConfig(activation=activation_fake_quant, weight=weight)


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn``'s eval-mode affine map into ``conv`` (weights and bias, in place)."""
    with torch.no_grad():
        inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (Cout,)
        conv.weight.mul_(inv.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * inv + bn.bias
        conv.bias = nn.Parameter(new_bias.detach().clone())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d into the convolution just before it, with the running statistics.

    Each ``BatchNorm2d`` must directly follow a ``Conv2d`` registered just before it in the same
    parent module (timm's EfficientNet/MobileNet/ResNet blocks register ``conv, bn`` pairs in call
    order). A plain BatchNorm is replaced by ``nn.Identity``; timm's ``BatchNormAct2d`` by its
    ``drop`` and ``act`` layers (kept, e.g. ReLU6). Afterwards the model in eval mode computes what
    it computed before in eval mode (within float rounding, ~1e-6 relative).

    Args:
        model: the network, modified in place (call on a copy to keep the original).

    Returns:
        ``model``.

    Raises:
        ValueError: if a BatchNorm2d does not follow a Conv2d with the same channel count.
    """
    for parent in list(model.modules()):
        prev_name, prev = None, None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                if not isinstance(prev, nn.Conv2d) or prev.out_channels != child.num_features:
                    raise ValueError(f"BatchNorm2d {name!r} in {type(parent).__name__} does not follow a Conv2d "
                                     f"of {child.num_features} channels (previous sibling: {prev_name!r})")
                _fold_conv_bn(prev, child)
                rest = [m for m in (getattr(child, "drop", None), getattr(child, "act", None))
                        if m is not None and not isinstance(m, nn.Identity)]
                setattr(parent, name, nn.Sequential(*rest) if rest else nn.Identity())
            prev_name, prev = name, child
    return model


class _Quantized(nn.Sequential):
    """A layer followed by an activation fake quantiser (what the QDQ graph quantises)."""


def _qat_conv(conv: nn.Conv2d, qconfig: QConfig) -> nnqat.Conv2d:
    conv.qconfig = qconfig
    q = nnqat.Conv2d.from_float(conv)
    q.weight_fake_quant.train()
    return q


def prepare_qat(model: nn.Module, weight_bits: int = 8) -> nn.Module:
    """A fake-quantised copy of a timm pool+linear classifier, ready for quantisation-aware training.

    BatchNorm is folded (:func:`fold_batchnorm`), every ``Conv2d`` becomes a ``torch.ao.nn.qat.Conv2d``
    (:func:`weight_qconfig`), and uint8 activation fake quantisers are placed after the input, after
    every convolution (after its activation) and after every residual block (``has_skip``). The
    classifier, pooling and everything after the last convolution's activation stay float32.

    Args:
        model: a timm EfficientNet-family model (``conv_stem``, ``blocks``, ``conv_head``, ``bn1``,
            ``bn2``), in any mode; not modified.
        weight_bits: 8 or 7 (see :func:`weight_qconfig`).

    Returns:
        The prepared model in training mode; ``forward_features``, ``forward_head`` and
        ``get_classifier`` work as before. Observers start empty: call :func:`calibrate`.

    Raises:
        ValueError: if the model is not of the supported layout or a BatchNorm cannot be folded.
    """
    for attr in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"):
        if not hasattr(model, attr):
            raise ValueError(f"prepare_qat supports timm EfficientNet-family models; {type(model).__name__} "
                             f"has no {attr!r}")
    qconfig = weight_qconfig(weight_bits)
    m = copy.deepcopy(model).cpu().eval()
    m = m.to(memory_format=torch.contiguous_format)
    fold_batchnorm(m)
    # the activation after every convolution, or the convolution itself when nothing follows it
    for parent in list(m.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if isinstance(child, nn.Conv2d) and not isinstance(child, nnqat.Conv2d):
                setattr(parent, name, _qat_conv(child, qconfig))
                nxt = children[i + 1] if i + 1 < len(children) else None
                if nxt is not None and isinstance(nxt[1], (nn.Sequential, nn.Identity)) and not isinstance(
                        nxt[1], _Quantized):
                    # the folded BatchNorm's place: its activation (or nothing), then the quantiser
                    acts = list(nxt[1]) if isinstance(nxt[1], nn.Sequential) else []
                    setattr(parent, nxt[0], _Quantized(*acts, activation_fake_quant()))
                elif nxt is None or not isinstance(nxt[1], _Quantized):
                    raise ValueError(f"convolution {name!r} in {type(parent).__name__} is not followed by a "
                                     "folded BatchNorm; unsupported layout")
    m.conv_stem = _Quantized(activation_fake_quant(), m.conv_stem)  # the input image
    for stage in m.blocks:
        for j, block in enumerate(stage):
            if getattr(block, "has_skip", False):
                stage[j] = _Quantized(block, activation_fake_quant())
    return m.train()


def is_qat_model(model: nn.Module) -> bool:
    """Whether ``model`` holds fake quantisers (made by :func:`prepare_qat`)."""
    return any(isinstance(m, FakeQuantize) for m in model.modules())


def fake_quantizers(model: nn.Module) -> Iterable[tuple[str, FakeQuantize]]:
    """``(name, module)`` of every fake quantiser in ``model`` (weights and activations)."""
    return ((n, mod) for n, mod in model.named_modules() if isinstance(mod, FakeQuantize))


def freeze_activation_observers(model: nn.Module) -> int:
    """Stop the activation range observers (weights keep following their tensors).

    Returns:
        The number of activation quantisers frozen.
    """
    k = 0
    for name, fq in fake_quantizers(model):
        if not name.endswith("weight_fake_quant"):
            fq.disable_observer()
            k += 1
    return k


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set the observers' ranges from float inputs (training films), in training mode without gradients.

    Args:
        model: a :func:`prepare_qat` model (its dropout is after the last quantiser, so harmless).
        batches: ``(B, 1, S, S)`` float32 normalised inputs.

    Returns:
        The number of images seen.

    Raises:
        ValueError: if ``batches`` is empty.
    """
    was_training = model.training
    model.train()
    n = 0
    for x in batches:
        model(x)
        n += len(x)
    model.train(was_training)
    if n == 0:
        raise ValueError("calibrate needs at least one batch")
    return n


def qat_summary(model: nn.Module) -> dict[str, Any]:
    """Counts and ranges of a prepared model's quantisers (for logs and metadata)."""
    acts = [(n, fq) for n, fq in fake_quantizers(model) if not n.endswith("weight_fake_quant")]
    weights = [(n, fq) for n, fq in fake_quantizers(model) if n.endswith("weight_fake_quant")]
    scales = [float(fq.scale.reshape(-1)[0]) for _, fq in acts]
    return {"activation_quantizers": len(acts), "weight_quantizers": len(weights),
            "weight_range": [int(weights[0][1].quant_min), int(weights[0][1].quant_max)] if weights else None,
            "activation_scale_min": min(scales) if scales else None,
            "activation_scale_max": max(scales) if scales else None}


class _ExportWeightFakeQuant(nn.Module):
    """A frozen per-channel weight quantiser for export: the range [-128, 127] ONNX's int8 holds.

    7-bit weights already lie on the grid within [-64, 63], so quantising them again with the same
    scales on the int8 range gives the same integers.
    """

    def __init__(self, fq: FakeQuantize) -> None:
        super().__init__()
        self.register_buffer("scale", fq.scale.detach().clone())
        self.register_buffer("zero_point", fq.zero_point.detach().clone().to(torch.int32))
        self.ch_axis = int(fq.ch_axis)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_channel_affine(w, self.scale, self.zero_point, self.ch_axis, -128, 127)


def _export_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose weights sit on their int8 grid, with export-friendly weight quantisers."""
    m = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    for mod in m.modules():
        if isinstance(mod, nnqat.Conv2d):
            with torch.no_grad():
                mod.weight.copy_(mod.weight_fake_quant(mod.weight))
            mod.weight_fake_quant = _ExportWeightFakeQuant(mod.weight_fake_quant)
    return m


def export_qdq_onnx(model: nn.Module, path: str | Path, input_size: int, opset: int = 17) -> dict[str, int]:
    """Export a :func:`prepare_qat` model, wrapped in ``CamModel``, as a QDQ ONNX graph with int8 weights.

    The graph has the names of :mod:`deephealth.training.onnx_graph` (input ``image`` ``(N, 1, S, S)``
    float32; outputs ``logits`` ``(N, 3)``, ``cam`` ``(N, 3, h, w)``, ``features`` ``(N, Cf)``,
    float32) and a dynamic batch axis. Weight ``QuantizeLinear`` nodes on constant initializers are
    replaced by int8 initializers (the file is about a quarter of the float32 one), per-tensor
    quantisation parameters made scalars and each ReLU6 ``Clip`` that the following uint8
    quantiser makes redundant removed, so that ONNX Runtime fuses every convolution into
    ``QLinearConv`` and every residual addition into ``QLinearAdd`` (checked in the tests).

    Args:
        model: the fake-quantised network (not modified).
        path: the ``.onnx`` file to write.
        input_size: ``S`` in pixels.
        opset: ONNX opset (>= 13 for per-channel ``QuantizeLinear``).

    Returns:
        Node counts of the written graph: ``QuantizeLinear``, ``DequantizeLinear``, ``Conv``, ``Add``,
        ``int8_weights`` (weights stored as int8) and ``clips_removed``.

    Raises:
        ValueError: if ``opset < 13``.
    """
    import onnx

    from deephealth.training.model import CamModel
    from deephealth.training.onnx_graph import export_onnx

    if opset < 13:
        raise ValueError(f"per-channel QuantizeLinear needs opset >= 13, got {opset}")
    path = Path(path)
    cam = CamModel(_export_copy(model)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(cam, path, input_size, opset)
    graph_model = onnx.load(str(path))
    folded = _fold_weight_quantize(graph_model)
    _scalar_qparams(graph_model)
    clips = _drop_redundant_clips(graph_model)
    _remove_unused(graph_model.graph)
    onnx.save(graph_model, str(path))
    ops = [n.op_type for n in graph_model.graph.node]
    counts = {op: ops.count(op) for op in ("QuantizeLinear", "DequantizeLinear", "Conv", "Add")}
    counts["int8_weights"] = folded
    counts["clips_removed"] = clips
    _logger.info("QDQ export %s: %s", path, counts)
    return counts


def _constants(g: Any) -> dict[str, np.ndarray]:
    """Initializers, ``Constant`` node outputs and ``Identity`` copies of them, by tensor name."""
    from onnx import numpy_helper

    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:  # torch emits Constant nodes for some scalars
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in consts:  # deduplicated constants
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _scalar_qparams(graph_model: Any) -> int:
    """Give per-tensor ``QuantizeLinear`` / ``DequantizeLinear`` scalar scales and zero points.

    ``torch.onnx.export`` writes a per-tensor scale as a one-element 1-D tensor; ONNX defines
    per-tensor parameters as scalars, and ONNX Runtime's QDQ fusion only matches those.

    Returns:
        The number of parameters rewritten.
    """
    from onnx import numpy_helper

    g = graph_model.graph
    consts = _constants(g)
    made: dict[str, str] = {}
    n = 0
    for node in g.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k in (1, 2):
            if k >= len(node.input) or node.input[k] not in consts:
                continue
            value = consts[node.input[k]]
            if value.ndim == 0 or value.size != 1:
                continue
            name = made.get(node.input[k])
            if name is None:
                name = made[node.input[k]] = f"{node.input[k]}_scalar"
                g.initializer.append(numpy_helper.from_array(value.reshape(()), name))
            node.input[k] = name
            n += 1
    return n


def _remove_unused(g: Any) -> None:
    """Drop ``Constant`` / ``Identity`` nodes and initializers nothing reads any more."""
    while True:
        used = {i for node in g.node for i in node.input} | {o.name for o in g.output}
        dead = [nd for nd in g.node if nd.op_type in ("Constant", "Identity") and nd.output[0] not in used]
        for node in dead:
            g.node.remove(node)
        if not dead:
            break
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def _drop_redundant_clips(graph_model: Any) -> int:
    """Remove each ``Clip`` (ReLU6) whose only consumer is a ``QuantizeLinear`` that clamps at least as tightly.

    With zero point ``zp`` and scale ``s`` the uint8 quantiser's range is ``[-zp s, (255 - zp) s]``;
    inside ``[clip_min, clip_max]`` the clip changes nothing, and ONNX Runtime can then fuse
    ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv`` (with the clip left in, it fuses
    ``Conv + Clip`` into a float ``FusedConv`` instead). ONNX Runtime's own quantiser drops these
    activations the same way.

    Returns:
        The number of ``Clip`` nodes removed.
    """
    g = graph_model.graph
    consts = _constants(g)
    consumers: dict[str, list[Any]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in g.output}
    removed = 0
    for node in list(g.node):
        if node.op_type != "Clip" or node.output[0] in outputs:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        q = users[0]
        if not all(i in consts for i in q.input[1:3]) or not all(i in consts for i in node.input[1:3] if i):
            continue
        lo = float(consts[node.input[1]]) if len(node.input) > 1 and node.input[1] else -np.inf
        hi = float(consts[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.inf
        scale, zp = float(consts[q.input[1]]), int(consts[q.input[2]])
        info = np.iinfo(consts[q.input[2]].dtype)
        q_lo, q_hi = (info.min - zp) * scale, (info.max - zp) * scale
        if q_lo >= lo - 1e-6 and q_hi <= hi + 1e-6:
            q.input[0] = node.input[0]
            g.node.remove(node)
            removed += 1
    return removed


def _fold_weight_quantize(graph_model: Any) -> int:
    """Replace ``QuantizeLinear(constant float, constant scale, constant zero point)`` by its int8 result."""
    from onnx import numpy_helper

    g = graph_model.graph
    consts = _constants(g)
    removed = []
    for node in list(g.node):
        if node.op_type != "QuantizeLinear" or not all(i in consts for i in node.input):
            continue
        x, scale = consts[node.input[0]].astype(np.float32), consts[node.input[1]].astype(np.float32)
        zp = consts[node.input[2]] if len(node.input) > 2 else np.zeros((), np.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zpb = scale.reshape(shape), zp.reshape(shape).astype(np.int32)
        else:
            zpb = zp.astype(np.int32)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(x / scale) + zpb, info.min, info.max).astype(zp.dtype)
        g.initializer.append(numpy_helper.from_array(q, node.output[0]))
        removed.append(node)
    for node in removed:
        g.node.remove(node)
    return len(removed)


QDQ_PROB_ATOL = 0.1
"""Largest accepted difference of calibrated probabilities between ONNX Runtime's int8 run of the
QDQ graph and the PyTorch fake-quantised network (a gross-error guard: integer requantisation
rounds a few activations differently; AVX2 saturation of 8-bit weights shows up as far more)."""


def check_qdq(model: nn.Module, onnx_path: str | Path, inputs: np.ndarray, temperature: float) -> dict[str, Any]:
    """Compare ONNX Runtime's run of an exported QDQ graph with the fake-quantised PyTorch network.

    Args:
        model: the :func:`prepare_qat` network that was exported.
        onnx_path: the graph written by :func:`export_qdq_onnx`.
        inputs: ``(n, 1, S, S)`` float32 real inputs (n >= 1).
        temperature: calibration temperature (> 0) for the probability comparison.

    Returns:
        ``images``, ``prob_atol``, ``prob_max_abs_diff``, ``logits_max_abs_diff``,
        ``top1_agreement``, ``cam_mean_vs_logits_max_abs_diff``, ``passed``.

    Raises:
        deephealth.training.onnx_graph.ExportError: if the ONNX checker fails, there are no inputs
            or probabilities differ by more than :data:`QDQ_PROB_ATOL`.
    """
    from deephealth.training.model import CamModel
    from deephealth.training.quantize import check_quantized

    return check_quantized(CamModel(model).eval(), Path(onnx_path), inputs, temperature,
                           reference="PyTorch fake-quantised network (QAT)", atol=QDQ_PROB_ATOL, hint="")
