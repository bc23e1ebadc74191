#!/usr/bin/python3
"""A TCP forwarder that stands in for the provider's address in the daemon test of
`odmr client` (client.rs): the client's config names the forwarder's port, which stays the same
while the provider behind it is stopped and restarted on new ports.

Usage: client_forwarder.py TARGET_PORT
Listens on 127.0.0.1, port 0; the port is the first line of stdout. Commands on stdin, each
answered with a line "ok ..." on stdout:
  down        close the listener and every open connection (the client then gets "connection
              refused": an outage)
  up PORT     listen again on the same port, forwarding to 127.0.0.1:PORT
Each accepted connection is reported as "conn N". Exits when stdin closes.

Stdlib only; run with /usr/bin/python3.
"""

import selectors
import socket
import sys


def main():
    target = int(sys.argv[1])
    sel = selectors.DefaultSelector()
    state = {"listener": None, "port": 0, "pairs": {}, "count": 0}

    def listen(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "listener")
        state["listener"] = s
        state["port"] = s.getsockname()[1]

    def drop(s):
        other = state["pairs"].pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            state["pairs"].pop(x, None)
            try:
                sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    def say(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    listen(0)
    say(str(state["port"]))
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    while True:
        for key, _ in sel.select(timeout=1.0):
            kind = key.data
            if kind == "stdin":
                line = sys.stdin.readline()
                if not line:
                    return
                words = line.split()
                if words[:1] == ["down"]:
                    if state["listener"] is not None:
                        sel.unregister(state["listener"])
                        state["listener"].close()
                        state["listener"] = None
                    for s in list(state["pairs"]):
                        drop(s)
                    say("ok down")
                elif words[:1] == ["up"]:
                    target = int(words[1])
                    if state["listener"] is None:
                        listen(state["port"])
                    say("ok up %d -> %d" % (state["port"], target))
                else:
                    say("error unknown command %r" % line)
            elif kind == "listener":
                try:
                    client, _ = key.fileobj.accept()
                except OSError:
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", target), timeout=5)
                except OSError:
                    client.close()
                    continue
                state["count"] += 1
                say("conn %d" % state["count"])
                for s in (client, upstream):
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(s, selectors.EVENT_READ, "conn")
                state["pairs"][client] = upstream
                state["pairs"][upstream] = client
            else:
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                other = state["pairs"].get(s)
                if not data or other is None:
                    drop(s)
                    continue
                try:
                    other.setblocking(True)
                    other.settimeout(10)
                    other.sendall(data)
                    other.setblocking(False)
                except OSError:
                    drop(s)


if __name__ == "__main__":
    main()
