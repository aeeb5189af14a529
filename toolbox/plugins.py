"""Components from the user's own code: modules or .py files imported before the registries
are read (--plugins), and installed packages that name a module in the ``toolbox.plugins``
entry-point group, which are imported with no flag. Importing a plugin registers its
components, as importing the toolbox's own modules does."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

from toolbox.errors import UserError

ENTRY_POINT_GROUP = "toolbox.plugins"
_installed_loaded = False


def plugin_name(plugin: str) -> str:
    """How a plugin is recorded: a .py file by its absolute path (so that a resume or
    test.py run from another directory finds it), a module by its dotted name."""
    if plugin.endswith(".py"):
        return str(Path(plugin).expanduser().resolve())
    return plugin


def load_plugins(plugins: Iterable[str], source: str = "--plugins") -> None:
    """Import each plugin (once: a module already imported is left as it is)."""
    for plugin in plugins:
        try:
            if plugin.endswith(".py"):
                _import_file(Path(plugin).expanduser())
            else:
                importlib.import_module(plugin)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - the plugin's own code may raise anything
            raise UserError(
                f"{source} {plugin}: importing it failed with {type(error).__name__}: {error}"
                f"{_where(error)}. Fix the plugin, or give an importable module (my_project."
                "models) or the path of a .py file."
            ) from None


def load_installed_plugins() -> None:
    """Import the modules that installed packages list under ``toolbox.plugins``."""
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:  # noqa: BLE001 - a broken package must not pass silently
            raise UserError(
                f"the installed plugin {entry_point.name} ({entry_point.value}, entry point "
                f"group {ENTRY_POINT_GROUP}) failed to import: {type(error).__name__}: "
                f"{error}{_where(error)}. Fix or uninstall the package that provides it."
            ) from None


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    resolved = path.resolve()
    # One module per file, named after its path, so the same file is imported once however
    # it is spelled, and two plugins called models.py do not collide.
    name = "toolbox_plugin_" + "".join(c if c.isalnum() else "_" for c in str(resolved))
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _where(error: Exception) -> str:
    """`` (at FILE:LINE)``: the innermost frame of the error, where the user looks first."""
    frames = traceback.extract_tb(error.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
