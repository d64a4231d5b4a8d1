"""Reading YAML input strictly: safe tags only, and a key given twice in one mapping is an error.

``yaml.safe_load`` keeps the last of two equal keys without a word, so a config that sets ``optim.lr``
twice silently uses the second. :class:`StrictLoader` (a :class:`yaml.SafeLoader`) checks every mapping
of the document, at any depth, before it is built and names the key (as a dotted path) and both lines.
Every YAML file longtail reads as input goes through :func:`parse_yaml` or :func:`read_yaml_file`:
configs and their bases, DLSA configs, reproduction suites and override values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from longtail.errors import ConfigError

__all__ = ["StrictLoader", "DuplicateKeyError", "parse_yaml", "parse_override", "read_yaml_file"]


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice; ``key`` is its dotted path, ``lines`` its two 1-based lines."""

    def __init__(self, key: str, lines: tuple[int, int]):
        super().__init__(f"key '{key}' is given twice (lines {lines[0]} and {lines[1]}); keep one of them")
        self.key, self.lines = key, lines


class StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (merge keys ``<<`` may still be
    overridden, as YAML intends)."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_duplicates(node, "", set())
        return super().construct_document(node)

    def _check_duplicates(self, node: yaml.Node, path: str, seen: set) -> None:
        if id(node) in seen:  # an alias of a node already checked (anchors may even recurse)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_duplicates(item, f"{path}[{i}]", seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, yaml.ScalarNode):  # a complex key: refused when the dict is built
                    continue
                # keys compare by value, as the dict would: `a` and 'a' are one key, `1` and `0x1` too
                value = self.construct_object(key_node)
                dotted = f"{path}.{value}" if path else str(value)
                line = key_node.start_mark.line + 1
                if value in first:
                    raise DuplicateKeyError(dotted, (first[value], line))
                first[value] = line
                self._check_duplicates(value_node, dotted, seen)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document ``text`` (None when it holds nothing), read by :class:`StrictLoader`; errors are
    :class:`ConfigError` messages that start with ``source`` (a file name, or e.g. ``override optim.lr``)."""
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    except DuplicateKeyError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {_one_line(e)}") from None
    finally:
        loader.dispose()


def parse_override(raw: str, key: str) -> Any:
    """The value of an override ``key=raw``, read as YAML (None when blank); text that is not valid YAML
    stays the text itself, but a mapping that gives a key twice is an error."""
    if not raw.strip():
        return None
    loader = StrictLoader(raw)
    try:
        return loader.get_single_data()
    except DuplicateKeyError as e:
        raise ConfigError(f"override {key}={raw}: {e}") from None
    except yaml.YAMLError:
        return raw
    finally:
        loader.dispose()


def _one_line(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return " ".join(str(e).split())
    what = "; ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
    return f"{what} (line {mark.line + 1}, column {mark.column + 1})"


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """The document of a YAML file (None when it is empty or holds only comments)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} '{path}': {e}") from None
    return parse_yaml(text, str(path))
