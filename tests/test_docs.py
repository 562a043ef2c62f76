"""Every code block of the README and of docs/ runs: Python blocks as written, each in a fresh namespace
(a snippet defines what it uses), shell blocks' prunekit commands through the command line's parser,
TOML blocks as sweep files."""

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for i, match in enumerate(re.finditer(rf"```{lang}\n(.*?)```", text, flags=re.S)):
            out.append((page.relative_to(ROOT).as_posix(), i, match.group(1)))
    return out


PYTHON = _blocks("python")


def test_the_documentation_has_code_and_the_readme_is_short():
    assert len(PYTHON) >= 10 and _blocks("bash") and _blocks("toml")
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page, index, code", PYTHON, ids=[f"{p}#{i}" for p, i, _ in PYTHON])
def test_python_blocks_run_as_written(page, index, code, tmp_path, monkeypatch):
    if "fashion-mnist" in code and not FMNIST.exists() and os.environ.get("PRUNEKIT_REQUIRE_DATA") != "1":
        pytest.skip("Fashion-MNIST not installed")
    monkeypatch.chdir(tmp_path)  # files a snippet writes land here
    exec(compile(code, f"{page} (block {index})", "exec"), {"__name__": "docs_example"})


@pytest.mark.parametrize("page, index, code", _blocks("bash"), ids=[f"{p}#{i}" for p, i, _ in _blocks("bash")])
def test_shell_blocks_are_commands_the_parser_takes(page, index, code):
    from prunekit.cli import build_parser

    parser = build_parser()
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:3] == ["python", "-m", "prunekit"]:
            words = ["prunekit", *words[3:]]
        if not words or words[0] != "prunekit":
            continue
        try:
            parser.parse_args(words[1:])
        except SystemExit as exc:
            pytest.fail(f"{page}: {line!r} is not a valid prunekit command (exit {exc.code})")


@pytest.mark.parametrize("page, index, code", _blocks("toml"), ids=[f"{p}#{i}" for p, i, _ in _blocks("toml")])
def test_toml_blocks_are_valid_sweep_files(page, index, code):
    import tomllib

    from prunekit.experiments import sweep_from_mapping

    assert sweep_from_mapping(tomllib.loads(code), where=page).requests()
