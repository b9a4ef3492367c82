"""Method and dataset plugins, found through entry points without importing them.

Plugins are declared in a distribution's metadata under the entry-point groups
``wsbench.methods``, ``wsbench.datasets`` and ``wsbench.commands`` (wsbench's own built-ins
included). A plugin that
is not installed can be named as ``module:Class``. Listing reads metadata only; a plugin's code
is imported when it is used, and an import failure is reported for that plugin alone.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from wsbench.contract import DatasetAdapter, Method

METHODS_GROUP = "wsbench.methods"
DATASETS_GROUP = "wsbench.datasets"
COMMANDS_GROUP = "wsbench.commands"
"""Typer apps mounted as ``wsbench <name>`` (e.g. ``wsbench phantom`` from the phantom dataset)."""


class PluginError(Exception):
    """A plugin cannot be found, loaded or is declared twice."""


@dataclass(frozen=True)
class PluginInfo:
    """An entry point as declared: name, ``module:Class`` target and providing distribution."""

    name: str
    target: str
    distribution: str


def declared(group: str) -> dict[str, PluginInfo]:
    """Plugins declared in ``group``, by name; a name declared by two distributions is an error."""
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        info = PluginInfo(ep.name, ep.value, dist)
        previous = found.get(ep.name)
        if previous is not None and previous != info:
            raise PluginError(
                f"{group} plugin {ep.name!r} is declared twice: by {previous.distribution} "
                f"({previous.target}) and by {info.distribution} ({info.target}); "
                "uninstall one of them or rename its entry point"
            )
        found[ep.name] = info
    return dict(sorted(found.items()))


def import_target(target: str) -> type:
    """Import ``module:Class``; failures become a :class:`PluginError` naming the target."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise PluginError(f"plugin target {target!r} is not of the form module:Class")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure belongs to that plugin only
        raise PluginError(f"plugin {target} failed to import: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PluginError(f"plugin module {module_name} has no attribute {attr!r}") from None


def _resolve(group: str, name: str, base: type) -> type:
    """The plugin class for ``name`` (an entry-point name or ``module:Class``)."""
    if ":" in name:
        cls = import_target(name)
    else:
        plugins = declared(group)
        if name not in plugins:
            kind = group.rsplit(".", 1)[-1]
            close = difflib.get_close_matches(name, list(plugins), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(plugins) or "none"
            raise PluginError(f"unknown {kind[:-1]} {name!r}.{hint} Known {kind}: {known}.")
        cls = import_target(plugins[name].target)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"plugin {name!r} is {cls!r}, not a subclass of {base.__qualname__}")
    return cls


def load_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (or given as ``module:Class``)."""
    return _resolve(METHODS_GROUP, name, Method)


def load_dataset(name: str) -> type[DatasetAdapter]:
    """The dataset adapter class registered as ``name`` (or given as ``module:Class``)."""
    return _resolve(DATASETS_GROUP, name, DatasetAdapter)
