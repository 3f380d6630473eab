"""Loss curves: a CSV file always, TensorBoard too when the `tensorboard` package is installed."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger("sfv_core.train")


class LossLog:
    """Append-only CSV (one row per logged step) plus optional TensorBoard scalars.

    On resume the CSV is cut back to the resumed step, so steps re-run after a crash are
    not logged twice.
    """

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        self.path = Path(run_dir) / "loss.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] | None = None
        if self.path.exists():
            self._truncate(resume_step)
        self.tensorboard = self._open_tensorboard(Path(run_dir) / "tensorboard")

    def _truncate(self, resume_step: int) -> None:
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            self.columns = list(rows[0].keys())
        kept = [row for row in rows if int(row["step"]) <= resume_step]
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            if self.columns:
                writer = csv.DictWriter(handle, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(kept)

    @staticmethod
    def _open_tensorboard(folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (requirements-train.txt)
            return None
        return SummaryWriter(str(folder))

    def write(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: f"{v:.6g}" for k, v in sorted(values.items())}}
        if self.columns is None:
            self.columns = list(row.keys())
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerow(row)
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
