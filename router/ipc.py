"""Messages between the master and its worker processes: length-prefixed pickles over a
socketpair. Both ends are our own code, started together; nothing else speaks on it.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_LEN = struct.Struct(">I")


async def send(writer: asyncio.StreamWriter, msg: Any) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LEN.pack(len(data)) + data)
    await writer.drain()


async def recv(reader: asyncio.StreamReader) -> Any:
    """The next message; raises asyncio.IncompleteReadError when the other end is gone."""
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return pickle.loads(await reader.readexactly(n))
