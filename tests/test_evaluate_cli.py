"""``deephealth evaluate`` end to end: a tiny exported model on real dataset images, and the released model."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deephealth.cli import main
from deephealth.evaluation.metrics import compute_metrics
from deephealth.evaluation.report import load_metrics, reproducible_part
from deephealth.paths import default_model_dir, portable_path

from _golden import assert_close, compare_predictions

RELEASED_REPORT = default_model_dir() / "report" / "metrics.json"

# 20 images of the official test split: 7 normal (7 patients), 7 bacterial (2 patients), 6 viral (5 patients).
NORMAL = ["IM-0001-0001", "IM-0003-0001", "IM-0005-0001", "IM-0006-0001", "IM-0007-0001", "IM-0009-0001",
          "IM-0011-0001-0001"]
BACTERIAL = ["person100_bacteria_475", "person100_bacteria_477", "person100_bacteria_478",
             "person100_bacteria_479", "person101_bacteria_483", "person101_bacteria_484",
             "person101_bacteria_485"]
VIRAL = ["person10_virus_35", "person11_virus_38", "person14_virus_44", "person15_virus_46",
         "person1612_virus_2797", "person1612_virus_2798"]


@pytest.fixture(scope="module")
def small_dataset(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kermany-layout folder of symlinks to 20 real test images (the dataset is never copied)."""
    root = tmp_path_factory.mktemp("small_ds")
    for folder, stems in (("NORMAL", NORMAL), ("PNEUMONIA", BACTERIAL + VIRAL)):
        (root / "test" / folder).mkdir(parents=True)
        for stem in stems:
            src = dataset_root / "test" / folder / f"{stem}.jpeg"
            assert src.is_file(), src
            (root / "test" / folder / src.name).symlink_to(src)
    return root


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["evaluate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.needs_data
def test_evaluate_folder_end_to_end(tiny_model_dir, small_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    rc, stdout, stderr = _run(capsys, "--model", str(tiny_model_dir), "--data", str(small_dataset),
                              "--out", str(out), "--no-progress")
    assert rc == 0, stderr
    assert "tiny-test-model 0.0.0-test on small_ds" in stdout and "3-class accuracy" in stdout
    for name in ("metrics.json", "report.md", "predictions.csv", "misclassified.csv", "confusion_matrix.png",
                 "roc_one_vs_rest.png", "roc_binary.png", "reliability.png"):
        assert (out / name).is_file(), name
    report = load_metrics(out / "metrics.json")
    assert report["model"]["name"] == "tiny-test-model" and report["model"]["temperature"] == 1.5
    data = report["data"]
    assert data["split"] == "test" and data["kind"] == "kermany-folder"
    assert data["support"] == {"normal": 7, "bacterial": 7, "viral": 6}
    assert data["n_patients"] == 7 + 2 + 5 and data["n_failed"] == 0
    assert report["confidence_intervals"]["n_resamples"] == 1000

    # What is scored is what the Predictor gives a user for each file, one at a time.
    from deephealth.inference import Predictor

    pred = Predictor(tiny_model_dir)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 20
    y, probs = [], []
    for row in rows:
        p = pred.predict(small_dataset / row["file"])
        got = [float(row[f"p_{c}"]) for c in ("normal", "bacterial", "viral")]
        assert got == pytest.approx(p.probs.tolist(), abs=2e-6), row["file"]
        y.append(["normal", "bacterial", "viral"].index(row["true"]))
        probs.append(p.probs)
    expected = json.loads(json.dumps(compute_metrics(np.array(y), np.stack(probs))))
    m = report["metrics"]
    assert m["three_class"]["confusion_matrix"] == expected["three_class"]["confusion_matrix"]
    assert m["three_class"]["accuracy"] == pytest.approx(expected["three_class"]["accuracy"], abs=1e-6)
    assert m["calibration"]["ece"] == pytest.approx(expected["calibration"]["ece"], abs=1e-5)
    assert m["binary"]["bacterial_vs_viral"]["n"] == 13

    md = (out / "report.md").read_text()
    # the data, model and output folders as the export records paths: no absolute path of this machine
    assert f"--data {shlex.quote(portable_path(small_dataset))}" in md and report["model"]["sha256"] in md
    assert f"--model {shlex.quote(portable_path(tiny_model_dir))}" in report["run"]["command_resolved"]
    assert str(small_dataset) not in md and str(tiny_model_dir) not in md and str(out) not in md

    # A rerun reproduces everything except the run section, byte for byte.
    out2 = tmp_path / "again"
    rc, _, _ = _run(capsys, "--model", str(tiny_model_dir), "--data", str(small_dataset), "--out", str(out2),
                    "--no-progress")
    assert rc == 0
    again = load_metrics(out2 / "metrics.json")
    assert json.dumps(reproducible_part(again)) == json.dumps(reproducible_part(report))


@pytest.mark.needs_data
def test_evaluate_stability_adds_the_flip_table_and_plot(tiny_model_dir, small_dataset, tmp_path, capsys):
    from deephealth.evaluation import stability as st
    from deephealth.inference import Predictor

    out = tmp_path / "report"
    rc, stdout, stderr = _run(capsys, "--model", str(tiny_model_dir), "--data", str(small_dataset),
                              "--out", str(out), "--no-progress", "--bootstrap", "200", "--stability")
    assert rc == 0, stderr
    assert "stability under 15 benign perturbations (20 images)" in stdout and "jpeg_q90" in stdout
    assert (out / "stability.png").is_file()
    report = load_metrics(out / "metrics.json")
    stab = report["stability"]
    assert list(stab["perturbations"]) == list(st.PERTURBATION_NAMES)
    assert stab["n_images"] == 20 and stab["n_failed"] == 0 and stab["bootstrap"]["n_resamples"] == 200
    assert "--stability" in report["run"]["command_resolved"]
    # recount one perturbation by hand, through the Predictor, file by file
    pred = Predictor(tiny_model_dir)
    files = sorted(small_dataset.glob("test/*/*.jpeg"))
    flips, dps = 0, []
    for f in files:
        base = pred.predict(f, allow_unsuitable=True)
        q = st.to_uint8(pred.load(f)[0])
        moved = pred.predict(st.perturbation("shift_right")(q) / 255.0, allow_unsuitable=True)
        flips += moved.label != base.label
        dps.append(abs(moved.probs[0] - base.probs[0]))
    got = stab["perturbations"]["shift_right"]
    assert got["n_flips"] == flips and got["flip_rate"] == pytest.approx(flips / 20)
    assert got["abs_dp_max"] == pytest.approx(max(dps), abs=1e-6)
    assert got["abs_dp_p50"] == pytest.approx(float(np.median(dps)), abs=1e-6)
    md = (out / "report.md").read_text()
    assert "## Stability under benign perturbations (20 images)" in md
    assert "| `rotate_+3` | rotated 3° counter-clockwise |" in md and "](stability.png)" in md
    assert "Films whose label changes under at least one perturbation:" in md


@pytest.mark.needs_data
def test_evaluate_csv_matches_folder_and_lists_unreadable_files(tiny_model_dir, small_dataset, tmp_path, capsys):
    broken = tmp_path / "person999_bacteria_1.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    table = tmp_path / "images.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        for folder, stems, label in (("NORMAL", NORMAL, "normal"), ("PNEUMONIA", BACTERIAL, "1"),
                                     ("PNEUMONIA", VIRAL, "viral")):
            for stem in stems:
                pid = stem.split("_")[0] if "_" in stem else "-".join(stem.split("-")[:2])
                w.writerow([small_dataset / "test" / folder / f"{stem}.jpeg", label, pid])
        w.writerow([broken.name, "bacterial", "person999"])  # relative to the CSV's folder
    out = tmp_path / "csv_report"
    rc, _, stderr = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table), "--out", str(out),
                         "--no-progress")
    assert rc == 1  # report written, one file could not be read
    assert "not scored:" in stderr and "person999_bacteria_1.jpeg" in stderr
    report = load_metrics(out / "metrics.json")
    assert report["data"]["kind"] == "csv" and report["data"]["n_scored"] == 20
    assert report["data"]["n_failed"] == 1 and report["data"]["n_patients"] == 14
    assert [f["file"] for f in report["failures"]] == ["person999_bacteria_1.jpeg"]
    assert "person999_bacteria_1.jpeg" in report["failures"][0]["error"]
    assert "could not be read (1)" in (out / "report.md").read_text()

    folder_out = tmp_path / "folder_report"
    rc, _, _ = _run(capsys, "--model", str(tiny_model_dir), "--data", str(small_dataset), "--out",
                    str(folder_out), "--no-progress")
    assert rc == 0
    folder = load_metrics(folder_out / "metrics.json")
    assert report["metrics"] == folder["metrics"]
    assert report["confidence_intervals"] == folder["confidence_intervals"]


def test_evaluate_refuses_bad_model_and_data(tiny_model_dir, tmp_path, capsys):
    rc, _, err = _run(capsys, "--model", str(tmp_path / "nope"), "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert rc == 2 and "model folder not found" in err and str(tmp_path / "nope") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(tmp_path / "missing"))
    assert rc == 2 and "dataset folder not found" in err and str(tmp_path / "missing") in err

    empty = tmp_path / "empty"
    (empty / "test" / "NORMAL").mkdir(parents=True)
    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(empty))
    assert rc == 2 and "no labelled images for split 'test'" in err

    rows = tmp_path / "rows.csv"  # a CSV whose only row has a label the model does not know
    rows.write_text("path,label\nx.png,pneumothorax\n")
    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(rows))
    assert rc == 2 and f"no labelled images in {rows}: it needs a row per film with its path and label" in err
    assert "split" not in err.splitlines()[-1]

    table = tmp_path / "mixed.csv"
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    table.write_text(f"path,label,split\n{img},0,train\n{img},1,test\n")
    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table))
    assert rc == 2 and "holds the splits test, train; choose one with --split" in err

    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table), "--bootstrap", "0")
    assert rc == 2 and "--bootstrap must be >= 1" in err


def test_evaluation_never_imports_torch():
    code = (
        "import sys, deephealth.evaluation, deephealth.evaluation.plots, deephealth.cli.evaluate, "
        "deephealth.inference; assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.skipif(not RELEASED_REPORT.is_file(), reason=f"no committed released-model report at {RELEASED_REPORT}")
def test_released_model_reproduces_committed_metrics(dataset_root, tmp_path, capsys):
    committed = load_metrics(RELEASED_REPORT)
    # The same comparison rows as the committed report (README: "Reproduce it").
    repo = Path(__file__).resolve().parents[1]
    # The committed report was made with --stability (issue 16): reproduce that section too.
    extra = ["--stability"] if committed.get("stability") else []
    extra += ["--faithfulness"] if committed.get("faithfulness") else []  # the deletion curves (0.3.0)
    rc, _, err = _run(capsys, "--model", str(default_model_dir()), "--data", str(dataset_root), "--split", "test",
                      "--out", str(tmp_path / "report"), "--no-progress", *extra,
                      "--compare", f"0.2.0 (released 2026-11-30)={repo / 'docs/evaluations/0.2.0/metrics.json'}",
                      "--compare", "prototype method (frozen ImageNet Lite0 + last layer)="
                      f"{repo / 'docs/evaluations/prototype-method/metrics.json'}",
                      "--compare-adapted", "0.2.0 site-adapted (AdaBN on the 624 unlabelled test films)="
                      f"{repo / 'docs/evaluations/site-adapted/metrics.json'}")
    assert rc == 0, err
    fresh = load_metrics(tmp_path / "report" / "metrics.json")
    assert fresh["data"]["n_scored"] == 624
    # Machines of the same kind differ in the last digit (AVX-512 vs AVX2 kernels): probabilities
    # within 1e-4, labels and counts exact except at a near tie (reported), see tests/_golden.py.
    op = committed["model"].get("operating_point") or {}
    diff = compare_predictions(_csv_rows(RELEASED_REPORT.parent / "predictions.csv"),
                               _csv_rows(tmp_path / "report" / "predictions.csv"), op.get("threshold", 0.5))
    golden, now = reproducible_part(committed), reproducible_part(fresh)
    for section in golden:
        if section not in now:  # a section dropped since that report was made
            continue
        ties = len(diff.near_ties)
        if section in ("stability", "faithfulness"):
            # 15 x 624 perturbed films (and the deletion steps) are scored but not written out, so their near ties cannot be
            # found as above: allow one per perturbation's counts (another CPU's last digit, e.g. AVX2).
            ties += 1
        assert_close(golden[section], now[section], ties=ties, path=section)


@pytest.mark.needs_data
def test_evaluate_lists_a_csv_row_whose_file_is_missing_in_the_report(tiny_model_dir, small_dataset, tmp_path,
                                                                       capsys):
    # A listed file that does not exist never becomes a record: it must still be in the report, and
    # the exit status says something was left out (fresh-user check: it used to vanish from the report).
    table = tmp_path / "mixed.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerow([small_dataset / "test" / "NORMAL" / f"{NORMAL[0]}.jpeg", "normal"])
        w.writerow([small_dataset / "test" / "PNEUMONIA" / f"{BACTERIAL[0]}.jpeg", "bacterial"])
        w.writerow([tmp_path / "gone.jpeg", "viral"])
    out = tmp_path / "report"
    rc, stdout, _ = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table), "--out", str(out),
                         "--no-progress", "--bootstrap", "20")
    assert rc == 1
    assert "2 images" in stdout and "1 entries of the data skipped (listed in the report)" in stdout
    report = load_metrics(out / "metrics.json")
    assert report["data"]["n_scored"] == 2 and len(report["data"]["skipped"]) == 1
    assert "gone.jpeg" in report["data"]["skipped"][0] and "not found" in report["data"]["skipped"][0]
    md = (out / "report.md").read_text()
    assert "## Entries of the data that were skipped (1)" in md and "gone.jpeg" in md


@pytest.mark.needs_data
def test_evaluate_deduplicates_the_known_test_pair_and_adds_compare_rows(tiny_model_dir, dataset_root, tmp_path,
                                                                         capsys):
    # A CSV named like a sibling folder: its relative paths are found in that folder (as the shared CSV's).
    folder = tmp_path / "mini"
    stems = [("NORMAL", s) for s in ("NORMAL2-IM-0095-0001", "NORMAL2-IM-0096-0001", "IM-0001-0001", "IM-0003-0001")]
    stems += [("PNEUMONIA", s) for s in ("person100_bacteria_475", "person10_virus_35")]
    table = tmp_path / "mini.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "label", "patient_id", "path"])
        for cls, stem in stems:
            rel = f"test/{cls}/{stem}.jpeg"
            (folder / "test" / cls).mkdir(parents=True, exist_ok=True)
            (folder / rel).symlink_to(dataset_root / rel)
            label = "normal" if cls == "NORMAL" else ("viral" if "virus" in stem else "bacterial")
            w.writerow(["test", label, stem.rsplit("-", 1)[0] if cls == "NORMAL" else stem.split("_")[0], rel])
    first = tmp_path / "first"
    rc, stdout, stderr = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table), "--out", str(first),
                              "--no-progress", "--bootstrap", "200")
    assert rc == 0, stderr
    assert "deduplicated: 1 groups of byte-identical files counted once: 5 images, 5 bootstrap units" in stdout
    report = load_metrics(first / "metrics.json")
    assert report["data"]["n_scored"] == 6 and report["data"]["n_patients"] == 6
    dd = report["deduplicated"]
    assert dd["n_images"] == 5 and dd["n_patients"] == 5
    assert [Path(f).name for f in dd["groups"][0]["files"]] == ["NORMAL2-IM-0095-0001.jpeg",
                                                               "NORMAL2-IM-0096-0001.jpeg"]
    assert dd["groups"][0]["patient_ids"] == ["NORMAL2-IM-0095", "NORMAL2-IM-0096"]
    # identical files get identical predictions, so only the duplicate's weight changes
    keep = [r for r in csv.DictReader((first / "predictions.csv").open()) if "IM-0096" not in r["file"]]
    correct = sum(r["true"] == r["predicted"] for r in keep)
    assert dd["metrics"]["three_class"]["accuracy"] == pytest.approx(correct / 5, abs=1e-6)

    second = tmp_path / "second"
    rc, _, stderr = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table), "--out", str(second),
                         "--no-progress", "--bootstrap", "200", "--compare", f"prototype method={first / 'metrics.json'}",
                         "--compare-adapted", f"site-adapted (AdaBN)={first / 'metrics.json'}")
    assert rc == 0, stderr
    md = (second / "report.md").read_text()
    assert "| prototype method | all 6 (same images) |" in md
    assert "| site-adapted (AdaBN), deduplicated | 5 |" in md
    rows = [line for line in md.splitlines() if line.startswith(("| prototype method", "| site-adapted"))]
    assert [line.rsplit("|", 2)[1].strip() for line in rows] == ["no", "no", "**yes**", "**yes**"]
    assert [c["name"] for c in load_metrics(second / "metrics.json")["comparisons"]] == [
        "prototype method", "site-adapted (AdaBN)"]

    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table), "--compare", "no-equals-sign")
    assert rc == 2 and "--compare needs NAME=path/to/metrics.json" in err
    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table), "--compare", f"x={table}")
    assert rc == 2 and "is not JSON" in err


# --- no absolute path of the machine that ran an evaluation in its metrics.json -----------------

REPO = Path(__file__).resolve().parents[1]
# Every evaluation report committed to the repository (run from the checkout beside ../shared/data).
COMMITTED_REPORTS = sorted(str(p.parent.relative_to(REPO)) for top in ("docs", "src")
                           for p in (REPO / top).rglob("metrics.json"))


def _strings(obj, where="") -> list[tuple[str, str]]:
    """Every string value of a JSON document with its location, e.g. ``("run.data_root", "...")``."""
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(v, f"{where}.{k}" if where else k)]
    if isinstance(obj, list):
        return [s for i, v in enumerate(obj) for s in _strings(v, f"{where}[{i}]")]
    return [(where, obj)] if isinstance(obj, str) else []


def _absolute_paths(text: str) -> list[str]:
    """The tokens of a string (a command line, a message) that are absolute POSIX paths."""
    try:
        tokens = shlex.split(text)
    except ValueError:  # unbalanced quotes: not a command line
        tokens = text.split()
    parts = [p for t in tokens for p in t.replace("=", " ").replace(",", " ").replace("(", " ").split()]
    return [p for p in parts if p.startswith("/") and len(p) > 1]


def test_portable_argv_rewrites_path_options_only():
    from deephealth.cli.evaluate import portable_argv

    argv = ["evaluate", "--model", "/tmp/proto", "--data=/work/shared/data/chest_xray_224", "--split", "test",
            "--out", "src/x/report", "--seed", "/not-a-path-option", "--compare", "older=/tmp/eval/metrics.json",
            "--compare-adapted=adapted (AdaBN)=docs/evaluations/site-adapted/metrics.json", "--no-progress"]
    assert portable_argv(argv, base="/work/main") == [
        "evaluate", "--model", "<...>/tmp/proto", "--data=../shared/data/chest_xray_224", "--split", "test",
        "--out", "src/x/report", "--seed", "/not-a-path-option", "--compare", "older=<...>/eval/metrics.json",
        "--compare-adapted=adapted (AdaBN)=docs/evaluations/site-adapted/metrics.json", "--no-progress"]


@pytest.mark.needs_data
def test_evaluate_writes_no_absolute_path_and_reads_its_data_folder_back(tiny_model_dir, dataset_root, tmp_path,
                                                                          capsys, monkeypatch):
    from deephealth.evaluation.report import render_markdown, report_data_root

    # The dataset folder itself, scored on its official val folder (16 films; the test split is only
    # listed by the scan, not read). Symlinked subsets would not do: the scan resolves each file to
    # its target, outside the subset folder, whose name the report then cannot shorten.
    data = dataset_root
    # Run from a folder two levels below tmp_path, as the deephealth program: every folder is outside
    # the current directory, so any absolute path that leaks would be one of this machine's.
    (tmp_path / "work" / "checkout").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "checkout")
    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--split", "val", "--out", str(out),
            "--no-progress", "--bootstrap", "50"]
    monkeypatch.setattr(sys, "argv", ["deephealth", *argv])
    rc, _, err = _run(capsys, *argv[1:])
    assert rc == 0, err
    text = (out / "metrics.json").read_text()
    report = json.loads(text)
    for where, value in _strings(report):
        assert not value.startswith("/"), (where, value)
        assert not _absolute_paths(value), (where, value)
    for folder in (tmp_path, tiny_model_dir, dataset_root, Path(tmp_path).resolve(), dataset_root.resolve()):
        assert str(folder) not in text
    run = report["run"]
    recorded = "<...>/" + "/".join(dataset_root.resolve().parts[-2:])  # e.g. <...>/data/chest_xray_224
    assert run["data_root"] == recorded and run["data_path"] == "<...>/" + "/".join(dataset_root.parts[-2:])
    assert run["model_dir"] == portable_path(tiny_model_dir) and run["model_dir"].startswith("<...>/")
    assert run["command"] == shlex.join(["deephealth", "evaluate", "--model", run["model_dir"],
                                         "--data", run["data_path"], "--split", "val",
                                         "--out", f"<...>/{tmp_path.name}/report", "--no-progress",
                                         "--bootstrap", "50"])
    assert f"--split val --out '<...>/{tmp_path.name}/report' --bootstrap 50 --seed 0" in run["command_resolved"]
    val = sorted(p.relative_to(dataset_root).as_posix() for p in dataset_root.glob("val/*/*.jpeg"))
    assert report["data"]["n_scored"] == len(val) == 16
    assert [r["file"] for r in _csv_rows(out / "predictions.csv")] == val
    assert report["misclassified"] and all(m["file"] in val for m in report["misclassified"])

    # Read back from metrics.json alone: the recorded folder is found under the configured data root
    # (DEEPHEALTH_DATA_ROOT, or ../shared/data), and report.md re-renders from it unchanged.
    back = load_metrics(out / "metrics.json")
    assert report_data_root(back) == dataset_root.resolve()
    assert render_markdown(back) == (out / "report.md").read_text()
    monkeypatch.setenv("DEEPHEALTH_DATA_ROOT", str(tmp_path / "work" / "checkout"))
    with pytest.raises(FileNotFoundError, match=r"recorded as '<\.\.\.>/.*chest_xray_224' was not found.*"
                                                r"DEEPHEALTH_DATA_ROOT"):
        report_data_root(back)


def test_the_committed_reports_are_all_found():
    assert {"src/deephealth/models/deephealth-cxr3/report", "docs/evaluations/0.2.0",
            "docs/evaluations/prototype-method", "docs/evaluations/site-adapted"} <= set(COMMITTED_REPORTS)


@pytest.mark.parametrize("folder", COMMITTED_REPORTS)
def test_committed_metrics_hold_no_absolute_path(folder):
    text = (REPO / folder / "metrics.json").read_text()
    report = json.loads(text)
    leaks = [(where, value) for where, value in _strings(report)
             if value.startswith("/") or _absolute_paths(value) or "/work/" in value or "/home/" in value]
    assert leaks == []
    run = report["run"]
    assert run["data_root"] == run["data_path"] == "../shared/data/chest_xray_224"
    assert "--data ../shared/data/chest_xray_224 " in run["command_resolved"]
    # the spelled-out command in report.md is the recorded one
    md = (REPO / folder / "report.md").read_text()
    assert f"| Same, all options spelled out | `{run['command_resolved']}` |" in md
    assert f"| Command | `{run['command']}` |" in md


@pytest.mark.needs_data
@pytest.mark.parametrize("folder", COMMITTED_REPORTS)
def test_committed_metrics_data_folder_resolves_to_the_dataset(folder, dataset_root):
    from deephealth.evaluation.report import report_data_root, report_files

    report = load_metrics(REPO / folder / "metrics.json")
    # the files the report lists (file names only: existence, nothing is read) are in the resolved folder
    assert len(report_files(report)) > 10
    assert report_data_root(report) == dataset_root.resolve()


def test_released_report_md_re_renders_from_its_metrics_json():
    from deephealth.evaluation.report import render_markdown

    assert render_markdown(load_metrics(RELEASED_REPORT)) == (RELEASED_REPORT.parent / "report.md").read_text()


# --- which split is scored (model-val, the official val folder, the reserved test split) ---------------------------

BUNDLED_META = json.loads((default_model_dir() / "metadata.json").read_text())


@pytest.mark.needs_data
def test_model_val_scores_the_models_recorded_validation_films(dataset_root, tmp_path, capsys):
    """The bundled model on its own 502 validation films: the figures its metadata records at the operating point."""
    from deephealth.cli.evaluate import TEST_SPLIT_NOTE

    out = tmp_path / "mv"
    rc, stdout, stderr = _run(capsys, "--data", str(dataset_root), "--split", "model-val", "--out", str(out),
                              "--no-progress", "--bootstrap", "100")
    assert rc == 0, stderr
    assert TEST_SPLIT_NOTE not in stderr
    assert "[model-val: the model's validation split: its training run's 502 validation films" in stdout
    report = load_metrics(out / "metrics.json")
    data = report["data"]
    assert data["split"] == "model-val" and data["n_scored"] == 502 and data["n_patients"] == 285
    assert data["support"] == {"normal": 140, "bacterial": 234, "viral": 128}
    assert data["model_films"] == {"role": "validation", "n": 502}
    # evaluate's headline 3-class accuracy is at the shipped operating point, the same computation as the
    # training run's accuracy_at_operating_point on the same films (metrics.json rounds to 6 decimals: use counts)
    cm = np.array(report["metrics"]["three_class"]["confusion_matrix"])
    assert cm.sum() == 502 and np.trace(cm) == 422
    vm = BUNDLED_META["validation_metrics"]
    assert np.trace(cm) / 502 == pytest.approx(vm["accuracy_at_operating_point"], abs=1e-9)
    assert report["metrics"]["three_class"]["accuracy"] == round(vm["accuracy_at_operating_point"], 6)
    assert abs(report["metrics"]["three_class"]["accuracy"] - vm["accuracy"]) > 0.009  # not the arg-max figure
    op = BUNDLED_META["operating_point"]
    pn = cm[1:, 1:].sum() / cm[1:].sum(), cm[0, 0] / cm[0].sum()  # pneumonia called pneumonia, normal called normal
    assert pn[0] == pytest.approx(op["val_sensitivity"], abs=1e-9) and pn[1] == pytest.approx(op["val_specificity"],
                                                                                               abs=1e-9)
    assert report["review_band"]["n_review"] == 35  # 6.97 % of 502, as the review band's fit recorded
    assert report["review_band"]["review_rate"] == pytest.approx(
        op["review_band"]["validation"]["review_rate"], abs=1e-6)
    md = (out / "report.md").read_text()
    assert "Comparison with published results" not in md and "Only the Kermany et al. rows" not in md
    assert ("Published results (Kermany et al. 2018, MedMNIST) are on the official test split; this report is on "
            "split model-val. All of these films are the model's own validation films: they were used to select "
            "the model") in md


@pytest.mark.needs_data
def test_model_val_refuses_a_model_or_dataset_without_that_split(tiny_model_dir, dataset_root, small_dataset,
                                                                  tmp_path, capsys):
    # the tiny model records no validation split
    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(dataset_root), "--split", "model-val",
                      "--out", str(tmp_path / "o"))
    assert rc == 2 and "the model records no validation split" in err
    # the bundled model's split cannot come from a folder without the train films it was drawn from
    rc, _, err = _run(capsys, "--data", str(small_dataset), "--split", "model-val", "--out", str(tmp_path / "o"))
    assert rc == 2 and "has no train folder" in err
    # nor from a dataset that splits otherwise: 12 of its train films give another split than the recorded one
    other = tmp_path / "other"
    for src in sorted((dataset_root / "train" / "PNEUMONIA").iterdir())[:12]:
        (other / "train" / "PNEUMONIA").mkdir(parents=True, exist_ok=True)
        (other / "train" / "PNEUMONIA" / src.name).symlink_to(src)
    rc, _, err = _run(capsys, "--data", str(other), "--split", "model-val", "--out", str(tmp_path / "o"))
    assert rc == 2 and "gives another validation split than the model's (val_sha256: " in err
    assert not (tmp_path / "o").exists()
    # a CSV holds no train folder to re-create the split from
    table = tmp_path / "t.csv"
    table.write_text("path,label\nx.png,normal\n")
    rc, _, err = _run(capsys, "--data", str(table), "--split", "model-val", "--out", str(tmp_path / "o"))
    assert rc == 2 and "--split model-val scores the model's validation films from the Kermany-layout" in err


@pytest.mark.needs_data
def test_unknown_split_lists_the_valid_ones(tiny_model_dir, small_dataset, tmp_path, capsys):
    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(small_dataset), "--split", "validation")
    assert rc == 2
    assert err.strip() == ("deephealth evaluate: error: unknown split 'validation'; the splits of a dataset folder "
                           "are train, val, test, model-val")
    table = tmp_path / "s.csv"
    img = small_dataset / "test" / "NORMAL" / f"{NORMAL[0]}.jpeg"
    table.write_text(f"path,label,split\n{img},normal,train\n{img},normal,test\n")
    rc, _, err = _run(capsys, "--model", str(tiny_model_dir), "--data", str(table), "--split", "val")
    assert rc == 2 and err.strip().endswith(f"unknown split 'val': {table} holds the splits test, train")


@pytest.mark.needs_data
def test_official_val_folder_is_named_as_such_and_test_split_notes_its_reservation(tiny_model_dir, dataset_root,
                                                                                    small_dataset, tmp_path, capsys):
    from deephealth.cli.evaluate import TEST_SPLIT_NOTE

    out = tmp_path / "val"
    rc, stdout, stderr = _run(capsys, "--model", str(tiny_model_dir), "--data", str(dataset_root), "--split", "val",
                              "--out", str(out), "--no-progress", "--bootstrap", "50")
    assert rc == 0, stderr
    assert TEST_SPLIT_NOTE not in stderr
    note = "the official 16-film val folder, not the model's validation split (that is --split model-val)"
    assert f"[val: {note}]: 16 images" in stdout
    md = (out / "report.md").read_text()
    assert f"| Split | val ({note}): 16 images scored (8 normal, 8 bacterial, 0 viral)" in md
    assert "Comparison with published results" not in md and "Only the Kermany et al. rows" not in md
    assert "are on the official test split; this report is on split val." in md
    assert "used to train or select the model" not in md  # the tiny model records no dataset: nothing to say

    # the test split, given or by default: one line on stderr, the evaluation still runs, the comparison is there
    for extra in ([], ["--split", "test"]):
        out = tmp_path / f"test{len(extra)}"
        rc, stdout, stderr = _run(capsys, "--model", str(tiny_model_dir), "--data", str(small_dataset), *extra,
                                  "--out", str(out), "--no-progress", "--bootstrap", "50")
        assert rc == 0, stderr
        assert stderr.count(TEST_SPLIT_NOTE) == 1 and TEST_SPLIT_NOTE.startswith("note: the official test split "
                                                                                 "is reserved for reporting a release")
        assert "at most three looks per release, recorded in docs/model-development.md" in TEST_SPLIT_NOTE
        md = (out / "report.md").read_text()
        assert "## Comparison with published results" in md and "Only the Kermany et al. rows" in md
        assert "Not comparable with published results" not in md


@pytest.mark.needs_data
def test_csv_of_training_films_says_the_model_was_trained_or_selected_on_them(dataset_root, tmp_path, capsys):
    """A CSV whose files are in the bundled model's train folder (3 films of it, 1 of the test folder)."""
    films = [sorted((dataset_root / "train" / "NORMAL").iterdir())[0],
             *sorted((dataset_root / "train" / "PNEUMONIA").iterdir())[:2],
             dataset_root / "test" / "NORMAL" / f"{NORMAL[0]}.jpeg"]
    assert all(f.is_file() for f in films)
    table = tmp_path / "mine.csv"
    table.write_text("path,label\n" + "".join(
        f"{f},{'normal' if f.parent.name == 'NORMAL' else ('bacterial' if 'bacteria' in f.name else 'viral')}\n"
        for f in films))
    out = tmp_path / "csv"
    rc, _, stderr = _run(capsys, "--data", str(table), "--out", str(out), "--no-progress", "--bootstrap", "50")
    assert rc == 0, stderr
    report = load_metrics(out / "metrics.json")
    assert report["data"]["model_films"] == {"role": "training or validation", "n": 3}
    md = (out / "report.md").read_text()
    assert "Comparison with published results" not in md
    assert ("this report is on split csv. 3 of these 4 films are in the official train folder of the model's "
            "dataset: they were used to train or select the model") in md
