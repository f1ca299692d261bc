"""unforget: make a trained PyTorch model forget chosen training samples, and prove it.

The package is a library first; ``unforget.cli`` is a thin Typer layer over it. Importing the
package is cheap: heavy modules (torch, datasets) are imported by the modules that need them.
"""

__version__ = "0.1.0"
