"""Training recipes. Import this package to register every method."""

from longtail.methods import baselines, contrastive  # noqa: F401  (registers the methods)
from longtail.methods.base import Method, create_method, list_methods, register_method

__all__ = ["Method", "create_method", "list_methods", "register_method"]
