#!/usr/bin/python3
"""A scripted ODMR provider (RFC 2645) for the tests of `odmr client` (client_scripted.rs).

It listens on 127.0.0.1, port 0, and prints the port as the first line of stdout. Then it serves
exactly one connection:

Front half (the provider's side): 220; EHLO answered with AUTH CRAM-MD5 and ATRN; AUTH CRAM-MD5
verified with hmac against --user/--password (535 on a mismatch); the exact ATRN line recorded
and answered with --atrn-reply. Any reply but 250 ends the front half: the commands that follow
(the client's QUIT) are recorded and QUIT gets 221.

After a 250 the roles flip on the same connection and the script becomes the SMTP client. What
it does then is the scenario (--after):
  deliver   read the client's 220, EHLO, deliver every message of --messages (a JSON list of
            {"from": ..., "to": [...], "data": ...}; LF line ends are sent as CRLF, dot-stuffed),
            in lockstep, then QUIT.
  drop      as deliver, but the LAST message is cut: MAIL, RCPT, DATA, then --drop-after bytes
            of its body, then the connection is closed (no end-of-data marker, no QUIT).
  stall     as drop, but instead of closing, keep the connection open and silent after those
            bytes; record when (whether) the client closes it.
  silent    read the client's 220 and then send nothing; record when (whether) the client closes.
--coalesce sends the 250 to ATRN and our EHLO in one write (one TCP segment on loopback), before
the client's 220: the client has to keep the EHLO it read together with the 250.
--bdat N (with deliver) sends the messages by BDAT (RFC 3030), which the client must offer
(CHUNKING): every transaction in one write, all of them pipelined without waiting (RSET ahead of
each after the first), each body in chunks of N octets (the last with LAST; BDAT 0 LAST for an
empty one), sent exactly as given with LF made CRLF: no dot-stuffing, no line end added. The
replies are paired with the commands by counting; the LAST chunk's is recorded as "DATA-END".

Output: after the port line, one JSON object per line on stdout, flushed at once:
  {"event": "cmd", "line": ...}          every line the client sent before the turnaround
                                         (the AUTH response is recorded decoded, as "auth")
  {"event": "auth", "user": ..., "ok": bool}
  {"event": "atrn", "line": ...}         the exact ATRN command line
  {"event": "greeting", "reply": ...}    the client's 220 after the turnaround
  {"event": "ehlo", "lines": [...]}      the client's reply to our EHLO
  {"event": "reply", "to": ..., "reply": ...}   each reply after the turnaround ("to" is the
                                         command, "DATA-END" for the end of a message)
  {"event": "dropped", "bytes": n}       the connection was cut mid-DATA on purpose
  {"event": "stalled", "bytes": n}       (stall) that much of the last body was sent; now silent
  {"event": "client_closed", "after": seconds}  the client closed the connection (silent)
  {"event": "error", "message": ...}     something unexpected: the tests fail on it
  {"event": "done"}                      the connection is over
Every socket read has a deadline (--read-timeout), so the script never hangs.

Stdlib only; run with /usr/bin/python3.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import sys
import time

HOSTNAME = "provider.test"


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


class Closed(Exception):
    pass


class Timeout(Exception):
    pass


class Conn:
    """Lines over a socket, with a deadline on every read."""

    def __init__(self, sock, timeout):
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()

    def send(self, data):
        self.sock.sendall(data)

    def line(self, timeout=None):
        """The next line without CRLF, as text (latin-1). Raises Closed at EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line.decode("latin-1")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout()
            except ConnectionResetError:
                raise Closed()
            if not data:
                raise Closed()
            self.buf += data

    def reply(self):
        """A whole reply: the list of its lines."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines


def stuff(data):
    """LF or CRLF text -> CRLF lines, dot-stuffed, ending with CRLF (no end marker)."""
    text = data.replace(b"\r\n", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    out = []
    for line in text.split(b"\n")[:-1]:
        if line.startswith(b"."):
            line = b"." + line
        out.append(line + b"\r\n")
    return b"".join(out)


def front_half(c, a):
    """The provider's front half. Returns True when the connection was turned around."""
    c.send(("220 %s ESMTP ODMR service ready\r\n" % HOSTNAME).encode())
    challenge = None
    while True:
        line = c.line()
        verb = line.split(" ", 1)[0].upper()
        if verb == "ATRN":
            emit(event="atrn", line=line)
        else:
            emit(event="cmd", line=line)
        if verb == "EHLO":
            c.send(
                ("250-%s\r\n250-AUTH CRAM-MD5\r\n250-8BITMIME\r\n250 ATRN\r\n" % HOSTNAME).encode()
            )
        elif verb == "AUTH":
            challenge = "<%d.%d@%s>" % (os.getpid(), time.time_ns(), HOSTNAME)
            c.send(b"334 " + base64.b64encode(challenge.encode()) + b"\r\n")
            resp = c.line()
            try:
                user, digest = base64.b64decode(resp).decode("latin-1").rsplit(" ", 1)
            except Exception:
                user, digest = "", ""
            want = hmac.new(a.password.encode(), challenge.encode(), hashlib.md5).hexdigest()
            ok = user == a.user and hmac.compare_digest(digest, want)
            emit(event="auth", user=user, ok=ok)
            if ok:
                c.send(b"235 2.7.0 Authentication successful\r\n")
            else:
                c.send(b"535 5.7.8 Authentication credentials invalid\r\n")
        elif verb == "ATRN":
            reply = a.atrn_reply
            if reply.startswith("250"):
                if a.coalesce:
                    # The 250 and our EHLO in one write: the client reads them together.
                    c.send((reply + "\r\nEHLO " + HOSTNAME + "\r\n").encode())
                else:
                    c.send((reply + "\r\n").encode())
                return True
            c.send((reply + "\r\n").encode())
        elif verb == "QUIT":
            c.send(b"221 2.0.0 bye\r\n")
            return False
        elif verb == "NOOP":
            c.send(b"250 2.0.0 ok\r\n")
        else:
            c.send(b"502 5.5.1 not here\r\n")


def ask(c, line, name=None):
    c.send((line + "\r\n").encode("latin-1"))
    r = c.reply()
    emit(event="reply", to=name or line, reply="\n".join(r))
    return r


def wait_for_close(c, a):
    """Send nothing and wait for the client to close the connection."""
    start = time.monotonic()
    try:
        extra = c.line(timeout=a.read_timeout)
        if extra.startswith("421"):
            # A server may say why it gives up (RFC 5321 4.5.3.2); it must close then.
            emit(event="reply", to="(silence)", reply=extra)
            extra = c.line(timeout=a.read_timeout)
        emit(event="error", message="the client sent %r to a silent provider" % extra)
    except Closed:
        emit(event="client_closed", after=round(time.monotonic() - start, 3))
    except Timeout:
        emit(event="error", message="the client kept the connection open for %ss" % a.read_timeout)


def turned_around(c, a, messages):
    greeting = c.reply()
    emit(event="greeting", reply="\n".join(greeting))
    if not greeting[0].startswith("220"):
        emit(event="error", message="no 220 after the turnaround: %r" % greeting)
        return
    if a.after == "silent":
        wait_for_close(c, a)
        return
    if a.coalesce:
        ehlo = c.reply()  # our EHLO was already sent with the 250
    else:
        c.send(("EHLO %s\r\n" % HOSTNAME).encode())
        ehlo = c.reply()
    emit(event="ehlo", lines=ehlo)
    if not ehlo[0].startswith("250"):
        emit(event="error", message="EHLO refused: %r" % ehlo)
        return
    if a.bdat:
        if not any(l[4:].upper() == "CHUNKING" for l in ehlo[1:]):
            emit(event="error", message="--bdat, but the client does not offer CHUNKING: %r" % ehlo)
            return
        deliver_bdat(c, a, messages)
        ask(c, "QUIT")
        return
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        cut = a.after in ("drop", "stall") and last
        if not ask(c, "MAIL FROM:<%s>" % m["from"])[0].startswith("250"):
            ask(c, "RSET")
            continue
        accepted = 0
        for t in m["to"]:
            if ask(c, "RCPT TO:<%s>" % t)[0].startswith("250"):
                accepted += 1
        if not accepted:
            ask(c, "RSET")
            continue
        if not ask(c, "DATA")[0].startswith("354"):
            continue
        body = stuff(m["data"].encode("utf-8"))
        if cut:
            part = body[: a.drop_after]
            c.send(part)
            if a.after == "stall":
                emit(event="stalled", bytes=len(part))
                wait_for_close(c, a)
                return
            time.sleep(0.2)
            c.sock.shutdown(socket.SHUT_RDWR)
            c.sock.close()
            emit(event="dropped", bytes=len(part))
            return
        c.send(body + b".\r\n")
        emit(event="reply", to="DATA-END", reply="\n".join(c.reply()))
    ask(c, "QUIT")


def deliver_bdat(c, a, messages):
    """Every message by BDAT, all transactions in one write; replies paired by counting."""
    wire = bytearray()
    asked = []  # what each expected reply answers, in order
    for i, m in enumerate(messages):
        if i:
            wire += b"RSET\r\n"
            asked.append("RSET")
        for line in ["MAIL FROM:<%s>" % m["from"]] + ["RCPT TO:<%s>" % t for t in m["to"]]:
            wire += (line + "\r\n").encode("latin-1")
            asked.append(line)
        body = m["data"].encode("utf-8").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        pieces = [body[k : k + a.bdat] for k in range(0, len(body), a.bdat)] or [b""]
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            cmd = "BDAT %d%s" % (len(piece), " LAST" if last else "")
            wire += cmd.encode() + b"\r\n" + piece
            asked.append("DATA-END" if last else cmd)
    c.send(bytes(wire))
    for name in asked:
        emit(event="reply", to=name, reply="\n".join(c.reply()))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--atrn-reply", default="250 2.0.0 OK now reversing the connection")
    p.add_argument("--after", choices=["deliver", "drop", "stall", "silent"], default="deliver")
    p.add_argument("--messages", help="JSON file: a list of {from, to, data}")
    p.add_argument("--drop-after", type=int, default=1000, help="body bytes sent before the cut")
    p.add_argument("--coalesce", action="store_true", help="send 250 and EHLO in one write")
    p.add_argument("--bdat", type=int, default=0, help="deliver by BDAT in chunks of N octets")
    p.add_argument("--read-timeout", type=float, default=30.0)
    a = p.parse_args()
    messages = []
    if a.messages:
        with open(a.messages) as f:
            messages = json.load(f)

    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    print(lst.getsockname()[1], flush=True)
    lst.settimeout(a.read_timeout)
    try:
        sock, _ = lst.accept()
    except socket.timeout:
        emit(event="error", message="no connection within %ss" % a.read_timeout)
        emit(event="done")
        return
    lst.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = Conn(sock, a.read_timeout)
    try:
        if front_half(c, a):
            turned_around(c, a, messages)
        else:
            # The client should close after our 221.
            try:
                extra = c.line(timeout=5)
                emit(event="error", message="the client sent %r after QUIT" % extra)
            except (Closed, Timeout):
                pass
    except Closed:
        emit(event="error", message="the client closed the connection unexpectedly")
    except Timeout:
        emit(event="error", message="timed out waiting for the client")
    except OSError as e:
        emit(event="error", message="socket error: %s" % e)
    try:
        sock.close()
    except OSError:
        pass
    emit(event="done")


if __name__ == "__main__":
    main()
