"""The optimiser's parameter groups: backbone, head and projection branch, each with its lr scale.

Every optimiser builder uses :func:`param_groups`; the trainer sets each group's lr every epoch to the
schedule's lr times the group's ``lr_scale``. Frozen parameters (``requires_grad=False``, e.g. under
``model.freeze_stages``) are in no group: no update, no weight decay, no momentum.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["param_groups", "regroup_optimizer_state"]


def param_groups(network: nn.Module, cfg) -> list[dict]:
    """The trainable parameters of ``network`` as optimiser groups, in the network's parameter order.

    Groups (empty ones are left out), each ``{"name", "params", "lr_scale", "lr"}``:

    * ``backbone``: ``network.backbone``'s parameters, ``lr_scale = cfg.optim.backbone_lr_scale``;
    * ``head``: the classifier and everything else, ``lr_scale = 1``;
    * ``projection``: the feature heads (``network.heads``) and the prototype head (``network.proto``) of
      contrastive methods, ``lr_scale = 1``.

    A module without a ``backbone`` attribute gives one group ``all`` with scale 1.
    """
    base = float(cfg.optim.lr)
    scales = {"backbone": float(cfg.optim.backbone_lr_scale), "head": 1.0, "projection": 1.0, "all": 1.0}
    which: dict[int, str] = {}
    backbone = getattr(network, "backbone", None)
    if isinstance(backbone, nn.Module):
        which.update({id(p): "backbone" for p in backbone.parameters()})
        for name in ("heads", "proto"):
            sub = getattr(network, name, None)
            if isinstance(sub, nn.Module):
                which.update({id(p): "projection" for p in sub.parameters()})
        default = "head"
    else:
        default = "all"
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for p in network.parameters():
        if p.requires_grad:
            groups.setdefault(which.get(id(p), default), []).append(p)
    order = ("backbone", "head", "projection", "all")
    return [{"name": n, "params": groups[n], "lr_scale": scales[n], "lr": base * scales[n]}
            for n in order if n in groups]


def regroup_optimizer_state(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """An optimiser state saved with one parameter group (checkpoints written before the groups existed)
    spread over ``optimizer``'s groups; any other state is returned as it is.

    The old single group listed the network's parameters in order, and the groups concatenated keep that
    order, so parameter ids map one to one.
    """
    old = saved.get("param_groups", [])
    new = optimizer.param_groups
    if len(old) != 1 or len(new) == 1 or len(old[0]["params"]) != sum(len(g["params"]) for g in new):
        return saved
    groups, start = [], 0
    for g in new:
        n = len(g["params"])
        groups.append({**old[0], "params": old[0]["params"][start:start + n],
                       **{k: g[k] for k in ("name", "lr_scale") if k in g}})
        start += n
    return {**saved, "param_groups": groups}
