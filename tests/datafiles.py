"""Writers of small synthetic files in the official dataset layouts (for the data-reader tests).

The pixels are synthetic; the layouts (folder and file names, pickle keys, record structure, meta files)
are those of the official CIFAR distributions and of Tiny-ImageNet-200.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_cifar(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 [32, 32, 3] images and labels in 0..num_classes-1."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, num_classes, n).astype(np.int64)


def chw_rows(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] HWC -> [N, 3072] rows: 1024 R values, then G, then B, each plane row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 pickles


def _class_names(name: str) -> tuple[list[str], list[str]]:
    if name == "cifar10":
        return CIFAR10_NAMES, []
    return [f"fine_{i:02d}" for i in range(100)], [f"coarse_{i:02d}" for i in range(20)]


def write_cifar_python(
    folder: Path,
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    coarse: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> Path:
    """Write ``cifar-10-batches-py`` (5 train batches) or ``cifar-100-python`` under ``folder``.

    ``coarse``: (train, test) coarse labels for CIFAR-100 (default: fine // 5). Returns the official folder.
    """
    fine_names, coarse_names = _class_names(name)
    if name == "cifar10":
        out = Path(folder) / "cifar-10-batches-py"
        out.mkdir(parents=True, exist_ok=True)
        parts = np.array_split(np.arange(len(train_labels)), 5)
        for b, idx in enumerate(parts, start=1):
            _dump(out / f"data_batch_{b}", {
                b"batch_label": f"training batch {b} of 5".encode(),
                b"labels": [int(v) for v in train_labels[idx]],
                b"data": chw_rows(train_images[idx]),
                b"filenames": [f"synthetic_{i:06d}.png".encode() for i in idx],
            })
        _dump(out / "test_batch", {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [int(v) for v in test_labels],
            b"data": chw_rows(test_images),
            b"filenames": [f"synthetic_{i:06d}.png".encode() for i in range(len(test_labels))],
        })
        _dump(out / "batches.meta", {
            b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in fine_names], b"num_vis": 3072,
        })
        return out
    out = Path(folder) / "cifar-100-python"
    out.mkdir(parents=True, exist_ok=True)
    coarse = coarse if coarse is not None else (train_labels // 5, test_labels // 5)
    splits = (("train", train_images, train_labels, coarse[0]), ("test", test_images, test_labels, coarse[1]))
    for split, x, y, c in splits:
        _dump(out / split, {
            b"filenames": [f"synthetic_{i:06d}.png".encode() for i in range(len(y))],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in y],
            b"coarse_labels": [int(v) for v in c],
            b"data": chw_rows(x),
        })
    _dump(out / "meta", {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    })
    return out


def write_cifar_binary(
    folder: Path,
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    coarse: Optional[tuple[np.ndarray, np.ndarray]] = None,
    meta: bool = True,
) -> Path:
    """Write ``cifar-10-batches-bin`` or ``cifar-100-binary`` under ``folder``; returns the official folder.

    Records: label byte(s) (CIFAR-100: coarse, then fine) followed by 3,072 pixel bytes (R, G, B planes).
    """
    fine_names, coarse_names = _class_names(name)

    def records(x: np.ndarray, *labels: np.ndarray) -> bytes:
        cols = [np.asarray(lab, dtype=np.uint8)[:, None] for lab in labels]
        return np.concatenate(cols + [chw_rows(x)], axis=1).tobytes()

    if name == "cifar10":
        out = Path(folder) / "cifar-10-batches-bin"
        out.mkdir(parents=True, exist_ok=True)
        for b, idx in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
            (out / f"data_batch_{b}.bin").write_bytes(records(train_images[idx], train_labels[idx]))
        (out / "test_batch.bin").write_bytes(records(test_images, test_labels))
        if meta:
            (out / "batches.meta.txt").write_text("\n".join(fine_names) + "\n\n")
        return out
    out = Path(folder) / "cifar-100-binary"
    out.mkdir(parents=True, exist_ok=True)
    coarse = coarse if coarse is not None else (train_labels // 5, test_labels // 5)
    (out / "train.bin").write_bytes(records(train_images, coarse[0], train_labels))
    (out / "test.bin").write_bytes(records(test_images, coarse[1], test_labels))
    if meta:
        (out / "fine_label_names.txt").write_text("\n".join(fine_names) + "\n")
        (out / "coarse_label_names.txt").write_text("\n".join(coarse_names) + "\n")
    return out


def write_cifar100_python_real(out: Path, split: str, header: bytes, trailer: bytes, images: np.ndarray) -> Path:
    """An official-format CIFAR-100 pickle: the real ``header`` + synthetic pixel rows + the real ``trailer``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / split).write_bytes(header + chw_rows(images).tobytes() + trailer)
    return out / split


def make_archive(path: Path, src: Path) -> Path:
    """Pack the folder ``src`` (as its own top-level entry) into a .tar.gz or .zip at ``path``."""
    path, src = Path(path), Path(src)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted(src.rglob("*")):
                zf.write(f, f.relative_to(src.parent).as_posix())
    else:
        with tarfile.open(path, "w:gz") as tf:
            tf.add(src, arcname=src.name)
    return path


def tar_with(path: Path, members: Sequence[tarfile.TarInfo], payload: bytes = b"x") -> Path:
    """A .tar holding the given members (regular files get ``payload`` as content)."""
    with tarfile.open(path, "w") as tf:
        for m in members:
            if m.isfile():
                m.size = len(payload)
                tf.addfile(m, io.BytesIO(payload))
            else:
                tf.addfile(m)
    return path


def class_color(c: int) -> tuple[int, int, int]:
    """A distinct solid colour per class, far enough apart to survive JPEG."""
    return (40 * (c % 6) + 20, 60 * ((c // 6) % 4) + 20, 200 - 30 * (c % 5))


def write_tiny_imagenet(
    root: Path,
    wnids: Sequence[str],
    per_class: int,
    keep: Optional[set[str]] = None,
    val_per_class: int = 2,
    gray: Sequence[str] = (),
) -> Path:
    """A small ``tiny-imagenet-200`` folder: wnids.txt, words.txt, train JPEGs, val JPEGs + annotations.

    Args:
        root: where ``tiny-imagenet-200/`` is created.
        wnids: class ids (written unsorted on purpose, as the official file is).
        per_class: train images per class, named ``{wnid}_{k}.JPEG``.
        keep: relative train paths to write (default: all), to imitate a partial copy.
        val_per_class: val images per class.
        gray: relative paths (train or val) written as grayscale JPEGs.

    Every image is a solid colour: ``class_color(sorted position of its wnid)``.
    """
    folder = Path(root) / "tiny-imagenet-200"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(list(wnids))))
    (folder / "words.txt").write_text("n00000001\tentity\n" + "".join(f"{w}\tthing {w}\n" for w in wnids))
    order = {w: i for i, w in enumerate(sorted(wnids))}

    def save(rel: str, c: int) -> None:
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (64, 64), class_color(c))
        (img.convert("L") if rel in gray else img).save(p, "JPEG", quality=95)

    for w in wnids:
        for k in range(per_class):
            rel = f"train/{w}/images/{w}_{k}.JPEG"
            if keep is None or rel in keep:
                save(rel, order[w])
    lines, n = [], 0
    for w in wnids:
        for _ in range(val_per_class):
            save(f"val/images/val_{n}.JPEG", order[w])
            lines.append(f"val_{n}.JPEG\t{w}\t0\t0\t63\t63\n")
            n += 1
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return folder
