#!/usr/bin/python3
"""Concurrent senders for odmr's crash tests (tests/crash.rs): Python's smtplib, one SMTP
session per thread, each sending message after message into the MX listener.

  crash_sender.py --port P --threads N --per-thread M --rcpt ADDR --acked FILE [--until-killed]

Every message is self-checking:
  * a unique token T (thread, sequence number and a per-run nonce) is its envelope sender
    (T@sender.test), its Message-ID (<T@crash.test>) and its X-Crash-Token header;
  * X-Body-SHA256 is the SHA-256 of the body (everything after the blank line) with its CRLF
    line ends written as LF, so a reader can tell an intact copy from a damaged one whatever
    the line ends became;
  * bodies vary in size (a few hundred octets to ~300 KiB, so some span several store chunks)
    and hold lines that need dot-stuffing (".", "..", ".x").

The token of a message goes into FILE only after its 250 to the final dot was read, one line per
message, written and flushed at once (O_APPEND, one write per line), so a test reading FILE after
killing the server knows exactly which messages were acknowledged.

Without --until-killed every thread sends M messages and the exit status is 1 if any failed.
With --until-killed a broken connection (the server was killed) ends that thread quietly; the exit
status is 0 unless something else went wrong (a refusal, a protocol error).

stdout: one JSON object {"acked": n, "threads": N, "disconnected": k, "errors": [...]}.
Every socket operation has a timeout. Stdlib only; run with /usr/bin/python3.
"""

import argparse
import hashlib
import json
import os
import random
import smtplib
import socket
import sys
import threading

TIMEOUT = 20


def body_for(rng, seq):
    """A body of LF-terminated lines; every 40th message is large enough to span store chunks."""
    lines = [b"Crash test body, message %d." % seq, b".", b"..leading dots", b".x"]
    target = 300 * 1024 if seq % 40 == 7 else rng.randint(100, 8000)
    size = sum(len(l) + 1 for l in lines)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,-"
    while size < target:
        n = rng.randint(0, 120)
        line = bytes(rng.choices(alphabet, k=n))
        if rng.random() < 0.05:
            line = b"." + line
        lines.append(line)
        size += len(line) + 1
    return b"\n".join(lines) + b"\n"


def message(token, rcpt, body):
    """The message on the wire (CRLF line ends: smtplib sends bytes as they are)."""
    digest = hashlib.sha256(body).hexdigest()
    head = (
        "From: <%s@sender.test>\n"
        "To: <%s>\n"
        "Subject: crash test %s\n"
        "Message-ID: <%s@crash.test>\n"
        "X-Crash-Token: %s\n"
        "X-Body-SHA256: %s\n"
        "\n" % (token, rcpt, token, token, token, digest)
    )
    return (head.encode("ascii") + body).replace(b"\n", b"\r\n")


class Run:
    def __init__(self, args):
        self.a = args
        self.nonce = "%08x" % random.SystemRandom().getrandbits(32)
        self.fd = os.open(args.acked, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lock = threading.Lock()
        self.acked = 0
        self.disconnected = 0
        self.errors = []

    def ack(self, token):
        with self.lock:
            # One write per line on an O_APPEND file: the line is in the file (the page cache,
            # which outlives this process) before the next message is even started.
            os.write(self.fd, (token + "\n").encode("ascii"))
            self.acked += 1

    def error(self, why):
        with self.lock:
            self.errors.append(why)
        print("crash_sender: " + why, file=sys.stderr, flush=True)

    def thread(self, tid):
        a = self.a
        rng = random.Random("%s-%d" % (self.nonce, tid))
        # smtplib's exceptions are OSErrors too: refusals are caught before lost connections.
        try:
            s = smtplib.SMTP("127.0.0.1", a.port, local_hostname="sender.test", timeout=TIMEOUT)
            s.ehlo()
        except smtplib.SMTPServerDisconnected as e:
            self.lost(tid, "connect", e)
            return
        except smtplib.SMTPException as e:
            self.error("thread %d: greeting or EHLO refused: %r" % (tid, e))
            return
        except OSError as e:
            self.lost(tid, "connect", e)
            return
        for seq in range(a.per_thread):
            token = "t%d-%d-%s" % (tid, seq, self.nonce)
            data = message(token, a.rcpt, body_for(rng, seq))
            try:
                refused = s.sendmail("%s@sender.test" % token, [a.rcpt], data)
            except smtplib.SMTPServerDisconnected as e:
                self.lost(tid, token, e)
                return
            except smtplib.SMTPException as e:
                self.error("thread %d: %s refused: %r" % (tid, token, e))
                return
            except OSError as e:
                self.lost(tid, token, e)
                return
            if refused:
                self.error("thread %d: %s recipient refused: %r" % (tid, token, refused))
                return
            self.ack(token)
        try:
            s.quit()
        except OSError as e:  # smtplib's exceptions included: the messages are all sent
            self.lost(tid, "QUIT", e)

    def lost(self, tid, what, e):
        if self.a.until_killed:
            with self.lock:
                self.disconnected += 1
        else:
            self.error("thread %d: connection lost at %s: %r" % (tid, what, e))

    def run(self):
        threads = [threading.Thread(target=self.thread, args=(i,)) for i in range(self.a.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        os.close(self.fd)
        json.dump(
            {
                "acked": self.acked,
                "threads": self.a.threads,
                "disconnected": self.disconnected,
                "errors": self.errors,
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
        return 1 if self.errors else 0


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--per-thread", type=int, required=True)
    p.add_argument("--rcpt", required=True)
    p.add_argument("--acked", required=True)
    p.add_argument("--until-killed", action="store_true")
    socket.setdefaulttimeout(TIMEOUT)
    return Run(p.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
