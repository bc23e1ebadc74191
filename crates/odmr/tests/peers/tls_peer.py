#!/usr/bin/python3
"""A scripted SMTP/ODMR client with OpenSSL (Python's ssl module) for tls.rs.

Usage:
  tls_peer.py repl CA.pem
      Reads one JSON array per line on stdin, e.g. ["connect", "a", 2525, false], and answers
      each with one JSON object on stdout: {"ok": VALUE} or {"error": "TEXT"}. Several named
      connections can be open at once (a session kept open across a certificate reload).
  tls_peer.py smtplib CA.pem PORT FROM TO
      smtplib: EHLO, starttls() verifying the certificate against CA.pem and the name
      "localhost", EHLO, sendmail of a small message; prints one JSON object.

  tls_peer.py provider MODE
      A fake ODMR provider for one connection on 127.0.0.1, port 0; prints the port, then,
      when the client has gone, one JSON object: {"lines": the lines it got in plaintext,
      "tls_hello": whether a TLS ClientHello came}. It greets, offers AUTH CRAM-MD5, STARTTLS
      and ATRN, and answers STARTTLS according to MODE:
        454     "454 4.7.0 TLS not available": the client must not go on in plaintext;
        inject  "220" and, in the same write, "250 injected": the client must not start TLS
                with plaintext buffered after the 220 (command-injection defence).

Every socket has a 10 s timeout, so nothing here can hang for ever; certificates are always
verified (CA.pem, name "localhost").

Commands of the repl:
  connect NAME PORT IMPLICIT   TCP to 127.0.0.1:PORT; IMPLICIT: TLS at once. -> certificate (hex DER) or null
  send NAME TEXT               TEXT in ONE sendall() (pipelining, injection)  -> null
  reply NAME                   one whole reply, lines joined by "\n"
  ask NAME LINE                LINE + CRLF, then its reply
  starttls NAME                TLS handshake on the connection -> the server certificate (hex DER)
  drain NAME                   read until EOF: {"data": what came, "end": "eof" | "reset" | "timeout" | "tls-error: ..."}
  cram NAME USER PASSWORD      AUTH CRAM-MD5 -> the final reply
  close NAME
"""

import base64
import hashlib
import hmac
import json
import smtplib
import socket
import ssl
import sys

TIMEOUT = 10


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self):
        lines = []
        while True:
            line = self.line()
            if line is None:
                raise EOFError("connection closed while waiting for a reply; got %r" % lines)
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def send(self, text):
        self.sock.sendall(text.encode("utf-8"))


def repl(ca):
    ctx = context(ca)
    conns = {}
    for raw in sys.stdin:
        if not raw.strip():
            continue
        cmd = json.loads(raw)
        op, name, args = cmd[0], cmd[1], cmd[2:]
        try:
            if op == "connect":
                port, implicit = args
                sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                cert = None
                if implicit:
                    sock = ctx.wrap_socket(sock, server_hostname="localhost")
                    cert = sock.getpeercert(binary_form=True).hex()
                conns[name] = Conn(sock)
                result = cert
            elif op == "send":
                conns[name].send(args[0])
                result = None
            elif op == "reply":
                result = conns[name].reply()
            elif op == "ask":
                conns[name].send(args[0] + "\r\n")
                result = conns[name].reply()
            elif op == "starttls":
                c = conns[name]
                if c.buf:
                    raise RuntimeError("plaintext after the 220: %r" % c.buf)
                c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
                result = c.sock.getpeercert(binary_form=True).hex()
            elif op == "drain":
                c = conns[name]
                data, end = c.buf, None
                c.buf = b""
                while end is None:
                    try:
                        chunk = c.sock.recv(65536)
                    except ConnectionResetError:
                        end = "reset"
                        break
                    except socket.timeout:
                        end = "timeout"
                        break
                    except ssl.SSLError as e:
                        end = "tls-error: %s" % e
                        break
                    if not chunk:
                        end = "eof"
                    data += chunk
                result = {"data": data.decode("utf-8", "replace"), "end": end}
            elif op == "cram":
                user, password = args
                c = conns[name]
                c.send("AUTH CRAM-MD5\r\n")
                r = c.reply()
                if not r.startswith("334 "):
                    raise RuntimeError("AUTH CRAM-MD5 got %r" % r)
                challenge = base64.b64decode(r[4:])
                digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
                c.send(base64.b64encode(("%s %s" % (user, digest)).encode()).decode() + "\r\n")
                result = c.reply()
            elif op == "close":
                conns.pop(name).sock.close()
                result = None
            else:
                raise RuntimeError("unknown command %r" % op)
            out = {"ok": result}
        except Exception as e:  # reported to the test, which decides
            out = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def with_smtplib(ca, port, sender, rcpt):
    out = {}
    s = smtplib.SMTP("127.0.0.1", int(port), local_hostname="smtplib.test", timeout=TIMEOUT)
    # smtplib checks the certificate against the name it connected to: make that "localhost".
    s._host = "localhost"
    code, msg = s.ehlo()
    out["ehlo1"] = [code, msg.decode()]
    code, msg = s.starttls(context=context(ca))
    out["starttls"] = [code, msg.decode()]
    out["cert"] = s.sock.getpeercert(binary_form=True).hex()
    code, msg = s.ehlo()
    out["ehlo2"] = [code, msg.decode()]
    message = (
        "From: <%s>\r\nTo: <%s>\r\nSubject: smtplib over STARTTLS\r\n\r\n"
        "hello over TLS\r\n.a dotted line\r\n" % (sender, rcpt)
    )
    out["refused"] = s.sendmail(sender, [rcpt], message)
    code, msg = s.noop()
    out["noop"] = [code, msg.decode()]
    s.quit()
    print(json.dumps(out))


def fake_provider(mode):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)
    print(listener.getsockname()[1], flush=True)
    sock, _ = listener.accept()
    sock.settimeout(TIMEOUT)
    c = Conn(sock)
    got, hello = [], False
    c.send("220 fake.test ESMTP\r\n")
    try:
        while True:
            if c.buf[:1] == b"\x16":
                hello = True
                break
            line = c.line()
            if line is None:
                break
            got.append(line)
            verb = line.split(" ")[0].upper()
            if verb == "EHLO":
                c.send("250-fake.test\r\n250-AUTH CRAM-MD5\r\n250-STARTTLS\r\n250 ATRN\r\n")
            elif verb == "STARTTLS" and mode == "454":
                c.send("454 4.7.0 TLS not available\r\n")
            elif verb == "STARTTLS" and mode == "inject":
                c.send("220 2.0.0 go ahead\r\n250 injected\r\n")
                data = sock.recv(65536)
                hello = data[:1] == b"\x16"
                if data and not hello:
                    c.buf += data
                    continue
                break
            elif verb == "QUIT":
                c.send("221 bye\r\n")
                break
            else:
                c.send("502 not here\r\n")
    except (OSError, socket.timeout) as e:
        got.append("(%s)" % e)
    print(json.dumps({"lines": got, "tls_hello": hello}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "repl":
        repl(sys.argv[2])
    elif sys.argv[1] == "smtplib":
        with_smtplib(*sys.argv[2:6])
    elif sys.argv[1] == "provider":
        fake_provider(sys.argv[2])
    else:
        sys.exit("usage: tls_peer.py repl CA.pem | smtplib CA.pem PORT FROM TO | provider MODE")
