"""Developer-mode Reload for LesionSeg modules: forget the shared packages so they are read from source again.

Slicer's Reload (``slicer.util.reloadScriptedModule``) executes only the module's own file again; the
packages it imports stay in ``sys.modules``, so an edit to LesionSegLib or the engine would not be seen
until Slicer restarts. Qt-free, so it runs and is tested without the app.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import MutableMapping, Sequence
from types import ModuleType

RELOADED_PACKAGES = ("LesionSegLib", "lesionseg")


def forget_packages(
    packages: Sequence[str] = RELOADED_PACKAGES, modules: MutableMapping[str, ModuleType] | None = None
) -> list[str]:
    """Remove ``packages`` and all their submodules from ``modules`` (``sys.modules``); returns the names removed.

    The next ``import`` reads them from source. Objects made before (a running job, another LesionSeg
    module's open panel) keep the code they were made with until they are made again.
    """
    modules = sys.modules if modules is None else modules
    removed = sorted(name for name in modules if any(name == p or name.startswith(p + ".") for p in packages))
    for name in removed:
        del modules[name]
    importlib.invalidate_caches()
    return removed
