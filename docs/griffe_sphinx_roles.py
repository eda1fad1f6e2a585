"""Griffe extension for the docs build: turn the Sphinx roles in kernelspace's docstrings into Markdown.

``:func:`load_model``` and the like become mkdocstrings cross-references to the object they name inside
kernelspace; roles that name anything else (``torch.Generator``) become plain code. The package's
docstrings are left as they are; only the copy that mkdocstrings renders is rewritten.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|meth|class|attr|mod|data|exc|obj):`(~?)([\w.]+)`")
_PACKAGE = "kernelspace"


def _target(obj: griffe.Object, name: str) -> str | None:
    if name == _PACKAGE or name.startswith(_PACKAGE + "."):
        return name
    first, _, rest = name.partition(".")
    cls = obj if obj.is_class else obj.parent
    try:
        if cls is not None and cls.is_class and first in cls.inherited_members:  # resolve() skips inherited ones
            path = cls.inherited_members[first].target_path
        else:
            path = obj.resolve(first)
    except griffe.NameResolutionError:
        return None
    if not (path == _PACKAGE or path.startswith(_PACKAGE + ".")):
        return None
    return f"{path}.{rest}" if rest else path


def _rewrite(obj: griffe.Object) -> None:
    def replace(match: re.Match) -> str:
        short, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if short else name
        target = _target(obj, name)
        return f"[`{shown}`][{target}]" if target else f"`{shown}`"

    if obj.docstring is not None:
        obj.docstring.value = _ROLE.sub(replace, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _rewrite(pkg)


if not hasattr(griffe.Extension, "on_package"):  # older griffe releases call the same hook on_package_loaded
    SphinxRoles.on_package_loaded = SphinxRoles.on_package  # type: ignore[attr-defined]
