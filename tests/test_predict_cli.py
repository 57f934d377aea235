"""Tests of `deephealth predict`: inputs (files, folders, globs), outputs (table, JSON, CSV), exit status."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deephealth.artifact import ModelArtifact
from PIL import Image

from deephealth.cli import main
from deephealth.cli.predict import collect_inputs
from deephealth.inference import Predictor
from deephealth.labels import INTENDED_USE


@pytest.fixture()
def folder(tmp_path: Path, dataset_root: Path) -> Path:
    """tmp/scans/{a,b}.jpeg, tmp/scans/sub/c.jpeg (dataset images) and tmp/scans/sub/broken.jpeg (truncated)."""
    d = tmp_path / "scans"
    (d / "sub").mkdir(parents=True)
    normal = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))
    pneu = sorted((dataset_root / "test" / "PNEUMONIA").glob("*.jpeg"))
    shutil.copy(normal[0], d / "a.jpeg")
    shutil.copy(pneu[0], d / "b.jpeg")
    shutil.copy(pneu[-1], d / "sub" / "c.jpeg")
    (d / "sub" / "broken.jpeg").write_bytes(normal[1].read_bytes()[:400])
    (d / "notes.txt").write_text("not an image, and not picked up from a folder")
    return d


def _expected(model_dir: Path, files: list[Path]) -> dict[str, dict]:
    p = Predictor(model_dir)
    return {str(f): p.predict(f).probabilities for f in files}


def test_folder_with_a_corrupt_file_reports_it_and_exits_1(folder: Path, tiny_model_dir: Path, capsys):
    rc = main(["predict", str(folder), "--model", str(tiny_model_dir)])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].split() == ["file", "label", "index", "P(normal)", "P(bacterial)", "P(viral)", "gate", "warnings"]
    good = [folder / "a.jpeg", folder / "b.jpeg", folder / "sub" / "c.jpeg"]
    expected = _expected(tiny_model_dir, good)
    for f in good:
        (row,) = [line for line in lines if line.startswith(str(f) + " ")]
        cells = row.split()
        assert [float(c) for c in cells[3:6]] == pytest.approx(
            [round(expected[str(f)][k], 3) for k in ("normal", "bacterial", "viral")], abs=1e-9)
    broken = str(folder / "sub" / "broken.jpeg")
    (row,) = [line for line in lines if line.startswith(broken)]
    assert "ERROR" in row
    assert f"error: {broken}: " in err and "Traceback" not in err
    assert "4 input(s): 3 classified, 1 failed" in out
    assert INTENDED_USE in out
    assert "notes.txt" not in out


def test_all_good_exits_0(folder: Path, tiny_model_dir: Path, capsys):
    rc = main(["predict", str(folder / "a.jpeg"), str(folder / "b.jpeg"), "--model", str(tiny_model_dir)])
    assert rc == 0
    assert "2 input(s): 2 classified, 0 failed" in capsys.readouterr().out


def test_json_output_parses(folder: Path, tiny_model_dir: Path, capsys):
    rc = main(["predict", str(folder), "--model", str(tiny_model_dir), "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 1
    rows = json.loads(out)
    assert [r["ok"] for r in rows] == [True, True, False, True]  # a, b, sub/broken, sub/c (sorted)
    expected = _expected(tiny_model_dir, [folder / "a.jpeg"])
    assert rows[0]["source"] == str(folder / "a.jpeg")
    assert rows[0]["probabilities"] == pytest.approx(expected[str(folder / "a.jpeg")], abs=1e-12)
    for r in rows:
        if r["ok"]:
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
            assert r["label_index"] in (0, 1, 2) and r["image"]["format"] == "JPEG"
    assert rows[2]["error"].startswith(str(folder / "sub" / "broken.jpeg") + ": ")
    art = ModelArtifact.load(tiny_model_dir)
    assert all(r["model"] == {"name": art.name, "version": art.version, "sha256": art.sha256} for r in rows)
    assert INTENDED_USE in err and INTENDED_USE not in out


def test_csv_output_parses(folder: Path, tiny_model_dir: Path, capsys):
    rc = main(["predict", str(folder), "--model", str(tiny_model_dir), "--format", "csv"])
    out, err = capsys.readouterr()
    assert rc == 1
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == ["path", "ok", "label", "label_index", "p_normal", "p_bacterial", "p_viral",
                                 "warnings", "gate", "gate_reasons", "error", "model"]
    rows = list(reader)
    art = ModelArtifact.load(tiny_model_dir)
    assert {r["model"] for r in rows} == {f"{art.name} {art.version}"}
    assert len(rows) == 4
    ok = [r for r in rows if r["ok"] == "true"]
    assert len(ok) == 3
    for r in ok:
        assert sum(float(r[k]) for k in ("p_normal", "p_bacterial", "p_viral")) == pytest.approx(1.0, abs=3e-6)
        assert r["label"] in ("normal", "bacterial", "viral") and r["error"] == ""
    (bad,) = [r for r in rows if r["ok"] == "false"]
    assert bad["path"].endswith("broken.jpeg") and bad["error"].startswith(bad["path"]) and bad["label"] == ""
    assert INTENDED_USE in err


def test_heatmap_dir_writes_overlays(folder: Path, tiny_model_dir: Path, tmp_path, capsys):
    hd = tmp_path / "heat"
    rc = main(["predict", str(folder / "a.jpeg"), str(folder / "sub" / "c.jpeg"), "--model", str(tiny_model_dir),
               "--heatmap-dir", str(hd), "--format", "json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in hd.iterdir()) == ["a_heatmap.png", "c_heatmap.png"]
    assert rows[0]["heatmap_file"] == str(hd / "a_heatmap.png")
    with Image.open(hd / "a_heatmap.png") as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (224, 224))
        arr = np.asarray(im)
    assert arr.std() > 0  # an image, not a blank


def test_glob_and_missing_paths(folder: Path, tiny_model_dir: Path, capsys):
    rc = main(["predict", str(folder / "*.jpeg"), str(folder / "nothing-here.png"), str(folder / "*.dcm"),
               "--model", str(tiny_model_dir), "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert [Path(r["source"]).name for r in rows if r["ok"]] == ["a.jpeg", "b.jpeg"]
    errors = [r["error"] for r in rows if not r["ok"]]
    assert errors == [f"{folder / 'nothing-here.png'}: no such file or folder",
                      f"{folder / '*.dcm'}: no files match this pattern"]


def test_collect_inputs_dedupes_and_recurses(folder: Path):
    files, missing = collect_inputs([str(folder / "a.jpeg"), str(folder), str(folder / "notes.txt")])
    names = [str(Path(f).relative_to(folder)) for f in files]
    # explicitly named files are always taken; folders only yield image-like names
    assert names == ["a.jpeg", "b.jpeg", "sub/broken.jpeg", "sub/c.jpeg", "notes.txt"]
    assert missing == []


def test_missing_model_exits_2(folder: Path, tmp_path, capsys):
    rc = main(["predict", str(folder / "a.jpeg"), "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == f"cannot load the model: model folder not found: {tmp_path / 'no-model'}"
