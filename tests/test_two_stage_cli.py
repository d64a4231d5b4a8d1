"""The two-stage path through the CLI: train -> extract -> decouple (all four) -> dlsa -> report -> compare."""

from __future__ import annotations

import json

from longtail.cli import main
from longtail.engine.run import train

from test_train import quiet, tiny_cfg


def test_extract_decouple_dlsa_report_compare(tmp_path, capsys):
    run = train(tiny_cfg(**{"train.epochs": 2}), out=str(tmp_path / "stage1"), echo=quiet)
    feats = tmp_path / "features"
    assert main(["extract", str(run), "--out", str(feats)]) == 0
    info = json.loads((feats / "features.json").read_text())
    assert info["sizes"] == {"train": 486, "test": 500} and info["imbalance"] == 10
    outs = [run]
    for m in ("crt", "lws", "tau_norm", "posthoc_la"):
        out = tmp_path / m
        assert main(["decouple", str(run), "--method", m, "--out", str(out), "--features", str(feats),
                     "epochs=2"]) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["stage2"]["method"] == m and s["top1"] is not None
        outs.append(out)
    dl = tmp_path / "dlsa"
    assert main(["dlsa", "--features", str(feats), "--config", "configs/dlsa/cifar_small.yaml", "--out", str(dl),
                 "flow_epochs=2", "cls_epochs=3", "num_clusters=10"]) == 0
    s = json.loads((dl / "summary.json").read_text())
    assert sum(st["test_count"] for st in s["stages"]) == 500 and s["stages"][-1]["kind"] == "regular"
    outs.append(dl)
    for o in outs:
        assert main(["report", str(o)]) == 0
    assert (dl / "report" / "dlsa_stages.png").is_file()
    capsys.readouterr()
    assert main(["compare", *map(str, outs)]) == 0
    table = capsys.readouterr().out
    for label in ("ce+crt", "ce+lws", "ce+tau_norm", "ce+posthoc_la", "ce+dlsa"):
        assert label in table, label
