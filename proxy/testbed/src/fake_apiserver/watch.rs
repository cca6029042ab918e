//! One watch response: the replayed events, then live ones, rendered as the API server
//! does — one JSON object per line in a chunked body.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::Stream;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::selector::Selector;
use super::shared::Shared;
use super::store::{EventType, LogEvent, Subscription, WatchMsg};
use super::Kind;

/// Annotation on the bookmark that ends the initial events of a `sendInitialEvents` watch.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// What the request asked for, beyond the selector.
pub(crate) struct WatchOptions {
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub deadline: Option<Instant>,
}

/// The state of one streaming watch response.
pub(crate) struct WatchSession {
    /// Where the bookmarks sent are recorded.
    shared: Arc<Shared>,
    kind: Kind,
    selector: Selector,
    bookmarks: bool,
    deadline: Option<Instant>,
    /// Lines to send before reading the live channel.
    pending: VecDeque<Bytes>,
    /// `None` for a watch that ends after `pending` (an expired resourceVersion).
    rx: Option<UnboundedReceiver<WatchMsg>>,
    /// Newest resourceVersion the client has been brought up to; bookmarks never go below.
    cursor: u64,
    finished: bool,
}

impl WatchSession {
    /// A watch that replays `sub.replay` and then follows the live channel.
    pub(crate) fn open(
        shared: Arc<Shared>,
        kind: Kind,
        selector: Selector,
        options: WatchOptions,
        sub: Subscription,
    ) -> Self {
        let mut session = WatchSession {
            shared,
            kind,
            selector,
            bookmarks: options.bookmarks,
            deadline: options.deadline,
            pending: VecDeque::new(),
            rx: Some(sub.rx),
            cursor: sub.cursor,
            finished: false,
        };
        for event in &sub.replay {
            if let Some(line) = session.render(event) {
                session.pending.push_back(line);
            }
            // Synthetic ADDED events carry older resourceVersions than the cursor; the
            // client is nonetheless current as of the subscription.
            session.cursor = session.cursor.max(event.rv);
        }
        if options.send_initial_events {
            let end = session.bookmark_line(session.cursor, true);
            session.pending.push_back(end);
        }
        session
    }

    /// A watch whose only event is the 410 Gone error, as the API server sends for a
    /// resourceVersion older than its history.
    pub(crate) fn expired(shared: Arc<Shared>, kind: Kind, requested: u64, oldest: u64) -> Self {
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {requested} ({oldest})"),
            "reason": "Expired",
            "code": 410,
        });
        WatchSession {
            shared,
            kind,
            selector: Selector::default(),
            bookmarks: false,
            deadline: None,
            pending: VecDeque::from([line("ERROR", &status)]),
            rx: None,
            cursor: requested,
            finished: false,
        }
    }

    /// The response body.
    pub(crate) fn into_stream(self) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
        futures_util::stream::unfold(self, |mut session| async move {
            let item = session.next_item().await?;
            Some((item, session))
        })
    }

    async fn next_item(&mut self) -> Option<Result<Bytes, io::Error>> {
        if self.finished {
            return None;
        }
        if let Some(line) = self.pending.pop_front() {
            return Some(Ok(line));
        }
        loop {
            let rx = self.rx.as_mut()?;
            let msg = match self.deadline {
                Some(deadline) => tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => None,
                    msg = rx.recv() => msg,
                },
                None => rx.recv().await,
            };
            match msg {
                None | Some(WatchMsg::End) => return None,
                Some(WatchMsg::Cut) => {
                    self.finished = true;
                    // A body error makes hyper drop the connection without the final
                    // chunk: the client sees a connection that died mid-stream.
                    return Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "watch cut by the fake API server",
                    )));
                }
                Some(WatchMsg::Bookmark(rv)) if self.bookmarks => {
                    self.cursor = self.cursor.max(rv);
                    self.shared.record_bookmark(self.kind, self.cursor);
                    return Some(Ok(self.bookmark_line(self.cursor, false)));
                }
                Some(WatchMsg::Bookmark(_)) => {}
                Some(WatchMsg::Event(event)) => {
                    let rendered = self.render(&event);
                    self.cursor = self.cursor.max(event.rv);
                    if let Some(line) = rendered {
                        return Some(Ok(line));
                    }
                }
            }
        }
    }

    /// The line for `event` as this watch's client sees it, or `None` if filtered out.
    /// A modification that moves the object into or out of the selection becomes ADDED
    /// or DELETED, as in the API server's watch cache.
    fn render(&self, event: &LogEvent) -> Option<Bytes> {
        let now = self.selector.matches(&event.object);
        let before = event
            .prev
            .as_ref()
            .is_some_and(|p| self.selector.matches(p));
        match (event.kind, now, before) {
            (EventType::Added, true, _) => Some(line("ADDED", &event.object)),
            (EventType::Modified, true, true) => Some(line("MODIFIED", &event.object)),
            (EventType::Modified, true, false) => Some(line("ADDED", &event.object)),
            (EventType::Modified, false, true) => {
                let mut gone = event.prev.clone()?;
                if let Some(meta) = gone.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".to_owned(), event.rv.to_string().into());
                }
                Some(line("DELETED", &gone))
            }
            (EventType::Deleted, true, _) => Some(line("DELETED", &event.object)),
            _ => None,
        }
    }

    fn bookmark_line(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ INITIAL_EVENTS_END: "true" });
        }
        let object = json!({
            "kind": self.kind.name(),
            "apiVersion": self.kind.api_version(),
            "metadata": metadata,
        });
        line("BOOKMARK", &object)
    }
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    object: &'a Value,
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&Line { event_type, object }).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}
