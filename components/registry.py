"""One small registry: component classes by kind and name, each with the declaration of its settings.

    @dataclass
    class SlidingWindowSettings(Settings):
        name: str = "sliding_window"
        window: Annotated[int, Gt(0), doc("tokens each query sees: itself and window - 1 before it")] = 64

    @register("mask", "sliding_window", SlidingWindowSettings)
    class SlidingWindowMask: ...

A settings dataclass is the one declaration of a component's keys: each field's type, its default, its accepted
range or choices (``annotated_types``' ``Gt``, ``Ge``, ``Lt``, ``Le``, ``Interval`` and :class:`OneOf`) and a one-line
meaning (``doc``). The config tree composes it (builder/config/schema.py stores it in Hydra's ConfigStore as
``model/<kind>/<name>``), one function checks it (builder/config/spec.py) and the builder builds the module from the
checked object: ``cls(**shared model values named in SHARED, **the settings)``. A class registered without settings
has none but its name.

Third-party packages register through the entry-point group ``hydraformer.components``:
each entry point names a module (or callable) whose import registers its classes.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from importlib import metadata
from typing import Annotated, ClassVar

from annotated_types import Ge, Gt, Interval, Le, Lt, doc  # the declaration vocabulary, re-exported for components

__all__ = ["KINDS", "Annotated", "Ge", "Gt", "Interval", "Le", "Lt", "OneOf", "RegistryError", "Settings", "closest",
           "defaults_of", "doc", "get", "names", "register", "settings_class"]

KINDS = ("embedding", "attention", "mask", "mlp", "norm")
ENTRY_POINT_GROUP = "hydraformer.components"

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_entry_points_loaded = False


class RegistryError(ValueError):
    """An unknown or duplicate kind or name; the message says what is accepted."""


@dataclass(frozen=True, init=False)
class OneOf:
    """Declared choices of a setting: ``Annotated[str, OneOf("odd", "even")]``."""

    choices: tuple

    def __init__(self, *choices) -> None:
        object.__setattr__(self, "choices", tuple(choices))


@dataclass
class Settings:
    """The base of every component's settings. ``name`` is the registered name (it picks the class); ``SHARED``:
    the model-level values (``d_model``, ``n_heads``, ``d_head``, ``context_length``, ``bias``, ``dropout``) the module
    is built with; ``MODEL_ONLY``: settings the model reads itself and does not pass to the module (a norm's
    ``layout``). ``problems(model)`` yields ``(setting, value, accepted)`` for a rule between keys that a range
    cannot state (``n_kv_heads`` divides the model's ``n_heads``). ``canonical(model)`` and ``neutral()`` say when two
    models' settings are the same model (what the Hugging Face adapters compare an export by)."""

    name: str = "???"
    SHARED: ClassVar[tuple[str, ...]] = ()
    MODEL_ONLY: ClassVar[tuple[str, ...]] = ()

    def module_kwargs(self, model) -> dict:
        """The module's keyword arguments: the shared model values (``model.shared()``: a mapping), then every
        setting but ``name`` and the model's own."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "name" and f.name not in self.MODEL_ONLY}
        shared = model.shared()
        return {**{key: shared[key] for key in self.SHARED}, **own}

    def problems(self, model):
        return ()

    @classmethod
    def neutral(cls) -> dict:
        """Options that another component of the kind lacks, with the value that computes what it computes (a layer
        with no q/k norms: ``qk_norm=False``): two models compare on them whichever component each has. None here."""
        return {}

    def canonical(self, model) -> dict:
        """The settings spelled one way per computation, so that equal dicts mean equal modules: a null that stands
        for a value (a default width) made that value, an equivalent spelling made one (multi_head is grouped_query
        with n_heads key/value heads), options this choice does not read at their ``neutral`` values. ``model``: the
        checked model config (``head_dim``, ``n_heads``, ``d_model``, ``bias``). Here: the settings as they are."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def defaults_of(settings: type[Settings], *names: str) -> dict:
    """The declared defaults of ``names`` (all settings but ``name`` when none are named)."""
    fields = {f.name: f.default for f in dataclasses.fields(settings) if f.name != "name"}
    return {name: fields[name] for name in names or fields}


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


def register(kind: str, name: str, settings: type[Settings] | None = None, shared: tuple[str, ...] = ()):
    """Class decorator: make ``cls`` buildable as component ``kind``/``name`` from ``settings`` (a :class:`Settings`
    dataclass whose ``name`` defaults to ``name``). Without one, the component has no settings; ``shared``: the
    model values it is built with."""
    _check_kind(kind)
    if settings is None:
        settings = dataclasses.make_dataclass(
            f"{''.join(w.title() for w in name.split('_'))}{kind.title()}Settings",
            [("name", str, dataclasses.field(default=name))], bases=(Settings,),
            namespace={"SHARED": tuple(shared), "__doc__": f"{kind} '{name}': no settings"})
    if not (isinstance(settings, type) and issubclass(settings, Settings)) or settings().name != name:
        raise RegistryError(f"{kind} '{name}': its settings must be a Settings dataclass whose name defaults to "
                            f"'{name}'")

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
        cls.component_settings = settings
        return cls

    return decorate


def settings_class(kind: str, name: str) -> type[Settings]:
    """The settings dataclass of component ``kind``/``name`` (RegistryError when there is none)."""
    return get(kind, name).component_settings


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
