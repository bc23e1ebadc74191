//! The real ODMR client: fetchmail (`proto odmr`) fetching from `odmr server` and relaying
//! into a real local MTA, Postfix's `smtp-sink`, which dumps every transaction it receives to
//! a file headed by the exact envelope (`X-Mail-Args`, one `X-Rcpt-Args` per RCPT).
//!
//! fetchmail's exit code does not say whether mail moved (docs/peers.md has its exit codes), so
//! every test counts what reached the sink and what is left in our queue.

#[path = "peers/client_util.rs"]
mod client_util;
mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use client_util::{pair, states, SmtpSink};
use common::Server;
use interop_util::{atrn_reply, odmr_rc, swaks_replies, Fetchmail, Run};

// ----- what smtp-sink received -----

/// Split off the `Received:` field our provider prepended (first line and its folded
/// continuation lines); returns (that field, the rest).
fn split_our_received(content: &[u8]) -> (String, Vec<u8>) {
    assert!(
        content.starts_with(b"Received: from "),
        "delivered message does not start with our Received: field:\n{}",
        String::from_utf8_lossy(content)
    );
    let mut end = 0;
    loop {
        let nl = end + content[end..].iter().position(|&b| b == b'\n').unwrap() + 1;
        end = nl;
        if !matches!(content.get(end), Some(b'\t') | Some(b' ')) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&content[..end]).into_owned(),
        content[end..].to_vec(),
    )
}

// ----- fetchmail -----

/// Run fetchmail once (`-v`, under `timeout 60`) as `user`, asking for `domains`, relaying
/// into `sink`. Each run has its own 0700 FETCHMAILHOME with a 0600 rc file.
fn fetchmail(server: &Server, user: &str, password: &str, domains: &[&str], sink: &SmtpSink) -> Option<Run> {
    let rc = odmr_rc(server.odmr.port(), user, password, domains, sink.port);
    let run = Fetchmail::find()?.run(&rc);
    Some(run)
}

/// The provider's reply lines before the turnaround, as fetchmail logged them.
fn provider_lines(run: &Run) -> Vec<String> {
    run.all()
        .lines()
        .take_while(|l| !l.starts_with("fetchmail: Turnaround now"))
        .filter_map(|l| {
            l.strip_prefix("fetchmail: ODMR< ")
                .or_else(|| l.strip_prefix("fetchmail: SMTP< "))
        })
        .map(str::to_string)
        .collect()
}

/// Whether the provider sent a reply starting with `code` (e.g. "535 ") before any turnaround.
fn provider_said(run: &Run, code: &str) -> bool {
    provider_lines(run).iter().any(|l| l.starts_with(code))
}

fn turned_around(run: &Run) -> bool {
    run.all().contains("Turnaround now")
}

// ----- senders -----

/// Send one message with swaks into the MX (exactly `message` goes over the wire).
fn swaks_send(server: &Server, from: &str, to: &[&str], message: &[u8]) -> Run {
    interop_util::swaks_send(server.smtp, from, to, message)
}

fn have_peers() -> bool {
    common::peer("fetchmail", "fetchmail").is_some()
        && common::peer("swaks", "swaks").is_some()
        && common::peer("smtp-sink", "postfix").is_some()
}

/// A message exercising transparency: lines starting with '.', a lone '.', 8-bit UTF-8,
/// trailing white space and a line of exactly 998 octets (the RFC 5321 maximum).
fn tricky_message() -> Vec<u8> {
    let mut long = String::from("L");
    while long.len() < 998 {
        long.push_str(&format!("{:09} ", long.len()));
    }
    long.truncate(998);
    assert_eq!(long.len(), 998);
    let text = format!(
        "From: Alice <alice@sender.test>\n\
         To: u1@a.example, u2@a.example\n\
         Subject: interop: dots, 8-bit, a long line\n\
         Message-ID: <tricky.1@sender.test>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\
         \n\
         First line.\n\
         .a line starting with a dot\n\
         ..two dots\n\
         .\n\
         (a lone dot above, which is not the end)\n\
         Grüße aus Köln — ünïcödé ✓ 日本語\n\
         trailing spaces   \n\
         \ttab-indented\t\n\
         {long}\n\
         last line\n"
    );
    text.into_bytes()
}

// ----- the stories -----

/// 1. Two messages go in through swaks; fetchmail takes them out; the sink gets each with
///    its exact envelope and its exact content; our queue is then empty, and a second
///    fetchmail run finds nothing (453) and relays nothing.
#[test]
fn fetchmail_relays_exact_envelopes_and_bodies_then_finds_nothing() {
    if !have_peers() {
        return;
    }
    let server = Server::start();
    server.account("alpha", "alpha-secret", &["a.example"]);
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };

    let tricky = tricky_message();
    let r = swaks_send(
        &server,
        "alice@sender.test",
        &["u1@a.example", "u2@a.example"],
        &tricky,
    );
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());
    let bounce = b"From: MAILER-DAEMON@sender.test\nSubject: a bounce (null sender)\n\nbounce body\n";
    let r = swaks_send(&server, "<>", &["postmaster@a.example"], bounce);
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());
    assert!(
        r.all().contains("MAIL FROM:<>"),
        "swaks did not send the null sender:\n{}",
        r.all()
    );
    assert_eq!(
        states(&server),
        vec![
            pair("postmaster@a.example", "queued"),
            pair("u1@a.example", "queued"),
            pair("u2@a.example", "queued"),
        ]
    );

    let run = fetchmail(&server, "alpha", "alpha-secret", &["a.example"], &sink).unwrap();
    let atrn = atrn_reply(&run).unwrap_or_default();
    assert!(
        atrn.starts_with("250 "),
        "ATRN not accepted: {atrn:?}\n{}",
        run.all()
    );
    assert_eq!(run.code, Some(0), "fetchmail:\n{}", run.all());

    let mut got = sink.messages();
    assert_eq!(got.len(), 2, "sink got {got:#?}\nfetchmail:\n{}", run.all());
    got.sort_by(|a, b| a.mail.cmp(&b.mail));
    let (null, alice) = (&got[0], &got[1]);

    // The envelope, exactly: the 8-bit message is declared as such (RFC 6152); smtp-sink
    // offers no SIZE, so none is sent.
    assert_eq!(alice.mail, "<alice@sender.test> BODY=8BITMIME");
    assert_eq!(alice.rcpts, ["<u1@a.example>", "<u2@a.example>"]);
    assert_eq!(null.mail, "<>");
    assert_eq!(null.rcpts, ["<postmaster@a.example>"]);
    assert_eq!(alice.helo, "odmr.test");

    // The content, octet for octet, behind the one Received: field we add.
    let (received, rest) = split_our_received(&alice.content);
    assert!(
        received.contains("\tby odmr.test (odmr) with ESMTP id "),
        "{received}"
    );
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&tricky),
        "the tricky message changed on the way"
    );
    assert_eq!(rest, tricky);
    let (received, rest) = split_our_received(&null.content);
    assert!(
        received.contains("\tby odmr.test (odmr) with ESMTP id "),
        "{received}"
    );
    assert_eq!(rest, bounce);

    assert_eq!(
        server.queue(),
        serde_json::json!([]),
        "the queue is not empty after delivery"
    );

    // Nothing left: ATRN gets 453, fetchmail treats it as a normal end, nothing is relayed.
    let again = fetchmail(&server, "alpha", "alpha-secret", &["a.example"], &sink).unwrap();
    let atrn = atrn_reply(&again).unwrap_or_default();
    assert!(
        atrn.starts_with("453 "),
        "second run: ATRN got {atrn:?}\n{}",
        again.all()
    );
    assert!(
        !turned_around(&again),
        "second run was turned around:\n{}",
        again.all()
    );
    assert_eq!(again.code, Some(0), "fetchmail:\n{}", again.all());
    assert_eq!(sink.messages().len(), 2, "the second run relayed something");
    assert_eq!(server.queue(), serde_json::json!([]));
}

/// 2. One message for two customers (and a third, unhosted recipient refused at RCPT): each
///    customer's fetchmail gets only its own recipient, the other stays queued for its owner,
///    and nothing is lost, whichever customer comes first.
#[test]
fn mixed_domain_message_is_split_between_customers_in_either_order() {
    if !have_peers() {
        return;
    }
    for first_is_a in [true, false] {
        let server = Server::start();
        server.account("acct-a", "pass-a", &["a.example"]);
        server.account("acct-b", "pass-b", &["b.example"]);
        let (Some(sink_a), Some(sink_b)) = (SmtpSink::start(false), SmtpSink::start(false)) else {
            return;
        };

        let msg = b"From: carol@sender.test\nTo: ua@a.example, ub@b.example, nobody@c.example\n\
                    Subject: shared\n\nfor two customers\n";
        let r = swaks_send(
            &server,
            "carol@sender.test",
            &["ua@a.example", "ub@b.example", "nobody@c.example"],
            msg,
        );
        let replies = swaks_replies(&r);
        assert!(
            replies
                .iter()
                .any(|l| l.starts_with("550 5.7.1") && l.contains("nobody@c.example")),
            "the unhosted recipient was not refused at RCPT:\n{}",
            r.all()
        );
        assert!(
            replies.iter().any(|l| l.starts_with("250 2.0.0")),
            "the message was not accepted for the others:\n{}",
            r.all()
        );
        assert_eq!(
            states(&server),
            vec![pair("ua@a.example", "queued"), pair("ub@b.example", "queued")]
        );

        let customers = [
            ("acct-a", "pass-a", "a.example", "<ua@a.example>", &sink_a),
            ("acct-b", "pass-b", "b.example", "<ub@b.example>", &sink_b),
        ];
        let order: Vec<_> = if first_is_a { vec![0, 1] } else { vec![1, 0] };
        for (step, &i) in order.iter().enumerate() {
            let (user, pass, domain, rcpt, sink) = customers[i];
            let other = customers[1 - i];
            let run = fetchmail(&server, user, pass, &[domain], sink).unwrap();
            let atrn = atrn_reply(&run).unwrap_or_default();
            assert!(
                atrn.starts_with("250 "),
                "{user}: ATRN got {atrn:?}\n{}",
                run.all()
            );
            let got = sink.messages();
            assert_eq!(got.len(), 1, "{user} (step {step}) got {got:#?}\n{}", run.all());
            assert_eq!(got[0].mail, "<carol@sender.test>");
            assert_eq!(got[0].rcpts, [rcpt], "{user} got another customer's recipient");
            assert_eq!(split_our_received(&got[0].content).1, msg);
            assert_eq!(
                other.4.messages().len(),
                step,
                "the other sink received something"
            );

            let st = server.recipient_states();
            let other_addr = other.3.trim_matches(['<', '>']);
            let mine = rcpt.trim_matches(['<', '>']);
            if step == 0 {
                // Ours is delivered (recorded with the sink's reply); the other is untouched.
                assert_eq!(st.len(), 2, "{st:?}");
                let m = st.iter().find(|r| r.0 == mine).expect("our recipient listed");
                assert_eq!(m.1, "delivered", "{st:?}");
                assert!(m.2.starts_with("250"), "{st:?}");
                let o = st
                    .iter()
                    .find(|r| r.0 == other_addr)
                    .expect("other recipient listed");
                assert_eq!((o.1.as_str(), o.2.as_str()), ("queued", ""), "{st:?}");
            } else {
                assert_eq!(
                    server.queue(),
                    serde_json::json!([]),
                    "queue not empty at the end"
                );
            }
        }
        assert_eq!(sink_a.messages().len() + sink_b.messages().len(), 2);
    }
}

/// 3. A wrong password and an unknown account get 535 through fetchmail: nothing is relayed,
///    the mail stays queued, and the server goes on serving the right customer.
#[test]
fn fetchmail_with_bad_credentials_gets_nothing_and_the_server_keeps_serving() {
    if !have_peers() {
        return;
    }
    let server = Server::start();
    server.account("alpha", "right-password", &["a.example"]);
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let msg = b"Subject: held\n\nheld until the right customer comes\n";
    let r = swaks_send(&server, "dave@sender.test", &["u@a.example"], msg);
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());

    for (user, pass) in [("alpha", "wrong-password"), ("nobody", "right-password")] {
        let run = fetchmail(&server, user, pass, &["a.example"], &sink).unwrap();
        assert!(
            provider_said(&run, "535 "),
            "{user}/{pass}: no 535:\n{}",
            run.all()
        );
        assert_eq!(
            atrn_reply(&run),
            None,
            "{user}/{pass}: ATRN was answered:\n{}",
            run.all()
        );
        assert!(
            !turned_around(&run),
            "{user}/{pass}: turned around:\n{}",
            run.all()
        );
        assert_ne!(run.code, Some(0), "{user}/{pass}: fetchmail reported success");
        assert!(sink.messages().is_empty(), "{user}/{pass}: something was relayed");
        assert_eq!(states(&server), vec![pair("u@a.example", "queued")]);
    }

    let run = fetchmail(&server, "alpha", "right-password", &["a.example"], &sink).unwrap();
    let got = sink.messages();
    assert_eq!(got.len(), 1, "the right customer got {got:#?}\n{}", run.all());
    assert_eq!(got[0].mail, "<dave@sender.test>");
    assert_eq!(got[0].rcpts, ["<u@a.example>"]);
    assert_eq!(split_our_received(&got[0].content).1, msg);
    assert_eq!(server.queue(), serde_json::json!([]));
}

/// 4. A customer asking for its own domain and another customer's gets 450 and nothing at
///    all (all or nothing), both customers' mail stays queued, and asking for its own domain
///    alone then works.
#[test]
fn fetchmail_asking_for_a_foreign_domain_gets_450_and_nothing() {
    if !have_peers() {
        return;
    }
    let server = Server::start();
    server.account("acct-a", "pass-a", &["a.example"]);
    server.account("acct-b", "pass-b", &["b.example"]);
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    for (to, body) in [("ua@a.example", "for a\n"), ("ub@b.example", "for b\n")] {
        let data = format!("Subject: {to}\n\n{body}");
        let r = swaks_send(&server, "erin@sender.test", &[to], data.as_bytes());
        assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());
    }
    let both_queued = vec![pair("ua@a.example", "queued"), pair("ub@b.example", "queued")];
    assert_eq!(states(&server), both_queued);

    for domains in [["a.example", "b.example"], ["b.example", "a.example"]] {
        let run = fetchmail(&server, "acct-a", "pass-a", &domains, &sink).unwrap();
        assert!(
            provider_said(&run, "235 "),
            "{domains:?}: AUTH failed:\n{}",
            run.all()
        );
        let atrn = atrn_reply(&run).unwrap_or_default();
        assert!(
            atrn.starts_with("450 "),
            "{domains:?}: ATRN got {atrn:?}\n{}",
            run.all()
        );
        assert!(!turned_around(&run), "{domains:?}: turned around:\n{}", run.all());
        assert!(sink.messages().is_empty(), "{domains:?}: something was relayed");
        assert_eq!(
            server
                .recipient_states()
                .iter()
                .filter(|r| r.2.is_empty())
                .count(),
            2
        );
        assert_eq!(states(&server), both_queued, "{domains:?}");
    }

    // The same customer, asking only for what it owns, gets exactly its own mail.
    let run = fetchmail(&server, "acct-a", "pass-a", &["a.example"], &sink).unwrap();
    let got = sink.messages();
    assert_eq!(got.len(), 1, "got {got:#?}\n{}", run.all());
    assert_eq!(got[0].rcpts, ["<ua@a.example>"]);
    assert_eq!(states(&server), vec![pair("ub@b.example", "queued")]);
}

/// 5. (README, "8-bit mail to a customer without 8BITMIME") The customer's MTA does not offer
///    8BITMIME: the 8-bit message is not sent (neither downgraded nor bounced) and stays queued
///    with `450 4.6.3` recorded, while a 7-bit message in the same session is delivered.
#[test]
fn eight_bit_mail_waits_for_a_customer_mta_without_8bitmime() {
    if !have_peers() {
        return;
    }
    let server = Server::start();
    server.account("alpha", "alpha-secret", &["a.example"]);
    let Some(sink) = SmtpSink::start_with(false, &["-8"]) else {
        return;
    };
    let r = swaks_send(&server, "frank@sender.test", &["u8@a.example"], &tricky_message());
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());
    let seven = b"Subject: plain\n\nplain ASCII\n";
    let r = swaks_send(&server, "frank@sender.test", &["u7@a.example"], seven);
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());

    let run = fetchmail(&server, "alpha", "alpha-secret", &["a.example"], &sink).unwrap();
    assert!(
        !run.all().contains("250-8BITMIME"),
        "the sink offered 8BITMIME:\n{}",
        run.all()
    );
    let got = sink.messages();
    assert_eq!(got.len(), 1, "got {got:#?}\n{}", run.all());
    assert_eq!(got[0].mail, "<frank@sender.test>");
    assert_eq!(got[0].rcpts, ["<u7@a.example>"]);
    assert_eq!(split_our_received(&got[0].content).1, seven);
    let st = server.recipient_states();
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!((st[0].0.as_str(), st[0].1.as_str()), ("u8@a.example", "queued"));
    assert!(st[0].2.starts_with("450 4.6.3 "), "{st:?}");
}
