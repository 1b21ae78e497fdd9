"""Plain torch.nn.Module components, registered by kind and name. Nothing here knows Hydra.

Every module in this package is imported here, so a new file with a ``@register``-ed
class is picked up without touching any list.
"""

import importlib
import pkgutil

from .attention import AttentionMask, KVCache, StaticKVCache
from .registry import KINDS, RegistryError, get, names, register
from .transformer import Block, Transformer

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["KINDS", "AttentionMask", "Block", "KVCache", "RegistryError", "StaticKVCache", "Transformer", "get", "names",
           "register"]
