"""Extending longtail from outside the package: the example plugin method through the whole CLI, the
plugin and entry-point mechanisms, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from longtail import config as C
from longtail.errors import ConfigError
from longtail.registry import Registry, load_plugins

from test_train import run_cli, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "inverse_frequency.py"


def _cfg_dict(**method) -> dict:
    d = C.to_dict(tiny_cfg())
    d["method"] = {"name": "inverse_frequency", **method}
    d["plugins"] = [str(PLUGIN)]
    return d


def test_the_example_plugin_trains_evaluates_reports_and_compares(tmp_path, capsys):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(_cfg_dict(power=0.5)))
    no_plugins = _cfg_dict(power=0.5)
    del no_plugins["plugins"]
    b.write_text(yaml.safe_dump({**no_plugins, "method": {"name": "ce"}}))
    # one run names the plugin in its config, the other on the command line
    code, out, err = run_cli(["train", "--config", str(a), "--out", str(tmp_path / "r0")], capsys)
    assert code == 0, err
    code, out, err = run_cli(["train", "--plugin", str(PLUGIN), "--config", str(b), "--out", str(tmp_path / "r1"),
                              "method.name=inverse_frequency", "method.power=0.5", "train.seed=1"], capsys)
    assert code == 0, err
    for r in ("r0", "r1"):
        cfg = yaml.safe_load((tmp_path / r / "config.yaml").read_text())
        assert cfg["method"] == {"name": "inverse_frequency", "power": 0.5}
        assert cfg["plugins"] == [str(PLUGIN.resolve())]  # recorded: later commands import it again
        assert json.loads((tmp_path / r / "summary.json").read_text())["method"] == "inverse_frequency"
    code, out, err = run_cli(["eval", str(tmp_path / "r0")], capsys)
    assert code == 0 and "agrees with summary.json" in out, err
    code, out, err = run_cli(["report", str(tmp_path / "r1")], capsys)
    assert code == 0 and (tmp_path / "r1" / "report" / "report.md").is_file(), err
    code, out, err = run_cli(["compare", str(tmp_path / "r0"), str(tmp_path / "r1")], capsys)
    assert code == 0 and "inverse_frequency" in out, err


def test_the_example_loss_against_a_written_out_reference():
    load_plugins([str(PLUGIN)])
    from longtail.registry import METHODS

    loss_cls = METHODS.get("inverse_frequency")
    counts = np.array([50, 10, 2])
    method = loss_cls(loss_cls.Params(name="inverse_frequency", power=0.7), model=C.ModelConfig(), augment="none",
                      train_counts=counts)
    torch.manual_seed(0)
    logits, y = torch.randn(9, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0])
    got = method.criterion(logits.float(), y)
    raw = [c ** -0.7 for c in counts]
    norm = sum(counts) / sum(c * w for c, w in zip(counts, raw))
    w = [r * norm for r in raw]
    num = den = 0.0
    for i in range(9):
        ce = -(logits[i, y[i]] - torch.logsumexp(logits[i], 0)).item()
        num, den = num + w[y[i]] * ce, den + w[y[i]]
    assert got.item() == pytest.approx(num / den, rel=1e-5)
    assert sum(c * wc for c, wc in zip(counts, w)) == pytest.approx(sum(counts))  # average weight 1
    with pytest.raises(ConfigError, match="method.power must be >= 0"):
        C.validate(C.apply_overrides(C.Config(), ["method.name=inverse_frequency", "method.power=-1"]))


def test_plugin_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ConfigError, match="plugin 'no_such_module_xyz' cannot be imported"):
        load_plugins(["no_such_module_xyz"])
    with pytest.raises(ConfigError, match="plugin file .*missing.py does not exist"):
        load_plugins([str(tmp_path / "missing.py")])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**C.to_dict(tiny_cfg()), "method": {"name": "not_registered_yet"}}))
    code, _, err = run_cli(["train", "--config", str(cfg), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "unknown method 'not_registered_yet'" in err and not (tmp_path / "r").exists()


def test_entry_points_register_on_first_use(monkeypatch):
    import longtail.registry as R

    reg = Registry("thing", "x.thing", "longtail.errors", "longtail.things")

    class EP:
        name, value = "mine", "my_package:register"

        @staticmethod
        def load():
            reg.register("from_entry_point", object())

    class Broken:
        name, value = "broken", "bad_package:oops"

        @staticmethod
        def load():
            raise ImportError("no module named bad_package")

    monkeypatch.setattr(R, "_entry_points", lambda group: [EP] if group == "longtail.things" else [])
    assert "from_entry_point" in reg.names()
    reg2 = Registry("thing", "x.thing", "longtail.errors", "longtail.things")
    monkeypatch.setattr(R, "_entry_points", lambda group: [Broken])
    with pytest.raises(ConfigError, match="entry point 'broken' .*bad_package:oops.* failed to load"):
        reg2.names()


def test_registries_list_the_builtins_with_did_you_mean():
    from longtail.registry import BACKBONES, DATASETS, HEADS, METHODS, PRESETS, SAMPLERS

    assert {"ce", "focal", "cb", "ldam_drw", "la", "bcl", "supcon", "bbl", "proco"} <= set(METHODS.names())
    assert {"digits", "cifar10", "cifar100", "tinyimagenet", "imagenet_lt", "places_lt", "inat2018"} <= set(
        DATASETS.names())
    assert {"linear", "cosine"} == set(HEADS.names()) and "resnet32" in BACKBONES
    assert set(SAMPLERS.names()) >= {"instance", "class_balanced", "sqrt", "progressive"}
    assert set(PRESETS.names()) >= {"none", "standard", "autoaugment", "randaugment", "simclr", "simclr_rand"}
    with pytest.raises(ConfigError, match="data.name: unknown dataset 'cifar1000'; did you mean 'cifar100'"):
        DATASETS.get("cifar1000")
