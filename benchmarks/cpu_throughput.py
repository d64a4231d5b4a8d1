"""CPU training throughput: longtail's in-memory batched pipeline vs a per-image PIL DataLoader pipeline.

Both pipelines train the same ResNet-32 with plain CE on CIFAR-10-LT (imbalance 100, 12,406 images),
batch 128, RandomCrop(32, padding 4) + horizontal flip + normalisation, SGD with momentum. The
per-image pipeline is how the papers' code loads CIFAR: a map-style dataset of uint8 arrays turned
into PIL images, torchvision transforms per image, and a shuffling DataLoader with worker processes.
Rounds alternate between the two pipelines in one process, so both see the same machine state.

Usage:
    python benchmarks/cpu_throughput.py --root DATA_ROOT [--steps 30] [--rounds 3] [--workers 2]
        [--out results/cpu_throughput]

DATA_ROOT holds ``cifar-10-batches-bin`` or ``cifar-10-batches-py``. Writes ``metrics.jsonl`` (one
line per timed round) and ``summary.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from longtail.config import Config, DataConfig
from longtail.data.augment import build_view
from longtail.data.batches import InMemoryBatches
from longtail.data.build import CIFAR_MEAN, CIFAR_STD, build_dataset
from longtail.data.samplers import build_sampler
from longtail.engine.run import git_commit
from longtail.models import build_network


class PILCifar(Dataset):
    """The reference pipeline: one PIL image and one transform call per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def make_model(seed: int):
    torch.manual_seed(seed)
    cfg = Config()
    net = build_network(cfg.model, 10, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    return net, opt


def train_steps(net, opt, batches, steps: int, train: bool = True) -> tuple[float, int]:
    """Time ``steps`` steps (data + forward + backward + update); returns (seconds, images)."""
    n = 0
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == steps:
            break
        if train:
            loss = F.cross_entropy(net(x).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        n += y.numel()
    return time.perf_counter() - t0, n


def ours_iter(src: InMemoryBatches, epoch: int):
    while True:
        for b in src.epoch(epoch):
            yield b.views[0], b.labels
        epoch += 1


def pil_iter(loader: DataLoader):
    while True:
        yield from loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", default="results/cpu_throughput")
    ap.add_argument("--no-verify", action="store_true")
    a = ap.parse_args()
    commit = git_commit()  # the code that runs, read before any later edit of the tree

    ds = build_dataset(DataConfig(name="cifar10", root=a.root, imbalance=100, verify=not a.no_verify))
    imgs, labels = ds.train.images, ds.train.labels
    dev = torch.device("cpu")
    view = build_view("standard", image_size=32, crop_padding=4, flip=True, cutout=0, mean=CIFAR_MEAN, std=CIFAR_STD)
    ours = InMemoryBatches(imgs, labels, views=[view], batch_size=a.batch_size,
                           sampler=build_sampler("instance", labels, seed=0), device=dev, seed=0)
    loader = DataLoader(PILCifar(imgs, labels), batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                        persistent_workers=a.workers > 0, drop_last=False)
    its = {"longtail": ours_iter(ours, 0), "pil_dataloader": pil_iter(loader)}
    net, opt = make_model(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "w")
    for name, it in its.items():  # warm-up: start workers, allocate, fill caches
        train_steps(net, opt, ((x, y) for x, y in it), 3)
    results: dict[str, dict[str, list[float]]] = {k: {"train": [], "data_only": []} for k in its}
    for r in range(a.rounds):
        for name, it in its.items():
            for mode in ("train", "data_only"):
                steps = a.steps if mode == "train" else 4 * a.steps
                sec, n = train_steps(net, opt, ((x, y) for x, y in it), steps, train=(mode == "train"))
                rec = {"round": r, "pipeline": name, "mode": mode, "steps": steps, "images": n, "seconds": sec,
                       "images_per_s": n / sec}
                results[name][mode].append(n / sec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec))
    log.close()
    summ = {
        "benchmark": "cpu_throughput", "dataset": "cifar10", "imbalance": 100, "model": "resnet32", "method": "ce",
        "batch_size": a.batch_size, "augment": "RandomCrop(32, pad 4) + flip", "workers_pil": a.workers,
        "steps_per_round": a.steps, "rounds": a.rounds,
        **{f"{k}_{m}_images_per_s_median": statistics.median(v[m]) for k, v in results.items() for m in v},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "data_verified": not a.no_verify,
    }
    for m in ("train", "data_only"):
        summ[f"speedup_{m}"] = summ[f"longtail_{m}_images_per_s_median"] / summ[f"pil_dataloader_{m}_images_per_s_median"]
    (out / "summary.json").write_text(json.dumps(summ, indent=1) + "\n")
    print(json.dumps(summ, indent=1))


if __name__ == "__main__":
    main()
