"""The file store: the routing state as one YAML file, replaced atomically (SPEC 6).

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
and the old state intact.  The router removes them when it starts (:meth:`FileStore.remove_strays`):
it is the file's only writer (workers never write), so no save can be in progress then.

This module knows nothing about what the mapping contains; the caller validates it.
:class:`FileStore` is the file itself (synchronous); :class:`FileStateStore` offers it through the
common :class:`~router.store.base.Store` interface.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import logging
import os
from typing import Any

import yaml

from .base import Store, StoreConflict, StoreError

__all__ = ["FileStateStore", "FileStore", "StoreError"]

log = logging.getLogger("router.store")

# Temporary file names are unique per process (pid) and per save (counter), so that concurrent
# saves -- threads, or workers sharing the directory -- never write into each other's file.
_counter = itertools.count(1)

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

    __slots__ = ("path", "_dir")

    def __init__(self, path: str) -> None:
        self.path = path
        # "router-state.yaml" has dirname "": the temp file and the fsync go to the cwd.
        self._dir = os.path.dirname(path) or "."

    def __repr__(self) -> str:
        return f"FileStore({self.path!r})"

    def remove_strays(self) -> int:
        """Remove the temporary files that interrupted saves left; how many there were."""
        base = glob.escape(os.path.basename(self.path))
        removed = 0
        for stray in glob.glob(os.path.join(glob.escape(self._dir), f".{base}.*.tmp")):
            try:
                os.unlink(stray)
                removed += 1
            except OSError as exc:
                log.warning("%s: cannot remove a stray temporary file: %s", stray, _reason(exc))
        if removed:
            log.info("%s: removed %d temporary file%s left by interrupted saves", self.path,
                     removed, "s" if removed > 1 else "")
        return removed

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

        base = os.path.basename(self.path)
        pid = os.getpid()
        while True:
            tmp = os.path.join(self._dir, f".{base}.{pid}.{next(_counter)}.tmp")
            try:
                # O_EXCL: never reuse a stray file left by a killed process that had our pid.
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _MODE)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise StoreError(
                    f"{self.path}: cannot create a temporary file in {self._dir}: {_reason(exc)}"
                ) from exc

        try:
            try:
                view = memoryview(payload)
                while view:
                    # os.write may write less than asked (signals, quotas): loop until done.
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            _remove_quietly(tmp)
            raise StoreError(f"{self.path}: cannot write the state file: {_reason(exc)}") from exc
        except BaseException:
            # KeyboardInterrupt, a cancelled thread...: no stray file either.
            _remove_quietly(tmp)
            raise

        try:
            dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            # The new file is in place but the rename may not survive a power loss: the caller
            # must not report the change as persisted.
            raise StoreError(
                f"{self.path}: written, but the directory {self._dir} could not be synced:"
                f" {_reason(exc)}"
            ) from exc


class FileStateStore(Store):
    """The file store behind the common interface.

    This process is the file's only writer (workers never write; a second router on the same
    file is not supported), so there is nothing to watch and a conflict can only be a bug. The
    version counts the saves since this process loaded the file: 0 without a file.
    """

    def __init__(self, path: str, secret_path: str | None = None) -> None:
        self.file = FileStore(path)
        self.name = path
        # The sticky secret's file (in the state directory, unless sticky.secret_file names
        # another); None: a random secret for this process only.
        self._secret_path = secret_path
        self._version = 0
        self._started = False

    def __repr__(self) -> str:
        return f"FileStateStore({self.name!r})"

    async def load(self) -> tuple[dict[str, Any] | None, int]:
        if not self._started:  # once, at start: no save of this process can be under way
            self._started = True
            await asyncio.get_running_loop().run_in_executor(None, self.file.remove_strays)
        data = await asyncio.get_running_loop().run_in_executor(None, self.file.load)
        self._version = 0 if data is None else 1
        return data, self._version

    async def save(self, data: dict[str, Any], expected_version: int) -> int:
        if expected_version != self._version:
            raise StoreConflict(f"{self.name}: version {self._version}, not {expected_version}")
        try:
            # Off the event loop: the fsyncs take milliseconds, and the data plane shares the loop.
            await asyncio.get_running_loop().run_in_executor(None, self.file.save, data)
        except StoreError:
            self.up = False
            raise
        self.up = True
        self._version += 1
        return self._version

    async def secret(self) -> bytes:
        from ..sticky import load_or_create_secret

        return load_or_create_secret(self._secret_path)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
