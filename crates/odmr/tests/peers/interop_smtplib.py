#!/usr/bin/python3
"""Python's smtplib as a peer of odmr, for tests/interop_senders.rs.

Prints one JSON object on stdout describing what the server answered; the Rust test asserts.

  interop_smtplib.py send PORT FROM TO[,TO...] (--file PATH | --size N)
      smtplib.SMTP.sendmail into the MX listener. smtplib itself declares SIZE=<len> on MAIL
      when the server offers SIZE.
      -> {"refused": {rcpt: [code, text]}}                         when accepted
      -> {"error": "SMTPSenderRefused", "code": 552, "text": ...}   and the like

  interop_smtplib.py odmr PORT USER PASSWORD DOMAIN
      Against the ODMR listener: EHLO, ATRN before AUTH, AUTH CRAM-MD5, then ATRN DOMAIN.
      -> {"features": [...], "atrn_before_auth": [code, text],
          "auth": [code, text] | {"error": ..., "code": ..., "text": ...},
          "atrn": [code, text] | null}
"""
import json
import smtplib
import sys

TIMEOUT = 20


def text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def error(e):
    return {
        "error": type(e).__name__,
        "code": getattr(e, "smtp_code", None),
        "text": text(getattr(e, "smtp_error", str(e))),
    }


def send(port, sender, to, source):
    if source[0] == "--file":
        with open(source[1], "rb") as f:
            msg = f.read()
    else:
        line = b"x" * 78 + b"\r\n"
        n = int(source[1])
        msg = b"Subject: big\r\n\r\n" + line * (n // len(line) + 1)
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as s:
        s.ehlo("python.test")
        try:
            refused = s.sendmail(sender, to.split(","), msg)
        except smtplib.SMTPException as e:
            return error(e)
        return {"refused": {k: [c, text(t)] for k, (c, t) in refused.items()}}


def odmr(port, user, password, domain):
    out = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as s:
        code, _ = s.ehlo("python.test")
        out["ehlo"] = code
        out["features"] = sorted(f"{k.upper()} {v.strip()}".strip() for k, v in s.esmtp_features.items())
        code, msg = s.docmd("ATRN", domain)
        out["atrn_before_auth"] = [code, text(msg)]
        s.user, s.password = user, password
        try:
            code, msg = s.auth("CRAM-MD5", s.auth_cram_md5)
            out["auth"] = [code, text(msg)]
        except smtplib.SMTPException as e:
            out["auth"] = error(e)
            out["atrn"] = None
            return out
        code, msg = s.docmd("ATRN", domain)
        out["atrn"] = [code, text(msg)]
    return out


def main(argv):
    if argv[0] == "send":
        result = send(int(argv[1]), argv[2], argv[3], argv[4:6])
    elif argv[0] == "odmr":
        result = odmr(int(argv[1]), argv[2], argv[3], argv[4])
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
