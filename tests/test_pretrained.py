"""Fine-tuning: pretrained weights from local files (mapping, report, errors), per-group learning rates,
frozen BatchNorm and frozen stages, resume, and the command line end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from longtail import config as C
from longtail.cli import main
from longtail.engine import trainer as T
from longtail.engine.param_groups import param_groups, regroup_optimizer_state
from longtail.engine.run import train
from longtail.errors import ConfigError
from longtail.models import build_network
from longtail.models.finetune import apply_finetuning, backbone_stages
from longtail.models.pretrained import load_pretrained, report_line

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def model_cfg(**over) -> C.ModelConfig:
    cfg = C.Config()
    C.apply_overrides(cfg, [f"model.{k}={v}" for k, v in {"backbone": "resnet8", "width": 4, **over}.items()])
    return cfg.model


def net(seed: int = 0, classes: int = 5, **over):
    torch.manual_seed(seed)
    return build_network(model_cfg(**over), classes)


def backbone_sd(n) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in n.backbone.state_dict().items()}


def assert_backbone_equals(n, sd: dict[str, torch.Tensor]) -> None:
    own = n.backbone.state_dict()
    assert own.keys() == sd.keys()
    for k in own:
        assert torch.equal(own[k], sd[k]), k


def source(seed: int = 1, classes: int = 5, **over) -> dict[str, torch.Tensor]:
    """A "pretrained" state dict in torchvision naming: backbone keys at the top, the classifier as fc.*,
    with running statistics that differ from a fresh init."""
    n = net(seed, classes, **over)
    sd = backbone_sd(n)
    for k in sd:
        if k.endswith("running_mean") or k.endswith("running_var"):
            sd[k] = torch.rand_like(sd[k]) + 0.5
    sd["fc.weight"] = n.classifier.weight.detach().clone()
    sd["fc.bias"] = n.classifier.bias.detach().clone()
    return sd


def without_fc(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


# ---------------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_exact_load_from_pth_and_safetensors(tmp_path, fmt):
    src = source()
    path = tmp_path / f"w.{fmt}"
    torch.save(src, path) if fmt == "pth" else save_file(src, str(path))
    n = net(0)
    head = copy.deepcopy(n.classifier.state_dict())
    r = load_pretrained(n, path)
    assert_backbone_equals(n, without_fc(src))
    for k, v in n.classifier.state_dict().items():  # the source's classifier is not loaded by default
        assert torch.equal(v, head[k])
    assert r["loaded"] == r["backbone_tensors"] == len(without_fc(src))
    assert r["missing"] == [] and r["unexpected"] == [] and r["classifier_skipped"] == ["fc.bias", "fc.weight"]
    import hashlib
    assert r["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r["format"] == ("torch" if fmt == "pth" else "safetensors")


def test_torchvision_resnet18_file_loads_exactly(tmp_path):
    import torchvision

    torch.manual_seed(3)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    n = net(0, 7, backbone="resnet18", width=16)
    r = load_pretrained(n, tmp_path / "r18.pth")
    assert_backbone_equals(n, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    assert r["loaded"] == 120 and r["classifier_skipped"] == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize("prefix", ["module.", "model.", "backbone.", "encoder.", "module.backbone.",
                                    "_orig_mod.model."])
def test_prefixes_are_stripped(tmp_path, prefix):
    src = without_fc(source())
    torch.save({prefix + k: v for k, v in src.items()}, tmp_path / "w.pt")
    n = net(0)
    r = load_pretrained(n, tmp_path / "w.pt")
    assert_backbone_equals(n, src)
    assert "".join(r["prefixes_stripped"]) == prefix


@pytest.mark.parametrize("wrap,name", [(lambda sd: {"state_dict": sd, "epoch": 3}, "state_dict"),
                                       (lambda sd: {"model": sd, "optimizer": {}}, "model"),
                                       (lambda sd: {"module": sd}, "module"),
                                       (lambda sd: {"model": {"state_dict": sd}}, "model.state_dict")])
def test_wrappers_are_unwrapped(tmp_path, wrap, name):
    src = without_fc(source())
    torch.save(wrap(src), tmp_path / "w.pth")
    n = net(0)
    r = load_pretrained(n, tmp_path / "w.pth")
    assert_backbone_equals(n, src)
    assert r["wrapper"] == name


def test_classifier_is_loaded_only_when_asked_and_matching(tmp_path):
    src = source(classes=5)
    torch.save(src, tmp_path / "w.pth")
    n = net(0, 5)
    r = load_pretrained(n, tmp_path / "w.pth", classifier=True)
    assert torch.equal(n.classifier.weight, src["fc.weight"]) and torch.equal(n.classifier.bias, src["fc.bias"])
    assert r["classifier_loaded"] == ["fc.bias", "fc.weight"] and r["classifier_skipped"] == []
    # another number of classes: a strict load names the shapes and the fix, and copies nothing
    n7 = net(0, 7)
    before = backbone_sd(n7)
    with pytest.raises(ConfigError, match=r"cannot fill the classifier.*\[5, 16\].*\[7, 16\].*"
                                          r"pretrained_classifier=false") as e:
        load_pretrained(n7, tmp_path / "w.pth", classifier=True)
    assert "\n" not in str(e.value)
    assert_backbone_equals(n7, before)
    # non-strict: the backbone loads, the classifier stays and the report says why
    head = n7.classifier.weight.detach().clone()
    r = load_pretrained(n7, tmp_path / "w.pth", classifier=True, strict=False)
    assert torch.equal(n7.classifier.weight, head) and r["classifier_note"] and r["classifier_loaded"] == []
    assert_backbone_equals(n7, without_fc(src))


def test_timm_style_head_fc_is_a_classifier(tmp_path):
    src = without_fc(source())
    src["head.fc.weight"] = torch.randn(5, 16)
    torch.save(src, tmp_path / "w.pth")
    n = net(0, 5, head="cosine")
    r = load_pretrained(n, tmp_path / "w.pth", classifier=True)
    assert torch.equal(n.classifier.weight, src["head.fc.weight"]) and r["classifier_loaded"] == ["head.fc.weight"]


def test_missing_and_unexpected_keys_are_reported_under_strict_false(tmp_path):
    src = without_fc(source())
    dropped = sorted(k for k in src if k.startswith("layer3."))
    kept = {k: v for k, v in src.items() if k not in dropped}
    kept["extra.weight"] = torch.zeros(3)
    kept["heads.proj.0.weight"] = torch.zeros(2, 2)
    kept["conv1.weight"] = torch.zeros(4, 3, 5, 5)  # another shape
    torch.save(kept, tmp_path / "w.pth")
    n = net(0)
    before = backbone_sd(n)
    r = load_pretrained(n, tmp_path / "w.pth", strict=False)
    own = n.backbone.state_dict()
    for k in own:  # what fits is the file's; the rest keeps its init
        expected = kept[k] if k in kept and k not in dropped and k != "conv1.weight" else before[k]
        assert torch.equal(own[k], expected), k
    nbt = [k for k in dropped if k.endswith("num_batches_tracked")]
    assert r["missing"] == [k for k in own if k in dropped and k not in nbt]  # counters are optional
    assert r["missing_count"] == len(dropped) - len(nbt)
    assert r["unexpected"] == ["extra.weight", "heads.proj.0.weight"] and r["unexpected_count"] == 2
    assert r["mismatched"] == [{"key": "conv1.weight", "file": [4, 3, 5, 5], "model": [4, 3, 3, 3]}]
    assert r["loaded"] == len(own) - len(dropped) - 1
    line = report_line(r)
    assert "\n" not in line and "missing (layer3.0.conv1.weight" in line and "2 unused" in line
    assert "1 of other shape (conv1.weight)" in line


def test_report_lists_are_cut_but_counts_are_whole(tmp_path):
    src = without_fc(source())
    for i in range(30):
        src[f"junk.{i:02d}"] = torch.zeros(1)
    torch.save(src, tmp_path / "w.pth")
    r = load_pretrained(net(0), tmp_path / "w.pth")
    assert r["unexpected_count"] == 30 and len(r["unexpected"]) == 21 and r["unexpected"][-1] == "... 10 more"


def test_strict_mismatch_is_one_line_naming_keys_shapes_and_the_fix(tmp_path):
    torch.save(without_fc(source(width=8)), tmp_path / "w.pth")
    n = net(0)  # width 4
    before = backbone_sd(n)
    with pytest.raises(ConfigError) as e:
        load_pretrained(n, tmp_path / "w.pth", backbone_name="resnet8")
    msg = str(e.value)
    assert "\n" not in msg and "conv1.weight [8, 3, 3, 3] in the file, [4, 3, 3, 3] here" in msg
    assert "model.backbone=resnet8 model.width=8" in msg and "model.pretrained_strict=false" in msg
    assert_backbone_equals(n, before)  # nothing copied


def test_files_without_batchnorm_counters_load_strictly(tmp_path):
    src = {k: v for k, v in without_fc(source()).items() if not k.endswith("num_batches_tracked")}
    torch.save(src, tmp_path / "old_torchvision_style.pth")
    n = net(0)
    counters = {k: v.clone() for k, v in n.backbone.state_dict().items() if k.endswith("num_batches_tracked")}
    r = load_pretrained(n, tmp_path / "old_torchvision_style.pth")
    own = n.backbone.state_dict()
    assert r["missing"] == [] and r["loaded"] == len(src) == len(own) - len(counters)
    assert all(torch.equal(own[k], v) for k, v in {**src, **counters}.items())


def test_missing_backbone_tensor_is_an_error_naming_it(tmp_path):
    src = without_fc(source())
    del src["layer2.0.bn1.running_var"]
    torch.save(src, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"1 of \d+ backbone tensors are not in the file: "
                                          r"layer2.0.bn1.running_var \[8\]"):
        load_pretrained(net(0), tmp_path / "w.pth")


class _NotATensor:
    pass


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    (b"garbage" * 10, "is not a PyTorch weights file"),
    ([1, 2, 3], "is not a state dict (it holds a list)"),
    ({"epoch": 3, "arch": "resnet"}, "is not a state dict (it holds a dict with keys epoch, arch)"),
    ("object", "cannot be loaded with weights_only=True (it holds a "),
    ("safetensors-garbage", "is not a readable safetensors file"),
    ({"fc.weight": torch.zeros(5, 16)}, "no tensor of the file fits"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, needle):
    path = tmp_path / ("w.safetensors" if content == "safetensors-garbage" else "w.pth")
    if content == "object":
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "args": _NotATensor()}, path)
    elif content == "safetensors-garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    n = net(0)
    before = backbone_sd(n)
    with pytest.raises(ConfigError) as e:
        load_pretrained(n, path, strict=False)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    if content == "object":
        assert "_NotATensor object); re-save only its tensors" in str(e.value)
    assert_backbone_equals(n, before)


# ---------------------------------------------------------------------------------------------------- groups


def full_cfg(**over) -> C.Config:
    cfg = C.Config()
    ov = {"data.name": "digits", "data.imbalance": "10", "model.backbone": "resnet8", "model.width": "4",
          "method.name": "ce", "optim.lr": "0.05", "optim.warmup_epochs": "0", "optim.schedule": "constant",
          "train.epochs": "2", "train.batch_size": "128", "train.eval_every": "0", "train.progress": "false",
          "eval.batch_size": "512", "device": "cpu"}
    ov.update({k: str(v) for k, v in over.items()})
    C.apply_overrides(cfg, [f"{k}={v}" for k, v in ov.items()])
    return C.validate(cfg)


def quiet(*a):
    pass


def test_param_groups_split_backbone_head_and_projection():
    from longtail.methods import create_method
    import numpy as np

    cfg = full_cfg(**{"method.name": "bcl", "optim.backbone_lr_scale": 0.1, "optim.lr": 0.2})
    method = create_method(cfg, np.array([20, 10, 5]))
    n = method.build_network(3, 1)
    groups = param_groups(n, cfg)
    assert [g["name"] for g in groups] == ["backbone", "head", "projection"]
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(groups[0]["params"]) == ids(n.backbone.parameters())
    assert ids(groups[1]["params"]) == ids(n.classifier.parameters())
    assert ids(groups[2]["params"]) == ids(n.heads.parameters()) | ids(n.proto.parameters())
    assert [g["lr"] for g in groups] == pytest.approx([0.02, 0.2, 0.2])
    assert [g["lr_scale"] for g in groups] == [0.1, 1.0, 1.0]
    opt = T.build_optimizer(n, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.2, 0.2])


def test_backbone_lr_scale_scales_the_sgd_step():
    cfg = full_cfg(**{"optim.backbone_lr_scale": 0.25, "optim.momentum": 0, "optim.weight_decay": 0,
                      "optim.lr": 0.5})
    n = net(0)
    before = copy.deepcopy(n)
    opt = T.build_optimizer(n, cfg)
    x = torch.randn(6, 3, 16, 16)
    n(x).logits.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in n.named_parameters()}
    opt.step()
    for (k, p), q in zip(n.named_parameters(), before.parameters()):
        scale = 0.25 if k.startswith("backbone.") else 1.0
        torch.testing.assert_close(p.detach(), q.detach() - 0.5 * scale * grads[k], rtol=0, atol=1e-6)


def test_group_lrs_follow_warmup_and_step_decay(tmp_path, monkeypatch):
    seen = []

    def record(self, batch, step, sums):
        if step == 0:
            seen.append({g["name"]: g["lr"] for g in self.optimizer.param_groups})

    monkeypatch.setattr(T.Trainer, "train_step", record)
    monkeypatch.setattr(T.Trainer, "_check_finite", lambda self, *a, **k: 0)
    cfg = full_cfg(**{"optim.backbone_lr_scale": 0.1, "optim.lr": 0.4, "optim.warmup_epochs": 2,
                      "optim.schedule": "step", "optim.milestones": "[3]", "optim.gamma": 0.5, "train.epochs": 5})
    train(cfg, out=str(tmp_path / "r"), echo=quiet)
    base = [0.2, 0.4, 0.4, 0.2, 0.2]  # warm-up 0.4*(e+1)/2, then x0.5 from epoch 3 (0-based)
    assert [s["head"] for s in seen] == pytest.approx(base)
    assert [s["backbone"] for s in seen] == pytest.approx([0.1 * b for b in base])


def _old_build_optimizer(network, cfg):
    """The optimiser before parameter groups existed: one group over every parameter."""
    o = cfg.optim
    return torch.optim.SGD(network.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay, **T.optimizer_impl(o.impl, "cpu"))


def test_default_scale_trains_bit_identically_to_the_single_group_optimiser(tmp_path, monkeypatch):
    cfg = full_cfg(**{"train.epochs": 1, "train.max_steps": 3, "optim.nesterov": "true"})
    grouped = train(cfg, out=str(tmp_path / "grouped"), echo=quiet)
    monkeypatch.setattr(T, "build_optimizer", _old_build_optimizer)
    single = train(cfg, out=str(tmp_path / "single"), echo=quiet)
    a, b = load_file(str(grouped / "model.safetensors")), load_file(str(single / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s = torch.load(grouped / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert [g["name"] for g in s["param_groups"]] == ["backbone", "head"]


def test_single_group_optimizer_state_spreads_over_the_groups():
    cfg = full_cfg(**{"optim.nesterov": "true"})
    torch.manual_seed(0)
    a = net(0)
    b = copy.deepcopy(a)
    x = torch.randn(4, 3, 16, 16)
    old = _old_build_optimizer(a, cfg)
    for _ in range(2):
        old.zero_grad()
        a(x).logits.square().sum().backward()
        old.step()
    b.load_state_dict(a.state_dict())
    new = T.build_optimizer(b, cfg)
    saved = copy.deepcopy(old.state_dict())  # as read from a checkpoint (load_state_dict keeps the tensors)
    assert len(saved["param_groups"]) == 1 and len(new.param_groups) == 2
    new.load_state_dict(regroup_optimizer_state(saved, new))
    for opt, n in ((old, a), (new, b)):
        opt.zero_grad()
        n(x).logits.square().sum().backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------------------------------- freezing


def _step(n, cfg, steps=2):
    opt = T.build_optimizer(n, cfg)
    for i in range(steps):
        n.train()  # the trainer calls train() every epoch
        torch.manual_seed(i)
        opt.zero_grad()
        n(torch.randn(8, 3, 16, 16) * 3 + 1).logits.square().sum().backward()
        opt.step()
    return opt


def test_freeze_bn_keeps_running_stats_and_trains_affine():
    cfg = full_cfg(**{"model.freeze_bn": "true"})
    n = apply_finetuning(net(0), cfg.model)
    before = backbone_sd(n)
    _step(n, cfg)
    bns = [m for m in n.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and n.training and n.classifier.training
    own = n.backbone.state_dict()
    for k in own:
        if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(own[k], before[k]), k
    # mmpretrain's norm_eval: the affine parameters still learn
    assert not torch.equal(own["bn1.weight"], before["bn1.weight"])
    assert not torch.equal(own["layer3.0.bn2.bias"], before["layer3.0.bn2.bias"])
    # without freeze_bn the same steps do move the statistics
    m = net(0)
    _step(m, full_cfg())
    assert not torch.equal(m.backbone.state_dict()["bn1.running_mean"], before["bn1.running_mean"])


@pytest.mark.parametrize("k,frozen", [(1, ("conv1", "bn1", "layer1")), (2, ("conv1", "bn1", "layer1", "layer2"))])
def test_frozen_stages_get_no_update_and_are_not_in_the_optimiser(k, frozen):
    cfg = full_cfg(**{"model.freeze_stages": k})
    n = apply_finetuning(net(0), cfg.model)
    before = backbone_sd(n)
    opt = _step(n, cfg)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    own = n.backbone.state_dict()
    for name, p in n.backbone.named_parameters():
        is_frozen = name.split(".")[0] in frozen
        assert (id(p) in in_opt) != is_frozen and p.requires_grad != is_frozen, name
    for key in own:
        if key.split(".")[0] in frozen:  # weights and BN statistics alike
            assert torch.equal(own[key], before[key]), key
        elif not key.endswith("num_batches_tracked"):
            assert not torch.equal(own[key], before[key]) or key.endswith("running_var"), key
    assert all(not m.training for m in n.backbone.get_submodule(frozen[-1]).modules())


def test_freeze_stages_beyond_the_backbone_is_an_error():
    with pytest.raises(ConfigError, match=r"model.freeze_stages=4 but resnet8 has 3 stages after its stem; use 0 to 3"):
        apply_finetuning(net(0), model_cfg(freeze_stages=4))
    assert [s for s in backbone_stages(net(0, backbone="resnet18", width=16).backbone)] == \
        [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


@pytest.mark.parametrize("override,needle", [("model.freeze_stages=-1", "model.freeze_stages must be >= 0"),
                                             ("optim.backbone_lr_scale=0", "optim.backbone_lr_scale must be > 0")])
def test_invalid_finetuning_values(override, needle):
    cfg = C.Config()
    C.apply_overrides(cfg, [override])
    with pytest.raises(ConfigError, match=needle):
        C.validate(cfg)


# ---------------------------------------------------------------------------------------------------- runs


def _digits_source(tmp_path) -> Path:
    """A file in torchvision naming for digits (1 channel) and resnet8 width 4."""
    torch.manual_seed(7)
    n = build_network(model_cfg(), 10, in_channels=1)
    sd = {"module." + k: v for k, v in n.backbone.state_dict().items()}
    sd["module.fc.weight"] = torch.randn(10, 16)
    path = tmp_path / "digits_r8.pth"
    torch.save({"state_dict": sd}, path)
    return path


def test_resume_keeps_pretrained_frozen_stages_bn_and_groups(tmp_path):
    path = _digits_source(tmp_path)
    file_sd = {k[len("module."):]: v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}
    over = {"model.pretrained": str(path), "model.freeze_stages": 1, "model.freeze_bn": "true",
            "optim.backbone_lr_scale": 0.1, "train.epochs": 2}
    whole = train(full_cfg(**over), out=str(tmp_path / "whole"), echo=quiet)
    half = train(full_cfg(**{**over, "train.epochs": 1}), out=str(tmp_path / "half"), echo=quiet)
    (tmp_path / "moved").mkdir()
    path.rename(tmp_path / "moved" / path.name)  # resuming does not read the file again
    lines = []
    train(full_cfg(**over), resume=str(half), echo=lines.append)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(half / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k, v in a.items():  # the stem and layer1 are the file's, statistics included; all BN stats too
        short = k[len("backbone."):]
        if short.split(".")[0] in ("conv1", "bn1", "layer1") or "running" in short:
            assert torch.equal(v, file_sd[short]), k
    summary = json.loads((half / "summary.json").read_text())
    report = json.loads((half / "pretrained.json").read_text())
    assert summary["pretrained"]["sha256"] == report["sha256"] and report["loaded"] == report["backbone_tensors"]
    assert report["classifier_skipped"] == ["module.fc.weight"] and report["prefixes_stripped"] == ["module."]
    opt = torch.load(half / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert [(g["name"], g["lr"]) for g in opt["param_groups"]] == [("backbone", pytest.approx(0.005)),
                                                                  ("head", 0.05)]


def run_cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_mismatch_exits_non_zero_and_leaves_no_run(tmp_path, capsys):
    path = _digits_source(tmp_path)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(C.dump(full_cfg()))
    for bad, needle in [(f"model.pretrained={path} model.width=8", "does not fit model.backbone=resnet8"),
                        (f"model.pretrained={tmp_path / 'nope.pth'}", "does not exist")]:
        code, _, err = run_cli(["train", "--config", str(cfg_path), "--out", str(tmp_path / "r"), *bad.split()], capsys)
        assert code == 2 and needle in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_quickstart_then_finetune_from_its_model_safetensors(tmp_path, capsys):
    quick = ROOT / "src" / "longtail" / "configs" / "quickstart.yaml"
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["device=cpu", "train.progress=false", "train.epochs=1", "train.max_steps=2", "eval.batch_size=512"]
    assert main(["train", "--config", str(quick), "--out", str(first), *common]) == 0
    capsys.readouterr()
    # the whole backbone frozen (stem + 3 stages of resnet8): the new run's backbone is the first run's
    code = main(["train", "--config", str(quick), "--out", str(second), *common,
                 f"model.pretrained={first / 'model.safetensors'}", "model.freeze_stages=3", "method.name=ce"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"pretrained {first / 'model.safetensors'}" in out and "loaded 42 of 42 backbone tensors" in out, out
    assert "classifier skipped (classifier.bias, classifier.weight)" in out and "prefixes stripped: backbone." in out
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("backbone."))
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])
    report = json.loads((second / "pretrained.json").read_text())
    assert report["format"] == "safetensors" and report["missing"] == [] and report["unexpected"] == []
    # a run folder is accepted too, and the run's classifier loads when asked (same classes)
    third = tmp_path / "third"
    code = main(["train", "--config", str(quick), "--out", str(third), *common, f"model.pretrained={first}",
                 "model.pretrained_classifier=true", "train.max_steps=1"])
    assert code == 0 and "classifier loaded (classifier.bias, classifier.weight)" in capsys.readouterr().out
    # a fine-tuned run is evaluated from its own weights: the file is not needed any more
    import shutil

    shutil.rmtree(first)
    assert main(["eval", str(second)]) == 0 and "agrees with summary.json" in capsys.readouterr().out


def test_resume_with_other_frozen_stages_is_refused_and_changes_nothing(tmp_path, capsys):
    run = train(full_cfg(**{"train.epochs": 1, "train.max_steps": 1}), out=str(tmp_path / "r"), echo=quiet)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = run_cli(["train", "--resume", str(run), "model.freeze_stages=2", "train.max_steps=2"], capsys)
    assert code == 2 and "groups of [21, 2]" in err and "model.freeze_stages" in err, err
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_a_checkpoint_from_before_the_groups_resumes_bit_exactly(tmp_path, monkeypatch):
    cfg = full_cfg(**{"train.epochs": 2})
    whole = train(cfg, out=str(tmp_path / "whole"), echo=quiet)
    with monkeypatch.context() as m:
        m.setattr(T, "build_optimizer", _old_build_optimizer)
        old = train(full_cfg(**{"train.epochs": 1}), out=str(tmp_path / "old"), echo=quiet)
    assert len(torch.load(old / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]) == 1
    train(cfg, resume=str(old), echo=quiet)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(old / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
