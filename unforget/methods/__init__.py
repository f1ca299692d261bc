"""The method registry: a dict literal of name -> module (imported on demand, so ``unforget
--help`` stays fast), and :func:`get_method` that lists the valid names on failure."""

from __future__ import annotations

import importlib
from typing import Any

from unforget.config.options import build
from unforget.errors import InputError, param
from unforget.methods.base import Method, SavedState, saved_state

METHODS: dict[str, str] = {
    "proxy-distill": "unforget.methods.proxy_distill",
    "nabla-tau": "unforget.methods.nabla_tau",
    "nabla-tau-paper": "unforget.methods.nabla_tau_paper",
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
DEFAULT_METHOD = "proxy-distill"


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
    return build(method.Config, values, what=f"{param('options')} of method {method.info.name!r}")


def saved_states() -> dict[str, SavedState]:
    """Every registered method's :class:`SavedState` hook, by method name (imports the method
    modules: ~50 ms). Commands protect and clean up all of these files, whichever method runs,
    so a file one method keeps is never overwritten or left stale by another."""
    out = {}
    for name in available():
        hook = saved_state(get_method(name))
        if hook is not None:
            out[name] = hook
    return out
