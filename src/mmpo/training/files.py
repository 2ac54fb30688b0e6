"""The names of a run directory's files: spelled once, here (no imports beyond the standard library, so any
module can name a run's files without importing the training code)."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "eval_results.json"
METRICS_FILE = "metrics.jsonl"
EVAL_SCORES_FILE = "eval_scores.jsonl"
DATA_REPORT_FILE = "data_report.json"
CARD_FILE = "README.md"
ONLINE_LOG_FILE = "log.jsonl"  # an `mmpo online` run: one record per round
# In each checkpoint: how many lines metrics.jsonl held when it was written.
METRICS_LINES_FILE = "mmpo_metrics_lines.json"
STAGING_DIR = ".staging"
CHECKPOINT_PREFIX = "checkpoint-"
# What a run writes besides the saved model; deleted when a run starts over in the same directory.
RUN_FILES = (CONFIG_FILE, RESULTS_FILE, METRICS_FILE, EVAL_SCORES_FILE, DATA_REPORT_FILE)


class RunFiles:
    """The paths of one run directory's files; the one place their names are spelled.

    ``RunFiles(output_dir).metrics`` is ``output_dir/metrics.jsonl``, and so on for each property.
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.root = Path(output_dir)

    @property
    def config(self) -> Path:
        """``config.yaml``: the run's settings, written when training starts."""
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one line per logged step (train and eval)."""
        return self.root / METRICS_FILE

    @property
    def results(self) -> Path:
        """``eval_results.json``: the final held-out metrics, written last; its presence marks a finished run."""
        return self.root / RESULTS_FILE

    @property
    def eval_scores(self) -> Path:
        """``eval_scores.jsonl``: one line per held-out pair (row, h, p, margin)."""
        return self.root / EVAL_SCORES_FILE

    @property
    def data_report(self) -> Path:
        """``data_report.json``: what the data pipeline kept and dropped, per split."""
        return self.root / DATA_REPORT_FILE

    @property
    def card(self) -> Path:
        """``README.md``: the model card."""
        return self.root / CARD_FILE

    @property
    def online_log(self) -> Path:
        """``log.jsonl`` of an ``mmpo online`` run: one record per round (round 0 = the starting model)."""
        return self.root / ONLINE_LOG_FILE

    @property
    def staging(self) -> Path:
        """``.staging/``: where a checkpoint is written before it is renamed into place."""
        return self.root / STAGING_DIR

    def checkpoint(self, step: int) -> Path:
        """``checkpoint-<step>/``."""
        return self.root / f"{CHECKPOINT_PREFIX}{step}"


def is_checkpoint_name(name: str) -> bool:
    """Whether a directory entry's name is a ``checkpoint-N`` one."""
    return name.startswith(CHECKPOINT_PREFIX)
