"""Tests of `deephealth predict`: inputs (files, folders, globs), outputs (table, JSON, CSV), exit status."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from deephealth.artifact import ModelArtifact
from PIL import Image

from deephealth.cli import main
from deephealth.cli.predict import collect_inputs, skipped_in_folders
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
    assert lines[0].split() == ["source", "label", "label_index", "p_normal", "p_bacterial", "p_viral",
                                "pneumonia_probability", "threshold", "gate", "review", "notes"]
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
    assert "4 input(s): 3 classified, 1 not classified (1 error); 1 other file(s) in the folders skipped (not image suffixes)" in out
    assert INTENDED_USE in out
    assert "notes.txt" not in out  # the table has no row for it, stderr names it
    assert (f"skipped 1 file(s) in folders, not image suffixes (.txt 1): {folder / 'notes.txt'}; "
            "name a file itself to read it anyway") in err


def test_all_good_exits_0(folder: Path, tiny_model_dir: Path, capsys):
    rc = main(["predict", str(folder / "a.jpeg"), str(folder / "b.jpeg"), "--model", str(tiny_model_dir)])
    assert rc == 0
    assert "2 input(s): 2 classified, 0 not classified" in capsys.readouterr().out


def test_json_output_parses(folder: Path, tiny_model_dir: Path, capsys):
    rc = main(["predict", str(folder), "--model", str(tiny_model_dir), "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 1
    rows = json.loads(out)
    # a, b, sub/broken, sub/c (sorted), then the skipped notes.txt
    assert [r["ok"] for r in rows] == [True, True, False, True, False]
    assert rows[4] == {"source": str(folder / "notes.txt"), "ok": False,
                       "skipped": "not an image file suffix (name the file itself to read it anyway)",
                       "model": rows[0]["model"], "intended_use": INTENDED_USE}
    assert "skipped 1 file(s) in folders" in err
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
    # Every record carries the intended use, as the REST API's response does; the notice stays on stderr too.
    assert [r["intended_use"] for r in rows] == [INTENDED_USE] * 5
    assert INTENDED_USE in err


def test_csv_output_parses(folder: Path, tiny_model_dir: Path, capsys):
    rc = main(["predict", str(folder), "--model", str(tiny_model_dir), "--format", "csv"])
    out, err = capsys.readouterr()
    assert rc == 1
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == ["source", "ok", "label", "label_index", "p_normal", "p_bacterial", "p_viral",
                                 "pneumonia_probability", "threshold", "target_sensitivity", "rule", "review",
                                 "review_reason", "warnings", "gate", "gate_reasons", "error", "skipped", "model",
                                 "intended_use"]
    rows = list(reader)
    art = ModelArtifact.load(tiny_model_dir)
    assert {r["model"] for r in rows} == {f"{art.name} {art.version}"}
    assert len(rows) == 5
    # Every row, classified, failed or skipped, carries the intended use (JSON's key, as the last
    # column, so the earlier columns keep their positions); the notice stays on stderr too.
    assert [r["intended_use"] for r in rows] == [INTENDED_USE] * 5
    assert all(None not in r and len(r) == len(reader.fieldnames) for r in rows)  # no stray or missing fields
    assert [len(cells) for cells in csv.reader(io.StringIO(out))] == [20] * 6
    ok = [r for r in rows if r["ok"] == "true"]
    assert len(ok) == 3
    for r in ok:
        assert sum(float(r[k]) for k in ("p_normal", "p_bacterial", "p_viral")) == pytest.approx(1.0, abs=3e-6)
        assert r["label"] in ("normal", "bacterial", "viral") and r["error"] == "" and r["skipped"] == ""
        # the tiny model has no operating point: arg-max, no threshold
        assert float(r["pneumonia_probability"]) == pytest.approx(1 - float(r["p_normal"]), abs=2e-6)
        assert (r["threshold"], r["target_sensitivity"], r["rule"]) == ("", "", "the most probable class")
        assert (r["review"], r["review_reason"]) == ("false", "")  # no operating point, no review band
    bad, skipped = [r for r in rows if r["ok"] == "false"]
    assert bad["source"].endswith("broken.jpeg") and bad["error"].startswith(bad["source"]) and bad["label"] == ""
    assert bad["skipped"] == "" and bad["review"] == ""
    assert skipped["source"] == str(folder / "notes.txt") and skipped["error"] == ""
    assert skipped["skipped"] == "not an image file suffix (name the file itself to read it anyway)"
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
    assert skipped_in_folders([str(folder / "a.jpeg"), str(folder), str(folder / "notes.txt")], files) == []


def test_skipped_in_folders_lists_what_a_folder_skips(folder: Path):
    (folder / "sub" / "report.PDF").write_bytes(b"%PDF-1.4")
    (folder / "sub" / "scan").write_bytes(b"no suffix: taken, may be DICOM")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.txt").write_text("hidden")
    args = [str(folder), str(folder), str(folder / "*")]
    files, missing = collect_inputs(args)
    assert len(files) == 6 and missing == []  # a, b, sub/broken, sub/c, sub/scan; the glob adds notes.txt
    assert str(folder / "notes.txt") in files  # matched by the glob as a file: read, not skipped
    # visible non-image files, once each; hidden files and folders are neither read nor listed
    assert skipped_in_folders(args, files) == [str(folder / "sub" / "report.PDF")]
    files, _ = collect_inputs([str(folder)])
    assert skipped_in_folders([str(folder)], files) == [str(folder / "notes.txt"), str(folder / "sub" / "report.PDF")]


def test_only_skipped_files_exit_1_and_say_so(tmp_path: Path, tiny_model_dir: Path, capsys):
    (tmp_path / "readme.md").write_text("no images here")
    rc = main(["predict", str(tmp_path), "--model", str(tiny_model_dir)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"error: {tmp_path}: folder contains no image files" in err
    assert f"skipped 1 file(s) in folders, not image suffixes (.md 1): {tmp_path / 'readme.md'}" in err
    assert "1 input(s): 0 classified, 1 not classified (1 error); 1 other file(s) in the folders skipped" in out


def test_table_csv_and_json_carry_the_same_decision(folder: Path, capsys):
    """With the released model's operating point, every format gives the decision, named the same."""
    from deephealth.paths import default_model_dir

    model = default_model_dir()
    if not (model / "metadata.json").is_file():
        pytest.skip("no bundled model")
    art = ModelArtifact.load(model)
    op = art.operating_point
    if not op:
        pytest.skip("the bundled model has no operating point")
    paths = [str(folder / "a.jpeg"), str(folder / "b.jpeg"), str(folder / "sub" / "broken.jpeg")]
    expected = {p: Predictor(model).predict(p) for p in paths[:2]}

    assert main(["predict", *paths, "--model", str(model), "--format", "json"]) == 1
    js = {r["source"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(["predict", *paths, "--model", str(model), "--format", "csv"]) == 1
    cs = {r["source"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert main(["predict", *paths, "--model", str(model)]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = lines[0].split()
    assert set(js) == set(cs) == set(paths)
    for p, res in expected.items():
        d = res.decision
        assert d["threshold"] == pytest.approx(float(op["threshold"]), abs=0)
        assert d["pneumonia_probability"] == pytest.approx(1 - res.probabilities["normal"], abs=1e-12)
        assert js[p]["decision"] == d and js[p]["label"] == res.label
        c = cs[p]
        assert c["label"] == res.label and int(c["label_index"]) == res.label_index
        for k in ("pneumonia_probability", "threshold", "target_sensitivity"):
            assert float(c[k]) == pytest.approx(d[k], abs=5e-7), k
        assert c["rule"] == d["rule"] and c["rule"].startswith(f"pneumonia when P(pneumonia) >= {d['threshold']:.3f}")
        assert c["review"] == ("true" if d["review"] else "false") and c["review_reason"] == (d["review_reason"] or "")
        (row,) = [line for line in lines if line.startswith(p + " ")]
        cells = dict(zip(head, row.split()))
        assert cells["label"] == res.label and cells["label_index"] == str(res.label_index)
        assert float(cells["pneumonia_probability"]) == pytest.approx(round(d["pneumonia_probability"], 3), abs=1e-9)
        assert float(cells["threshold"]) == pytest.approx(round(d["threshold"], 3), abs=1e-9)
        assert float(cells["p_normal"]) == pytest.approx(round(res.probabilities["normal"], 3), abs=1e-9)
    # the rule is the same for every row: the table states it once, under the rows
    assert f"rule: {expected[paths[0]].decision['rule']}" in lines
    broken = paths[2]
    assert js[broken]["ok"] is False and cs[broken]["ok"] == "false"
    assert js[broken]["error"] == cs[broken]["error"] and cs[broken]["pneumonia_probability"] == ""


# Test films the released model (0.3.0) puts in its review band, found once by running the bundled
# Predictor over the test folder, and one far from every decision.
BORDERLINE_PNEUMONIA = "PNEUMONIA/person100_bacteria_475.jpeg"  # P(pneumonia) 0.887, threshold 0.883
BORDERLINE_TYPE = "PNEUMONIA/person134_bacteria_641.jpeg"  # P(pneumonia) 0.980, bacterial 0.494 vs viral 0.485
CLEAR_NORMAL = "NORMAL/IM-0001-0001.jpeg"  # P(pneumonia) 0.003


def test_borderline_films_are_flagged_for_review_in_every_format(dataset_root: Path, capsys):
    """The released model's review band: CSV and JSON carry review and review_reason, the table shows the reason."""
    from deephealth.cli.predict import WARNINGS_WIDTH
    from deephealth.paths import default_model_dir

    model = default_model_dir()
    if not (ModelArtifact.load(model).operating_point or {}).get("review_band"):
        pytest.skip("the bundled model has no review band")
    paths = [str(dataset_root / "test" / n) for n in (BORDERLINE_PNEUMONIA, BORDERLINE_TYPE, CLEAR_NORMAL)]
    near = ("borderline: P(pneumonia) 0.887 is within the review band 0.841-0.916 around the threshold 0.883; a change "
            "of the film that does not change the diagnosis (re-export, slight rotation) can change the label: have "
            "it reviewed")
    kind = ("borderline: bacterial vs viral is uncertain (bacterial share 0.505 of P(pneumonia), review band "
            "0.423-0.577); the kind of pneumonia can change with a benign change of the film: have it reviewed")

    assert main(["predict", *paths, "--model", str(model), "--format", "csv"]) == 0
    cs = {r["source"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert [(cs[p]["review"], cs[p]["review_reason"]) for p in paths] == [("true", near), ("true", kind), ("false", "")]
    assert [cs[p]["label"] for p in paths] == ["bacterial", "bacterial", "normal"]  # the label is still given
    assert main(["predict", *paths, "--model", str(model), "--format", "json"]) == 0
    js = {r["source"]: r["decision"] for r in json.loads(capsys.readouterr().out)}
    assert [(js[p]["review"], js[p]["review_reason"]) for p in paths] == [(True, near), (True, kind), (False, None)]

    assert main(["predict", *paths, "--model", str(model)]) == 0
    out = capsys.readouterr().out
    lines = out.split("\n\n")[0].splitlines()
    start = lines[0].index("notes")
    assert all(len(line) - start <= WARNINGS_WIDTH for line in lines)
    rows = [i for i, line in enumerate(lines) if line.startswith(tuple(paths))]
    notes = [" ".join(line[start:] for line in lines[i:j]).strip() for i, j in zip(rows, [*rows[1:], len(lines)])]
    assert notes == [near, kind, ""]  # each flagged row's notes are its reason (these films have no warnings)
    review_at = lines[0].index("review")
    assert [lines[i][review_at:start].split() for i in rows] == [["yes"], ["yes"], ["no"]]
    assert "3 input(s): 3 classified, 0 not classified; 2 borderline, flagged for review (see notes)" in out


def test_table_wraps_long_warnings(tmp_path: Path, dicom_dir: Path, tiny_model_dir: Path, capsys):
    """The notes column (warnings, gate reasons, errors) stays within WARNINGS_WIDTH, one warning a line, continuation lines aligned."""
    from deephealth.cli.predict import WARNINGS_WIDTH

    rc = main(["predict", str(dicom_dir / "cr_chest_pa_rsna.dcm"), str(dicom_dir / "ct_small.dcm"),
               "--model", str(tiny_model_dir)])
    out = capsys.readouterr().out
    assert rc == 1
    lines = out.split("\n\n")[0].splitlines()
    start = lines[0].index("notes")
    assert len(lines[1]) - start == WARNINGS_WIDTH or len(lines[1]) - start < WARNINGS_WIDTH
    assert all(len(line) - start <= WARNINGS_WIDTH for line in lines)
    # the CT's error is wrapped: its text continues on a line whose other cells are blank
    ct = [i for i, line in enumerate(lines) if line.startswith(str(dicom_dir / "ct_small.dcm"))][0]
    text = lines[ct][start:] + " " + lines[ct + 1][start:]
    assert text == "DICOM modality CT (computed tomography) is not a radiograph (expected CR or DX)"
    assert lines[ct + 1][:start].strip() == ""


def test_display_width_counts_wide_characters_twice():
    from deephealth.cli.predict import display_width

    assert display_width("scan.jpeg") == 9
    assert display_width("胸部X線.jpeg") == 2 * 3 + 1 + 5  # 胸 部 線 wide (W), X narrow
    assert display_width("ｓｃａｎ") == 8  # fullwidth (F)
    assert display_width("é") == 1 and display_width("e\u0301") == 1  # a combining accent takes no column
    assert display_width("") == 0


def test_table_columns_stay_aligned_with_a_cjk_file_name(tmp_path: Path, dataset_root: Path, tiny_model_dir: Path,
                                                          capsys):
    from deephealth.cli.predict import display_width

    film = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    wide, narrow = tmp_path / "胸部X線写真.jpeg", tmp_path / "chest-xray-file.jpeg"
    shutil.copy(film, wide)
    shutil.copy(film, narrow)
    assert main(["predict", str(wide), str(narrow), "--model", str(tiny_model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rule = lines[:2]
    rows = {src: line for src in (wide, narrow) for line in lines if line.startswith(str(src) + " ")}
    assert len(rows) == 2
    # the label column starts at the same terminal column on the header and on both rows ...
    label_col = display_width(header[:header.index("label")])
    for src, row in rows.items():
        rest = row[len(str(src)):]
        assert display_width(row[:len(str(src)) + len(rest) - len(rest.lstrip())]) == label_col, row
    # ... and, the same film giving the same cells, both rows end at the same column
    assert display_width(rows[wide]) == display_width(rows[narrow])
    assert rows[wide][len(str(wide)):].strip() == rows[narrow][len(str(narrow)):].strip()
    # the dashes under the source column are as wide as the widest name on screen (the CJK one)
    assert rule.split("  ")[0] == "-" * max(display_width(str(wide)), display_width(str(narrow)))


def test_missing_model_exits_2(folder: Path, tmp_path, capsys):
    rc = main(["predict", str(folder / "a.jpeg"), "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == f"cannot load the model: model folder not found: {tmp_path / 'no-model'}"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height and an empty IDAT: no pixels are allocated."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_oversized_images_get_the_projects_limit_and_no_pillow_warning(
        tmp_path: Path, tiny_model_dir: Path, capsys, recwarn):
    sizes = {"mp60.png": (10_000, 6_000), "mp150.png": (12_500, 12_000), "mp400.png": (20_000, 20_000)}
    for name, (w, h) in sizes.items():
        (tmp_path / name).write_bytes(_png_header_only(w, h))
    rc = main(["predict", *(str(tmp_path / n) for n in sizes), "--model", str(tiny_model_dir)])
    out, err = capsys.readouterr()
    assert rc == 1
    for name, mp in (("mp60.png", "10000x6000 = 60.0"), ("mp150.png", "12500x12000 = 150.0"),
                     ("mp400.png", "20000x20000 = 400.0")):
        assert (f"error: {tmp_path / name}: image too large to decode safely: {mp} megapixels (limit 50)"
                in err), err
    assert "DecompressionBomb" not in err and "decompression bomb" not in err and "178956970" not in err
    assert [str(w.message) for w in recwarn] == []  # pytest records warnings instead of printing them


@pytest.mark.parametrize(("argv", "message"), [
    (["predict", "--frmat", "json", "x/"], "deephealth predict: error: unrecognized arguments: --frmat"),
    (["predict", "--format", "xml", "x/"], "deephealth predict: error: argument --format: invalid choice: 'xml'"),
])
def test_usage_errors_under_a_command_name_it_and_its_help(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert err.rstrip().endswith("(see deephealth predict --help)"), err


def test_unknown_option_before_the_command_is_the_top_levels(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--frmat", "predict", "x/"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "deephealth: error: unrecognized arguments: --frmat (see deephealth --help)\n"


def _row(ok: bool, gate: str | None = None, skipped: bool = False) -> dict:
    r: dict = {"source": "x", "ok": ok}
    if gate:
        r["suitability"] = {"status": gate, "reasons": ["why"]}
    if skipped:
        r["skipped"] = "not an image suffix"
    elif not ok:
        r["error"] = "x: why"
    return r


@pytest.mark.parametrize(("rows", "expected"), [
    ([_row(True), _row(True)], "2 input(s): 2 classified, 0 not classified"),
    ([_row(True), _row(False)], "2 input(s): 1 classified, 1 not classified (1 error)"),
    # the fresh-user trial's case: every count says what it counts
    ([_row(True, "accept"), _row(True, "accept"), _row(True, "accept"), _row(True, "warn"),
      _row(False, "refuse"), _row(False)],
     "6 input(s): 4 classified (1 with an input-gate warning), "
     "2 not classified (1 refused by the input gate, 1 error)"),
    ([_row(True, "warn"), _row(True, "warn"), _row(False, "refuse"), _row(False, "refuse"), _row(False), _row(False)],
     "6 input(s): 2 classified (2 with an input-gate warning), "
     "4 not classified (2 refused by the input gate, 2 errors)"),
    # --allow-unsuitable: a refused film is classified anyway, and said so
    ([_row(True, "refuse"), _row(True, "accept")],
     "2 input(s): 2 classified (1 refused by the input gate, classified anyway: --allow-unsuitable), "
     "0 not classified"),
    ([_row(True), _row(False, skipped=True)], "1 input(s): 1 classified, 0 not classified"),
])
def test_summary_counts_say_what_each_count_is(rows, expected):
    from deephealth.cli.predict import summary_counts

    assert summary_counts(rows) == expected
