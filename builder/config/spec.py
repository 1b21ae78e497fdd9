"""The one check of a config against its declarations.

Every key is declared once, in a dataclass field: its type, its default, its accepted range or choices and a
one-line meaning, as data beside the type (``Annotated[int, Gt(0), doc("...")]``; the vocabulary is
``annotated_types``' plus :class:`components.registry.OneOf`). Hydra composes those dataclasses (OmegaConf checks
the types and refuses an unknown key); :func:`check` walks the composed values against the same declarations and
returns the checked object, which is what the builder reads:

* every field's type (a plain dict from a checkpoint or a Hugging Face import has not been through OmegaConf);
* every declared range and choice; a float is finite and an integer fits 64 bits, whatever the declaration;
* the rules between keys that a range cannot state: a dataclass's ``problems(context)`` yields
  ``(field, value, accepted)``;
* a component field (``model.attention``) is checked against the settings of the component its ``name`` picks.

The first failure is a :class:`~builder.errors.ConfigError` naming the dotted key, the value and what is accepted,
written from the declaration. :func:`declared` lists the declarations (the help page, the README's key tables and
the tests' generated bad values read them).

Imports neither Hydra nor OmegaConf: loading a model from a checkpoint's plain dict goes through here too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from annotated_types import DocInfo, Ge, Gt, Interval, Le, Len, Lt, MaxLen, MinLen

from components.registry import OneOf, RegistryError, closest

from ..errors import ConfigError

MISSING = "???"  # OmegaConf's mark of a required value nobody set
INT64 = 2 ** 63


@dataclasses.dataclass(frozen=True)
class Component:
    """Field metadata: the field holds the settings of a registered component of ``kind``, picked by its ``name``."""

    kind: str


@dataclasses.dataclass(frozen=True)
class Declared:
    """One declared key: its dotted name, bare type, whether null is accepted, default, constraints, meaning."""

    key: str
    type: Any
    optional: bool
    default: Any
    constraints: tuple
    meaning: str

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING or self.default == MISSING

    def phrase(self) -> str:
        """What the key accepts, in words: the type, the range or choices, null."""
        return _phrase(self.type, self.constraints, self.optional)

    def accepted(self) -> str:
        """:meth:`phrase` and the key's meaning."""
        return self.phrase() + (f" ({self.meaning})" if self.meaning else "")


def _unwrap(annotation) -> tuple[Any, bool, tuple, str]:
    """(bare type, null accepted, constraints, meaning) of a field's annotation."""
    constraints, meaning = [], ""
    optional = False
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            base, *meta = typing.get_args(annotation)
            for m in meta:
                if isinstance(m, DocInfo):
                    meaning = m.documentation
                elif isinstance(m, Interval):
                    constraints += [c for c in (Gt(m.gt) if m.gt is not None else None,
                                                Ge(m.ge) if m.ge is not None else None,
                                                Lt(m.lt) if m.lt is not None else None,
                                                Le(m.le) if m.le is not None else None) if c is not None]
                elif isinstance(m, Len):
                    constraints += [MinLen(m.min_length)] + ([MaxLen(m.max_length)] if m.max_length is not None else [])
                else:
                    constraints.append(m)
            annotation = base
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation, optional, tuple(constraints), meaning


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def declared(cls, prefix: str = "") -> list[Declared]:
    """The declarations of dataclass ``cls``'s fields (nested dataclasses flattened: ``train.lr``)."""
    out = []
    for f in dataclasses.fields(cls):
        bare, optional, constraints, meaning = _unwrap(_hints(cls)[f.name])
        key = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(bare):
            out += declared(bare, key + ".")
            continue
        out.append(Declared(key, bare, optional, default, constraints, meaning))
    return out


# --------------------------------------------------------------------------------------------------
# what a declaration accepts, in words
# --------------------------------------------------------------------------------------------------

_NOUNS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _bound_text(c) -> str | None:
    for cls, sign in ((Gt, ">"), (Ge, ">="), (Lt, "<"), (Le, "<=")):
        if isinstance(c, cls):
            return f"{sign} {getattr(c, dataclasses.fields(c)[0].name)}"
    return None


def _phrase(bare, constraints, optional: bool) -> str:
    choices = next((c.choices for c in constraints if isinstance(c, OneOf)), None)
    if choices is not None:
        text = f"one of {', '.join(dict.fromkeys(map(str, choices)))}"
    elif typing.get_origin(bare) in (list, tuple):
        (item,) = typing.get_args(bare)[:1] or (Any,)
        inner_bare, _, inner_constraints, _ = _unwrap(item)
        sizes = [c for c in constraints if isinstance(c, (MinLen, MaxLen))]
        low = next((c.min_length for c in sizes if isinstance(c, MinLen)), 0)
        high = next((c.max_length for c in sizes if isinstance(c, MaxLen)), None)
        count = "" if (low, high) == (0, None) else f"{low} " if low == high else \
            f"at least {low} " if high is None else f"{low} to {high} " if low else f"at most {high} "
        item_text = _phrase(inner_bare, inner_constraints, False)
        for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                          ("a list of", "lists of")):
            item_text = item_text.replace(one, many)
        text = f"a list of {count}{item_text}"
    else:
        text = _NOUNS.get(bare, "a value" if bare is Any else getattr(bare, "__name__", str(bare)))
    bounds = [b for b in map(_bound_text, constraints) if b]
    if bounds:
        text += " " + " and ".join(bounds)
    return text + (", or null" if optional else "")


# --------------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------------


def _type_ok(bare, value) -> bool:
    if bare is Any:
        return True
    if bare is bool:
        return isinstance(value, bool)
    if bare is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if bare is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if bare is str:
        return isinstance(value, str)
    origin = typing.get_origin(bare)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or bare is dict:
        return isinstance(value, Mapping)
    return True


def _satisfies(c, value) -> bool:
    if isinstance(c, OneOf):
        return value in c.choices
    if isinstance(c, Gt):
        return value > c.gt
    if isinstance(c, Ge):
        return value >= c.ge
    if isinstance(c, Lt):
        return value < c.lt
    if isinstance(c, Le):
        return value <= c.le
    if isinstance(c, MinLen):
        return len(value) >= c.min_length
    if isinstance(c, MaxLen):
        return len(value) <= c.max_length
    return True


def _value(bare, optional: bool, constraints: tuple, value, key: str, accepted) -> Any:
    """``value`` checked against one declaration (the type, then each constraint); returns it as the type holds
    it (an integer given for a float becomes a float). ``accepted()``: the words for a refusal."""
    if value is None:
        if optional or bare is Any:
            return None
        raise ConfigError(key, value, accepted())
    given = value  # what the person wrote, shown in a refusal
    if not _type_ok(bare, value):
        raise ConfigError(key, given, accepted())
    if bare is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(key, given, accepted() + "; a finite number")
    if bare is int and not -INT64 <= value < INT64:
        raise ConfigError(key, given, accepted() + "; it must fit in 64 bits")
    for c in constraints:
        if not _satisfies(c, value):
            near = closest(str(value), [str(x) for x in c.choices]) if isinstance(c, OneOf) else ""
            raise ConfigError(key, given, accepted() + near)
    if typing.get_origin(bare) in (list, tuple):
        (item,) = typing.get_args(bare)[:1] or (Any,)
        inner = _unwrap(item)
        return [_value(inner[0], inner[1], inner[2], v, f"{key}[{i}]", accepted) for i, v in enumerate(value)]
    return value


def _fields_of(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def unknown_key(section: str, key: str, value, accepted: list[str], more: str = "") -> ConfigError:
    """The refusal of a key ``section`` does not declare, with the closest declared one."""
    where = f"a key of {section}" if section else "a top-level key or config group"
    full = f"{section}.{key}" if section else key
    return ConfigError(full, value, f"{where}{closest(str(key), accepted)}; accepted: {', '.join(accepted)}{more}")


def component_settings(kind: str, data, key: str) -> type:
    """The settings dataclass of the component that ``data`` (a component's settings, with ``name``) picks."""
    import components  # (reason: the registry's entry points load on first use)

    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise ConfigError(key, data, f"a component choice such as model/{kind}={components.names(kind)[0]}; "
                          f"registered: {', '.join(components.names(kind))}")
    try:
        return components.registry.settings_class(kind, data["name"])
    except RegistryError as err:
        raise ConfigError(f"model/{kind}", data["name"], str(err)) from None


def check(cls, data, key: str = "", context: Any = None, skip: tuple = ()):
    """``data`` (a mapping: a composed config section as plain containers, or a checkpoint's dict) checked against
    dataclass ``cls``'s declarations; returns the ``cls`` instance. Keys left out take their declared defaults; a
    required key left out, an unknown key, a wrong type, a value out of range, or a broken rule between keys is a
    ConfigError naming ``key.<field>``. ``context``: what ``problems`` rules between keys see besides the object
    (the model, for a component's settings). ``skip``: fields left unchecked (None in the object)."""
    prefix = f"{key}." if key else ""
    if not isinstance(data, Mapping):
        raise ConfigError(key or "config", data, f"a mapping of the keys of {key or 'the config'}")
    names = _fields_of(cls)
    for k in data:
        if k not in names:
            raise unknown_key(key, k, data[k], names)
    values, components_ = {}, []
    for f in dataclasses.fields(cls):
        full = prefix + f.name
        bare, optional, constraints, meaning = _unwrap(_hints(cls)[f.name])
        if f.name in skip:
            values[f.name] = None
            continue
        if f.name in data:
            value = data[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = MISSING
        component = next((c for c in constraints if isinstance(c, Component)), None)
        if value == MISSING and optional and not component:
            values[f.name] = MISSING  # a value the config requires and nobody set: the object's rules name it
            continue
        if value == MISSING:
            raise ConfigError(full, None, "a value: this key has no default "
                              f"({Declared(full, bare, optional, None, constraints, meaning).accepted()})")
        if component is not None:  # checked once the rest of the object is known (its rules see the model)
            components_.append((f.name, component))
            values[f.name] = None
            continue
        if dataclasses.is_dataclass(bare) and isinstance(bare, type):
            values[f.name] = value if isinstance(value, bare) else check(bare, value, full)
            continue
        values[f.name] = _value(bare, optional, constraints, value, full,
                                lambda d=Declared(full, bare, optional, None, constraints, meaning): d.accepted())
    obj = cls(**values)
    for name, component in components_:
        settings = data.get(name, MISSING)
        settings_cls = component_settings(component.kind, settings, prefix + name)
        setattr(obj, name, check(settings_cls, settings, prefix + name, context=obj))
    for field_name, value, accepted in obj.problems(context) if hasattr(obj, "problems") else ():
        raise ConfigError(prefix + field_name, value, accepted)
    return obj

