"""One small registry: component classes by kind and name.

    @register("attention", "multi_head")
    class MultiHeadAttention(nn.Module): ...

Third-party packages register through the entry-point group ``hydraformer.components``:
each entry point names a module (or callable) whose import registers its classes.
"""

from __future__ import annotations

import difflib
from importlib import metadata

KINDS = ("embedding", "attention", "mask", "mlp", "norm")
ENTRY_POINT_GROUP = "hydraformer.components"

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_entry_points_loaded = False


class RegistryError(ValueError):
    """An unknown or duplicate kind or name; the message says what is accepted."""


def closest(word: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, or '' when none is close."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise RegistryError(
            f"unknown component kind '{kind}'{closest(kind, KINDS)}; "
            f"accepted kinds: {', '.join(KINDS)}"
        )


def register(kind: str, name: str):
    """Class decorator: make ``cls`` buildable as component ``kind``/``name``."""
    _check_kind(kind)

    def decorate(cls: type) -> type:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not cls:
            raise RegistryError(
                f"{kind} '{name}' is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; pick another name"
            )
        _REGISTRY[kind][name] = cls
        cls.component_kind = kind
        cls.component_name = name
        return cls

    return decorate


def load_entry_points() -> None:
    """Import every module named in the ``hydraformer.components`` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        if callable(loaded) and not isinstance(loaded, type):
            loaded()


def names(kind: str) -> list[str]:
    _check_kind(kind)
    load_entry_points()
    return sorted(_REGISTRY[kind])


def get(kind: str, name: str) -> type:
    """The class registered as ``kind``/``name``; an unknown name lists the accepted ones."""
    _check_kind(kind)
    load_entry_points()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        accepted = sorted(_REGISTRY[kind])
        raise RegistryError(
            f"unknown {kind} '{name}'{closest(name, accepted)}; "
            f"registered {kind} components: {', '.join(accepted)}"
        ) from None
