//! The reversed-session transcripts of `tests/transcripts/reversed/`, replayed over real
//! loopback sockets through the customer's own code: `receive` (the reversed session) and the
//! relay sink, connected to a scripted provider (the transcript's `C:`/`S:` lines) and a
//! scripted local MTA (`L:`/`R:`). The proto crate replays the same files against the machines.

use super::config::Endpoint;
use super::receive::{receive, Session};
use super::sink::{relay::Relay, Sink};
use crate::net::conn::Conn;
use odmr_proto::transcript::{matches, Step, Transcript};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Plays one side's steps on `stream`: sends what it sends, checks each line it receives, then
/// waits for the other side to close.
async fn play(name: String, side: &'static str, stream: TcpStream, steps: Vec<Step>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Send(b) | Step::Local(b) => wr.write_all(b).await.expect("write"),
            Step::Expect(pat) | Step::Relayed(pat) => {
                line.clear();
                let n = tokio::time::timeout(TIMEOUT, rd.read_until(b'\n', &mut line))
                    .await
                    .unwrap_or_else(|_| panic!("{name}: {side} step {i}: nothing came, expected {pat:?}"))
                    .expect("read");
                assert!(n > 0, "{name}: {side} step {i}: closed, expected {pat:?}");
                let got = String::from_utf8_lossy(&line);
                let got = got.trim_end_matches('\n').trim_end_matches('\r');
                assert!(
                    matches(pat, got),
                    "{name}: {side} step {i}: expected {pat:?}, got {got:?}"
                );
            }
            Step::Cram { .. } => panic!("{name}: no AUTH in the reversed session"),
        }
    }
    line.clear();
    let n = tokio::time::timeout(TIMEOUT, rd.read_until(b'\n', &mut line))
        .await
        .unwrap_or_else(|_| panic!("{name}: {side}: the connection was not closed"))
        .expect("read");
    assert_eq!(
        n,
        0,
        "{name}: {side}: more after the last step: {:?}",
        String::from_utf8_lossy(&line)
    );
}

async fn replay(name: String, t: Transcript) {
    let (provider, local): (Vec<Step>, Vec<Step>) = t
        .steps
        .iter()
        .cloned()
        .partition(|s| matches!(s, Step::Send(_) | Step::Expect(_)));
    let mta = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mta_addr = mta.local_addr().unwrap();
    let local_side = tokio::spawn({
        let name = name.clone();
        async move {
            let (s, _) = mta.accept().await.unwrap();
            play(name, "local MTA", s, local).await;
        }
    });
    let mut sink = Sink::Relay(Box::new(
        Relay::connect(
            &Endpoint::Tcp(mta_addr.to_string()),
            t.lmtp,
            "customer.example",
            TIMEOUT,
        )
        .await
        .expect("the relay connects"),
    ));
    // The provider's end of the customer's connection, after the ATRN turnaround.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let provider_side = tokio::spawn({
        let name = name.clone();
        async move {
            let s = TcpStream::connect(addr).await.unwrap();
            play(name, "provider", s, provider).await;
        }
    });
    let (s, peer) = listener.accept().await.unwrap();
    let mut conn = Conn::new(s, peer);
    let got = receive(
        &mut conn,
        &mut sink,
        Session {
            provider: "test",
            hostname: "customer.example",
            timeout: TIMEOUT,
            progress: &mut |_| {},
        },
    )
    .await;
    assert_eq!(got.error, None, "{name}");
    sink.close().await;
    conn.shutdown().await;
    drop(conn);
    provider_side.await.unwrap();
    local_side.await.unwrap();
}

#[tokio::test]
async fn reversed_transcripts_over_sockets() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/transcripts/reversed");
    for (name, t) in odmr_proto::transcript::load_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
        replay(name, t).await;
    }
}
