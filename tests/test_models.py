"""Backbones, heads and Network: shapes, parameter counts, init, registry errors, METHODS.md §0.3-§0.4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from longtail.config import ModelConfig
from longtail.errors import ConfigError
from longtail.models import (
    CifarResNet,
    CosineHead,
    LinearHead,
    NetOutput,
    Network,
    ProjectionMLP,
    build_head,
    build_network,
    create_backbone,
    list_backbones,
    register_backbone,
)
from longtail.models import backbones as backbones_module
from longtail.models.resnet_cifar import CIFAR_DEPTHS, ZeroPadShortcut

torch.set_num_threads(2)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------------------------------
# CIFAR ResNets


@pytest.mark.parametrize("name,depth", sorted(CIFAR_DEPTHS.items(), key=lambda kv: kv[1]))
def test_cifar_resnet_shapes_and_depth(name, depth):
    net = create_backbone(name)
    assert isinstance(net, CifarResNet) and net.out_dim == 64
    # depth counts the stem conv, the 6n block convs and the final linear layer
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == depth - 1
    net.eval()
    with torch.no_grad():
        feats = net(torch.randn(2, 3, 16, 16))  # pooling is global; small inputs keep the test fast
    assert feats.shape == (2, 64) and torch.isfinite(feats).all()
    assert (feats >= 0).all()  # pooled after a ReLU


def test_resnet32_parameter_count():
    # By hand: stem 432 + BN 32; stage 1: 5·(2·2304 + 64) = 23,360; stage 2: 13,952 + 4·18,560 = 88,192;
    # stage 3: 55,552 + 4·73,984 = 351,488; 10-class head 64·10 + 10 = 650. Total 464,154 ≈ 0.46M.
    total = n_params(create_backbone("resnet32")) + n_params(LinearHead(64, 10))
    assert total == 464_154


def test_width_and_in_channels():
    net = create_backbone("resnet8", in_channels=1, width=8)
    assert net.out_dim == 32 and net.conv1.in_channels == 1
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 32)


@pytest.mark.parametrize("depth", [7, 30, 2, 33])
def test_bad_depth(depth):
    with pytest.raises(ConfigError, match=rf"depth must be 6n\+2 with n >= 1.*got {depth}"):
        CifarResNet(depth)


def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad():
    net = create_backbone("resnet20")
    shortcuts = [m for m in net.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts) == 2  # first block of stages 2 and 3
    assert all(n_params(s) == 0 and len(list(s.buffers())) == 0 for s in shortcuts)
    block = net.layer2[0]
    assert n_params(block) == n_params(block.conv1) + n_params(block.conv2) + n_params(block.bn1) + n_params(block.bn2)
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    for i in range(4):
        for j in range(4):
            assert torch.equal(out[:, 8:24, i, j], x[:, :, 2 * i, 2 * j])
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0


def _std_and_kurtosis(w: torch.Tensor) -> tuple[float, float]:
    w = w.double().flatten()
    c = w - w.mean()
    var = (c ** 2).mean()
    return var.sqrt().item(), ((c ** 4).mean() / var ** 2).item()


def test_kaiming_normal_init():
    torch.manual_seed(0)
    net = create_backbone("resnet56")
    # all 3×3 convs with 64 input channels: fan_in 576, about 0.6M weights
    w = torch.cat([m.weight.flatten() for m in net.layer3.modules()
                   if isinstance(m, nn.Conv2d) and m.in_channels == 64])
    std, kurt = _std_and_kurtosis(w)
    assert std == pytest.approx((2 / 576) ** 0.5, rel=0.02)  # PyTorch's default would be ~0.024
    assert kurt == pytest.approx(3.0, abs=0.1)  # normal, not uniform (1.8)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    head = LinearHead(512, 200)
    std, kurt = _std_and_kurtosis(head.weight)
    assert std == pytest.approx((2 / 512) ** 0.5, rel=0.02)
    assert kurt == pytest.approx(3.0, abs=0.15)


# ----------------------------------------------------------------------------------------------------
# torchvision and the registry


def test_torchvision_resnet18_features():
    net = create_backbone("resnet18").eval()
    assert net.out_dim == 512 and isinstance(net.fc, nn.Identity)
    # no zero-init of each block's last BN (METHODS.md §0.3)
    assert torch.all(net.layer1[0].bn2.weight == 1)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    gray = create_backbone("resnet18", in_channels=1).eval()
    assert gray.conv1.in_channels == 1 and gray.conv1.out_channels == 64 and gray.conv1.stride == (2, 2)
    with torch.no_grad():
        assert gray(torch.randn(1, 1, 64, 64)).shape == (1, 512)


def test_torchvision_rejects_width():
    with pytest.raises(ConfigError, match="model.width=32 only applies to CIFAR ResNets"):
        create_backbone("resnet18", width=32)


def test_registry_lists_expected_names():
    names = list_backbones()
    expected = list(CIFAR_DEPTHS) + ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                     "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2"]
    assert set(expected) <= set(names)


def test_unknown_backbone_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet33'; did you mean 'resnet32'\? Available: resnet8, "):
        create_backbone("resnet33")
    with pytest.raises(ConfigError, match=r"unknown backbone 'vgg16'\. Available:") as info:
        create_backbone("vgg16")
    assert "did you mean" not in str(info.value)


def test_register_custom_backbone():
    class Tiny(nn.Module):
        def __init__(self, in_channels: int) -> None:
            super().__init__()
            self.out_dim = in_channels

        def forward(self, x):
            return x.mean(dim=(2, 3))

    try:
        @register_backbone("tiny_test_net")
        def tiny(*, in_channels: int, width: int) -> nn.Module:
            return Tiny(in_channels)

        @register_backbone("no_out_dim_test_net")
        def broken(*, in_channels: int, width: int) -> nn.Module:
            return nn.Identity()

        assert create_backbone("tiny_test_net", in_channels=5)(torch.randn(2, 5, 4, 4)).shape == (2, 5)
        with pytest.raises(ValueError, match="'tiny_test_net' is already registered"):
            register_backbone("tiny_test_net")(tiny)
        with pytest.raises(TypeError, match="int attribute out_dim"):
            create_backbone("no_out_dim_test_net")
    finally:
        backbones_module._REGISTRY.pop("tiny_test_net", None)
        backbones_module._REGISTRY.pop("no_out_dim_test_net", None)


# ----------------------------------------------------------------------------------------------------
# heads


def test_linear_head_semantics():
    head = LinearHead(6, 4)
    assert head.weight.shape == (4, 6) and head.bias.shape == (4,) and head.num_classes == 4
    h = torch.randn(3, 6)
    torch.testing.assert_close(head(h), h @ head.weight.T + head.bias)
    assert LinearHead(6, 4, bias=False).bias is None


def test_cosine_head_matches_reference_and_is_bounded():
    torch.manual_seed(0)
    head = CosineHead(8, 5, scale=30.0)
    assert head.weight.shape == (5, 8) and head.num_classes == 5
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(5))  # rows renormalised at init
    assert head.weight.abs().max() <= 1.0
    h = 100 * torch.randn(7, 8)
    s = head(h)
    assert s.shape == (7, 5) and s.abs().max() <= 30.0 * (1 + 1e-6)
    h64, w64 = h.double(), head.weight.detach().double()
    ref = torch.tensor([[30.0 * float(h64[b] @ w64[c]) / float(h64[b].norm() * w64[c].norm()) for c in range(5)]
                        for b in range(7)], dtype=torch.float64)
    torch.testing.assert_close(s.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.cosine(h), s / 30.0)
    torch.testing.assert_close(head(7.0 * h), s)  # invariant to the feature norm
    aligned = head(head.weight.detach()[2:3] * 3.0)
    assert aligned[0, 2].item() == pytest.approx(30.0, rel=1e-6)


def _cosine_reference(h, w, scale):
    h64, w64 = h.double(), w.detach().double()
    return scale * (h64 / h64.norm(dim=1, keepdim=True)) @ (w64 / w64.norm(dim=1, keepdim=True)).T


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_cosine_head_is_float32_under_bf16_autocast(device):
    """Under autocast the cosines stay float32: a bf16 cosine would be off by up to ~0.1 at sigma = 30."""
    torch.manual_seed(0)
    head = CosineHead(64, 10, scale=30.0).to(device)
    h = torch.randn(256, 64, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        s = head(h)
        bf16 = 30.0 * torch.nn.functional.linear(torch.nn.functional.normalize(h, dim=1).bfloat16(),
                                                 torch.nn.functional.normalize(head.weight, dim=1).bfloat16())
    ref = _cosine_reference(h.cpu(), head.weight.cpu(), 30.0)
    assert s.dtype == torch.float32
    assert (s.double().cpu() - ref).abs().max() < 1e-4
    assert (bf16.double().cpu() - ref).abs().max() > 1e-2  # what the head avoids
    s.sum().backward()  # and the gradient reaches the fp32 weights in fp32
    assert head.weight.grad.dtype == torch.float32


def test_cosine_head_keeps_float64():
    head = CosineHead(6, 3).double()
    h = torch.randn(4, 6, dtype=torch.float64)
    out = head(h)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _cosine_reference(h, head.weight, 30.0), rtol=1e-12, atol=1e-12)


def test_cosine_head_bad_scale():
    with pytest.raises(ConfigError, match="cosine head scale must be > 0"):
        CosineHead(8, 5, scale=0.0)


def test_projection_mlp():
    mlp = ProjectionMLP(64, 512, 128)
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp[0].weight.shape == (512, 64) and mlp[3].weight.shape == (128, 512)
    out = mlp(torch.randn(4, 64))
    assert out.shape == (4, 128)
    assert not torch.allclose(out.norm(dim=1), torch.ones(4))  # not normalised here
    with pytest.raises(ConfigError, match="ProjectionMLP hidden_dim must be >= 1"):
        ProjectionMLP(64, 0, 128)


def test_build_head():
    assert isinstance(build_head("linear", 16, 3), LinearHead)
    cos = build_head("cosine", 16, 3, scale=16.0)
    assert isinstance(cos, CosineHead) and cos.scale == 16.0
    with pytest.raises(ConfigError, match="model.head must be one of linear, cosine \\(got 'cos'\\)"):
        build_head("cos", 16, 3)
    with pytest.raises(ConfigError, match="num_classes >= 1"):
        build_head("linear", 16, 0)


# ----------------------------------------------------------------------------------------------------
# Network


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_build_network(head):
    net = build_network(ModelConfig(backbone="resnet8", head=head, scale=30.0, width=16), num_classes=7)
    assert net.num_classes == 7 and net.out_dim == 64
    out = net(torch.randn(3, 3, 32, 32))
    assert isinstance(out, NetOutput) and out.embeddings == {}
    assert out.features.shape == (3, 64) and out.logits.shape == (3, 7)
    torch.testing.assert_close(out.logits, net.forward_head(out.features))
    if head == "cosine":
        assert isinstance(net.classifier, CosineHead) and out.logits.abs().max() <= 30.0 * (1 + 1e-6)
    else:
        assert isinstance(net.classifier, LinearHead)


def test_build_network_errors():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet33'"):
        build_network(ModelConfig(backbone="resnet33"), num_classes=10)
    with pytest.raises(ConfigError, match="num_classes must be >= 1"):
        build_network(ModelConfig(backbone="resnet8"), num_classes=0)
    with pytest.raises(ConfigError, match="model.head must be one of"):
        build_network(ModelConfig(backbone="resnet8", head="mlp"), num_classes=10)


def test_network_extra_heads_and_reset_classifier():
    backbone = create_backbone("resnet8", width=4)
    net = Network(backbone, LinearHead(16, 5), heads={"proj": ProjectionMLP(16, 32, 8)})
    x = torch.randn(4, 3, 16, 16)
    out = net(x)
    assert set(out.embeddings) == {"proj"} and out.embeddings["proj"].shape == (4, 8)
    torch.testing.assert_close(out.embeddings["proj"], net.heads["proj"](out.features))

    net.eval()
    feats = net.forward_features(x)
    net.reset_classifier(CosineHead(16, 9))
    assert net.num_classes == 9 and net(x).logits.shape == (4, 9)
    assert net.backbone is backbone
    torch.testing.assert_close(net.forward_features(x), feats)
    with pytest.raises(ValueError, match="classifier expects 32-d features but the backbone gives 16-d"):
        net.reset_classifier(LinearHead(32, 9))
    with pytest.raises(ValueError, match="C×d rows in .weight"):
        net.reset_classifier(nn.Identity())
    with pytest.raises(ValueError, match="classifier expects 64-d features"):
        Network(backbone, LinearHead(64, 3))


@pytest.mark.parametrize("name,depth", sorted(CIFAR_DEPTHS.items(), key=lambda kv: kv[1]))
def test_cifar_resnet_zoo_functions(name, depth):
    import longtail.models as M

    fn = getattr(M, name)
    assert fn.__name__ == name and str(depth) in fn.__doc__
    net = fn(in_channels=1, width=4)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == depth - 1 and net.conv1.in_channels == 1
