"""Time and peak host memory of one DLSA stage on synthetic iNat-shaped features, as N grows.

One stage here = build a GMFlow (K clusters, d = 2048), train it for one epoch on N samples (one
epoch = N pair items, plus the end-of-epoch cluster assignment used for epoch selection), score all N
samples (log p(x), cluster; streamed in chunks), compute the threshold and the K×C prior table with
C = 8,142. Classifier training is not included. Each N runs in a fresh subprocess so that ru_maxrss
(the peak resident set size, which never decreases) belongs to that N alone; tracemalloc does not see
torch's allocations.

Usage:
    python benchmarks/dlsa_stage.py --out results/dlsa_stage [--sizes 2000 4000 8000] [--threads 2]

Writes ``metrics.jsonl`` (one line per N) and ``summary.json`` (command, machine, torch, date).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

NUM_CLASSES, DIM = 8142, 2048


def one(n: int, k: int, batch: int, threads: int) -> dict:
    import torch

    from longtail.stage2.dlsa.config import DLSAConfig
    from longtail.stage2.dlsa.filtering import llh_threshold, prior_table
    from longtail.stage2.dlsa.mixture import score
    from longtail.stage2.dlsa.train_flow import train_flow

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    # Zipf-like long-tailed labels over 8,142 classes (at small N many classes are absent)
    weights = 1.0 / torch.arange(1, NUM_CLASSES + 1, dtype=torch.float64)
    labels = torch.multinomial(weights, n, replacement=True, generator=gen)
    feats = torch.randn(n, DIM, generator=gen) * 0.5 + 0.1 * torch.randn(NUM_CLASSES, DIM, generator=gen)[labels]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = DLSAConfig(num_clusters=k, flow_epochs=1, flow_batch=batch)
    t0 = time.perf_counter()
    model, _ = train_flow(feats, labels, NUM_CLASSES, cfg, torch.device("cpu"), seed=0)
    t1 = time.perf_counter()
    ll, cluster = score(model, feats, cfg.chunk_size)
    thr = llh_threshold(ll, cfg.llh_proportion)
    table = prior_table(cluster, labels, k, NUM_CLASSES)
    t2 = time.perf_counter()
    assert table.shape == (k, NUM_CLASSES) and torch.isfinite(torch.tensor(thr))
    return {"n": n, "num_classes": NUM_CLASSES, "dim": DIM, "k": k, "flow_batch": batch, "threads": threads,
            "flow_epoch_s": round(t1 - t0, 3), "score_and_priors_s": round(t2 - t1, 3),
            "stage_s": round(t2 - t0, 3), "features_mb": round(feats.numel() * 4 / 2**20, 1),
            "maxrss_before_mb": round(rss0 / 1024, 1),
            "maxrss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run a single N and print JSON
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.k, args.batch, args.threads)))
        return
    import torch

    from longtail.engine.run import git_commit

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with (args.out / "metrics.jsonl").open("w") as f:
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--out", str(args.out), "--one", str(n), "--k", str(args.k),
                   "--batch", str(args.batch), "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)
    summary = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "rows": rows,
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": __import__("os").cpu_count()},
               "torch": torch.__version__, "commit": git_commit(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
