"""The integration tests: torchvision v2, albumentations and deepinv, in their own environment.

They need torch 2.14.1 + torchvision 0.29.1, albumentations and deepinv, which the main (torch 2.13.0) suite does
not have: there they are skipped, with a line in pytest's summary saying how to run them. ``bash .ci/run``
(``--integrations`` for them alone) builds that environment and runs them with
KERNELSPACE_REQUIRE_INTEGRATIONS=1, which makes a missing library a failure instead of a skip.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from ..test_augment import crops  # noqa: F401 - the fixture (eight crops of a real photo), for these tests too

REQUIRED = os.environ.get("KERNELSPACE_REQUIRE_INTEGRATIONS") == "1"
LIBRARIES = ("torchvision", "albumentations", "deepinv")
MISSING = [name for name in LIBRARIES if importlib.util.find_spec(name) is None]
HOW = "run them in the integration environment with `bash .ci/run --integrations` (README, 'Integrations')"
HERE = Path(__file__).resolve().parent
# These tests, and the doctests of the integration modules (their examples need the libraries too).
MARKED = (HERE, HERE.parents[1] / "kernelspace" / "integrations")


def library(name: str) -> ModuleType:
    """Import ``name`` for a test module: skip the module without it, or fail where the environment must have it."""
    if name in MISSING and not REQUIRED:
        pytest.skip(f"integration test: needs {name}, not installed here; {HOW}", allow_module_level=True)
    return importlib.import_module(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(folder in Path(item.path).resolve().parents for folder in MARKED):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter) -> None:
    if MISSING and not REQUIRED:
        terminalreporter.write_line(
            f"integration tests skipped: {', '.join(MISSING)} not installed in this environment; {HOW}"
        )
