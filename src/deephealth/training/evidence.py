"""The evidence map: a finer class activation map added to an exported ``model.onnx`` (export time only).

The shipped CAM (Zhou et al., 2016) is read off the last feature map, which has stride 32: 6 x 6
cells for a 192 px input. The evidence map is the CAM of the *same trained weights* run with the
last stride-2 stage turned into stride 1 and every later spatial convolution dilated by 2
("a trous", as in DeepLab, Chen et al., 2017; timm's ``output_stride=16``). No weight changes, so
the map has stride 16: 12 x 12 cells at 192 px, 16 x 16 at 256 px. Its mean over the cells is the
dilated network's logit, which is close to, but not the same as, the shipped logit (the figures
are recorded under ``evidence.check`` in ``metadata.json``); the shipped classification outputs
are not touched.

How it is shipped: the dilated network is exported to ONNX on its own, then merged into the
existing ``model.onnx`` as one more output, ``evidence`` ``(N, C, h', w')`` float32 in logit units:

- every initializer of the dilated graph whose bytes equal one already in ``model.onnx`` is
  shared (all of them for a float32 export: the file grows by kilobytes, not by a second copy of
  the weights);
- every node that computes exactly what a node of ``model.onnx`` computes (same operator,
  attributes and inputs) is shared too (common-subexpression elimination), so the branch starts
  where the dilation starts (the stride-16 features are computed once);
- the rest (the dilated stages and the map) is the ``then`` branch of an ``If`` node whose
  condition is a boolean input ``evidence_on`` that defaults to ``False``: ONNX Runtime runs the
  branch only when the caller feeds ``evidence_on=True`` (without it, ``evidence`` is an empty
  ``(0, C, 1, 1)`` tensor). ONNX Runtime 1.32 does not skip nodes that only feed unrequested outputs
  (measured with its profiler, also with ``RunOptions.only_execute_path_to_fetches``), hence the ``If``;
- the nodes and outputs of the original graph are left exactly as they were, and the merge is
  checked: ``logits``, ``cam`` and ``features`` of the merged file must equal the original file's
  bit for bit on the check inputs.

Serving (:mod:`deephealth.inference`) feeds ``evidence_on=True`` and fetches ``evidence`` only when a
heatmap is wanted. Regenerate for any exported model folder with ``deephealth export --evidence-only --out DIR``
(needs ``weights.pt``, the ``[train]`` extra).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

_logger = logging.getLogger(__name__)

EVIDENCE_NAME = "evidence"
"""Name of the evidence-map output of the merged ONNX graph."""
EVIDENCE_FLAG = "evidence_on"
"""Name of the boolean scalar input that turns the evidence branch on (default ``False``)."""
EVIDENCE_OUTPUT_STRIDE = 16
"""Output stride of the dilated network (the shipped one has 32)."""
EVIDENCE_ATOL = 1e-3
"""Absolute tolerance for PyTorch vs ONNX Runtime evidence maps (logit units)."""
_PREFIX = "evidence/"


class EvidenceError(RuntimeError):
    """The evidence map cannot be built or fails its checks."""


class _EvidenceNet(nn.Module):
    """Returns only the class activation maps of a (dilated) pool+linear classifier: ``(N, C, h, w)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from deephealth.training.model import linear_head

        self.model = model
        self.head = linear_head(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)  # (N, Cf, h, w)
        return torch.einsum("kc,nchw->nkhw", self.head.weight, feats) + self.head.bias[None, :, None, None]


def dilated_model(model_args: dict[str, Any], state: dict[str, torch.Tensor],
                  output_stride: int = EVIDENCE_OUTPUT_STRIDE) -> nn.Module:
    """The trained network rebuilt with a smaller output stride (dilated last stage), same weights.

    Args:
        model_args: ``arch``, ``num_classes``, ``in_chans`` (and ``aa_layer`` when set) as in ``weights.pt``.
        state: the trained state dict.
        output_stride: 16 halves the stride of the last feature map (8 quarters it).

    Returns:
        The network in eval mode. Input ``(N, 1, S, S)`` float32, feature map ``(N, Cf, S/16, S/16)``.

    Raises:
        EvidenceError: if the architecture does not support ``output_stride`` or the weights do not fit.
    """
    import timm

    from deephealth.training.model import architecture_args

    args = architecture_args(model_args)
    arch = args.pop("arch")
    try:
        model = timm.create_model(arch, output_stride=output_stride, **args)
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EvidenceError(f"cannot build {arch} with output_stride={output_stride}: {first}") from exc
    return model.eval()


def _export_evidence(model: nn.Module, path: Path, input_size: int, input_name: str, opset: int) -> None:
    dummy = torch.zeros(2, 1, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _EvidenceNet(model).eval(), (dummy,), str(path), input_names=[input_name], output_names=[EVIDENCE_NAME],
            dynamic_axes={input_name: {0: "batch"}, EVIDENCE_NAME: {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def _tensor_key(t: Any) -> tuple[int, tuple[int, ...], str]:
    from onnx import numpy_helper

    arr = np.ascontiguousarray(numpy_helper.to_array(t))
    return int(t.data_type), tuple(int(d) for d in t.dims), hashlib.sha256(arr.tobytes()).hexdigest()


def _node_key(node: Any, inputs: list[str]) -> tuple:
    attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
    return node.op_type, node.domain, tuple(inputs), attrs


def merge_evidence_graph(base: Any, extra: Any, input_name: str) -> tuple[Any, dict[str, int]]:
    """Merge the evidence graph ``extra`` into ``base`` as one more output, computed only on request.

    Nodes of ``extra`` that compute what a node of ``base`` computes (same operator, attributes
    and inputs, after mapping equal initializers and constants to ``base``'s) are shared; the rest
    (the dilated stages and the map) go into the ``then`` branch of an ``If`` node whose condition
    is the boolean input :data:`EVIDENCE_FLAG`, which defaults to ``False`` (an initializer that is
    also a graph input). A caller that does not feed it gets an empty ``(0, C, 1, 1)`` ``evidence``
    and ONNX Runtime runs none of the branch; feeding ``True`` computes the map.

    Args:
        base: the shipped ``onnx.ModelProto`` (left unchanged; a copy is returned).
        extra: the exported dilated graph, one input ``input_name``, one output :data:`EVIDENCE_NAME`.
        input_name: the image input both graphs read.

    Returns:
        ``(merged, stats)``: the merged ``ModelProto`` and counts of shared / added initializers and nodes.

    Raises:
        EvidenceError: if ``base`` already has an ``evidence`` output or ``extra`` has not exactly one output.
    """
    import onnx
    from onnx import helper

    merged = onnx.ModelProto()
    merged.CopyFrom(base)
    g, e = merged.graph, extra.graph
    if any(o.name in (EVIDENCE_NAME, EVIDENCE_FLAG) for o in list(g.output) + list(g.input)):
        raise EvidenceError(f"the model already has an {EVIDENCE_NAME!r} output")
    if len(e.output) != 1:
        raise EvidenceError(f"the evidence graph must have one output, has {len(e.output)}")

    # canonical names in base: equal initializers / equal Constant nodes -> the first one's name
    canon: dict[str, str] = {}
    by_content: dict[tuple, str] = {}
    for t in g.initializer:
        canon[t.name] = by_content.setdefault(_tensor_key(t), t.name)
    base_nodes: dict[tuple, list[str]] = {}
    for n in g.node:
        key = _node_key(n, [canon.get(i, i) for i in n.input])
        first = base_nodes.setdefault(key, list(n.output))
        for o, f in zip(n.output, first):
            canon[o] = f
    rename: dict[str, str] = {input_name: input_name, "": ""}
    stats = {"initializers_shared": 0, "initializers_added": 0, "nodes_shared": 0, "nodes_in_branch": 0}
    for t in e.initializer:
        key = _tensor_key(t)
        if key in by_content:
            rename[t.name] = by_content[key]
            stats["initializers_shared"] += 1
        else:
            new = onnx.TensorProto()
            new.CopyFrom(t)
            new.name = _PREFIX + t.name
            g.initializer.append(new)
            by_content[key] = new.name
            rename[t.name] = new.name
            stats["initializers_added"] += 1

    final = e.output[0].name
    inner_out = _PREFIX + "map"
    branch: list[Any] = []
    in_branch: set[str] = set()
    for n in e.node:
        inputs = [rename.get(i, i) for i in n.input]
        key = _node_key(n, inputs)
        shareable = not any(i in in_branch for i in inputs) and final not in n.output
        if shareable and key in base_nodes and len(base_nodes[key]) == len(n.output):
            for old, new in zip(n.output, base_nodes[key]):
                rename[old] = new
            stats["nodes_shared"] += 1
            continue
        node = onnx.NodeProto()
        node.CopyFrom(n)
        del node.input[:]
        node.input.extend(inputs)
        outs = [inner_out if o == final else _PREFIX + o for o in n.output]
        for old, new in zip(n.output, outs):
            rename[old] = new
        in_branch.update(outs)
        del node.output[:]
        node.output.extend(outs)
        node.name = _PREFIX + (n.name or n.op_type)
        branch.append(node)
        stats["nodes_in_branch"] += 1

    c = int(e.output[0].type.tensor_type.shape.dim[1].dim_value) or 1
    then_g = helper.make_graph(branch, "evidence_map", [], [
        helper.make_tensor_value_info(inner_out, onnx.TensorProto.FLOAT, [None] * 4)])
    empty = helper.make_tensor(_PREFIX + "empty_value", onnx.TensorProto.FLOAT, [0, c, 1, 1], [])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], [_PREFIX + "empty"], value=empty, name=_PREFIX + "empty")],
        "evidence_not_requested", [], [helper.make_tensor_value_info(_PREFIX + "empty", onnx.TensorProto.FLOAT, [None] * 4)])
    g.node.append(helper.make_node("If", [EVIDENCE_FLAG], [EVIDENCE_NAME], name=_PREFIX + "if_requested",
                                   then_branch=then_g, else_branch=else_g))
    g.input.append(helper.make_tensor_value_info(EVIDENCE_FLAG, onnx.TensorProto.BOOL, []))
    g.initializer.append(helper.make_tensor(EVIDENCE_FLAG, onnx.TensorProto.BOOL, [], [False]))
    g.output.append(helper.make_tensor_value_info(EVIDENCE_NAME, onnx.TensorProto.FLOAT, [None] * 4))
    return merged, stats


def _session(path: Path):
    import onnxruntime as ort

    from deephealth.artifact import session_options

    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def add_evidence_to_onnx(onnx_path: str | Path, model_args: dict[str, Any], state: dict[str, torch.Tensor],
                         shipped: nn.Module, inputs: np.ndarray, names: dict[str, str], opset: int = 17,
                         n_random: int = 2, seed: int = 0) -> dict[str, Any]:
    """Add the evidence output to ``onnx_path`` in place, after checking the merged graph.

    Args:
        onnx_path: the exported float32 ``model.onnx``.
        model_args: ``arch``, ``num_classes``, ``in_chans``.
        state: the trained state dict (the one ``model.onnx`` was exported from).
        shipped: the trained network (stride 32), eval mode, for the logit comparison.
        inputs: ``(n, 1, S, S)`` float32 real check inputs (``n`` may be 0; random inputs are added).
        names: the ONNX names: ``input``, ``logits``, ``cam`` and optionally ``features``.
        opset: ONNX opset of the evidence export.
        n_random: standard-normal random inputs added to ``inputs``.
        seed: seed of the random inputs.

    Returns:
        The ``evidence`` metadata entry: output name and shape, method, merge statistics and the
        check figures (bit-identity of the shipped outputs, PyTorch vs ONNX Runtime, dilated vs
        shipped logits).

    Raises:
        EvidenceError: if the architecture cannot be dilated, the file already has an evidence
            output, or a check fails (the file is then left as it was).
    """
    import onnx

    onnx_path = Path(onnx_path)
    base = onnx.load(str(onnx_path))
    for i in base.graph.initializer:
        if i.data_type != onnx.TensorProto.FLOAT and len(i.dims) == 4:
            raise EvidenceError(f"{onnx_path}: quantized graph ({onnx.TensorProto.DataType.Name(i.data_type)} "
                                "convolution weights); the evidence map needs a float32 export")
    s = int(inputs.shape[-1]) if inputs.ndim == 4 and inputs.shape[0] else int(
        base.graph.input[0].type.tensor_type.shape.dim[-1].dim_value)
    model = dilated_model(model_args, state)
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.asarray(inputs, np.float32).reshape(-1, 1, s, s),
                        rng.standard_normal((n_random, 1, s, s)).astype(np.float32)])
    out_names = [names["logits"], names["cam"]] + ([names["features"]] if names.get("features") else [])
    with tempfile.TemporaryDirectory(dir=onnx_path.parent, prefix=".evidence-") as tmp:
        extra_path = Path(tmp) / "evidence.onnx"
        _export_evidence(model, extra_path, s, names["input"], opset)
        merged, stats = merge_evidence_graph(base, onnx.load(str(extra_path)), names["input"])
        merged_path = Path(tmp) / "merged.onnx"
        onnx.save(merged, str(merged_path))
        try:
            onnx.checker.check_model(str(merged_path), full_check=True)
        except Exception as exc:  # onnx raises ValidationError and friends
            raise EvidenceError(f"{onnx_path}: merged graph fails the ONNX checker: {exc}") from exc
        before = _session(onnx_path).run(out_names, {names["input"]: x})
        after_sess = _session(merged_path)
        after = after_sess.run(out_names, {names["input"]: x})
        skipped = after_sess.run([EVIDENCE_NAME], {names["input"]: x[:1]})[0]
        if skipped.size:
            raise EvidenceError(f"{onnx_path}: the evidence branch runs without being requested")
        evidence = after_sess.run([EVIDENCE_NAME], {names["input"]: x, EVIDENCE_FLAG: np.array(True)})[0]
        identical = all(np.array_equal(a, b) for a, b in zip(before, after))
        if not identical:
            worst = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after))
            raise EvidenceError(f"{onnx_path}: the merged graph changes the shipped outputs (by up to {worst:.3g})")
        with torch.no_grad():
            t_ev = _EvidenceNet(model)(torch.from_numpy(x)).numpy()
            t_logits = shipped.eval()(torch.from_numpy(x)).numpy()
        ev_diff = float(np.max(np.abs(evidence - t_ev)))
        if not np.allclose(evidence, t_ev, atol=EVIDENCE_ATOL, rtol=1e-4):
            raise EvidenceError(f"{onnx_path}: evidence map differs from PyTorch by up to {ev_diff:.3g}")
        d_logits = evidence.mean(axis=(2, 3)) - before[0]  # dilated logits vs shipped logits
        real = slice(0, len(x) - n_random)
        new_bytes = merged_path.stat().st_size
        merged_path.replace(onnx_path)
    c, h, w = (int(v) for v in evidence.shape[1:])
    _, _, h0, w0 = before[1].shape
    report = {
        "output": EVIDENCE_NAME,
        "shape": ["N", c, h, w],
        "cam_shape": ["N", c, int(h0), int(w0)],
        "method": (f"class activation map of the same weights with the last stride-2 stage at stride 1 and later "
                   f"convolutions dilated (a trous, timm output_stride={EVIDENCE_OUTPUT_STRIDE}); logit units, "
                   "mean over cells = the dilated network's logits"),
        "merge": {**stats, "bytes_after": int(new_bytes)},
        "check": {
            "shipped_outputs_bit_identical": True,
            "inputs": int(len(x)),
            "torch_vs_onnxruntime_max_abs_diff": ev_diff,
            "atol": EVIDENCE_ATOL,
            "dilated_vs_shipped_logits_max_abs_diff_real": float(np.max(np.abs(d_logits[real]))) if len(x) > n_random else None,
            "dilated_vs_shipped_logits_mean_abs_diff_real": float(np.mean(np.abs(d_logits[real]))) if len(x) > n_random else None,
            "dilated_vs_shipped_argmax_agreement_real": float(np.mean(
                evidence.mean(axis=(2, 3))[real].argmax(1) == before[0][real].argmax(1))) if len(x) > n_random else None,
        },
    }
    _logger.info("evidence map %s added to %s (%d nodes in the branch, %d shared; %d initializers shared, %d added)",
                 report["shape"], onnx_path, stats["nodes_in_branch"], stats["nodes_shared"],
                 stats["initializers_shared"], stats["initializers_added"])
    return report


def add_evidence_to_dir(model_dir: str | Path, inputs: np.ndarray | None = None) -> dict[str, Any]:
    """Add (or rebuild) the evidence map of an exported model folder, from its ``weights.pt``.

    ``model.onnx`` is rewritten in place (its shipped outputs unchanged, checked bit for bit) and
    ``metadata.json`` gets the new SHA-256 and size under ``onnx``, ``onnx.evidence`` and the
    ``evidence`` entry. A folder that already has an evidence output is rebuilt from its original
    outputs (the old branch is dropped first).

    Args:
        model_dir: the model folder (``model.onnx``, ``metadata.json``, ``weights.pt``).
        inputs: ``(n, 1, S, S)`` float32 check inputs; default: the export's dataset parity images
            (:func:`deephealth.training.parity.dataset_parity_inputs`, none without the dataset).

    Returns:
        The ``evidence`` metadata entry.

    Raises:
        EvidenceError: if the folder has no ``weights.pt``, is quantized, or a check fails.
        deephealth.artifact.ModelArtifactError: if the folder is not a valid model folder.
    """
    from deephealth.artifact import ModelArtifact, sha256_file, write_metadata
    from deephealth.artifact import WEIGHTS_FILE
    from deephealth.training.parity import dataset_parity_inputs
    from deephealth.training.model import architecture_args, build_model

    model_dir = Path(model_dir)
    art = ModelArtifact.load(model_dir)
    meta = dict(art.metadata)
    wpath = model_dir / WEIGHTS_FILE
    if not wpath.is_file():
        raise EvidenceError(f"{model_dir}: no {WEIGHTS_FILE}; the evidence map is built from the PyTorch weights")
    try:
        ckpt = torch.load(wpath, map_location="cpu", weights_only=True)
        args = dict(ckpt["model_args"])
        state = ckpt["model_state"]
    except Exception as exc:
        raise EvidenceError(f"{wpath}: cannot load ({type(exc).__name__}: {exc})") from exc
    shipped = build_model(**architecture_args(args))
    shipped.load_state_dict(state, strict=True)
    onnx_meta = dict(meta["onnx"])
    if onnx_meta.get(EVIDENCE_NAME):  # rebuild: drop the old branch first
        _strip_evidence(art.onnx_path, onnx_meta[EVIDENCE_NAME])
        onnx_meta.pop(EVIDENCE_NAME, None)
        onnx_meta.pop("evidence_flag", None)
    if inputs is None:
        inputs, _ = dataset_parity_inputs(art.preprocessing)
    names = {"input": onnx_meta["input"], "logits": onnx_meta["logits"], "cam": onnx_meta["cam"],
             "features": onnx_meta.get("features")}
    report = add_evidence_to_onnx(art.onnx_path, args, state, shipped, inputs, names,
                                  opset=int(onnx_meta.get("opset", 17)))
    onnx_meta.update({"sha256": sha256_file(art.onnx_path), "bytes": int(art.onnx_path.stat().st_size),
                      EVIDENCE_NAME: EVIDENCE_NAME, "evidence_flag": EVIDENCE_FLAG})
    axes = dict(onnx_meta.get("dynamic_axes") or {})
    axes[EVIDENCE_NAME] = {"0": "batch"}
    onnx_meta["dynamic_axes"] = axes
    meta["onnx"] = onnx_meta
    meta["evidence"] = report
    summary = dict(meta.get("summary") or {})
    if "output_shapes" in summary:
        summary["output_shapes"] = {**summary["output_shapes"], EVIDENCE_NAME: report["shape"]}
        meta["summary"] = summary
    write_metadata(model_dir, meta)
    return report


def _strip_evidence(onnx_path: Path, name: str) -> None:
    """Remove the evidence output and every node and initializer only it needs (in place)."""
    import onnx

    m = onnx.load(str(onnx_path))
    g = m.graph
    keep_outputs = [o for o in g.output if o.name != name]
    flag_input = [i for i in g.input if i.name != EVIDENCE_FLAG]
    del g.input[:]
    g.input.extend(flag_input)
    needed = {o.name for o in keep_outputs}
    keep_nodes = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep_nodes.append(n)
            needed.update(n.input)
    keep_nodes.reverse()
    inits = [t for t in g.initializer if t.name in needed]
    del g.output[:]
    g.output.extend(keep_outputs)
    del g.node[:]
    g.node.extend(keep_nodes)
    del g.initializer[:]
    g.initializer.extend(inits)
    onnx.save(m, str(onnx_path))
