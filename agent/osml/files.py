"""Files that survive a crash: write to a temp file, fsync, rename over the target, fsync the dir.

Models and cards, agent state, trainer checkpoints and run reports are all written this way, so a
reader - or a restart after SIGKILL or power loss - sees the old content or the new, never a mix.
:func:`check_private` refuses a secret (key or password file) that others than its owner can read.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from osml.errors import ConfigError

__all__ = ["check_private", "fsync_dir", "write_atomic"]


def check_private(path: str | os.PathLike[str], what: str) -> None:
    """ConfigError (one line naming ``what``, the file and the chmod to run) unless only the
    file's owner has access to it: no permission bit for group or others.

    For signing keys, broker passwords and TLS client keys. OSError if it cannot be stat'ed.
    """
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"only its owner may read a secret: run chmod 600 {path}"
        )


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename over ``path``, fsync the directory.

    The temp file is ``.<name>.<random>.tmp`` next to ``path``; it is removed if anything fails.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable. Best effort: some systems (Windows) cannot open a
    directory and some file systems refuse fsync on one; the rename itself is atomic anyway."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
