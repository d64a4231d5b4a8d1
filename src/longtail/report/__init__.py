"""Reports of finished runs: ``report.md`` with plots per run, and multi-seed comparison tables.

Reads run directories only (``summary.json``, ``metrics.jsonl``, ``config.yaml``); never trains.
"""

from longtail.report.compare import compare_runs, config_identity, config_label, mean_std
from longtail.report.report import load_config, load_metrics, load_summary, method_label, write_report

__all__ = [
    "compare_runs",
    "config_identity",
    "config_label",
    "load_config",
    "load_metrics",
    "load_summary",
    "mean_std",
    "method_label",
    "write_report",
]
