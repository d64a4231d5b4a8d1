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
