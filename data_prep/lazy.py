"""Package names that resolve on first use (PEP 562), so importing a package stays cheap:
numpy, torch or MLflow load only with the module that needs them.

    __getattr__, __dir__ = lazy_exports(__name__, {"load_shards": "dataset", ...}, globals())

Here because every package of the project but `components` may import `data_prep` (which
imports nothing else of the project); `components` keeps a copy of these few lines for that
reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str], namespace: MutableMapping[str, Any],
                 extra: Iterable[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`: `exports` maps a public name to the submodule
    (relative, dotted) that defines it; a resolved name is cached in `namespace` (the
    package's globals), so later lookups skip `__getattr__`."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*exports, *extra})

    return getattr_, dir_
