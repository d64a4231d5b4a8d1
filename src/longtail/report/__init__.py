"""Reports of finished runs and comparisons of several.

* :func:`write_report`: one run's ``report.md``, ``per_class.csv`` and figures (PNG and PDF).
* :func:`compare_runs` / :func:`write_comparison`: runs grouped by their whole configuration except the
  seed, one row per configuration (mean ± sample std over seeds), as markdown, CSV or JSON, with the
  settings that differ between configurations and an optional figure.

Reads run directories only (``summary.json``, ``metrics.jsonl``, ``config.yaml``); never trains.
"""

from longtail.report.common import load_config, load_metrics, load_summary, method_label
from longtail.report.compare import compare_runs, config_identity, config_label, mean_std, stats, write_comparison
from longtail.report.identity import IGNORED, Group, Run, group_runs, read_run
from longtail.report.report import write_report

__all__ = [
    "IGNORED",
    "Group",
    "Run",
    "compare_runs",
    "config_identity",
    "config_label",
    "group_runs",
    "load_config",
    "load_metrics",
    "load_summary",
    "mean_std",
    "method_label",
    "read_run",
    "stats",
    "write_comparison",
    "write_report",
]
