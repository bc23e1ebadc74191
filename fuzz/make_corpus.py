#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/TARGET/ (committed; rerun after changing it).

Machine targets take a 16-octet header (flags, 7 read lengths, 8 decisions; see
fuzz_targets/common/mod.rs) and then the peer's bytes. The seeds are short realistic
transcripts, so that the fuzzer starts from sessions that reach every phase.
"""

import base64
import hashlib
import hmac
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def header(flags=0, reads=(0,) * 7, decisions=(0,) * 8):
    reads = list(reads) + [0] * (7 - len(reads))
    decisions = list(decisions) + [0] * (8 - len(decisions))
    return bytes([flags] + reads[:7] + decisions[:8])


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def crlf(*lines):
    return b"".join(l + b"\r\n" for l in lines)


MESSAGE = crlf(
    b"Received: from a.example by b.example; Sun, 22 Nov 2026 12:00:00 +0000",
    b"From: <alice@sender.example>",
    b"Subject: hello",
    b"",
    b"..a stuffed dot",
    b"body \xc3\xa9",
)

# data_receiver: flags bits 0-1 max_size, bits 2-3 max_received, bit 4 raw mode (BDAT chunks).
write("data_receiver", "simple", header(0xF) + MESSAGE + b".\r\nQUIT\r\n")
write("data_receiver", "chunked", header(0xF, (1, 2, 3, 5, 7, 11, 13)) + MESSAGE + b".\r\n")
write("data_receiver", "empty", header(3) + b".\r\nMAIL FROM:<>\r\n")
write("data_receiver", "smuggling", header(3, (4, 1)) + b"a\r\n\n.\n\r\n.\rMAIL FROM:<x@y.z>\r\n.\r\n")
write("data_receiver", "too_big", header(1) + b"0123456789abcdefXYZ\r\n.\r\n")
write("data_receiver", "loop", header(3 | 4) + crlf(b"Received: x", b"received: y", b"") + b".\r\n")
write("data_receiver", "raw", header(0x1F, (1, 2, 3, 5, 7, 11, 13)) + MESSAGE + b".\r\n.\r\nno line end")
write("data_receiver", "raw_bare", header(0x13, (4, 1)) + b"a\r\n\n.\n\r\n.\rMAIL FROM:<x@y.z>\r")

# dot_roundtrip: flags bit 0 appends a trailer.
write("dot_roundtrip", "message", header(1, (5, 9)) + MESSAGE)
write("dot_roundtrip", "dots", header(1, (1,), (2, 3)) + b".\r\n..\r\n.x\n.\r.")
write("dot_roundtrip", "bare", header(0) + b"a\rb\nc\r\n.\x00\r\n")

EHLO = b"EHLO client.example"
MAIL = b"MAIL FROM:<alice@sender.example> BODY=8BITMIME SIZE=300"
SESSION = crlf(
    EHLO,
    MAIL,
    b"RCPT TO:<bob@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.org",
    b"RCPT TO:<carol@elsewhere.example>",
    b"DATA",
) + MESSAGE + crlf(b".", b"QUIT")

# smtp_server: flags bit 0 STARTTLS, 1 check_sender, 2 8BITMIME, 3 SMTPUTF8,
# bits 4-5 size (64, 1000, 50 MiB, 0), 6 small limits, 7 one message; CHUNKING offered unless
# bits 6 and 7 are both set.
write("smtp_server", "session", header(0x2C) + SESSION)
write("smtp_server", "session_chunked", header(0x2C, (3, 17, 1, 64), (0, 2, 0, 0)) + SESSION)
write(
    "smtp_server",
    "customer_mode",
    header(0x22, decisions=(0, 1, 2, 3, 4)) + crlf(b"HELO p", b"MAIL FROM:<>", b"RCPT TO:<x@c.example>", b"RSET", b"NOOP"),
)
write("smtp_server", "starttls", header(0x2D) + crlf(EHLO, b"STARTTLS") + crlf(EHLO, b"HELP", b"VRFY x", b"QUIT"))
write(
    "smtp_server",
    "refused_body",
    header(0x0C)
    + crlf(b"EHLO c", b"MAIL FROM:<a@b.example> SMTPUTF8", b"RCPT TO:<\xc3\xa9@example.org>", b"DATA")
    + b"bare\nLF\r\n.\r\nMAIL FROM:<a@b.example>\r\n",
)

def bdat(content, size, last=True):
    """BDAT commands carrying `content` in chunks of `size` octets."""
    pieces = [content[i : i + size] for i in range(0, len(content), size)] or [b""]
    out = b""
    for i, p in enumerate(pieces):
        end = b" LAST" if last and i == len(pieces) - 1 else b""
        out += b"BDAT %d%s\r\n" % (len(p), end) + p
    return out


TX = crlf(MAIL, b"RCPT TO:<bob@example.org>")
write(
    "smtp_server",
    "bdat",
    header(0x2C, (5, 1, 64, 3))
    + crlf(EHLO)
    + TX
    + bdat(MESSAGE + b".\r\nno line end", 17)
    + crlf(b"RSET")
    + TX
    + bdat(b"", 1)
    + TX
    + bdat(b"x\r\n", 2, last=False)
    + crlf(b"DATA", b"RSET", b"QUIT"),
)
write(
    "smtp_server",
    "bdat_refused",
    header(0x1C, decisions=(0, 4, 0, 0, 4))
    + crlf(EHLO)
    + bdat(b"MAIL FROM:<e@x.example>\r\n", 100)
    + crlf(MAIL, b"RCPT TO:<x@elsewhere.example>")
    + bdat(b"a" * 40, 40, last=False)
    + bdat(b"b" * 70, 70)
    + crlf(b"RSET")
    + TX
    + bdat(b"bare\nLF\r\n", 4)
    + TX
    + bdat(b"a" * 900, 500)
    + crlf(b"BDAT 12 LAST garbage", b"NOOP"),
)
write("smtp_server", "errors", header(0) + b"BOGUS\r\nNOOP\nMAIL FROM:<\r\n" + b"X" * 3000 + b"\r\nQUIT\r\n")
# In MX mode (check_sender off) AUTH and ETRN are offered; decisions pick AUTH answers and
# ETRN verdicts.
write(
    "smtp_server",
    "etrn",
    header(0x0C, decisions=(0, 1, 2, 3, 4, 5))
    + crlf(
        EHLO,
        b"ETRN example.org",
        b"ETRN @Example.ORG.",
        b"ETRN",
        b"ETRN #uucp",
        b"ETRN localhost",
        b"MAIL FROM:<>",
        b"ETRN a.example",
        b"RSET",
        b"ETRN b.example.org",
        b"ETRN @c.example.org",
        b"QUIT",
    ),
)
write(
    "smtp_server",
    "auth_tls",
    header(0x0D, decisions=(0, 3))
    + crlf(EHLO, b"STARTTLS")
    + crlf(EHLO, b"AUTH PLAIN " + base64.b64encode(b"\0acme\0pw"), b"ETRN example.org", b"AUTH LOGIN", b"QUIT"),
)
write(
    "smtp_server",
    "auth_cram",
    header(0x0C, decisions=(1, 0))
    + crlf(
        b"HELO c",
        b"AUTH CRAM-MD5",
        EHLO,
        b"AUTH CRAM-MD5",
        b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw",
        b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,n=acme,r=fuzz"),
        b"*",
        b"ETRN x.example.org",
    ),
)

# odmr_session: flags bit 0 STARTTLS, 1 require_tls, 2 TLS from the start,
# bits 3-4 max_errors, 5-6 max_auth_failures. $CRAM$ becomes a correct response.
ODMR = crlf(b"EHLO cust.example", b"AUTH CRAM-MD5", b"$CRAM$", b"ATRN example.org,Example.NET")
write("odmr_session", "granted", header(0) + ODMR + b"220 cust.example ESMTP\r\n")
write("odmr_session", "refused_then_bare", header(0, decisions=(0, 1, 0, 2)) + ODMR + crlf(b"ATRN", b"QUIT"))
write(
    "odmr_session",
    "bad_auth",
    header(0x40) + crlf(b"EHLO c", b"AUTH CRAM-MD5", b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw", b"AUTH CRAM-MD5", b"*", b"ATRN a.org"),
)
write("odmr_session", "starttls", header(3) + crlf(b"EHLO c", b"AUTH CRAM-MD5", b"STARTTLS") + ODMR)
write("odmr_session", "chunked", header(0, (1, 5, 2, 40)) + ODMR)

write("odmr_session", "scram", header(0) + crlf(b"EHLO c", b"AUTH SCRAM-SHA-256 $SCRAM1$", b"$SCRAM2$", b"", b"ATRN"))
write("odmr_session", "scram_server_first", header(0) + crlf(b"EHLO c", b"AUTH SCRAM-SHA-256", b"$SCRAM1$", b"$SCRAM2$", b"", b"ATRN a.org"))
b64 = base64.b64encode
write(
    "odmr_session",
    "plain_login_tls",
    header(4, decisions=(2, 0, 0))
    + crlf(b"EHLO c", b"AUTH PLAIN " + b64(b"\0acme\0wrong"), b"AUTH LOGIN", b64(b"acme"), b64(b"pw"), b"ATRN b.org"),
)
write("odmr_session", "external", header(0x84, decisions=(0, 0)) + crlf(b"EHLO c", b"AUTH EXTERNAL =", b"ATRN"))
write("odmr_session", "external_authzid", header(0x81, (18,)) + crlf(b"EHLO c", b"STARTTLS") + crlf(b"EHLO c", b"AUTH EXTERNAL", b64(b"acme"), b"ATRN"))
write("odmr_session", "plain", header(0) + crlf(b"EHLO c", b"AUTH PLAIN", b64(b"acme\0acme\0pw"), b"AUTH PLAIN ="))

# customer: flags bit 0 two domains, bit 1 STARTTLS, bit 2 implicit TLS.
CHALLENGE = b"334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
PROVIDER = crlf(
    b"220 odmr.example.net ESMTP ODMR service ready",
    b"250-odmr.example.net greets cust.example",
    b"250-AUTH CRAM-MD5",
    b"250-ATRN",
    b"250 HELP",
    CHALLENGE,
    b"235 Authentication successful",
)
write("customer", "turnaround", header(1) + PROVIDER + crlf(b"250 OK now reversing the connection", b"220 ok"))
write("customer", "no_mail", header(0, (7, 3)) + PROVIDER + crlf(b"453 You have no mail", b"221 bye"))
write(
    "customer",
    "starttls",
    header(2) + crlf(b"220 x", b"250-x", b"250-STARTTLS", b"250 ATRN", b"220 go") ,
)
write("customer", "auth_refused", header(0) + PROVIDER.replace(b"235 Authentication successful", b"535 no") + crlf(b"221 bye"))
write("customer", "bad_challenge", header(0) + PROVIDER.replace(CHALLENGE, b"334 !!!") + crlf(b"501 cancelled", b"221 bye"))
# bit 4: ETRN for two domains; bit 5 with it: no password (no AUTH).
ETRN_MX = crlf(b"220 mx ESMTP", b"250-mx", b"250-AUTH CRAM-MD5", b"250 ETRN")
write("customer", "etrn", header(0x10) + ETRN_MX + crlf(CHALLENGE, b"235 ok", b"253 2.0.0 OK, 2 pending", b"458 4.3.0 busy", b"221 bye"))
write("customer", "etrn_no_auth", header(0x30) + ETRN_MX + crlf(b"251 2.0.0 none", b"459 4.7.1 no", b"221 bye"))
write("customer", "etrn_unsupported", header(0x30) + crlf(b"220 mx", b"250 mx", b"502 5.5.1 no ETRN", b"221 bye"))



def scram_provider(user=b"tim", password=b"tanstaaftanstaaf", cnonce=b"fuzznonce"):
    """A provider's side of a correct SCRAM-SHA-256 exchange with the customer target."""
    salt, it = b"0123456789abcdef", 4096
    nonce = cnonce + b"provider"
    server_first = b"r=" + nonce + b",s=" + b64(salt) + b",i=" + str(it).encode()
    client_first_bare = b"n=" + user + b",r=" + cnonce
    without_proof = b"c=" + b64(b"n,,") + b",r=" + nonce
    auth = client_first_bare + b"," + server_first + b"," + without_proof
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, it)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    sig = hmac.new(server_key, auth, hashlib.sha256).digest()
    return crlf(b"334 " + b64(server_first), b"334 " + b64(b"v=" + b64(sig)))


EHLO_ALL = crlf(b"220 p ESMTP", b"250-p", b"250-AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN", b"250 ATRN")
write("customer", "scram", header(1) + EHLO_ALL + scram_provider() + crlf(b"235 ok", b"250 OK", b"EHLO p"))
write("customer", "external", header(0xC) + crlf(b"220 p", b"250-p", b"250-AUTH EXTERNAL PLAIN", b"250 ATRN", b"235 ok", b"250 go"))
write("customer", "plain_tls", header(4) + crlf(b"220 p", b"250-p", b"250-AUTH PLAIN LOGIN", b"250 ATRN", b"235 ok", b"451 later"))

# deliverer: decisions pick the message (low 2 bits: recipients) or quit (d % 8 == 7).
CUSTOMER = crlf(b"220 cust.example ESMTP", b"250-cust.example", b"250-PIPELINING", b"250-8BITMIME", b"250-DSN", b"250 SIZE 10000")
write(
    "deliverer",
    "pipelined",
    header(0, decisions=(3, 7))
    + CUSTOMER
    + crlf(b"250 2.1.0 ok", b"250 2.1.5 ok", b"452 4.5.3 too many", b"550 5.1.1 no", b"354 go", b"250 2.0.0 queued", b"221 bye"),
)
write(
    "deliverer",
    "lockstep",
    header(5, (9, 1), decisions=(2, 2, 7))
    + crlf(b"220 c", b"500 what", b"250 c")
    + crlf(b"250 ok", b"250 ok", b"250 ok", b"354 go", b"250 ok")
    + crlf(b"250 ok", b"421 4.3.0 going away"),
)
write(
    "deliverer",
    "chunking",
    header(0, decisions=(1, 2, 7))
    + crlf(b"220 cust.example ESMTP", b"250-cust.example", b"250-PIPELINING", b"250-CHUNKING", b"250 8BITMIME")
    + crlf(b"250 2.1.0 ok", b"250 2.1.5 ok", b"250 2.0.0 first", b"250 reset", b"250 ok", b"550 5.1.1 no", b"250 ok")
    + crlf(b"554 5.5.1 failed", b"221 bye"),
)
write("deliverer", "refused", header(0) + crlf(b"554 go away", b"221 bye"))
write(
    "deliverer",
    "no_recipient",
    header(0, decisions=(1, 7)) + CUSTOMER + crlf(b"250 ok", b"550 no", b"354 go", b"250 ok", b"250 ok", b"221 bye"),
)

# deliverer with STARTTLS: flags >> 6 picks the policy (1 if offered, 2 required).
write(
    "deliverer",
    "starttls",
    header(0x40, decisions=(1, 7))
    + crlf(b"220 cust.example ESMTP", b"250-cust.example", b"250-PIPELINING", b"250 STARTTLS", b"220 go ahead")
    + crlf(b"250-cust.example", b"250 PIPELINING")
    + crlf(b"250 ok", b"250 ok", b"354 go", b"250 ok", b"221 bye"),
)
write(
    "deliverer",
    "starttls_required_refused",
    header(0x80) + crlf(b"220 c", b"250-c", b"250 STARTTLS", b"454 4.7.0 no TLS", b"221 bye"),
)

# parsers: octet 0 picks the parser (0 reply, 1 ATRN, 2 CRAM-MD5, 3 LineReader, 4 split_verb,
# 5 PLAIN/LOGIN, 6 SCRAM server).
write("parsers", "reply", b"\x00" + crlf(b"250-mx greets", b"250-PIPELINING", b"250 2.0.0 SIZE 1000", b"451 4.3.0 later", b"354"))
write("parsers", "atrn", b"\x01 example.org, B.example.net.  c.org")
write("parsers", "atrn_bad", b"\x01 a.org,,[1.2.3.4]")
write("parsers", "cram", b"\x02tim b913a602c7eda7a495b4e6e7334d3890\r\n")
write("parsers", "cram_secret", b"\x02" + b"\x01" + bytes(range(32)))
write("parsers", "lines", b"\x03\x03\x05\x10NOOP\r\nQUIT\nx" + b"y" * 40 + b"\r\nRSET\r\n")
write("parsers", "verb", b"\x04mail   FROM:<a@b>")
write("parsers", "plain", b"\x05acme\0acme\0p\xc2\xa0w")
write("parsers", "login", b"\x05I\xe2\x85\xa8")
cf = b"n,,n=acme,r=abc"
write("parsers", "scram_known", b"\x06\x01" + bytes([len(cf)]) + cf + b"c=biws,r=abcZnV6eg==,p=" + b64(bytes(32)))
write("parsers", "scram_unknown", b"\x06\x00" + bytes([len(cf)]) + cf + b"c=biws,r=abcZnV6eg==,p=" + b64(bytes(32)))
# splice_observer: NUL-separated segments, first octet odd = provider, even = local server.
def splice(*segs):
    return b"\0".join((b"P" if side == "P" else b"L") + data for side, data in segs)


write(
    "splice_observer",
    "two_messages",
    splice(
        ("L", b"220 local ESMTP\r\n"),
        ("P", b"EHLO provider\r\n"),
        ("L", b"250-local\r\n250 PIPELINING\r\n"),
        ("P", b"MAIL FROM:<a@b>\r\nRCPT TO:<x@c>\r\nDATA\r\n"),
        ("L", b"250 ok\r\n250 ok\r\n354 go\r\n"),
        ("P", b"Subject: 1\r\n\r\n..DATA\r\n.\r\n"),
        ("L", b"250 queued\r\n"),
        ("P", b"MAIL FROM:<a@b>\r\nRCPT TO:<y@c>\r\nDATA\r\n"),
        ("L", b"250 ok\r\n250 ok\r\n354 go\r\n"),
        ("P", b"body\r\n.\r\n"),
        ("L", b"451 4.3.0 try later\r\n"),
        ("P", b"QUIT\r\n"),
        ("L", b"221 bye\r\n"),
    ),
)
write(
    "splice_observer",
    "refused_data",
    splice(
        ("L", b"220 l\r\n"),
        ("P", b"MAIL FROM:<a@b>\r\nRCPT TO:<z@c>\r\nDATA\r\n"),
        ("L", b"250 ok\r\n550 no\r\n554 no valid recipients\r\n"),
        ("P", b".\r\nRSET\r\n"),
        ("L", b"250 ok\r\n"),
    ),
)

# dsn: octet 0 picks the parameter parsers (0; octet 1 even = MAIL, odd = RCPT) or compose (1;
# octet 1 = flags, then NUL-separated fields and the original message).
write("dsn", "mail", b"\x00\x00MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1 BODY=8BITMIME")
write("dsn", "rcpt", b"\x00\x01RCPT TO:<\"x> y\"@c> NOTIFY=failure,DELAY ORCPT=rfc822;b+40c SIZE=1")
write("dsn", "rcpt_utf8", b"\x00\x01RCPT TO:<b@c> ORCPT=utf-8;j\\x{E9}r\xc3\xb4me@c NOTIFY=NEVER")
write("dsn", "repeat", b"\x00\x00MAIL FROM:<> RET=FULL RET=FULL")
write(
    "dsn",
    "report",
    b"\x01\x24"
    + b"\0".join(
        [
            b"alice@sender.example",
            b"j\xc3\xa9r\xc3\xb4me@example.org",
            b"5.1.1",
            b"550-5.1.1 unknown\r\n550 5.1.1 user",
            b"mail.example.org",
            b"Your message could not be delivered.\n\n    bob@example.org\n",
            b"utf-8;j\xc3\xa9r\xc3\xb4me@example.org",
            b"QQ314159",
            b"4711",
            MESSAGE,
        ]
    ),
)

# relay: flags bit 0 LMTP, bit 1 large body pieces, bit 2 a write fails (the one numbered by the
# top bits). Decisions, per phase: no transaction d % 8 0-4 MAIL, 5 settle, 6 RSET, 7 QUIT; in a
# transaction 0-3 RCPT (bit 4: the provider's DATA already read), 4-5 DATA, 6 RSET, 7 settle;
# in DATA d % 4 0-1 a body piece of (d >> 2) octets, 2 the end, 3 abandon.
RELAY_TAPE = (0x00, 0x10, 0x04, 0x40, 0x02, 0x00, 0x11, 0x05)
RELAY_REPLIES = crlf(b"250 2.1.0 ok", b"250 2.1.5 ok", b"354 go", b"250 2.0.0 queued as 1", b"250 ok", b"250 ok", b"354 go")
write(
    "relay",
    "pipelined",
    header(0, (9, 3), RELAY_TAPE)
    + crlf(b"220 mta.example ESMTP", b"250-mta.example", b"250-PIPELINING", b"250-8BITMIME", b"250 SIZE 10000")
    + RELAY_REPLIES
    + crlf(b"250 2.0.0 queued as 2", b"221 bye"),
)
write(
    "relay",
    "lockstep",
    header(0, (5,), RELAY_TAPE)
    + crlf(b"220 mta.example", b"500 what", b"250 mta.example")
    + RELAY_REPLIES
    + crlf(b"250 2.0.0 queued as 2", b"221 bye"),
)
write(
    "relay",
    "lmtp",
    header(1, (), (0x00, 0x10, 0x00, 0x04, 0x40, 0x02, 0x00, 0x11))
    + crlf(b"220 lmtp.example LMTP", b"250-lmtp.example", b"250 PIPELINING")
    + crlf(b"250 ok", b"250 ok", b"354 go", b"452 4.2.2 mailbox full", b"250 ok", b"550 5.1.1 unknown", b"554 5.5.1 no valid recipients", b"250 reset"),
)
write(
    "relay",
    "refusals",
    header(0, (), (0x00, 0x10, 0x00, 0x12, 0x05, 0x06, 0x05, 0x42))
    + crlf(b"220 m", b"250-m", b"250 PIPELINING")
    + crlf(b"550 5.7.1 not from you", b"503 need MAIL", b"250 ok", b"250 ok", b"452 4.3.1 full", b"250 reset", b"421 4.3.2 bye"),
)
write(
    "relay",
    "big_body",
    header(2, (), (0x00, 0x00, 0x04, 0x00, 0x01, 0x00, 0x02, 0x07))
    + crlf(b"220 m", b"250-m", b"250 PIPELINING", b"250 ok", b"250 ok", b"354 go", b"250 queued", b"221 bye"),
)
write(
    "relay",
    "write_fails",
    header(4 | (4 << 3), (), (0x00, 0x10, 0x04, 0x00, 0x00, 0x02, 0x00, 0x07))
    + crlf(b"220 m", b"250 m", b"250 ok", b"250 ok", b"354 go", b"250 queued", b"221 bye"),
)
write("relay", "garbage", header(0, (3,), RELAY_TAPE) + crlf(b"220 m", b"250-m", b"250 PIPELINING", b"250 ok", b"not a reply"))

# Regression seeds: inputs that made a target fail once. They stay, so that a fix is checked on
# every run (libFuzzer runs the seeds first).
# parse_reply sliced the reply text at octet 4 inside a multi-octet character (reply.rs).
write("parsers", "regress-reply-utf8", b"\x00250\xc3\xa9\r\n")
write("customer", "regress-reply-utf8", header(0) + b"220\xc3\xa9\r\n")
write("deliverer", "regress-reply-utf8", header(0) + b"220 c\r\n250\xffx\r\n")
# A UTF-8 postmaster address made a seven_bit_only DSN 8-bit without asking for SMTPUTF8 (dsn.rs).
write(
    "dsn",
    "regress-utf8-postmaster",
    b"\x01\x10" + b"\0".join([b"a@b.example", b"x@y.example", b"5.1.1", b"550 5.1.1 no", b"h\xc3\xb6st.example", b"text", b"", b"", b"u", MESSAGE]),
)
# Found in review: an explanation line indented by more than 998 spaces underflowed in wrap().
write(
    "dsn",
    "regress-deep-indent",
    b"\x01\x00" + b"\0".join([b"a@b.example", b"x@y.example", b"5.1.1", b"550 5.1.1 no", b"h.example", b" " * 1200 + b"word " + b"x" * 1100, b"", b"", b"u", MESSAGE]),
)
# A 250 (not 354) to DATA made the recipient Delivered although no body was sent (deliver.rs).
write(
    "deliverer",
    "regress-data-250",
    header(0, decisions=(1, 7)) + crlf(b"220 c", b"250 c", b"250 ok", b"250 ok", b"250 ok", b"221 bye"),
)
# A 250 (not 354) to a DATA sent before the body became a 2xx verdict: the provider would have
# counted as delivered a message that never left (relay).
write(
    "relay",
    "regress-data-250",
    header(0, (), (0x00, 0x00, 0x04, 0x02, 0x07))
    + crlf(b"220 m", b"250-m", b"250 PIPELINING", b"250 ok", b"250 ok", b"250 ok", b"250 reset", b"221 bye"),
)
write(
    "splice_observer",
    "bdat",
    splice(
        ("L", b"220 l\r\n"),
        ("P", b"EHLO p\r\n"),
        ("L", b"250-l\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
        ("P", b"MAIL FROM:<a@b>\r\nRCPT TO:<x@c>\r\nBDAT 9\r\nDATA\r\n.\r\nBDAT 3 LAST\r\nab\n"),
        ("L", b"250 ok\r\n250 ok\r\n250 9 octets\r\n250 queued\r\n"),
    ),
)
