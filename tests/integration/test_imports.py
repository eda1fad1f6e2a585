"""`import kernelspace` never imports the integrations' libraries, even where they are installed; only
`kernelspace.integrations.<library>` does, and a missing library names the extra that installs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import LIBRARIES, library


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(set(sys.modules) & {set(LIBRARIES)!r})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(result.stdout.split())


def test_the_package_imports_none_of_the_libraries() -> None:
    for name in LIBRARIES:
        library(name)  # installed here, so their absence below is the package's doing
    assert imported_after("import kernelspace, kernelspace.integrations") == set()
    assert imported_after("import kernelspace.integrations.albumentations") == {"albumentations"}


def test_a_missing_library_names_its_extra() -> None:
    from kernelspace.integrations import require

    with pytest.raises(ImportError, match=r'pip install "kernelspace\[nosuchextra\]"'):
        require("no_such_library_here", "nosuchextra")
