"""The file store: the routing state as one YAML file, replaced atomically (docs/state.md).

A crash at any instant -- the process killed, the machine losing power -- must leave either the
old file or the new one, never a torn mix.  ``save`` gets that from the usual sequence:

1. write the whole document to a temporary file *in the same directory* (``os.replace`` is only
   atomic within one file system, and the directory is the one place sure to be on the same one);
2. ``fsync`` it, so its bytes are on disk before any name points at them -- without this a
   power loss after the rename can leave the new name pointing at an empty or partial file;
3. ``os.replace`` it onto the real name: readers see the old inode or the new one, nothing else;
4. ``fsync`` the directory, so the rename itself is durable: only then may the caller answer
   "accepted".

A process killed between 1 and 3 leaves a stray ``.<name>.<pid>.<n>.tmp`` beside the state file
and the old state intact.  The router removes them when it starts (:func:`remove_strays`):
it is the files' only writer (workers never write), so no save can be in progress then; the
history file's strays go the same way.

:class:`FileStore` is the file itself (synchronous) and knows nothing about what the mapping
contains; the caller validates it. :class:`FileStateStore` offers it through the common
:class:`~router.control.store.base.Store` interface, with the history of changes in a second file beside
it (:class:`HistoryFile`); of the mapping it reads only ``change``, the history entry of the
change that made the state, to mend the history after a crash.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import json
import logging
import os
import threading
from collections import deque
from typing import Any, Callable, TypeVar

import yaml

from ..history import HISTORY_LIMIT
from .base import Store, StoreConflict, StoreError

T = TypeVar("T")

__all__ = ["FileStateStore", "FileStore", "StoreError"]

# Temporary file names are unique per process (pid) and per save (counter), so that concurrent
# saves -- threads, or workers sharing the directory -- never write into each other's file.
_counter = itertools.count(1)
log = logging.getLogger("router.store")

# Saving uses libyaml's emitter when PyYAML was built with it: the same document, about twice as
# fast, and a save runs before every admin answer.  Loading deliberately does not: libyaml's
# parser crashes the process (SIGSEGV) on a file nested ~30000 levels deep, where the pure-Python
# loader raises RecursionError, which becomes a StoreError.  A load runs once per start (~60 ms
# for a 50 KB state), so robustness against a damaged file wins.
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# The state holds the admin view of every app (backends, release, later maybe secrets): owner only.
_MODE = 0o600


class FileStore:
    """The routing state in one YAML file at ``path``."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FileStore({self.path!r})"

    def load(self) -> dict[str, object] | None:
        """The stored mapping; ``None`` if there is no file; :class:`StoreError` if unusable."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the state file: {_reason(exc)}") from exc
        try:
            data = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
            # str(exc) of a YAML error carries the line and column.  Constructors raise plain
            # ValueError for a well-formed scalar with an impossible value ("2026-13-45",
            # "!!int xyz").
            detail = " ".join(str(exc).split())
            raise StoreError(f"{self.path}: the state file is not valid YAML: {detail}") from exc
        if not isinstance(data, dict):
            # An empty file parses as None; save never writes one, so it is damage too.
            got = "an empty document" if data is None else type(data).__name__
            raise StoreError(f"{self.path}: the state file must hold a mapping, not {got}")
        return data

    def save(self, data: dict[str, object]) -> None:
        """Replace the stored state with ``data``, atomically and durably (see the module doc).

        On any failure the old file is left as it was, no temporary file remains, and
        :class:`StoreError` is raised.
        """
        if not isinstance(data, dict):
            # load() refuses anything else, so writing it would brick the next start.
            raise StoreError(
                f"{self.path}: the state must be a mapping, not {type(data).__name__}")
        try:
            payload = yaml.dump(data, Dumper=_Dumper, sort_keys=False).encode("utf-8")
        except (yaml.YAMLError, RecursionError) as exc:
            raise StoreError(f"{self.path}: cannot serialise the state: {exc}") from exc

        replace_atomically(self.path, payload, "the state file")


def replace_atomically(path: str, payload: bytes, what: str) -> None:
    """Replace the file ``path`` (``what``, for messages) with ``payload``, atomically and
    durably (see the module doc): on any failure the old file is left as it was, no temporary
    file remains, and :class:`StoreError` is raised."""
    # "router-state.yaml" has dirname "": the temp file and the fsync go to the cwd.
    directory = os.path.dirname(path) or "."
    base = os.path.basename(path)
    pid = os.getpid()
    while True:
        tmp = os.path.join(directory, f".{base}.{pid}.{next(_counter)}.tmp")
        try:
            # O_EXCL: never reuse a stray file left by a killed process that had our pid.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _MODE)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise StoreError(
                f"{path}: cannot create a temporary file in {directory}: {_reason(exc)}"
            ) from exc

    try:
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise StoreError(f"{path}: cannot write {what}: {_reason(exc)}") from exc
    except BaseException:
        # KeyboardInterrupt, a cancelled thread...: no stray file either.
        _remove_quietly(tmp)
        raise
    try:
        _fsync_dir(directory)
    except OSError as exc:
        # The new file is in place but the rename may not survive a power loss: the caller
        # must not report the change as persisted.
        raise StoreError(
            f"{path}: written, but the directory {directory} could not be synced: {_reason(exc)}"
        ) from exc


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        # os.write may write less than asked (signals, quotas): loop until done.
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: str) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class HistoryFile:
    """The history beside the state file: one JSON entry per line, oldest first.

    An entry is appended (and fsynced) right after the state file it belongs to is replaced;
    once the file holds twice :data:`HISTORY_LIMIT` lines it is rewritten, atomically, with the
    newest :data:`HISTORY_LIMIT`, so that it stays bounded without a rewrite per change. A crash
    between the two writes loses that one entry from this file, but the state file carries the
    entry of the change that made it, and ``FileStateStore.load`` adds it back.
    """

    __slots__ = ("path", "_lines")

    def __init__(self, path: str) -> None:
        self.path = path
        self._lines = 0

    def load(self) -> list[dict[str, Any]]:
        """The entries, oldest first; a damaged line (a torn append) is skipped and logged."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the history: {_reason(exc)}") from exc
        self._lines = len(lines)
        entries = []
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and isinstance(entry.get("generation"), int):
                entries.append(entry)
            elif line.strip():
                log.warning("%s: line %d is not a history entry; skipped", self.path, number)
        return entries

    def append(self, entry: dict[str, Any], newest: list[dict[str, Any]]) -> None:
        """Add ``entry``; ``newest`` (oldest first, ending with ``entry``) is what a rewrite
        keeps."""
        if self._lines + 1 >= 2 * HISTORY_LIMIT:
            replace_atomically(self.path, b"".join(_line(e) for e in newest), "the history")
            self._lines = len(newest)
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _MODE)
            try:
                _write_all(fd, _line(entry))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot append to the history: {_reason(exc)}") from exc
        self._lines += 1


def _line(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def history_path(state_path: str) -> str:
    """``/var/lib/router/router-state.yaml`` -> ``/var/lib/router/router-state.history.jsonl``."""
    return os.path.splitext(state_path)[0] + ".history.jsonl"


class FileStateStore(Store):
    """The file store behind the common interface, with its history file beside it.

    This process is the files' only writer (workers never write; a second router on the same
    file is not supported), so there is nothing to watch and a conflict can only be a bug. The
    version counts the saves since this process loaded the file: 0 without a file.
    """

    def __init__(self, path: str, secret_path: str | None = None) -> None:
        self.file = FileStore(path)
        self.history_file = HistoryFile(history_path(path))
        self.name = path
        # The sticky secret's file (in the state directory, unless sticky.secret_file names
        # another); None: a random secret for this process only.
        self._secret_path = secret_path
        self._version = 0
        # Newest first; read from the history file on first use. Changed only on the event
        # loop, so that a read never meets a save half-way.
        self._history: deque[dict[str, Any]] | None = None
        self._started = False

    def __repr__(self) -> str:
        return f"FileStateStore({self.name!r})"

    async def load(self) -> tuple[dict[str, Any] | None, int]:
        data, self._history = await off_loop(self._load)
        self._version = 0 if data is None else 1
        return data, self._version

    def _load(self) -> tuple[dict[str, Any] | None, deque[dict[str, Any]]]:
        if not self._started:  # once, at start: no save of this process can be under way
            self._started = True
            for path in (self.file.path, self.history_file.path):
                remove_strays(path)
        data = self.file.load()
        history = self._read_history()
        last = data.get("change") if data is not None else None
        if (isinstance(last, dict) and isinstance(last.get("generation"), int)
                and (not history or history[0]["generation"] < last["generation"])):
            # The process stopped between writing the state and its history entry.
            history.appendleft(last)
            self.history_file.append(last, list(reversed(history)))
        return data, history

    def _read_history(self) -> deque[dict[str, Any]]:
        return deque(reversed(self.history_file.load()[-HISTORY_LIMIT:]), maxlen=HISTORY_LIMIT)

    async def save(self, data: dict[str, Any], expected_version: int,
                   entry: dict[str, Any] | None = None, resolves: str | None = None) -> int:
        if expected_version != self._version:
            raise StoreConflict(f"{self.name}: version {self._version}, not {expected_version}")
        history = await self._loaded_history()
        keep = None
        if entry is not None:
            history.appendleft(entry)
            keep = list(reversed(history))
        try:
            # Off the event loop: the fsyncs take milliseconds, and the data plane shares the loop.
            await off_loop(self._write, data, entry, keep)
        except StoreError:
            if entry is not None:
                history.popleft()
            self.up = False
            raise
        self.up = True
        self._version += 1
        return self._version

    def _write(self, data: dict[str, Any], entry: dict[str, Any] | None,
               keep: list[dict[str, Any]] | None) -> None:
        self.file.save(data)
        if entry is None or keep is None:
            return
        try:
            self.history_file.append(entry, keep)
        except StoreError as e:
            # The change is saved; its entry stays in memory and in the state file, which
            # puts it back into the history file at the next start.
            log.error("%s", e)

    async def history(self) -> list[dict[str, Any]]:
        return list(await self._loaded_history())

    async def _loaded_history(self) -> deque[dict[str, Any]]:
        if self._history is None:
            self._history = await off_loop(self._read_history)
        return self._history

    async def secret(self) -> bytes:
        from ...dataplane.sticky import load_or_create_secret

        return load_or_create_secret(self._secret_path)


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread of its own that ends with it, awaited: the file's reads and
    fsyncs take milliseconds, and the data plane shares the event loop.

    Not the loop's default executor: its threads stay once made, and a process with a second
    thread pays for it in every system call on a socket (the kernel takes a reference on the
    file per call once its table of open files is shared; docs/performance.md)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # handed to the awaiting task as it is
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop closed meanwhile: nobody awaits it any more

    threading.Thread(target=run, name="router-file", daemon=True).start()
    return await done


def remove_strays(path: str) -> int:
    """Remove the temporary files that interrupted saves of ``path`` left; how many there were."""
    directory = os.path.dirname(path) or "."
    base = glob.escape(os.path.basename(path))
    removed = 0
    for stray in glob.glob(os.path.join(glob.escape(directory), f".{base}.*.tmp")):
        try:
            os.unlink(stray)
            removed += 1
        except OSError as exc:
            log.warning("%s: cannot remove a stray temporary file: %s", stray, _reason(exc))
    if removed:
        log.info("%s: removed %d temporary file%s left by interrupted saves", path, removed,
                 "s" if removed > 1 else "")
    return removed


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
