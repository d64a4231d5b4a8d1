"""``longtail config show``: the resolved config as text, every key with its value, default and help.

The config is resolved as training resolves it (``base:`` files merged in, overrides applied, then
validated), so what is shown is what a run would use. Keys are grouped by section; the ``method`` section
lists the selected method's own parameters. A key whose value differs from its default is marked ``*``.
Values are written as YAML, as a config file or an override would give them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from longtail.config.loading import load_with_files
from longtail.config.schema import Config
from longtail.config.validation import validate

__all__ = ["show", "format_config", "key_help"]

MARK = "*"
MAX_VALUE_WIDTH = 28


def show(path: str | Path, overrides: Optional[Sequence[str]] = None) -> str:
    """The resolved config of the file ``path`` (its bases merged, ``overrides`` applied, validated) as
    text: each key's value, default and help, grouped by section, changed keys marked ``*``."""
    overrides = list(overrides or [])
    cfg, files = load_with_files(Config, path, overrides)
    validate(cfg)
    return format_config(cfg, files=files, overrides=overrides)


def key_help(f: dataclasses.Field) -> str:
    """The one line of help of a config key (its field's ``help`` metadata), or ''."""
    return str(f.metadata.get("help", "") or "")


def value_text(value: Any) -> str:
    """A value as YAML flow text: ``null``, ``true``, ``[160, 180]``, ``0.0002``, ``'yes'``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    return text[:-3].rstrip() if text.endswith("\n...") else text


def _rows(obj: Any, default: Any) -> list[tuple[str, str, str, str, bool]]:
    """(key, value, default, help, changed) for each plain key of a section instance."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        dflt = getattr(default, f.name)
        out.append((f.name, value_text(value), value_text(dflt), key_help(f), value != dflt))
    return out


def _sections(cfg: Config) -> list[tuple[str, str, list]]:
    """(title, help, rows) for the top level, then each section in declaration order."""
    base = Config()
    out = [("top level", "", _rows(cfg, base))]
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        title, default = f.name, getattr(base, f.name)
        if f.name == "method":
            title, default = f"method: {section.name}", type(section)()
        out.append((title, key_help(f), _rows(section, default)))
    return out


def format_config(cfg: Config, *, files: Sequence[Path] = (), overrides: Sequence[str] = ()) -> str:
    """The text of :func:`show` for a config already loaded (``files``: the files read, bases first)."""
    sections = _sections(cfg)
    changed = sum(r[4] for _, _, rows in sections for r in rows)
    lines = []
    if files:
        lines.append(f"config: {files[-1]}")
        if len(files) > 1:
            lines.append(f"bases: {', '.join(str(p) for p in files[:-1])} (merged in this order, then the config)")
    if overrides:
        lines.append(f"overrides: {' '.join(overrides)}")
    lines.append(f"{MARK} marks the {changed} key{'s' if changed != 1 else ''} that differ from their default")
    key_w = max(len(r[0]) for _, _, rows in sections for r in rows)
    for title, help_, rows in sections:
        lines.append("")
        lines.append(f"[{title}]" + (f"  {help_}" if help_ else ""))
        value_w = min(MAX_VALUE_WIDTH, max(len(r[1]) for r in rows))
        for key, value, dflt, text, diff in rows:
            mark = MARK if diff else " "
            lines.append(f"  {mark} {key:<{key_w}}  {value:<{value_w}}  default: {dflt}".rstrip())
            if text:
                lines.append(f"    {'':<{key_w}}  {text}")
    return "\n".join(lines) + "\n"
