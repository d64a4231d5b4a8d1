"""Regenerate src/longtail/data/splits.json (persisted split checksums).

Usage: python tools/make_splits.py CIFAR10_TRAIN_LABELS.u8 CIFAR100_TRAIN_FINE_LABELS.u8
(raw uint8 label files, one byte per train image in release order)."""
import json, sys
import numpy as np
sys.path.insert(0, "src")
from longtail.data.splits import lt_counts, select_lt_indices, indices_sha256, split_key
from longtail.data.digits import load_digits_arrays, digits_train_indices
cifar10 = np.fromfile(sys.argv[1], dtype=np.uint8).astype(np.int64)
cifar100 = np.fromfile(sys.argv[2], dtype=np.uint8).astype(np.int64)
out = {}
for name, labels, nmax, C in [("cifar10", cifar10, 5000, 10), ("cifar100", cifar100, 500, 100),
                              ("tinyimagenet", np.repeat(np.arange(200), 500), 500, 200)]:
    out[name] = {}
    for r in (1, 10, 20, 50, 100, 200, 256):
        for prof in ("exp", "step"):
            idx = select_lt_indices(labels, lt_counts(nmax, C, r, prof), 0)
            out[name][split_key(r, 0, prof)] = {"total": int(len(idx)), "sha256": indices_sha256(idx)}
_, dl = load_digits_arrays()
out["digits"] = {}
for r in (1, 5, 10, 20, 50, 100):
    for prof in ("exp", "step"):
        idx = digits_train_indices(dl, r, prof)
        out["digits"][split_key(r, 0, prof)] = {"total": int(len(idx)), "sha256": indices_sha256(idx)}
json.dump(out, open("src/longtail/data/splits.json", "w"), indent=1, sort_keys=True)
print({k: {kk: v["total"] for kk, v in d.items() if kk.startswith("exp")} for k, d in out.items()})
