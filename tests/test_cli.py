"""`longtail data info|indices` (the numbers outside checks rely on) and CLI plumbing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from longtail.cli import main
from longtail.data.splits import indices_sha256, stored_splits


def run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_info_cifar10(capsys):
    code, out, _ = run(["data", "info", "cifar10", "--imbalance", "100"], capsys)
    assert code == 0
    assert "5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50" in out and "total: 12406" in out
    assert "Many 8 / Medium 2 / Few 0" in out


@pytest.mark.parametrize("name,rho,total,shots", [
    ("cifar100", 100, 10847, (35, 35, 30)), ("tinyimagenet", 100, 21549, (70, 70, 60)),
    ("cifar10", 50, 13996, (9, 1, 0)), ("digits", 10, 486, (1, 7, 2)), ("cifar100", 10, 19573, (69, 31, 0)),
])
def test_info_json(capsys, name, rho, total, shots):
    code, out, _ = run(["data", "info", name, "--imbalance", str(rho), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and set(info) == {"counts", "total", "shots"}
    assert info["total"] == total == sum(info["counts"])
    assert (info["shots"]["many"], info["shots"]["medium"], info["shots"]["few"]) == shots


def test_indices_tinyimagenet_needs_no_files(capsys):
    code, out, _ = run(["data", "indices", "tinyimagenet", "--imbalance", "100"], capsys)
    idx = np.array(out.split(), dtype=np.int64)
    assert code == 0 and len(idx) == 21549 and (np.diff(idx) > 0).all()
    assert indices_sha256(idx) == stored_splits()["tinyimagenet"]["exp_r100_s0"].sha256


def test_indices_digits(capsys):
    code, out, _ = run(["data", "indices", "digits", "--imbalance", "10"], capsys)
    assert code == 0 and len(out.split()) == 486


def test_bad_data_arguments(capsys):
    code, _, err = run(["data", "info", "cifar10", "--imbalance", "0"], capsys)
    assert code == 2 and "--imbalance must be >= 1" in err
    with pytest.raises(SystemExit):  # argparse: unknown dataset
        main(["data", "info", "cifar1000", "--imbalance", "10"])


def test_console_script_and_module_entry_points():
    out = subprocess.run([sys.executable, "-m", "longtail", "data", "info", "cifar10", "--imbalance", "10", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["total"] == 20431
