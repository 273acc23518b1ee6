"""PEFT methods: one module per method, registered by name.

    from methods import create_method
    method = create_method("ssf", init_std=0.02)
    method.attach(model)

Adding a method is one file here that defines a `Method` subclass decorated with `@register_method`;
it is discovered on first use. Techniques that compose with any method live in `methods/techniques/`.
"""

from __future__ import annotations

import importlib
import pkgutil

from methods.base import Method, MethodError

_REGISTRY: dict[str, type[Method]] = {}
_NOT_METHODS = {"base", "layers", "tuners"}


def register_method(cls: type[Method]) -> type[Method]:
    """Register `cls` under `cls.name`; names and parameter prefixes are unique (as peft's method registry)."""
    for other in _REGISTRY.values():
        if other is not cls and (other.name == cls.name or other.prefix == cls.prefix):
            raise ValueError(f"methods '{other.name}' and '{cls.name}' share a name or the prefix '{cls.prefix}'")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg and info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def list_methods() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def create_method(name: str, **hparams) -> Method:
    """Build a registered method from its name and its hyper-parameters (the method yaml, less `name`)."""
    _discover()
    if name not in _REGISTRY:
        raise MethodError(f"unknown method '{name}'; choose one of: {', '.join(list_methods())}")
    try:
        return _REGISTRY[name](**hparams)
    except TypeError as e:
        raise MethodError(f"method '{name}': {e}") from None


__all__ = ["Method", "MethodError", "create_method", "list_methods", "register_method"]
