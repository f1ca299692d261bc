"""unforget: make a trained PyTorch model forget chosen training samples, and prove it.

The package is a library first; ``unforget.cli`` is a thin Typer layer over it. The public API::

    import unforget
    result = unforget.apply(model, forget_ids, spec={"data": {"path": "my-data"}})
    report = unforget.audit(result.model, forget_ids, spec=..., refs=4)

Importing the package is cheap: the API's modules (torch, datasets) load on first use.
``unforget.methods.available()`` lists the method names ``apply(method=...)`` takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "UnforgetError",
    "Unlearned",
    "__version__",
    "apply",
    "audit",
]

if TYPE_CHECKING:
    from unforget.errors import InputError, UnforgetError
    from unforget.workflows.api import Unlearned, apply, audit


def __getattr__(name: str) -> Any:
    if name in {"apply", "audit", "Unlearned"}:
        from unforget.workflows import api

        return getattr(api, name)
    if name in {"InputError", "UnforgetError"}:
        from unforget import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'unforget' has no attribute {name!r}")
