"""`longtail compare`: grouping by the whole configuration except the seed, the formats, the figure."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml
from matplotlib.container import BarContainer
from PIL import Image
from test_report import _rows, make_run
from test_train import quiet, tiny_cfg

from longtail.cli import main
from longtail.errors import LongtailError, OutputExistsError
from longtail.report import compare_runs, group_runs, load_summary, write_comparison
from longtail.report.compare_plot import comparison_figure
from longtail.report.figures import texts, title_of
from longtail.report.identity import IGNORED

METRICS = ("top1", "many", "medium", "few", "ece")


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _lr_sweep(root: Path) -> dict[float, list[Path]]:
    """Two seeds at each of two learning rates; nothing else differs."""
    return {lr: [make_run(root, f"lr{lr}_s{s}", seed=s, config={"optim.lr": lr}) for s in (0, 1)]
            for lr in (0.1, 0.05)}


def _differences(table: str) -> dict[str, list[str]]:
    section = table.split("## Differences")[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")][2:]
    return {cells[0]: cells[1:] for cells in (ln.strip("| ").split(" | ") for ln in lines)}


# ---------------------------------------------------------------------------------------------------
# grouping


def test_runs_differing_only_in_lr_are_two_groups_never_averaged(tmp_path: Path) -> None:
    sweep = _lr_sweep(tmp_path)
    table = compare_runs([sweep[0.1][0], sweep[0.05][0], sweep[0.1][1], sweep[0.05][1]])
    rows = _rows(table)
    assert len(rows) == 2 and [r[1] for r in rows] == ["2", "2"]
    for row, lr in zip(rows, (0.1, 0.05)):
        assert row[0].endswith(f"· optim.lr={lr}")
        top1 = [load_summary(d)["top1"] for d in sweep[lr]]
        assert row[2] == f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}"
    assert _differences(table) == {"optim.lr": ["0.1", "0.05"]}
    header = next(ln for ln in table.split("## Differences")[1].splitlines() if ln.startswith("| setting"))
    assert header == "| setting | optim.lr=0.1 | optim.lr=0.05 |"


def test_two_lrs_with_the_same_seed_are_not_refused(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "a", seed=0, config={"optim.lr": 0.1}),
            make_run(tmp_path, "b", seed=0, config={"optim.lr": 0.2})]
    assert [r[1] for r in _rows(compare_runs(runs))] == ["1", "1"]


def test_same_configuration_and_seed_is_refused_naming_both(tmp_path: Path) -> None:
    a = make_run(tmp_path, "first", seed=3, config={"optim.lr": 0.1})
    b = make_run(tmp_path, "second", seed=3, config={"optim.lr": 0.1, "data.root": "/elsewhere"})
    with pytest.raises(LongtailError, match="same configuration and seed 3") as e:
        compare_runs([a, b])
    assert str(a) in str(e.value) and str(b) in str(e.value)
    with pytest.raises(LongtailError, match="is given twice"):
        compare_runs([a, tmp_path / "." / "first"])


def test_different_lengths_are_separate_groups(tmp_path: Path) -> None:
    full = [make_run(tmp_path, f"full_s{s}", seed=s, steps=400, completed_epochs=5.0) for s in (0, 1)]
    short = make_run(tmp_path, "short_s2", seed=2, steps=10, completed_epochs=0.125,
                     config={"train.max_steps": 10})
    table = compare_runs([*full, short])
    rows = _rows(table)
    assert [r[1] for r in rows] == ["2", "1"]
    assert "0.125 of 5 ep" in rows[1][0] and "train.max_steps=10" in rows[1][0]
    assert "5 ep" in rows[0][0] and "of 5 ep" not in rows[0][0]
    diff = _differences(table)
    assert diff["train.max_steps"] == ["null", "10"] and diff["steps"] == ["400", "10"]
    assert diff["completed_epochs"] == ["5", "0.125"]

    # the same configuration, but one run has another length (e.g. made by an older toolbox): still apart
    a = make_run(tmp_path, "len_a", seed=0, steps=400)
    b = make_run(tmp_path, "len_b", seed=1, steps=390)
    rows = _rows(compare_runs([a, b]))
    assert [r[1] for r in rows] == ["1", "1"] and rows[0][0].endswith("steps=400")


def test_settings_that_do_not_change_the_experiment_are_ignored(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", seed=0)
    b = make_run(tmp_path, "b", seed=1, config={
        "name": "other", "out_dir": "/x", "device": "cuda", "data.root": "/data", "data.num_workers": 4,
        "data.check_images": False, "train.progress": False, "train.eval_every": 1, "eval.batch_size": 64,
        "train.compile": True, "optim.impl": "foreach", "plugins": ["my_plugin.py"]})
    rows = _rows(compare_runs([a, b]))
    assert [r[1] for r in rows] == ["2"]
    for key in ("data.root", "train.eval_every", "eval.batch_size", "train.seed", "name"):
        assert key in IGNORED


def test_compare_never_imports_a_runs_plugin_and_compares_its_method_parameters(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    plugin = tmp_path / "plug.py"
    plugin.write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    runs = [make_run(tmp_path, f"p{s}", seed=s, method="my_method",
                     config={"plugins": [str(plugin)], "method.alpha_x": a}) for s, a in ((0, 1.0), (1, 1.0), (2, 2.0))]
    table = compare_runs(runs)
    assert not marker.exists()
    assert [r[1] for r in _rows(table)] == ["2", "1"]
    assert _differences(table) == {"method.alpha_x": ["1", "2"]}


def test_older_config_without_newer_keys_groups_with_a_new_one(tmp_path: Path) -> None:
    old = make_run(tmp_path, "old", seed=0)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    del cfg["eval"]["many_above"], cfg["eval"]["few_below"], cfg["data"]["randaugment_mstd"]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    new = make_run(tmp_path, "new", seed=1)
    assert [r[1] for r in _rows(compare_runs([old, new]))] == ["2"]
    bad = make_run(tmp_path, "bad", seed=2)
    (bad / "config.yaml").write_text("optim: [unclosed")
    with pytest.raises(LongtailError, match="bad/config.yaml is not valid YAML"):
        compare_runs([new, bad])


def test_runs_without_config_fall_back_to_the_summary_tags(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, f"x{s}", seed=s, sampler="instance") for s in (0, 1, 2)]
    runs.append(make_run(tmp_path, "y0", seed=0, sampler="class_balanced"))
    for r in runs:
        (r / "config.yaml").unlink()
    table = compare_runs(runs)
    assert [r[1] for r in _rows(table)] == ["3", "1"]
    assert _differences(table) == {"sampler": ["instance", "class_balanced"]}


def _decouple_run(root: Path, name: str, seed: int, stage2_seed: int = 0, lr: float = 0.2) -> Path:
    run = make_run(root, name, seed=seed, method="ce+crt", kind="decouple",
                   stage2={"method": "crt", "source_run": f"/runs/ce_s{seed}", "features_dir": f"/f/{seed}"})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["method"] = {"name": "ce"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "decouple.yaml").write_text(yaml.safe_dump({"epochs": 10, "lr": lr, "seed": stage2_seed}))
    return run


def test_decouple_runs_group_by_both_stages(tmp_path: Path) -> None:
    runs = [_decouple_run(tmp_path, f"crt_s{s}", s) for s in (0, 1)]
    runs.append(_decouple_run(tmp_path, "crt_lr", 0, lr=0.5))
    runs.append(_decouple_run(tmp_path, "crt_s0_again", 0, stage2_seed=1))  # another stage-2 seed
    table = compare_runs(runs)
    rows = _rows(table)
    assert [r[1] for r in rows] == ["3", "1"]
    assert rows[0][7].startswith("s0/0: ") and "s0/1: " in rows[0][7] and "s1/0: " in rows[0][7]
    assert _differences(table) == {"decouple.lr": ["0.2", "0.5"]}
    twin = _decouple_run(tmp_path, "crt_twin", 1)
    with pytest.raises(LongtailError, match="same configuration and seed 1/0"):
        compare_runs([runs[1], twin])


def _dlsa_run(root: Path, name: str, source_seed: Any, dlsa_seed: int = 0, clusters: int = 10) -> Path:
    feats = root / f"features_{name}"
    if source_seed is not None:
        feats.mkdir()
        (feats / "features.json").write_text(json.dumps({"seed": source_seed}))
    run = make_run(root, name, seed=dlsa_seed, method="ce+dlsa", kind="dlsa", feature_source=str(feats),
                   stages=[{"stage": 1, "kind": "regular", "test_count": 200}])
    (run / "config.yaml").write_text(yaml.safe_dump({"num_clusters": clusters, "seed": dlsa_seed,
                                                     "chunk_size": 100 + dlsa_seed}))
    return run


def test_dlsa_runs_on_features_of_different_seeds_are_seeds_of_one_configuration(tmp_path: Path) -> None:
    runs = [_dlsa_run(tmp_path, f"dlsa_src{s}", s) for s in (0, 1)]
    runs.append(_dlsa_run(tmp_path, "dlsa_moved", None))  # its features folder is gone: still its own seed
    runs.append(_dlsa_run(tmp_path, "dlsa_k20", 0, clusters=20))
    table = compare_runs(runs)
    rows = _rows(table)
    assert [r[1] for r in rows] == ["3", "1"]
    assert [p.split(":")[0] for p in rows[0][7].split(", ")] == ["s0/0", "s1/0", "s?/0"]
    assert _differences(table) == {"dlsa.num_clusters": ["10", "20"]}
    with pytest.raises(LongtailError, match="same configuration and seed 0/0"):
        compare_runs([runs[0], _dlsa_run(tmp_path, "dlsa_again", 0)])


def test_mixed_kinds_list_what_differs_and_summarise_kind_only_settings(tmp_path: Path) -> None:
    train = make_run(tmp_path, "ce_s0", seed=0)
    dlsa = _dlsa_run(tmp_path, "dl", 0)
    table = compare_runs([train, dlsa])
    diff = _differences(table)
    assert diff["kind"] == ["train", "dlsa"]
    assert "dlsa.num_clusters" not in diff and "optim.lr" not in diff
    assert "settings that only some run kinds have" in table and "dlsa.*" in table
    data = json.loads(compare_runs([train, dlsa], fmt="json"))
    assert "dlsa.num_clusters" in data["kind_only_keys"] and "optim.lr" in data["kind_only_keys"]
    assert data["groups"][1]["identity"]["dlsa.num_clusters"] == 10
    assert "dlsa.chunk_size" not in data["groups"][1]["identity"]


# ---------------------------------------------------------------------------------------------------
# formats


def _sweep_with_short_run(root: Path) -> list[Path]:
    sweep = _lr_sweep(root)
    return [*sweep[0.1], *sweep[0.05], make_run(root, "one", seed=0, config={"optim.lr": 0.2})]


def test_csv_one_row_per_group_with_means_stds_and_differing_keys(tmp_path: Path) -> None:
    runs = _sweep_with_short_run(tmp_path)
    rows = list(csv.DictReader(io.StringIO(compare_runs(runs, fmt="csv"))))
    assert len(rows) == 3
    assert [r["optim.lr"] for r in rows] == ["0.1", "0.05", "0.2"]
    assert [r["n_seeds"] for r in rows] == ["2", "2", "1"] and rows[0]["seeds"] == "0;1"
    for row, group in zip(rows, (runs[:2], runs[2:4], runs[4:])):
        sums = [load_summary(d) for d in group]
        for key in METRICS:
            vals = [s[key] for s in sums if s[key] is not None]
            if not vals:
                assert row[f"{key}_mean"] == "" and row[f"{key}_std"] == ""
                continue
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.mean(vals), abs=1e-6)
            if len(vals) > 1:
                assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(vals), abs=1e-6)
            else:
                assert row[f"{key}_std"] == ""
        per_seed = dict(p.split("=") for p in row["top1_per_seed"].split(";"))
        assert {k: float(v) for k, v in per_seed.items()} == pytest.approx(
            {f"s{s['seed']}": s["top1"] for s in sums}, abs=1e-6)


def test_json_groups_with_identity_runs_means_and_sample_stds(tmp_path: Path) -> None:
    runs = _sweep_with_short_run(tmp_path)
    data = json.loads(compare_runs(runs, fmt="json"))
    assert data["differing_keys"] == ["optim.lr"]
    assert [g["differences"] for g in data["groups"]] == [{"optim.lr": 0.1}, {"optim.lr": 0.05}, {"optim.lr": 0.2}]
    g = data["groups"][0]
    assert g["identity"]["optim.lr"] == 0.1 and g["identity"]["kind"] == "train"
    assert "train.seed" not in g["identity"] and "data.root" not in g["identity"]
    assert g["seeds"] == [0, 1] and [r["run"] for r in g["runs"]] == [str(p) for p in runs[:2]]
    sums = [load_summary(d) for d in runs[:2]]
    assert [r["top1"] for r in g["runs"]] == [s["top1"] for s in sums]
    for key in ("top1", "many", "ece"):
        vals = [s[key] for s in sums]
        assert g["mean"][key] == pytest.approx(statistics.mean(vals))
        assert g["std"][key] == pytest.approx(statistics.stdev(vals))
    assert g["mean"]["few"] is None and g["std"]["few"] is None  # no Few class
    single = data["groups"][2]
    assert single["n_seeds"] == 1 and single["std"]["top1"] is None
    assert single["mean"]["top1"] == load_summary(runs[4])["top1"]


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LongtailError, match="format must be one of markdown, csv, json"):
        compare_runs([make_run(tmp_path, "a")], fmt="xml")


# ---------------------------------------------------------------------------------------------------
# the CLI: --out, --plot, refusals


def test_cli_out_writes_refuses_and_overwrites(tmp_path: Path, capsys) -> None:
    runs = [str(p) for p in _sweep_with_short_run(tmp_path)]
    out = tmp_path / "cmp.csv"
    code, stdout, _ = _cli(["compare", *runs, "--format", "csv", "--out", str(out)], capsys)
    assert code == 0 and stdout == f"wrote {out}\n"
    assert len(list(csv.DictReader(out.open()))) == 3
    before = out.read_bytes()
    code, stdout, err = _cli(["compare", *runs[:2], "--out", str(out)], capsys)
    assert code != 0 and stdout == ""
    assert err.startswith("longtail: error: ") and "already holds a comparison; pass --overwrite" in err
    assert err.count("\n") == 1 and out.read_bytes() == before
    assert _cli(["compare", *runs[:2], "--out", str(out), "--overwrite"], capsys)[0] == 0
    assert out.read_text().startswith("| config | seeds |")

    code, stdout, err = _cli(["compare", *runs, "--format", "json"], capsys)
    assert code == 0 and len(json.loads(stdout)["groups"]) == 3 and err == ""
    code, _, err = _cli(["compare", *runs, "--out", str(tmp_path)], capsys)
    assert code != 0 and "is a folder" in err


def test_cli_plot_writes_png_and_pdf_and_refuses_existing(tmp_path: Path, capsys) -> None:
    runs = [str(p) for p in _sweep_with_short_run(tmp_path)]
    png = tmp_path / "figs" / "cmp.png"
    code, stdout, err = _cli(["compare", *runs, "--plot", str(png)], capsys)
    assert code == 0 and stdout.startswith("| config | seeds |")  # the table stays clean on stdout
    assert err == f"wrote {png}\nwrote {png.with_suffix('.pdf')}\n"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 1000 and min(im.info["dpi"]) >= 199
    assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    before = png.read_bytes()

    code, _, err = _cli(["compare", *runs, "--plot", str(png)], capsys)
    assert code != 0 and "cmp.png already holds a figure; pass --overwrite" in err and png.read_bytes() == before
    png.unlink()  # the PDF alone is refused too: nothing is half-replaced
    code, _, err = _cli(["compare", *runs, "--plot", str(png)], capsys)
    assert code != 0 and "cmp.pdf already holds a figure" in err and not png.exists()
    assert _cli(["compare", *runs, "--plot", str(png), "--overwrite"], capsys)[0] == 0 and png.is_file()

    code, _, err = _cli(["compare", *runs, "--plot", str(tmp_path / "cmp.jpg")], capsys)
    assert code != 0 and "--plot needs a file name ending in .png" in err
    code, _, err = _cli(["compare", *runs, "--plot", str(tmp_path / "x.png"), "--out", str(tmp_path / "x.png")],
                        capsys)
    assert code != 0 and "name the same file" in err and not (tmp_path / "x.png").exists()


def test_nothing_is_written_when_a_run_is_bad(tmp_path: Path) -> None:
    ok = make_run(tmp_path, "ok")
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(LongtailError, match="unfinished has no summary.json"):
        write_comparison([ok, tmp_path / "unfinished"], out=tmp_path / "t.md", plot=tmp_path / "p.png")
    assert not any(tmp_path.glob("t.md")) and not any(tmp_path.glob("p.*"))
    (tmp_path / "t.md").write_text("kept")
    with pytest.raises(OutputExistsError):
        write_comparison([ok], out=tmp_path / "t.md")
    assert (tmp_path / "t.md").read_text() == "kept"


def test_comparison_figure_bands_error_bars_and_empty_groups(tmp_path: Path) -> None:
    runs = _sweep_with_short_run(tmp_path)
    cmp = group_runs(runs)
    fig = comparison_figure(cmp.groups)
    assert "Comparison of 3 configurations on cifar10 ρ=100" in title_of(fig)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == ["optim.lr=0.1 (2 seeds)", "optim.lr=0.05 (2 seeds)", "optim.lr=0.2 (1 seed)"]
    ax, bars = fig.axes
    assert ax.get_xscale() == "log"
    assert len(ax.collections) == 2  # a std band for each group with two seeds, none for the single seed
    for i, line in enumerate(ax.lines[:3]):
        sums = [load_summary(r.path) for r in cmp.groups[i].runs]
        order = sorted(range(10), key=lambda c: sums[0]["train_counts"][c])
        want = [statistics.mean(s["per_class"][c] for s in sums) for c in order]
        assert list(line.get_ydata()) == pytest.approx(want)
    containers = [c for c in bars.containers if isinstance(c, BarContainer)]
    heights = [[p.get_height() for p in c.patches] for c in containers]
    # Many, Medium, Overall for each group: Few has no class, so no bar (and no zero-height bar)
    assert len(containers) == 9
    g0 = [load_summary(r.path) for r in cmp.groups[0].runs]
    assert heights[0] == [pytest.approx(statistics.mean(s["many"] for s in g0))]
    with_err = [c for c in containers if c.errorbar is not None]
    assert len(with_err) == 6  # the single-seed group's three bars have no error bar
    assert texts(fig).count("—") == 3  # the empty Few group, once per configuration


# ---------------------------------------------------------------------------------------------------
# one real run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    from longtail.engine.run import train

    out = tmp_path_factory.mktemp("real") / "digits_s0"
    train(tiny_cfg(**{"train.epochs": 1}), out=str(out), echo=quiet)
    return out


def test_real_runs_compare_by_their_config(real_run: Path, tmp_path: Path, capsys) -> None:
    def variant(name: str, **keys: Any) -> Path:
        dst = tmp_path / name
        shutil.copytree(real_run, dst)
        cfg = yaml.safe_load((dst / "config.yaml").read_text())
        for key, value in keys.items():
            section, leaf = key.split(".")
            cfg[section][leaf] = value
        (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        return dst

    runs = [real_run, variant("s1", **{"train.seed": 1}), variant("lr", **{"optim.lr": 0.2}),
            variant("where", **{"train.seed": 2, "data.root": "/mnt/data", "train.progress": True})]
    code, out, _ = _cli(["compare", *map(str, runs), "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert [g["n_seeds"] for g in data["groups"]] == [3, 1]
    assert data["differing_keys"] == ["optim.lr"]
    assert data["groups"][0]["identity"]["data.name"] == "digits"
    assert data["groups"][0]["identity"]["steps"] == load_summary(real_run)["steps"]


def test_the_documentation_lists_every_ignored_key() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reporting.md").read_text()
    section = doc.split("These keys do not change the experiment")[1].split("\n\n")[1]
    table = {ln.split("|")[1].strip().strip("`") for ln in section.splitlines() if ln.startswith("| `")}
    assert table == set(IGNORED)


def test_every_ignored_key_is_a_real_setting() -> None:
    """A renamed config key must not silently start splitting (or merging) groups."""
    import dataclasses

    from longtail.config import Config, to_dict
    from longtail.report.identity import flatten
    from longtail.stage2.decouple import DecoupleConfig
    from longtail.stage2.dlsa.config import DLSAConfig

    keys = set(flatten(to_dict(Config())))
    keys |= {f"decouple.{f.name}" for f in dataclasses.fields(DecoupleConfig)}
    keys |= {f"dlsa.{f.name}" for f in dataclasses.fields(DLSAConfig)}
    assert set(IGNORED) <= keys, set(IGNORED) - keys
