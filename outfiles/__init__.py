"""Output files and folders written whole (staged, swapped in under a lock) and stop signals that clean up.

Every command that writes (a report, a sweep, the Verilog, a training run, a trace) goes through
:class:`outfiles.folder.OutputFolder` or :class:`outfiles.folder.OutputFile`. Imports only
:mod:`spec.errors`.
"""
