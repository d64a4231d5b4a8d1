"""Run reports and multi-seed comparison on hand-made run directories."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from longtail.cli import main
from longtail.config import Config, to_dict
from longtail.data.splits import lt_counts
from longtail.errors import LongtailError, OutputExistsError
from longtail.metrics import evaluate_logits
from longtail.report import compare_runs, load_metrics, load_summary, mean_std, method_label, plots, write_report
from longtail.report.figures import texts, title_of
from longtail.report.report import FIGURES, report_figures

COUNTS = lt_counts(5000, 10, 100)  # 5000 ... 50: 8 Many, 2 Medium, no Few class
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


#: summary tags and the config keys they come from: a hand-made run's config.yaml agrees with its summary
TAG_KEYS = {"dataset": "data.name", "imbalance": "data.imbalance", "method": "method.name",
            "backbone": "model.backbone", "batch_size": "train.batch_size", "augment": "data.augment",
            "posthoc_tau": "eval.posthoc_tau"}


def make_run(root: Path, name: str, seed: int = 0, method: str = "ce", epochs: int = 5,
             metrics: bool = True, config: Optional[dict[str, Any]] = None, **overrides: Any) -> Path:
    """A finished run folder as the trainer writes it, with metrics computed from random logits.

    ``overrides`` replace summary entries (tags among them also go to config.yaml); ``config`` sets
    further dotted config keys, e.g. ``{"optim.lr": 0.05}``.
    """
    run = root / name
    run.mkdir(parents=True)
    cfg = to_dict(Config(name=name))
    settings = {"train.seed": seed, "train.epochs": epochs, "method.name": method,
                **{TAG_KEYS[k]: v for k, v in overrides.items() if k in TAG_KEYS}, **(config or {})}
    for key, value in settings.items():
        section, _, leaf = key.rpartition(".")
        (cfg[section] if section else cfg)[leaf] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    g = torch.Generator().manual_seed(100 + seed + 7 * len(method))
    targets = torch.arange(10).repeat(20)
    logits = torch.randn(200, 10, generator=g)
    logits[torch.arange(200), targets] += torch.linspace(2.5, 0.0, 10)[targets]  # head classes easier
    m = evaluate_logits(logits, targets, COUNTS)
    summary = {
        "name": name, "dataset": "cifar10", "imbalance": 100.0, "method": method, "backbone": "resnet32",
        "epochs": epochs, "batch_size": 128, "augment": "standard", "seed": seed, "selection": "last",
        "top1": m["top1"], "top5": m["top5"], "many": m["many"], "medium": m["medium"], "few": m["few"],
        "per_class": m["per_class"], "ece": m["ece"], "calibration": m["calibration"],
        "train_counts": COUNTS, "class_names": NAMES, "shots": {"many": 8, "medium": 2, "few": 0},
        "wall_seconds": 123.4, "device": "cpu", "torch": torch.__version__, "commit": "abc1234",
        "data_verified": True, "posthoc_tau": 0.0, "steps": 400,
    }
    summary.update(overrides)
    (run / "summary.json").write_text(json.dumps(summary))
    if metrics:
        lines = []
        for e in range(1, epochs + 1):
            rec = {"epoch": e, "step": 80 * e, "lr": 0.1 * e / epochs, "loss": 2.3 / e, "train_acc": 10.0 * e,
                   "seconds": 1.5, "images_per_s": 9000.0, "loss_ce": 2.3 / e}
            if e % 2 == 1:
                rec.update(top1=8.0 * e, many=10.0 * e, medium=5.0 * e, few=None, ece=3.0)
            lines.append(json.dumps(rec))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _check_png(path: Path) -> None:
    assert path.stat().st_size > 5000, f"{path.name} is suspiciously small"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= 300 and im.size[1] >= 300
        im.load()
        # not a blank canvas: at least a few distinct colours were drawn
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10


# ---------------------------------------------------------------------------------------------------
# write_report


def test_write_report_files_and_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path, "cifar10_r100_ce_s0")
    s = json.loads((run / "summary.json").read_text())
    path = write_report(run)
    assert path == run / "report" / "report.md"
    for png in ("per_class_vs_count.png", "shot_groups.png", "reliability.png", "curves.png"):
        _check_png(run / "report" / png)

    with (run / "report" / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == NAMES
    assert [int(r["train_count"]) for r in rows] == COUNTS
    assert [r["group"] for r in rows] == ["many"] * 8 + ["medium"] * 2
    np.testing.assert_allclose([float(r["accuracy"]) for r in rows], s["per_class"], atol=1e-4)

    md = path.read_text()
    assert "# Run report: cifar10_r100_ce_s0" in md
    results = md.split("## Results")[1].split("\n\n")[1]  # the results table
    values = results.splitlines()[2].strip("| ").split(" | ")
    assert values == [f"{s['top1']:.2f}", f"{s['many']:.2f}", f"{s['medium']:.2f}", "—",
                      f"{s['top5']:.2f}", f"{s['ece']:.2f}"]
    assert "Few (0 classes)" in results
    for tag in ("| dataset | cifar10 |", "| imbalance ρ | 100 |", "| backbone | resnet32 |", "| method | ce |",
                "| epochs | 5 |", "| batch size | 128 |", "| augmentation | standard |", "| selection rule | last |",
                "| seed | 0 |", "| commit | abc1234 |", "| data verified | yes |", "| split generator | exp, split seed 0 |"):
        assert tag in md, tag
    for png in ("per_class_vs_count.png", "shot_groups.png", "reliability.png", "curves.png"):
        assert f"]({png})" in md
    assert f"| 9 | truck | 50 | medium | {s['per_class'][9]:.2f} |" in md


def test_report_absent_class_and_no_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", metrics=False)
    s = json.loads((run / "summary.json").read_text())
    s["per_class"][9] = None  # class absent from the test set
    (run / "summary.json").write_text(json.dumps(s))
    (run / "config.yaml").unlink()
    (run / "report").mkdir()
    (run / "report" / "curves.png").write_bytes(b"stale")  # from an earlier report
    md = write_report(run).read_text()
    assert not (run / "report" / "curves.png").exists()
    assert "curves.png" not in md and "split generator" not in md
    assert "| 9 | truck | 50 | medium | — |" in md
    with (run / "report" / "per_class.csv").open() as f:
        assert list(csv.DictReader(f))[9]["accuracy"] == ""
    _check_png(run / "report" / "per_class_vs_count.png")


def test_report_tolerates_cut_off_last_metrics_line(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 6, "lo')
    write_report(run)
    _check_png(run / "report" / "curves.png")


def test_bbl_is_labelled_reconstruction(tmp_path: Path) -> None:
    md = write_report(make_run(tmp_path, "b", method="bbl", metrics=False)).read_text()
    assert "| method | BBL (reconstruction) |" in md
    assert method_label("bbl_drw") == "BBL (reconstruction): bbl_drw"
    assert method_label("ldam_drw") == "ldam_drw"


def test_bad_run_dirs(tmp_path: Path) -> None:
    with pytest.raises(LongtailError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LongtailError, match="has no summary.json: is it a finished run"):
        write_report(tmp_path / "empty")

    run = make_run(tmp_path, "bad")
    (run / "summary.json").write_text('{"top1": 5')
    with pytest.raises(LongtailError, match="not valid JSON"):
        write_report(run)
    (run / "summary.json").write_text(json.dumps({"top1": None, "per_class": [], "train_counts": []}))
    with pytest.raises(LongtailError, match="lacks top1: the run bad did not finish"):
        write_report(run)
    (run / "summary.json").write_text(json.dumps({"top1": 50.0, "per_class": [1.0], "train_counts": [1, 2]}))
    with pytest.raises(LongtailError, match="same length"):
        write_report(run)

    run = make_run(tmp_path, "bad_metrics")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(LongtailError, match="metrics.jsonl line 2 is not valid JSON"):
        write_report(run)

    run = make_run(tmp_path, "bad_config")
    (run / "config.yaml").write_text("data: [unclosed")
    with pytest.raises(LongtailError, match="config.yaml is not valid YAML"):
        write_report(run)


# ---------------------------------------------------------------------------------------------------
# compare_runs


def _rows(table: str) -> list[list[str]]:
    """The rows of the first table (the configurations; a Differences table may follow)."""
    first = table.split("\n\n")[0]
    lines = [ln for ln in first.splitlines() if ln.startswith("| ")]
    return [ln.strip("| ").split(" | ") for ln in lines[2:]]  # skip the header and the rule


def test_compare_mean_sample_std_and_per_seed(tmp_path: Path) -> None:
    a = [make_run(tmp_path, f"ce_s{s}", seed=s) for s in (2, 0, 1)]
    b = make_run(tmp_path, "la_s0", seed=0, method="la", posthoc_tau=1.0, epochs=5)
    table = compare_runs([*a, b])
    rows = _rows(table)
    assert len(rows) == 2
    sums = {s: load_summary(d) for s, d in zip((2, 0, 1), a)}
    ce = rows[0]
    assert ce[0] == "cifar10 ρ=100 · ce · resnet32 · 5 ep · bs 128 · standard · last"
    assert ce[1] == "3"
    for col, key in zip(ce[2:7], ("top1", "many", "medium", "few", "ece")):
        if key == "few":
            assert col == "—"
            continue
        v = np.array([sums[s][key] for s in (0, 1, 2)])
        assert col == f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
    assert ce[7] == ", ".join(f"s{s}: {sums[s]['top1']:.2f}" for s in (0, 1, 2))
    la = rows[1]
    assert la[0].endswith("· τ=1") and la[1] == "1"
    assert la[2] == f"{load_summary(b)['top1']:.2f} ± —"
    assert "abc1234" in table


def test_compare_groups_ignore_only_the_seed(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "x0", seed=0), make_run(tmp_path, "x1", seed=1, batch_size=256),
            make_run(tmp_path, "x2", seed=2, imbalance=100)]  # int 100 == float 100.0
    rows = _rows(compare_runs(runs))
    assert [r[1] for r in rows] == ["2", "1"]
    assert "bs 256" in rows[1][0]


def test_compare_errors(tmp_path: Path) -> None:
    with pytest.raises(LongtailError, match="at least one run folder"):
        compare_runs([])
    ok = make_run(tmp_path, "ok")
    unfinished = tmp_path / "half_done"
    unfinished.mkdir()
    with pytest.raises(LongtailError, match="half_done has no summary.json"):
        compare_runs([ok, unfinished])
    twin = make_run(tmp_path, "ok_again", seed=0)
    with pytest.raises(LongtailError, match="same configuration and seed 0"):
        compare_runs([ok, twin])


def test_mean_std_formats() -> None:
    assert mean_std([None, None]) == "—"
    assert mean_std([70.0]) == "70.00 ± —"
    vals = [70.1, 70.5, 69.2]
    assert mean_std(vals) == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
    assert mean_std([1.0, None, 3.0]) == f"2.00 ± {np.std([1.0, 3.0], ddof=1):.2f} (2 of 3)"


# ---------------------------------------------------------------------------------------------------
# paper-ready figures

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _tick_labels(fig, ax, minor: bool = False) -> list[str]:
    FigureCanvasAgg(fig).draw()
    lo, hi = ax.get_xlim()
    return [t.get_text() for t in ax.get_xticklabels(minor=minor) if lo <= t.get_position()[0] <= hi]


def test_every_figure_is_png_and_pdf_with_the_run_name_as_title(tmp_path: Path) -> None:
    run = make_run(tmp_path, "cifar10_r100_ce_s0")
    md = write_report(run).read_text()
    out = run / "report"
    for stem in ("per_class_vs_count", "shot_groups", "reliability", "curves"):
        _check_png(out / f"{stem}.png")
        with Image.open(out / f"{stem}.png") as im:
            assert min(im.info["dpi"]) >= 199, im.info["dpi"]
            assert im.info["Title"] == "cifar10_r100_ce_s0"
        pdf = (out / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/Title (cifar10_r100_ce_s0)" in pdf
        assert f"({stem}.pdf)" in md


def test_figure_titles_name_the_run_and_the_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path, "folder_name")
    s = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**s, "name": "quickstart"}))
    figs = report_figures(load_summary(run), None, "quickstart (folder_name)")
    assert set(figs) == {"per_class_vs_count", "shot_groups", "reliability"}  # no metrics: no curves
    for fig in figs.values():
        assert title_of(fig) == "quickstart (folder_name)"
    write_report(run)
    with Image.open(run / "report" / "shot_groups.png") as im:
        assert im.info["Title"] == "quickstart (folder_name)"
    assert "# Run report: quickstart (folder_name)" in (run / "report" / "report.md").read_text()


def test_per_class_plot_ticks_names_and_thresholds_from_the_rule() -> None:
    counts = [5000, 2000, 800, 300, 120, 60, 20, 9, 3, 1]
    acc = [90.0, 85.0, 80.0, 70.0, 60.0, 50.0, None, 20.0, 10.0, 0.0]
    names = [f"class_{c}" for c in range(10)]
    rule = plots.ShotRule(many_above=500, few_below=10)
    groups = ["many"] * 3 + ["medium"] * 4 + ["few"] * 3
    fig = plots.per_class_vs_count(counts, acc, groups, "run_x", rule=rule, names=names)
    ax = fig.axes[0]
    assert _tick_labels(fig, ax) == ["1", "10", "100", "1000", "10000"]
    lo, hi = ax.get_xlim()
    assert lo < 1 and hi > 5000  # no point on the frame
    assert set(_tick_labels(fig, ax, minor=True)) <= {""}  # no cluttered minor labels
    drawn = texts(fig)
    assert [n for n in names if n in drawn] == [n for n, a in zip(names, acc) if a is not None]
    vlines = sorted(line.get_xdata()[0] for line in ax.lines)
    assert vlines == [10, 500]
    assert "shot-group boundaries: n = 10, 500" in drawn

    many = [f"c{i}" for i in range(30)]
    fig = plots.per_class_vs_count([100 + i for i in range(30)], [50.0] * 30, ["medium"] * 30, "t", names=many)
    assert not any(n in texts(fig) for n in many)  # 30 classes: no names on the points
    ax = fig.axes[0]
    labels = [t for t in _tick_labels(fig, ax) if t]
    assert labels and all(t.isdigit() for t in labels)  # a narrow range still gets plain numbers


def test_reliability_shows_the_count_of_each_bin(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", metrics=False)
    s = load_summary(run)
    fig = plots.reliability(s["calibration"], s["ece"], "r")
    counts_ax = fig.axes[1]
    shown = [int(t.get_text()) for t in counts_ax.texts]
    assert shown == [c for c in s["calibration"]["count"] if c > 0]
    assert sum(shown) == 200
    assert f"ECE {s['ece']:.2f}%" in fig.axes[0].get_title()


def _dlsa_log() -> list[dict[str, Any]]:
    rows = []
    for stage, base in ((1, 5.0), (2, 9.0)):
        rows += [{"stage": stage, "phase": "flow", "epoch": e, "loss": base - e, "lh": 1.0, "pur": 0.1, "bal": 0.2,
                  "good_clusters": stage + e, "max_cluster": 40} for e in (1, 2, 3)]
        rows += [{"stage": stage, "phase": "cac", "epoch": e, "loss": base / 10 - 0.1 * e,
                  **({"val_top1": 50.0 + stage} if e == 4 else {})} for e in (1, 2, 3, 4)]
    rows += [{"stage": 0, "phase": "regular", "epoch": e, "loss": 2.0 - 0.2 * e} for e in (1, 2, 3, 4)]
    return rows


def test_dlsa_curves_draw_each_stage_and_phase_as_its_own_line() -> None:
    rows = _dlsa_log()
    series = plots.dlsa_series(rows)
    assert list(series) == ["flow loss", "good clusters", "classifier loss", "classifier val top-1 (%)"]
    assert series["flow loss"] == {"stage 1": ([1, 2, 3], [4.0, 3.0, 2.0]), "stage 2": ([1, 2, 3], [8.0, 7.0, 6.0])}
    assert list(series["classifier loss"]) == ["stage 1", "stage 2", "regular"]
    assert series["classifier loss"]["regular"] == ([1, 2, 3, 4], [1.8, 1.6, 1.4, 1.2])
    assert series["classifier val top-1 (%)"] == {"stage 1": ([4], [51.0]), "stage 2": ([4], [52.0])}

    fig = plots.curves(rows, "dlsa_run")
    assert title_of(fig) == "dlsa_run" and len(fig.axes) == 4
    for ax in fig.axes:  # no empty panel, and every line is one stage's series only
        assert ax.lines, ax.get_title()
        for line in ax.lines:
            xs, ys = series[ax.get_title()][line.get_label()]
            assert list(line.get_xdata()) == xs and list(line.get_ydata()) == ys
    assert not any("not logged" in t or "no evaluation" in t for t in texts(fig))

    only_regular = [r for r in rows if r["phase"] == "regular"]  # ρ = 0: no flow at all
    fig = plots.curves(only_regular, "rho0")
    assert [ax.get_title() for ax in fig.axes] == ["classifier loss"]


def test_curves_leave_out_series_that_were_not_logged(tmp_path: Path) -> None:
    train_log = load_metrics(make_run(tmp_path, "t"))
    fig = plots.curves(train_log, "t")
    assert [ax.get_title() for ax in fig.axes] == ["training loss", "learning rate", "test accuracy (%)"]
    acc = fig.axes[2]
    assert [line.get_label() for line in acc.lines] == ["overall", "Many", "Medium"]  # Few is never logged
    stage2_log = [{"epoch": e, "lr": 0.2 / (e + 1), "loss": 1.0 / (e + 1), "samples": 100} for e in range(3)]
    fig = plots.curves(stage2_log, "crt")
    assert [ax.get_title() for ax in fig.axes] == ["training loss", "learning rate"]
    assert all(ax.lines for ax in fig.axes)
    assert plots.curves([{"epoch": 1, "seconds": 2.0}], "x") is None


def test_dlsa_run_report_has_stage_curves(tmp_path: Path) -> None:
    run = make_run(tmp_path, "dl", metrics=False, kind="dlsa", method="ce+dlsa", stages=[
        {"stage": 1, "kind": "cac", "train_count": 10, "test_count": 20, "filtered_share": {"many": 0.5},
         "accuracy": 40.0, "purity": 0.8, "nmi": 0.5},
        {"stage": 2, "kind": "regular", "train_count": 5, "test_count": 180, "filtered_share": {"many": 0.5},
         "accuracy": 60.0}])
    (run / "config.yaml").write_text("num_clusters: 10\nseed: 0\n")  # a DLSA run's own config
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _dlsa_log()))
    md = write_report(run).read_text()
    for stem in ("curves", "dlsa_stages"):
        _check_png(run / "report" / f"{stem}.png")
        assert (run / "report" / f"{stem}.pdf").is_file()
    assert "| run kind | dlsa |" in md and "## DLSA stages" in md
    stages = load_summary(run)["stages"]
    assert len(plots.dlsa_stages(stages, "dl").axes) == 3  # shares | test samples (+ its accuracy axis)
    for st in stages:
        del st["filtered_share"]
    fig = plots.dlsa_stages(stages, "dl")
    assert [ax.get_title() for ax in fig.axes][0] == "test samples and accuracy per stage"
    assert all(ax.patches or ax.lines for ax in fig.axes)  # no empty panel


def test_report_out_elsewhere_leaves_the_run_report_untouched(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r")
    write_report(run)
    before = _snapshot(run / "report")
    path = write_report(run, out=tmp_path / "paper" / "figs")
    assert path == tmp_path / "paper" / "figs" / "report.md"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        ["report.md", "per_class.csv"] + [f"{f}.{e}" for f in FIGURES[:4] for e in ("png", "pdf")])
    assert _snapshot(run / "report") == before

    other = make_run(tmp_path, "never_reported")
    assert main(["report", str(other), "--out", str(tmp_path / "elsewhere")]) == 0
    assert not (other / "report").exists() and (tmp_path / "elsewhere" / "report.md").is_file()


def test_existing_report_is_refused_and_kept_byte_identical(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "r")
    write_report(run)
    before = _snapshot(run / "report")
    (run / "summary.json").write_text((run / "summary.json").read_text().replace('"commit": "abc1234"',
                                                                                 '"commit": "def5678"'))
    with pytest.raises(OutputExistsError, match=r"report\.md already holds a report; pass --overwrite"):
        write_report(run)
    assert _snapshot(run / "report") == before
    capsys.readouterr()
    assert main(["report", str(run)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("longtail: error: ") and "--overwrite" in err and err.count("\n") == 1
    assert _snapshot(run / "report") == before

    assert main(["report", str(run), "--overwrite"]) == 0
    assert "def5678" in (run / "report" / "report.md").read_text()


def test_overwrite_removes_stale_figures_only(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r")
    write_report(run)
    (run / "report" / "notes.txt").write_text("mine")
    assert (run / "report" / "curves.pdf").is_file()
    (run / "metrics.jsonl").unlink()
    write_report(run, overwrite=True)
    names = {p.name for p in (run / "report").iterdir()}
    assert "curves.png" not in names and "curves.pdf" not in names
    assert {"reliability.png", "reliability.pdf", "notes.txt"} <= names


def test_report_out_must_be_a_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LongtailError, match="is a file; pass a folder"):
        write_report(run, out=tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_tags_class_names_measured_imbalance_and_shot_rule(tmp_path: Path) -> None:
    md = write_report(make_run(tmp_path, "r", metrics=False)).read_text()
    assert "| classes | 10: " + ", ".join(NAMES) + " |" in md
    assert "| imbalance ρ | 100 |" in md
    assert "| measured imbalance | 100.0 (largest / smallest training class) |" in md
    assert "| shot groups | Many n > 100, Medium 20 ≤ n ≤ 100, Few n < 20 |" in md
    assert "Few n < 20 (the protocol's)" in md

    counts = COUNTS[:-1] + [49]  # 5000 / 49: the split is not exactly the configured ρ
    md = write_report(make_run(tmp_path, "r2", metrics=False, train_counts=counts)).read_text()
    assert f"| imbalance ρ | 100 (configured) · {5000 / 49:.1f} (measured) |" in md

    recorded = make_run(tmp_path, "r3", metrics=False, imbalance_measured=None, train_counts=COUNTS[:-1] + [0])
    md = write_report(recorded).read_text()
    assert "| measured imbalance | — (a class has no training image) |" in md

    many = [f"n{i}" for i in range(25)]
    run = make_run(tmp_path, "r4", metrics=False, class_names=many, train_counts=[100] * 25,
                   per_class=[50.0] * 25)
    md = write_report(run).read_text()
    assert "| classes | 25 (names in the per-class table below) |" in md and "| 24 | n24 | 100 |" in md


def test_shot_groups_follow_the_summary_rule(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", metrics=False, shot_rule={"many_above": 1000, "few_below": 100})
    md = write_report(run).read_text()
    assert "| shot groups | Many n > 1000, Medium 100 ≤ n ≤ 1000, Few n < 100 |" in md
    assert "(set by eval.many_above / eval.few_below)" in md
    with (run / "report" / "per_class.csv").open() as f:
        groups = [r["group"] for r in csv.DictReader(f)]
    expected = ["many" if n > 1000 else "few" if n < 100 else "medium" for n in COUNTS]
    assert groups == expected and "few" in groups
    fig = report_figures(load_summary(run), None, "r")["per_class_vs_count"]
    assert sorted(line.get_xdata()[0] for line in fig.axes[0].lines) == [100, 1000]
    assert "No Few class" not in md


def test_empty_shot_group_note(tmp_path: Path) -> None:
    md = write_report(make_run(tmp_path, "cifar_like", metrics=False)).read_text()  # 5000 ... 50: no Few
    note = [ln for ln in md.splitlines() if ln.startswith("> **Note.**")]
    assert len(note) == 1
    assert "No Few class" in note[0] and "Many n > 100, Medium 20 ≤ n ≤ 100, Few n < 20" in note[0]
    assert "`eval.many_above` / `eval.few_below`" in note[0] and "from 50 to 5000" in note[0]

    all_groups = [500, 300, 150, 100, 60, 40, 20, 15, 10, 5]
    md = write_report(make_run(tmp_path, "full", metrics=False, train_counts=all_groups)).read_text()
    assert "> **Note.**" not in md and "No " not in md.split("## Results")[1].split("## Figures")[0]


def test_malformed_shot_rule_and_counts_are_named(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", metrics=False, shot_rule={"many_above": 10, "few_below": 50})
    with pytest.raises(LongtailError, match="summary.json: shot_rule must be"):
        write_report(run)
    assert not (run / "report").exists()
    run = make_run(tmp_path, "r2", metrics=False, train_counts=COUNTS[:-1] + [-1])
    with pytest.raises(LongtailError, match="train_counts must be non-negative numbers"):
        write_report(run)
    assert not (run / "report").exists()
