"""Fine-tuning settings of a network: frozen BatchNorm statistics and frozen backbone stages.

``model.freeze_bn`` follows mmpretrain's ``norm_eval`` convention: every BatchNorm layer of the backbone
stays in eval mode while training, so it normalises with its (pretrained) running statistics and never
updates them; its affine weight and bias are still trained. (timm's ``freeze_bn`` also freezes the
affine parameters; to freeze those too, freeze the stages they belong to.)

``model.freeze_stages=k`` freezes the stem and the first k stages of the backbone: their parameters get
``requires_grad=False`` (so the optimiser never sees them: no update, no weight decay, no momentum) and
the modules stay in eval mode, so their BatchNorm statistics do not change either. Both settings are
re-applied by :meth:`Network.train`, which the trainer calls every epoch, and are rebuilt from the config
when a run resumes.

The stages of a backbone: the stem (``conv1``, ``bn1``) and ``layer1``, ``layer2``, ... for the CIFAR
and torchvision ResNets. A plugin backbone declares its own with a method
``stage_names() -> list[list[str]]``: submodule names, the stem first.
"""

from __future__ import annotations

from torch import nn

from longtail.errors import ConfigError

__all__ = ["backbone_stages", "apply_finetuning", "apply_train_mode"]


def backbone_stages(backbone: nn.Module) -> list[list[str]]:
    """Submodule names of the stem and of each stage, in order (the stem first); [] when unknown."""
    own = getattr(backbone, "stage_names", None)
    if callable(own):
        return [list(s) for s in own()]
    if not all(hasattr(backbone, n) for n in ("conv1", "bn1", "layer1")):
        return []
    stages = [["conv1", "bn1"]]
    i = 1
    while isinstance(getattr(backbone, f"layer{i}", None), nn.Module):
        stages.append([f"layer{i}"])
        i += 1
    return stages


def apply_finetuning(network: nn.Module, model_cfg) -> nn.Module:
    """Set ``model.freeze_bn`` and ``model.freeze_stages`` on ``network`` (in place; returns it).

    Raises:
        ConfigError: ``freeze_stages`` exceeds the backbone's stages, or the backbone has none longtail
            knows of, or the network has no backbone.
    """
    k, freeze_bn = int(model_cfg.freeze_stages), bool(model_cfg.freeze_bn)
    if k == 0 and not freeze_bn:
        return network
    backbone = getattr(network, "backbone", None)
    if backbone is None:
        raise ConfigError(f"model.freeze_bn and model.freeze_stages need a network with a .backbone "
                          f"(got {type(network).__name__})")
    names: list[str] = []
    if k:
        stages = backbone_stages(backbone)
        if not stages:
            raise ConfigError(f"model.freeze_stages={k}: longtail does not know the stages of {model_cfg.backbone}; "
                              f"give the backbone a stage_names() method (docs/api.md) or set model.freeze_stages=0")
        if k > len(stages) - 1:
            raise ConfigError(f"model.freeze_stages={k} but {model_cfg.backbone} has {len(stages) - 1} stages after "
                              f"its stem; use 0 to {len(stages) - 1}")
        names = [n for stage in stages[:k + 1] for n in stage]
        for n in names:
            for p in backbone.get_submodule(n).parameters():
                p.requires_grad_(False)
    network.frozen_modules = tuple(names)
    network.freeze_bn = freeze_bn
    apply_train_mode(network)
    return network


def apply_train_mode(network: nn.Module) -> None:
    """Put frozen stages (and, with ``freeze_bn``, the backbone's BatchNorm layers) in eval mode; nothing
    else changes. Called by :meth:`Network.train` after the usual mode switch."""
    if not network.training:
        return
    backbone = network.backbone
    for n in getattr(network, "frozen_modules", ()):
        backbone.get_submodule(n).eval()
    if getattr(network, "freeze_bn", False):
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
