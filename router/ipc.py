"""Messages between the master and its worker processes: length-prefixed pickles over a
socketpair. Both ends are our own code, started together; nothing else speaks on it.

The master *calls* (``("call", id, kind, *args)``), the worker *replies* (``("reply", id,
*result)``) in the order it received the calls; the worker also sends *notes*
(``("notes", [note, ...])``: what its passive health saw) that need no answer. Every call has a
deadline on the master's side (docs/workers.md).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_LEN = struct.Struct(">I")


def post(writer: asyncio.StreamWriter, msg: Any) -> None:
    """Queue ``msg`` for sending without waiting (the transport buffers it)."""
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LEN.pack(len(data)) + data)


async def send(writer: asyncio.StreamWriter, msg: Any) -> None:
    post(writer, msg)
    await writer.drain()


async def recv(reader: asyncio.StreamReader) -> Any:
    """The next message; raises asyncio.IncompleteReadError when the other end is gone."""
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return pickle.loads(await reader.readexactly(n))
