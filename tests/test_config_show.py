"""Config inheritance (``base:``), ``longtail config show`` (library and CLI), strict suite files, and the
key reference of docs/config.md."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from longtail import config as C
from longtail.cli import main
from longtail.config.listing import value_text
from longtail.errors import ConfigError, LongtailError

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------
# inheritance


BASE = """\
name: from_base
data:
  name: digits
  imbalance: 10
  cutout: 4
method:
  name: bcl
  temperature: 0.2
optim:
  lr: 0.05
  milestones: [10, 20]
train:
  epochs: 30
"""


def test_child_overrides_base_section_by_section(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "base: base.yaml\ndata:\n  imbalance: 50\noptim:\n  milestones: [5]\n"
                                           "train:\n")
    cfg = C.load(child)
    assert cfg.name == "from_base"
    assert (cfg.data.name, cfg.data.imbalance, cfg.data.cutout) == ("digits", 50.0, 4)  # merged key by key
    assert cfg.optim.lr == 0.05 and cfg.optim.milestones == [5]  # a list replaces the base's list
    assert cfg.train.epochs == 30  # an empty section changes nothing
    assert cfg.method.name == "bcl" and cfg.method.temperature == 0.2


def test_method_parameters_merge_while_the_method_stays(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    cfg = C.load(write(tmp_path / "a.yaml", "base: base.yaml\nmethod:\n  alpha: 3.0\n"))
    assert (cfg.method.name, cfg.method.temperature, cfg.method.alpha) == ("bcl", 0.2, 3.0)
    cfg = C.load(write(tmp_path / "b.yaml", "base: base.yaml\nmethod:\n  name: bcl\n  beta: 0.3\n"))
    assert (cfg.method.name, cfg.method.temperature, cfg.method.beta) == ("bcl", 0.2, 0.3)


def test_a_child_that_selects_another_method_replaces_the_method_section(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    cfg = C.load(write(tmp_path / "la.yaml", "base: base.yaml\nmethod:\n  name: la\n  la_tau: 2.0\n"))
    assert cfg.method.name == "la" and cfg.method.la_tau == 2.0
    assert not hasattr(cfg.method, "temperature")  # bcl's parameter was dropped, not carried over
    # a related method starts from its own defaults, not from the base's values for the old method
    cfg = C.load(write(tmp_path / "supcon.yaml", "base: base.yaml\nmethod:\n  name: supcon\n"))
    assert cfg.method.name == "supcon" and cfg.method.temperature == 0.1
    # the base's other sections still apply
    assert cfg.data.imbalance == 10.0 and cfg.optim.lr == 0.05


def test_method_name_override_on_the_command_line_still_checks_the_parameters(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "c.yaml", "base: base.yaml\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="'method.temperature' is not a parameter of method 'la'"):
        C.load(child, ["method.name=la"])
    assert C.load(child, ["method.name=supcon"]).method.temperature == 0.2  # shared: kept


def test_a_list_of_bases_applies_in_order_and_chains_across_folders(tmp_path):
    write(tmp_path / "common.yaml", "data:\n  name: digits\n  imbalance: 10\ntrain:\n  epochs: 7\n")
    write(tmp_path / "sub" / "mid.yaml", "base: ../common.yaml\ntrain:\n  epochs: 8\n  batch_size: 32\n")
    write(tmp_path / "sub" / "other.yaml", "data:\n  name: digits\n  imbalance: 20\noptim:\n  lr: 0.01\n")
    child = write(tmp_path / "sub" / "deep" / "child.yaml",
                  "base: [../mid.yaml, ../other.yaml]\ntrain:\n  batch_size: 16\n")
    cfg, files = C.loading.load_with_files(C.Config, child)
    assert cfg.data.imbalance == 20.0  # the second base overrides the first
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (8, 16, 0.01)
    assert [p.resolve() for p in files] == [(tmp_path / n).resolve() for n in
                                            ("common.yaml", "sub/mid.yaml", "sub/other.yaml", "sub/deep/child.yaml")]


def test_a_shared_base_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", "data:\n  name: digits\n")
    write(tmp_path / "a.yaml", "base: root.yaml\ntrain:\n  epochs: 2\n")
    write(tmp_path / "b.yaml", "base: root.yaml\noptim:\n  lr: 0.2\n")
    cfg = C.load(write(tmp_path / "c.yaml", "base: [a.yaml, b.yaml]\n"))  # a file of only a base is fine
    assert (cfg.data.name, cfg.train.epochs, cfg.optim.lr) == ("digits", 2, 0.2)


def test_an_absolute_base_path(tmp_path):
    base = write(tmp_path / "elsewhere" / "b.yaml", "data:\n  name: digits\n")
    assert C.load(write(tmp_path / "c.yaml", f"base: {base}\n")).data.name == "digits"


def test_a_cycle_is_an_error_naming_the_files(tmp_path):
    a = write(tmp_path / "a.yaml", "base: b.yaml\ndata:\n  name: digits\n")
    b = write(tmp_path / "b.yaml", "base: a.yaml\ntrain:\n  epochs: 2\n")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as e:
        C.load(a)
    assert str(e.value) == (f"config inheritance cycle: {a} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'}; "
                            "remove one of these base: entries")
    assert snapshot(tmp_path) == before
    selfish = write(tmp_path / "self.yaml", "base: self.yaml\ndata:\n  name: digits\n")
    with pytest.raises(ConfigError, match=r"config inheritance cycle: .*self\.yaml -> .*self\.yaml;"):
        C.load(selfish)
    assert b.is_file()


def test_a_missing_base_names_the_file_that_refers_to_it(tmp_path):
    write(tmp_path / "mid.yaml", "base: gone.yaml\ndata:\n  name: digits\n")
    child = write(tmp_path / "child.yaml", "base: mid.yaml\n")
    with pytest.raises(ConfigError) as e:
        C.load(child)
    assert str(e.value) == f"{tmp_path / 'mid.yaml'}: base 'gone.yaml' not found (looked for {tmp_path / 'gone.yaml'})"


@pytest.mark.parametrize("value", ["3", "[]", "''", "[a.yaml, 7]", "{x: 1}", "null"])
def test_a_base_must_name_files(tmp_path, value):
    write(tmp_path / "a.yaml", "data:\n  name: digits\n")
    child = write(tmp_path / "c.yaml", f"base: {value}\ndata:\n  imbalance: 10\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(child))}: 'base' must name a YAML file or a list"):
        C.load(child)


def test_errors_inside_a_base_name_the_base(tmp_path):
    write(tmp_path / "dup.yaml", "data:\n  name: digits\n  name: cifar10\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'dup.yaml'))}: key 'data.name' is given "
                                          r"twice \(lines 2 and 3\)"):
        C.load(write(tmp_path / "c.yaml", "base: dup.yaml\n"))
    write(tmp_path / "empty.yaml", "# nothing yet\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'empty.yaml'))} is empty"):
        C.load(write(tmp_path / "d.yaml", "base: empty.yaml\ndata:\n  name: digits\n"))
    write(tmp_path / "typo.yaml", "optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'; did you mean 'optim.lr'"):
        C.load(write(tmp_path / "e.yaml", "base: typo.yaml\n"))


def test_the_resolved_config_holds_merged_values_and_no_base(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptim:\n  lr: 0.02\n")
    cfg = C.load(child, ["train.epochs=4"])
    text = C.dump(cfg)
    data = yaml.safe_load(text)
    assert "base" not in data and "base:" not in text
    assert data["optim"]["lr"] == 0.02 and data["data"]["cutout"] == 4 and data["method"]["temperature"] == 0.2
    assert data["train"]["epochs"] == 4
    (tmp_path / "base.yaml").unlink()  # the resolved file stands alone
    assert C.load(write(tmp_path / "run" / "config.yaml", text)) == cfg


def test_base_is_for_files_only():
    with pytest.raises(ConfigError, match="'base' .* can only be given in a YAML config file"):
        C.from_dict({"base": "a.yaml"})
    with pytest.raises(ConfigError, match="'base' .* can only be given in a YAML config file"):
        C.apply_overrides(C.Config(), ["base=a.yaml"])


def test_stage2_configs_inherit_too(tmp_path):
    from longtail.stage2.dlsa.config import load_dlsa_config

    write(tmp_path / "dlsa_base.yaml", "num_clusters: 8\nflow_epochs: 3\n")
    cfg = load_dlsa_config(write(tmp_path / "dlsa.yaml", "base: dlsa_base.yaml\nflow_epochs: 5\n"))
    assert (cfg.num_clusters, cfg.flow_epochs) == (8, 5)


# ----------------------------------------------------------------------------------------------------
# config show

LINE = re.compile(r"^  ([* ]) (\S+)\s+(.*?)\s+default: (.*)$")


def parse_show(text: str) -> dict:
    """{section: {key: (marked, value, default, help)}} from the text of config show."""
    out: dict = {}
    lines = text.splitlines()
    section = None
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line[1:line.index("]")]
            out[section] = {}
        elif section and LINE.match(line):
            mark, key, value, default = LINE.match(line).groups()
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            help_ = nxt.strip() if nxt.startswith("    ") and not LINE.match(nxt) else ""
            out[section][key] = (mark == "*", value, default, help_)
    return out


def expected_rows(obj, default) -> dict:
    rows = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if not dataclasses.is_dataclass(v):
            d = getattr(default, f.name)
            rows[f.name] = (v != d, value_text(v), value_text(d), f.metadata["help"])
    return rows


def test_show_lists_every_key_with_value_default_help_and_marks(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "base: base.yaml\ndata:\n  imbalance: 50\n")
    text = C.show(child, ["optim.lr=0.1", "train.seed=3"])
    cfg = C.load(child, ["optim.lr=0.1", "train.seed=3"])
    shown = parse_show(text)
    default = C.Config()
    assert list(shown) == ["top level", "data", "model", "method: bcl", "optim", "train", "eval"]
    assert shown["top level"] == expected_rows(cfg, default)
    for s in ("data", "model", "optim", "train", "eval"):
        assert shown[s] == expected_rows(getattr(cfg, s), getattr(default, s)), s
    method = shown["method: bcl"]
    assert method == expected_rows(cfg.method, type(cfg.method)())
    assert set(method) == {f.name for f in dataclasses.fields(cfg.method)} and "la_tau" in method
    assert "focal_gamma" not in method  # only the selected method's parameters
    # spot checks of the meaning, independent of the helpers above
    assert shown["data"]["imbalance"][:3] == (True, "50.0", "100.0")
    assert shown["optim"]["lr"][:3] == (False, "0.1", "0.1")  # the override restored the default: unmarked
    assert shown["optim"]["milestones"][:3] == (True, "[10, 20]", "[160, 180]")
    assert shown["method: bcl"]["temperature"][:3] == (True, "0.2", "0.1")
    assert shown["top level"]["name"][:3] == (True, "from_base", "null")
    assert shown["optim"]["lr"][3].startswith("peak learning rate")
    n_keys = sum(len(v) for v in shown.values())
    assert n_keys == len(C.all_keys(cfg))
    marked = sum(v[0] for rows in shown.values() for v in rows.values())
    head = text.splitlines()[:4]
    assert head == [f"config: {child}", f"bases: {tmp_path / 'base.yaml'} (merged in this order, then the config)",
                    "overrides: optim.lr=0.1 train.seed=3", f"* marks the {marked} keys that differ from their default"]


def test_show_of_a_plain_config_has_no_bases_line():
    text = C.show(ROOT / "configs" / "quickstart.yaml")
    assert text.splitlines()[0] == f"config: {ROOT / 'configs' / 'quickstart.yaml'}"
    assert not any(l.startswith(("bases:", "overrides:")) for l in text.splitlines())
    assert parse_show(text)["method: la"]["name"][:3] == (True, "la", "ce")


def test_show_validates(tmp_path):
    p = write(tmp_path / "c.yaml", "data:\n  name: digits\noptim:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"optim\.lr must be > 0 \(got -1\.0\)"):
        C.show(p)
    with pytest.raises(ConfigError, match="data.sampler must be one of"):
        C.show(ROOT / "configs" / "quickstart.yaml", ["data.sampler=balanced"])


def test_value_text_is_yaml():
    assert [value_text(v) for v in (None, True, 0.0002, [160, 180], "yes", "", "a b", 3)] == \
        ["null", "true", "0.0002", "[160, 180]", "'yes'", "''", "a b", "3"]


# ----------------------------------------------------------------------------------------------------
# through the CLI


def run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_config_show(tmp_path, capsys, monkeypatch):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "base: base.yaml\ndata:\n  imbalance: 50\n")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run(["config", "show", str(child), "optim.lr=0.2"], capsys)
    assert code == 0 and err == ""
    assert out == C.show(child, ["optim.lr=0.2"])
    shown = parse_show(out)
    assert shown["optim"]["lr"][:3] == (True, "0.2", "0.1")
    assert shown["data"]["cutout"] == (True, "4", "0", "cutout square size in pixels; 0 = off")
    assert snapshot(tmp_path) == before  # show writes nothing


def test_cli_config_show_overrides_after_options(tmp_path, capsys):
    code, out, _ = run(["config", "show", str(ROOT / "configs" / "quickstart.yaml"), "--debug", "train.epochs=3"],
                       capsys)
    assert code == 0 and parse_show(out)["train"]["epochs"][:3] == (True, "3", "200")


CLI_ERRORS = [
    ("missing.yaml", None, [], "config file '{d}/missing.yaml' not found"),
    ("empty.yaml", "# only comments\n", [], "{d}/empty.yaml is empty: a config needs at least one section"),
    ("dup.yaml", "data:\n  name: digits\noptim:\n  lr: 0.1\n  lr: 0.2\n", [],
     "{d}/dup.yaml: key 'optim.lr' is given twice (lines 4 and 5); keep one of them"),
    ("nan.yaml", "data:\n  name: digits\n", ["optim.lr=nan"], "optim.lr must be a finite number (got nan)"),
    ("inf.yaml", "data:\n  name: digits\n  imbalance: .inf\n", [], "data.imbalance must be a finite number (got inf)"),
    ("big.yaml", "data:\n  name: digits\n", ["optim.weight_decay=1e999"], "optim.weight_decay must be a finite number"),
    ("cycle.yaml", "base: cycle.yaml\ndata:\n  name: digits\n", [], "config inheritance cycle: {d}/cycle.yaml -> "),
    ("orphan.yaml", "base: nope.yaml\n", [], "{d}/orphan.yaml: base 'nope.yaml' not found"),
    ("typo.yaml", "optim:\n  learning_rate: 0.1\n", [], "unknown config key 'optim.learning_rate'; did you mean "
                                                          "'optim.lr'?"),
    ("bad.yaml", "data:\n  name: digits\n", ["train.epochs=0"], "train.epochs must be >= 1 (got 0)"),
]


@pytest.mark.parametrize("name,text,overrides,msg", CLI_ERRORS, ids=[c[0] for c in CLI_ERRORS])
def test_cli_config_show_errors(tmp_path, capsys, monkeypatch, name, text, overrides, msg):
    if text is not None:
        write(tmp_path / name, text)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run(["config", "show", str(tmp_path / name), *overrides], capsys)
    assert code == 2 and out == ""
    assert err.startswith("longtail: error: " + msg.format(d=tmp_path)), err
    assert err.count("\n") == 1  # one line
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_cli_train_refuses_an_empty_config_before_making_a_run(tmp_path, capsys, monkeypatch):
    empty = write(tmp_path / "empty.yaml", "\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", "--config", str(empty), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "is empty" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]


# ----------------------------------------------------------------------------------------------------
# reproduction suites read strictly


def test_suite_files_refuse_duplicates_and_empty_files(tmp_path):
    from longtail.reproduce import load_suite

    p = write(tmp_path / "suite.yaml", "entries:\n  - config: quickstart.yaml\n    config: cifar10_lt/ce.yaml\n")
    with pytest.raises(LongtailError, match=rf"^{re.escape(str(p))}: key 'entries\[0\]\.config' is given twice "
                                            r"\(lines 2 and 3\)"):
        load_suite(str(p), (0,), [], tmp_path / "out", "cpu")
    write(p, "# to do\n")
    with pytest.raises(LongtailError, match=rf"^{re.escape(str(p))} is empty: a suite needs a non-empty 'entries'"):
        load_suite(str(p), (0,), [], tmp_path / "out", "cpu")
    write(p, "entries:\n  - config: quickstart.yaml\n    imbalance: [.nan]\n")
    with pytest.raises(ConfigError, match=r"data\.imbalance must be a finite number \(got nan\)"):
        load_suite(str(p), (0,), [], tmp_path / "out", "cpu")
    write(p, "entries:\n  - {config: quickstart.yaml\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_suite(str(p), (0,), [], tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()
    write(p, "entries:\n  - config: quickstart.yaml\n    imbalance: [10, 20]\n")
    jobs = load_suite(str(p), (0,), [], tmp_path / "out", "cpu")
    assert [j.cfg.data.imbalance for j in jobs] == [10.0, 20.0]


# ----------------------------------------------------------------------------------------------------
# docs/config.md


def test_docs_key_reference_is_current():
    from longtail.config.reference import current_reference, markdown_reference

    page = (ROOT / "docs" / "config.md").read_text()
    assert current_reference(page) == markdown_reference(), (
        "docs/config.md's key reference is out of date: run python -m longtail.config.reference docs/config.md")
    import longtail.methods  # noqa: F401
    from longtail.registry import METHODS

    for key in C.all_keys(C.Config):
        assert f"`{key}`" in page, key
    for name in ("ce", "focal", "cb", "ldam_drw", "la", "bcl", "bbl", "supcon", "proco"):
        for f in dataclasses.fields(METHODS.get(name).Params):
            if f.name != "name":
                assert f"`method.{f.name}`" in page, (name, f.name)


def test_reference_markers(tmp_path):
    from longtail.config.reference import BEGIN, END, replace_reference
    from longtail.config.reference import main as ref_main

    with pytest.raises(ConfigError, match="needs one line"):
        replace_reference("# no markers\n")
    page = write(tmp_path / "p.md", f"# Title\n\n{BEGIN}\nstale\n{END}\n\nafter\n")
    assert ref_main([str(page)]) == 0
    text = page.read_text()
    assert "stale" not in text and "| `optim.lr` | `0.1` | peak learning rate" in text
    assert text.startswith("# Title\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert replace_reference(text) == text  # idempotent


def test_config_package_imports_no_torch():
    code = "import sys, longtail.config, longtail.config.listing, longtail.config.inherit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
