"""Run logging: metrics.jsonl (one JSON object per epoch), TensorBoard events, and a progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLogger:
    """Writes ``metrics.jsonl`` and TensorBoard scalars under a run directory (rank 0 only)."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.path.touch()  # exists from the start, even if no epoch finishes
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def truncate_after(self, epoch: int) -> None:
        """Drop lines of epochs after ``epoch`` (a resumed run repeats them)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= epoch:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        self.path.write_text("".join(l + "\n" for l in keep))

    def log_epoch(self, record: dict) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("epoch", 0)
            for k, v in record.items():
                if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                    group = "eval" if k.removeprefix("ema_") in ("top1", "top5", "many", "medium", "few", "ece") \
                        else "train"
                    self.tb.add_scalar(f"{group}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class NullLogger:
    """The logger of ranks other than 0 under DDP: same interface, touches no file."""

    def truncate_after(self, epoch: int) -> None:
        pass

    def log_epoch(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def bar_wanted(enabled: bool, stream=None) -> bool:
    """A live bar only where it can redraw itself: a terminal or a notebook. Elsewhere (a log file, a
    pipe, a batch system) the trainer prints one plain line per epoch instead."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def progress_bar(total: int, initial: int, enabled: bool) -> Optional[tqdm]:
    """One bar for the whole run: its ETA is the time to the end of training (rank 0 only under DDP); None
    when ``enabled`` is false or standard error is not a terminal (see :func:`bar_wanted`)."""
    from longtail.engine.distributed import is_main

    if not bar_wanted(enabled) or not is_main():
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0, leave=True)


def epoch_line(record: dict, epochs: int) -> str:
    """One plain line for an epoch's record, numbers rounded, e.g.
    ``epoch 3/40  step 120  loss 1.2346  train acc 45.2%  lr 0.05  12.3 s  1234 img/s  | test top-1 80.50``."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"step {record['step']}", f"loss {_num(record.get('loss'), 4)}",
             f"train acc {_num(record.get('train_acc'), 1)}%", f"lr {_num(record.get('lr'), 4, 'g')}",
             f"{_num(record.get('seconds'), 1)} s", f"{_num(record.get('images_per_s'), 0)} img/s"]
    line = "  ".join(parts)
    if record.get("top1") is not None:
        groups = " / ".join(_num(record.get(g), 2) for g in ("many", "medium", "few"))
        line += f"  | test top-1 {_num(record['top1'], 2)} (Many/Medium/Few {groups})"
    if record.get("ema_top1") is not None:
        line += f"  | EMA weights top-1 {_num(record['ema_top1'], 2)}"
    return line


def _num(v, digits: int, kind: str = "f") -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "—"
    return f"{v:.{digits}{kind}}" if kind == "f" else f"{v:.{digits}g}"
