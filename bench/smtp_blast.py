"""The fastest an SMTP client can be on this machine: how many messages per second one
Python process gets into an SMTP server with nothing else to do — no Redis, no Celery,
no rendering, one asyncio loop, ``--connections`` sessions sending side by side, each
message a plain MAIL / RCPT / DATA transaction of a ~300-byte message.

bench/send.py runs it (``--ceiling``) against the same sink as sendbeat's worker, so the
report shows how close the worker comes to what the machine allows.

    .venv/bin/python bench/smtp_blast.py --port 2525 --n 5000 [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

BODY = (
    b"From: Reports <reports@example.com>\r\nTo: alice@example.com\r\n"
    b"Subject: Report\r\nMessage-ID: <blast@example.com>\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n\r\n'
    + b"Hello, here is your daily report: everything ran on time.\r\n" * 4
    + b".\r\n"
)
TRANSACTION = (b"MAIL FROM:<reports@example.com>\r\n", b"RCPT TO:<alice@example.com>\r\n",
               b"DATA\r\n")  # fmt: skip


async def reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply (the last line of a multi-line one); fails on anything but 2xx/3xx."""
    while True:
        line = await reader.readline()
        if not line or line[:1] not in (b"2", b"3"):
            raise RuntimeError(f"SMTP server answered {line!r}")
        if line[3:4] != b"-":
            return line


async def session(host: str, port: int, todo: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    await reply(reader)
    writer.write(b"EHLO blast.example.com\r\n")
    await reply(reader)
    while todo:
        todo.pop()
        for command in TRANSACTION:
            writer.write(command)
            await reply(reader)
        writer.write(BODY)
        await reply(reader)
    writer.write(b"QUIT\r\n")
    await reply(reader)
    writer.close()


async def blast(host: str, port: int, n: int, connections: int) -> None:
    todo = list(range(n))
    await asyncio.gather(*(session(host, port, todo) for _ in range(connections)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    asyncio.run(blast(args.host, args.port, args.n, args.connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
