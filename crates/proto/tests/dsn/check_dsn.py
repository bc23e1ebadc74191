#!/usr/bin/env python3
"""Read DSN messages with Python's `email` package and print what it sees as JSON.

Used by crates/proto/tests/dsn.rs: an independent MIME parser must find a
multipart/report; report-type=delivery-status whose second part is a
message/delivery-status with parseable per-recipient blocks. The Rust test
compares the fields printed here with what it expects.

Usage: check_dsn.py FILE...   (prints one JSON list, one object per file)
"""
import email
import json
import os
import re
import sys
from email import policy


def text(v):
    """A header or payload as printable text (8-bit data may come back surrogate-escaped)."""
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def unfold(v):
    # RFC 5322 §2.2.3: unfolding removes the CRLF before whitespace, nothing else.
    return re.sub(r"\r?\n(?=[ \t])", "", text(v))


def fields(block):
    return {k.lower(): unfold(v) for k, v in block.items()}


def check(path):
    with open(path, "rb") as f:
        data = f.read()
    m = email.message_from_bytes(data, policy=policy.compat32)
    res = {
        "file": os.path.basename(path),
        "content_type": m.get_content_type(),
        "report_type": m.get_param("report-type"),
        "subject": text(m["Subject"]),
        "to": text(m["To"]),
        "from": text(m["From"]),
        "auto_submitted": text(m["Auto-Submitted"]),
        "message_id": text(m["Message-ID"]),
        "defects": [],
    }
    for part in m.walk():
        res["defects"] += [type(d).__name__ for d in part.defects]
    parts = m.get_payload() if m.is_multipart() else []
    res["parts"] = [p.get_content_type() for p in parts]
    if len(parts) >= 1:
        p = parts[0]
        res["text"] = text(p.get_payload(decode=True).decode(p.get_content_charset() or "us-ascii", "replace"))
    if len(parts) >= 2:
        ds = parts[1]
        res["status_cte"] = text(ds.get("Content-Transfer-Encoding", "7bit")).lower()
        blocks = ds.get_payload()
        if isinstance(blocks, list) and blocks:
            res["per_message"] = fields(blocks[0])
            res["recipients"] = [fields(b) for b in blocks[1:]]
    if len(parts) >= 3:
        p = parts[2]
        res["returned_cte"] = text(p.get("Content-Transfer-Encoding", "7bit")).lower()
        if p.get_content_type() in ("message/rfc822", "message/global"):
            inner = p.get_payload()[0]
            body = inner.get_payload(decode=True)
            res["returned"] = {"subject": text(inner["Subject"]), "body": text(body)}
        else:
            hdrs = email.message_from_string(text(p.get_payload()), policy=policy.compat32)
            res["returned"] = {"subject": text(hdrs["Subject"]), "body": None}
    return res


if __name__ == "__main__":
    print(json.dumps([check(p) for p in sys.argv[1:]], indent=1))
