#!/usr/bin/python3
"""A scripted ODMR customer (RFC 2645) for odmr's tests.

Front half: connects to the provider's ODMR port, sends EHLO, authenticates with AUTH CRAM-MD5
(the response is computed by the standard library's smtplib) and sends ATRN. If the reply is 250
the roles flip on the same TCP connection and this script becomes the SMTP server: it greets,
answers EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP and QUIT as the flags say, dot-unstuffs DATA, and
records everything it receives.

Everything after the turnaround is read through one buffer that was already in use for the front
half, so bytes that arrive together with the ATRN reply are never lost.

Output: one JSON report on stdout (see `report` below). Progress events go to stderr as lines
starting with "EVENT " (the tests wait for "EVENT atrn ..." to know that the ATRN was answered).
Exit status 0 unless something unexpected happened (a protocol violation by the provider, a
timeout, a lost connection that was not asked for); then the reasons are on stderr and in
report["errors"], and the status is 1. Every socket read has a deadline.

Stdlib only; run with /usr/bin/python3.
"""

import argparse
import base64
import json
import re
import select
import smtplib
import socket
import sys
import time

HOSTNAME = "customer.test"


class Timeout(Exception):
    pass


class Unexpected(Exception):
    pass


class Reader:
    """A line reader over a socket, with a deadline on every read."""

    def __init__(self, sock, timeout):
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout()
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout()
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
        self.buf += data
        return len(data)

    def raw_line(self, timeout=None):
        """The next line including its terminator; None at EOF (a partial line is returned)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[: nl + 1])
                del self.buf[: nl + 1]
                return line
            if self.eof:
                if self.buf:
                    line = bytes(self.buf)
                    self.buf.clear()
                    return line
                return None
            self._fill(deadline)

    def line(self, timeout=None):
        """The next CRLF-terminated line without CRLF; None at EOF."""
        raw = self.raw_line(timeout)
        if raw is None:
            return None
        if not raw.endswith(b"\r\n"):
            raise Unexpected("line not terminated by CRLF: %r" % raw)
        return raw[:-2]

    def reply(self, timeout=None):
        """A whole SMTP reply: (code, [lines])."""
        lines = []
        while True:
            l = self.line(timeout)
            if l is None:
                raise Unexpected("connection closed while waiting for a reply (got %r)" % lines)
            s = l.decode("latin-1")
            if len(s) < 3 or not s[:3].isdigit():
                raise Unexpected("malformed reply line %r" % s)
            lines.append(s)
            if len(s) == 3 or s[3] != "-":
                return int(s[:3]), lines

    def drain(self):
        """Pull in whatever is already readable, without waiting; the bytes now buffered."""
        while not self.eof:
            r, _, _ = select.select([self.sock], [], [], 0)
            if not r:
                break
            self.sock.settimeout(0)
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, socket.timeout):
                break
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.eof = True
            self.buf += data
        return len(self.buf)

    def wait_eof(self, timeout):
        """Wait until the peer closes; returns the bytes received meanwhile. Raises Timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline)
        data = bytes(self.buf)
        self.buf.clear()
        return data


def event(*words):
    print("EVENT", *words, file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--domains", help="ATRN argument (d1,d2); omitted: a bare ATRN")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of every read, seconds")
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--no-8bitmime", action="store_true")
    p.add_argument("--size", type=int, help="advertise SIZE N and enforce it on MAIL")
    p.add_argument("--reject-ehlo", action="store_true", help="answer EHLO with 502")
    # A reply of several lines is given whole, its lines separated by CRLF ("550-a\r\n550 b").
    p.add_argument("--rcpt-reply", action="append", default=[], metavar="ADDR=CODE TEXT")
    p.add_argument("--mail-reply", metavar="CODE TEXT")
    p.add_argument("--data-reply", metavar="CODE TEXT", help="reply to the final dot")
    p.add_argument("--drop-after-data-bytes", type=int, metavar="N")
    p.add_argument("--hold", type=float, default=0.0, help="seconds to wait before the 220")
    p.add_argument("--no-greeting", action="store_true", help="never send 220; wait for the close")
    p.add_argument("--greeting-with-atrn", action="store_true", help="send ATRN and 220 in one write")
    a = p.parse_args(argv)
    a.rcpt_replies = {}
    for spec in a.rcpt_reply:
        addr, _, reply = spec.partition("=")
        if not re.match(r"^[2-5]\d\d([ -]|$)", reply):
            p.error("--rcpt-reply wants ADDR=CODE TEXT, got %r" % spec)
        a.rcpt_replies[addr.lower()] = reply
    for name in ("mail_reply", "data_reply"):
        v = getattr(a, name)
        if v is not None and not re.match(r"^[2-5]\d\d([ -]|$)", v):
            p.error("--%s wants CODE TEXT, got %r" % (name.replace("_", "-"), v))
    return a


def cram_md5_response(user, password, challenge):
    """CRAM-MD5 as the standard library's SMTP client computes it (RFC 2195)."""
    client = smtplib.SMTP()  # not connected: used only for its CRAM-MD5 implementation
    client.user, client.password = user, password
    return client.auth_cram_md5(challenge)


PATH_RE = re.compile(r"^(MAIL FROM|RCPT TO):<([^<>\s]*)>((?: [A-Za-z0-9][A-Za-z0-9-]*(?:=\S+)?)*)$", re.I)


class Customer:
    def __init__(self, args):
        self.a = args
        self.errors = []
        self.report = {
            "atrn_command": None,
            "atrn_reply": None,
            "atrn_code": None,
            "greeting_sent": False,
            "ehlo": None,
            "helo": None,
            "commands": [],
            "messages": [],
            "quit": False,
            "provider_closed": False,
            "closed_after_seconds": None,
            "dropped": False,
            "errors": self.errors,
        }
        self.sock = None
        self.r = None

    # ----- plumbing -----

    def send(self, data):
        self.sock.sendall(data)

    def say(self, line):
        self.send(line.encode("latin-1") + b"\r\n")

    def fail(self, why):
        self.errors.append(why)
        print("odmr_customer: " + why, file=sys.stderr, flush=True)

    # ----- front half -----

    def front_half(self):
        a = self.a
        self.sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
        self.r = Reader(self.sock, a.timeout)
        code, lines = self.r.reply()
        if code != 220:
            raise Unexpected("provider greeting: %r" % lines)
        self.say("EHLO " + HOSTNAME)
        code, lines = self.r.reply()
        if code != 250 or not any(l[4:].upper() == "ATRN" for l in lines[1:]):
            raise Unexpected("front EHLO reply lacks ATRN: %r" % lines)
        self.say("AUTH CRAM-MD5")
        code, lines = self.r.reply()
        if code != 334:
            raise Unexpected("AUTH CRAM-MD5: %r" % lines)
        challenge = base64.b64decode(lines[0][4:])
        resp = cram_md5_response(a.user, a.password, challenge)
        self.say(base64.b64encode(resp.encode("ascii")).decode("ascii"))
        code, lines = self.r.reply()
        if code != 235:
            raise Unexpected("authentication failed: %r" % lines)
        atrn = "ATRN" if a.domains is None else "ATRN " + a.domains
        self.report["atrn_command"] = atrn
        if a.greeting_with_atrn:
            # One write: the provider reads our 220 together with the ATRN.
            self.send(("%s\r\n%s\r\n" % (atrn, self.greeting_line())).encode("ascii"))
            self.report["greeting_sent"] = True
        else:
            self.say(atrn)
        code, lines = self.r.reply(timeout=max(a.timeout, 30))
        self.report["atrn_reply"] = "\n".join(lines)
        self.report["atrn_code"] = code
        event("atrn", lines[0])
        if len(lines) != 1:
            self.fail("ATRN reply has %d lines, not one (fetchmail reads one): %r" % (len(lines), lines))
        return code

    def front_quit(self):
        if self.a.greeting_with_atrn:
            # Our 220 reached the provider as a command; it answers it with an error.
            code, lines = self.r.reply()
            if code < 500:
                self.fail("provider accepted our stray 220 line as a command: %r" % lines)
        self.say("QUIT")
        code, lines = self.r.reply()
        if code != 221:
            self.fail("QUIT after refused ATRN: %r" % lines)

    def greeting_line(self):
        return "220 %s ESMTP scripted ODMR customer ready" % HOSTNAME

    # ----- reversed session -----

    def ehlo_lines(self):
        a = self.a
        caps = []
        if not a.no_pipelining:
            caps.append("PIPELINING")
        if not a.no_8bitmime:
            caps.append("8BITMIME")
        if a.size is not None:
            caps.append("SIZE %d" % a.size)
        caps.append("HELP")
        lines = [HOSTNAME + " greets the provider"] + caps
        return "\r\n".join(
            "250%s%s" % ("-" if i + 1 < len(lines) else " ", l) for i, l in enumerate(lines)
        )

    def reversed_session(self):
        a = self.a
        if a.hold:
            time.sleep(a.hold)
        if a.no_greeting:
            start = time.monotonic()
            try:
                extra = self.r.wait_eof(a.timeout)
            except Timeout:
                self.fail("provider still connected %.1fs after the turnaround without our greeting" % a.timeout)
                return
            self.report["provider_closed"] = True
            self.report["closed_after_seconds"] = round(time.monotonic() - start, 3)
            if extra:
                self.fail("provider sent %r while waiting for our greeting" % extra)
            event("closed", str(self.report["closed_after_seconds"]))
            return
        if not self.report["greeting_sent"]:
            self.say(self.greeting_line())
            self.report["greeting_sent"] = True
        event("greeted")
        hello = None  # "EHLO" or "HELO" once one was accepted
        tx = None
        while True:
            try:
                line = self.r.line()
            except Timeout:
                self.fail("no command from the provider within %.1fs" % a.timeout)
                return
            if line is None:
                self.fail("provider closed the connection without QUIT")
                return
            ahead = self.r.drain()
            cmd = line.decode("latin-1")
            self.report["commands"].append({"line": cmd, "ahead": ahead})
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.report["ehlo"] = cmd
                if a.reject_ehlo:
                    self.say("502 5.5.1 EHLO not implemented here")
                else:
                    hello = "EHLO"
                    tx = None
                    self.say(self.ehlo_lines())
            elif verb == "HELO":
                self.report["helo"] = cmd
                hello = "HELO"
                tx = None
                self.say("250 " + HOSTNAME)
            elif verb == "MAIL":
                tx = self.mail(cmd, hello, tx)
            elif verb == "RCPT":
                self.rcpt(cmd, tx)
            elif verb == "DATA":
                if tx is None:
                    self.fail("DATA without MAIL")
                    self.say("503 5.5.1 MAIL first")
                elif not tx["rcpts"]:
                    self.say("554 5.5.1 No valid recipients")
                    tx = None
                else:
                    self.say("354 Go ahead, end with <CRLF>.<CRLF>")
                    if not self.data(tx):
                        return
                    tx = None
            elif verb == "RSET":
                tx = None
                self.say("250 2.0.0 Reset")
            elif verb == "NOOP":
                self.say("250 2.0.0 OK")
            elif verb == "QUIT":
                self.report["quit"] = True
                if tx is not None:
                    self.fail("QUIT inside an open transaction: %r" % tx["mail_from"])
                self.say("221 2.0.0 %s closing" % HOSTNAME)
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                    rest = self.r.wait_eof(a.timeout)
                    self.report["provider_closed"] = True
                    if rest:
                        self.fail("provider sent %r after QUIT" % rest)
                except Timeout:
                    self.fail("provider did not close the connection after 221")
                except OSError:
                    self.report["provider_closed"] = True
                return
            else:
                self.fail("unexpected command %r" % cmd)
                self.say("500 5.5.2 Command unrecognized")

    def mail(self, cmd, hello, tx):
        a = self.a
        if hello is None:
            self.fail("MAIL before EHLO/HELO: %r" % cmd)
        if tx is not None:
            self.fail("MAIL inside an open transaction: %r" % cmd)
        m = PATH_RE.match(cmd)
        if not m or m.group(1).upper() != "MAIL FROM":
            self.fail("malformed MAIL command %r" % cmd)
            self.say("501 5.5.4 Syntax error")
            return None
        params = m.group(3).split()
        for p in params:
            key, _, val = p.partition("=")
            key = key.upper()
            if hello != "EHLO":
                self.fail("MAIL parameter %r after HELO" % p)
            elif key == "SIZE":
                if a.size is None:
                    self.fail("SIZE= sent but SIZE not offered: %r" % cmd)
                elif not val.isdigit():
                    self.fail("bad SIZE value in %r" % cmd)
            elif key == "BODY":
                if a.no_8bitmime:
                    self.fail("BODY= sent but 8BITMIME not offered: %r" % cmd)
                elif val.upper() not in ("7BIT", "8BITMIME"):
                    self.fail("bad BODY value in %r" % cmd)
            else:
                self.fail("MAIL parameter %r was not offered" % p)
        new = {
            "mail_from": m.group(2),
            "mail_params": " ".join(params),
            "rcpt_commands": [],
            "rcpts": [],
            "body_latin1": None,
            "body_b64": None,
            "body_len": None,
            "data_reply": None,
            "complete": False,
            "dropped": False,
        }
        self.report["messages"].append(new)
        size = next((int(p[5:]) for p in params if p.upper().startswith("SIZE=") and p[5:].isdigit()), None)
        if a.size is not None and size is not None and size > a.size:
            self.say("552 5.3.4 Message size exceeds fixed maximum message size")
            return None
        reply = a.mail_reply or "250 2.1.0 Sender OK"
        self.say(reply)
        return new if reply.startswith("2") else None

    def rcpt(self, cmd, tx):
        m = PATH_RE.match(cmd)
        if not m or m.group(1).upper() != "RCPT TO":
            self.fail("malformed RCPT command %r" % cmd)
            self.say("501 5.5.4 Syntax error")
            return
        if m.group(3):
            self.fail("RCPT parameters %r were not offered" % m.group(3))
        if tx is None:
            # After a refused MAIL a pipelining client still sends its RCPTs (RFC 2920): that is
            # fine, they get 503. Without a MAIL at all it is a client bug.
            if not self.report["messages"]:
                self.fail("RCPT without MAIL: %r" % cmd)
            self.say("503 5.5.1 MAIL first")
            return
        addr = m.group(2)
        reply = self.a.rcpt_replies.get(addr.lower(), "250 2.1.5 Recipient OK")
        tx["rcpt_commands"].append({"address": addr, "reply": reply})
        if reply.startswith("2"):
            tx["rcpts"].append(addr)
        self.say(reply)

    def data(self, tx):
        """Receive the body; False if the session ended (dropped or lost)."""
        a = self.a
        body = bytearray()
        wire = 0
        while True:
            try:
                raw = self.r.raw_line()
            except Timeout:
                self.fail("no DATA line from the provider within %.1fs" % a.timeout)
                return False
            if raw is None:
                self.fail("provider closed the connection inside DATA")
                return False
            wire += len(raw)
            if not raw.endswith(b"\r\n"):
                self.fail("DATA line not terminated by CRLF: %r" % raw[:80])
            if raw == b".\r\n":
                break
            if raw.startswith(b"."):
                raw = raw[1:]
            body += raw
            if a.drop_after_data_bytes is not None and wire >= a.drop_after_data_bytes:
                self.store_body(tx, body)
                tx["dropped"] = True
                self.report["dropped"] = True
                event("dropped", str(wire))
                # Close without a word, as a crashed MTA would.
                self.sock.close()
                return False
        self.store_body(tx, body)
        reply = a.data_reply or "250 2.0.0 OK queued"
        tx["data_reply"] = reply
        tx["complete"] = True
        self.say(reply)
        return True

    @staticmethod
    def store_body(tx, body):
        tx["body_latin1"] = bytes(body).decode("latin-1")
        tx["body_b64"] = base64.b64encode(bytes(body)).decode("ascii")
        tx["body_len"] = len(body)

    # ----- main -----

    def run(self):
        try:
            code = self.front_half()
            if code == 250:
                self.reversed_session()
            else:
                self.front_quit()
        except Timeout:
            self.fail("timed out waiting for the provider")
        except Unexpected as e:
            self.fail(str(e))
        except OSError as e:
            self.fail("socket error: %s" % e)
        finally:
            if self.sock is not None:
                try:
                    self.sock.close()
                except OSError:
                    pass
        json.dump(self.report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 1 if self.errors else 0


if __name__ == "__main__":
    sys.exit(Customer(parse_args(sys.argv[1:])).run())
