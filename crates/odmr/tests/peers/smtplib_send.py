#!/usr/bin/python3
"""Send one message with Python's smtplib, with ESMTP options on MAIL and RCPT (e.g. the DSN
parameters RET/ENVID/NOTIFY/ORCPT, which swaks cannot send).

Usage: smtplib_send.py HOST PORT FROM TO[,TO...] [--mail OPT]... [--rcpt OPT]... < message
FROM may be "" for the null sender. Prints one JSON line:
  {"refused": {address: [code, text]}, "error": null or "code text"}
and exits 0 when at least one recipient was accepted and the data was acknowledged.
"""

import json
import smtplib
import sys


def main():
    host, port, sender, rcpts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
    mail_opts, rcpt_opts = [], []
    args = sys.argv[5:]
    while args:
        flag, value = args[0], args[1]
        (mail_opts if flag == "--mail" else rcpt_opts).append(value)
        args = args[2:]
    msg = sys.stdin.buffer.read()
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("sender.test")
        try:
            refused = s.sendmail(sender, rcpts, msg, mail_options=mail_opts, rcpt_options=rcpt_opts)
            print(json.dumps({"refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}, "error": None}))
        except smtplib.SMTPRecipientsRefused as e:
            print(json.dumps({"refused": {k: [v[0], v[1].decode()] for k, v in e.recipients.items()},
                              "error": "all recipients refused"}))
            sys.exit(1)
        except smtplib.SMTPResponseException as e:
            print(json.dumps({"refused": {}, "error": f"{e.smtp_code} {e.smtp_error.decode()}"}))
            sys.exit(1)


if __name__ == "__main__":
    main()
