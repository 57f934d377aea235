"""Tests of `deephealth batch` (Ray Data): same rows as predict, manifests, resume, idempotence, serving without Ray.

The Ray tests share one local Ray instance (2 CPUs, no dashboard) started once for this module and
use the tiny test model; they are marked ``slow`` (Ray's start takes 10-40 s on a busy 2-core machine).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from deephealth.cli import main
from deephealth.inputs import collect_inputs, read_manifest, ManifestError
from deephealth.labels import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def films(tmp_path: Path, dataset_root: Path) -> list[Path]:
    """Eight test films copied to tmp/scans (3 normal, 5 pneumonia) plus tmp/scans/broken.jpeg (truncated)."""
    d = tmp_path / "scans"
    d.mkdir()
    normal = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[:3]
    pneu = sorted((dataset_root / "test" / "PNEUMONIA").glob("*.jpeg"))[:5]
    out = []
    for f in [*normal, *pneu]:
        shutil.copy(f, d / f.name)
        out.append(d / f.name)
    (d / "broken.jpeg").write_bytes(normal[0].read_bytes()[:300])
    out.append(d / "broken.jpeg")
    return sorted(out)


# ------------------------------------------------------------------------------------ inputs (no Ray)


def test_csv_manifest_relative_to_its_folder_or_root(films: list[Path], tmp_path: Path):
    m = tmp_path / "scans" / "list.csv"
    m.write_text("patient,path\np1,%s\np2,\np3,%s\n" % (films[0].name, films[1]))
    assert read_manifest(m) == [str(films[0]), str(films[1])]
    other = tmp_path / "elsewhere.csv"
    other.write_text("path\n%s\n" % films[2].name)
    assert read_manifest(other, root=tmp_path / "scans") == [str(films[2])]
    files, missing = collect_inputs([str(m), str(films[0])])
    assert files == [str(films[0]), str(films[1])] and missing == []  # the duplicate is dropped


def test_parquet_manifest_and_uri_entries(films: list[Path], tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    m = tmp_path / "list.parquet"
    pq.write_table(pa.table({"source": [str(films[0]), "s3://bucket/x/y.dcm"]}), m)
    files, missing = collect_inputs([str(m)])
    assert files == [str(films[0]), "s3://bucket/x/y.dcm"] and missing == []


def test_unreadable_manifest_is_reported_in_one_line(tmp_path: Path):
    empty = tmp_path / "empty.csv"
    empty.write_text("path\n")
    with pytest.raises(ManifestError, match=r"empty\.csv: the manifest lists no inputs"):
        read_manifest(empty)
    files, missing = collect_inputs([str(empty)])
    assert files == [] and missing == [(str(empty), "the manifest lists no inputs (column 'path' is empty)")]


def test_plan_workers_never_oversubscribes():
    from deephealth.batch import BatchError, plan_workers

    assert plan_workers(2, None, None) == (2, 1)
    assert plan_workers(2, 1, None) == (1, 2)
    assert plan_workers(16, 3, None) == (3, 5)
    assert plan_workers(8, None, 4) == (2, 4)
    with pytest.raises(BatchError, match="--workers must be >= 1"):
        plan_workers(2, 0, None)


# ------------------------------------------------------------------------------------ serving has no Ray


def _requirements(extra: str, table: dict, seen: set[str] | None = None) -> list[str]:
    seen = seen if seen is not None else set()
    if extra in seen:
        return []
    seen.add(extra)
    out = []
    for req in table["project"]["optional-dependencies"][extra]:
        if req.startswith("deephealth["):
            for e in req[len("deephealth["):-1].split(","):
                out += _requirements(e.strip(), table, seen)
        else:
            out.append(req)
    return out


def test_serving_installs_and_imports_no_ray(tiny_model_dir: Path, films: list[Path]):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())
    serve = table["project"]["dependencies"] + _requirements("web", table)
    names = {r.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in serve}
    assert not names & {"ray", "torch", "torchvision", "timm"}, names
    assert any(r.startswith("ray[data]") for r in _requirements("dev", table))  # CI installs it

    code = textwrap.dedent(
        f"""
        import sys
        import deephealth.web.app, deephealth.inference
        from deephealth.cli import main, build_parser
        build_parser()  # imports every command module, batch included
        rc = main(["predict", {str(films[0])!r}, "--model", {str(tiny_model_dir)!r}, "--format", "json"])
        assert rc == 0, rc
        bad = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        print("RAY_MODULES", bad)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RAY_MODULES []" in proc.stdout


# ------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


def _predict_json(files: list[Path], model_dir: Path, capsys) -> dict[str, dict]:
    rc = main(["predict", *map(str, files), "--model", str(model_dir), "--format", "json"])
    assert rc == 1  # the broken file
    return {str(Path(r["source"]).resolve()): r for r in json.loads(capsys.readouterr().out)}


def _rows(out: Path) -> dict[str, dict]:
    from deephealth.batch import load_results

    return {r["source"]: r for r in load_results(str(out)).to_pylist()}


@pytest.mark.slow
def test_batch_rows_equal_predict_and_second_run_recomputes_nothing(ray_local, films, tiny_model_dir, tmp_path, capsys):
    from deephealth.batch import run_batch

    expected = _predict_json(films, tiny_model_dir, capsys)
    out = tmp_path / "results"
    s = run_batch([str(f) for f in films], str(out), model_dir=str(tiny_model_dir), workers=2, batch_size=2)
    assert (s.total, s.scored, s.skipped, s.errors, s.workers, s.threads) == (9, 9, 0, 1, 2, 1)
    rows = _rows(out)
    assert sorted(rows) == sorted(expected)
    sha = expected[str(films[0])]["model"]["sha256"]
    for src, e in expected.items():
        r = rows[src]
        assert r["ok"] == e["ok"] and r["model_sha256"] == sha == e["model"]["sha256"]
        assert r["model_name"] == e["model"]["name"] and r["model_version"] == e["model"]["version"]
        if e["ok"]:
            assert (r["label"], r["label_index"]) == (e["label"], e["label_index"])
            assert r["probabilities"] == pytest.approx(e["probabilities"], abs=1e-9)
            assert json.loads(r["decision"]) == e["decision"]
            assert r["review"] is e["decision"]["review"] is False  # the tiny model has no review band
            assert r["warnings"] == e["warnings"]
            assert r["suitability_status"] == e["suitability"]["status"]
            assert r["suitability_reasons"] == e["suitability"]["reasons"]
        else:
            assert r["error"] == e["error"].replace(e["source"], src)
            assert r["label"] is None and r["probabilities"] is None and r["review"] is None
    assert dict(s.labels) == dict(Counter(e["label"] for e in expected.values() if e["ok"]))
    assert sum(s.labels.values()) == 8 and set(s.labels) <= set(CLASS_NAMES)
    parts = sorted(out.glob("part-*.parquet"))

    again = run_batch([str(f) for f in films], str(out), model_dir=str(tiny_model_dir), workers=2, batch_size=2)
    assert (again.scored, again.skipped, again.parts) == (0, 9, 0)
    assert sorted(out.glob("part-*.parquet")) == parts

    # New content under the same name: only that file is scored again; the newest row wins.
    shutil.copy(films[-1], films[0])
    third = run_batch([str(f) for f in films], str(out), model_dir=str(tiny_model_dir), workers=1, batch_size=4)
    assert (third.scored, third.skipped) == (1, 8)
    new = _rows(out)
    assert len(new) == 9
    assert new[str(films[0])]["probabilities"] == pytest.approx(new[str(films[-1])]["probabilities"], abs=1e-9)


@pytest.mark.slow
def test_resume_after_interruption_equals_an_uninterrupted_run(ray_local, films, tiny_model_dir, tmp_path):
    from deephealth.batch import run_batch

    paths = [str(f) for f in films]
    full = tmp_path / "full"
    run_batch(paths, str(full), model_dir=str(tiny_model_dir), workers=2, batch_size=1)

    def stop_midway(done: int, total: int) -> None:
        if done >= 3:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    first = run_batch(paths, str(cut), model_dir=str(tiny_model_dir), workers=2, batch_size=1, part_rows=1,
                      progress=stop_midway)
    assert first.interrupted and 3 <= first.scored < 9
    written = _rows(cut)
    assert len(written) == first.scored  # everything scored before the stop is on disk
    second = run_batch(paths, str(cut), model_dir=str(tiny_model_dir), workers=2, batch_size=1)
    assert not second.interrupted
    assert (second.scored, second.skipped) == (9 - first.scored, first.scored)
    a, b = _rows(full), _rows(cut)
    assert sorted(a) == sorted(b) == sorted(str(f.resolve()) for f in films)
    keys = ("ok", "label", "label_index", "probabilities", "error", "content_sha256", "model_sha256", "suitability_status")
    assert {s: {k: r[k] for k in keys} for s, r in a.items()} == {s: {k: r[k] for k in keys} for s, r in b.items()}
    assert {s: written[s]["scored_at"] for s in written} == {s: b[s]["scored_at"] for s in written}  # not redone


@pytest.mark.slow
def test_cli_manifest_input_writes_one_row_per_input(ray_local, films, tiny_model_dir, tmp_path, capsys):
    m = tmp_path / "list.csv"
    m.write_text("path\n" + "\n".join(f"scans/{f.name}" for f in films) + "\nscans/missing.jpeg\n")
    out = tmp_path / "res"
    rc = main(["batch", str(m), "--out", str(out), "--model", str(tiny_model_dir), "--workers", "2", "--no-progress"])
    o, err = capsys.readouterr()
    assert rc == 1
    assert "10 input(s): 10 scored by this run, 0 already in" in o and "2 error(s) or refusal(s)" in o
    assert "2 worker(s) x 1 thread(s)" in o
    assert f"error: {tmp_path / 'scans' / 'missing.jpeg'}:" in err
    rows = _rows(out)
    assert len(rows) == 10
    missing = rows[str(tmp_path / "scans" / "missing.jpeg")]
    assert not missing["ok"] and missing["content_sha256"] == "" and "missing.jpeg" in missing["error"]
    rc = main(["batch", str(m), "--out", str(out), "--model", str(tiny_model_dir), "--workers", "2", "--no-progress"])
    o, _ = capsys.readouterr()
    assert rc == 0 and "10 input(s): 0 scored by this run, 10 already in" in o



@pytest.mark.slow
def test_a_new_operating_point_in_metadata_scores_the_films_again(ray_local, films, tmp_path, capsys):
    """Only metadata.json changes (the threshold): resuming scores again, with the new rule; then nothing."""
    from deephealth.artifact import ModelArtifact
    from deephealth.batch import PartWriter, load_results, run_batch

    model = tmp_path / "model"
    shutil.copytree(ROOT / "src" / "deephealth" / "models" / "deephealth-cxr3", model,
                    ignore=shutil.ignore_patterns("weights.pt", "report"))
    paths = [str(f) for f in films[:2] + films[-3:-1]]  # 2 normal, 2 pneumonia films
    out = tmp_path / "results"
    first = run_batch(paths, str(out), model_dir=str(model), workers=1, batch_size=4)
    assert (first.scored, first.skipped, first.other_rule, first.errors) == (4, 0, 0, 0)
    before = _rows(out)
    old = ModelArtifact.load(model)
    assert {r["decision_sha256"] for r in before.values()} == {old.decision_fingerprint}
    assert {json.loads(r["decision"])["threshold"] for r in before.values()} == {old.operating_point["threshold"]}

    meta = json.loads((model / "metadata.json").read_text())
    meta["operating_point"]["threshold"] = 0.5
    (model / "metadata.json").write_text(json.dumps(meta, indent=2))
    new = ModelArtifact.load(model)  # still verifies: the ONNX file and gate.npz are unchanged
    assert new.sha256 == old.sha256 and new.decision_fingerprint != old.decision_fingerprint

    rc = main(["batch", *paths, "--out", str(out), "--model", str(model), "--workers", "1", "--no-progress"])
    o = capsys.readouterr().out
    assert rc == 0
    assert "4 input(s): 4 scored by this run, 0 already in" in o
    assert (f"4 result(s) in {out} were made with another decision rule (operating point, review band, "
            "temperature or input-gate thresholds in metadata.json) and are scored again") in o
    after = _rows(out)
    assert sorted(after) == sorted(before)
    for src, r in after.items():
        assert r["decision_sha256"] == new.decision_fingerprint and r["model_sha256"] == old.sha256
        assert json.loads(r["decision"])["threshold"] == 0.5
        assert r["scored_at"] > before[src]["scored_at"]
        assert r["probabilities"] == pytest.approx(before[src]["probabilities"], abs=1e-9)  # same network
        assert r["review"] is not None
    assert load_results(str(out), latest=False).num_rows == 8

    again = run_batch(paths, str(out), model_dir=str(model), workers=1, batch_size=4)
    assert (again.scored, again.skipped, again.other_rule, again.parts) == (0, 4, 0, 0)

    # A folder written before results recorded the rule: its rows are read (null rule) and scored again.
    legacy = tmp_path / "legacy"
    table = load_results(str(out), latest=True)
    PartWriter(str(legacy), "old").write(table.drop_columns(["review", "decision_sha256"]))
    assert load_results(str(legacy)).column("decision_sha256").to_pylist() == [None] * 4
    resumed = run_batch(paths, str(legacy), model_dir=str(model), workers=1, batch_size=4)
    assert (resumed.scored, resumed.skipped, resumed.other_rule) == (4, 0, 4)
    assert {r["decision_sha256"] for r in _rows(legacy).values()} == {new.decision_fingerprint}


def test_done_hashes_per_model_newest_row_and_retry_errors(tmp_path: Path):
    pytest.importorskip("pyarrow")
    import datetime as dt

    import pyarrow as pa

    from deephealth.batch import PartWriter, done_hashes, load_results, result_schema

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

    def row(src, sha, model, ok=True, minutes=0, status="accept"):
        return {"source": src, "ok": ok, "label": "normal" if ok else None, "label_index": 0 if ok else None,
                "suitability_status": status, "suitability_reasons": [], "warnings": [],
                "error": None if ok else f"{src}: broken", "model_sha256": model, "decision_sha256": "R",
                "content_sha256": sha, "scored_at": t0 + dt.timedelta(minutes=minutes)}

    w = PartWriter(str(tmp_path / "res"), "run1")
    w.write(pa.Table.from_pylist([row("/a", "h1", "A"), row("/b", "h2", "A", ok=False, status=None),
                                  row("/c", "h3", "A", ok=False, status="refuse")], schema=result_schema()))
    w.write(pa.Table.from_pylist([row("/a", "h1new", "A", minutes=5), row("/a", "h1", "B", minutes=9)],
                                 schema=result_schema()))
    assert done_hashes(str(tmp_path / "res"), "A", "R") == {"/a": "h1new", "/b": "h2", "/c": "h3"}
    assert done_hashes(str(tmp_path / "res"), "A", "R", retry_errors=True) == {"/a": "h1new", "/c": "h3"}
    assert done_hashes(str(tmp_path / "res"), "B", "R") == {"/a": "h1"}
    # A run of model A skips /a (done for A), so its results hold A's newest row of /a, not B's newer one.
    run_a = load_results(str(tmp_path / "res"), model_sha256="A", decision_sha256="R")
    assert {r["source"]: (r["model_sha256"], r["content_sha256"]) for r in run_a.to_pylist()} == {
        "/a": ("A", "h1new"), "/b": ("A", "h2"), "/c": ("A", "h3")}
    latest = load_results(str(tmp_path / "res"))  # the folder's newest row per source, whichever model (warned)
    assert dict(zip(latest.column("source").to_pylist(), latest.column("model_sha256").to_pylist())) == {
        "/a": "B", "/b": "A", "/c": "A"}
    assert load_results(str(tmp_path / "res"), latest=False).num_rows == 5
    assert not list((tmp_path / "res").glob(".*"))  # no temporary file left


def test_decision_fingerprint_follows_temperature_operating_point_and_gate_only(tmp_path: Path) -> None:
    from deephealth.artifact import ModelArtifact

    bundled = ROOT / "src" / "deephealth" / "models" / "deephealth-cxr3"
    base = ModelArtifact.load(bundled, verify=False)
    meta = json.loads((bundled / "metadata.json").read_text())
    assert base.operating_point["review_band"]  # the bundled model has a review band
    gate = {"sha256": meta["gate"]["sha256"], "thresholds": meta["gate"]["thresholds"]}
    canonical = json.dumps({"temperature": meta["temperature"], "operating_point": meta["operating_point"],
                            "gate": gate}, sort_keys=True, separators=(",", ":"))
    assert base.decision_fingerprint == hashlib.sha256(canonical.encode()).hexdigest()

    def variant(name: str, edit) -> str:
        d = tmp_path / name
        d.mkdir()
        (d / "model.onnx").symlink_to(bundled / "model.onnx")
        m = json.loads(json.dumps(meta))
        edit(m)
        (d / "metadata.json").write_text(json.dumps(m, indent=4))  # other formatting, same content
        return ModelArtifact.load(d, verify=False).decision_fingerprint

    assert variant("same", lambda m: m.update(summary="re-described", version="9.9.9")) == base.decision_fingerprint
    changed = {
        variant("threshold", lambda m: m["operating_point"].update(threshold=0.5)),
        variant("band", lambda m: m["operating_point"]["review_band"].update(pneumonia_logit_margin=0.5)),
        variant("no_band", lambda m: m["operating_point"].pop("review_band")),
        variant("temperature", lambda m: m.update(temperature=1.0)),
        variant("argmax", lambda m: m.pop("operating_point")),
        variant("gate_threshold", lambda m: m["gate"]["thresholds"].update(p_frontal_refuse=0.5)),
        variant("no_gate", lambda m: m.pop("gate")),
    }
    assert len(changed) == 7 and base.decision_fingerprint not in changed


def test_resume_plan_needs_the_same_decision_rule_and_reads_older_parts(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import datetime as dt

    import pyarrow as pa

    from deephealth.batch import PartWriter, load_results, result_schema, resume_plan

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    new = result_schema()
    older = pa.schema([f for f in new if f.name not in ("review", "decision_sha256")])

    def row(src, minutes, model="A", **extra):
        return {"source": src, "ok": True, "label": "normal", "label_index": 0, "suitability_status": "accept",
                "suitability_reasons": [], "warnings": [], "model_sha256": model, "content_sha256": "h" + src,
                "scored_at": t0 + dt.timedelta(minutes=minutes), **extra}

    out = str(tmp_path / "res")
    w = PartWriter(out, "run1")
    w.write(pa.Table.from_pylist([row("/old", 0), row("/other", 0, model="B")], schema=older))  # before the column
    w.write(pa.Table.from_pylist([row("/x", 1, decision_sha256="X"), row("/y", 1, decision_sha256="Y"),
                                  row("/back", 1, decision_sha256="X"), row("/back", 2, decision_sha256="Y")],
                                 schema=new))
    plan = resume_plan(out, "A", "X")
    assert plan.done == {"/x": "h/x"}
    assert plan.other_rule == {"/old", "/y", "/back"}  # null rule; another rule; X superseded by a newer Y row
    assert plan.other_model == {"/other"}
    assert resume_plan(out, "A", "Y").done == {"/y": "h/y", "/back": "h/back"}
    assert resume_plan(out, "B", "X").other_model == {"/old", "/x", "/y", "/back"}
    rows = {r["source"]: r for r in load_results(out).to_pylist()}
    assert rows["/old"]["decision_sha256"] is None and rows["/back"]["decision_sha256"] == "Y"


def test_flat_record_has_a_review_column_from_the_decision() -> None:
    from deephealth.results import FLAT_FIELDS, flat_record

    def rec(**decision):
        return {"source": "/a.jpeg", "ok": True, "label": "viral", "label_index": 2,
                "probabilities": {"normal": 0.09, "bacterial": 0.02, "viral": 0.89},
                "decision": {"rule": "r", "pneumonia_probability": 0.91, "threshold": 0.883, **decision}}

    reason = "borderline: P(pneumonia) 0.91 is within the review band ..."
    flagged = flat_record(rec(review=True, review_reason=reason))
    assert list(flagged) == list(FLAT_FIELDS) and FLAT_FIELDS.index("review") == FLAT_FIELDS.index("decision") + 1
    assert flagged["review"] is True and json.loads(flagged["decision"])["review_reason"] == reason
    assert flat_record(rec(review=False, review_reason=None))["review"] is False
    assert flat_record(rec())["review"] is False  # a decision made before the review band existed
    assert flat_record({"source": "/b.jpeg", "ok": False, "error": "/b.jpeg: broken"})["review"] is None


def test_a_part_written_before_the_review_column_reads_as_null(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import datetime as dt

    import pyarrow as pa

    from deephealth.batch import PartWriter, load_results, result_schema

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    new = result_schema()
    old = pa.schema([f for f in new if f.name != "review"])

    def row(src, minutes, **extra):
        return {"source": src, "ok": True, "label": "normal", "label_index": 0, "suitability_reasons": [],
                "warnings": [], "model_sha256": "A", "content_sha256": "h", "scored_at": t0 + dt.timedelta(minutes=minutes),
                **extra}

    w = PartWriter(str(tmp_path / "res"), "run1")
    w.write(pa.Table.from_pylist([row("/old", 0), row("/both", 0)], schema=old))
    w.write(pa.Table.from_pylist([row("/new", 1, review=True), row("/both", 2, review=False)], schema=new))
    rows = {r["source"]: r for r in load_results(str(tmp_path / "res")).to_pylist()}
    assert {s: r["review"] for s, r in rows.items()} == {"/old": None, "/new": True, "/both": False}
    assert load_results(str(tmp_path / "res"), latest=False, columns=["source", "review"]).column(
        "review").to_pylist() == [None, None, True, False]
    assert load_results(str(tmp_path / "res")).schema == new


def test_summary_counts_labels_gate_outcomes_and_errors() -> None:
    import pyarrow as pa

    from deephealth.batch import BatchSummary

    s = BatchSummary()
    s.add(pa.table({"ok": [True, True, False, False], "label": ["viral", "normal", None, None],
                    "suitability_status": ["accept", "warn", "refuse", None],
                    "error": [None, None, "b.png: refused", "c.jpg: truncated or corrupt JPEG file"]}))
    assert s.scored == 4 and s.errors == 2
    assert dict(s.labels) == {"viral": 1, "normal": 1}
    assert dict(s.gate) == {"accept": 1, "warn": 1, "refuse": 1, "not read": 1}
    assert s.error_messages == ["b.png: refused", "c.jpg: truncated or corrupt JPEG file"]
    assert s.review == 0  # a table without the column (written before it existed)
    s.add(pa.table({"ok": [True, True, False], "label": ["viral", "bacterial", None], "review": [True, False, None],
                    "suitability_status": ["accept", "accept", None], "error": [None, None, "d.png: broken"]}))
    assert s.review == 1 and s.scored == 7 and dict(s.labels) == {"viral": 2, "normal": 1, "bacterial": 1}


def test_summary_throughput_counts_scored_inputs_only() -> None:
    """A resumed run that skips 90 stored inputs and scores 10 in 2 s did 5 images/s, not 50."""
    from deephealth.batch import BatchSummary

    assert BatchSummary(scored=10, skipped=90, seconds=2.0).images_per_second == 5.0
    assert BatchSummary(scored=0, skipped=90, seconds=1.5).images_per_second == 0.0
    assert BatchSummary(scored=3, seconds=0.0).images_per_second == 0.0


def test_missing_ray_is_said_first_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    # A web-only install: `import ray` fails. Nothing is collected or announced before the error.
    (tmp_path / "a.jpeg").write_bytes(b"not read")
    for name in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, name, None)
    rc = main(["batch", str(tmp_path / "a.jpeg"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [
        "error: deephealth batch needs Ray Data: pip install 'deephealth[scale]' "
        "(import of ray halted; None in sys.modules)"
    ]
    assert not (tmp_path / "out").exists()


def test_unreachable_cluster_address_is_one_line_at_once(films, tmp_path, capsys) -> None:
    """--address where nothing listens: a one-line error in seconds (ray.init alone retries for minutes)."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["batch", str(films[0]), "--out", str(tmp_path / "out"), "--address", f"127.0.0.1:{port}",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: cannot connect to the Ray cluster at 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port} " \
           "(Connection refused)" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.parquet"))



def test_results_of_a_run_are_its_model_and_rule_after_switching_models(tmp_path: Path, caplog) -> None:
    """Model A, then B, then A again over the same archive: A's third run skips every film (A already
    scored them), so its results are A's rows, not B's newer ones; the folder-wide newest row per
    source (B's here) comes with a warning that the folder mixes models."""
    pytest.importorskip("pyarrow")
    import datetime as dt
    import logging

    import pyarrow as pa

    from deephealth.batch import BatchSummary, PartWriter, load_results, result_schema, resume_plan

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

    def row(src, minutes, model, rule, label):
        return {"source": src, "ok": True, "label": label, "label_index": CLASS_NAMES.index(label),
                "suitability_status": "accept", "suitability_reasons": [], "warnings": [], "model_sha256": model,
                "decision_sha256": rule, "content_sha256": "h" + src, "scored_at": t0 + dt.timedelta(minutes=minutes)}

    out = str(tmp_path / "res")
    PartWriter(out, "1-A").write(pa.Table.from_pylist(
        [row("/a", 0, "A", "RA", "normal"), row("/b", 0, "A", "RA", "viral"),
         row("/c", 0, "A", "RA-old", "normal"), row("/c", 1, "A", "RA", "bacterial")], schema=result_schema()))
    PartWriter(out, "2-B").write(pa.Table.from_pylist(
        [row("/a", 5, "B", "RB", "bacterial"), row("/b", 5, "B", "RB", "normal"), row("/c", 5, "B", "RB", "viral")],
        schema=result_schema()))
    # The third run (model A, rule RA) scores nothing: every film is done for A with rule RA.
    plan = resume_plan(out, "A", "RA")
    assert plan.done == {"/a": "h/a", "/b": "h/b", "/c": "h/c"}
    assert plan.newer_elsewhere == {"/a", "/b", "/c"}  # B's rows are newer than A's for each of them

    run_a = load_results(out, model_sha256="A", decision_sha256="RA")
    assert {r["source"]: (r["model_sha256"], r["decision_sha256"], r["label"]) for r in run_a.to_pylist()} == {
        "/a": ("A", "RA", "normal"), "/b": ("A", "RA", "viral"), "/c": ("A", "RA", "bacterial")}
    run_b = load_results(out, model_sha256="B", decision_sha256="RB")
    assert {r["source"]: r["label"] for r in run_b.to_pylist()} == {"/a": "bacterial", "/b": "normal", "/c": "viral"}
    # One model, any rule: its newest row per source.
    assert {r["source"]: r["decision_sha256"] for r in load_results(out, model_sha256="A").to_pylist()} == {
        "/a": "RA", "/b": "RA", "/c": "RA"}
    assert load_results(out, model_sha256="A", decision_sha256="RA-old", latest=False).num_rows == 1
    assert load_results(out, model_sha256="nobody").num_rows == 0
    assert load_results(out, model_sha256="A", columns=["source", "label"]).column_names == ["source", "label"]

    # The summary of a run names its model and rule, so its results can be read back.
    summary = BatchSummary(model_sha256="A", decision_sha256="RA")
    assert summary.results(out).equals(run_a)

    # Without a model: the newest row per source over all models, with a warning naming the mix.
    with caplog.at_level(logging.WARNING, logger="deephealth.batch"):
        mixed = load_results(out)
    assert {r["source"]: r["model_sha256"] for r in mixed.to_pylist()} == {"/a": "B", "/b": "B", "/c": "B"}
    assert any("2 models" in m and "model_sha256" in m for m in caplog.messages), caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deephealth.batch"):
        load_results(out, model_sha256="A", decision_sha256="RA")
    assert not caplog.messages


def test_cli_summary_names_the_run_results_when_another_model_is_newer(tmp_path, monkeypatch, capsys) -> None:
    """A run that skips films whose newest row is another model's says how to read its own results."""
    import deephealth.batch as batch

    (tmp_path / "a.jpeg").write_bytes(b"not read")
    monkeypatch.setattr(batch, "require_ray", lambda: None)
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: batch.BatchSummary(
        total=1, skipped=1, newer_elsewhere=1, model_sha256="a" * 64, decision_sha256="d" * 64))
    out = tmp_path / "res"
    rc = main(["batch", str(tmp_path / "a.jpeg"), "--out", str(out), "--no-progress"])
    o = capsys.readouterr().out
    assert rc == 0
    assert (f"1 input(s) skipped by this run have a newer row in {out} made by another model or decision rule; "
            f"this run's results are its own model's rows: deephealth.batch.load_results({str(out)!r}, "
            f"model_sha256='{'a' * 64}', decision_sha256='{'d' * 64}')") in o


def test_review_reason_is_a_column_next_to_review_and_older_parts_read_as_null(tmp_path: Path) -> None:
    """``review_reason`` (the decision's words for a flagged film) is a column after ``review``; null
    for a film not flagged and for one not classified; a part written before the column reads as null."""
    pytest.importorskip("pyarrow")
    import datetime as dt

    import pyarrow as pa

    from deephealth.batch import LATER_COLUMNS, PartWriter, load_results, result_schema
    from deephealth.results import FLAT_FIELDS, flat_record

    assert FLAT_FIELDS.index("review_reason") == FLAT_FIELDS.index("review") + 1
    assert result_schema().field("review_reason").type == pa.string() and "review_reason" in LATER_COLUMNS
    reason = "borderline: bacterial vs viral is uncertain (bacterial share 0.480 of P(pneumonia), ...)"
    rec = {"source": "/a.jpeg", "ok": True, "label": "bacterial", "label_index": 1,
           "probabilities": {"normal": 0.05, "bacterial": 0.48, "viral": 0.47},
           "decision": {"rule": "r", "review": True, "review_kind": "type", "review_reason": reason}}
    assert flat_record(rec)["review_reason"] == reason
    calm = {**rec, "decision": {"rule": "r", "review": False, "review_kind": None, "review_reason": None}}
    assert flat_record(calm)["review_reason"] is None and flat_record(calm)["review"] is False
    assert flat_record({"source": "/b.jpeg", "ok": False, "error": "/b.jpeg: broken"})["review_reason"] is None

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    new = result_schema()
    before = pa.schema([f for f in new if f.name != "review_reason"])  # review but no review_reason yet

    def row(src, minutes, **extra):
        return {"source": src, "ok": True, "label": "bacterial", "label_index": 1, "suitability_reasons": [],
                "warnings": [], "model_sha256": "A", "decision_sha256": "R", "content_sha256": "h",
                "scored_at": t0 + dt.timedelta(minutes=minutes), **extra}

    out = str(tmp_path / "res")
    PartWriter(out, "run1").write(pa.Table.from_pylist([row("/old", 0, review=True), row("/both", 0, review=True)],
                                                       schema=before))
    PartWriter(out, "run2").write(pa.Table.from_pylist(
        [row("/new", 1, review=True, review_reason=reason), row("/both", 2, review=False)], schema=new))
    rows = {r["source"]: r for r in load_results(out).to_pylist()}
    assert {s: (r["review"], r["review_reason"]) for s, r in rows.items()} == {
        "/old": (True, None), "/new": (True, reason), "/both": (False, None)}
    assert load_results(out, latest=False, columns=["source", "review_reason"]).column(
        "review_reason").to_pylist() == [None, None, reason, None]
    assert load_results(out).schema == new


def test_review_reason_of_a_part_written_without_the_column_comes_from_the_decision_json(tmp_path: Path) -> None:
    """Rows written after ``decision_sha256`` but before the ``review_reason`` column: a null
    ``review_reason`` is filled from the row's ``decision`` JSON when that has one; a film not flagged,
    a row without decision JSON, or decision JSON without the key stays null."""
    pytest.importorskip("pyarrow")
    import datetime as dt
    import json

    import pyarrow as pa

    from deephealth.batch import PartWriter, load_results, result_schema

    reason = "borderline: P(pneumonia) 0.52 is within 0.05 of the threshold 0.50"
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    before = pa.schema([f for f in result_schema() if f.name != "review_reason"])

    def row(src, review, decision):
        return {"source": src, "ok": True, "label": "bacterial", "label_index": 1, "suitability_reasons": [],
                "warnings": [], "model_sha256": "A", "decision_sha256": "R", "content_sha256": "h",
                "scored_at": t0, "review": review, "decision": None if decision is None else json.dumps(decision)}

    out = str(tmp_path / "res")
    PartWriter(out, "run1").write(pa.Table.from_pylist([
        row("/flagged", True, {"rule": "r", "review": True, "review_kind": "threshold", "review_reason": reason}),
        row("/calm", False, {"rule": "r", "review": False, "review_kind": None, "review_reason": None}),
        row("/no-key", True, {"rule": "r", "review": True}),
        row("/no-json", None, None),
    ], schema=before))
    rows = {r["source"]: r["review_reason"] for r in load_results(out).to_pylist()}
    assert rows == {"/flagged": reason, "/calm": None, "/no-key": None, "/no-json": None}
    # Asked for without the decision column, it is filled all the same (and decision is not returned).
    only = load_results(out, latest=False, columns=["source", "review_reason"])
    assert only.column_names == ["source", "review_reason"]
    assert dict(zip(*only.to_pydict().values())) == rows


@pytest.mark.slow
def test_models_a_then_b_then_a_the_third_run_reports_a_results(ray_local, films, tiny_model_dir, tmp_path, capsys):
    """The archive scored by the tiny model (A), the bundled model (B), then A again: the third run skips
    every film, says that newer rows are B's, and its results are A's first rows, not B's."""
    from deephealth.artifact import ModelArtifact
    from deephealth.batch import load_results, run_batch

    bundled = tmp_path / "bundled"
    shutil.copytree(ROOT / "src" / "deephealth" / "models" / "deephealth-cxr3", bundled,
                    ignore=shutil.ignore_patterns("weights.pt", "report"))
    paths = [str(f) for f in films[:1] + films[-3:-1]]  # 1 normal, 2 pneumonia films
    out = tmp_path / "results"
    first = run_batch(paths, str(out), model_dir=str(tiny_model_dir), workers=1, batch_size=4)
    a_rows = _rows(out)
    b = run_batch(paths, str(out), model_dir=str(bundled), workers=1, batch_size=4)
    assert (b.scored, b.other_model, b.newer_elsewhere) == (3, 3, 0)
    third = run_batch(paths, str(out), model_dir=str(tiny_model_dir), workers=1, batch_size=4)
    assert (third.scored, third.skipped, third.newer_elsewhere) == (0, 3, 3)
    a, bm = ModelArtifact.load(tiny_model_dir), ModelArtifact.load(bundled)
    assert (first.model_sha256, third.model_sha256, b.model_sha256) == (a.sha256, a.sha256, bm.sha256)
    assert third.decision_sha256 == a.decision_fingerprint
    mine = {r["source"]: r for r in third.results(str(out)).to_pylist()}
    assert mine == a_rows  # A's rows, unchanged, not B's newer ones
    assert {r["model_sha256"] for r in _rows(out).values()} == {bm.sha256}  # the folder's newest rows are B's
    assert load_results(str(out), latest=False).num_rows == 6

    rc = main(["batch", *paths, "--out", str(out), "--model", str(tiny_model_dir), "--workers", "1", "--no-progress"])
    o = capsys.readouterr().out
    assert rc == 0 and "3 input(s): 0 scored by this run, 3 already in" in o
    assert f"3 input(s) skipped by this run have a newer row in {out} made by another model or decision rule" in o
    assert f"model_sha256={a.sha256!r}, decision_sha256={a.decision_fingerprint!r})" in o
