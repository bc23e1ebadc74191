"""Run the README's first command and check that the provider it starts answers.

Usage: readme_probe.py DIR COMMAND HOSTNAME ADDR [ADDR ...]

COMMAND runs through the shell in DIR (a fresh clone), in a process group of its own. Each ADDR
(host:port, the listeners of the example config) must accept a connection and greet with
`220 HOSTNAME`, and answer QUIT with 221. Then the shell commands in $README_TRIAL (the README's
walkthrough), if set, must all succeed against that provider. Then the group gets SIGTERM, as an
operator's Ctrl-C or a service manager would send it, and the server must stop cleanly (exit
status 0) within 30 s.

Exit status 0 when all of that held; otherwise 1, with the reason and the command's output.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

STARTUP = 120  # seconds for the server to listen (the build was done beforehand)


def main():
    directory, command, hostname = sys.argv[1], sys.argv[2], sys.argv[3]
    addrs = sys.argv[4:]
    # `exec`: the shell becomes the command (and `cargo run` becomes the server it runs), so
    # the status we read is the server's own.
    proc = subprocess.Popen(
        "exec " + command,
        shell=True,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()

    def fail(why):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        reader.join(5)
        sys.stderr.write("FAILED: %s\n--- output of %r ---\n%s\n" % (
            why, command, b"".join(output).decode("utf-8", "replace")))
        sys.exit(1)

    for addr in addrs:
        host, port = addr.rsplit(":", 1)
        deadline = time.monotonic() + STARTUP
        while True:
            if proc.poll() is not None:
                fail("the command exited with status %d before %s answered" % (proc.returncode, addr))
            try:
                s = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    fail("nothing listens on %s after %d s (%s)" % (addr, STARTUP, e))
                time.sleep(0.2)
        f = s.makefile("rb")
        greeting = f.readline().decode("utf-8", "replace")
        if not greeting.startswith("220 " + hostname):
            fail("%s greeted %r, not 220 %s" % (addr, greeting, hostname))
        s.sendall(b"QUIT\r\n")
        bye = f.readline().decode("utf-8", "replace")
        if not bye.startswith("221"):
            fail("%s answered QUIT with %r" % (addr, bye))
        s.close()
        print("%s: %s" % (addr, greeting.strip()))

    # The README's walkthrough against this provider, as a newcomer types it: each command
    # must succeed (sh -e), with the binary the first command built on PATH.
    trial = os.environ.get("README_TRIAL")
    if trial:
        env = dict(os.environ)
        env["PATH"] = os.path.join(env["CARGO_TARGET_DIR"], "release") + ":" + env["PATH"]
        run = subprocess.run(["sh", "-e", "-x", "-c", trial], cwd=directory, env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        print("--- trial ---\n%s%s" % (run.stdout.decode("utf-8", "replace"),
                                       run.stderr.decode("utf-8", "replace")))
        if run.returncode != 0:
            fail("the README's walkthrough failed (status %d):\n%s%s" % (
                run.returncode, run.stdout.decode("utf-8", "replace"),
                run.stderr.decode("utf-8", "replace")))
        print("trial: ok")

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        status = proc.wait(30)
    except subprocess.TimeoutExpired:
        fail("the server did not stop within 30 s of SIGTERM")
    reader.join(5)
    if status != 0:
        fail("the server exited with status %d after SIGTERM" % status)
    text = b"".join(output).decode("utf-8", "replace")
    print(text)


if __name__ == "__main__":
    main()
