"""Every example of README.md, docs/cli.md and the commands' ``--help`` runs as written.

Each fenced code block of the two documents that holds ``hyperkit`` commands (language none,
``sh``, ``bash``, ``shell`` or ``console``) runs in a fresh temporary folder, prepared with
copies of the bundled fixtures under the names the docs use (``anime.pt``,
``models/hypernetworks/``). Its lines run in order, each through ``bash -o pipefail`` with the
venv's ``hyperkit`` and ``python`` first on ``PATH``, and each must exit 0. The ``Examples:``
lines of every command's ``--help`` are run the same way, one block per command.

Lines starting with ``make`` are skipped: ``make demo`` and ``make test`` would set up the venv
and recurse into this very suite (CI runs ``make test`` itself). ``python`` blocks run with this
interpreter in a folder prepared the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperkit.cli import cli
from hyperkit.demo import fixture_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/cli.md")
SHELL = {"", "sh", "bash", "shell", "console"}
# The names the docs use, and the fixtures standing in for them.
PREPARED = {
    "anime.pt": "b_a1111_default.pt",
    "models/hypernetworks/style.pt": "c_relu_ln_dropout.pt",
    "models/hypernetworks/kohya.pt": "g_kohya_list.pt",
    "models/hypernetworks/deep/deep.pt": "d_deep.pt",
}


@dataclass
class Block:
    """One fenced code block: where it is, its language and its lines."""

    where: str
    language: str
    lines: list[str]

    def commands(self) -> list[str]:
        """The shell lines to run: not blank, not comments, not ``make``."""
        return [
            line
            for line in (raw.strip() for raw in self.lines)
            if line and not line.startswith("#") and not re.match(r"make(\s|$)", line)
        ]


def fenced_blocks(doc: str) -> list[Block]:
    """Every fenced block of a Markdown file (fences at the start of a line)."""
    blocks, current = [], None
    for number, line in enumerate((ROOT / doc).read_text(encoding="utf-8").splitlines(), 1):
        if current is None and line.startswith("```"):
            current = Block(f"{doc}:{number}", line[3:].strip().lower(), [])
        elif current is not None and line.startswith("```"):
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    assert current is None, f"{doc}: unclosed code block at {current.where}"
    return blocks


def shell_blocks() -> list[Block]:
    """The shell blocks of the docs that run ``hyperkit``, and one block per command's --help."""
    found = [
        b
        for doc in DOCS
        for b in fenced_blocks(doc)
        if b.language in SHELL and any(line.startswith("hyperkit ") for line in b.commands())
    ]
    for name, command in [("hyperkit", cli), *sorted(cli.commands.items())]:
        lines = [line.strip() for line in (command.help or "").splitlines()]
        found.append(Block(f"{name} --help", "", [line for line in lines if line.startswith("hyperkit ")]))
    return found


def python_blocks() -> list[Block]:
    return [b for doc in DOCS for b in fenced_blocks(doc) if b.language == "python"]


#: The generator examples' files (docs/generator.md, the bake/run/bench/import-hypnettorch --help).
PREPARED_GENERATOR = {
    "generator.safetensors": "generator/tiny_conv.safetensors",
    "target.onnx": "generator/task2.onnx",
    "hnet_state.pt": "generator/hypnettorch_chunked.pt",
    "hnet_config.json": "generator/hypnettorch_chunked.json",
}


def prepare(folder: Path) -> Path:
    """``folder`` holding copies of the fixtures under the docs' names."""
    for name, fixture in {**PREPARED, **PREPARED_GENERATOR}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixture_path(fixture), folder / name)
    # Base models for `hyperkit bake --into` (scripts/make_bake_fixtures.py): widths 8 and 16, like anime.pt.
    shutil.copy(fixture_path("bake/unet/diffusion_pytorch_model.safetensors"), folder / "unet.safetensors")
    shutil.copytree(fixture_path("bake/unet/config.json").parent, folder / "unet", dirs_exist_ok=True)
    shutil.copy(fixture_path("bake/unet.onnx"), folder / "unet.onnx")
    # `hyperkit eval` examples: manifest.csv, images/ and the tiny CLIP (scripts/make_eval_fixtures.py).
    shutil.copytree(fixture_path("eval/manifest.csv").parent, folder, dirs_exist_ok=True)
    return folder


def environment(tmp_path: Path) -> dict[str, str]:
    """The current environment with the venv's ``hyperkit`` and ``python`` first on PATH.

    When this interpreter has no ``hyperkit`` script beside it (not run from the venv), a shim
    runs ``python -m hyperkit`` with this interpreter instead.
    """
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "hyperkit").exists() or not (bin_dir / "python").exists():
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "hyperkit").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hyperkit "$@"\n')
        (bin_dir / "hyperkit").chmod(0o755)
        (bin_dir / "python").symlink_to(sys.executable)
    # The eval examples' embedding cache goes to the test's folder, never the user's ~/.cache.
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HYPERKIT_CACHE": str(tmp_path / "cache"),
    }


def test_the_docs_have_the_examples_this_test_runs():
    """Guards the extraction itself: a parsing slip must not turn this suite into no tests."""
    commands = [line for b in shell_blocks() for line in b.commands()]
    assert "hyperkit convert anime.safetensors anime-restored.pt" in [c.split("  #")[0].strip() for c in commands]
    assert any(c.startswith("hyperkit convert models/hypernetworks/ out/ --to safetensors") for c in commands)
    assert any(c.startswith("hyperkit demo --out") for c in commands)
    assert len(python_blocks()) >= 2
    skipped = [line for doc in DOCS for b in fenced_blocks(doc) for line in b.lines if line.strip().startswith("make ")]
    assert skipped, "the README's make lines are expected (and skipped)"


@pytest.mark.parametrize("doc", DOCS)
def test_docs_use_no_jq_and_link_nothing_outside_the_repository(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert not re.search(r"\bjq\b", text)
    for target in re.findall(r"\]\(([^)#]+)", text):
        if not re.match(r"[a-z]+://", target):
            path = (ROOT / doc).parent / target
            assert path.exists(), f"{doc} links {target}, which does not exist"
            assert ROOT in path.resolve().parents, f"{doc} links {target}, outside the repository"
    assert "../shared" not in text


@pytest.mark.parametrize("block", shell_blocks(), ids=lambda b: b.where)
def test_shell_example_runs(block, tmp_path):
    env = environment(tmp_path)
    folder = prepare(tmp_path / "work")
    for command in block.commands():
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{block.where}: `{command}` exited {done.returncode}\n{done.stderr}"


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.where)
def test_python_example_runs(block, tmp_path):
    folder = prepare(tmp_path / "work")
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(block.lines)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{block.where}: exited {done.returncode}\n{done.stderr}"
