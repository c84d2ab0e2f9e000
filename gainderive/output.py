"""Output files written safely: never half-written, never through someone else's link, never a clobbered device.

:func:`write_atomic` is the one way gainderive writes a file (tables, plots). It follows the rules below, which
are POSIX rules (Linux, macOS).

Atomic
    The data goes to a new temporary file in the destination's own directory, named
    ``.<name>.<random>.gainderive-tmp`` and created with ``O_CREAT | O_EXCL | O_NOFOLLOW``. A file or symlink
    planted under that name cannot redirect the write: creation fails and another random name is tried.
    The file is flushed and ``fsync``-ed, then ``os.replace``-d onto the destination. The directory is fsync-ed
    last (best effort). Readers see the old file or the new one, never a mixture. Concurrent writers to one path
    leave one complete file: the last rename wins.
Permissions
    The new file gets the permissions a normal write would give. An existing file keeps its permission bits
    (``0o777`` part) and, where the system allows, its owner and group. A new file gets ``0o666 & ~umask``.
    An existing file that a normal write could not open (read-only to us) is refused.
    The rename gives the destination a new inode, so hard links to the old file keep the old content.
Destinations
    Accepted: a regular file, a new name in an existing directory, or a symlink that resolves to a regular file.
    Through a symlink, the *target* is replaced and the link stays a link, as with the shell's ``>``.
    Refused with an :class:`OutputError`:

    - an empty path, and ``-``: standard output is not a file here (the CLI writes to standard output when no
      file is given);
    - a directory, FIFO, socket, or character or block device;
    - anything under ``/dev`` (but ``/dev/shm``) or ``/proc``, even behind a symlink, such as ``/dev/stdout``;
    - a missing parent directory;
    - a dangling symlink, or a symlink to anything but a regular file;
    - a symlink owned by another user in a sticky, world-writable directory such as ``/tmp``, unless the
      directory's owner owns it. This is the kernel's ``protected_symlinks`` rule, applied whatever the sysctl.
    The destination is only ever ``lstat``-ed before the rename, never opened, so a FIFO cannot block the write.
    If the destination is swapped for a symlink after the check, the rename replaces the link itself and does
    not write through it.
Interruptions
    While the data is written, SIGINT, SIGTERM and SIGHUP remove the temporary file. The signal then goes to
    the handler that was installed before, so by default the process still stops as it would have. Only the
    main thread can install handlers; a write from another thread is covered by the next point.
    Any exception also removes the temporary file. SIGKILL cannot be caught: temporary files older than
    :data:`STALE_AFTER` seconds, owned by the current user and matching the name pattern are removed at the next
    write to the same directory.
Errors
    An ``OSError`` (ENOSPC, EACCES, EROFS, ...) becomes a one-line :class:`OutputError` naming the path and the
    reason. The temporary file is removed and the old file is left intact.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import GainDeriveError

__all__ = ["STALE_AFTER", "TEMP_SUFFIX", "OutputError", "check_destination", "write_atomic"]

#: Every temporary file ends in this suffix; stale ones are recognised by it.
TEMP_SUFFIX = ".gainderive-tmp"
#: Age in seconds after which a temporary file is taken as left by a killed run. A live write takes far less.
STALE_AFTER = 3600.0

Data = str | bytes | bytearray | memoryview | Callable[[IO[bytes]], object]

_SPECIAL_TREES = ("/dev/", "/proc/")  # device nodes and /dev/stdout-style links into /proc/self/fd
_ORDINARY_UNDER_DEV = ("/dev/shm/",)  # tmpfs: ordinary files
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
_ACCEPTED = "accepted: a regular file, a new file in an existing directory, or a symlink to a regular file"


class OutputError(GainDeriveError):
    """An output file that cannot or must not be written (bad destination, permissions, disk full, ...)."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _refuse(what: str, path: str, why: str) -> OutputError:
    return OutputError(f"cannot write {what} {path!r}: {why}")


def _under_special_tree(path: str) -> bool:
    """Whether ``path``, with the directories above it resolved (``dl/x`` where dl -> /dev), is under /dev or /proc."""
    absolute = os.path.abspath(path)
    absolute = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    if any(absolute.startswith(tree) for tree in _ORDINARY_UNDER_DEV):
        return False
    return absolute in ("/dev", "/proc") or any(absolute.startswith(tree) for tree in _SPECIAL_TREES)


def _through_special_tree(path: str) -> bool:
    """Whether ``path`` or a link it goes through (such as /dev/stdout -> /proc/self/fd/1) is under /dev or /proc."""
    for _ in range(40):  # the kernel's own limit on nested links
        if _under_special_tree(path):
            return True
        try:
            hop = os.readlink(path)
        except OSError:
            return False  # not a link (any more): the end of the chain
        path = os.path.join(os.path.dirname(path), hop)
    return False  # a loop, or too deep to open: resolving it fails and says so


def _check_link_is_trusted(what: str, path: str, link: os.stat_result) -> None:
    """Refuse a symlink planted by another user in a sticky world-writable directory (protected_symlinks)."""
    try:
        folder = os.stat(os.path.dirname(path) or ".")
    except OSError as exc:
        raise _refuse(what, path, _reason(exc)) from None
    shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
    if shared and link.st_uid not in (os.geteuid(), folder.st_uid):
        raise _refuse(what, path, f"it is a symlink owned by another user (uid {link.st_uid}) in a shared sticky "
                                  "directory; refused, as the kernel's protected_symlinks does; remove it or write "
                                  "elsewhere")


def _lstat(what: str, path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refuse(what, path, _reason(exc)) from None


def _check_new_file(what: str, path: str) -> None:
    """A new file needs an existing parent directory."""
    if path.endswith(os.sep):
        raise _refuse(what, path, "a name ending in '/' is a directory; " + _ACCEPTED)
    parent = os.path.dirname(path) or "."
    try:
        parent_st = os.stat(parent)
    except FileNotFoundError:
        raise _refuse(what, path, f"directory {parent!r} does not exist") from None
    except OSError as exc:
        raise _refuse(what, path, f"directory {parent!r}: {_reason(exc)}") from None
    if not stat.S_ISDIR(parent_st.st_mode):
        raise _refuse(what, path, f"{parent!r} is not a directory")


def _resolve(what: str, path: str | os.PathLike) -> tuple[str, os.stat_result | None]:
    """The path to replace and its current stat (None for a new file), or an OutputError saying why not."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise OutputError(f"{what} path must be a file name, got {type(path).__name__}")
    text = os.fsdecode(os.fspath(path))
    if text == "":
        raise OutputError(f"{what} path is empty; give a file name")
    if text == "-":
        raise OutputError(f"{what} path '-': standard output is not a file here; give a file name")
    if "\0" in text:
        raise _refuse(what, text, "the path contains a NUL byte")
    st = _lstat(what, text)
    real = text
    if st is not None and not stat.S_ISLNK(st.st_mode) and not stat.S_ISREG(st.st_mode):
        raise _refuse(what, text, f"it is {_kind(st.st_mode)}; " + _ACCEPTED)
    if _through_special_tree(text):
        raise _refuse(what, text, "files under /dev and /proc are not written; " + _ACCEPTED)
    if st is not None and stat.S_ISLNK(st.st_mode):
        _check_link_is_trusted(what, text, st)
        try:
            real = os.path.realpath(text, strict=True)
            st = os.stat(real)
        except OSError:
            raise _refuse(what, text, "it is a dangling symlink (or a symlink loop); " + _ACCEPTED) from None
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(what, text, f"it is a symlink to {real!r}, which is {_kind(st.st_mode)}; " + _ACCEPTED)
        if _under_special_tree(real):
            raise _refuse(what, text, "files under /dev and /proc are not written; " + _ACCEPTED)
    if st is None:
        _check_new_file(what, text)
    elif not os.access(real, os.W_OK):
        raise _refuse(what, text, f"the file is read-only to you (mode {stat.S_IMODE(st.st_mode):04o})")
    return real, st


def check_destination(path: str | os.PathLike, *, what: str = "output") -> Path:
    """The file a write to ``path`` would replace (the target, for a symlink), or :class:`OutputError`.

    Call it before long work, to refuse a bad destination before computing anything; :func:`write_atomic`
    checks again when it writes.
    """
    return Path(_resolve(what, path)[0])


def _umask() -> int:
    """The process umask, read without changing it (Linux >= 4.7 reports it in /proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # racy against other threads' file creation, hence only the fallback
    os.umask(mask)
    return mask


def _temporary_names(name: str):
    """Unpredictable names for the temporary file (up to 80 bytes of the destination's name keep it readable and,
    with the 33 bytes added, under the 255-byte limit on a name, whatever the script it is written in)."""
    stem = os.fsdecode(os.fsencode(name)[:80].decode("utf-8", errors="ignore").encode("utf-8"))
    while True:  # the pid lets a later run tell a live writer's temporary (a long table) from a killed one's
        yield f".{stem}.{os.getpid()}-{secrets.token_hex(8)}{TEMP_SUFFIX}"


def _create_temporary(folder: str, name: str) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    names = _temporary_names(name)
    for _ in range(100):
        tmp = os.path.join(folder, next(names))
        try:
            return tmp, os.open(tmp, flags, 0o600)  # private while incomplete; the final mode is set before rename
        except FileExistsError:
            continue  # taken: planted, or another writer's; never reuse it
    raise FileExistsError(errno.EEXIST, "no free temporary file name after 100 tries")


def _writer_alive(name: str) -> bool:
    """Whether the process that named this temporary still runs (its pid is in the name; unknown: assume so)."""
    match = re.search(r"\.(\d+)-[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + "$", name)
    if match is None:
        return False  # an older run's name, without a pid: age alone decides
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # another user's process, or not ours to signal: leave its file alone
    return True


def _remove_stale_temporaries(folder: str) -> None:
    """Delete temporary files that killed runs left in ``folder``: ours by suffix, owned by us, old, and
    named by a process that no longer runs (a long write of a live run is older than an hour, yet not stale)."""
    now = time.time()
    uid = os.geteuid()
    try:
        entries = os.scandir(folder)
    except OSError:
        return
    with entries:
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if (stat.S_ISREG(st.st_mode) and st.st_uid == uid and now - st.st_mtime > STALE_AFTER
                        and not _writer_alive(entry.name)):
                    os.unlink(entry.path)
            except OSError:
                continue  # gone already, or not ours to remove: leave it


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(folder: str) -> None:
    """Make the rename durable. Best effort: some file systems cannot fsync a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Interrupted(BaseException):
    """A termination signal arrived during the write: unwind, remove the temporary file, then deliver it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _SignalGuard:
    """Turns the first SIGINT/SIGTERM/SIGHUP during the block into :class:`_Interrupted`.

    It does this only in the main thread, and only for signals that are not ignored. A signal that arrives while
    the guard is closing is held and delivered after the old handlers are back.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.closing = False
        self.previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            if not self.closing:
                raise _Interrupted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                old = signal.getsignal(sig)
                if old is signal.SIG_IGN or old is None:  # ignored, or set outside Python: leave it as it is
                    continue
                self.previous[sig] = old
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc_info):
        self.closing = True
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        return False


def _writer(data: Data) -> Callable[[IO[bytes]], object]:
    if isinstance(data, str):
        payload = data.encode("utf-8")
        return lambda handle: handle.write(payload)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return lambda handle: handle.write(data)
    if callable(data):
        return data
    raise TypeError(f"write_atomic: data must be str, bytes or a callable taking a binary file, "
                    f"got {type(data).__name__}")


def _keep_owner(fd: int, old: os.stat_result) -> None:
    """Give the new file the old one's owner and group where allowed (root; or a group we belong to)."""
    if (old.st_uid, old.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except OSError:
        try:
            os.fchown(fd, -1, old.st_gid)
        except OSError:
            pass


def write_atomic(path: str | os.PathLike, data: Data, *, what: str = "output") -> None:
    """Write ``data`` to ``path`` atomically and safely (the rules are in this module's docstring).

    ``data`` is text (written as UTF-8), bytes, or a callable that writes to the binary file object it is
    given (e.g. ``lambda fh: fig.savefig(fh, format="png")``).
    ``what`` names the output in error messages, e.g. "plot" or "table".

    Raises:
        OutputError: the destination is refused, or the write failed (no space, no permission, ...). The
            temporary file is removed and any old file is left untouched.
    """
    write = _writer(data)
    shown = os.fsdecode(os.fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) else path
    target, old = _resolve(what, path)
    folder = os.path.dirname(target) or "."
    mode = stat.S_IMODE(old.st_mode) & 0o777 if old is not None else 0o666 & ~_umask()
    _remove_stale_temporaries(folder)
    tmp: str | None = None
    interrupted: int | None = None
    guard = _SignalGuard()
    try:
        with guard:
            tmp, fd = _create_temporary(folder, os.path.basename(target))
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                if old is not None:
                    _keep_owner(fd, old)
                os.fchmod(fd, mode)
                os.fsync(fd)
            os.replace(tmp, target)
            tmp = None
    except _Interrupted as exc:
        interrupted = exc.signum
    except OSError as exc:
        raise _refuse(what, shown, _reason(exc)) from None
    finally:
        if tmp is not None:
            _unlink_quietly(tmp)
    if interrupted is not None:
        signal.raise_signal(interrupted)  # the handler in force before: by default the process stops here
        raise OutputError(f"{what} {shown!r} not written: interrupted by {signal.Signals(interrupted).name}")
    if guard.signum is not None:  # arrived after the rename, while the guard closed: the file is complete
        signal.raise_signal(guard.signum)
    _fsync_directory(folder)
