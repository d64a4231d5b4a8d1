"""Resampling of the batched geometric ops against Pillow, and its cost.

Agreement: ``--cases`` random (op, parameter, image size, fill) cases, two random uint8 RGB images each, sizes
8..79 px per side; ops rotate (±30 deg), shear x/y (±0.3) and translate x/y (±0.45 of the side); every mode
(nearest, bilinear, bicubic) is compared with Pillow's ``Image.rotate`` / ``Image.transform(AFFINE)`` given
the same float32 parameter. Reported: values compared, values that differ, largest difference in 8-bit levels.

Cost: one op (rotate by 13 degrees) per mode on one 3x224x224 image (the DataLoader path of the large-image
presets) and on a batch of 256 3x32x32 images (the in-memory CIFAR path), best of ``--repeats`` calls, one
intra-op thread.

    python benchmarks/interpolation.py --out results/interpolation/summary.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import PIL
import torch
from PIL import Image

from longtail.data import pil_ops

RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _pillow(a: np.ndarray, op: str, v: float, mode: str, fill: tuple) -> np.ndarray:
    im = Image.fromarray(a)
    if op == "rotate":
        return np.asarray(im.rotate(v, resample=RESAMPLE[mode], fillcolor=fill))
    data = {"shear_x": (1, v, 0, 0, 1, 0), "shear_y": (1, 0, 0, v, 1, 0), "translate_x": (1, 0, v, 0, 1, 0),
            "translate_y": (1, 0, 0, 0, 1, v)}[op]
    return np.asarray(im.transform(im.size, Image.AFFINE, data, RESAMPLE[mode], fillcolor=fill))


def agreement(cases: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {m: {"values": 0, "differing": 0, "max_abs_diff_levels": 0} for m in RESAMPLE}
    for k in range(cases):
        h, w = (int(s) for s in rng.integers(8, 80, 2))
        arr = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
        op = OPS[k % len(OPS)]
        side = w if op == "translate_x" else h
        v = float(np.float32({"rotate": rng.uniform(-30, 30), "shear_x": rng.uniform(-0.3, 0.3),
                              "shear_y": rng.uniform(-0.3, 0.3)}.get(op, rng.uniform(-0.45, 0.45) * side)))
        fill = tuple(int(f) for f in rng.integers(0, 256, 3))
        for mode, r in out.items():
            got = getattr(pil_ops, op)(x, v, tuple(f / 255 for f in fill), interpolation=mode)
            got = (got * 255).round().long().permute(0, 2, 3, 1).numpy()
            ref = np.stack([_pillow(a, op, v, mode, fill) for a in arr]).astype(np.int64)
            diff = np.abs(got - ref)
            r["values"] += diff.size
            r["differing"] += int((diff > 0).sum())
            r["max_abs_diff_levels"] = max(r["max_abs_diff_levels"], int(diff.max()))
    return out


def timing(repeats: int) -> dict:
    torch.set_num_threads(1)
    out = {}
    for name, shape in (("1x3x224x224", (1, 3, 224, 224)), ("256x3x32x32", (256, 3, 32, 32))):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
        for mode in ("nearest", "bilinear", "bicubic", "random"):
            g = torch.Generator().manual_seed(0)
            pil_ops.rotate(x, 13.0, interpolation=mode, g=g)
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                pil_ops.rotate(x, 13.0, interpolation=mode, g=g)
                best = min(best, time.perf_counter() - t)
            out[f"{name} {mode}"] = round(best * 1e3, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=150)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None, help="write the summary as JSON here")
    a = ap.parse_args()
    summary = {"agreement": agreement(a.cases, a.seed), "rotate_ms_best": timing(a.repeats),
               "cases": a.cases, "seed": a.seed, "pillow": PIL.__version__, "torch": torch.__version__,
               "python": platform.python_version(), "machine": platform.machine(),
               "date": time.strftime("%Y-%m-%d")}
    text = json.dumps(summary, indent=1)
    print(text)
    if a.out:
        import pathlib

        pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
