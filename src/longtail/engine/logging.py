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
                    group = "eval" if k in ("top1", "top5", "many", "medium", "few", "ece") else "train"
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


def progress_bar(total: int, initial: int, enabled: bool) -> Optional[tqdm]:
    """One bar for the whole run: its ETA is the time to the end of training (rank 0 only under DDP)."""
    from longtail.engine.distributed import is_main

    if not enabled or not is_main():
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0, leave=True)
