"""The one class of errors a user can cause, and how the command line reports them.

Every input the user hands the tool (a configuration or energy file, a trace, a data set, a run folder, an
output path) is checked where it is read; what cannot be used raises a subclass of :class:`UserError`
whose message names the file, field and value. ``accel``'s ``main`` catches :class:`UserError` (and
``OSError``) in one place and prints one line ``accel: error: ...`` with exit status 2.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """An input that cannot be used; the message names the file, field and offending value."""
