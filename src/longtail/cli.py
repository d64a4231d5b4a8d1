"""The ``longtail`` command line. It parses arguments and calls the library; it has no logic of its own.

    longtail train --config FILE [--out DIR] [--resume DIR] [--seeds S [S ...]] [--overwrite] [KEY=VALUE ...]
    longtail eval RUN_DIR [--ema] [KEY=VALUE ...]
    longtail predict RUN_DIR PATH [PATH ...] [--top-k K] [--out FILE.csv]
    longtail report RUN_DIR [--out DIR] [--overwrite]
    longtail compare RUN_DIR [RUN_DIR ...] [--format markdown|csv|json] [--out FILE] [--plot FILE.png]
    longtail config show CONFIG [KEY=VALUE ...]
    longtail data info NAME --imbalance R [--json]
    longtail data indices NAME --imbalance R [--root DIR]
    longtail extract RUN_DIR --out DIR [--splits train,val,test] [--overwrite]
    longtail bench CONFIG [--steps N] [--json] [KEY=VALUE ...]
    longtail reproduce SUITE --out DIR [--seeds 0 1 2] [--parallel K] [--no-stack]
    longtail dlsa --features DIR [--config FILE] --out DIR [--overwrite] [KEY=VALUE ...]
    longtail decouple RUN_DIR --method {crt,lws,tau_norm,posthoc_la} --out DIR [--features DIR] [--overwrite] [KEY=VALUE ...]

Every command that writes refuses to replace a finished output (a run, features, a report, a file)
unless ``--overwrite`` is given. User errors, file-system errors included, print one line and exit
non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from longtail.errors import EXIT_CODES, LongtailError

GENERATED = ("cifar10", "cifar100", "tinyimagenet", "digits")
OVERWRITE_HELP = "replace an existing finished output (without it, an existing output is refused and kept)"


def _finite(text: str) -> float:
    """An argparse type: a finite float (NaN and infinities are refused)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (got {text!r})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number (got {text!r})")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (got {text!r})")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    common.add_argument("--plugin", action="append", default=None, metavar="MODULE",
                        help="import MODULE (a module name or a .py file) first: it may register methods, datasets, "
                             "backbones, heads, samplers or augmentation presets; repeatable")
    p = _Parser(prog="longtail", parents=[common],
                                description="Long-tailed image recognition: train, evaluate, report.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", parents=[common], help="train a model from a YAML config")
    t.add_argument("--config", help="YAML config file (with --resume: defaults to RUN_DIR/config.yaml)")
    t.add_argument("--out", help="run directory (default: <out_dir>/<name>)")
    t.add_argument("--resume", metavar="RUN_DIR", action="append",
                   help="continue the run in RUN_DIR from checkpoints/last.pt; repeated: continue several seeds' runs "
                        "together as one stacked network")
    t.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="train these seeds together as one stacked network (train.seeds); --out is then the folder "
                        "that receives their N run directories")
    t.add_argument("--overwrite", action="store_true", help="start afresh in a folder that already holds a run "
                                                            "(its run files are deleted first)")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=0.05")

    e = sub.add_parser("eval", parents=[common], help="re-evaluate a run and check it against summary.json")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="e.g. data.root=/data eval.posthoc_tau=1.0 device=cpu")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--ema", action="store_true", help="evaluate the moving average of the weights "
                                                      "(model_ema.safetensors; runs trained with train.ema_decay)")

    pr = sub.add_parser("predict", parents=[common], help="top-k predictions of a trained run for image files, as CSV")
    pr.add_argument("run_dir")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    pr.add_argument("--top-k", type=_positive_int, default=5)
    pr.add_argument("--out", help="write the CSV to this file (default: standard output)")
    pr.add_argument("--batch-size", type=_positive_int, default=256)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    r = sub.add_parser("report", parents=[common], help="write report.md, per_class.csv and figures of a run")
    r.add_argument("run_dir")
    r.add_argument("--out", help="folder for the report (default: RUN_DIR/report)")
    r.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    c = sub.add_parser("compare", parents=[common], help="one row per configuration, mean ± std over its seeds")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--format", default="markdown", choices=("markdown", "csv", "json"))
    c.add_argument("--out", help="write the table to this file (default: standard output)")
    c.add_argument("--plot", metavar="FILE.png", help="also draw the groups' figure (PNG, and a PDF beside it)")
    c.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    cf = sub.add_parser("config", parents=[common], help="inspect configs")
    cfsub = cf.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    cs = cfsub.add_parser("show", parents=[common], help="the resolved config: every key, its value, default and help")
    cs.add_argument("config", help="a YAML config file (may name a base: file)")
    cs.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    x = sub.add_parser("extract", parents=[common], help="write a run's backbone features to DIR/features_{split}.h5")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True, help="output folder for features_{split}.h5 and features.json")
    x.add_argument("--splits", default=None, help="comma-separated, e.g. train,val,test (default: train,test, "
                                                  "plus val where the dataset has one)")
    x.add_argument("--batch-size", type=int, default=512)
    x.add_argument("--device", default="auto")
    x.add_argument("--data-root", default=None, help="where the run's dataset is now (default: the run's data.root)")
    x.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    dc = sub.add_parser("decouple", parents=[common], help="decoupled stage 2 on a trained run (cRT, LWS, tau-norm, post-hoc LA)")
    dc.add_argument("run_dir")
    dc.add_argument("--method", required=True, choices=("crt", "lws", "tau_norm", "posthoc_la"))
    dc.add_argument("--out", required=True, help="the new run directory")
    dc.add_argument("--features", default=None, help="cached features from 'longtail extract' (default: extract now)")
    dc.add_argument("--device", default="auto")
    dc.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    dc.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="stage-2 settings, e.g. epochs=10 lr=0.2 tau=1.0")

    b = sub.add_parser("bench", parents=[common], help="training images/s: ours vs a per-image PIL DataLoader, same run")
    b.add_argument("config")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the reference pipeline (default: one per CPU core)")
    b.add_argument("--device", default="auto")
    b.add_argument("--json", action="store_true")
    b.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    rp = sub.add_parser("reproduce", parents=[common], help="run a suite of config x seed runs and compare with published numbers (and our own goals)")
    rp.add_argument("suite", help="smoke, cifar10_lt, tinyimagenet_lt, or a suite YAML file")
    rp.add_argument("--out", required=True)
    rp.add_argument("--seeds", type=int, nargs="+", default=[0])
    rp.add_argument("--parallel", type=int, default=1, help="runs at once on one GPU (CPU: one after another)")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--max-retries", type=int, default=1)
    rp.add_argument("--no-stack", action="store_true",
                    help="train each seed on its own (default: a configuration's seeds train together as one "
                         "stacked network when --parallel is 1)")
    rp.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    dl = sub.add_parser("dlsa", parents=[common], help="DLSA (flow-based label-space adjustment) on cached features")
    dl.add_argument("--features", required=True, help="folder from 'longtail extract' (or your own features_*.h5)")
    dl.add_argument("--config", default=None, help="DLSA config, e.g. configs/dlsa/cifar_small.yaml")
    dl.add_argument("--out", required=True, help="the new run directory")
    dl.add_argument("--device", default="auto")
    dl.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    dl.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. max_depth=3 llh_proportion=0.3")

    d = sub.add_parser("data", parents=[common], help="inspect the long-tailed splits")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    for name, hlp in (("info", "per-class counts, total and shot groups"),
                      ("indices", "selected original train indices, one per line, ascending")):
        x = dsub.add_parser(name, parents=[common], help=hlp)
        x.add_argument("name", choices=GENERATED)
        x.add_argument("--imbalance", type=_finite, required=True, help="imbalance factor rho >= 1")
        x.add_argument("--profile", default="exp", choices=("exp", "step"))
        x.add_argument("--step-fraction", type=_finite, default=0.5)
        x.add_argument("--split-seed", type=int, default=0)
        if name == "info":
            x.add_argument("--json", action="store_true", help="print JSON with counts, total and shots")
        else:
            x.add_argument("--root", help="data root (default: $LONGTAIL_DATA, else ~/.cache/longtail)")
            x.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    return p


def _cmd_train(a) -> int:
    from longtail import config as C
    from longtail.engine.run import load_resume_config, train

    command = "longtail " + " ".join(shlex.quote(x) for x in sys.argv[1:]) if sys.argv else ""
    overrides = list(a.overrides) + ([f"train.seeds=[{','.join(str(s) for s in a.seeds)}]"] if a.seeds else [])
    if a.resume and len(a.resume) > 1:  # several seeds' runs, continued together
        from longtail.engine.stacked import resume_seeds

        if a.config or a.seeds or a.out or a.overwrite:
            raise LongtailError("--resume given several times continues those runs with their own configs: "
                                "--config, --seeds, --out and --overwrite do not apply")
        resume_seeds(a.resume, overrides, command=command)
        return 0
    resume = a.resume[0] if a.resume else None
    if resume:
        cfg = load_resume_config(resume, a.config, overrides)
    else:
        if not a.config:
            raise LongtailError("train needs --config FILE (or --resume RUN_DIR)")
        cfg = C.load(a.config, overrides)
    train(cfg, out=a.out, resume=resume, command=command, overwrite=a.overwrite)
    return 0


def _cmd_eval(a) -> int:
    from longtail.engine.run import evaluate_run

    m = evaluate_run(Path(a.run_dir), a.overrides, echo=(lambda *x: None) if a.json else print, ema=a.ema)
    if a.json and os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 prints
        print(json.dumps(m, indent=1))
    return 0


def _cmd_report(a) -> int:
    from longtail.report import write_report

    path = write_report(Path(a.run_dir), out=a.out, overwrite=a.overwrite)
    print(f"wrote {path}")
    return 0


def _cmd_compare(a) -> int:
    from longtail.report import write_comparison

    text, written = write_comparison([Path(p) for p in a.run_dirs], fmt=a.format, out=a.out, plot=a.plot,
                                     overwrite=a.overwrite)
    if a.out is None:
        sys.stdout.write(text)
    for path in written:  # beside a table on standard output, on standard error
        print(f"wrote {path}", file=sys.stdout if a.out is not None else sys.stderr)
    return 0


def _cmd_config(a) -> int:
    from longtail.config import show

    if a.config_command != "show":  # pragma: no cover - argparse allows show only
        raise LongtailError(f"unknown config subcommand '{a.config_command}'")
    sys.stdout.write(show(a.config, a.overrides or []))
    return 0


def _cmd_predict(a) -> int:
    from longtail.fileio import atomic_write_text, refuse_overwrite
    from longtail.predict import predict, predictions_csv

    if a.out:
        refuse_overwrite(a.out, "a file", a.overwrite)
    rows = predict(Path(a.run_dir), a.paths, top_k=a.top_k, batch_size=a.batch_size, device=a.device)
    if rows and len(rows[0]["top"]) < a.top_k:
        print(f"note: --top-k {a.top_k} exceeds the run's {len(rows[0]['top'])} classes: all are listed",
              file=sys.stderr)
    text = predictions_csv(rows)
    if a.out:
        atomic_write_text(a.out, text)
        print(f"wrote {a.out} ({len(rows)} images, top-{len(rows[0]['top']) if rows else a.top_k})")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_data(a) -> int:
    from longtail.config import DataConfig
    from longtail.data.build import split_indices, split_info

    if a.imbalance < 1:
        raise LongtailError(f"--imbalance must be >= 1 (got {a.imbalance:g})")
    if a.data_command == "info":
        info = split_info(a.name, a.imbalance, a.profile, a.step_fraction)
        if a.json:
            print(json.dumps({k: info[k] for k in ("counts", "total", "shots")}))
            return 0
        counts = info["counts"]
        print(f"{a.name} long-tailed split: imbalance {a.imbalance:g}, profile {a.profile}, split seed {a.split_seed}")
        print("per-class counts: " + ", ".join(str(c) for c in counts))
        print(f"total: {info['total']}")
        s = info["shots"]
        print(f"classes: {len(counts)} (Many {s['many']} / Medium {s['medium']} / Few {s['few']}; "
              f"Many n>100, Medium 20<=n<=100, Few n<20)")
        return 0
    dcfg = DataConfig(name=a.name, root=a.root, imbalance=a.imbalance, profile=a.profile,
                      step_fraction=a.step_fraction, split_seed=a.split_seed, verify=not a.no_verify)
    idx = sorted(int(i) for i in split_indices(dcfg))
    sys.stdout.write("".join(f"{i}\n" for i in idx))
    return 0


def _cmd_extract(a) -> int:
    from longtail.stage2.features import extract_features

    kw = {}
    if a.splits:
        kw["splits"] = tuple(x.strip() for x in a.splits.split(",") if x.strip())
    else:
        from longtail import config as C

        cfg_path = Path(a.run_dir) / "config.yaml"
        if cfg_path.is_file() and C.load(cfg_path).data.val_list:
            kw["splits"] = ("train", "val", "test")
    paths = extract_features(Path(a.run_dir), Path(a.out), batch_size=a.batch_size, device=a.device,
                             data_root=a.data_root, overwrite=a.overwrite, **kw)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def _cmd_decouple(a) -> int:
    from longtail.stage2.decouple import run_decouple

    run_decouple(Path(a.run_dir), a.method, Path(a.out), features_dir=Path(a.features) if a.features else None,
                 overrides=a.overrides, device=a.device, overwrite=a.overwrite)
    return 0


def _cmd_bench(a) -> int:
    from longtail.bench import format_bench, run_bench

    r = run_bench(a.config, steps=a.steps, warmup=a.warmup, overrides=a.overrides, device=a.device, workers=a.workers)
    print(json.dumps(r, indent=1) if a.json else format_bench(r))
    return 0


def _cmd_reproduce(a) -> int:
    from longtail.reproduce import run_suite

    path = run_suite(a.suite, Path(a.out), seeds=tuple(a.seeds), parallel=a.parallel, overrides=a.overrides,
                     device=a.device, max_retries=a.max_retries, stack=not a.no_stack)
    print(f"wrote {path}")
    return 0


def _cmd_dlsa(a) -> int:
    from longtail.stage2.dlsa import run_dlsa

    run_dlsa(Path(a.features), Path(a.out), config_path=a.config, overrides=a.overrides, device=a.device,
             overwrite=a.overwrite)
    return 0


COMMANDS = {"bench": _cmd_bench, "reproduce": _cmd_reproduce, "dlsa": _cmd_dlsa, "train": _cmd_train,
            "extract": _cmd_extract, "decouple": _cmd_decouple, "eval": _cmd_eval, "predict": _cmd_predict,
            "report": _cmd_report, "compare": _cmd_compare, "config": _cmd_config, "data": _cmd_data}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may follow options too (e.g. `decouple RUN --method crt --out D epochs=5`)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.plugin:
            from longtail.registry import load_plugins

            names = load_plugins(args.plugin)
            if hasattr(args, "overrides"):  # recorded in the run's config, so eval and report find them again
                args.overrides = list(args.overrides or []) + [f"plugins={','.join(names)}"]
        return COMMANDS[args.command](args)
    except LongtailError as e:
        if args.debug:
            raise
        print(f"longtail: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_CODES.get(type(e).__name__, 2))
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("longtail: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `longtail data indices ... | head`
        return 0
    except OSError as e:  # the file system refused (a read-only folder, a path through a file, a long name)
        if args.debug:
            raise
        print(f"longtail: error: {os_error_message(e)}", file=sys.stderr)
        return 74  # EX_IOERR


def os_error_message(e: OSError) -> str:
    """One line for a file-system error: what failed, on which path, and what to check."""
    what = e.strerror or str(e) or type(e).__name__
    paths = " -> ".join(repr(str(f)) for f in (e.filename, getattr(e, "filename2", None)) if f)
    where = f" ({paths})" if paths else ""
    return f"{what}{where}: check the path, that its folders exist and are writable, and the free space"


if __name__ == "__main__":
    raise SystemExit(main())
