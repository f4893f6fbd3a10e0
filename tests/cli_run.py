"""The command line run in-process, and what a clean refusal looks like (one ``accel: error:`` line)."""

from __future__ import annotations

import contextlib
import io

from accel.cli import main

__all__ = ["leftovers", "one_line_error", "run", "usage_error"]


def run(*argv) -> tuple[int, str, str]:
    """``accel ARGV...`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str, *pieces: str) -> str:
    """Assert a refusal: status 2, no traceback, exactly one line ``accel: error: ...`` holding every piece;
    return the line."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("accel: error: "), err
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])
    return lines[0]


def usage_error(code: int, err: str, command: str, option: str) -> str:
    """Assert an option refused by argparse: status 2, no traceback, last line naming the option."""
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"accel {command}: error: argument {option}"), err
    return last


def leftovers(root) -> list[str]:
    """Hidden staging or temporary entries anywhere under ``root`` (a clean run leaves none)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))
