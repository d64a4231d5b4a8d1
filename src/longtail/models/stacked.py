"""N networks of one architecture as one stacked network, and back (``train.seeds``).

N ordinary networks, each built with its own seed, become one module whose every layer holds the N
copies side by side and runs them as one kernel:

* a convolution with ``groups=g`` becomes one with ``groups=N*g`` and N times the channels: the input is
  ``[B, N*C, H, W]`` with model i's images in channel group i, and no channel of one model ever reaches
  another's;
* BatchNorm over C channels becomes BatchNorm over N*C channels (statistics are per channel, so per model);
* the option-A shortcut pads each model's channel group separately;
* pointwise layers and pooling are unchanged;
* linear and cosine classifier heads become batched matmuls over ``[N, B, d]``; the projection MLP of the
  contrastive methods is batched the same way, with its BatchNorm1d over N*d_h channels.

Every stacked parameter and buffer is the N originals stacked on a leading dimension (a convolution's
weight ``[N*out, ...]`` is ``[N, out, ...]`` flattened), so splitting back is ``t.reshape(N, *shape)[i]``
and the stacked module's state dict has the keys of the ordinary one. The optimiser's elementwise
updates (SGD momentum, weight decay) on the stacked parameters are those of N separate optimisers.

Which backbones stack: the CIFAR ResNets and torchvision's ResNets, ResNeXts and wide ResNets (every
backbone made only of the module types below); any other is refused with a ConfigError naming the layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import ConfigError
from longtail.models.heads import CosineHead, LinearHead, ProjectionMLP, _full_precision
from longtail.models.network import NetOutput, Network
from longtail.models.resnet_cifar import BasicBlock, CifarResNet, ZeroPadShortcut

__all__ = ["StackedNetwork", "StackedOutput", "stack_networks", "stack_inputs", "split_state_dict",
           "stack_state_dicts", "check_stackable"]

#: buffers shared by the N models (equal in all of them, never split)
_SHARED = ("num_batches_tracked",)


def _containers() -> tuple[type, ...]:
    """Modules whose own forward only applies pointwise ops, pooling, flattening and additions to its
    children's outputs: their forward is correct on the stacked layout as it is."""
    import torchvision.models.resnet as tv

    return (nn.Sequential, CifarResNet, BasicBlock, tv.ResNet, tv.BasicBlock, tv.Bottleneck)


#: parameter-free leaves that act on each channel alone
_CHANNELWISE = (nn.ReLU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)


# ------------------------------------------------------------------------------------------------
# stacked layers


class StackedZeroPad(nn.Module):
    """The option-A shortcut of N models: subsample, then zero-pad each model's channel group."""

    def __init__(self, pad: ZeroPadShortcut, n: int) -> None:
        super().__init__()
        self.n, self.stride, self.pad_front, self.pad_back = n, pad.stride, pad.pad_front, pad.pad_back

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        b, c, h, w = x.shape
        x = F.pad(x.reshape(b, self.n, c // self.n, h, w), (0, 0, 0, 0, self.pad_front, self.pad_back))
        return x.reshape(b, -1, h, w)


class StackedLinear(nn.Module):
    """N linear layers: ``[N, B, d] -> [N, B, out]`` with weight ``[N, out, d]`` and bias ``[N, out]``."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]).clone())
        has_bias = layers[0].bias is not None
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]).clone()) if has_bias else None

    def forward(self, h: Tensor) -> Tensor:
        if self.bias is None:
            return torch.bmm(h, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2))


class StackedCosine(nn.Module):
    """N cosine heads: ``scale * normalize(h) . normalize(w_c)`` per model, in float32 as :class:`CosineHead`."""

    def __init__(self, heads: Sequence[CosineHead]) -> None:
        super().__init__()
        self.scale = heads[0].scale
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in heads]).clone())

    def forward(self, h: Tensor) -> Tensor:
        with _full_precision(h.device.type):
            dt = torch.promote_types(torch.promote_types(h.dtype, self.weight.dtype), torch.float32)
            cos = torch.bmm(F.normalize(h.to(dt), dim=-1), F.normalize(self.weight.to(dt), dim=-1).transpose(1, 2))
        return self.scale * cos


class StackedMLP(nn.Module):
    """N projection MLPs (Linear, BatchNorm1d, ReLU, Linear) on ``[N, B, d]``; keys as :class:`ProjectionMLP`."""

    def __init__(self, mlps: Sequence[ProjectionMLP]) -> None:
        super().__init__()
        self.n = len(mlps)
        self.add_module("0", StackedLinear([m[0] for m in mlps]))
        self.add_module("1", _stack_bn([m[1] for m in mlps]))
        self.add_module("3", StackedLinear([m[3] for m in mlps]))

    def forward(self, x: Tensor) -> Tensor:
        h = self._modules["0"](x)  # [N, B, d_h]
        n, b, d = h.shape
        h = self._modules["1"](h.transpose(0, 1).reshape(b, n * d)).reshape(b, n, d).transpose(0, 1)
        return self._modules["3"](F.relu(h))


def _stack_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    c = convs[0]
    if c.padding_mode != "zeros":
        raise ConfigError(f"a convolution with padding_mode={c.padding_mode!r} cannot be stacked")
    n = len(convs)
    out = nn.Conv2d(c.in_channels * n, c.out_channels * n, c.kernel_size, stride=c.stride, padding=c.padding,
                    dilation=c.dilation, groups=c.groups * n, bias=c.bias is not None,
                    device=c.weight.device, dtype=c.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            out.bias.copy_(torch.cat([m.bias for m in convs]))
    return out


def _stack_bn(bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> nn.Module:
    b = bns[0]
    n = len(bns)
    out = copy.deepcopy(b)  # same type (BatchNorm1d/2d, SyncBatchNorm), eps, momentum, affine, tracking
    out.num_features = b.num_features * n
    for name, t in list(b.named_parameters(recurse=False)):
        setattr(out, name, nn.Parameter(torch.cat([getattr(m, name).detach() for m in bns]).clone()))
    for name, t in list(b.named_buffers(recurse=False)):
        if t is None:
            continue
        if name in _SHARED:
            if any(not torch.equal(getattr(m, name), t) for m in bns):
                raise ValueError(f"BatchNorm {name} differs between the networks to stack")
            continue
        out._buffers[name] = torch.cat([getattr(m, name) for m in bns]).clone()
    return out


def _stack_module(mods: Sequence[nn.Module], where: str) -> nn.Module:
    """The stacked form of N modules of one structure (recursing through the known containers)."""
    m = mods[0]
    if type(m) is nn.Conv2d:
        return _stack_conv(mods)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _stack_bn(mods)
    if type(m) is ZeroPadShortcut:
        return StackedZeroPad(m, len(mods))
    if type(m) in _CHANNELWISE:
        return copy.deepcopy(m)
    if type(m) in _containers():
        out = copy.copy(m)  # the container's own attributes; children replaced below
        out._parameters, out._buffers = dict(m._parameters), dict(m._buffers)
        if out._parameters or any(v is not None for v in out._buffers.values()):
            raise ConfigError(f"{where} ({type(m).__name__}) holds its own tensors and cannot be stacked")
        out._modules = {}
        for name, child in m._modules.items():
            if child is None:
                out._modules[name] = None
                continue
            out._modules[name] = _stack_module([x._modules[name] for x in mods], f"{where}.{name}")
        return out
    raise ConfigError(f"{where} ({type(m).__name__}) has no stacked form")


def check_stackable(backbone: nn.Module, name: str) -> None:
    """Raise a ConfigError unless ``backbone`` can be stacked: its first layer without a stacked form is named."""
    try:
        _stack_module([backbone], "backbone")
    except ConfigError as e:
        raise ConfigError(f"train.seeds: backbone {name} cannot be stacked: {e} (stackable: the CIFAR ResNets and "
                          f"torchvision's ResNets, ResNeXts and wide ResNets); train its seeds as separate runs") from None


def _stack_head(heads: Sequence[nn.Module]) -> nn.Module:
    h = heads[0]
    if type(h) is LinearHead or type(h) is nn.Linear:
        return StackedLinear(heads)
    if type(h) is CosineHead:
        return StackedCosine(heads)
    raise ConfigError(f"train.seeds: the classifier head {type(h).__name__} cannot be stacked (linear and cosine "
                      f"heads can); train its seeds as separate runs")


# ------------------------------------------------------------------------------------------------
# the stacked network


@dataclass
class StackedOutput:
    """The stacked network's output: features [N, B, d], logits [N, B, C], embeddings {name: [N, ...]}."""

    features: Tensor
    logits: Tensor
    embeddings: dict[str, Tensor]

    def model(self, i: int) -> NetOutput:
        """Model i's output, as its ordinary network returns it."""
        return NetOutput(features=self.features[i], logits=self.logits[i],
                         embeddings={k: v[i] for k, v in self.embeddings.items()})


class StackedNetwork(nn.Module):
    """N networks of one architecture (plain or two-branch) as one module.

    Its state dict has the ordinary network's keys, every tensor the N models' stacked on a leading
    dimension (see :func:`split_state_dict`); its parameters come in the ordinary network's order.

    Shape:
        x: [B, N*C_in, H, W] (:func:`stack_inputs`) -> StackedOutput(features [N, B, d], logits [N, B, C],
        embeddings {"proj": [N, B, d_z], "prototypes": [N, C, d_z] with a prototype head}).
    """

    def __init__(self, networks: Sequence[Network], backbone_name: str = "backbone") -> None:
        super().__init__()
        from longtail.models.contrastive import ContrastiveNetwork

        if len(networks) < 1:
            raise ValueError("StackedNetwork needs at least one network")
        kinds = {type(n) for n in networks}
        if len(kinds) != 1 or next(iter(kinds)) not in (Network, ContrastiveNetwork):
            raise ConfigError(f"train.seeds: only longtail's Network and ContrastiveNetwork can be stacked (got "
                              f"{', '.join(sorted(k.__name__ for k in kinds))})")
        self.n = len(networks)
        self.shapes = {k: tuple(v.shape) for k, v in networks[0].state_dict().items()}
        for net in networks[1:]:
            if {k: tuple(v.shape) for k, v in net.state_dict().items()} != self.shapes:
                raise ValueError("the networks to stack differ in their parameters")
        net0 = networks[0]
        self.out_dim = net0.out_dim
        self._num_classes = net0.num_classes
        try:
            self.backbone = _stack_module([n.backbone for n in networks], "backbone")
        except ConfigError as e:
            raise ConfigError(f"train.seeds: backbone {backbone_name} cannot be stacked: {e} (stackable: the CIFAR "
                              f"ResNets and torchvision's ResNets, ResNeXts and wide ResNets); train its seeds as "
                              f"separate runs") from None
        self.classifier = _stack_head([n.classifier for n in networks])
        heads = {}
        for name in net0.heads:
            if not all(type(n.heads[name]) is ProjectionMLP for n in networks):
                raise ConfigError(f"train.seeds: the feature head '{name}' cannot be stacked")
            heads[name] = StackedMLP([n.heads[name] for n in networks])
        self.heads = nn.ModuleDict(heads)
        proto = getattr(net0, "proto", None)
        self.proto = StackedMLP([n.proto for n in networks]) if proto is not None else None
        own = [k for k, _ in self.named_parameters()]
        if own != [k for k, _ in net0.named_parameters()]:  # the optimiser state is split by position
            raise AssertionError("the stacked network's parameters are not in the ordinary network's order")
        self.train(net0.training)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def forward(self, x: Tensor) -> StackedOutput:
        f = self.backbone(x)  # [B, N*d]
        b = f.shape[0]
        features = f.reshape(b, self.n, -1).transpose(0, 1)  # [N, B, d]
        logits = self.classifier(features)
        embeddings = {name: head(features) for name, head in self.heads.items()}
        if self.proto is not None:
            embeddings["prototypes"] = F.normalize(self.proto(self.classifier.weight).float(), dim=-1)
        return StackedOutput(features=features, logits=logits, embeddings=embeddings)

    # ------------------------------------------------------------------ state

    def split_state_dict(self) -> list[dict[str, Tensor]]:
        """The N ordinary state dicts (copies), in model order."""
        return split_state_dict(self.state_dict(), self.shapes, self.n)

    def load_state_dicts(self, state_dicts: Sequence[dict[str, Tensor]]) -> None:
        """Load N ordinary state dicts (one per model)."""
        if len(state_dicts) != self.n:
            raise ValueError(f"expected {self.n} state dicts, got {len(state_dicts)}")
        shapes = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        self.load_state_dict(stack_state_dicts(state_dicts, shapes))


def stack_networks(networks: Sequence[Network], backbone_name: str = "backbone") -> StackedNetwork:
    """One :class:`StackedNetwork` holding copies of ``networks``' weights and buffers."""
    return StackedNetwork(networks, backbone_name)


def stack_inputs(xs: Sequence[Tensor]) -> Tensor:
    """N inputs ``[B, C, H, W]`` -> ``[B, N*C, H, W]`` (model i's images in channel group i): one copy."""
    b, c, h, w = xs[0].shape
    return torch.stack(list(xs), dim=1).reshape(b, len(xs) * c, h, w)


def split_state_dict(state: dict[str, Tensor], shapes: dict[str, tuple], n: int) -> list[dict[str, Tensor]]:
    """A stacked state dict -> N ordinary ones (``shapes``: the ordinary tensors' shapes)."""
    out: list[dict[str, Tensor]] = [{} for _ in range(n)]
    for k, t in state.items():
        if k.rsplit(".", 1)[-1] in _SHARED:
            for d in out:
                d[k] = t.detach().clone()
            continue
        parts = t.detach().reshape(n, *shapes[k])
        for i, d in enumerate(out):
            d[k] = parts[i].clone()
    return out


def stack_state_dicts(states: Sequence[dict[str, Tensor]], stacked_shapes: dict[str, tuple]) -> dict[str, Tensor]:
    """N ordinary state dicts -> one stacked state dict with the shapes ``stacked_shapes`` (the inverse of
    :func:`split_state_dict`)."""
    out = {}
    for k in states[0]:
        ts = [s[k] for s in states]
        if k.rsplit(".", 1)[-1] in _SHARED:
            if any(not torch.equal(t, ts[0]) for t in ts):
                raise ValueError(f"'{k}' differs between the models to stack")
            out[k] = ts[0].clone()
            continue
        out[k] = torch.stack(ts).reshape(stacked_shapes[k])
    return out
