"""The method registry: a dict literal of name -> module (imported on demand, so ``unforget
--help`` stays fast), and :func:`get_method` that lists the valid names on failure."""

from __future__ import annotations

import importlib
from typing import Any

from unforget.config.options import build
from unforget.errors import InputError
from unforget.methods.base import Method

METHODS: dict[str, str] = {
    "nabla-tau": "unforget.methods.nabla_tau",
    "pgu": "unforget.methods.pgu",
    "ltu": "unforget.methods.ltu",
    "lur": "unforget.methods.lur",
    "retrain": "unforget.methods.retrain",
    "finetune": "unforget.methods.finetune",
    "neggrad": "unforget.methods.neggrad",
    "neggrad+": "unforget.methods.neggrad_plus",
    "random-label": "unforget.methods.random_label",
    "scrub": "unforget.methods.scrub",
    "salun": "unforget.methods.salun",
    "l1-sparse": "unforget.methods.l1_sparse",
    "ssd": "unforget.methods.ssd",
}
DEFAULT_METHOD = "nabla-tau"


def available() -> list[str]:
    """Registered names whose module is present (all of them in a complete install)."""
    return [name for name, module in METHODS.items() if importlib.util.find_spec(module)]


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        InputError: unknown name (the message lists the valid ones).
    """
    if name not in METHODS or not importlib.util.find_spec(METHODS[name]):
        raise InputError(f"unknown method {name!r} (valid: {', '.join(available())})")
    module = importlib.import_module(METHODS[name])
    return module.METHOD


def make_config(method: Method, values: dict[str, Any]) -> Any:
    """The method's config from ``--set`` values, validated (every problem reported at once)."""
    return build(method.Config, values, what=f"--set for method {method.info.name!r}")
