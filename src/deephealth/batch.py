"""Score a whole archive with Ray Data: resumable, idempotent, one Parquet row per input.

The pipeline per image is exactly ``deephealth predict``'s: the inputs are picked by
:func:`deephealth.inputs.collect_inputs`, each worker holds one
:class:`deephealth.inference.Predictor` (readers -> preprocessing -> ONNX Runtime -> input gate ->
calibration -> operating point) and calls :meth:`~deephealth.inference.Predictor.predict_many` on
its batch, and each result becomes :func:`deephealth.results.result_record` (the
``predict --format json`` row) flattened by :func:`deephealth.results.flat_record`. Ray only
distributes the batches; there is no second implementation of any stage.

Engine: ``ray.data.from_items`` (one item per input: its path or URI and the content hash of its
result already on disk, if any) -> ``map_batches(Scorer, ActorPoolStrategy(size=workers),
num_cpus=threads)`` -> the driver iterates the scored blocks as they finish and writes them to
``RESULTS/part-<run>-<n>.parquet`` every :data:`PART_ROWS` rows or :data:`FLUSH_SECONDS` seconds.
``Scorer`` loads the model once per worker; ONNX Runtime gets ``threads`` intra-op threads and Ray
reserves as many CPUs for the worker, so workers x threads never exceeds the cores.

Resume (idempotent): a result is keyed by ``(source, content_sha256, model_sha256,
decision_sha256)``, the last being the fingerprint of the model's decision rule (temperature,
operating point with its review band, and input-gate thresholds, from ``metadata.json``:
:attr:`deephealth.artifact.ModelArtifact.decision_fingerprint`), since a label depends on it as
much as on the ONNX file. Before a run, the parts already in RESULTS give, for the current model
and decision rule, the content hash each source was scored with; a worker reads the file's bytes,
hashes them (SHA-256) and skips the file when the hash matches (nothing recomputed, nothing
written), otherwise classifies it. A file that cannot be
read at all is stored with an empty hash and is also done, until it becomes readable. Parts are
written to a hidden temporary name and renamed (atomic on a local disk; an object store ``PUT`` is
atomic), so an interrupted run (Ctrl-C, a killed worker or driver) leaves only complete parts and
loses at most the rows not yet flushed. When a file's content, the model or its decision rule
changes (a new operating point, review band, temperature or input-gate thresholds in
``metadata.json``), the film is scored again, the new row is added (nothing is overwritten); the
run counts the inputs re-scored for another model or another decision rule (:class:`BatchSummary`)
and logs them.

Which rows are a run's results: those of the model and decision rule the run used
(:meth:`BatchSummary.results`, or :func:`load_results` with ``model_sha256`` and
``decision_sha256``), the newest per source among them. Not the newest row per source over the
whole folder: after runs with model A, then B, then A again, the third run skips every film (A
already scored it) and its answers are A's older rows, while the newest rows are B's.
:func:`load_results` without the filters returns the newest row per source whichever model made
it, and warns when the folder holds more than one model or rule.

Columns: :data:`deephealth.results.FLAT_FIELDS` plus ``decision_sha256`` (the decision rule's
fingerprint), ``content_sha256`` (hex, "" when the file could not be read) and ``scored_at`` (UTC
timestamp). ``review`` (the film is in the model's review band), ``review_reason`` (why, in words)
and ``decision_sha256`` came later: parts written before them read as null there
(:data:`LATER_COLUMNS`), except ``review_reason``, taken from the row's ``decision`` JSON when that
has one; rows without ``decision_sha256`` match no decision rule and are scored again on resume.

Needs the ``[scale]`` extra (``ray[data]``, which brings pyarrow); nothing here is imported by
serving (``deephealth serve``, :mod:`deephealth.inference`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deephealth.inputs import is_uri
from deephealth.results import FLAT_FIELDS, flat_record, result_record

_logger = logging.getLogger(__name__)

PART_ROWS = 1000
"""Rows per results part (a part is also written after :data:`FLUSH_SECONDS` seconds)."""

FLUSH_SECONDS = 10.0
"""Longest time a scored row waits in the driver before it is written."""

NOT_DONE = "-"
"""``done_sha256`` of an input with no result yet (never equal to a hash or to "")."""

KEY_COLUMNS = ("source", "content_sha256", "model_sha256", "decision_sha256")
"""The columns that identify a result (resume key)."""

LATER_COLUMNS = ("review", "review_reason", "decision_sha256")
"""Columns added after results were first written: a part without one reads as null in it
(``review_reason``: the ``decision`` JSON's, when it has one; see :func:`load_results`)."""


class BatchError(RuntimeError):
    """The batch cannot run (no Ray, unreadable RESULTS, model cannot load); one line for the user."""


# ----------------------------------------------------------------------------------------- schema


def result_schema(with_skipped: bool = False):
    """The pyarrow schema of a results part (``skipped``: the workers' extra column, never written).

    Returns:
        ``pyarrow.Schema`` with the columns of :data:`deephealth.results.FLAT_FIELDS`,
        ``decision_sha256``, ``content_sha256`` and ``scored_at``.
    """
    import pyarrow as pa

    from deephealth.labels import CLASS_NAMES

    types = {
        "source": pa.string(),
        "ok": pa.bool_(),
        "label": pa.string(),
        "label_index": pa.int32(),
        "probabilities": pa.struct([(c, pa.float64()) for c in CLASS_NAMES]),
        "logits": pa.list_(pa.float32()),
        "decision": pa.string(),
        "review": pa.bool_(),
        "review_reason": pa.string(),
        "suitability_status": pa.string(),
        "suitability_reasons": pa.list_(pa.string()),
        "suitability": pa.string(),
        "warnings": pa.list_(pa.string()),
        "image": pa.string(),
        "error": pa.string(),
        "model_name": pa.string(),
        "model_version": pa.string(),
        "model_sha256": pa.string(),
    }
    fields = [pa.field(name, types[name]) for name in FLAT_FIELDS]
    fields += [pa.field("decision_sha256", pa.string()), pa.field("content_sha256", pa.string()),
               pa.field("scored_at", pa.timestamp("ms", tz="UTC"))]
    if with_skipped:
        fields.append(pa.field("skipped", pa.bool_()))
    return pa.schema(fields)


# ----------------------------------------------------------------------------------------- files


def _filesystem(location: str):
    """``(pyarrow filesystem, path inside it)`` for a local path or a ``scheme://`` URI."""
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def read_source(source: str) -> bytes:
    """The bytes of one input: a local file, or an object (``s3://``, ``gs://``...) through pyarrow.

    Raises:
        OSError: it cannot be read (pyarrow's errors are OSError too).
    """
    if not is_uri(source):
        with open(source, "rb") as fh:
            return fh.read()
    fs, path = _filesystem(source)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def normalise_source(source: str) -> str:
    """The key under which an input's result is stored: an absolute path, or the URI unchanged."""
    return source if is_uri(source) else os.path.abspath(source)


# ----------------------------------------------------------------------------------------- scoring


def score_items(
    predictor: Any,
    sources: Sequence[str],
    done_sha256: Sequence[str],
    *,
    allow_unsuitable: bool = False,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Score inputs with ``predictor`` unless their result (same content) is already stored.

    Args:
        predictor: a :class:`deephealth.inference.Predictor`.
        sources: absolute paths or URIs.
        done_sha256: per source, the content hash its stored result was made from, "" for a stored
            result of an unreadable file, or :data:`NOT_DONE`.
        allow_unsuitable: as ``predict --allow-unsuitable``.
        batch_size: images per network run.

    Returns:
        One row per source, in order, with the columns of :func:`result_schema` (``skipped`` True
        and only ``source`` / ``content_sha256`` meaningful for an input skipped as done).
    """
    now = _dt.datetime.now(_dt.timezone.utc)
    rule = predictor.artifact.decision_fingerprint
    rows: list[dict[str, Any] | None] = [None] * len(sources)
    todo_idx: list[int] = []
    todo_src: list[str | bytes] = []
    hashes: list[str] = []
    for i, (src, done) in enumerate(zip(sources, done_sha256)):
        try:
            data: bytes | None = read_source(src)
        except OSError as exc:
            data = None
            read_error = " ".join(str(exc).split()) or type(exc).__name__
        digest = hashlib.sha256(data).hexdigest() if data is not None else ""
        hashes.append(digest)
        if done == digest:
            rows[i] = {"source": src, "content_sha256": digest, "skipped": True}
            continue
        if data is None and is_uri(src):
            rec = {"source": src, "ok": False, "error": f"{src}: cannot read ({read_error})"}
            rows[i] = {**flat_record(result_record(rec, predictor.artifact)), "decision_sha256": rule,
                       "content_sha256": "", "scored_at": now, "skipped": False}
            continue
        todo_idx.append(i)
        # Local file that could not be opened: hand the path to the reader, whose message is predict's.
        todo_src.append(data if data is not None else src)
    if todo_idx:
        results = predictor.predict_many(
            todo_src, batch_size=batch_size, names=[sources[i] for i in todo_idx], allow_unsuitable=allow_unsuitable
        )
        for i, res in zip(todo_idx, results):
            rows[i] = {**flat_record(result_record(res, predictor.artifact)), "decision_sha256": rule,
                       "content_sha256": hashes[i], "scored_at": now, "skipped": False}
    return rows  # type: ignore[return-value]


class Scorer:
    """The Ray Data worker: loads the model once, then scores batches (a callable class for ``map_batches``).

    Args:
        model_dir: model folder (``None``: the bundled one / ``DEEPHEALTH_MODEL_DIR``).
        threads: ONNX Runtime intra-op threads of this worker.
        allow_unsuitable: as ``predict --allow-unsuitable``.
        batch_size: images per network run.
    """

    def __init__(self, model_dir: str | None, threads: int, allow_unsuitable: bool, batch_size: int) -> None:
        from deephealth.inference import Predictor

        self.predictor = Predictor(model_dir, num_threads=threads)
        self.allow_unsuitable = allow_unsuitable
        self.batch_size = batch_size

    def __call__(self, batch):
        """``pyarrow.Table`` (``source``, ``done_sha256``) -> ``pyarrow.Table`` of :func:`result_schema` rows."""
        import pyarrow as pa

        rows = score_items(
            self.predictor, batch.column("source").to_pylist(), batch.column("done_sha256").to_pylist(),
            allow_unsuitable=self.allow_unsuitable, batch_size=self.batch_size,
        )
        return pa.Table.from_pylist(rows, schema=result_schema(with_skipped=True))


# ----------------------------------------------------------------------------------------- results


def _list_parts(out: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, root = _filesystem(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type != pafs.FileType.Directory:
        raise BatchError(f"{out}: RESULTS must be a folder (of Parquet parts), not a file")
    sel = pafs.FileSelector(root, recursive=False)
    return sorted(f.path for f in fs.get_file_info(sel)
                  if f.type == pafs.FileType.File and f.base_name.startswith("part-") and f.base_name.endswith(".parquet"))


def _review_reason(decision: str | None) -> str | None:
    """``review_reason`` of a row's ``decision`` JSON text; ``None`` when absent, null or unreadable."""
    if not decision:
        return None
    try:
        value = json.loads(decision)
    except ValueError:
        return None
    reason = value.get("review_reason") if isinstance(value, dict) else None
    return reason if isinstance(reason, str) else None


def load_results(out: str, *, latest: bool = True, columns: Iterable[str] | None = None,
                 model_sha256: str | None = None, decision_sha256: str | None = None):
    """Read a RESULTS folder, or one model's (and decision rule's) results in it.

    A folder scored by several models or decision rules holds rows of each (nothing is overwritten).
    The results of one run are those of the model and decision rule it used: pass its
    ``model_sha256`` and ``decision_sha256`` (:attr:`BatchSummary.model_sha256`,
    :attr:`BatchSummary.decision_sha256`, or :meth:`BatchSummary.results`). A run skips the films
    that its model and rule already scored, so after runs with model A, then B, then A again, the
    newest row of a film is B's while the third run's answer is A's: only the filters return A's.
    Without them, ``latest`` takes the newest row per source whichever model or rule made it, and a
    warning is logged when the folder holds more than one.

    Args:
        out: the folder (local path or URI) ``deephealth batch`` wrote.
        latest: keep only the newest row per source (by ``scored_at``) among the rows kept by the
            filters; ``False``: every row kept.
        columns: columns to return (default: all).
        model_sha256: keep only rows made by this model (SHA-256 of its ``model.onnx``,
            :attr:`deephealth.artifact.ModelArtifact.sha256`); ``None``: every model.
        decision_sha256: keep only rows made with this decision rule
            (:attr:`deephealth.artifact.ModelArtifact.decision_fingerprint`); ``None``: every rule
            (rows from parts written before the rule was recorded have none and match no rule).

    Columns added later (:data:`LATER_COLUMNS`) read as null in a part written without them, except
    ``review_reason``: in a part without that column, it is taken from the row's ``decision`` JSON
    (``decision.review_reason``) when that has one (a flagged film), and is null otherwise.

    Returns:
        A ``pyarrow.Table`` with the requested columns of :func:`result_schema`, in that schema's
        types (empty when there are no parts or no row matches).

    Raises:
        BatchError: ``out`` is a file, or a part cannot be read.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = result_schema()
    cols = list(columns) if columns is not None else schema.names
    extra = []
    if latest:
        extra += ["source", "scored_at"]
    if latest or model_sha256 is not None:
        extra.append("model_sha256")
    if latest or decision_sha256 is not None:
        extra.append("decision_sha256")
    cols_read = list(dict.fromkeys([*cols, *extra]))
    fs, _ = _filesystem(out)
    tables = []
    for part in _list_parts(out):
        try:
            have = set(pq.read_schema(part, filesystem=fs).names)
            absent = [c for c in cols_read if c in LATER_COLUMNS and c not in have]
            # A part written before the review_reason column: the reason is in the decision JSON.
            reason_from_json = "review_reason" in absent and "decision" in have
            read = [c for c in cols_read if c not in absent]
            if reason_from_json and "decision" not in read:
                read.append("decision")
            table = pq.read_table(part, columns=read, filesystem=fs)
        except (OSError, ValueError) as exc:
            raise BatchError(f"{part}: cannot read this results part ({' '.join(str(exc).split())})") from exc
        for c in absent:  # an older part: null, not False (it was never decided)
            if c == "review_reason" and reason_from_json:
                reasons = [_review_reason(d) for d in table.column("decision").to_pylist()]
                table = table.append_column(schema.field(c), pa.array(reasons, type=schema.field(c).type))
                continue
            table = table.append_column(schema.field(c), pa.nulls(table.num_rows, schema.field(c).type))
        tables.append(table.select(cols_read))
    if not tables:
        return pa.Table.from_pylist([], schema=pa.schema([schema.field(c) for c in cols]))
    table = pa.concat_tables(tables)
    if model_sha256 is not None:
        table = table.filter(pc.equal(table.column("model_sha256"), model_sha256))
    if decision_sha256 is not None:
        table = table.filter(pc.equal(table.column("decision_sha256"), decision_sha256))
    if latest and model_sha256 is None and decision_sha256 is None and table.num_rows:
        runs = set(zip(table.column("model_sha256").to_pylist(), table.column("decision_sha256").to_pylist()))
        if len(runs) > 1:
            n_models = len({m for m, _ in runs})
            n_rules = len({r for _, r in runs})
            _logger.warning(
                "%s holds results of %d model%s and %d decision rule%s: the newest row per source may not be the "
                "answer of the model and rule of the last run (a run skips films its model already scored); pass "
                "model_sha256= and decision_sha256= to load_results for one run's results",
                out, n_models, "s" if n_models != 1 else "", n_rules, "s" if n_rules != 1 else "")
    if latest and table.num_rows:
        src = table.column("source").to_pylist()
        at = table.column("scored_at").to_pylist()
        newest: dict[str, int] = {}
        for i, (s, t) in enumerate(zip(src, at)):
            j = newest.get(s)
            if j is None or t >= at[j]:
                newest[s] = i
        table = table.take(sorted(newest.values()))
    return table.select(cols)


@dataclass
class ResumePlan:
    """What RESULTS already holds for one model and decision rule (see :func:`resume_plan`).

    Attributes:
        done: ``{source: content_sha256}`` of each source whose newest stored result made by this
            model was made with this decision rule ("" for an unreadable file); these inputs are
            skipped when their content is unchanged.
        other_model: sources whose stored results were all made by other models (another
            ``model.onnx``): scored again.
        other_rule: sources whose newest stored result made by this model was made with another
            decision rule (operating point, review band, temperature or input-gate thresholds in
            ``metadata.json``), or before results recorded the rule (``decision_sha256`` null): scored again.
        newer_elsewhere: sources in ``done`` whose newest stored row was made by another model or
            decision rule (model A, then B, then A again): they are skipped, and this run's results
            are read with :func:`load_results`'s ``model_sha256`` / ``decision_sha256`` filters.
    """

    done: dict[str, str] = field(default_factory=dict)
    other_model: set[str] = field(default_factory=set)
    other_rule: set[str] = field(default_factory=set)
    newer_elsewhere: set[str] = field(default_factory=set)


def resume_plan(out: str, model_sha256: str, decision_sha256: str, *, retry_errors: bool = False) -> ResumePlan:
    """Which stored results still hold for this model and decision rule, and why the others do not.

    A stored row counts as done only if both its ``model_sha256`` and its ``decision_sha256`` match;
    a row from a part written before ``decision_sha256`` existed (null) matches no rule. Among one
    model's rows of a source the newest decides: a rule changed and then changed back scores the
    film again (its newest row, the one :func:`load_results` returns, is the other rule's).

    Args:
        out: the RESULTS folder.
        model_sha256: SHA-256 of the model's ONNX file (:attr:`~deephealth.artifact.ModelArtifact.sha256`).
        decision_sha256: the model's decision-rule fingerprint
            (:attr:`~deephealth.artifact.ModelArtifact.decision_fingerprint`).
        retry_errors: leave out results that are errors (other than gate refusals), so they are retried.
    """
    table = load_results(out, latest=False,
                         columns=["source", "content_sha256", "model_sha256", "decision_sha256", "ok",
                                  "suitability_status", "scored_at"])
    src = table.column("source").to_pylist()
    sha = table.column("content_sha256").to_pylist()
    model = table.column("model_sha256").to_pylist()
    rule = table.column("decision_sha256").to_pylist()
    ok = table.column("ok").to_pylist()
    status = table.column("suitability_status").to_pylist()
    at = table.column("scored_at").to_pylist()
    plan = ResumePlan()
    done = plan.done
    newest_here: dict[str, int] = {}  # per source, its newest row made by this model
    newest_any: dict[str, int] = {}  # per source, its newest row made by any model
    for i in sorted(range(table.num_rows), key=at.__getitem__):  # oldest first: the newest row wins
        newest_any[src[i]] = i
        if model[i] != model_sha256:
            plan.other_model.add(src[i])
            continue
        newest_here[src[i]] = i
        if rule[i] != decision_sha256 or (retry_errors and not ok[i] and status[i] != "refuse"):
            done.pop(src[i], None)  # a newer result with another rule (or an error to retry) supersedes it
            continue
        done[src[i]] = sha[i] or ""
    plan.other_model.difference_update(newest_here)
    plan.other_rule.update(s for s, i in newest_here.items() if s not in done and rule[i] != decision_sha256)
    plan.newer_elsewhere.update(s for s in done if (model[newest_any[s]], rule[newest_any[s]]) != (model_sha256, decision_sha256))
    return plan


def done_hashes(out: str, model_sha256: str, decision_sha256: str, *, retry_errors: bool = False) -> dict[str, str]:
    """``{source: content_sha256}`` of the sources whose newest result by this model has this decision rule.

    Args:
        out: the RESULTS folder.
        model_sha256: SHA-256 of the model's ONNX file; results of other models do not count.
        decision_sha256: fingerprint of the model's decision rule
            (:attr:`~deephealth.artifact.ModelArtifact.decision_fingerprint`); results made with
            another rule, or before the rule was recorded, do not count.
        retry_errors: leave out results that are errors (other than gate refusals), so they are retried.
    """
    return resume_plan(out, model_sha256, decision_sha256, retry_errors=retry_errors).done


class PartWriter:
    """Writes scored rows to ``OUT/part-<run>-<n>.parquet`` atomically (temporary name, then rename).

    Args:
        out: the RESULTS folder (local path or URI); created if missing.
        run_id: distinguishes this run's parts from earlier runs'.
    """

    def __init__(self, out: str, run_id: str) -> None:
        self.out = out
        self.run_id = run_id
        self.fs, self.root = _filesystem(out)
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as exc:
            raise BatchError(f"{out}: cannot create the results folder ({' '.join(str(exc).split())})") from exc
        self.parts = 0
        self.rows = 0

    def write(self, table) -> str:
        """Write one part (a ``pyarrow.Table`` of :func:`result_schema`); returns its path."""
        import pyarrow.parquet as pq

        name = f"part-{self.run_id}-{self.parts:06d}.parquet"
        final = f"{self.root.rstrip('/')}/{name}"
        if is_uri(self.out):  # an object store PUT is atomic
            pq.write_table(table, final, filesystem=self.fs)
        else:
            tmp = os.path.join(self.root, f".{name}.tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        self.parts += 1
        self.rows += table.num_rows
        _logger.debug("wrote %s (%d rows)", final, table.num_rows)
        return final


# ----------------------------------------------------------------------------------------- summary


@dataclass
class BatchSummary:
    """What one ``batch`` run did.

    Attributes:
        total: inputs listed.
        scored: inputs classified or reported as errors by this run (rows written).
        skipped: inputs whose result was already stored (same content, same model, same decision rule).
        other_model: inputs listed whose stored results were all made by another model (another
            ``model.onnx``), so they were scored again (:class:`ResumePlan`).
        other_rule: inputs listed whose stored result was made by this model with another decision
            rule (operating point, review band, temperature or input-gate thresholds in ``metadata.json``, or results
            written before the rule was recorded), so they were scored again.
        newer_elsewhere: inputs skipped whose newest stored row was made by another model or
            decision rule (model A, then B, then A again): this run's answer for them is the older
            row of its own model and rule, which :meth:`results` returns.
        model_sha256, decision_sha256: the model (SHA-256 of ``model.onnx``) and decision-rule
            fingerprint of this run; its results are the rows with both (:meth:`results`).
        labels: ``{label: count}`` of this run's classified rows.
        review: this run's classified rows flagged for review (in the model's review band).
        gate: ``{status: count}`` of this run's rows (accept / warn / refuse / unavailable / "none").
        errors: this run's rows that are errors (including gate refusals).
        seconds: wall time of the pipeline, from its start (workers loading the model included)
            to the last part written; starting or joining Ray is excluded.
        startup_seconds: time to start or join Ray.
        workers, threads: the pool used.
        parts: result parts written.
        interrupted: the run was stopped before the end.
        error_messages: the first error lines (at most 20).
    """

    total: int = 0
    scored: int = 0
    skipped: int = 0
    other_model: int = 0
    other_rule: int = 0
    newer_elsewhere: int = 0
    model_sha256: str = ""
    decision_sha256: str = ""
    labels: Counter = field(default_factory=Counter)
    review: int = 0
    gate: Counter = field(default_factory=Counter)
    errors: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    workers: int = 0
    threads: int = 0
    parts: int = 0
    interrupted: bool = False
    error_messages: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Inputs scored by this run (rows written) per second of :attr:`seconds`; ``0.0`` before any time.

        Skipped inputs (already stored) are not counted: they are read and hashed, never decoded
        or classified, so counting them would make a resumed run look many times faster than the
        pipeline is.
        """
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def results(self, out: str, *, columns: Iterable[str] | None = None):
        """This run's results in RESULTS ``out``: the newest row per source made by this run's model and rule.

        Every source in ``out`` that this model and rule scored, in this run or earlier (a skipped
        input's row is the earlier one), never another model's newer row.

        Returns:
            A ``pyarrow.Table`` as :func:`load_results` returns it.

        Raises:
            BatchError: as :func:`load_results`; also when the summary names no model (a bare summary).
        """
        if not self.model_sha256 or not self.decision_sha256:
            raise BatchError("this batch summary names no model and decision rule: read RESULTS with load_results")
        return load_results(out, columns=columns, model_sha256=self.model_sha256,
                            decision_sha256=self.decision_sha256)

    def add(self, table) -> None:
        """Count one written part's rows."""
        self.scored += table.num_rows
        for ok, label, status, err in zip(table.column("ok").to_pylist(), table.column("label").to_pylist(),
                                          table.column("suitability_status").to_pylist(),
                                          table.column("error").to_pylist()):
            self.gate[status or "not read"] += 1  # an unreadable file never reached the gate
            if ok:
                self.labels[label] += 1
            else:
                self.errors += 1
                if len(self.error_messages) < 20 and err:
                    self.error_messages.append(err)
        if "review" in table.column_names:
            self.review += sum(bool(v) for v in table.column("review").to_pylist())


# ----------------------------------------------------------------------------------------- driver


def plan_workers(cpus: int, workers: int | None, threads: int | None) -> tuple[int, int]:
    """``(workers, threads)`` such that workers x threads <= cpus when not both are given.

    Defaults: one ONNX Runtime thread per worker and one worker per CPU.
    """
    cpus = max(int(cpus), 1)
    if workers is not None and workers < 1:
        raise BatchError(f"--workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise BatchError(f"--threads must be >= 1, got {threads}")
    if workers is None:
        t = threads or 1
        return max(cpus // t, 1), t
    if threads is None:
        return workers, max(cpus // workers, 1)
    return workers, threads


def require_ray() -> None:
    """Check that the ``[scale]`` extra (Ray Data, pyarrow) is installed, before any work starts.

    Raises:
        BatchError: naming the extra to install and the missing module.
    """
    try:
        import pyarrow  # noqa: F401
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise BatchError(f"deephealth batch needs Ray Data: pip install 'deephealth[scale]' ({exc})") from exc


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast when nothing answers at a Ray cluster address ``host:port`` or ``ray://host:port``.

    Without this, ``ray.init`` retries an address where nothing listens for minutes before it
    gives up. ``None``, ``auto`` and ``local`` (and addresses without a numeric port) are not checked.

    Args:
        address: the ``--address`` given by the user.
        timeout: seconds to wait for the TCP connection.

    Raises:
        BatchError: naming the address and the socket error.
    """
    import socket

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BatchError(f"cannot connect to the Ray cluster at {address}: nothing answers at {host}:{port} "
                         f"({reason}); is the head node running (ray start --head, docs/scale.md)?") from exc


def _start_ray(address: str | None) -> None:
    import ray

    check_reachable(address)
    if ray.is_initialized():
        return
    # Quiet start; Ray's own progress bars are replaced by ours.
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    except Exception as exc:  # ConnectionError, RuntimeError, ray.exceptions.AuthenticationError...
        _logger.debug("ray.init failed", exc_info=True)
        detail = " ".join(str(exc).split())
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray instance"
        chain, cause = [], exc  # Ray wraps the authentication failure in a ConnectionError
        while cause is not None and len(chain) < 8:
            chain.append(f"{type(cause).__name__} {cause}")
            cause = cause.__cause__ or cause.__context__
        hint = ""
        if any("AuthToken" in c or "AuthenticationError" in c for c in chain):
            hint = ("; the cluster uses token authentication: run with RAY_AUTH_MODE=token and the cluster's token "
                    "in ~/.ray/auth_token or RAY_AUTH_TOKEN (docs/scale.md)")
        raise BatchError(f"cannot {where} ({type(exc).__name__}: {detail[:300]}){hint}") from exc


def run_batch(
    inputs: Sequence[str],
    out: str,
    *,
    model_dir: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    allow_unsuitable: bool = False,
    batch_size: int = 32,
    retry_errors: bool = False,
    part_rows: int = PART_ROWS,
    flush_seconds: float = FLUSH_SECONDS,
    progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Score ``inputs`` into the RESULTS folder ``out`` with Ray Data, skipping what is done.

    Args:
        inputs: paths or URIs (from :func:`deephealth.inputs.collect_inputs`); duplicates dropped.
        out: RESULTS folder, local or a URI (``s3://bucket/results``).
        model_dir: model folder (``None``: the bundled model / ``DEEPHEALTH_MODEL_DIR``).
        workers: model replicas (Ray actors); default one per CPU of the cluster.
        threads: ONNX Runtime threads per worker; default ``CPUs // workers`` (at least 1).
        address: Ray cluster address (``ray://host:10001`` or ``host:6379``); ``None`` uses a
            running Ray in this process or starts a local one.
        allow_unsuitable: classify images the gate refuses anyway (flags kept).
        batch_size: images per network run and per Ray block.
        retry_errors: score again inputs whose stored result is an error (not a refusal).
        part_rows, flush_seconds: write a part every so many rows or seconds.
        progress: called with ``(handled, total)`` after each scored block.

    Returns:
        The :class:`BatchSummary`; ``interrupted`` is True after a ``KeyboardInterrupt`` (rows
        scored until then are written before returning).

    Raises:
        BatchError: Ray is not installed, RESULTS is unusable, the model cannot be loaded, or Ray
            cannot be started or its cluster (``address``) reached.
    """
    require_ray()
    import pyarrow as pa
    import ray
    import ray.data

    from deephealth.artifact import ModelArtifact, ModelArtifactError
    from deephealth.paths import default_model_dir

    if batch_size < 1:
        raise BatchError(f"--batch-size must be >= 1, got {batch_size}")
    mdir = Path(model_dir) if model_dir is not None else default_model_dir()
    try:
        artifact = ModelArtifact.load(mdir, verify=True)
    except (ModelArtifactError, OSError) as exc:
        raise BatchError(f"cannot load the model: {exc}") from exc
    sources = list(dict.fromkeys(normalise_source(s) for s in inputs))
    plan = resume_plan(out, artifact.sha256, artifact.decision_fingerprint, retry_errors=retry_errors)
    done = plan.done
    summary = BatchSummary(total=len(sources), other_model=sum(s in plan.other_model for s in sources),
                           other_rule=sum(s in plan.other_rule for s in sources),
                           newer_elsewhere=sum(s in plan.newer_elsewhere for s in sources),
                           model_sha256=artifact.sha256, decision_sha256=artifact.decision_fingerprint)
    if summary.other_model:
        _logger.info("%d result(s) in %s were made by another model (another model.onnx) and are scored again",
                     summary.other_model, out)
    if summary.other_rule:
        _logger.info("%d result(s) in %s were made with another decision rule (operating point, review band or "
                     "temperature in metadata.json) and are scored again", summary.other_rule, out)
    if summary.newer_elsewhere:
        _logger.info("%d input(s) are already scored by this model and rule but have a newer row by another model "
                     "or rule in %s: they are skipped; this run's results: load_results(out, model_sha256=%r, "
                     "decision_sha256=%r)", summary.newer_elsewhere, out, artifact.sha256, artifact.decision_fingerprint)
    writer = PartWriter(out, _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    if not sources:
        return summary

    t0 = time.perf_counter()
    _start_ray(address)
    summary.startup_seconds = time.perf_counter() - t0
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    summary.workers, summary.threads = plan_workers(cpus, workers, threads)
    if summary.workers * summary.threads > cpus:
        _logger.warning("%d workers x %d threads exceed the %d CPUs of the cluster; some workers will wait",
                        summary.workers, summary.threads, cpus)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"source": s, "done_sha256": done.get(s, NOT_DONE)} for s in sources]
    # Blocks of at most batch_size inputs, and at least two per worker so that every worker gets work.
    block_rows = max(1, min(batch_size, math.ceil(len(items) / (2 * summary.workers))))
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / block_rows))
    ds = ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"model_dir": str(mdir), "threads": summary.threads,
                               "allow_unsuitable": allow_unsuitable, "batch_size": batch_size},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=summary.workers),
        num_cpus=summary.threads,
    )
    schema = result_schema()
    pending: list[Any] = []
    pending_rows = 0
    last_flush = time.perf_counter()
    handled = 0

    def flush() -> None:
        nonlocal pending, pending_rows, last_flush
        if pending_rows:
            table = pa.concat_tables(pending)
            writer.write(table)
            summary.add(table)
        pending, pending_rows, last_flush = [], 0, time.perf_counter()

    t_start = time.perf_counter()
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            skipped = block.column("skipped").to_pylist()
            n_skip = sum(skipped)
            summary.skipped += n_skip
            handled += block.num_rows
            if n_skip < block.num_rows:
                keep = pa.array([not s for s in skipped])
                pending.append(block.filter(keep).select(schema.names).cast(schema))
                pending_rows += block.num_rows - n_skip
            if pending_rows >= part_rows or time.perf_counter() - last_flush >= flush_seconds:
                flush()
            if progress is not None:
                progress(handled, len(sources))
    except KeyboardInterrupt:
        summary.interrupted = True
        _logger.warning("interrupted: writing the %d rows scored so far", pending_rows)
    except Exception as exc:  # the engine failed (workers lost, cluster gone, Ctrl-C seen by Ray first)
        _logger.debug("batch engine failure", exc_info=True)
        failure = " ".join(str(exc).split())[:300] or type(exc).__name__
        summary.interrupted = True
        flush()
        summary.parts = writer.parts
        raise BatchError(
            f"the Ray pipeline stopped ({type(exc).__name__}: {failure}); {summary.scored} rows were written to "
            f"{out}: run the same command again to finish"
        ) from exc
    finally:
        flush()
        summary.seconds = time.perf_counter() - t_start
        summary.parts = writer.parts
    return summary
