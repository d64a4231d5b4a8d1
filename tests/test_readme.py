"""The README's two set-up commands are the ones CI and users run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ('python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && '
           '.venv/bin/longtail train --config configs/quickstart.yaml')
TESTS = ".venv/bin/python -m pytest -q"


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    assert INSTALL in readme and TESTS in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert TESTS in ci.splitlines() and (ROOT / "configs" / "quickstart.yaml").is_file()


def test_shared_folder_not_mentioned_outside_ci():
    for p in list((ROOT / "src").rglob("*.py")) + [ROOT / "README.md"] + list((ROOT / "configs").rglob("*.yaml")):
        assert "shared/data" not in p.read_text(), p
