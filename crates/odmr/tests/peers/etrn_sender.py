#!/usr/bin/python3
"""An ETRN client on Python's smtplib: the customer asking the provider's MX for a queue run.

    etrn_sender.py PORT [--auth USER PASSWORD] NODE...

Connects to 127.0.0.1:PORT, says EHLO, authenticates with AUTH CRAM-MD5 when --auth is given
(smtplib's own CRAM-MD5), then sends `ETRN NODE` for each NODE with smtplib's docmd and QUITs.
Prints one JSON object: the EHLO keywords, the AUTH result (code, or the exception name and
code), and the [code, text] of each ETRN reply, in order.
"""

import json
import smtplib
import sys


def main():
    args = sys.argv[1:]
    port = int(args.pop(0))
    auth = None
    if args and args[0] == "--auth":
        auth = (args[1], args[2])
        args = args[3:]
    out = {}
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("customer.test")
    out["ehlo"] = sorted(s.esmtp_features.keys())
    if auth is not None:
        s.user, s.password = auth
        try:
            code, _ = s.auth("CRAM-MD5", s.auth_cram_md5)
            out["auth"] = {"code": code}
        except smtplib.SMTPAuthenticationError as e:
            out["auth"] = {"error": "SMTPAuthenticationError", "code": e.smtp_code}
    out["etrn"] = []
    for node in args:
        code, text = s.docmd("ETRN", node)
        out["etrn"].append([code, text.decode("utf-8", "replace")])
    s.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
