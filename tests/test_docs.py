"""Examples in the README and docs/ are executed, so they cannot drift from the code."""

import pathlib
import re
import shlex

import pytest

from gainderive.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(language):
    for page in PAGES:
        text = page.read_text()
        for i, match in enumerate(re.finditer(rf"```{language}\n(.*?)```", text, re.S)):
            yield pytest.param(match.group(1), id=f"{page.name}-{i}")


@pytest.mark.parametrize("code", list(_blocks("python")))
def test_python_examples_run(code):
    # a block that needs an optional framework says so on its first line, "# needs: torch" (docs/frameworks.md):
    # skipped without it, and run in CI's extras stage, where a missing framework fails (tests/conftest.py)
    first = code.split("\n", 1)[0]
    if first.startswith("# needs:"):
        for module in first.removeprefix("# needs:").replace(",", " ").split():
            pytest.importorskip(module)
    exec(compile(code, "<docs>", "exec"), {})  # our own documentation, not user input


@pytest.mark.parametrize("block", list(_blocks("console")))
def test_cli_examples_exit_zero(block, capsys):
    for line in block.splitlines():
        if line.startswith("$ gainderive "):
            argv = shlex.split(line[len("$ gainderive "):])
            if "--check" in argv:
                argv.append("--quiet")
            assert main(argv) == 0, line
    capsys.readouterr()


def test_readme_quick_start_is_two_commands():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", quick, re.S).group(1).strip().splitlines()
    assert commands == ["pip install . && gainderive derive elu", "pip install '.[test]' && pytest"]


def test_the_limits_page_lists_every_limit_at_its_default():
    # docs/limits.md is the user's table of limits: each row must be a limit of gainderive.limits at its default
    from gainderive.limits import LIMITS

    text = (ROOT / "docs" / "limits.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d,]+) \|", text, re.M))
    assert rows == {name: f"{lim.default:,}" for name, lim in LIMITS.items()}
