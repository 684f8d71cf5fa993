"""The registries of components a config names — physics, priors, schemes — filled with the built-in
ones, with those of installed packages (entry-point group ``retune.plugins``) and with the plugins a
config lists (``plugins: [my_prior.py, package.module]``).

Every lookup of a component by name goes through here, so that the built-in modules and the installed
plugins are imported (registered) first; nothing else branches on a component's name. A config's
plugin files are relative to the folder of the YAML file that lists them and are imported only when
the caller trusts the config (``--trust-code``); installed plugins are trusted as any installed code.
The engine (and torch) is imported on the first lookup, not with this module.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .core.physics import Physics
    from .core.prior import Prior
    from .core.scheme import Scheme

ENTRY_POINTS = "retune.plugins"
BUILTIN = ("retune_cli.core.operators", "retune_cli.core.wavelet_prior", "retune_cli.core.schemes",
           "retune_cli.core.composed", "retune_cli.denoisers", "retune_cli.core.tv", "retune_cli.core.wavelet_union",
           "retune_cli.core.filters")
_loaded = False
_plugins: set[str] = set()  # the config plugins imported in this process (resolved specs)


def load_components() -> None:
    """Import the built-in components and the installed plugins' (once); an installed plugin that fails
    to import is an :class:`InputError` naming its entry point and where it failed."""
    global _loaded
    if _loaded:
        return
    from .core.custom import import_user_module

    for module in BUILTIN:
        importlib.import_module(module)
    for entry in entry_points(group=ENTRY_POINTS):
        try:
            import_user_module(entry.module, f"entry point {entry.name}")
            entry.load()
        except Exception as e:  # the plugin's own code: any error, reported in one line
            where = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            raise InputError(f"installed plugin {entry.name} ({entry.value}, entry point group {ENTRY_POINTS}) "
                             f"failed to import: {where}") from e
    _loaded = True


def is_file_plugin(spec: str) -> bool:
    """A plugin is a ``.py`` file (or a path) or a dotted module name."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def plugin_specs(value: object, source: str, folder: Path | None = None, trust_code: bool = False) -> list[str]:
    """A config's ``plugins`` list checked, refused without ``trust_code`` (nothing imported), its files
    made absolute (relative to ``folder``, the YAML file's; the working folder when None) and required to
    exist."""
    if value is None or value == []:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(f"{source}: plugins must be a list of .py files or module names, e.g. plugins: [my_prior.py]")
    if not trust_code:
        raise InputError(f"{source}: plugin {value[0]} runs Python code; pass --trust-code (trust_code=True in "
                         "Python) if you trust it")
    specs = []
    for spec in value:
        if not is_file_plugin(spec):
            if not all(part.isidentifier() for part in spec.split(".")):
                raise InputError(f"{source}: plugin {spec!r} is neither a .py file nor a module name")
            specs.append(spec)
            continue
        path = Path(spec).expanduser()
        path = (path if path.is_absolute() or folder is None else folder / path).resolve()
        if not path.is_file():
            raise InputError(f"{source}: plugin {spec} is missing: {path} is not a file")
        specs.append(str(path))
    return specs


def load_plugins(specs: list[str]) -> None:
    """Import a config's plugins (once per process), registering their components; an error in their
    code is an :class:`InputError` naming the file, the line and the function."""
    from .core.custom import UserCodeError, import_user_module

    load_components()
    for spec in specs:
        if spec in _plugins:
            continue
        try:
            import_user_module(spec, "plugins")
        except UserCodeError as e:
            raise InputError(f"plugin {spec} failed to import: {e}") from e
        except ValueError as e:
            raise InputError(str(e)) from None
        _plugins.add(spec)


def physics_class(name: str) -> type[Physics]:
    from .core.physics import PHYSICS

    load_components()
    if name not in PHYSICS:
        raise ValueError(f"physics.name must be one of {', '.join(sorted(PHYSICS))}, not {name!r}")
    return PHYSICS[name]


def prior_class(name: str) -> type[Prior]:
    from .core.prior import PRIORS

    load_components()
    if name not in PRIORS:
        raise ValueError(f"model.prior must be one of {', '.join(sorted(PRIORS))}, not {name!r}")
    return PRIORS[name]


def composed_class(scheme: str, prior: str, physics: str | None = None) -> type[Scheme]:
    """The scheme class for ``model.scheme`` × ``model.prior`` (× ``physics.name``), or ``ValueError``."""
    from .core.scheme import scheme_class

    return scheme_class(scheme, prior_class(prior), physics_class(physics) if physics else None)


def scheme_names() -> list[str]:
    from .core.scheme import SCHEMES, SPECIALIZED

    load_components()
    return sorted(set(SCHEMES) | {name for name, _ in SPECIALIZED})


def prior_names() -> list[str]:
    from .core.prior import PRIORS

    load_components()
    return sorted(PRIORS)
