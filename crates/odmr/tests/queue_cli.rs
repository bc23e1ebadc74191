//! The operators' hand on the queue, the leases and the domains' policy: `odmr queue
//! list/show/delete/bounce/hold/release`, `odmr lease list/break`, `odmr domain set/show`.
//! Mail goes in through the real MX listener; deliveries are real ATRN sessions of the scripted
//! customer `tests/peers/odmr_customer.py`; JSON outputs are parsed, as a script would.

mod common;

use common::customer::{self, received_rcpts, Running};
use common::{send_mail, Server};
use serde_json::Value;
use std::time::{Duration, Instant};

const PW: &str = "s3cret-pw";

fn mail(s: &Server, to: &[&str], body: &str) {
    let r = send_mail(s.smtp, "alice@sender.test", to, body);
    assert!(r.starts_with("250"), "MX refused the message: {r}");
}

/// Runs a command that must succeed; returns its stdout. Its stderr must be empty: without a
/// terminal there is no progress bar, so scripts and cron see only the result.
fn ok(s: &Server, args: &[&str]) -> String {
    let (st, out, err) = s.cli(args, None);
    assert_eq!(st, 0, "odmr {args:?} failed:\n{err}{out}");
    assert_eq!(err, "", "odmr {args:?} wrote to stderr");
    out
}

/// Runs a command; returns its status, its stdout as bytes, exactly, and its stderr.
fn raw(s: &Server, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = std::process::Command::new(common::BIN)
        .args(args)
        .arg("--config")
        .arg(&s.config)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run odmr");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &Server, args: &[&str]) -> Value {
    let out = ok(s, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("odmr {args:?}: not JSON ({e}):\n{out}"))
}

/// Runs a command that must fail with `status`; returns its stderr.
fn fails(s: &Server, args: &[&str], status: i32) -> String {
    let (st, out, err) = s.cli(args, None);
    assert_eq!(st, status, "odmr {args:?} should fail with {status}:\n{err}{out}");
    err
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

/// (address, state) of every recipient listed, sorted.
fn states(list: &Value) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["recipients"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A queue listing without the ages, which move on between two listings.
fn timeless(mut list: Value) -> Value {
    for m in list.as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("age_seconds");
    }
    list
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn list_filters_by_domain_and_state_and_json_has_every_field() {
    let s = Server::start();
    s.account("acme", PW, &["example.org", "example.net"]);
    mail(
        &s,
        &["bob@example.org", "carol@example.net"],
        "Subject: one\r\n\r\nhi\r\n",
    );
    mail(&s, &["dave@example.org"], "Subject: two\r\n\r\nhi\r\n");
    mail(&s, &["erin@example.net"], "Subject: three\r\n\r\nhi\r\n");
    let all = s.queue();
    let (m1, m2, m3) = (ids(&all)[0], ids(&all)[1], ids(&all)[2]);
    assert_eq!(
        ok(&s, &["queue", "hold", &m2.to_string()]).trim(),
        "held 1 recipient of 1 message; they wait until `odmr queue release`"
    );

    let org = json(&s, &["queue", "list", "--domain", "Example.ORG", "--json"]);
    assert_eq!(ids(&org), [m1, m2]);
    assert_eq!(
        states(&org),
        pairs(&[("bob@example.org", "queued"), ("dave@example.org", "held")])
    );
    let held = json(&s, &["queue", "list", "--state", "held", "--json"]);
    assert_eq!(ids(&held), [m2]);
    let net_queued = json(
        &s,
        &[
            "queue",
            "list",
            "--domain",
            "example.net",
            "--state",
            "queued",
            "--json",
        ],
    );
    assert_eq!(ids(&net_queued), [m1, m3]);
    assert_eq!(
        states(&net_queued),
        pairs(&[("carol@example.net", "queued"), ("erin@example.net", "queued")])
    );
    let none = json(
        &s,
        &[
            "queue",
            "list",
            "--domain",
            "example.net",
            "--state",
            "failed",
            "--json",
        ],
    );
    assert_eq!(none, serde_json::json!([]));

    // Every field of the envelope and of each recipient, for scripts.
    let m = &all[0];
    for key in [
        "id",
        "received_at",
        "age_seconds",
        "size",
        "sender",
        "mail_params",
        "eight_bit",
        "helo",
        "client_addr",
    ] {
        assert!(!m[key].is_null(), "{key} missing: {m}");
    }
    assert_eq!(m["helo"], "sender.test");
    assert!(
        m["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{m}"
    );
    let r = &m["recipients"][0];
    for key in [
        "id",
        "address",
        "domain",
        "params",
        "state",
        "reply",
        "last_reply",
        "remote_mta",
        "status",
        "attempts",
        "updated_at",
        "warned",
    ] {
        assert!(r.get(key).is_some(), "{key} missing: {r}");
    }
    assert_eq!(r["domain"], "example.org");

    // The table: one row per recipient, the message's columns on its first row only.
    let table = ok(&s, &["queue", "list", "--domain", "example.org"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST REPLY"),
        "{table}"
    );
    assert!(
        lines[1].contains("alice@sender.test")
            && lines[1].contains("bob@example.org")
            && lines[1].contains("queued"),
        "{table}"
    );
    assert!(
        lines[2].contains("dave@example.org") && lines[2].contains("held"),
        "{table}"
    );
    assert!(!table.contains("carol@example.net"), "{table}");
    assert_eq!(lines.last().unwrap().trim(), "2 messages, 2 recipients");
    let (_, empty, _) = s.cli(&["queue", "list", "--state", "failed"], None);
    assert_eq!(empty.trim(), "no failed recipient");
}

#[test]
fn show_prints_the_envelope_the_headers_and_on_request_the_whole_message() {
    let s = Server::start();
    s.account("acme", PW, &["example.org"]);
    // Over two store chunks (256 KiB each), so the body is read back in pieces.
    let mut body = String::from("From: alice@sender.test\r\nSubject: big one\r\n\r\n");
    for i in 0..10000 {
        body.push_str(&format!(
            "line {i:05} of the body, long enough to fill the chunks quickly\r\n"
        ));
    }
    body.push_str("the last line\r\n");
    mail(&s, &["bob@example.org", "carol@example.org"], &body);
    let id = ids(&s.queue())[0];
    let size = s.queue()[0]["size"].as_u64().unwrap();
    assert!(size > 2 * 256 * 1024, "{size}");

    let out = ok(&s, &["queue", "show", &id.to_string()]);
    assert!(out.starts_with(&format!("message {id}\n")), "{out}");
    for want in [
        "<alice@sender.test>",
        "from sender.test [127.0.0.1:",
        "<bob@example.org>  queued, 0 attempts",
        "<carol@example.org>",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    let headers = out.split_once("\nheaders\n").expect("headers section").1;
    assert!(headers.starts_with("Received: from sender.test "), "{headers}");
    assert!(headers.ends_with("Subject: big one\r\n"), "{headers}");
    assert!(!headers.contains("line 00000"), "{headers}");

    // --body: the message and nothing else on stdout, byte for byte as sent (after the
    // Received: line the MX put on top); what it is about on stderr.
    let (st, whole, err) = raw(&s, &["queue", "show", &id.to_string(), "--body"]);
    assert_eq!(st, 0, "{err}");
    assert_eq!(whole.len() as u64, size);
    let received = &whole[..whole.len() - body.len()];
    assert!(
        received.starts_with(b"Received: from sender.test ") && received.ends_with(b"\r\n"),
        "{}",
        String::from_utf8_lossy(received)
    );
    assert!(
        !received.windows(4).any(|w| w == b"\r\n\r\n"),
        "more than a header line before the message"
    );
    assert!(
        whole[received.len()..] == *body.as_bytes(),
        "stdout is not the message as sent"
    );
    assert!(
        err.starts_with(&format!("message {id}\n"))
            && err.contains("<alice@sender.test>")
            && err.contains("<bob@example.org>  queued")
            && !err.contains("big one"),
        "{err}"
    );

    let v = json(&s, &["queue", "show", &id.to_string(), "--json"]);
    assert_eq!(v["id"], id);
    assert_eq!(v["recipients"].as_array().unwrap().len(), 2);
    let h = v["headers"].as_str().unwrap();
    assert!(
        h.contains("Subject: big one\r\n") && !h.contains("line 00000"),
        "{h}"
    );
    let v = json(&s, &["queue", "show", &id.to_string(), "--json", "--body"]);
    assert_eq!(v["data"].as_str().unwrap().len() as u64, size);

    let err = fails(&s, &["queue", "show", "999"], 1);
    assert!(
        err.contains("no message 999") && err.contains("odmr queue list"),
        "{err}"
    );
}

/// A customer's reply of several lines is kept whole and rendered where it is shown: on one
/// line with single spaces in the list, the log and the JSON's `last_reply`, as code, status and
/// lines in the JSON's `reply`, line by line in `show`.
#[test]
fn a_multi_line_reply_is_listed_on_one_line_and_shown_line_by_line() {
    let Some(py) = common::python() else { return };
    let s = Server::start();
    s.account("acme", PW, &["example.org"]);
    mail(&s, &["x@example.org"], "Subject: busy\r\n\r\nx\r\n");
    let wire = "450-4.2.1 Mailbox busy,\r\n450-4.2.1\r\n450 4.2.1  try  again later";
    let r = customer::run(
        &py,
        &s,
        "acme",
        PW,
        Some("example.org"),
        &["--rcpt-reply", &format!("x@example.org={wire}")],
    );
    assert_eq!(r["atrn_code"], 250, "{r}");
    let one_line = "450 4.2.1 Mailbox busy, try again later";

    let q = s.queue();
    let id = ids(&q)[0].to_string();
    let rcpt = &q[0]["recipients"][0];
    assert_eq!(rcpt["state"], "queued", "{rcpt}");
    assert_eq!(
        rcpt["reply"],
        serde_json::json!({
            "code": 450,
            "status": "4.2.1",
            "lines": ["Mailbox busy,", "", "try  again later"],
        })
    );
    assert_eq!(rcpt["last_reply"], one_line);

    let table = ok(&s, &["queue", "list"]);
    let row = table.lines().nth(1).unwrap();
    assert!(row.ends_with(&format!("  {one_line}")), "{table}");
    assert!(s.logged(&format!("reply={one_line}")), "{}", s.log());

    let out = ok(&s, &["queue", "show", &id]);
    assert!(
        out.contains(
            "\n      last reply  450 4.2.1 Mailbox busy,\n                  try  again later\n      remote MTA  "
        ),
        "{out}"
    );
}

#[test]
fn held_mail_is_not_delivered_by_atrn_until_released() {
    let Some(py) = common::python() else { return };
    let s = Server::start();
    s.account("acme", PW, &["example.org", "example.net"]);
    mail(&s, &["x@example.org"], "Subject: org\r\n\r\nfor org\r\n");
    mail(&s, &["y@example.net"], "Subject: net\r\n\r\nfor net\r\n");

    let out = ok(&s, &["queue", "hold", "--domain", "example.org"]);
    assert_eq!(
        out.trim(),
        "held 1 recipient of 1 message in example.org; they wait until `odmr queue release`"
    );
    // A bare ATRN asks for both domains: only the one not held is delivered.
    let r = customer::run(&py, &s, "acme", PW, None, &[]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(received_rcpts(&r), ["y@example.net"]);
    let r = customer::run(&py, &s, "acme", PW, Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 453, "held mail is no mail to deliver: {r}");
    assert_eq!(states(&s.queue()), pairs(&[("x@example.org", "held")]));

    let out = ok(&s, &["queue", "release", "--domain", "example.org"]);
    assert_eq!(
        out.trim(),
        "released 1 recipient of 1 message in example.org; the next ATRN delivers them"
    );
    let r = customer::run(&py, &s, "acme", PW, Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(received_rcpts(&r), ["x@example.org"]);
    assert_eq!(s.queue(), serde_json::json!([]));
}

/// `odmr queue bounce` leaves with its failure notices queued: `queue list --domain @outbound`
/// shows them as soon as it returns. The server is stopped, so no maintenance pass of it can be
/// what made them.
#[test]
fn bounce_queues_the_failure_notices_before_it_returns() {
    let mut s = Server::start();
    s.account("acme", PW, &["example.org", "example.net"]);
    mail(&s, &["a@example.org", "b@example.net"], "Subject: 1\r\n\r\nx\r\n");
    mail(&s, &["c@example.org"], "Subject: 2\r\n\r\nx\r\n");
    mail(&s, &["d@example.org"], "Subject: 3\r\n\r\nx\r\n");
    let r = send_mail(s.smtp, "", &["e@example.net"], "Subject: 4\r\n\r\nx\r\n");
    assert!(r.starts_with("250"), "{r}");
    let q = s.queue();
    let (m1, m2, m3, m4) = (ids(&q)[0], ids(&q)[1], ids(&q)[2], ids(&q)[3]);
    s.stop();
    ok(&s, &["queue", "hold", &m2.to_string()]);
    let outbound = |s: &Server| json(s, &["queue", "list", "--domain", "@outbound", "--json"]);
    assert_eq!(outbound(&s), serde_json::json!([]));

    let out = ok(&s, &["queue", "bounce", &m1.to_string(), &m2.to_string()]);
    assert_eq!(
        out.trim(),
        "bounced 3 recipients of 2 messages; 2 failure notices queued for their senders \
         (`odmr queue list --domain @outbound`)"
    );
    let notices = outbound(&s);
    assert_eq!(
        states(&notices),
        pairs(&[("alice@sender.test", "queued"), ("alice@sender.test", "queued")])
    );
    assert!(
        notices.as_array().unwrap().iter().all(|n| n["sender"] == ""),
        "{notices}"
    );
    // Each notice reports its message's bounced recipients with the operator's 5.0.0.
    let mut reported = Vec::new();
    for n in ids(&notices) {
        let (st, text, err) = raw(&s, &["queue", "show", &n.to_string(), "--body"]);
        assert_eq!(st, 0, "{err}");
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("Action: failed") && text.contains("Status: 5.0.0"),
            "{text}"
        );
        let mut finals: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("Final-Recipient: rfc822;"))
            .map(str::trim)
            .collect();
        finals.sort();
        reported.push(finals.join(" "));
    }
    reported.sort();
    assert_eq!(reported, ["a@example.org b@example.net", "c@example.org"]);
    // The bounced messages are done: settled, gone from the queue, nothing left failed.
    assert_eq!(
        json(&s, &["queue", "list", "--state", "failed", "--json"]),
        serde_json::json!([])
    );
    let left = json(&s, &["queue", "list", "--json"]);
    let customers: Vec<i64> = ids(&left)
        .into_iter()
        .filter(|i| ids(&notices).binary_search(i).is_err())
        .collect();
    assert_eq!(customers, [m3, m4]);

    // Nothing left to bounce in a domain; the JSON summary counts the notices.
    let out = ok(
        &s,
        &["queue", "bounce", "--domain", "example.net", &m4.to_string()],
    );
    assert_eq!(out.trim(), "bounced 1 recipient of 1 message in example.net; no notice queued: their senders asked for none (null sender or NOTIFY without FAILURE)");
    let out = ok(&s, &["queue", "bounce", "--domain", "example.net"]);
    assert_eq!(
        out.trim(),
        "nothing to bounce: no queued or held recipient in example.net matched"
    );
    let v = json(&s, &["queue", "bounce", "--domain", "example.org", "--json"]);
    assert_eq!(
        v,
        serde_json::json!({"action": "bounce", "domain": "example.org", "messages": 1, "recipients": 1, "notices": 1})
    );
    assert_eq!(ids(&outbound(&s)).len(), 3);
    let left = json(&s, &["queue", "list", "--json"]);
    assert!(
        states(&left).iter().all(|(a, _)| a == "alice@sender.test"),
        "{left}"
    );
}

#[test]
fn delete_by_domain_leaves_the_other_recipients_and_by_id_removes_the_message() {
    let s = Server::start();
    s.account("acme", PW, &["example.org", "example.net"]);
    mail(&s, &["a@example.org", "b@example.net"], "Subject: 1\r\n\r\nx\r\n");
    mail(&s, &["c@example.org"], "Subject: 2\r\n\r\nx\r\n");
    mail(&s, &["d@example.net"], "Subject: 3\r\n\r\nx\r\n");
    let q = s.queue();
    let (m1, m3) = (ids(&q)[0], ids(&q)[2]);

    let out = ok(&s, &["queue", "delete", "--domain", "example.org"]);
    assert_eq!(
        out.trim(),
        "deleted 2 recipients of 2 messages in example.org; nobody is notified"
    );
    let q = s.queue();
    assert_eq!(
        ids(&q),
        [m1, m3],
        "the message with only example.org recipients is gone"
    );
    assert_eq!(
        states(&q),
        pairs(&[
            ("a@example.org", "bounced"),
            ("b@example.net", "queued"),
            ("d@example.net", "queued")
        ])
    );
    // The operator's decision is the status; a reply is only ever what a peer said.
    assert_eq!(q[0]["recipients"][0]["status"], "deleted");
    assert_eq!(q[0]["recipients"][0]["last_reply"], Value::Null);
    assert_eq!(
        ids(&json(&s, &["queue", "list", "--domain", "example.org", "--json"])),
        Vec::<i64>::new()
    );

    let v = json(&s, &["queue", "delete", &m1.to_string(), "--json"]);
    assert_eq!(
        v,
        serde_json::json!({"action": "delete", "domain": null, "messages": 1, "recipients": 1})
    );
    assert_eq!(ids(&s.queue()), [m3]);
    let err = fails(&s, &["queue", "show", &m1.to_string()], 1);
    assert!(err.contains(&format!("no message {m1}")), "{err}");
}

#[test]
fn acting_on_the_whole_queue_needs_all_and_unknown_ids_change_nothing() {
    let s = Server::start();
    s.account("acme", PW, &["example.org"]);
    mail(&s, &["a@example.org"], "Subject: 1\r\n\r\nx\r\n");
    mail(&s, &["b@example.org"], "Subject: 2\r\n\r\nx\r\n");
    let before = timeless(s.queue());
    let m1 = ids(&before)[0];

    for verb in ["delete", "bounce", "hold", "release"] {
        let err = fails(&s, &["queue", verb], 1);
        assert!(
            err.contains("--all") && err.contains("--domain") && err.contains(&format!("odmr queue {verb} ")),
            "{err}"
        );
    }
    // An id that is not there: the command stops before touching the ones that are.
    let err = fails(&s, &["queue", "hold", &m1.to_string(), "9999"], 1);
    assert!(
        err.contains("no message 9999") && err.contains("nothing was changed"),
        "{err}"
    );
    let err = fails(
        &s,
        &["queue", "delete", "--domain", "example.net", &m1.to_string()],
        1,
    );
    assert!(
        err.contains("example.net") && err.contains("nothing was changed"),
        "{err}"
    );
    // Ids and --all together are a usage error.
    fails(&s, &["queue", "delete", "--all", &m1.to_string()], 2);
    assert_eq!(timeless(s.queue()), before);

    let out = ok(&s, &["queue", "hold", "--all"]);
    assert_eq!(
        out.trim(),
        "held 2 recipients of 2 messages; they wait until `odmr queue release`"
    );
    let out = ok(&s, &["queue", "delete", "--all"]);
    assert_eq!(
        out.trim(),
        "deleted 2 recipients of 2 messages; nobody is notified"
    );
    assert_eq!(s.queue(), serde_json::json!([]));
    let (_, out, _) = s.cli(&["queue", "list"], None);
    assert_eq!(out.trim(), "queue is empty");
}

/// The most messages a delivery can have handed over and not yet recorded: `UNRECORDED_MAX` in
/// `src/server/deliver.rs` (the outcomes are recorded in batches beside the delivery).
const UNRECORDED_MAX: usize = 137;

#[test]
fn a_broken_lease_stops_the_delivery_at_its_next_write() {
    let Some(py) = common::python() else { return };
    let s = Server::start();
    s.account("acme", PW, &["example.org"]);
    // More than the delivery can hand over before its first record is refused.
    const N: usize = UNRECORDED_MAX + 11;
    let all: Vec<String> = (0..N).map(|i| format!("r{i:03}@example.org")).collect();
    for (i, to) in all.iter().enumerate() {
        mail(&s, &[to], &format!("Subject: {i}\r\n\r\nx\r\n"));
    }
    assert_eq!(json(&s, &["lease", "list", "--json"]), serde_json::json!([]));
    assert_eq!(
        ok(&s, &["lease", "list"]).trim(),
        "no leases: no domain is being delivered"
    );

    // The customer holds the lease and waits 6 s before it greets.
    const HOLD: Duration = Duration::from_secs(6);
    let started = Instant::now();
    let (running, atrn) = Running::start(&py, &s, "acme", PW, Some("example.org"), &["--hold", "6"]);
    assert!(atrn.starts_with("250"), "{atrn}");

    let leases = json(&s, &["lease", "list", "--json"]);
    assert_eq!(leases.as_array().unwrap().len(), 1, "{leases}");
    let l = &leases[0];
    assert_eq!(l["domain"], "example.org");
    assert!(!l["holder"].as_str().unwrap().is_empty(), "{l}");
    assert_eq!(l["expired"], false);
    assert!(l["expires_in_seconds"].as_i64().unwrap() > 0, "{l}");
    let table = ok(&s, &["lease", "list"]);
    assert!(
        table.starts_with("DOMAIN") && table.contains("example.org") && table.contains(" in "),
        "{table}"
    );

    let out = ok(&s, &["lease", "break", "example.org"]);
    assert!(
        out.contains("lease of example.org broken") && out.contains("next write"),
        "{out}"
    );
    assert_eq!(json(&s, &["lease", "list", "--json"]), serde_json::json!([]));
    assert!(
        started.elapsed() < HOLD,
        "the lease was broken after the customer greeted; the test proves nothing"
    );

    // The holder goes on until its first record is refused (at most UNRECORDED_MAX messages,
    // in order), then stops: nothing it delivered counts.
    let r = running.finish();
    let got = received_rcpts(&r);
    assert!(
        !got.is_empty() && got.len() <= UNRECORDED_MAX && got[..] == all[..got.len()],
        "{} received: {got:?}",
        got.len()
    );
    assert_eq!(r["quit"], true);
    // The session names the operator's action, not a fault.
    assert!(
        s.logged("lease broken by the operator (odmr lease break); stopping delivery"),
        "{}",
        s.log()
    );
    assert!(!s.log().contains("expired and was taken over"), "{}", s.log());
    // Wasteful, not harmful: every message is still queued, and the next ATRN delivers them.
    let queued: Vec<(String, String)> = all.iter().map(|a| (a.clone(), "queued".to_string())).collect();
    assert_eq!(states(&s.queue()), queued);
    let r = customer::run(&py, &s, "acme", PW, Some("example.org"), &[]);
    assert_eq!(received_rcpts(&r), all);
    assert_eq!(s.queue(), serde_json::json!([]));

    let err = fails(&s, &["lease", "break", "example.org"], 1);
    assert!(err.contains("no lease on example.org"), "{err}");
}

#[test]
fn domain_policy_round_trips_and_bad_values_name_the_flag_and_the_fix() {
    let s = Server::start();
    s.account("acme", PW, &["example.org"]);
    let v = json(&s, &["domain", "show", "example.org", "--json"]);
    assert_eq!(
        v,
        serde_json::json!({
            "domain": "example.org", "account": "acme", "max_messages": null, "max_bytes": null,
            "max_age_seconds": null, "catch_all": true, "local_parts": null,
            "usage": {"messages": 0, "bytes": 0}
        })
    );

    let out = ok(
        &s,
        &[
            "domain",
            "set",
            "Example.ORG",
            "--max-messages",
            "100",
            "--max-bytes",
            "10M",
            "--max-age",
            "36h",
            "--recipients",
            "Alice,bob@example.org",
        ],
    );
    assert!(out.starts_with("domain example.org updated\n"), "{out}");
    assert!(
        out.contains("limit 100")
            && out.contains("limit 10 MiB")
            && out.contains("1d 12h")
            && out.contains("alice, bob"),
        "{out}"
    );
    ok(
        &s,
        &[
            "domain",
            "set",
            "example.org",
            "--add-recipient",
            "carol",
            "--remove-recipient",
            "alice",
        ],
    );
    mail(&s, &["bob@example.org"], "Subject: 1\r\n\r\nx\r\n");
    let size = s.queue()[0]["size"].as_u64().unwrap();
    let v = json(&s, &["domain", "show", "example.org", "--json"]);
    assert_eq!(v["max_messages"], 100);
    assert_eq!(v["max_bytes"], 10 << 20);
    assert_eq!(v["max_age_seconds"], 36 * 3600);
    assert_eq!(v["catch_all"], false);
    assert_eq!(v["local_parts"], serde_json::json!(["bob", "carol"]));
    assert_eq!(v["usage"], serde_json::json!({"messages": 1, "bytes": size}));
    // Only what a flag names changes.
    ok(&s, &["domain", "set", "example.org", "--max-bytes", "500k"]);
    let v = json(&s, &["domain", "show", "example.org", "--json"]);
    assert_eq!(v["max_bytes"], 500 << 10);
    assert_eq!(v["max_messages"], 100);

    // Bad values: clap's usage error (status 2) names the flag, our text the fix.
    for (args, want) in [
        (vec!["--max-bytes", "huge"], vec!["--max-bytes", "10M", "1024"]),
        (vec!["--max-messages", "0"], vec!["--max-messages", "none"]),
        (vec!["--max-age", "soon"], vec!["--max-age", "7d", "default"]),
        (
            vec!["--catch-all", "--recipients", "a"],
            vec!["--catch-all", "--recipients"],
        ),
    ] {
        let mut all = vec!["domain", "set", "example.org"];
        all.extend(&args);
        let err = fails(&s, &all, 2);
        for w in want {
            assert!(err.contains(w), "{args:?}: {w:?} missing: {err}");
        }
    }
    // Errors found against the stored policy: status 1, the flag and the fix named.
    for (args, want) in [
        (
            vec!["--recipients", "bob@other.test"],
            vec!["--recipients", "bob@other.test", "local parts"],
        ),
        (
            vec!["--remove-recipient", "zed"],
            vec!["--remove-recipient", "zed", "nothing was changed"],
        ),
        (
            vec!["--remove-recipient", "bob,carol"],
            vec!["--remove-recipient", "--catch-all"],
        ),
        (vec![], vec!["nothing to change", "--max-messages"]),
    ] {
        let mut all = vec!["domain", "set", "example.org"];
        all.extend(&args);
        let err = fails(&s, &all, 1);
        for w in want {
            assert!(err.contains(w), "{args:?}: {w:?} missing: {err}");
        }
    }
    let err = fails(&s, &["domain", "set", "nowhere.test", "--max-messages", "5"], 1);
    assert!(
        err.contains("nowhere.test") && err.contains("odmr domain add"),
        "{err}"
    );
    let err = fails(&s, &["domain", "show", "nowhere.test"], 1);
    assert!(err.contains("odmr domain add"), "{err}");

    // Back to the defaults; --add-recipient then needs a list first.
    ok(
        &s,
        &[
            "domain",
            "set",
            "example.org",
            "--catch-all",
            "--max-messages",
            "none",
            "--max-bytes",
            "none",
            "--max-age",
            "default",
        ],
    );
    let v = json(&s, &["domain", "show", "example.org", "--json"]);
    assert_eq!(
        (
            v["catch_all"].clone(),
            v["local_parts"].clone(),
            v["max_messages"].clone(),
            v["max_bytes"].clone(),
            v["max_age_seconds"].clone()
        ),
        (true.into(), Value::Null, Value::Null, Value::Null, Value::Null)
    );
    let err = fails(
        &s,
        &["domain", "set", "example.org", "--add-recipient", "dave"],
        1,
    );
    assert!(err.contains("catch-all") && err.contains("--recipients"), "{err}");
    let text = ok(&s, &["domain", "show", "example.org"]);
    assert!(
        text.contains("catch-all") && text.contains("no limit") && text.contains("server's default"),
        "{text}"
    );
}
