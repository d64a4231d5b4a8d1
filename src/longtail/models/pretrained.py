"""Loading pretrained backbone weights from a local file (``model.pretrained``), with a report of the mapping.

Accepted files:

* ``.safetensors`` (a longtail run's ``model.safetensors``, or any safetensors state dict);
* anything else is read with ``torch.load(weights_only=True)``: a plain state dict, or one wrapped as
  ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"module": ...}`` (a longtail ``checkpoints/last.pt``
  included);
* a longtail run folder (its ``model.safetensors``).

Key names are matched after stripping the prefixes ``module.`` (DDP), ``_orig_mod.`` (torch.compile),
``model.``, ``backbone.`` and ``encoder.``. Torchvision and timm ResNets / ResNeXts use the same names as
our torchvision backbones, and our CIFAR ResNets use the same scheme (``conv1``, ``bn1``, ``layer1.0...``).
The file's classifier (keys under ``fc.``, ``head.`` or ``classifier.``) is skipped unless
``model.pretrained_classifier`` asks for it and its shapes match ours. BatchNorm's ``num_batches_tracked``
counters are optional (older torchvision files lack them).

Every check runs before a tensor is copied: a file that is not there, not a state dict, or that does not
fit the backbone (under ``model.pretrained_strict``) is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from longtail.data.download import file_digest
from longtail.errors import ConfigError

__all__ = ["read_state_dict", "load_pretrained", "map_keys", "report_line", "PREFIXES",
           "CLASSIFIER_NAMES", "WRAPPERS"]

#: prefixes stripped from the file's key names (repeatedly, in any order)
PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.")
#: first components of a source classifier's keys
CLASSIFIER_NAMES = ("fc", "head", "classifier")
#: wrapper keys around a state dict in training checkpoints
WRAPPERS = ("state_dict", "model", "module")
#: how many keys the report lists (the counts are always complete)
LIST_LIMIT = 20
_OPTIONAL = ("num_batches_tracked",)


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "model.safetensors").is_file():
            return p / "model.safetensors"
        raise ConfigError(f"model.pretrained={path} is a folder without model.safetensors: pass a weights file "
                          f"(.pth, .pt, .safetensors) or a finished longtail run")
    if not p.is_file():
        raise ConfigError(f"model.pretrained={path} does not exist: pass a local weights file (.pth, .pt, "
                          f".safetensors); nothing is downloaded")
    return p


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:160] if text else type(e).__name__)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a weights file and where they came from.

    Returns:
        ``(state_dict, info)``: name -> CPU tensor, and ``{"path", "format", "wrapper"}``.

    Raises:
        ConfigError: the file does not exist, cannot be read safely, or holds no state dict.
    """
    p = _resolve(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ConfigError(f"model.pretrained={path} is not a readable safetensors file ({_first_line(e)})") \
                from None
        return sd, {"path": str(p.resolve()), "format": "safetensors", "wrapper": None}
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a pickle of tensors at all
            raise ConfigError(f"model.pretrained={path} is not a PyTorch weights file (it cannot be unpickled)") \
                from None
        raise ConfigError(f"model.pretrained={path} cannot be loaded with weights_only=True (it holds a "
                          f"{found.group(1)} object); re-save only its tensors: torch.save(model.state_dict(), "
                          f"'weights.pth')") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ConfigError(f"model.pretrained={path} is not a PyTorch weights file ({_first_line(e)})") from None
    wrapper = []
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, dict) or _tensor_dict(obj):
            break
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        wrapper.append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not _tensor_dict(obj):
        what = f"a dict with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) \
            else f"a {type(obj).__name__}"
        raise ConfigError(f"model.pretrained={path} is not a state dict (it holds {what}); save "
                          f"model.state_dict(), or a dict with it under 'state_dict', 'model' or 'module'")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return sd, {"path": str(p.resolve()), "format": "torch", "wrapper": ".".join(wrapper) or None}


def _tensor_dict(d: dict) -> bool:
    """A state dict: string keys, and tensors among the values (a few non-tensor entries are tolerated)."""
    tensors = sum(isinstance(v, torch.Tensor) for v in d.values())
    return tensors > 0 and all(isinstance(k, str) for k in d) and tensors >= len(d) / 2


def _strip(key: str) -> tuple[str, list[str]]:
    stripped = []
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p) and len(key) > len(p):
                key, changed = key[len(p):], True
                stripped.append(p)
    return key, stripped


def map_keys(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str], dict[str, str]]:
    """Split a state dict into backbone candidates and classifier tensors, with prefixes stripped.

    Returns:
        ``(body, classifier, prefixes, classifier_keys)``: ``body`` maps stripped names to tensors;
        ``classifier`` maps the classifier's own names (``weight``, ``bias``) to the file's tensors;
        ``prefixes`` lists the stripped prefixes, each once; ``classifier_keys`` maps the classifier's
        names to the file's keys.

    Raises:
        ConfigError: two keys of the file map to the same name once stripped.
    """
    body: dict[str, torch.Tensor] = {}
    cls: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    cls_source: dict[str, str] = {}
    prefixes: list[str] = []
    for k, v in sd.items():
        name, stripped = _strip(k)
        prefixes += [p for p in stripped if p not in prefixes]
        target = body
        parts = name.split(".")
        if parts[0] in CLASSIFIER_NAMES and len(parts) > 1:
            while len(parts) > 2 and parts[0] in CLASSIFIER_NAMES:  # timm's head.fc.weight
                parts = parts[1:]
            name, target = ".".join(parts[1:]), cls
            name = ("classifier:" + name)
        if name in origin:
            raise ConfigError(f"the keys '{origin[name]}' and '{k}' of model.pretrained map to the same name once "
                              f"the prefixes {', '.join(PREFIXES)} are stripped; save only the backbone's weights")
        origin[name] = k
        if target is cls:
            cls[name[len("classifier:"):]] = v
            cls_source[name[len("classifier:"):]] = k
        else:
            body[name] = v
    return body, cls, prefixes, cls_source


def _shape(t: torch.Tensor) -> list[int]:
    return [int(s) for s in t.shape]


def _fits(own: dict[str, torch.Tensor], file: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(missing keys, keys with other shapes) of ``own`` against ``file``."""
    missing = [k for k in own if k not in file and k.rsplit(".", 1)[-1] not in _OPTIONAL]
    mismatched = [k for k in own if k in file and tuple(file[k].shape) != tuple(own[k].shape)]
    return missing, mismatched


def suggest_backbone(body: dict[str, torch.Tensor]) -> Optional[str]:
    """The registered backbone (``model.backbone=NAME`` plus ``model.width=W`` for CIFAR ResNets) whose
    every tensor the file holds with the same shape, built on the meta device (no memory, no init cost);
    None when none fits."""
    from longtail.models import resnet_cifar
    from longtail.models.backbones import DEFAULT_WIDTH, create_backbone
    from longtail.registry import BACKBONES

    conv = body.get("conv1.weight")
    in_ch = int(conv.shape[1]) if conv is not None and conv.dim() == 4 else 3
    width = int(conv.shape[0]) if conv is not None and conv.dim() == 4 else DEFAULT_WIDTH
    for name in BACKBONES.names():
        cifar = name in resnet_cifar.CIFAR_DEPTHS
        try:
            with torch.device("meta"):
                m = create_backbone(name, in_channels=in_ch, width=width if cifar else DEFAULT_WIDTH)
        except Exception:  # a plugin's factory may not build on the meta device
            continue
        missing, mismatched = _fits(m.state_dict(), body)
        if not missing and not mismatched:
            return f"model.backbone={name}" + (f" model.width={width}" if cifar and width != DEFAULT_WIDTH else "")
    return None


def _listed(keys: list[str]) -> list[str]:
    return keys[:LIST_LIMIT] + ([f"... {len(keys) - LIST_LIMIT} more"] if len(keys) > LIST_LIMIT else [])


def load_pretrained(network: nn.Module, path: str | Path, *, strict: bool = True, classifier: bool = False,
                    backbone_name: str = "the backbone") -> dict:
    """Copy a file's weights into ``network.backbone`` (and, with ``classifier``, ``network.classifier``).

    Args:
        network: a :class:`~longtail.models.Network` (``.backbone`` and ``.classifier``).
        path: the weights file (see the module docstring).
        strict: every backbone tensor must be in the file with our shape; False loads those that fit and
            reports the rest.
        classifier: also load the file's classifier into ours when its shapes match.
        backbone_name: ``model.backbone``, for the messages.

    Returns:
        the report: path, sha256, format, wrapper, stripped prefixes, loaded / total counts, missing,
        mismatched (with both shapes), unexpected and skipped classifier keys (lists cut at 20 entries).

    Raises:
        ConfigError: a bad file, or one that does not fit (strict), or of which no tensor fits. Nothing is
            copied then.
    """
    backbone = getattr(network, "backbone", None)
    if backbone is None:
        raise ConfigError(f"model.pretrained needs a network with a .backbone (got {type(network).__name__})")
    sd, info = read_state_dict(path)
    body, cls, prefixes, cls_keys = map_keys(sd)
    own = backbone.state_dict()
    missing, mismatched = _fits(own, body)
    shown = f"model.pretrained={path}"
    if strict and (missing or mismatched):
        parts = []
        if mismatched:
            parts.append("shapes differ: " + ", ".join(f"{k} {_shape(body[k])} in the file, {_shape(own[k])} here"
                                                        for k in mismatched[:3]))
        if missing:
            parts.append(f"{len(missing)} of {len(own)} backbone tensors are not in the file: "
                         + ", ".join(f"{k} {_shape(own[k])}" for k in missing[:3]))
        guess = suggest_backbone(body)
        hint = (f"the file fits {guess}" if guess else "set model.backbone to the file's architecture") + \
            ", or set model.pretrained_strict=false to load only the tensors that fit"
        raise ConfigError(f"{shown} does not fit model.backbone={backbone_name}: {'; '.join(parts)}. Fix: {hint}")
    take = {k: body[k] for k in own if k in body and k not in mismatched}
    unexpected = sorted(k for k in body if k not in own)
    own_cls = network.classifier.state_dict() if classifier else {}
    cls_take: dict[str, torch.Tensor] = {}
    cls_note = None
    if classifier:
        c_missing, c_mismatched = _fits(own_cls, cls)
        if c_missing or c_mismatched:
            what = (f"its classifier has {', '.join(f'{k} {_shape(cls[k])}' for k in c_mismatched)} but ours has "
                    f"{', '.join(f'{k} {_shape(own_cls[k])}' for k in c_mismatched)}" if c_mismatched else
                    f"it has no classifier tensor {', '.join(c_missing)} (looked under {', '.join(CLASSIFIER_NAMES)})")
            if strict:
                raise ConfigError(f"{shown} cannot fill the classifier: {what}. Fix: set "
                                  f"model.pretrained_classifier=false to start the classifier afresh")
            cls_note = what
        else:
            cls_take = {k: cls[k] for k in own_cls if k in cls}
    if not take and not cls_take:
        raise ConfigError(f"{shown}: no tensor of the file fits model.backbone={backbone_name} (e.g. file keys "
                          f"{', '.join(list(sd)[:3])}); set model.backbone to the file's architecture")
    with torch.no_grad():
        for k, v in take.items():
            own[k].copy_(v)
        for k, v in cls_take.items():
            own_cls[k].copy_(v)
    skipped_cls = sorted(cls_keys[k] for k in cls if k not in cls_take)
    shapes = [{"key": k, "file": _shape(body[k]), "model": _shape(own[k])} for k in mismatched[:LIST_LIMIT]]
    return {**info, "sha256": file_digest(Path(info["path"]), "sha256"), "strict": bool(strict),
            "prefixes_stripped": prefixes, "file_tensors": len(sd), "backbone_tensors": len(own),
            "loaded": len(take), "classifier_loaded": sorted(cls_keys[k] for k in cls_take),
            "classifier_note": cls_note, "missing": _listed(missing), "missing_count": len(missing),
            "mismatched": shapes, "mismatched_count": len(mismatched), "unexpected": _listed(unexpected),
            "unexpected_count": len(unexpected), "classifier_skipped": _listed(skipped_cls)}


def report_line(r: dict) -> str:
    """The report in one line, printed when training starts."""
    def few(keys: list[str], n: int) -> str:
        return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")

    parts = [f"pretrained {r['path']} (sha256 {r['sha256'][:12]}): loaded {r['loaded']} of {r['backbone_tensors']} "
             f"backbone tensors"]
    if r["classifier_loaded"]:
        parts.append(f"classifier loaded ({', '.join(r['classifier_loaded'])})")
    elif r["classifier_skipped"]:
        parts.append(f"classifier skipped ({few(r['classifier_skipped'], 2)})")
    if r["missing_count"]:
        parts.append(f"{r['missing_count']} missing ({few(r['missing'], 3)})")
    if r["mismatched_count"]:
        parts.append(f"{r['mismatched_count']} of other shape ({few([m['key'] for m in r['mismatched']], 3)})")
    if r["unexpected_count"]:
        parts.append(f"{r['unexpected_count']} unused ({few(r['unexpected'], 3)})")
    if r["prefixes_stripped"]:
        parts.append(f"prefixes stripped: {' '.join(r['prefixes_stripped'])}")
    return "; ".join(parts)
