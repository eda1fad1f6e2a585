"""Every code block of README.md and docs/**/*.md runs as written (issue 15.4).

Each page is one test: its blocks run in order, in a fresh folder, the Python blocks in one namespace (a reader
runs them one after another), the shell blocks with ``bash -e`` there. A block that raises or exits non-zero
fails the test, naming the page and the block's line. Fence languages: ``python``; ``bash``/``sh``/``shell`` (the
whole block is a script); ``console`` (lines starting with ``$ `` are commands, ``\\`` continues one; the lines
after a command are its output, and the command must print them, with every word holding a digit (versions,
thread counts) left out of the comparison); ``text`` and data formats are not run. An unlabelled fence fails.

HTML comments right before a fence (blank lines may come between) say how a block is run:

- ``<!-- no-test: REASON -->``: not run (a download, an install, a GPU, hours of training); the reason is required.
- ``<!-- test-replace: OLD => NEW -->``: run with ``OLD`` replaced by ``NEW`` (for instance a few training steps
  instead of the default 1000); ``OLD`` must occur in the block.
- ``<!-- test-setup: CODE -->``: Python run in the page's namespace before the block, for names the page's prose
  defines ("here ``sharp`` and ``blurry`` are tensors").

Inputs: the folder holds small real images, cropped at run time from ../shared/data (the test skips without
it), under the names the pages use: ``sharp.png``/``blurry.png`` (a real GoPro pair, 96x128), ``other_sharp.png``,
``photo.png``, ``pair/{sharp,blurry}.png``, ``blurry.jpg``, ``phone.jpg`` (a portrait JPEG with EXIF
orientation), ``deep.png`` (16-bit RGB), ``photos/`` (two blurry images), ``PHOTOS/`` (four clean photos),
``GOPRO/`` and ``GOPRO_Large/train/`` (two GoPro pairs each) and ``GOPRO_wVAE.pth``: a small, randomly
initialised ``BKSNet`` with the VAE head saved as a published checkpoint (the authors' 460 MB file is a
download), so the examples exercise the published-checkpoint loader. A script made only of ``kernelspace ...`` lines
runs them in this process through ``kernelspace.cli:main`` (what the console script calls; a new process would
spend 2-3 s importing torch for each); anything else runs in ``bash``, where ``kernelspace`` and ``python`` run
this tree's code with this interpreter. CUDA is hidden (``CUDA_VISIBLE_DEVICES=""``, so output
shown for a CPU machine matches) and the Hub is offline (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import DATA, need

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
# docs/integrations/*.md need torchvision, albumentations and deepinv: tests/integration/test_docs_examples.py
# runs their Python blocks in the integration environment; here their other blocks must still be marked.
DELEGATED_PYTHON = "docs/integrations/"
SHELL = {"bash", "sh", "shell"}
NOT_RUN = {"text", "json", "yaml", "toml", "ini"}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[^\s`]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL
)
COMMENT = re.compile(r"<!--(?P<text>(?:(?!<!--).)*?)-->\s*\Z", re.DOTALL)
SHELL_TIMEOUT_S = 120


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    no_test: str | None = None
    setup: list[str] = field(default_factory=list)
    replace: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line} ({self.lang} block)"


def blocks_of(page: str) -> list[Block]:
    """The fenced blocks of ``page`` with the markers in the HTML comments right before each."""
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        block = Block(page, text.count("\n", 0, match.start()) + 1, match["lang"],
                      textwrap.dedent(match["body"]))
        before = text[: match.start()]
        while (comment := COMMENT.search(before)) is not None:
            kind, _, value = comment["text"].strip().partition(":")
            value = value.strip()
            if kind == "no-test":
                assert value, f"{block.where}: `no-test:` needs a reason"
                block.no_test = value
            elif kind == "test-setup":
                block.setup.insert(0, textwrap.dedent(value))
            elif kind == "test-replace":
                old, sep, new = value.partition("=>")
                assert sep, f"{block.where}: `test-replace: OLD => NEW` expected, got {value!r}"
                block.replace.insert(0, (old.strip(), new.strip()))
            else:
                break  # an ordinary comment: markers stop here
            before = before[: comment.start()]
        blocks.append(block)
    return blocks


def _crop(path: Path, top: int, left: int, height: int, width: int) -> Image.Image:
    return Image.open(path).convert("RGB").crop((left, top, left + width, top + height))


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name (see the module docstring), made once and copied for each page."""
    root = tmp_path_factory.mktemp("docs_inputs")
    gopro = need(DATA / "eval" / "gopro_pairs6")
    photos = sorted(need(DATA / "train" / "cbsd68").iterdir())
    pair = {kind: _crop(gopro / kind / "00.png", 300, 560, 96, 128) for kind in ("sharp", "blur")}
    for folder in (root, root / "pair"):
        folder.mkdir(exist_ok=True)
        pair["sharp"].save(folder / "sharp.png")
        pair["blur"].save(folder / "blurry.png")
    _crop(photos[0], 100, 150, 96, 112).save(root / "other_sharp.png")
    _crop(photos[1], 100, 150, 80, 96).save(root / "photo.png")
    pair["blur"].save(root / "blurry.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view, so the photo is portrait when loaded
    pair["blur"].crop((0, 0, 96, 64)).save(root / "phone.jpg", quality=95, exif=exif)
    deep = (np.asarray(pair["blur"].crop((0, 0, 64, 64)), dtype=np.uint16) * 257)
    from kernelspace.io import save_image

    save_image(deep, root / "deep.png")
    (root / "photos").mkdir()
    for i in (1, 2):
        _crop(gopro / "blur" / f"0{i}.png", 300, 560, 64, 80).save(root / "photos" / f"0{i}.png")
    (root / "PHOTOS").mkdir()
    for i, path in enumerate(photos[:4]):
        _crop(path, 0, 0, 160, 160).save(root / "PHOTOS" / f"{i}.png")
    for dataset in (root / "GOPRO", root / "GOPRO_Large" / "train"):
        for i in (0, 1):
            for kind in ("sharp", "blur"):
                (dataset / f"SEQ{i}" / kind).mkdir(parents=True, exist_ok=True)
                _crop(gopro / kind / f"0{i}.png", 300, 560, 64, 96).save(dataset / f"SEQ{i}" / kind / "000.png")
    from kernelspace.models import BKSNet

    torch.manual_seed(0)
    torch.save(BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=16, n_blocks=1, use_vae=True).state_dict(),
               root / "GOPRO_wVAE.pth")
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    for name, command in (("kernelspace", f'"{sys.executable}" -m kernelspace.cli'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {command} \"$@\"\n")
        (bin_dir / name).chmod(0o755)
    return root


def _shell_env(inputs: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{inputs / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
    }


def _masked(lines: list[str]) -> list[str]:
    """Output lines with each word holding a digit (versions, counts, times) replaced by ``#``."""
    return [" ".join("#" if re.search(r"\d", word) else word for word in line.split()) for line in lines]


def console_commands(code: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of a console block."""
    commands: list[tuple[str, list[str]]] = []
    lines = iter(code.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + " " + next(lines)
            commands.append((command, []))
        elif line.strip():
            assert commands, f"output before any `$ ` command: {line!r}"
            commands[-1][1].append(line)
    return commands


def _cli_argv(script: str) -> list[list[str]] | None:
    """The argument lists of a script made only of plain ``kernelspace ...`` lines (comments allowed); ``None``
    for anything else (other programs, variables, ``&&``, pipes, redirections)."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            return None
        if not words:
            continue
        if words[0] != "kernelspace" or any(w in {"&&", "||", "|", ";", ">", ">>", "<", "&"} for w in words) \
                or "$" in line or "=" in words[0]:
            return None
        commands.append(words[1:])
    return commands


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``kernelspace ARGV`` in this process, as the console script runs it (``kernelspace.cli:main``)."""
    from kernelspace.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:  # --help, --version and argument errors
            status = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    return status, out.getvalue(), err.getvalue()


def run_shell(block: Block, code: str, cwd: Path, env: dict[str, str]) -> None:
    scripts = [(code, [])] if block.lang in SHELL else console_commands(code)
    for script, expected in scripts:
        argvs = _cli_argv(script)
        if argvs is not None:
            results = [_run_cli(argv) for argv in argvs]
        else:
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=SHELL_TIMEOUT_S)
            results = [(done.returncode, done.stdout, done.stderr)]
        for status, stdout, stderr in results:
            assert status == 0, f"{block.where}: `{script}` exited {status}\n{stdout}\n{stderr}"
        if expected:
            shown, printed = _masked(expected), _masked(results[-1][1].splitlines())
            if torch.cuda.is_available():  # the page shows a machine without a GPU
                shown, printed = ([line for line in lines if not line.startswith("device:")]
                                  for lines in (shown, printed))
            assert printed == shown, (
                f"{block.where}: `{script}` printed\n{results[-1][1]}\nbut the page shows\n" + "\n".join(expected)
            )


def test_every_block_is_runnable_or_marked() -> None:
    """The collection itself: languages known, markers well-formed, replacements found (fast, no running)."""
    problems = []
    for page in PAGES:
        for block in blocks_of(page):
            if block.lang not in {"python", "console"} | SHELL | NOT_RUN:
                problems.append(f"{block.where}: unknown fence language {block.lang!r} (python, bash, console, text)")
            for old, _ in block.replace:
                if old not in block.code:
                    problems.append(f"{block.where}: test-replace {old!r} does not occur in the block")
    assert not problems, "\n".join(problems)
    assert any(b.no_test for b in blocks_of("README.md")), "the marker parser found no marked README block"


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str, inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runnable = [b for b in blocks_of(page) if b.lang not in NOT_RUN and not b.no_test
                and not (b.lang == "python" and page.startswith(DELEGATED_PYTHON))]
    if not runnable:
        pytest.skip(f"{page}: no block to run here (none, all marked no-test, or run by the integration tests)")
    work = tmp_path / "work"
    shutil.copytree(inputs, work)
    monkeypatch.chdir(work)
    env = _shell_env(inputs)
    namespace: dict = {"__name__": f"docs_{Path(page).stem}"}
    for block in runnable:
        code = block.code
        for old, new in block.replace:
            code = code.replace(old, new)
        for setup in block.setup:
            exec(compile(setup, f"{block.where} test-setup", "exec"), namespace)
        if block.lang == "python":
            exec(compile(code, block.where, "exec"), namespace)
        else:
            run_shell(block, code, work, env)
