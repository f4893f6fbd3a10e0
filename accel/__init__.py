"""Channel-gating CNN accelerator: the command line, reports, plots and sweeps (the product's face)."""

from spec import __version__

__all__ = ["__version__"]
