"""BBL, OUR RECONSTRUCTION of bi-granularity balance learning (Ren et al., CVIU 2025) from its abstract:
not the authors' method. See docs/methods.md, section BBL."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import BBLLoss
from longtail.losses.bbl import GLOBAL_MODES, VARIANTS
from longtail.methods.base import check_value, register_method
from longtail.methods.contrastive import ContrastiveConfig, TwoBranch


@dataclass
class BBLConfig(ContrastiveConfig):
    bbl_lambda: float = 1.0  # weight of the local-balance term
    bbl_gamma: float = 0.5  # exponent of the global class weight Omega
    bbl_global_mode: str = "reweight"  # reweight | logit_adjust
    bbl_kappa: float = 1.0  # logit_adjust mode: kappa * log(prior) on the centre logits
    bbl_variant: str = "r1"  # r1 | r2 | r3 | r4
    bbl_local_repulsion_only: bool = False
    bbl_r2_batch_positives: bool = False
    bbl_queue_size: int = 1024  # r4

    def check(self) -> None:
        super().check()
        check_value(self.bbl_lambda >= 0, "bbl_lambda", f"must be >= 0 (got {self.bbl_lambda})")
        check_value(self.bbl_gamma >= 0, "bbl_gamma", f"must be >= 0 (got {self.bbl_gamma})")
        check_value(self.bbl_global_mode in GLOBAL_MODES, "bbl_global_mode",
                    f"must be one of {', '.join(GLOBAL_MODES)} (got '{self.bbl_global_mode}')")
        check_value(self.bbl_variant in VARIANTS, "bbl_variant",
                    f"must be one of {', '.join(VARIANTS)} (got '{self.bbl_variant}')")
        check_value(self.bbl_queue_size >= 1, "bbl_queue_size", f"must be >= 1 (got {self.bbl_queue_size})")


@register_method("bbl")
class BBL(TwoBranch):
    """BBL (reconstruction): bi-granularity balance. NOT the authors' method."""

    Params = BBLConfig

    def __init__(self, params: BBLConfig, *, train_counts, **kw):
        super().__init__(params, train_counts=train_counts, **kw)
        m = params
        self.bbl = BBLLoss(train_counts, temperature=m.temperature, gamma=m.bbl_gamma, lam=m.bbl_lambda,
                           global_mode=m.bbl_global_mode, kappa=m.bbl_kappa, variant=m.bbl_variant,
                           local_repulsion_only=m.bbl_local_repulsion_only,
                           r2_batch_positives=m.bbl_r2_batch_positives, queue_size=m.bbl_queue_size,
                           dim=m.proj_dim)

    def on_epoch_start(self, epoch: int, *, fresh: bool = True) -> None:
        if fresh and self.params.bbl_variant == "r3":
            self.bbl.start_epoch()

    def contrastive(self, z, y, prototypes, local):
        out = self.bbl(z, y, prototypes, local_range=local)
        return out.total, {"global": out.global_term.detach(), "local": out.local_term.detach()}
