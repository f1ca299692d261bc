"""One error hierarchy; ``cli.py`` is the only place that turns these into messages and exit codes.

Every error carries a one-line message that says what is wrong and, where we can tell, what to
do next. Input problems (exit 2) are separated from runtime failures (exit 1) so a pipeline can
tell "fix your request" from "retry or page someone".
"""

from __future__ import annotations

import re
from collections.abc import Mapping

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_AUDIT_LEAK = 3
EXIT_AUDIT_OVER = 4
EXIT_AUDIT_INCONCLUSIVE = 5
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell convention


_MARK = "\x1f"  # brackets a parameter named in a message (ASCII unit separator)
_MARKED = re.compile(f"{_MARK}([^{_MARK}]*){_MARK}")


def param(name: str, value: object = None) -> str:
    """Name one of the caller's parameters inside an error message: ``param("force", True)``.

    Why: the same library code raises for Python callers and for the command line, and a
    message must say what to change in the caller's own terms. ``str(error)`` reads
    ``force=True`` (the keyword of the request or API call); the CLI's error boundary renders
    the flag from its own table instead (:func:`render`), e.g. ``--force``.
    """
    text = name if value is None else f"{name}={value}"
    return f"{_MARK}{text}{_MARK}"


def render(message: str, flags: Mapping[str, str] | None = None) -> str:
    """``message`` with its :func:`param` names spelled for Python (``name=value``) or, given
    ``flags`` (parameter -> command-line flag), for the shell: ``--flag value``, a boolean
    ``True`` dropped (``--force``), method options as ``--set key=value``."""

    def one(match: re.Match[str]) -> str:
        name, _, value = match[1].partition("=")
        if flags is None or name not in flags:
            if name == "options" and "=" in value:  # a method option: options={"lr": "…"}
                key, _, setting = value.partition("=")
                return f'{name}={{"{key}": "{setting}"}}'
            return match[1]
        return flags[name] if value in ("", "True") else f"{flags[name]} {value}"

    return _MARKED.sub(one, message)


class UnforgetError(Exception):
    """Base class: a failure we can explain in one line.

    Messages name the caller's parameters with :func:`param`; ``str(error)`` spells them as
    Python keywords, :meth:`message_for` as the flags the command line uses.
    """

    exit_code: int = EXIT_FAILURE

    def __str__(self) -> str:
        return render(super().__str__())

    def message_for(self, flags: Mapping[str, str]) -> str:
        """The message with parameters spelled as ``flags`` maps them (the CLI's flags)."""
        return render(super().__str__(), flags)


class InputError(UnforgetError):
    """The user's request or input files are wrong (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class SpecError(InputError):
    """The run spec (flags, config file, checkpoint metadata) is incomplete or inconsistent."""


class CheckpointError(InputError):
    """A checkpoint is missing, unreadable, unsafe to read, or does not fit the architecture."""


class DataError(InputError):
    """The data set cannot be read or does not match what the checkpoint was trained on."""


class ManifestError(InputError):
    """The deletion manifest is empty, malformed, or names IDs that cannot be forgotten."""


class OutputExistsError(InputError):
    """The output path exists and replacing it was not asked for (``force``)."""


class OutputBusyError(UnforgetError):
    """Another unforget process is writing the same output right now (exit 1: retry later)."""


class GuardRailError(UnforgetError):
    """A run was stopped by a guard rail (non-finite loss, accuracy collapse); exit 1."""


def collect(problems: list[str], *, error: type[InputError], what: str) -> None:
    """Raise ``error`` once for all ``problems`` (STYLE §8: collect every problem, raise once).

    Args:
        problems: human-readable problems found while validating one input.
        error: the subclass to raise.
        what: the name of the input, e.g. "run spec".
    """
    if not problems:
        return
    if len(problems) == 1:
        raise error(f"{what}: {problems[0]}")
    raise error(f"{what}: {len(problems)} problems: " + "; ".join(problems))
