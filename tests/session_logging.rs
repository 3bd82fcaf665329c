//! The library's logs: a span per session carrying its role and peer address, the session's start
//! and end (with why it ended) logged inside it, and nothing logged per frame. A small recording
//! subscriber stands in for the application's.

use std::collections::HashMap;
use std::fmt::{Debug, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muxado::engine;
use muxado::engine::net::{TcpListener, TcpStream};
use muxado::{Config, Session};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Default)]
struct Log {
    next_id: u64,
    /// Span id → "name field=value ...".
    spans: HashMap<u64, String>,
    /// Entered spans, innermost last (one thread: the test's engine core).
    stack: Vec<u64>,
    /// (level, "field=value ...", the span it happened in).
    events: Vec<(Level, String, Option<String>)>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Log>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Fields(format!("{} ", attrs.metadata().name()));
        attrs.record(&mut fields);
        let mut log = self.0.lock().unwrap();
        log.next_id += 1;
        let id = log.next_id;
        log.spans.insert(id, fields.0);
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut fields = Fields(String::new());
        values.record(&mut fields);
        let mut log = self.0.lock().unwrap();
        if let Some(s) = log.spans.get_mut(&span.into_u64()) {
            s.push_str(&fields.0);
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let mut log = self.0.lock().unwrap();
        let span = log.stack.last().and_then(|id| log.spans.get(id)).cloned();
        log.events.push((*event.metadata().level(), fields.0, span));
    }
    fn enter(&self, span: &Id) {
        self.0.lock().unwrap().stack.push(span.into_u64());
    }
    fn exit(&self, _: &Id) {
        self.0.lock().unwrap().stack.pop();
    }
}

#[test]
fn a_span_per_session_start_and_end_logged_never_per_frame() {
    let recorder = Recorder::default();
    let peers = tracing::subscriber::with_default(recorder.clone(), || {
        engine::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = engine::spawn(async move { listener.accept().await.unwrap().0 });
            let client =
                Session::client(TcpStream::connect(addr).await.unwrap(), Config::default());
            let server = Session::server(accept.await, Config::default());
            let peers = (client.peer_addr().unwrap(), server.peer_addr().unwrap());

            // A thousand round trips: thousands of frames each way.
            let mut s = client.open().unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut p = server.accept().await.unwrap();
            let mut buf = [0u8; 4];
            for _ in 0..1000 {
                p.read_exact(&mut buf).await.unwrap();
                p.write_all(&buf).await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            }
            client.close().unwrap();
            let end = engine::timeout(Duration::from_secs(10), server.wait())
                .await
                .expect("the server saw the close");
            assert!(end.remote.is_some());
            peers
        })
        .expect("io_uring available")
    });

    let log = recorder.0.lock().unwrap();
    let spans: Vec<&String> = log.spans.values().collect();
    let client_span = format!("role=Client peer=Some({})", peers.0);
    let server_span = format!("role=Server peer=Some({})", peers.1);
    assert!(
        spans
            .iter()
            .any(|s| s.starts_with("muxado_session") && s.contains(&client_span)),
        "no client session span in {spans:?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.starts_with("muxado_session") && s.contains(&server_span)),
        "no server session span in {spans:?}"
    );
    let in_session = |what: &str, side: &str| {
        log.events.iter().any(|(_, fields, span)| {
            fields.contains(what) && span.as_deref().is_some_and(|s| s.contains(side))
        })
    };
    for side in [&client_span, &server_span] {
        assert!(
            in_session("session started", side),
            "{side}: {:?}",
            log.events
        );
        assert!(
            in_session("session ended", side),
            "{side}: {:?}",
            log.events
        );
    }
    // The closing side ended cleanly (debug), with its reason.
    assert!(
        log.events
            .iter()
            .any(|(level, fields, span)| *level == Level::DEBUG
                && fields.contains("session ended")
                && fields.contains("error=session closed")
                && span.as_deref().is_some_and(|s| s.contains(&client_span))),
        "{:?}",
        log.events
    );
    // Thousands of frames, a handful of events: nothing is logged per frame.
    assert!(
        log.events.len() <= 16,
        "{} events for two sessions: {:?}",
        log.events.len(),
        log.events
    );
}
