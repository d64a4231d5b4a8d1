"""DLSA: dynamic label-space adjustment on cached features (docs/methods.md §4; arXiv 2208.02567).

It works on cached features and knows nothing of images or backbones.
"""

from longtail.stage2.dlsa.config import DLSAConfig, load_dlsa_config
from longtail.stage2.dlsa.pipeline import run_dlsa

__all__ = ["DLSAConfig", "load_dlsa_config", "run_dlsa"]
