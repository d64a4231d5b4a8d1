"""The DLSA stage loop on cached features (docs/methods.md §4.1) and its run directory."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from longtail.data.splits import ShotRule
from longtail.stage2.dlsa.classifiers import (ClassifierInputs, ClusterAidedClassifier, RegularClassifier, predict,
                                       train_classifier)
from longtail.stage2.dlsa.config import DLSAConfig, load_dlsa_config
from longtail.stage2.dlsa.filtering import cluster_stats, llh_threshold, prior_table
from longtail.stage2.dlsa.mixture import score
from longtail.stage2.dlsa.train_flow import train_flow
from longtail.errors import DataError, LongtailError
from longtail.fileio import atomic_write
from longtail.metrics import MetricAccumulator
from longtail.rundir import RunDir, environment, summary_record
from longtail.stage2.features import read_feature_cache

GROUPS = ("many", "medium", "few")


def _seed(base: int, stage: int, part: int) -> int:
    # Distinct, reproducible streams per (stage, component). The regular classifier uses stage 0,
    # so its seed does not depend on how many stages ran (the ρ = 0 / D = 0 reduction relies on it).
    return (base * 1_000_003 + stage * 101 + part) % (2**63)


def _stage_entry(stage: int, kind: str, train_mask: torch.Tensor, test_idx: torch.Tensor, logits: torch.Tensor,
                 y_test: torch.Tensor, sample_group: np.ndarray, extra: dict) -> dict:
    from sklearn.metrics import matthews_corrcoef

    fm = train_mask.numpy()
    share = {g: (float(fm[sample_group == k].mean()) if (sample_group == k).any() else None)
             for k, g in enumerate(GROUPS)}
    acc = mcc = None
    if test_idx.numel():
        pred = logits.argmax(1)
        y = y_test[test_idx]
        acc = float((pred == y).double().mean() * 100)
        mcc = float(matthews_corrcoef(y.numpy(), pred.numpy()))
    return {"stage": stage, "kind": kind, "train_count": int(fm.sum()), "test_count": int(test_idx.numel()),
            "filtered_share": share, "accuracy": acc, "mcc": mcc, **extra}


def run_dlsa(features_dir: str | Path, out_dir: str | Path, *, config_path: Optional[str | Path] = None,
             overrides: Optional[list[str]] = None, device: str = "auto",
             echo: Callable[[str], None] = print, overwrite: bool = False) -> Path:
    """Run DLSA on a feature cache and write a run directory (a folder that already holds a run is refused
    unless ``overwrite``).

    Writes ``config.yaml`` (resolved DLSA config), ``metrics.jsonl`` (one line per flow or classifier
    epoch), ``predictions.npz`` (test labels, predictions and owner stage; 0 = regular classifier) and
    ``summary.json`` (the usual metrics plus ``stages``, one entry per CAC stage and a last one for the
    regular classifier). A stage's ``filtered_share`` is the share of each shot group's train samples
    that stage trains on (for the regular entry: the share left to it). ``selection`` is ``best_val``
    when every classifier chose its epoch on a non-empty val subset, ``last`` when none could, and
    ``mixed`` otherwise. ρ = 0 runs no flow at all (it would filter nothing), so ``stages`` then holds
    only the regular entry.

    Returns:
        the path of ``summary.json``.
    """
    from sklearn.metrics import normalized_mutual_info_score

    from longtail.engine.devices import device_name, resolve_device

    t0 = time.time()
    cfg: DLSAConfig = load_dlsa_config(config_path, overrides)
    dev = resolve_device(device)
    rd = RunDir(out_dir)
    rd.refuse_existing(overwrite=overwrite)
    if overwrite and Path(features_dir).resolve() == (rd.path / "features").resolve():
        raise LongtailError(f"--features {features_dir} lies inside the run folder {rd.path} that --overwrite "
                            f"would clear; pass features kept elsewhere")
    cache = read_feature_cache(features_dir)
    if overwrite:
        rd.clear()
    out = rd.create().path
    rd.write_config(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    C = cache.num_classes
    train_counts = torch.as_tensor(cache.class_counts)
    splits = {"train": cache.train, "test": cache.test}
    if cache.val is not None:
        splits["val"] = cache.val
    x = {s: torch.from_numpy(sp.features) for s, sp in splits.items()}
    y = {s: torch.from_numpy(sp.labels) for s, sp in splits.items()}
    active = {s: torch.ones(len(y[s]), dtype=torch.bool) for s in splits}
    owner = {s: torch.full((len(y[s]),), -1, dtype=torch.int64) for s in splits if s != "train"}
    test_pred = torch.full((len(y["test"]),), -1, dtype=torch.int64)
    shots = ShotRule.of(cache.meta.get("shot_rule"))  # the source run's groups
    sample_group = shots.ids(cache.class_counts)[cache.train.labels]
    acc = MetricAccumulator(C, keep_confusion=False)
    stages: list[dict] = []
    selections: set[str] = set()
    log_file = (out / "metrics.jsonl").open("w")

    def logger(stage: int, phase: str) -> Callable[[dict], None]:
        def log(row: dict) -> None:
            log_file.write(json.dumps({"stage": stage, "phase": phase, **row}) + "\n")
            log_file.flush()
        return log

    def inputs(split: str, idx: torch.Tensor, cluster=None, latent=None) -> ClassifierInputs:
        return ClassifierInputs(x[split][idx], y[split][idx], latent, None if cluster is None else cluster[idx])

    def assign(split_idx: dict, logits_test: torch.Tensor, stage: int) -> None:
        for s, idx in split_idx.items():
            if s == "train":
                continue
            assert bool((owner[s][idx] == -1).all()), "a sample was predicted twice"
            owner[s][idx] = stage
        if split_idx["test"].numel():
            acc.update(logits_test, y["test"][split_idx["test"]])
            test_pred[split_idx["test"]] = logits_test.argmax(1)

    depth = cfg.max_depth if cfg.llh_proportion > 0 else 0  # ρ = 0 filters nothing: skip the flows
    try:
        for t in range(1, depth + 1):
            idx_a = active["train"].nonzero().squeeze(1)
            if torch.unique(y["train"][idx_a]).numel() < 2:
                echo(f"dlsa: stage {t}: fewer than 2 classes remain active; stopping the filtering early")
                break
            echo(f"dlsa: stage {t}/{depth}: training the flow on {idx_a.numel()} active train samples")
            model, flow_sel = train_flow(x["train"][idx_a], y["train"][idx_a], C, cfg, dev,
                                         _seed(cfg.seed, t, 1), logger(t, "flow"))
            ll, cl = {}, {}
            for s in splits:
                ll[s], cl[s] = score(model, x[s], cfg.chunk_size, dev)
            thr = llh_threshold(ll["train"][idx_a], cfg.llh_proportion)
            filt = {s: (active[s] & (ll[s] >= thr)).nonzero().squeeze(1) for s in splits}
            st = cluster_stats(cl["train"][idx_a], y["train"][idx_a], cfg.num_clusters, C,
                               cfg.purity_threshold, cfg.min_cluster_size)
            nmi = float(normalized_mutual_info_score(y["train"][idx_a].numpy(), cl["train"][idx_a].numpy()))
            src = torch.arange(len(y["train"])) if cfg.prior_source == "all" else idx_a
            prior = prior_table(cl["train"][src], y["train"][src], cfg.num_clusters, C)
            lat = {s: None for s in splits}
            if cfg.z_input == "latent":
                for s in splits:
                    lat[s] = score(model, x[s][filt[s]], cfg.chunk_size, dev, with_latent=True)[2]
            ftr = filt["train"]
            assert ftr.numel() > 0, "a finite threshold filters at least one train sample"
            counts = torch.bincount(y["train"][ftr], minlength=C)
            cac = ClusterAidedClassifier(cache.train.features.shape[1], C, generator=torch.Generator().manual_seed(
                _seed(cfg.seed, t, 2)))
            val_in = inputs("val", filt["val"], cl["val"], lat["val"]) if "val" in splits else None
            cac, sel = train_classifier(
                cac, ClassifierInputs(x["train"][ftr], y["train"][ftr], lat["train"], cl["train"][ftr]), counts,
                epochs=cfg.cls_epochs, lr=cfg.cls_lr, batch_size=cfg.cls_batch, eval_every=cfg.eval_every,
                device=dev, seed=_seed(cfg.seed, t, 3), prior=prior, val=val_in, log=logger(t, "cac"))
            selections.add(sel["selection"])
            logits = predict(cac, inputs("test", filt["test"], cl["test"], lat["test"]), prior.to(dev), dev)
            assign(filt, logits, t)
            mask = torch.zeros(len(y["train"]), dtype=torch.bool)
            mask[ftr] = True
            stages.append(_stage_entry(t, "cac", mask, filt["test"], logits, y["test"], sample_group, {
                "purity": st["mean_purity"], "nmi": nmi, "good_clusters": st["good"],
                "max_cluster": st["max_size"], "non_empty_clusters": st["non_empty"], "threshold": thr,
                "flow_epoch": flow_sel["epoch"], "val_count": int(filt["val"].numel()) if "val" in filt else 0,
                "selected_epoch": sel["epoch"]}))
            echo(f"dlsa: stage {t}: filtered {ftr.numel()} train / {filt['test'].numel()} test samples, "
                 f"accuracy {_pct(stages[-1]['accuracy'])}")
            for s in splits:
                active[s][filt[s]] = False

        rest = {s: active[s].nonzero().squeeze(1) for s in splits}
        rtr = rest["train"]
        entry_extra = {"purity": None, "nmi": None}
        if rtr.numel() == 0:
            if rest["test"].numel() or ("val" in rest and rest["val"].numel()):
                raise DataError("no train samples remain for the regular classifier but some test samples do; "
                                "lower llh_proportion")
            logits = torch.empty(0, C)
        else:
            counts = train_counts if cfg.regular_bsm_counts == "all" else torch.bincount(y["train"][rtr], minlength=C)
            reg = RegularClassifier(cache.train.features.shape[1], C,
                                    generator=torch.Generator().manual_seed(_seed(cfg.seed, 0, 2)))
            val_in = inputs("val", rest["val"]) if "val" in splits else None
            echo(f"dlsa: regular classifier on {rtr.numel()} train samples")
            reg, sel = train_classifier(reg, inputs("train", rtr), counts, epochs=cfg.cls_epochs, lr=cfg.cls_lr,
                                        batch_size=cfg.cls_batch, eval_every=cfg.eval_every, device=dev,
                                        seed=_seed(cfg.seed, 0, 3), val=val_in, log=logger(0, "regular"))
            selections.add(sel["selection"])
            entry_extra["selected_epoch"] = sel["epoch"]
            logits = predict(reg, inputs("test", rest["test"]), None, dev)
        assign(rest, logits, 0)
        mask = torch.zeros(len(y["train"]), dtype=torch.bool)
        mask[rtr] = True
        stages.append(_stage_entry(len(stages) + 1, "regular", mask, rest["test"], logits, y["test"],
                                   sample_group, entry_extra))
    finally:
        log_file.close()

    for s, o in owner.items():  # the partition invariant: every val/test sample has exactly one owner
        assert bool((o >= 0).all()), f"some {s} samples got no prediction"
    assert sum(e["test_count"] for e in stages) == len(y["test"])
    atomic_write(out / "predictions.npz", lambda tmp: _savez(tmp, labels=y["test"].numpy(), pred=test_pred.numpy(),
                                                              owner=owner["test"].numpy()))
    meta = cache.meta
    tags = {k: meta[k] for k in ("dataset", "imbalance", "backbone", "epochs", "batch_size", "augment") if k in meta}
    tags.update({"method": f"{meta['method']}+dlsa" if meta.get("method") else "dlsa", "seed": cfg.seed,
                 "selection": "best_val" if selections == {"best_val"} else
                 ("last" if selections <= {"last"} else "mixed")})
    counts = [int(c) for c in np.asarray(cache.class_counts)]
    summary = summary_record(kind="dlsa", name=out.name, tags=tags, metrics=acc.compute(cache.class_counts, shots),
                             train_counts=counts, wall_seconds=round(time.time() - t0, 3),
                             class_names=meta.get("class_names") or [str(i) for i in range(len(counts))],
                             env=environment(device_name(dev)), data_verified=bool(meta.get("data_verified", True)),
                             extra={"feature_source": str(features_dir), "stages": stages}, shots=shots)
    path = rd.write_summary(summary)
    echo(f"dlsa: top-1 {_pct(summary['top1'])} (Many {_pct(summary['many'])}, Medium {_pct(summary['medium'])}, "
         f"Few {_pct(summary['few'])}); wrote {out}")
    return path


def _pct(v) -> str:
    """A percentage as printed: two decimals, "—" for none (an empty group or no test sample)."""
    return "—" if v is None else f"{v:.2f}"


def _savez(path: Path, **arrays) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(f, **arrays)
