"""Atomic file writes: a uniquely named temporary file (``mkstemp``, O_EXCL) in the target folder,
fsync, then ``os.replace``. Readers see the old file or the new one, never a part of either, and
concurrent writers never interleave. The file gets the permissions ``open()`` would give it
(0666 minus the umask: 0644 usually), not ``mkstemp``'s private 0600."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

from fsbench.errors import UserError


class UnwritableError(UserError, OSError):
    """A path that cannot be written: a one-line :class:`UserError` for the CLI, and still an
    :class:`OSError` for code that handles I/O errors."""


def unwritable(path: str | Path, e: OSError) -> UnwritableError:
    """The one-line error for a path that cannot be written (a file where a folder should be,
    a read-only or virtual file system, a name over the 255-byte limit, a full disk, ...)."""
    why = e.strerror or str(e) or type(e).__name__
    return UnwritableError(f"cannot write {path}: {why}; choose a writable folder (and a file "
                           f"name under 255 bytes)")


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, hence the fallback)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None,
                exclusive: bool = False) -> Iterator[IO]:
    """``with atomic_open(p, "w") as f: ...`` - ``p`` appears only if the block succeeds. A path
    that cannot be written is a :class:`~fsbench.errors.UserError` naming it. ``exclusive``:
    never replace an existing ``p`` (``FileExistsError``; of concurrent writers one wins)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.{os.getpid()}.", suffix=".tmp",
                                   dir=directory)
    except OSError as e:
        raise unwritable(path, e) from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, exclusive)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, (UnwritableError, FileExistsError)):
            raise unwritable(path, e) from None
        raise


def _publish(tmp: str, path: Path, exclusive: bool) -> None:
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists, atomically
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then rename
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, exclusive: bool = False) -> None:
    with atomic_open(path, "w", encoding="utf-8", exclusive=exclusive) as f:
        f.write(text)


# Temporaries name their writer: ``.NAME.PID.RANDOM.tmp`` (atomic_open) and ``.tmp-NAME-pPID-RANDOM``
# (folders built beside their final place). mkstemp/mkdtemp's random part has no "." or "-".
_OWNED = (re.compile(r"^\..+\.(\d+)\.[a-z0-9_]+\.tmp$"), re.compile(r"^\.(?:tmp|old)-.+-p(\d+)-[a-z0-9_]+$"))
_LEGACY = (re.compile(r"^\..+\.[a-z0-9_]+\.tmp$"), re.compile(r"^\.(?:tmp|old)-.+$"))
LEGACY_AGE_S = 24 * 3600


def temp_dir(final: Path) -> Path:
    """A new folder beside ``final`` to build it in (``.tmp-NAME-pPID-RANDOM``)."""
    return Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-p{os.getpid()}-", dir=final.parent))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writing process is gone (killed during a write);
    temporaries of an older fsbench (no process id in the name) once a day old. Temporaries of
    live processes are left alone, so concurrent writers are safe. Returns what was removed."""
    gone = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return gone
    now = time.time()
    for p in entries:
        owned = next((m for rx in _OWNED if (m := rx.match(p.name))), None)
        if owned is not None:
            stale = not _alive(int(owned.group(1)))
        elif any(rx.match(p.name) for rx in _LEGACY):
            try:
                stale = now - p.lstat().st_mtime > LEGACY_AGE_S
            except OSError:
                continue
        else:
            continue
        if not stale:
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            gone.append(p)
    return gone
