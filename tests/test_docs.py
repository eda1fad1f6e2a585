"""The documentation site builds with ``mkdocs build --strict`` (no warnings, every cross-reference resolved)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner; not a build warning
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for anchor in ("kernelspace.load_model", "kernelspace.models.KernelSpaceModel.extract_kernel",
                   "kernelspace.models.BKSNet", "kernelspace.io.ImageSpec", "kernelspace.hub.ModelNotFoundError"):
        assert f'id="{anchor}"' in api, anchor
    assert not re.search(r":(func|meth|class):<code>", api), "a Sphinx role was rendered literally"
    assert "Foundation: published network speed" in (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
