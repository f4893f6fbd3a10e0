"""Output folders that hold exactly one run: checked before the work, staged, swapped in whole.

Every command that writes a folder (``accel report``, ``accel sweep``, ``accel rtl``) goes through
:class:`OutputFolder`:

* **before the work** the path is checked: not empty, not the current folder or one of its parents, not a
  file, its parent creatable and writable, and an existing folder holds only files of this kind of run
  (a report folder only ``report.json``, ``layers.csv`` and plots), so nothing of the user's is replaced;
* the run writes into a hidden **staging folder** beside the destination; on success the staging folder
  **replaces the destination as a whole** (two renames under a lock on the parent folder), so a folder
  never mixes two runs' files, old plots do not survive a ``--no-plots`` run, and two runs into the same
  folder at once leave the last one's files, complete;
* on any failure, Ctrl-C or SIGTERM (:mod:`outfiles.interrupts`) the staging folder and every parent folder
  the run created are removed again.

:func:`write_file_atomic` does the same for a single file (``accel run --json``).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import os
import secrets
import shutil
import stat
from pathlib import Path

from outfiles.interrupts import on_stop, signals_blocked
from spec.errors import UserError

__all__ = [
    "OutputError",
    "OutputFile",
    "OutputFolder",
    "check_out_file",
    "file_mode",
    "write_file_atomic",
]


class OutputError(UserError):
    """An output path that cannot take the run's files; the message names the path."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _check_creatable(path: Path, shown: Path, what: str) -> None:
    """Refuse ``path`` unless its nearest existing ancestor is a writable folder (it can be created)."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{shown}: cannot create {what} ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{shown}: cannot create {what} ({ancestor} is not writable)")


class OutputFolder:
    """A folder filled by one run, replaced as a whole when the run succeeds.

    Parameters
    ----------
    path : Path
        The destination folder.
    owned : tuple of str
        Glob patterns of the files this kind of run writes; an existing destination holding anything
        else is refused before the work.
    what : str
        The command that writes it, for messages ("accel report", "accel sweep", "accel rtl").

    Use as a context manager: ``with OutputFolder(out, ...) as staging:`` writes the files into
    ``staging``; leaving the block normally swaps the staging folder in (:meth:`commit`), leaving it with
    an exception removes it and any parent folder created for it.
    """

    def __init__(self, path: Path, owned: tuple[str, ...], what: str) -> None:
        path = Path(path)
        if str(path).strip() == "":
            raise OutputError("output folder: empty path")
        if path.is_symlink() and path.is_dir():
            path = path.resolve()  # replace the folder the link points to, not the link
        self.path = Path(path).absolute()  # ".." kept: "file/../x" is refused as the system would
        self.shown = path  # as the user wrote it, for messages
        self.owned = owned
        self.what = what
        self.staging: Path | None = None
        self._created: list[Path] = []

    # -- checks ---------------------------------------------------------------------------------------
    def _foreign(self) -> list[str]:
        """What the folder holds that this kind of run does not write: any name outside the patterns, and
        anything that is not a regular file (a folder named ``report.json`` holds the user's data)."""
        try:
            with os.scandir(self.path) as entries:
                listed = sorted((e.name, e.is_file(follow_symlinks=False)) for e in entries)
        except OSError as exc:
            raise OutputError(f"{self.shown}: cannot read the output folder ({_strerror(exc)})") from None
        return [
            name
            for name, regular in listed
            if not regular or not any(fnmatch.fnmatchcase(name, pat) for pat in self.owned)
        ]

    def check(self) -> None:
        """Refuse a destination that cannot take this run's files, before any work is done."""
        here, resolved = Path.cwd().resolve(), self.path.resolve()
        if resolved == here or resolved in here.parents:
            raise OutputError(f"{self.shown}: is the current folder or one of its parents; name a new folder")
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_dir():
                raise OutputError(f"{self.shown}: exists and is not a folder")
            if os.path.ismount(self.path):  # a mount point cannot be renamed away
                raise OutputError(
                    f"{self.shown}: is a mount point; the whole folder is replaced: name a folder inside it"
                )
            foreign = self._foreign()
            if foreign:
                more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
                raise OutputError(
                    f"{self.shown}: holds {foreign[0]!r}{more}, which {self.what} does not write; "
                    f"name a new or empty folder (the whole folder is replaced)"
                )
        _check_creatable(self.path, self.shown, "the output folder")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK | os.X_OK):
            raise OutputError(f"{self.shown}: output folder is not writable")

    # -- life cycle -----------------------------------------------------------------------------------
    def __enter__(self) -> Path:
        self.check()
        missing = []
        parent = self.path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        self._on_stop = on_stop(self._clean)  # Ctrl-C or SIGTERM from here on: removed, then exit
        self._on_stop.__enter__()
        try:
            with signals_blocked():  # the folders made are recorded before a signal can look at the list
                for folder in reversed(missing):
                    try:
                        folder.mkdir()
                    except FileExistsError:  # another run made it meanwhile: not ours to remove
                        continue
                    self._created.append(folder)
                self.staging = self.path.parent / f".{self.path.name}.accel-{secrets.token_hex(4)}"
                self.staging.mkdir(mode=0o777)
        except OSError as exc:
            self._clean()
            self._on_stop.__exit__(None, None, None)
            raise self._create_error(exc) from None
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self.commit()
                except BaseException:
                    self._clean()
                    raise
            else:
                staging = self.staging
                self._clean()
                if (
                    isinstance(exc, OSError)
                    and staging is not None
                    and str(staging) in str(exc.filename or "")
                ):
                    # A write into the staging folder failed (disk full, quota): name the destination.
                    raise self._write_error(exc) from None
        finally:
            self._on_stop.__exit__(None, None, None)

    def _clean(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        for folder in reversed(self._created):  # deepest first, only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created = []

    def _create_error(self, exc: OSError) -> OutputError:
        return OutputError(f"{self.shown}: cannot create the output folder ({_strerror(exc)})")

    def _write_error(self, exc: OSError) -> OutputError:
        return OutputError(f"{self.shown}: cannot write the results of {self.what} ({_strerror(exc)})")

    def commit(self) -> None:
        """Replace the destination by the staging folder, as a whole, under a lock on the parent folder."""
        assert self.staging is not None
        old = self.path.parent / f".{self.path.name}.accel-old-{secrets.token_hex(4)}"
        try:
            parent = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise OutputError(
                f"{self.shown}: cannot write the results of {self.what} ({_strerror(exc)})"
            ) from None
        try:
            # The lock (one swap at a time in this folder) is taken while a stop signal still works.
            fcntl.flock(parent, fcntl.LOCK_EX)
            with on_stop(lambda: shutil.rmtree(old, ignore_errors=True)), signals_blocked():
                # Both renames, or neither: a stop signal is held back until they are done.
                if self.path.exists() or self.path.is_symlink():
                    if not self.path.is_dir() or self._foreign():
                        raise OutputError(f"{self.shown}: changed during the run; nothing was written")
                    _keep_mode(self.path, self.staging)
                    os.rename(self.path, old)
                try:
                    os.rename(self.staging, self.path)
                except OSError:
                    if old.exists():
                        os.rename(old, self.path)
                    raise
                self.staging = None
                self._created = []
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise OutputError(
                f"{self.shown}: cannot write the results of {self.what} ({_strerror(exc)})"
            ) from None
        finally:
            os.close(parent)  # releases the lock

    def files(self) -> list[Path]:
        """The files of the committed folder, as the user named it."""
        return [self.shown / name for name in sorted(os.listdir(self.path))]


def _keep_mode(old: Path, new: Path) -> None:
    """Give the new folder the old one's mode (and, when allowed, owner and group)."""
    info = old.stat()
    os.chmod(new, stat.S_IMODE(info.st_mode))
    with contextlib.suppress(OSError):
        os.chown(new, info.st_uid, info.st_gid)


def file_mode() -> int:
    """The mode a plain ``open`` gives a new file: 0666 less the umask (``mkstemp`` gives 0600)."""
    return 0o666 & ~_umask()


def check_out_file(path: Path, create_parents: bool = False) -> None:
    """Refuse, before the work, a file destination that cannot be written: a folder, a missing folder
    (unless ``create_parents``), or a path whose nearest existing ancestor is not a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file name")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        # Replacing it would turn a link, a device (/dev/null) or a FIFO into a plain file.
        raise OutputError(f"{path}: exists and is not a regular file (a link, device or FIFO); name a file")
    if not create_parents and not path.parent.is_dir():
        raise OutputError(f"{path}: cannot write (No such file or directory: {path.parent})")
    _check_creatable(path, path, "the file")


class OutputFile(OutputFolder):
    """A single file written as :class:`OutputFolder` writes a folder.

    ``with OutputFile(path) as tmp:`` checks the destination (:func:`check_out_file`), makes the missing
    parent folders if ``create_parents``, and gives a path inside a hidden staging folder beside the
    destination; leaving the block normally renames the file into place, leaving it with an exception or a
    stop signal removes the staging folder (and whatever the writer left in it) and the parents made for
    it. Errors name the destination, never the staging path.
    """

    def __init__(self, path: Path, what: str = "file", create_parents: bool = False) -> None:
        super().__init__(path, (), what)
        self.create_parents = create_parents

    def check(self) -> None:
        check_out_file(self.shown, self.create_parents)
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise OutputError(f"{self.shown}: the file is not writable")

    def __enter__(self) -> Path:
        return super().__enter__() / self.path.name

    def _create_error(self, exc: OSError) -> OutputError:
        return self._write_error(exc)

    def _write_error(self, exc: OSError) -> OutputError:
        return OutputError(f"{self.shown}: cannot write the {self.what} ({_strerror(exc)})")

    def commit(self) -> None:
        assert self.staging is not None
        try:
            with signals_blocked():
                os.replace(self.staging / self.path.name, self.path)
                self._created = []
        except OSError as exc:
            raise self._write_error(exc) from None
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None


def write_file_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (:class:`OutputFile`), with the mode a plain ``open`` would give (0666
    less the umask); an interrupted run leaves the old file or none."""
    with OutputFile(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as f:
            f.write(text)
