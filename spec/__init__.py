"""The engine's contract, at the bottom of the import graph (docs/packages.md).

Engine configuration, tile geometry, the register map and the load/unload protocol constants, the system
configuration (DRAM, energy, report tables) and how configuration files are read, and the class of errors a
user can cause. The RTL, the model, the trace format, the host-side driver and the command line all
import these definitions; this package imports none of them.
"""

__version__ = "0.1.0"
