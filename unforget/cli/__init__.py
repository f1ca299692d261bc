"""The command-line interface: Typer commands (app) and human-readable rendering (render)."""

from unforget.cli.app import app, main, run

__all__ = ["app", "main", "run"]
