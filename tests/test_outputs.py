"""Nothing is overwritten or re-written: --overwrite, finished runs, max_steps across resumes, run names,
file-system errors as one line, and the plain per-epoch log lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from longtail.cli import main
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.run import train

from test_train import quiet, tiny_cfg, write_cfg


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    err = err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return train(tiny_cfg(), out=str(tmp_path_factory.mktemp("fin") / "run"), echo=quiet)


@pytest.fixture(scope="module")
def features(finished, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("feat") / "features"
    assert main(["extract", str(finished), "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------- --overwrite


def test_every_writing_command_refuses_an_existing_output_the_same_way(finished, features, tmp_path, capsys):
    cfg = write_cfg(tmp_path, tiny_cfg())
    dl_out, dc_out, csv_out = tmp_path / "dlsa", tmp_path / "crt", tmp_path / "pred.csv"
    assert main(["dlsa", "--features", str(features), "--out", str(dl_out), "flow_epochs=1", "cls_epochs=1",
                 "num_clusters=4", "max_depth=1"]) == 0
    assert main(["decouple", str(finished), "--method", "crt", "--out", str(dc_out), "--features", str(features),
                 "epochs=1"]) == 0
    assert main(["report", str(finished)]) == 0
    csv_out.write_text("the user's file\n")
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8), 128).save(img)
    cases = {
        "train": (["train", "--config", str(cfg), "--out", str(finished)], finished),
        "extract": (["extract", str(finished), "--out", str(features)], features),
        "dlsa": (["dlsa", "--features", str(features), "--out", str(dl_out), "flow_epochs=1"], dl_out),
        "decouple": (["decouple", str(finished), "--method", "crt", "--out", str(dc_out), "--features",
                      str(features)], dc_out),
        "report": (["report", str(finished)], finished / "report"),
        "predict": (["predict", str(finished), str(img), "--out", str(csv_out)], csv_out),
    }
    for name, (args, target) in cases.items():
        before = snapshot(target) if target.is_dir() else {target: (target.read_bytes(), target.stat().st_mtime_ns)}
        code, _, err = cli(args, capsys)
        msg = one_line(err)
        assert code != 0 and "pass --overwrite to replace it (nothing was changed)" in msg, (name, msg)
        after = snapshot(target) if target.is_dir() else {target: (target.read_bytes(), target.stat().st_mtime_ns)}
        assert after == before, name


def test_overwrite_replaces_only_the_runs_files(tmp_path):
    run = train(tiny_cfg(), out=str(tmp_path / "run"), echo=quiet)
    (run / "notes.txt").write_text("mine")
    old = json.loads((run / "summary.json").read_text())
    train(tiny_cfg(**{"optim.lr": 0.02}), out=str(run), echo=quiet, overwrite=True)
    new = json.loads((run / "summary.json").read_text())
    assert (run / "notes.txt").read_text() == "mine"
    assert "lr: 0.02" in (run / "config.yaml").read_text() and new["date"] >= old["date"]
    assert main(["train", "--resume", str(run), "--overwrite"]) != 0  # contradictory


def test_extract_overwrite_leaves_no_stale_split(finished, tmp_path):
    out = tmp_path / "f"
    assert main(["extract", str(finished), "--out", str(out)]) == 0
    (out / "features_val.h5").write_bytes(b"stale")  # as if an older extraction had a val split
    assert main(["extract", str(finished), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["features.json", "features_test.h5", "features_train.h5"]


def test_overwrite_does_not_clear_before_the_checks_pass(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    cfg = write_cfg(tmp_path, tiny_cfg())
    assert main(["train", "--config", str(cfg), "--out", str(run), "--overwrite", "optim.lr=-1"]) != 0
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------- resuming


def test_resuming_a_finished_run_changes_nothing(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    code, out, _ = cli(["train", "--resume", str(run)], capsys)
    assert code == 0 and "is finished (2 of 2 epochs): nothing to do, nothing was changed" in out
    assert snapshot(run) == before
    code, _, err = cli(["train", "--resume", str(run), "optim.lr=0.5"], capsys)
    assert code != 0 and "would not apply optim.lr=0.5" in one_line(err)
    assert snapshot(run) == before


def test_an_extended_schedule_continues(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main(["train", "--resume", str(run), "train.epochs=3"]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["epochs"] == 3 and s["completed_epochs"] == 3
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]


def test_max_steps_is_honoured_across_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_cfg(**{"train.max_steps": 3, "train.epochs": 5}), out=str(run), echo=quiet)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 3
    before = snapshot(run)
    for _ in range(2):  # resuming with the same limit takes no step and rewrites nothing
        code, out, _ = cli(["train", "--resume", str(run)], capsys)
        assert code == 0 and "3 of train.max_steps=3 steps" in out
    assert snapshot(run) == before
    assert main(["train", "--resume", str(run), "train.max_steps=5"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 5
    assert json.loads((run / "summary.json").read_text())["steps"] == 5


# ---------------------------------------------------------------------------------------------- names, FS errors


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs", "x" * 300])
def test_run_names_cannot_leave_the_output_folder(tmp_path, capsys, name):
    cfg = write_cfg(tmp_path, tiny_cfg(**{"out_dir": str(tmp_path / "runs")}))
    code, _, err = cli(["train", "--config", str(cfg), f"name={name}"], capsys)
    assert code != 0 and "must be a plain folder name" in one_line(err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


def test_file_system_errors_are_one_line(finished, tmp_path, capsys):
    cfg = write_cfg(tmp_path, tiny_cfg())
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = cli(["train", "--config", str(cfg), "--out", str(a_file)], capsys)
    assert code != 0 and "is a file, not a folder" in one_line(err) and a_file.read_text() == "x"
    code, _, err = cli(["train", "--config", str(cfg), "--out", str(a_file / "run")], capsys)
    assert code != 0 and "Not a directory" in one_line(err)
    code, _, err = cli(["report", str(finished), "--out", str(tmp_path / ("n" * 300))], capsys)
    assert code != 0 and "File name too long" in one_line(err)
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code, _, err = cli(["train", "--config", str(cfg), "--out", str(ro / "run")], capsys)
        assert code != 0 and "Permission denied" in one_line(err)


def test_debug_shows_the_file_system_traceback(tmp_path):
    cfg = write_cfg(tmp_path, tiny_cfg())
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError):
        main(["train", "--debug", "--config", str(cfg), "--out", str(a_file / "run")])


# ---------------------------------------------------------------------------------------------- logging


def test_one_plain_line_per_epoch_without_a_bar(tmp_path, capsys):
    for progress in ("false", "true"):  # under pytest standard error is not a terminal: no bar either way
        train(tiny_cfg(**{"train.progress": progress, "train.epochs": 3}), out=str(tmp_path / progress))
        out, err = capsys.readouterr()
        lines = [x for x in out.splitlines() if x.startswith("epoch ")]
        assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3"], out
        assert "\r" not in out + err and "test top-1" in lines[-1]
        assert all("loss " in x and "img/s" in x for x in lines)


def test_the_bar_is_only_drawn_on_a_terminal():
    from longtail.engine.logging import bar_wanted

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert bar_wanted(True, Stream(True)) and not bar_wanted(True, Stream(False))
    assert not bar_wanted(False, Stream(True))


def test_epoch_line_rounds():
    from longtail.engine.logging import epoch_line

    line = epoch_line({"epoch": 2, "step": 20, "loss": 1.234567891, "train_acc": 45.6789, "lr": 0.0123456789,
                       "seconds": 3.14159, "images_per_s": 1234.567, "top1": 80.123456, "many": 90.0,
                       "medium": None, "few": 70.55555}, 10)
    assert line == ("epoch 2/10  step 20  loss 1.2346  train acc 45.7%  lr 0.01235  3.1 s  1235 img/s  "
                    "| test top-1 80.12 (Many/Medium/Few 90.00 / — / 70.56)")
