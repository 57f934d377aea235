"""Resuming training (``deephealth train --resume RUN_DIR``, ``--time-limit``, Ctrl+C): an interrupted and
resumed run ends exactly as an uninterrupted one; runs that cannot be resumed are refused in one line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from deephealth.cli import main  # noqa: E402
from deephealth.training import loop  # noqa: E402
from deephealth.training.config import TrainConfig, save_config  # noqa: E402


def _tiny_args(dataset_root: Path, out: Path) -> list[str]:
    """A 3-epoch run that takes seconds: timm's test_efficientnet at 48 px on 32 films (4 steps per epoch).

    It draws from every random source the loop has: batch order and augmentation (the loop's generator),
    consistency training's benign perturbations (the same generator), dropout (torch's global generator,
    from step 7 on: the head-only phase, 1.5 epochs = 6 steps, runs in eval mode); weight EMA, AdamW's
    moments and the warm-up + cosine schedule carry state across epochs. Resumed after epoch 1 (step
    4), the head-only phase is still on (the backbone must be frozen again); resumed after epoch 2,
    dropout must continue the global generator's sequence. bf16 autocast is off (``--bf16 false``), so the
    bit-for-bit comparison holds alike on AVX2 and on AVX-512 CPUs with native bf16, whose bf16 kernels
    this test does not vouch for.
    """
    return ["train", "--data", str(dataset_root), "--arch", "test_efficientnet", "--max-train-images", "32",
            "--epochs", "3", "--input-size", "48", "--batch-size", "8", "--num-threads", "2",
            "--head-only-epochs", "1.5", "--consistency-weight", "0.5", "--bf16", "false", "--out-dir", str(out),
            "--quiet"]


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_straight_run(
    tmp_path: Path, dataset_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    args = _tiny_args(dataset_root, tmp_path)
    assert main(args + ["--name", "straight"]) == 0
    straight = tmp_path / "straight"
    capsys.readouterr()

    # Session 1: the time limit leaves room for one epoch only; it stops cleanly with exit status 3.
    assert main(args + ["--name", "split", "--time-limit", "0.001"]) == 3
    run = tmp_path / "split"
    err = capsys.readouterr().err
    assert f"stopped after epoch 1 of 3; continue it with: deephealth train --resume {run}" in err
    assert "Traceback" not in err
    assert [r["epoch"] for r in _history(run)] == ["1"] and not (run / "best.pt").exists()
    assert _load(run / "last.pt")["epoch"] == 1
    assert not (run / "last.pt.partial").exists()  # written beside it, then renamed over it
    stopped_once = tmp_path / "stopped-copy"
    shutil.copytree(run, stopped_once)  # for the refusals at the end

    # Session 2: resumed with the same limit: one more epoch (each session runs at least one).
    assert main(["train", "--resume", str(run), "--quiet", "--time-limit", "0.001"]) == 3
    assert f"stopped after epoch 2 of 3; continue it with: deephealth train --resume {run}" in capsys.readouterr().err
    assert [r["epoch"] for r in _history(run)] == ["1", "2"] and _load(run / "last.pt")["epoch"] == 2

    # Session 3: Ctrl+C in the middle of epoch 3 (the second of its 4 batches); last.pt keeps epoch 2.
    calls = {"n": 0}
    real_sample = loop.sample_augment

    def interrupt_on_second_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_sample(*a, **k)

    monkeypatch.setattr(loop, "sample_augment", interrupt_on_second_batch)
    assert main(["train", "--resume", str(run), "--quiet"]) == 130
    monkeypatch.setattr(loop, "sample_augment", real_sample)
    err = capsys.readouterr().err
    assert f"interrupted: run {run} stopped after epoch 2 of 3; continue it with: deephealth train --resume {run}" in err
    assert "Traceback" not in err
    assert calls["n"] == 2 and _load(run / "last.pt")["epoch"] == 2 and len(_history(run)) == 2
    assert not (run / "best.pt").exists()

    # Session 4: epoch 3 done, then Ctrl+C during the calibration that follows the last epoch.
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "fit_temperature", interrupt)
    assert main(["train", "--resume", str(run), "--quiet"]) == 130
    monkeypatch.undo()
    assert "stopped after epoch 3 of 3; continue it with" in capsys.readouterr().err
    assert _load(run / "last.pt")["epoch"] == 3 and not (run / "best.pt").exists()

    # Session 5: nothing left to train, the run is finished (calibration, best.pt, summary).
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert f"run written to {run}" in capsys.readouterr().out

    # The guarantee: same weights, bit for bit (CPU kernels are deterministic with a fixed thread count),
    # same calibration, same history metrics (only the per-epoch seconds differ).
    a, b = _load(straight / "best.pt"), _load(run / "best.pt")
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    assert (a["epoch"], a["temperature"], a["val_metrics"]) == (b["epoch"], b["temperature"], b["val_metrics"])
    assert _without_seconds(a["history"]) == _without_seconds(b["history"])
    assert _without_seconds(_history(straight)) == _without_seconds(_history(run))
    assert [r["epoch"] for r in _history(run)] == ["1", "2", "3"]
    assert json.loads((straight / "calibration.json").read_text()) == json.loads((run / "calibration.json").read_text())
    # The final training state too: the weights, the EMA, the optimiser's moments after epoch 3.
    last, last_run = _load(straight / "last.pt"), _load(run / "last.pt")
    for key in ("model_state", "ema_state"):
        for k in last[key]:
            assert torch.equal(last[key][k], last_run[key][k]), (key, k)
    moments = [(s["exp_avg"], r["exp_avg"]) for s, r in zip(last["optimizer_state"]["state"].values(),
                                                              last_run["optimizer_state"]["state"].values())]
    assert moments and all(torch.equal(s, r) for s, r in moments)
    assert torch.equal(last["rng"]["augment"], last_run["rng"]["augment"])
    # The selected epoch's weights are kept apart from the EMA's, which moved on... unless epoch 3 was selected.
    assert last["epoch"] == 3 and last["step"] == 12 and last["ema_steps"] == 12
    if last["best_epoch"] < 3:
        assert all(torch.equal(last["best_state"][k], a["model_state"][k]) for k in a["model_state"])
        assert not torch.equal(last["ema_state"]["classifier.weight"], a["model_state"]["classifier.weight"])
    else:
        assert last["best_state"] is None and a["epoch"] == 3

    s_straight = json.loads((straight / "summary.json").read_text())
    s_run = json.loads((run / "summary.json").read_text())
    assert s_straight["resumed"] is False and [(g["first_epoch"], g["last_epoch"]) for g in s_straight["segments"]] == [(1, 3)]
    assert s_run["resumed"] is True
    # session 3 finished no epoch and is no segment; session 5 only finished the run
    assert [(g["first_epoch"], g["last_epoch"]) for g in s_run["segments"]] == [(1, 1), (2, 2), (3, 3), (None, None)]
    assert s_run["wall_time_s"] == pytest.approx(sum(g["wall_time_s"] for g in s_run["segments"]), rel=1e-9)
    assert all(g["wall_time_s"] > 0 for g in s_run["segments"])
    assert (s_run["best_epoch"], s_run["epochs_run"]) == (s_straight["best_epoch"], 3)

    # A finished run has nothing left to do.
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("the run already finished (3 of 3 epochs, best epoch "
                                f"{s_run['best_epoch']}); nothing to resume") and "Traceback" not in err

    # Refusals on the copy stopped after epoch 1, each one line, before any training.
    # Another dataset folder: the train/validation split differs.
    other = tmp_path / "other-data"
    for cls in ("NORMAL", "PNEUMONIA"):
        (other / "train" / cls).mkdir(parents=True)
        for f in sorted((dataset_root / "train" / cls).iterdir())[:60]:
            (other / "train" / cls / f.name).symlink_to(f)
    assert main(["train", "--resume", str(stopped_once), "--data-dir", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "validation split differs from this run's" in err and len(err.strip().splitlines()) == 1
    # config.yaml edited after the run started.
    cfg = (stopped_once / "config.yaml").read_text()
    (stopped_once / "config.yaml").write_text(cfg.replace("lr: 0.002\n", "lr: 0.01\n"))
    assert main(["train", "--resume", str(stopped_once), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "differs from the config last.pt was written with (lr: 0.01 there, 0.002 in last.pt)" in err
    (stopped_once / "config.yaml").write_text(cfg)
    # A truncated last.pt (a disk filled up, a copy cut short).
    data = (stopped_once / "last.pt").read_bytes()
    (stopped_once / "last.pt").write_bytes(data[: len(data) // 2])
    assert main(["train", "--resume", str(stopped_once), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: {stopped_once / 'last.pt'}: cannot read it, the file is truncated or corrupted" in err
    assert len(err.strip().splitlines()) == 1 and not (stopped_once / "best.pt").exists()


def test_resume_refuses_what_cannot_be_resumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each case: exit status 2, one line on stderr that says why, no traceback, nothing trained."""

    def refused(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err.strip()

    assert refused(["train", "--resume", str(tmp_path / "nope")]) == f"error: {tmp_path / 'nope'}: no such run folder"

    done = tmp_path / "finished-long-ago"  # a run finished before runs wrote last.pt
    done.mkdir()
    save_config(TrainConfig(), done / "config.yaml")
    (done / "summary.json").write_text("{}\n")
    assert "has no last.pt: it finished before deephealth train wrote last.pt" in refused(
        ["train", "--resume", str(done)])

    early = tmp_path / "stopped-early"  # stopped during its first epoch
    early.mkdir()
    save_config(TrainConfig(), early / "config.yaml")
    err = refused(["train", "--resume", str(early)])
    assert f"stopped before its first epoch finished; start it again with: deephealth train --config {early / 'config.yaml'}" in err

    assert "not a deephealth train run folder" in refused(["train", "--resume", str(tmp_path)])

    (early / "last.pt").write_bytes(b"\x00" * 100)
    assert f"{early / 'last.pt'}: cannot read it, the file is truncated or corrupted" in refused(
        ["train", "--resume", str(early)])
    torch.save({"model_state": {}}, early / "last.pt")  # a readable file, not a resumable checkpoint
    assert "not a resumable checkpoint written by deephealth train" in refused(["train", "--resume", str(early)])

    # The run's own config decides; only where the data lies and the CPU threads may change.
    assert "--epochs cannot be given with it (allowed: --data-dir, --num-threads, --quiet, --time-limit)" in refused(
        ["train", "--resume", str(early), "--epochs", "40"])
    assert "--config cannot be given with it" in refused(["train", "--resume", str(early), "--config", "x.yaml"])
    with pytest.raises(loop.ResumeError, match="cannot change lr"):
        loop.resume_run(early, lr=0.1)


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf"])
def test_time_limit_must_be_positive_minutes(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--time-limit", value])
    assert exc.value.code == 2
    assert f"expected a positive number of minutes, got {value!r}" in capsys.readouterr().err


def test_ctrl_c_in_the_first_epoch_leaves_nothing_to_resume(
    tmp_path: Path, dataset_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "sample_augment", interrupt)
    assert main(_tiny_args(dataset_root, tmp_path) + ["--name", "early"]) == 130
    run = tmp_path / "early"
    err = capsys.readouterr().err
    assert (f"interrupted: run {run} stopped before its first epoch finished; nothing to resume, start it again "
            f"with: deephealth train --config {run / 'config.yaml'}") in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 2
    assert "stopped before its first epoch finished" in capsys.readouterr().err


def test_a_segment_on_another_kind_of_cpu_is_recorded_and_warned_about(
    tmp_path: Path, dataset_root: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    """``bf16: auto`` turns bf16 autocast on for AVX-512 CPUs with native bf16 only: a run started on one
    kind of CPU and resumed on the other changes numerics mid-run. Each segment records its CPU and
    whether bf16 autocast was on, and the resumed segment warns when that changed."""
    from deephealth.cpu import describe

    args = _tiny_args(dataset_root, tmp_path)
    args[args.index("--epochs") + 1] = "2"
    assert main(args + ["--name", "moved", "--time-limit", "0.001"]) == 3
    run = tmp_path / "moved"
    last = _load(run / "last.pt")
    here = False  # _tiny_args runs without bf16 autocast, whatever the CPU
    assert last["segments"][-1]["bf16_autocast"] is here and last["segments"][-1]["cpu_capability"] == describe()
    # as if the first segment had run on the other kind of CPU
    last["segments"][-1].update(bf16_autocast=not here, cpu_capability="another CPU (test)")
    torch.save(last, run / "last.pt")
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="deephealth"):
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "bf16" in r.getMessage()]
    assert warned == [f"this segment runs with bf16 autocast {'on' if here else 'off'}, the previous one ran with it "
                      f"{'off' if here else 'on'} (another CPU (test)): the run continues, but it is no longer what "
                      "one uninterrupted run on either CPU gives"]
    summary = json.loads((run / "summary.json").read_text())
    assert [(g["bf16_autocast"], g["cpu_capability"]) for g in summary["segments"]] == [
        (not here, "another CPU (test)"), (here, describe())]


def test_a_new_run_refuses_a_folder_that_already_holds_a_run(
    tmp_path: Path, dataset_root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A new run under an existing run's name (a repeated --name, or a config's fixed ``name:``) would write
    its config.yaml and history.csv beside the old run's last.pt / best.pt / summary.json: refused in one
    line (exit status 2) before anything is written, saying what the folder holds and what to do."""
    args = _tiny_args(dataset_root, tmp_path)
    args[args.index("--epochs") + 1] = "2"
    assert main(args + ["--name", "ref", "--time-limit", "0.001"]) == 3  # interrupted after epoch 1
    run = tmp_path / "ref"
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def refused(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err.strip()

    # Over the interrupted run: another recipe, same name.
    err = refused(args + ["--name", "ref", "--lr", "0.01"])
    assert err == (f"error: {run} already holds an interrupted run, resumable from its last.pt; continue it with: "
                   f"deephealth train --resume {run}, or start a new run with --name <other name> (or delete {run} first)")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # untouched: still resumable
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    capsys.readouterr()
    finished = {p.name: p.read_bytes() for p in run.iterdir()}
    assert {"best.pt", "summary.json", "calibration.json"} <= set(finished)

    # Over the finished run (also through --config, as a config's fixed name: would).
    err = refused(args + ["--name", "ref"])
    assert err == (f"error: {run} already holds a finished run (config.yaml, last.pt, best.pt, summary.json); "
                   f"start a new run with --name <other name> (or delete {run} first)")
    cfg = tmp_path / "named.yaml"
    cfg.write_text(f"name: ref\nout_dir: {tmp_path}\n")
    assert "already holds a finished run" in refused(["train", "--config", str(cfg), "--quiet"])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == finished

    # A folder left by a run stopped in its first epoch (config.yaml only: nothing to resume, export or mix
    # with) may be started again, as that stop's message advises (deephealth train --config <it>/config.yaml).
    early = tmp_path / "early"
    early.mkdir()
    save_config(TrainConfig(), early / "config.yaml")
    loop.check_new_run_folder(early)
    # An empty or unrelated existing folder is fine (the check looks for a run's files only).
    loop.check_new_run_folder(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    loop.check_new_run_folder(tmp_path / "empty")


def test_export_of_an_unfinished_run_says_to_finish_it_first(
    tmp_path: Path, dataset_root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """After a --time-limit stop the run has last.pt but no best.pt yet: `deephealth export` of the folder,
    or of its last.pt, says the run has not finished and how to finish it (not 'checkpoint not found')."""
    args = _tiny_args(dataset_root, tmp_path)
    args[args.index("--epochs") + 1] = "2"
    assert main(args + ["--name", "early", "--time-limit", "0.001"]) == 3
    run = tmp_path / "early"
    capsys.readouterr()
    expected = (f"export failed: the run in {run} has not finished (stopped after epoch 1 of 2, from last.pt): "
                "best.pt, calibration.json and summary.json are written when it ends; finish it first with: "
                f"deephealth train --resume {run}")
    for extra in ([], ["--checkpoint", str(run / "last.pt")], ):
        assert main(["export", str(run), *extra, "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert err.strip() == expected, err
    assert main(["export", str(run / "last.pt"), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "m").exists()
    # A run folder whose last.pt cannot be read still says it has not finished (without the epochs).
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "last.pt").write_bytes(b"\x00" * 10)
    assert main(["export", str(broken), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"export failed: the run in {broken} has not finished: ")

    # train --help's run-folder list says which files come only at the end.
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ("history.csv and last.pt (the resumable state) after every epoch, and best.pt, calibration.json, "
            "summary.json and curves.png when the run ends") in out


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_the_run_can_be_resumed(tmp_path: Path, dataset_root: Path) -> None:
    """SIGTERM (what ends a nohup'ed run when its session or container stops) during epoch 2: exit status
    143, the command that continues the run on stderr, last.pt still holding epoch 1; --resume finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "term"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-m", "deephealth", *_tiny_args(dataset_root, tmp_path), "--name", "term"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert (f"stopped: terminated (SIGTERM): run {run} stopped after epoch 1 of 3; continue it with: "
            f"deephealth train --resume {run}") in err
    assert "Traceback" not in err
    assert _load(run / "last.pt")["epoch"] == 1 and [r["epoch"] for r in _history(run)] == ["1"]
    assert not (run / "best.pt").exists() and not (run / "last.pt.partial").exists()
    # the handler is the train command's only: it is put back afterwards (here: SIG_DFL, pytest's own)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert [r["epoch"] for r in _history(run)] == ["1", "2", "3"] and (run / "best.pt").is_file()
    assert json.loads((run / "summary.json").read_text())["resumed"] is True
