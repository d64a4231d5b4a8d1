"""Training recipes: one file per method, each registering its parameters and its :class:`Method`.

Built-in methods: ``ce``, ``focal``, ``cb``, ``ldam_drw``, ``la`` (the baselines), ``bcl``, ``supcon``,
``proco`` and ``bbl`` (our reconstruction). :func:`create_method` builds the method of a config;
:func:`register_method` adds your own (see docs/api.md).
"""

from longtail.methods.base import Method, MethodConfig, create_method, list_methods, param, register_method
from longtail.methods import bbl, bcl, cb, ce, focal, la, ldam_drw, proco, supcon  # noqa: F401  (registers them)
from longtail.methods.bbl import BBLConfig
from longtail.methods.bcl import BCLConfig
from longtail.methods.cb import CBConfig
from longtail.methods.contrastive import ContrastiveConfig, TwoBranch
from longtail.methods.focal import FocalConfig
from longtail.methods.la import LAConfig
from longtail.methods.ldam_drw import LDAMDRWConfig
from longtail.methods.proco import ProCoConfig

__all__ = ["Method", "MethodConfig", "param", "TwoBranch", "create_method", "list_methods", "register_method",
           "FocalConfig", "CBConfig", "LDAMDRWConfig", "LAConfig", "ContrastiveConfig", "BCLConfig", "BBLConfig",
           "ProCoConfig"]
