"""One error hierarchy; ``cli.py`` is the only place that turns these into messages and exit codes.

Every error carries a one-line message that says what is wrong and, where we can tell, what to
do next. Input problems (exit 2) are separated from runtime failures (exit 1) so a pipeline can
tell "fix your request" from "retry or page someone".
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_AUDIT_LEAK = 3
EXIT_AUDIT_OVER = 4
EXIT_AUDIT_INCONCLUSIVE = 5
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell convention


class UnforgetError(Exception):
    """Base class: a failure we can explain in one line."""

    exit_code: int = EXIT_FAILURE


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
    """The output path exists and ``--force`` was not given."""


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
