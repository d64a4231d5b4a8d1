"""The image-folder dataset (``data.name=folder``) and ``longtail predict``, end to end on generated PNGs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail import config as C
from longtail.cli import main
from longtail.data.build import build_dataset
from longtail.data.base import ArraySplit, FileSplit
from longtail.data.splits import lt_counts, select_lt_indices
from longtail.errors import ConfigError, DataError

NAMES = ["cat", "dog", "fox", "owl"]
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
TRAIN_COUNTS = [40, 20, 10, 5]


def make_folder(root: Path, counts=TRAIN_COUNTS, test=8, size=16, val=0, fmt="png", seed=0) -> Path:
    """root/{train,test[,val]}/<class>/NNN.<fmt>: a colour per class plus noise (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    splits = [("train", counts), ("test", [test] * len(counts))] + ([("val", [val] * len(counts))] if val else [])
    for split, ns in splits:
        for name, colour, n in zip(NAMES, COLOURS, ns):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(np.array(colour)[None, None] + rng.normal(0, 30, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:03d}.{fmt}")
    return root


def folder_cfg(root: Path, **over) -> C.Config:
    ov = {"data.name": "folder", "data.root": str(root), "model.backbone": "resnet8", "model.width": "8",
          "method.name": "ce", "optim.lr": "0.05", "optim.warmup_epochs": "0", "optim.schedule": "constant",
          "train.epochs": "2", "train.batch_size": "32", "train.eval_every": "1", "train.progress": "false",
          "device": "cpu", "data.augment": "standard"}
    ov.update({k: str(v) for k, v in over.items()})
    cfg = C.Config()
    C.apply_overrides(cfg, [f"{k}={v}" for k, v in ov.items()])
    return C.validate(cfg)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imgs") / "pets")


def test_classes_counts_and_memory_source(folder):
    ds = build_dataset(folder_cfg(folder).data)
    assert ds.class_names == NAMES and ds.num_classes == 4
    assert list(ds.train_counts) == TRAIN_COUNTS
    assert isinstance(ds.train, ArraySplit) and ds.train.images.shape == (75, 16, 16, 3)
    assert ds.image_size == 16 and ds.imbalance is None  # the data brings its own split
    # the pixels are the files' pixels, in sorted order, and the statistics are the training images'
    first = np.asarray(Image.open(folder / "train" / "cat" / "000.png").convert("RGB"))
    assert np.array_equal(ds.train.images[0], first)
    x = ds.train.images.reshape(-1, 3) / 255.0
    assert np.allclose(ds.mean, x.mean(0)) and np.allclose(ds.std, x.std(0), rtol=1e-6)


def test_image_size_resizes_and_large_images_use_the_loader(folder, tmp_path):
    ds = build_dataset(folder_cfg(folder, **{"data.image_size": 24}).data)
    assert ds.train.images.shape[1:] == (24, 24, 3) and ds.test.images.shape[1:] == (24, 24, 3)
    big = make_folder(tmp_path / "big", counts=[3, 2, 2, 1], test=1, size=80, fmt="jpg")
    ds = build_dataset(folder_cfg(big).data)
    assert isinstance(ds.train, FileSplit) and ds.image_size == 224  # ImageNet-style transforms
    assert ds.train.paths[0] == "train/cat/000.jpg"
    ds = build_dataset(folder_cfg(big, **{"data.image_size": 96, "data.source": "loader"}).data)
    assert ds.image_size == 96


def test_long_tailed_option_follows_the_pinned_recipe(tmp_path):
    root = make_folder(tmp_path / "bal", counts=[20, 20, 20, 20], test=2)
    ds = build_dataset(folder_cfg(root, **{"data.long_tailed": "true", "data.imbalance": 10}).data)
    expected = lt_counts(20, 4, 10.0)
    assert list(ds.train_counts) == expected and ds.imbalance == 10.0
    labels = np.repeat(np.arange(4), 20)  # the sorted file list is class-major
    assert np.array_equal(ds.train_indices, select_lt_indices(labels, expected, 0))


@pytest.mark.parametrize("damage, match", [
    ("no_test", "has no test/ folder"),
    ("unknown_test_class", "class folders that .* lacks: zebra"),
    ("empty_class", "training class folders without images: dog"),
    ("mixed_sizes", "different sizes.*data.image_size"),
    ("bad_image", "1 of 75 images cannot be decoded.*fox/003.png"),
])
def test_bad_folders_are_clear_errors(tmp_path, damage, match):
    root = make_folder(tmp_path / "f")
    if damage == "no_test":
        import shutil

        shutil.rmtree(root / "test")
    elif damage == "unknown_test_class":
        (root / "test" / "zebra").mkdir()
        Image.new("RGB", (16, 16)).save(root / "test" / "zebra" / "a.png")
    elif damage == "empty_class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    elif damage == "mixed_sizes":
        Image.new("RGB", (20, 20)).save(root / "train" / "cat" / "999.png")
    elif damage == "bad_image":
        (root / "train" / "fox" / "003.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=match):
        build_dataset(folder_cfg(root).data)


def test_folder_needs_a_root_and_generated_sets_refuse_image_size(tmp_path):
    cfg = folder_cfg(tmp_path)
    cfg.data.root = None
    with pytest.raises(ConfigError, match="set data.root"):
        build_dataset(cfg.data)
    d = C.DataConfig(name="digits", imbalance=10, image_size=16)
    with pytest.raises(ConfigError, match="not resized"):
        build_dataset(d)


def test_the_decoded_folder_is_cached_outside_it_and_refreshed_on_change(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "f", counts=[4, 3, 2, 1], test=1)
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    first = build_dataset(folder_cfg(root).data)
    cached = sorted((tmp_path / "cache" / "folders").glob("*.npy"))
    assert len(cached) == 2 and not any(p.suffix == ".npy" for p in root.rglob("*"))
    from longtail.data import folder as F

    monkeypatch.setattr(F, "_decode_all", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    again = build_dataset(folder_cfg(root).data)
    assert np.array_equal(first.train.images, again.train.images)
    monkeypatch.undo()
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "train" / "cat" / "000.png")  # changed content
    changed = build_dataset(folder_cfg(root).data)
    assert np.array_equal(changed.train.images[0], np.full((16, 16, 3), (1, 2, 3), np.uint8))


def test_train_report_and_predict_end_to_end(folder, tmp_path, capsys):
    """Train on the folder through the CLI; the summary and report carry the class names and the measured
    imbalance; predict agrees with the evaluation on the test images."""
    cfg_path = tmp_path / "pets.yaml"
    cfg_path.write_text(f"name: pets\ndata:\n  name: folder\n  root: {folder}\nmodel:\n  backbone: resnet8\n"
                        f"  width: 8\nmethod:\n  name: la\noptim:\n  lr: 0.05\n  warmup_epochs: 0\n"
                        f"  schedule: constant\ntrain:\n  epochs: 6\n  batch_size: 32\n  progress: false\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(run), "device=cpu"]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["class_names"] == NAMES and s["train_counts"] == TRAIN_COUNTS
    assert s["imbalance"] == s["imbalance_measured"] == 8.0 and s["dataset"] == "folder"
    assert s["input"] == {"image_size": 16, "in_channels": 3, "mean": s["input"]["mean"], "std": s["input"]["std"],
                          "source": "memory"}
    assert main(["report", str(run)]) == 0
    report = (run / "report" / "report.md").read_text()
    assert "| classes | 4: cat, dog, fox, owl |" in report
    assert "| measured imbalance | 8.0" in report
    capsys.readouterr()
    out_csv = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(folder / "test"), "--top-k", "2", "--out", str(out_csv)]) == 0
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == 2 * 32 and {r["rank"] for r in rows} == {"1", "2"}
    top1 = [r for r in rows if r["rank"] == "1"]
    truth = [Path(r["path"]).parent.name for r in top1]
    acc = 100.0 * np.mean([r["name"] == t for r, t in zip(top1, truth)])
    assert acc == pytest.approx(s["top1"])  # the same images, preprocessing and network as the evaluation
    assert all(NAMES[int(r["class"])] == r["name"] for r in rows)
    probs = [float(r["probability"]) for r in rows]
    assert all(0 <= p <= 1 for p in probs)
    # the CSV is never silently replaced
    before = out_csv.read_bytes()
    assert main(["predict", str(run), str(folder / "test" / "owl" / "000.png"), "--out", str(out_csv)]) != 0
    assert out_csv.read_bytes() == before and "--overwrite" in capsys.readouterr().err


def test_predict_bad_inputs_are_one_line_errors(folder, tmp_path, capsys):
    from longtail.engine.run import train

    run = tmp_path / "run"
    train(folder_cfg(folder, **{"train.epochs": 1}), out=str(run), echo=lambda *a: None)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    for args, needle in ((["predict", str(run), str(tmp_path / "missing.png")], "does not exist"),
                         (["predict", str(run), str(bad)], "cannot be decoded"),
                         (["predict", str(tmp_path), str(bad)], "no config.yaml"),
                         (["predict", str(run), str(folder / "test"), "--top-k", "0"], "expected an integer >= 1")):
        capsys.readouterr()
        try:
            code = main(args)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        assert code != 0
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err, err
    capsys.readouterr()
    assert main(["predict", str(run), str(folder / "test" / "cat"), "--top-k", "9"]) == 0
    out, err = capsys.readouterr()
    assert "exceeds the run's 4 classes" in err and len(out.strip().splitlines()) == 1 + 8 * 4


def test_run_names_of_folders_and_the_report_says_the_split_is_the_datas(folder, tmp_path):
    assert C.run_name(folder_cfg(folder)) == "pets_ce_s0"
    assert C.run_name(folder_cfg(folder, **{"data.long_tailed": "true", "data.imbalance": 4})) == "pets_r4_ce_s0"
    assert C.run_name(folder_cfg(tmp_path / "my data!")) == "my_data__ce_s0"
    from longtail.engine.run import train

    run = train(folder_cfg(folder, **{"train.epochs": 1}), out=str(tmp_path / "r"), echo=lambda *a: None)
    assert main(["report", str(run)]) == 0
    report = (run / "report" / "report.md").read_text()
    assert "split generator" not in report  # the folder's own split: nothing was generated
