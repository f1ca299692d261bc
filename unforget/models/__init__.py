"""Built-in architectures and the plugin path.

Every builder is called as ``build(input_shape=..., num_classes=..., **kwargs)`` and returns an
``nn.Module`` mapping a batch ``x`` to logits ``(B, num_classes)``. The registry is a dict
literal (STYLE §3); a plugin is an import string ``pkg.module:factory`` that only runs when the
user names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from unforget.config.spec import ModelSpec
from unforget.errors import SpecError, param

Builder = Callable[..., nn.Module]


def _registry() -> dict[str, Builder]:
    from unforget.models import cnn, mlp, resnet, text

    return {
        "mlp": mlp.build,
        "cnn": cnn.build,
        "resnet18": resnet.build,
        "text": text.build,
    }


BUILTIN = ("mlp", "cnn", "resnet18", "text")


def build_model(
    spec: ModelSpec,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    allow_plugin: bool = False,
) -> nn.Module:
    """Instantiate the architecture named by ``spec``.

    Args:
        spec: model name and keyword arguments.
        input_shape: per-sample input shape, e.g. (1, 28, 28) or (D,).
        num_classes: number of output logits.
        allow_plugin: plugin code runs only if the user named it on this call (flag/config).

    Raises:
        SpecError: unknown name, refused plugin, or bad keyword arguments.
    """
    builder = _plugin(spec.name, allow_plugin) if spec.is_plugin else _builtin(spec.name)
    try:
        return builder(input_shape=tuple(input_shape), num_classes=num_classes, **spec.kwargs)
    except TypeError as exc:
        raise SpecError(f"model {spec.name!r}: bad model.kwargs ({exc})") from exc


def _builtin(name: str) -> Builder:
    registry = _registry()
    if name not in registry:
        raise SpecError(
            f"unknown model {name!r} (built-in: {', '.join(registry)}; or pkg.module:factory)"
        )
    return registry[name]


def _plugin(name: str, allowed: bool) -> Builder:
    if not allowed:
        raise SpecError(
            f"the checkpoint names plugin model code {name!r}; it only runs when you name it "
            f"yourself: add {param('model', name)} (or model.name in {param('config')})"
        )
    module_name, _, attr = name.partition(":")
    try:
        factory: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"cannot import model factory {name!r}: {exc}") from exc
    if not callable(factory):
        raise SpecError(f"model factory {name!r} is not callable")
    return factory
