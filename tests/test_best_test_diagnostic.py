"""The best-test-epoch diagnostic: recorded beside, never instead of, the last epoch's numbers."""

from __future__ import annotations

import json
from pathlib import Path

from longtail.cli import main
from longtail.engine.run import best_test_diagnostic

ROOT = Path(__file__).resolve().parents[1]


def test_best_of_the_evaluated_epochs(tmp_path):
    rows = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "top1": 50.0}, {"epoch": 3, "loss": 1.0},
            {"epoch": 4, "top1": 61.5}, {"epoch": 6, "top1": 58.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    best = best_test_diagnostic(path)
    assert (best["top1"], best["epoch"]) == (61.5, 4) and "not a result" in best["note"]
    path.write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n")
    assert best_test_diagnostic(path) is None
    assert best_test_diagnostic(tmp_path / "missing.jsonl") is None


def test_a_run_reports_its_last_epoch_and_records_the_best_as_a_diagnostic(tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out),
                 "train.epochs=6", "train.eval_every=2", "train.progress=false", "model.width=8"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = {r["epoch"]: r["top1"] for r in rows if "top1" in r}
    assert sorted(evaluated) == [2, 4, 6]
    assert summary["top1"] == evaluated[6]  # the reported number is the last epoch's
    best = summary["best_test_diagnostic"]
    assert best["top1"] == max(evaluated.values()) and evaluated[best["epoch"]] == best["top1"]
