"""The README: its two set-up commands are the ones CI and users run, its library example runs, and its
quickstart table is what the quickstart prints."""

import os
import re
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


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_library_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use longtail as a library"):readme.index("## Documentation")]
    (code,) = _python_blocks(section)
    monkeypatch.chdir(ROOT)  # the example names configs/quickstart.yaml, as from a clone
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out.split()
    assert float(out[0]) > 0 and (Path(out[1]) / "summary.json").is_file()


def test_the_quickstart_table_in_the_readme_is_what_the_quickstart_prints(tmp_path, capsys):
    """The golden test: the README's table is the quickstart's output on the reference machine (CPU,
    torch >= 2.4). A change that moves it must re-record results/quickstart/ and the README."""
    from longtail import config as C
    from longtail.engine.evaluator import format_table
    from longtail.engine.run import train

    readme = (ROOT / "README.md").read_text()
    table = re.search(r"\| top-1 \| Many .*?\n\|---.*?\n(\|.*?\|)\n", readme).group(1)
    cfg = C.load(ROOT / "configs" / "quickstart.yaml", ["device=cpu", "train.progress=false"])
    run = train(cfg, out=str(tmp_path / "qs"), echo=lambda *a: None)
    import json

    summary = json.loads((run / "summary.json").read_text())
    assert format_table(summary).splitlines()[-1] == table
    assert os.environ.get("LONGTAIL_DATA", "") != str(tmp_path)  # the quickstart needs no data folder
