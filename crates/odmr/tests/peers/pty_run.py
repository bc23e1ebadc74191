#!/usr/bin/python3
"""Runs a command on a pseudo-terminal, as a person at a terminal would: it waits for text the
command prints, waits for the terminal's echo to be switched off, and types lines. Used by
cli.rs to test the password prompt of `odmr account add/passwd --password-stdin`.

Usage: pty_run.py SCRIPT_JSON COMMAND [ARG ...]
SCRIPT_JSON is a list of steps, run in order:
  ["expect", TEXT]   wait (at most 20 s) until the output so far contains TEXT once more than
                     it did before this step; a timeout is recorded as a failure and ends the
                     script
  ["noecho"]         wait (at most 5 s) until the terminal's ECHO flag is off, so that what is
                     typed next is not echoed because of a race with the command; records
                     whether it was off (the command's output is the real proof)
  ["type", TEXT]     type TEXT (use "\\r" for Enter, as a terminal sends it)
After the steps, the output is read until the command exits (at most 20 s). Prints one JSON
object: {"status": exit status or null, "output": everything the command wrote to the terminal
(stdout and stderr, as the terminal shows them), "failed": the step that timed out or null,
"echo_off": [one boolean per "noecho" step]}.

Stdlib only; run with /usr/bin/python3.
"""

import json
import os
import pty
import select
import sys
import termios
import time


def main():
    steps = json.loads(sys.argv[1])
    command = sys.argv[2:]
    pid, fd = pty.fork()
    if pid == 0:
        # The child: the pty is its stdin, stdout, stderr and controlling terminal (/dev/tty).
        try:
            os.execv(command[0], command)
        finally:
            os._exit(127)

    out = bytearray()

    def read_some(timeout):
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        out.extend(data)
        return True

    failed = None
    echo_off = []
    for step in steps:
        kind = step[0]
        if kind == "expect":
            want = step[1].encode()
            seen = out.count(want)
            deadline = time.monotonic() + 20
            while out.count(want) <= seen and time.monotonic() < deadline:
                if not read_some(0.1):
                    break
            if out.count(want) <= seen:
                failed = step
                break
        elif kind == "noecho":
            deadline = time.monotonic() + 5
            off = False
            while time.monotonic() < deadline:
                # On Linux the master side reports the terminal's (the slave's) settings.
                if not termios.tcgetattr(fd)[3] & termios.ECHO:
                    off = True
                    break
                read_some(0.02)
            echo_off.append(off)
        elif kind == "type":
            os.write(fd, step[1].encode())
        else:
            raise SystemExit("unknown step %r" % (step,))

    status = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        read_some(0.05)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    # What is still buffered on the terminal after the exit.
    while read_some(0.05):
        r, _, _ = select.select([fd], [], [], 0)
        if not r:
            break
    print(json.dumps({
        "status": status,
        "output": out.decode("utf-8", "replace"),
        "failed": failed,
        "echo_off": echo_off,
    }))


if __name__ == "__main__":
    main()
