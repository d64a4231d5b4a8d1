"""Stage 2 on a frozen stage-1 backbone: the feature cache, the decoupled classifiers (cRT, LWS, τ-norm,
post-hoc LA) and DLSA. Everything here reads features (:mod:`longtail.stage2.features`), the one format
both share; only feature extraction touches images.
"""

from longtail.stage2.decouple import METHODS as DECOUPLE_METHODS
from longtail.stage2.decouple import DecoupleConfig, run_decouple
from longtail.stage2.dlsa import DLSAConfig, run_dlsa
from longtail.stage2.features import extract_features, read_feature_cache, write_features

__all__ = ["DECOUPLE_METHODS", "DecoupleConfig", "run_decouple", "DLSAConfig", "run_dlsa", "extract_features",
           "read_feature_cache", "write_features"]
