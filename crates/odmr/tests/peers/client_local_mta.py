#!/usr/bin/python3
"""A scripted local MTA for the tests of `odmr client` (client.rs): an aiosmtpd SMTP server on
127.0.0.1, port 0, whose answers come from a rules file the test may rewrite between polls.

Usage: client_local_mta.py RULES.json
The port is the first line of stdout. The rules file is read afresh for every command:
  {"rcpt": {"carol@example.org": "550 5.1.1 no such user here"},   per-recipient RCPT reply
   "data": "451 4.3.0 local trouble",                              reply to the end of data
   "mail": {"eve@sender.test": "550 5.7.1 not from you"},          per-sender MAIL reply
   "data_command": {"dave@example.org": "452 4.3.1 full"},         reply to the DATA command
                                                                   when it is a recipient
   "pipelining": true}                                             offer PIPELINING in EHLO
A missing or empty file means: accept everything (without PIPELINING).

Every transaction that reaches the end of data is reported on stdout as one JSON line:
  {"event": "data", "from": ..., "rcpts": [...], "mail_options": [...], "reply": ...,
   "content": base64 of the exact octets received (dot-stuffing undone, CRLF kept)}
and every refused RCPT as {"event": "rcpt_refused", "address": ..., "reply": ...}.

Stdlib and Debian's python3-aiosmtpd only; run with /usr/bin/python3.
"""

import asyncio
import base64
import json
import sys

from aiosmtpd.smtp import SMTP


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


class Handler:
    def __init__(self, rules_path):
        self.rules_path = rules_path

    def rules(self):
        try:
            with open(self.rules_path) as f:
                return json.load(f) or {}
        except (OSError, ValueError):
            return {}

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.rules().get("pipelining"):
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.rules().get("mail", {}).get(address.lower())
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rules().get("rcpt", {}).get(address.lower())
        if reply:
            emit(event="rcpt_refused", address=address, reply=reply)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = self.rules().get("data") or "250 2.0.0 OK queued"
        emit(
            event="data",
            **{"from": envelope.mail_from},
            rcpts=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options),
            reply=reply,
            content=base64.b64encode(envelope.original_content or envelope.content).decode(),
        )
        return reply


class Server(SMTP):
    """aiosmtpd has no hook for the DATA command itself (handle_DATA sees the content)."""

    async def smtp_DATA(self, arg):
        rules = self.event_handler.rules().get("data_command", {})
        for rcpt in self.envelope.rcpt_tos:
            if rcpt.lower() in rules:
                await self.push(rules[rcpt.lower()])
                return
        await super().smtp_DATA(arg)


def main():
    handler = Handler(sys.argv[1])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: Server(handler, hostname="localmta.test", decode_data=False, timeout=60),
            "127.0.0.1",
            0,
        )
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
