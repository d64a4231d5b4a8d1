"""The method section as runs before typed method sections wrote it (every method's parameters, flat).

A run directory's ``config.yaml`` from then lists all of them; reading it ignores those still at these
defaults, so old runs can still be evaluated, resumed and reported.
"""

LEGACY_METHOD_DEFAULTS = {
    "focal_gamma": 1.0, "focal_parity": "default", "cb_beta": 0.9999, "cb_loss": "ce", "ldam_max_margin": 0.5,
    "ldam_scale": 30.0, "drw_epoch": 160, "drw_beta": 0.9999, "la_tau": 1.0, "temperature": 0.1, "alpha": 2.0,
    "beta": 0.6, "proj_hidden": 512, "proj_dim": 128, "cl_views": "sim-sim", "class_averaging": True,
    "class_complement": True, "bbl_lambda": 1.0, "bbl_gamma": 0.5, "bbl_global_mode": "reweight", "bbl_kappa": 1.0,
    "bbl_variant": "r1", "bbl_local_repulsion_only": False, "bbl_r2_batch_positives": False, "bbl_queue_size": 1024,
}

#: Method parameters added after runs were written, with the value those runs were trained with: a run's
#: ``config.yaml`` without the key predates it, and reading it must not switch the run to the new default.
#: ``(method, parameter) -> value``.
ADDED_METHOD_PARAMS = {
    # cb's reduction became the class-balanced paper's Σw·L/B; runs before it divided by Σw
    ("cb", "cb_reduction"): "normalized",
}


def upgrade_run_config(cfg, raw: dict, overrides=()) -> None:
    """Give a run's config (``cfg``, read from a run directory's ``config.yaml`` whose mapping is ``raw``) the
    values of :data:`ADDED_METHOD_PARAMS` its file predates, unless an override sets them."""
    section = raw.get("method") if isinstance(raw, dict) else None
    section = section if isinstance(section, dict) else {}
    overridden = {ov.split("=", 1)[0].strip() for ov in overrides}
    for (method, key), value in ADDED_METHOD_PARAMS.items():
        if cfg.method.name == method and key not in section and f"method.{key}" not in overridden:
            setattr(cfg.method, key, value)
