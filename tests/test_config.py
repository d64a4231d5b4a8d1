"""Typed config: YAML loading, dotted overrides converted by type, validation and the nearest-key hint."""

from __future__ import annotations

import pytest

from longtail import config as C
from longtail.errors import ConfigError


def test_defaults_are_valid_and_roundtrip(tmp_path):
    cfg = C.validate(C.Config())
    p = tmp_path / "c.yaml"
    p.write_text(C.dump(cfg))
    assert C.load(p) == cfg


def test_overrides_convert_by_type():
    cfg = C.apply_overrides(C.Config(), ["optim.lr=0.05", "train.epochs=3", "data.verify=false",
                                         "optim.milestones=[10, 20]", "train.max_steps=null",
                                         "data.root=/some where/1e3", "data.imbalance=50", "optim.nesterov=yes"])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3 and cfg.data.verify is False
    assert cfg.optim.milestones == [10, 20] and cfg.train.max_steps is None
    assert cfg.data.root == "/some where/1e3"  # strings stay strings
    assert cfg.data.imbalance == 50.0 and cfg.optim.nesterov is True
    C.apply_overrides(cfg, ["optim.milestones=5,7"])
    assert cfg.optim.milestones == [5, 7]


def test_overrides_are_never_evaluated():
    with pytest.raises(ConfigError, match="must be an integer"):
        C.apply_overrides(C.Config(), ["train.epochs=__import__('os').getcwd()"])
    cfg = C.apply_overrides(C.Config(), ["name=__import__('os')"])
    assert cfg.name == "__import__('os')"


@pytest.mark.parametrize("key,hint", [("optim.learning_rate", "optim.lr"), ("train.epoch", "train.epochs"),
                                      ("data.imbalanc", "data.imbalance"), ("optm.lr", "optim.lr"),
                                      ("model.bakcbone", "model.backbone")])
def test_unknown_key_names_nearest(key, hint):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'; did you mean '{hint}'"):
        C.apply_overrides(C.Config(), [f"{key}=1"])


def test_unknown_key_in_yaml_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.1\n  wd: 1\n")
    with pytest.raises(ConfigError, match="optim.wd"):
        C.load(p)


@pytest.mark.parametrize("override,msg", [
    ("optim.lr=-1", "optim.lr must be > 0"), ("optim.lr=0", "optim.lr must be > 0"),
    ("data.imbalance=0.9", "data.imbalance must be >= 1"), ("train.batch_size=0", "train.batch_size"),
    ("optim.momentum=1.5", "optim.momentum"), ("optim.weight_decay=-1", "weight_decay"),
    ("method.name=cb;method.cb_beta=1", "cb_beta"), ("data.sampler=balanced", "data.sampler must be one of"),
    ("optim.schedule=linear", "optim.schedule"), ("train.amp=fp16", "train.amp"),
    ("data.name=cifar", "did you mean"), ("eval.posthoc_tau=-1", "posthoc_tau"),
    ("data.cutout=-2", "data.cutout"), ("method.name=focal;method.focal_gamma=-1", "focal_gamma"),
])
def test_invalid_values(override, msg):
    # a method's parameters exist once the method is chosen: such cases set method.name first
    cfg = C.apply_overrides(C.Config(), override.split(";")) if "=" in override else C.Config()
    with pytest.raises(ConfigError, match=msg):
        C.validate(cfg)


def test_bad_types_and_forms():
    with pytest.raises(ConfigError, match="must be true or false"):
        C.apply_overrides(C.Config(), ["data.verify=maybe"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        C.apply_overrides(C.Config(), ["optim.lr"])
    with pytest.raises(ConfigError, match="is a section"):
        C.apply_overrides(C.Config(), ["optim=1"])


def test_list_datasets_need_lists():
    cfg = C.apply_overrides(C.Config(), ["data.name=imagenet_lt"])
    with pytest.raises(ConfigError, match="data.train_list"):
        C.validate(cfg)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        C.load(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load(p)


def test_every_shipped_config_loads():
    from pathlib import Path

    files = sorted(f for f in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
                   if f.parent.name not in ("dlsa", "suites"))  # tested in test_dlsa_pipeline.py, test_reproduce.py
    assert len(files) >= 16
    for f in files:
        C.load(f)
    names = {f"{f.parent.name}/{f.stem}" for f in files}
    for d in ("cifar10_lt", "cifar100_lt", "tinyimagenet_lt"):
        for m in ("ce", "focal", "cb", "ldam_drw", "la"):
            assert f"{d}/{m}" in names


def test_run_name():
    cfg = C.apply_overrides(C.Config(), ["data.imbalance=100", "method.name=la", "train.seed=2"])
    assert C.run_name(cfg) == "cifar10_r100_la_s2"


# ----------------------------------------------------------------------------------------------------
# help for every key; strict YAML (duplicate keys, empty files); finite numbers


def _fields_without_help(cls, prefix=""):
    import dataclasses

    return [prefix + f.name for f in dataclasses.fields(cls) if not str(f.metadata.get("help", "")).strip()]


def test_every_key_and_every_method_parameter_has_help():
    import dataclasses
    import typing

    import longtail.methods  # noqa: F401  (registers the built-in methods)
    from longtail.registry import METHODS

    hints = typing.get_type_hints(C.Config)
    sections = [f.name for f in dataclasses.fields(C.Config) if dataclasses.is_dataclass(hints[f.name])]
    assert sections == ["data", "model", "method", "optim", "train", "eval"]
    missing = []
    for f in dataclasses.fields(C.Config):  # sections and top-level keys
        missing += [] if f.metadata.get("help") else [f.name]
    for s in sections:
        missing += _fields_without_help(hints[s], f"{s}.")
    assert not missing, f"keys without help: {missing}"
    assert len(C.all_keys(C.Config)) > 60  # every key of every section was looked at
    assert set(METHODS.names()) >= {"ce", "focal", "cb", "ldam_drw", "la", "bcl", "bbl", "supcon", "proco"}
    for name, entry in METHODS.items():
        params = getattr(entry, "Params", C.MethodConfig)
        missing = _fields_without_help(params)
        assert not missing, f"method {name}: parameters without help: {missing}"
    assert C.key_help(dataclasses.fields(C.OptimConfig)[0]).startswith("peak learning rate")


def test_help_metadata_keeps_defaults_types_and_fresh_lists():
    a, b = C.Config(), C.Config()
    assert a.optim.milestones == [160, 180] and a.plugins == []
    a.optim.milestones.append(1)
    a.plugins.append("x")
    assert b.optim.milestones == [160, 180] and b.plugins == []  # a list per instance, not one shared
    assert (b.data.imbalance, b.train.epochs, b.optim.lr, b.method.name) == (100.0, 200, 0.1, "ce")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("text,key,lines", [
    ("data:\n  name: digits\noptim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.5\n", "optim.lr", (4, 6)),
    ("data:\n  name: digits\ndata:\n  imbalance: 10\n", "data", (1, 3)),
    ("method:\n  name: la\n  la_tau: 1.0\n  'la_tau': 2.0\n", "method.la_tau", (3, 4)),
    ("data: {name: digits, name: cifar10}\n", "data.name", (1, 1)),
    ("plugins: []\nx:\n  - {a: 1}\n  - {b: 1, b: 2}\n", "x[1].b", (4, 4)),
])
def test_a_key_given_twice_is_an_error_naming_it_and_both_lines(tmp_path, text, key, lines):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert msg == f"{p}: key '{key}' is given twice (lines {lines[0]} and {lines[1]}); keep one of them"
    assert "\n" not in msg and _snapshot(tmp_path) == before  # the file is left as it was


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: &d\n  name: digits\n  imbalance: 10\nmodel:\n  backbone: resnet8\n"
                 "train: {epochs: 3}\n")
    assert C.load(p).data.imbalance == 10.0
    from longtail.config.yamlio import parse_yaml

    doc = parse_yaml("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n", "t.yaml")
    assert doc["b"] == {"x": 3, "y": 2}


def test_invalid_yaml_is_one_line_with_the_position(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  name: digits\noptim: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        C.load(p)
    assert str(e.value).startswith(f"{p} is not valid YAML: ") and "line 4" in str(e.value)
    assert "\n" not in str(e.value)
    p.write_text("data: !!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(ConfigError, match="not valid YAML: could not determine a constructor"):
        C.load(p)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "{}\n", "---\n"])
def test_an_empty_config_is_an_error_not_a_default_run(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        C.load(p)
    assert str(e.value).startswith(f"{p} is empty: a config needs at least one section (e.g. data: and method:) "
                                   "or a base: file")
    assert "\n" not in str(e.value) and p.read_text() == text


def test_a_config_of_one_key_is_not_empty(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("device: cpu\n")
    assert C.load(p).device == "cpu"


def test_a_config_must_be_a_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- data\n- method\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of config keys \(got list\)"):
        C.load(p)


NON_FINITE_YAML = [".nan", ".NaN", ".inf", "-.inf", "+.inf", ".Inf", "1" + "0" * 400]


@pytest.mark.parametrize("value", NON_FINITE_YAML)
@pytest.mark.parametrize("section,key", [("optim", "lr"), ("train", "epochs"), ("optim", "grad_clip"),
                                         ("data", "imbalance")])
def test_non_finite_numbers_in_a_file_are_refused(tmp_path, value, section, key):
    p = tmp_path / "c.yaml"
    p.write_text(f"data:\n  name: digits\n{section}:\n  {key}: {value}\n" if section != "data"
                 else f"data:\n  name: digits\n  {key}: {value}\n")
    if key == "epochs" and value.isdigit():
        C.load(p)  # an integer key takes a big integer: finite, and checked by validation only
        return
    with pytest.raises(ConfigError, match=rf"^{section}\.{key} must be a finite number \(got "):
        C.load(p)


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", ".nan", ".inf",
                                 "-.inf", " nan "])
@pytest.mark.parametrize("key", ["optim.lr", "train.epochs", "optim.grad_clip", "eval.posthoc_tau",
                                 "optim.milestones"])
def test_non_finite_numbers_in_overrides_are_refused(raw, key):
    with pytest.raises(ConfigError, match=rf"^{key} must be a finite number \(got -?(nan|inf)\); NaN and infinity"):
        C.apply_overrides(C.Config(), [f"{key}={raw}"])


def test_non_finite_method_parameters_and_list_items_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.la_tau must be a finite number \(got inf\)"):
        C.apply_overrides(C.Config(), ["method.name=la", "method.la_tau=1e999"])
    p = tmp_path / "c.yaml"
    p.write_text("method:\n  name: bcl\n  temperature: .nan\n")
    with pytest.raises(ConfigError, match=r"method\.temperature must be a finite number \(got nan\)"):
        C.load(p)
    p.write_text("optim:\n  milestones: [10, .inf]\n")
    with pytest.raises(ConfigError, match=r"optim\.milestones must be a finite number \(got inf\)"):
        C.load(p)


def test_finite_numbers_and_strings_that_look_like_nan_still_work():
    cfg = C.apply_overrides(C.Config(), ["optim.lr=1e-3", "optim.weight_decay=5.0e-4", "train.epochs=1e2",
                                         "data.root=nan", "name=inf", "optim.grad_clip=2"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 5e-4 and cfg.train.epochs == 100
    assert cfg.data.root == "nan" and cfg.name == "inf" and cfg.optim.grad_clip == 2.0
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer \(got 2\.5\)"):
        C.apply_overrides(C.Config(), ["train.epochs=2.5"])


def test_stage2_configs_refuse_non_finite_numbers_duplicates_and_empty_files(tmp_path):
    from longtail.stage2.decouple import DecoupleConfig
    from longtail.stage2.dlsa.config import load_dlsa_config

    with pytest.raises(ConfigError, match=r"^lr must be a finite number \(got nan\)"):
        C.load_dataclass(DecoupleConfig, None, ["lr=nan"])
    with pytest.raises(ConfigError, match=r"^tau must be a finite number \(got inf\)"):
        C.load_dataclass(DecoupleConfig, None, ["tau=inf"])
    p = tmp_path / "dlsa.yaml"
    p.write_text("num_clusters: 8\nflow_lr: .nan\n")
    with pytest.raises(ConfigError, match=r"^flow_lr must be a finite number \(got nan\)"):
        load_dlsa_config(p)
    with pytest.raises(ConfigError, match=r"^llh_proportion must be a finite number \(got -inf\)"):
        load_dlsa_config(None, ["llh_proportion=-1e999"])
    p.write_text("num_clusters: 8\nflow_epochs: 2\nnum_clusters: 9\n")
    with pytest.raises(ConfigError, match=rf"^{p}: key 'num_clusters' is given twice \(lines 1 and 3\)"):
        load_dlsa_config(p)
    p.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=rf"^{p} is empty: give at least one DLSAConfig key, or no file at all"):
        load_dlsa_config(p)
    p.write_text("num_clusters: 8\n")
    assert load_dlsa_config(p).num_clusters == 8


def test_a_duplicate_key_in_an_override_value_is_an_error():
    with pytest.raises(ConfigError, match=r"^override optim\.milestones=\{a: 1, a: 2\}: key 'a' is given twice"):
        C.apply_overrides(C.Config(), ["optim.milestones={a: 1, a: 2}"])
    cfg = C.apply_overrides(C.Config(), ["optim.milestones=[10, 20]"])  # a list without duplicates is fine
    assert cfg.optim.milestones == [10, 20]
