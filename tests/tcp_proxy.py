"""A TCP forwarder that tests put between workers and PostgreSQL: killing it makes the database
unreachable for the workers (connections reset, new ones refused), starting it again on the same
port brings the database back.

    python -m tests.tcp_proxy LISTEN_PORT TARGET_HOST TARGET_PORT [LISTEN_HOST]

LISTEN_HOST defaults to 127.0.0.1 (scripts/two_hosts.py listens on its veth addresses).
"""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _serve(listen_port: int, host: str, port: int, listen_host: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(handle, listen_host, listen_port, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), listen))
