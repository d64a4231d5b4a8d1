"""BBL, OUR RECONSTRUCTION of bi-granularity balance learning (Ren et al., CVIU 2025) from its abstract:
not the authors' method. See docs/methods.md, section BBL."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import BBLLoss
from longtail.losses.bbl import GLOBAL_MODES, VARIANTS
from longtail.methods.base import param, register_method
from longtail.methods.contrastive import ContrastiveConfig, TwoBranch


@dataclass
class BBLConfig(ContrastiveConfig):
    bbl_lambda: float = param(1.0, at_least=0, help="weight of the local-balance term")
    bbl_gamma: float = param(0.5, at_least=0, help="exponent of the global class weight Omega")
    bbl_global_mode: str = param("reweight", choices=GLOBAL_MODES, help="reweight, or logit_adjust the centres")
    bbl_kappa: float = param(1.0, at_least=0, help="logit_adjust mode: kappa * log(prior) on the centre logits")
    bbl_variant: str = param("r1", choices=VARIANTS, help="r1 (default), r2, r3 or r4 (docs/methods/bbl.md)")
    bbl_local_repulsion_only: bool = param(False, help="lone anchors get the repulsion term (r1, r3, r4)")
    bbl_r2_batch_positives: bool = param(False, help="r2: add the batch positives to the global positives")
    bbl_queue_size: int = param(1024, at_least=1, help="r4: the class-balanced queue of extra negatives")


@register_method("bbl", params=BBLConfig)
class BBL(TwoBranch):
    """BBL (reconstruction): bi-granularity balance. NOT the authors' method."""

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
