"""The public API: every exported name has a docstring, and docstrings only name files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["longtail.data", "longtail.models", "longtail.losses", "longtail.methods",
                                     "longtail.stage2", "longtail.config"])
def test_public_names_are_documented(package):
    import importlib

    mod = importlib.import_module(package)
    assert (mod.__doc__ or "").strip(), package
    for name in mod.__all__:
        obj = getattr(mod, name)
        if isinstance(obj, (str, tuple, dict)):  # constants
            continue
        assert (obj.__doc__ or "").strip(), f"{package}.{name} has no docstring"


def _doc_references():
    pattern = re.compile(r"docs/[\w/.-]+\.md(?: ?§ ?[\d.]+)?")
    for path in (ROOT / "src").rglob("*.py"):
        for ref in pattern.findall(path.read_text()):
            yield path.relative_to(ROOT), ref


def test_docstrings_name_only_files_of_the_project():
    refs = list(_doc_references())
    assert len(refs) > 40  # the package points to its docs
    for path, ref in refs:
        file, _, section = ref.partition("§")
        doc = ROOT / file.strip()
        assert doc.is_file(), f"{path} refers to {ref}, which is not in the project"
        if section:
            num = section.strip().rstrip(".")
            headings = [h for h in doc.read_text().splitlines() if h.startswith("#")]
            assert any(re.match(rf"#+ {re.escape(num)}(\.|\s)", h) for h in headings), f"{path}: {ref}"
    text = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    for spec in ("METHODS.md", "PROTOCOL.md", "ARCHITECTURE.md", "TARGETS.md", "../shared"):
        assert spec not in text, f"the package names {spec}, which users do not have"
