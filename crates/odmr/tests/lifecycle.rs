//! The server's life: clean shutdown on SIGTERM with nothing lost, restarts on the same store,
//! and robustness against bad input (the server keeps serving and loses nothing).

mod common;

use common::{send_mail, Line, Server};
use std::time::{Duration, Instant};

#[test]
fn sigterm_stops_cleanly_and_acknowledged_mail_survives() {
    let mut s = Server::start();
    s.account("acme", "pw", &["example.org"]);
    let r = send_mail(
        s.smtp,
        "a@sender.test",
        &["bob@example.org"],
        "Subject: keep me\n\nbody\n",
    );
    assert!(r.starts_with("250"), "{r}");

    // An idle session is told the server is going away.
    let mut idle = Line::connect(s.smtp);
    idle.reply();
    let t = Instant::now();
    assert_eq!(s.stop(), Some(0), "log:\n{}", s.log());
    assert!(t.elapsed() < Duration::from_secs(10));
    let bye = idle.line().unwrap_or_default();
    assert!(bye.starts_with("421"), "idle session got {bye:?}");

    s.spawn();
    let q = s.queue();
    assert_eq!(q.as_array().unwrap().len(), 1, "{q}");
    assert_eq!(q[0]["recipients"][0]["address"], "bob@example.org");
}

#[test]
fn kill_after_250_loses_nothing() {
    let mut s = Server::start();
    s.account("acme", "pw", &["example.org"]);
    for i in 0..5 {
        let r = send_mail(
            s.smtp,
            "a@sender.test",
            &["bob@example.org"],
            &format!("Subject: {i}\n\nbody {i}\n"),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    s.kill();
    s.spawn();
    assert_eq!(s.queue().as_array().unwrap().len(), 5);
}

#[test]
fn bad_input_gets_clear_replies_and_loses_nothing() {
    let s = Server::start_with("max_message_size = \"100KiB\"", "");
    s.account("acme", "pw", &["example.org"]);
    assert!(send_mail(
        s.smtp,
        "a@sender.test",
        &["bob@example.org"],
        "Subject: first\n\nx\n"
    )
    .starts_with("250"));

    // A 100 KB command line, NUL bytes and bare LF on the MX.
    let mut c = Line::connect(s.smtp);
    c.reply();
    c.send(format!("EHLO {}\r\n", "a".repeat(100_000)).as_bytes());
    assert!(c.reply().starts_with("500 5.5.6"));
    c.send(b"HELO a\0b\r\n");
    assert!(c.reply().starts_with("500 5.5.2"));
    c.send(b"NOOP\n");
    assert!(c.reply().starts_with("500 5.5.2"));
    // An oversized message.
    assert!(c.ask("EHLO c").starts_with("250"));
    assert!(c.ask("MAIL FROM:<a@b.test>").starts_with("250"));
    assert!(c.ask("RCPT TO:<bob@example.org>").starts_with("250"));
    assert!(c.ask("DATA").starts_with("354"));
    for _ in 0..200 {
        c.send(&[b'x'; 998]);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    assert!(c.reply().starts_with("552 5.3.4"));
    assert!(c.ask("NOOP").starts_with("250"));
    c.ask("QUIT");

    // MAIL on the ODMR port, ATRN before AUTH, a 100 KB line, NUL.
    let mut o = Line::connect(s.odmr);
    o.reply();
    assert!(o.ask("MAIL FROM:<a@b.test>").starts_with("502"));
    assert!(o.ask("ATRN example.org").starts_with("530"));
    o.send(format!("EHLO {}\r\n", "a".repeat(100_000)).as_bytes());
    assert!(o.reply().starts_with("500"));
    o.send(b"EHLO a\0b\r\n");
    assert!(o.reply().starts_with("500"));
    assert!(o.ask("EHLO client").starts_with("250"));
    o.ask("QUIT");

    // A client that vanishes mid-DATA leaves nothing behind.
    let mut v = Line::connect(s.smtp);
    v.reply();
    v.ask("EHLO c");
    v.ask("MAIL FROM:<a@b.test>");
    v.ask("RCPT TO:<bob@example.org>");
    v.ask("DATA");
    v.send(b"Subject: half\r\n\r\nnever finished\r\n");
    drop(v);

    // The server still serves, and exactly the two acknowledged messages are queued.
    assert!(send_mail(
        s.smtp,
        "a@sender.test",
        &["bob@example.org"],
        "Subject: second\n\ny\n"
    )
    .starts_with("250"));
    std::thread::sleep(Duration::from_millis(200));
    let q = s.queue();
    assert_eq!(q.as_array().unwrap().len(), 2, "{q}");
}
