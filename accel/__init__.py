"""Channel-gating CNN accelerator: engine configuration, tiles and the command line."""

__version__ = "0.1.0"
