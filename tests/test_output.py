"""Safe output files (issue #12, point 3): atomic, permission-preserving, refusing what is not a regular file.

Every expectation here is a property of the file system after the write (bytes, mode, owner, the names in
the directory), observed with os.stat and os.listdir: nothing is compared against gainderive's own output.
"""

import errno
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from gainderive import output
from gainderive.errors import GainDeriveError
from gainderive.output import STALE_AFTER, TEMP_SUFFIX, OutputError, check_destination, write_atomic

IS_ROOT = os.geteuid() == 0


def _temporaries(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(TEMP_SUFFIX))


def _refused(path, match):
    with pytest.raises(OutputError, match=match) as info:
        write_atomic(path, "new\n")
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, GainDeriveError)
    return message


# --- content --------------------------------------------------------------------------------------------------


def test_text_bytes_and_writer_callable_are_written_exactly(tmp_path):
    target = tmp_path / "out.csv"
    write_atomic(target, "q,gain\n1,1.5\u00e9\n")
    assert target.read_bytes() == "q,gain\n1,1.5\u00e9\n".encode()  # text is UTF-8 whatever the locale
    write_atomic(str(target), b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"
    write_atomic(target, lambda fh: (fh.write(b"ab"), fh.write(b"cd")))
    assert target.read_bytes() == b"abcd"
    assert _temporaries(tmp_path) == []


def test_data_of_another_type_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="str, bytes or a callable"):
        write_atomic(tmp_path / "x", 3.0)
    assert os.listdir(tmp_path) == []


# --- destinations that are refused ----------------------------------------------------------------------------


def test_empty_path_and_dash_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "empty" in _refused("", "empty")
    assert "standard output" in _refused("-", "standard output")
    assert os.listdir(tmp_path) == []


def test_directory_is_refused(tmp_path):
    _refused("/", "is a directory")
    _refused(tmp_path, "is a directory")
    _refused(str(tmp_path / "new") + "/", "ending in '/'")
    assert os.listdir(tmp_path) == []


def test_missing_parent_directory_is_refused(tmp_path):
    message = _refused(tmp_path / "no" / "such" / "out.png", "does not exist")
    assert str(tmp_path / "no" / "such") in message
    _refused(tmp_path / "file" / "out.png", "No such file|does not exist")
    (tmp_path / "file").write_text("x")
    _refused(tmp_path / "file" / "out.png", "Not a directory|not a directory")


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            write_atomic(fifo, "x")
        except OutputError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=5)  # an open() of a FIFO without a reader would block forever
    if worker.is_alive():  # unblock the writer so the process can go on, then fail
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("write_atomic blocked on a FIFO")
    assert len(outcome) == 1 and "FIFO" in outcome[0]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _temporaries(tmp_path) == []


def test_character_devices_are_refused_and_left_alone(tmp_path):
    before = os.stat("/dev/null")
    _refused("/dev/null", "character device")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    _refused(tmp_path / "null", "character device")
    assert stat.S_ISCHR(os.lstat(tmp_path / "null").st_mode)


def test_a_symlinked_directory_into_dev_or_proc_is_refused(tmp_path):
    # dl -> /dev made dl/x.csv a new file under /dev; pl -> /proc/self made pl/fd/N whatever fd N is
    (tmp_path / "dl").symlink_to("/dev")
    (tmp_path / "pl").symlink_to("/proc/self")
    _refused(tmp_path / "dl" / "gainderive-test.csv", "/dev and /proc")
    _refused(tmp_path / "pl" / "fd" / "2", "/dev and /proc")
    assert not os.path.exists("/dev/gainderive-test.csv")


def test_standard_output_and_proc_paths_are_refused(tmp_path):
    _refused("/dev/stdout", "/dev and /proc")
    _refused("/proc/self/status", "/dev and /proc")
    link = tmp_path / "out.csv"
    link.symlink_to("/dev/stdout")  # resolves to whatever fd 1 is, possibly a regular file: still refused
    _refused(link, "/dev and /proc")
    assert link.is_symlink()


def test_socket_is_refused(tmp_path):
    import socket

    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        _refused(path, "socket")


@pytest.mark.skipif(IS_ROOT, reason="root may write read-only files, so a normal write would succeed")
def test_read_only_file_is_refused(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    target.chmod(0o444)
    _refused(target, "read-only")
    assert target.read_text() == "old"


# --- symlinks -------------------------------------------------------------------------------------------------


def test_symlink_planted_at_the_temporary_name_cannot_redirect_the_write(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "out.png"
    # the old fixed name, and the next name write_atomic will try, both point at the victim
    (tmp_path / ".out.png.tmp.png").symlink_to(victim)
    planted = f".out.png.planted{TEMP_SUFFIX}"
    (tmp_path / planted).symlink_to(victim)
    names = iter([planted, f".out.png.fresh{TEMP_SUFFIX}"])
    monkeypatch.setattr(output, "_temporary_names", lambda name: names)
    write_atomic(target, "plot")
    assert victim.read_text() == "precious"
    assert target.read_text() == "plot" and not target.is_symlink()
    assert (tmp_path / planted).is_symlink()  # left as found: not ours to remove


def test_symlink_to_a_regular_file_replaces_the_target_and_stays_a_link(tmp_path):
    real = tmp_path / "data" / "table.csv"
    real.parent.mkdir()
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "table.csv"
    link.symlink_to(os.path.relpath(real, tmp_path))
    assert check_destination(link) == real
    write_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert _temporaries(tmp_path) == [] and _temporaries(real.parent) == []


def test_dangling_symlink_and_symlink_to_a_non_file_are_refused(tmp_path):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    _refused(dangling, "dangling symlink")
    assert not (tmp_path / "nowhere").exists()
    to_dir = tmp_path / "to_dir"
    to_dir.symlink_to(tmp_path)
    _refused(to_dir, "which is a directory")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    _refused(loop, "dangling symlink")


@pytest.mark.skipif(not IS_ROOT, reason="creating a symlink owned by another user needs root")
def test_foreign_symlink_in_a_sticky_shared_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = shared / "out.png"
    link.symlink_to(victim)
    _give_away(link, lchown=True)
    _refused(link, "protected_symlinks")
    assert victim.read_text() == "precious"
    os.lchown(link, os.geteuid(), os.getegid())  # our own link: followed
    write_atomic(link, "mine")
    assert victim.read_text() == "mine"


# --- permissions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o664])
def test_an_existing_file_keeps_its_mode(tmp_path, mode):
    target = tmp_path / "out.csv"
    target.write_text("old")
    target.chmod(mode)
    old_umask = os.umask(0o077)  # the umask must not matter for an existing file
    try:
        write_atomic(target, "new")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == mode and target.read_text() == "new"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_honours_the_umask(tmp_path, umask, mode):
    try:
        attributes = os.listxattr(tmp_path)
    except (AttributeError, OSError):  # no xattrs here: no ACL either
        attributes = []
    if "system.posix_acl_default" in attributes:
        pytest.skip("a default ACL on the temporary directory, not the umask, sets new files' modes here")
    old_umask = os.umask(umask)
    try:
        assert output._umask() == umask
        write_atomic(tmp_path / "out.csv", "new")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(tmp_path / "out.csv").st_mode) == mode  # 0o666 & ~umask, as open() gives


@pytest.mark.skipif(not IS_ROOT, reason="giving a file to another user needs root")
def test_an_existing_file_keeps_its_owner_when_root_writes_it(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    _give_away(target)
    write_atomic(target, "new")
    st = os.stat(target)
    assert (st.st_uid, st.st_gid) == (65534, 65534) and target.read_text() == "new"


# --- failures and interruptions -------------------------------------------------------------------------------


def test_no_space_left_gives_an_output_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.csv"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    message = _refused(target, "No space left on device")
    assert str(target) in message
    monkeypatch.undo()

    def writer(fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError, match="No space left"):
        write_atomic(target, writer)
    assert target.read_text() == "old" and _temporaries(tmp_path) == []


def test_an_exception_in_the_writer_propagates_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.png"
    target.write_text("old")

    def writer(fh):
        fh.write(b"partial")
        raise ValueError("renderer failed")

    with pytest.raises(ValueError, match="renderer failed"):
        write_atomic(target, writer)
    assert target.read_text() == "old" and _temporaries(tmp_path) == []


def test_unwritable_directory_is_an_output_error(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, flags, mode=0o777, **kwargs):
        if str(path).endswith(TEMP_SUFFIX):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", denied)  # root ignores directory permissions, so simulate EACCES
    _refused(tmp_path / "out.csv", "Permission denied")
    assert os.listdir(tmp_path) == []


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from gainderive.output import write_atomic

    def slow(fh):
        fh.write(b"partial")
        fh.flush()
        print("ready", flush=True)
        time.sleep(60)

    write_atomic(sys.argv[1], slow)
""")


def _ready(proc) -> bool:
    """True once the writer prints "ready"; False after 30 s without it (never a hung suite)."""
    import select

    readable, _, _ = select.select([proc.stdout], [], [], 30.0)
    return bool(readable) and proc.stdout.readline() == b"ready\n"


def _give_away(path, lchown=False) -> None:
    """chown to nobody (65534), or skip where this root cannot (a user namespace without that id)."""
    try:
        (os.lchown if lchown else os.chown)(path, 65534, 65534)
    except OSError as exc:
        pytest.skip(f"cannot give a file to uid 65534 here: {exc}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_removes_the_temporary_and_keeps_the_old_file(tmp_path, signum):
    target = tmp_path / "out.csv"
    target.write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert _ready(proc)
        assert len(_temporaries(tmp_path)) == 1  # the write is under way
        proc.send_signal(signum)
        proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    # the process ends as the signal would have ended it (Python re-raises SIGINT on an uncaught Ctrl-C)
    assert proc.returncode == -signum
    assert target.read_text() == "old" and _temporaries(tmp_path) == []


def test_a_temporary_left_by_sigkill_is_removed_by_a_later_write_once_stale(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE)
    try:
        assert _ready(proc)
        proc.kill()  # SIGKILL: no handler runs
        proc.wait(timeout=20)
    finally:
        proc.stdout.close()
    left = _temporaries(tmp_path)
    assert len(left) == 1 and target.read_text() == "old"
    write_atomic(target, "new")
    assert _temporaries(tmp_path) == left  # under an hour old: it could be a live writer's, so it stays
    old = time.time() - STALE_AFTER - 60
    os.utime(tmp_path / left[0], (old, old))
    write_atomic(target, "newer")
    assert _temporaries(tmp_path) == [] and target.read_text() == "newer"


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    stale = tmp_path / f".table.csv.0123456789abcdef{TEMP_SUFFIX}"
    fresh = tmp_path / f".table.csv.fedcba9876543210{TEMP_SUFFIX}"
    unrelated = tmp_path / ".table.csv.tmp"
    for path in (stale, fresh, unrelated):
        path.write_text("left by a killed run")
    old = time.time() - 2 * STALE_AFTER
    os.utime(stale, (old, old))
    os.utime(unrelated, (old, old))
    write_atomic(tmp_path / "other.png", "x")
    assert not stale.exists()
    assert fresh.exists() and unrelated.exists()  # a live writer's temporary, and a file not ours


# --- concurrency ----------------------------------------------------------------------------------------------

_CHUNK = 64 * 1024
_CHUNKS = 16


def _writer_process(path, index, barrier):
    barrier.wait()
    for _ in range(3):
        write_atomic(path, lambda fh: [fh.write(bytes([index]) * _CHUNK) for _ in range(_CHUNKS)])


def test_concurrent_writers_leave_one_complete_file(tmp_path):
    target = tmp_path / "out.png"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(8)
    workers = [context.Process(target=_writer_process, args=(str(target), i, barrier)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * 8
    content = target.read_bytes()
    assert len(content) == _CHUNK * _CHUNKS
    assert content == bytes([content[0]]) * len(content) and content[0] < 8  # exactly one writer's bytes
    assert _temporaries(tmp_path) == []


def test_a_long_name_in_a_multibyte_script_is_written(tmp_path):
    # 80 three-byte characters + ".csv" is a valid 244-byte name; the temporary's stem is cut by bytes, not characters
    target = tmp_path / ("日" * 80 + ".csv")
    write_atomic(target, "new")
    assert target.read_text() == "new" and _temporaries(tmp_path) == []


def test_an_old_temporary_of_a_live_writer_is_kept(tmp_path):
    # a long table (raised limits) can keep its temporary open for over an hour: its pid is alive, so a second
    # write to the same directory must not delete it; a dead pid's equally old temporary goes
    old = time.time() - STALE_AFTER - 60
    live = tmp_path / f".out.csv.{os.getpid()}-{'a' * 16}{TEMP_SUFFIX}"
    dead_pid = 2**22 + 12345  # above the largest pid_max Linux allows (2^22): no such process
    dead = tmp_path / f".out.csv.{dead_pid}-{'b' * 16}{TEMP_SUFFIX}"
    for path in (live, dead):
        path.write_text("partial")
        os.utime(path, (old, old))
    write_atomic(tmp_path / "other.csv", "new")
    assert live.exists() and not dead.exists()
