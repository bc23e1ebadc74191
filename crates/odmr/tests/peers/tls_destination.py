#!/usr/bin/python3
"""A destination offering STARTTLS, for the tests in tls.rs of the connections the provider
opens (an ETRN queue run's, the notices' relay): an aiosmtpd SMTP server on 127.0.0.1, port 0,
with the given certificate.

Usage: tls_destination.py CERT KEY [--inject-once]
The port is the first line of stdout. With --inject-once the first STARTTLS is answered with
"220" followed at once by a plaintext "250" in the same write: the STARTTLS command injection
a client must refuse (octets after the 220 would be read as replies inside TLS; RFC 3207
section 4.2); later connections do TLS normally.

Reported on stdout, one JSON line each:
  {"event": "connect"}                                     every connection
  {"event": "data", "tls": bool, "rcpts": [...],            every message taken
   "content": base64 of the octets received}

Stdlib and Debian's python3-aiosmtpd only; run with /usr/bin/python3.
"""

import asyncio
import base64
import json
import ssl
import sys

from aiosmtpd.smtp import SMTP


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


class Handler:
    async def handle_DATA(self, server, session, envelope):
        emit(
            event="data",
            tls=session.ssl is not None,
            rcpts=list(envelope.rcpt_tos),
            content=base64.b64encode(envelope.original_content or envelope.content).decode(),
        )
        return "250 2.0.0 OK taken"


class Server(SMTP):
    inject = False

    def connection_made(self, transport):
        emit(event="connect")
        super().connection_made(transport)

    async def smtp_STARTTLS(self, arg):
        if Server.inject:
            Server.inject = False
            self._writer.write(b"220 2.0.0 Ready to start TLS\r\n250 injected in plaintext\r\n")
            await self._writer.drain()
            return
        await super().smtp_STARTTLS(arg)


def main():
    cert, key = sys.argv[1], sys.argv[2]
    Server.inject = "--inject-once" in sys.argv[3:]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: Server(
                Handler(), hostname="destination.test", decode_data=False, timeout=60, tls_context=ctx
            ),
            "127.0.0.1",
            0,
        )
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
