"""The runnable examples of docs/integrations/*.md run, page by page, in a folder holding a real photo as
``photo.png`` (the name the examples use)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ..conftest import DATA, need
from .conftest import library

DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations"
PAGES = {"torchvision.md": "torchvision", "albumentations.md": "albumentations", "deepinv.md": "deepinv"}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library(PAGES[page])
    photo = min(need(DATA / "train" / "cbsd68").iterdir())
    shutil.copyfile(photo, tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no python example"
    namespace: dict = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page} example {i + 1}", "exec"), namespace)
