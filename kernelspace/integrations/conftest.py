"""pytest: each module here imports its library at import time, so its doctests are collected only where that
library is installed (the integration environment, ``bash .ci/run --integrations``); there, with
KERNELSPACE_REQUIRE_INTEGRATIONS=1, a missing library is an import error, never a skip."""

import importlib.util
import os

_REQUIRED = os.environ.get("KERNELSPACE_REQUIRE_INTEGRATIONS") == "1"
collect_ignore = [
    f"{library}.py"
    for library in ("torchvision", "albumentations", "deepinv")
    if not _REQUIRED and importlib.util.find_spec(library) is None
]
