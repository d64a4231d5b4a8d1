"""The DLSA stage's own config (docs/methods.md §4.7), loaded with :func:`longtail.config.load_dataclass`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from longtail.config import load_dataclass
from longtail.errors import ConfigError

PRIOR_SOURCES = ("all", "active")
Z_INPUTS = ("feature", "latent")
BSM_COUNTS = ("all", "subset")


@dataclass
class DLSAConfig:
    """Every DLSA hyperparameter. Defaults are the ImageNet-LT PaCo R50 BSM config (docs/methods.md §4.7)."""

    # Gaussian-mixture flow and its training (§4.3, §4.4)
    num_clusters: int = 500  # K
    flow_batch: int = 1024
    flow_lr: float = 0.2
    flow_epochs: int = 50
    flow_hidden_layers: int = 1  # hidden-to-hidden layers per MADE (the official n_hidden)
    lambda_lh: float = 2.0
    lambda_bal: float = 1.0
    lambda_pur: float = 0.02
    weight_power: float = 2.0  # q in the class weight (n_max / n_a)^q
    centre_std: float = 0.05
    ema_momentum: float = 0.7
    # epoch selection (training labels only)
    purity_threshold: float = 0.7
    min_cluster_size: int = 10
    max_cluster_size: int = 5000
    # filtering (§4.5)
    max_depth: int = 3  # D
    llh_proportion: float = 0.3  # rho
    prior_source: str = "all"  # all | active
    # classifiers (§4.6)
    z_input: str = "feature"  # feature (parity: z = x) | latent (z = T(x))
    regular_bsm_counts: str = "all"  # all (parity) | subset
    cls_epochs: int = 150
    cls_lr: float = 0.01
    cls_batch: int = 128
    eval_every: int = 5
    # misc [ours]
    seed: int = 0
    chunk_size: int = 8192  # samples per chunk when scoring features with a flow

    def validate(self) -> "DLSAConfig":
        """Check ranges and choices; return self. Raises ConfigError naming the key and the fix."""
        positive = ("num_clusters", "flow_batch", "cls_batch", "eval_every", "chunk_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"dlsa {key} must be >= 1 (got {getattr(self, key)})")
        for key in ("flow_epochs", "cls_epochs", "max_depth", "flow_hidden_layers", "min_cluster_size"):
            if getattr(self, key) < 0:
                raise ConfigError(f"dlsa {key} must be >= 0 (got {getattr(self, key)})")
        for key in ("flow_lr", "cls_lr", "centre_std"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"dlsa {key} must be > 0 (got {getattr(self, key)})")
        if not 0.0 <= self.llh_proportion <= 1.0:
            raise ConfigError(f"dlsa llh_proportion must lie in [0, 1] (got {self.llh_proportion})")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"dlsa ema_momentum must lie in [0, 1) (got {self.ema_momentum})")
        for key, choices in (("prior_source", PRIOR_SOURCES), ("z_input", Z_INPUTS),
                             ("regular_bsm_counts", BSM_COUNTS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"dlsa {key} must be one of {', '.join(choices)} (got '{getattr(self, key)}')")
        return self


def load_dlsa_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> DLSAConfig:
    """Read a DLSA YAML file (any subset of keys) plus ``KEY=VALUE`` overrides, then validate."""
    return load_dataclass(DLSAConfig, path, overrides).validate()
