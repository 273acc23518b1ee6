"""PEFT methods: one module per method, registered by name.

    from methods import create_method
    method = create_method("ssf", init_std=0.02)
    method.attach(model)

Adding a method is one file here that defines a `Method` subclass decorated with `@register_method`;
it is discovered on first use.
"""

from __future__ import annotations

import importlib
import pkgutil

from methods.base import Method, MethodError

_REGISTRY: dict[str, type[Method]] = {}
_NOT_METHODS = {"base", "layers"}


def register_method(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two methods are registered as '{cls.name}'")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
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
