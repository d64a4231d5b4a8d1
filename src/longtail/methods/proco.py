"""ProCo: probabilistic contrastive learning (Du et al., TPAMI 2024), as in docs/methods.md, section ProCo.

Three views per image and one backbone pass over all 3B (BatchNorm in the backbone and in the projection
normalises over all of them), then

    L = LA-CE(s(v0), y) + alpha * (LA-CE(l(z(v1)), y) + LA-CE(l(z(v2)), y)) / 2

where l are the closed-form ProCo logits of :class:`~longtail.losses.ProCoLoss` against the online
vMF estimate of every class. With ``proco_update=per_view`` (the official order) the statistics take
view 1's features before view 1's loss, then view 2's before view 2's. Inference uses the classifier
logits s(x) only.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from longtail.data.batches import Batch
from longtail.losses.bessel import BESSEL_METHODS
from longtail.losses.proco import KAPPA_ESTIMATORS, NUMERATORS, UPDATES, ProCoLoss
from longtail.methods.base import MethodConfig, param, register_method
from longtail.methods.contrastive import CL_VIEWS, TwoBranch
from longtail.models import NetOutput

#: ProCo's contrastive views: "sim" is the proco_cifar preset (scale 0.08-1, no blur; for large images
#: the same as simclr, BCL's ImageNet sim view), "rand" = simclr_rand (sim + RandAugment)
PROCO_VIEW_PRESETS = {"sim": "proco_cifar", "rand": "simclr_rand"}


@dataclass
class ProCoConfig(MethodConfig):
    """L = LA-CE(view 0) + alpha * mean over views 1, 2 of LA-CE(ProCo logits)."""

    temperature: float = param(0.1, above=0, help="tau of the ProCo logits (0.1 CIFAR, 0.07 ImageNet-LT/iNat)")
    alpha: float = param(1.0, at_least=0, help="weight of the ProCo term on views 1 and 2")
    la_tau: float = param(1.0, at_least=0, help="the logit adjustment of the classification branch")
    proj_hidden: int = param(512, at_least=1, help="projection MLP: d -> proj_hidden -> proj_dim")
    proj_dim: int = param(128, at_least=32, help="p, the size of the vMF features (at least 32)")
    cl_views: str = param("sim-sim", choices=CL_VIEWS, help="the presets of views 1 and 2 (sim: proco_cifar, "
                                                            "rand: sim + RandAugment)")
    proco_numerator: str = param("logmeanexp", choices=NUMERATORS,
                                 help="logmeanexp (the official loss) or mean (the mean-of-logs limit)")
    proco_kappa_estimator: str = param("code", choices=KAPPA_ESTIMATORS,
                                       help="concentration from R: code (pR/(1-R^2)) or banerjee")
    proco_bessel: str = param("debye", choices=BESSEL_METHODS,
                              help="log I_nu: debye (accurate) or miller (the official routine, parity tests)")
    proco_update: str = param("per_view", choices=UPDATES,
                              help="per_view (official: update, loss, per view) or both_then_loss")


@register_method("proco", params=ProCoConfig)
class ProCo(TwoBranch):
    """ProCo: LA-CE on the classifier plus the closed-form vMF contrastive term; no prototypes, no queue."""

    uses_prototypes = False
    takes_seed = True
    contrastive_presets = PROCO_VIEW_PRESETS

    def __init__(self, params: ProCoConfig, *, train_counts, seed: int = 0, **kw):
        super().__init__(params, train_counts=train_counts, **kw)
        m = params
        self.proco = ProCoLoss(train_counts, dim=m.proj_dim, temperature=m.temperature,
                               numerator=m.proco_numerator, kappa_estimator=m.proco_kappa_estimator,
                               bessel=m.proco_bessel, update=m.proco_update, seed=seed)

    def build_network(self, num_classes: int, in_channels: int):
        net = super().build_network(num_classes, in_channels)  # no prototypes (uses_prototypes)
        if isinstance(net.classifier, nn.Linear):  # the official CIFAR head keeps PyTorch's default init
            nn.Linear.reset_parameters(net.classifier)
        return net

    def on_epoch_start(self, epoch: int, *, fresh: bool = True) -> None:
        if fresh:  # a mid-epoch resume restored the rolled state from the checkpoint: no second roll
            self.proco.start_epoch(epoch)

    def loss(self, batch: Batch, output: NetOutput):
        la = self.criterion(output.logits, batch.labels)
        out = self.proco(output.embeddings["z"], batch.labels)  # local anchors; statistics all-reduced
        return la + self.params.alpha * out.loss, {"la": la.detach(), "proco": out.loss.detach()}
