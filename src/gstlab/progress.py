"""Progress of a study command in epochs over all its runs, with a time estimate.

On a terminal: one tqdm bar of epochs (its rate and estimate count only the epochs trained by this command).
Otherwise (a log file, a pipe): no bar and no carriage returns, one plain line per finished run.
The epochs a run has done are the rows of its ``metrics.csv``, which a run rewrites at every checkpoint
(every epoch by default), so a worker process needs no other channel to report them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm


def epochs_done(run_dir: Path) -> int:
    """Epochs recorded in ``run_dir/metrics.csv`` (0 when there is none yet)."""
    try:
        data = (run_dir / "metrics.csv").read_bytes()
    except OSError:
        return 0
    return max(data.count(b"\n") - 1, 0)


def duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class EpochProgress:
    """Epochs done over ``runs`` (run id -> (run directory, epochs of the run)); ``update()`` re-reads them."""

    def __init__(self, runs: dict[str, tuple[Path, int]], enabled: bool = True, stream: TextIO | None = None,
                 desc: str = "epochs") -> None:
        self.runs = runs
        self.stream = stream or sys.stderr
        self.total = sum(epochs for _, epochs in runs.values())
        self.done = {rid: min(epochs_done(path), epochs) for rid, (path, epochs) in runs.items()}
        self.start_done = sum(self.done.values())
        self.finished = 0
        self.t0 = time.monotonic()
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.bar = tqdm(total=self.total, initial=self.start_done, desc=desc, unit="ep", file=self.stream,
                        disable=not self.tty, dynamic_ncols=True)

    def update(self, run_ids=None) -> None:
        """Re-read the epochs of ``run_ids`` (default: every run)."""
        for rid in self.runs if run_ids is None else run_ids:
            path, epochs = self.runs[rid]
            self.done[rid] = max(self.done[rid], min(epochs_done(path), epochs))
        self.bar.update(sum(self.done.values()) - self.bar.n)

    def run_finished(self, run_id: str, status: str, name: str) -> None:
        """Count the run as done (a failed run ends early: its remaining epochs count as done)."""
        self.done[run_id] = self.runs[run_id][1]
        self.finished += 1
        self.update([])
        if self.enabled and not self.tty:
            print(self.line(status, name), file=self.stream, flush=True)

    def line(self, status: str, name: str) -> str:
        """``run 2/3 finished: NAME; epochs 650/975, 2m10s elapsed, ~1m05s left``."""
        done, elapsed = sum(self.done.values()), time.monotonic() - self.t0
        trained = done - self.start_done
        left = f"~{duration(elapsed * (self.total - done) / trained)} left" if trained and done < self.total \
            else "done" if done >= self.total else "estimate after the first run"
        return (f"run {self.finished}/{len(self.runs)} {status}: {name}; epochs {done}/{self.total}, "
                f"{duration(elapsed)} elapsed, {left}")

    def close(self) -> None:
        self.bar.close()
