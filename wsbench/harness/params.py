"""``key=value`` options typed by the signature that takes them: a method's constructor (``-p``),
its training settings (``-t``)."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from wsbench.contract import DatasetAdapter, Method

TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


class ParameterError(ValueError):
    """A ``key=value`` option that names no parameter or does not fit its type."""


def type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated annotations of ``function`` (``{}`` when they cannot be evaluated)."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # annotations naming what the module does not import at run time
        return {}


def coerce(text: str, hint: Any, default: Any, where: str) -> Any:
    """``text`` converted to ``hint`` (bool, int, float, str, tuples, literals, ``X | None``),
    or to the type of ``default`` when there is no hint; ``where`` names the option in errors."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if text.lower() in {"none", "null"} and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        return coerce(text, kinds[0] if len(kinds) == 1 else str, default, where)
    if origin is Literal:
        if text not in {str(a) for a in args}:
            raise ParameterError(f"{where}: {text!r} is not one of {', '.join(map(str, args))}")
        return next(a for a in args if str(a) == text)
    if origin is tuple:
        kind = args[0] if args else str
        return tuple(coerce(part.strip(), kind, None, where) for part in text.split(","))
    kind = hint if isinstance(hint, type) else type(default) if default is not None else str
    if kind is bool:
        if text.lower() not in TRUE | FALSE:
            raise ParameterError(f"{where}: {text!r} is not a boolean (true or false)")
        return text.lower() in TRUE
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ParameterError(f"{where}: {text!r} is not {kind.__name__}") from None
    return text


def parse_options(
    items: list[str],
    accepted: Mapping[str, inspect.Parameter],
    hints: Mapping[str, Any],
    owner: str,
    option: str,
) -> dict[str, Any]:
    """``key=value`` items as typed values for the ``accepted`` parameters of ``owner``; an
    unknown key names the closest one and lists them all."""
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ParameterError(f"{option} {item!r} is not of the form key=value")
        if name not in accepted:
            close = difflib.get_close_matches(name, list(accepted), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(accepted) or "none"
            raise ParameterError(f"{owner} has no {option} {name!r}.{hint} Accepted: {known}")
        where = f"{option} {name}"
        values[name] = coerce(text, hints.get(name), accepted[name].default, where)
    return values


def constructor_hints(cls: type) -> dict[str, Any]:
    """Evaluated annotations of ``cls.__init__`` and of the bases' it forwards to."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and klass is not object:
            hints.update(type_hints(vars(klass)["__init__"]))
    return hints


def method_params(cls: type[Method], items: list[str]) -> dict[str, Any]:
    """``-p key=value`` items typed for ``cls``'s constructor (:meth:`Method.parameters`)."""
    owner = f"method {cls.name or cls.__name__!r}"
    return parse_options(items, cls.parameters(), constructor_hints(cls), owner, "parameter")


def train_settings(cls: type[Method], items: list[str]) -> dict[str, Any]:
    """``-t key=value`` items typed for ``cls``'s training settings (:meth:`Method.train`)."""
    owner = f"method {cls.name or cls.__name__!r}"
    hints = type_hints(cls.train)
    return parse_options(items, cls.train_settings(), hints, owner, "training setting")


def dataset_options(cls: type[DatasetAdapter], items: list[str]) -> dict[str, Any]:
    """``-o key=value`` items typed for ``cls``'s declared options
    (:meth:`DatasetAdapter.option_parameters`)."""
    owner = f"dataset {cls.name or cls.__name__!r}"
    return parse_options(items, cls.option_parameters(), constructor_hints(cls), owner, "option")
