//! A small fake Kubernetes API server for tests: it serves core/v1 Services,
//! discovery.k8s.io/v1 EndpointSlices and core/v1 Nodes over plain HTTP with the real
//! list and watch protocol (resourceVersions, chunked watch streams, bookmarks,
//! 410 Gone after compaction, `limit`/`continue` pagination (ignored at resourceVersion 0, as
//! the watch cache does), label and field selectors),
//! so a kube-rs client can be tested against it without a cluster.
//!
//! Tests drive it through [`FakeApiServer`], not over HTTP: [`FakeApiServer::apply`],
//! [`FakeApiServer::delete`], and fault injection ([`FakeApiServer::compact`],
//! [`FakeApiServer::drop_watches`], [`FakeApiServer::set_availability`]). HTTP clients can
//! read (GET), and create and merge-patch events.k8s.io/v1 Events, which tests read with
//! [`FakeApiServer::events`]; every other method gets 405.
//!
//! The server runs on its own thread with its own tokio runtime, so it works from plain
//! `#[test]`s and from async tests alike; dropping the handle stops it.

mod error;
mod events;
mod http;
mod kind;
mod selector;
mod serve;
mod shared;
mod store;
mod watch;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub use error::FakeApiError;
pub use kind::Kind;

use shared::Shared;

/// How often open watches that asked for bookmarks get one.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// How the server treats clients; see [`FakeApiServer::set_availability`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Serving normally.
    Up,
    /// Listening, but every request gets 503 ServiceUnavailable and open watches are
    /// cut, like an overloaded API server or a proxy in front of a dead one. The kube-rs 5
    /// client retries 503s itself (up to 15 times, exponential backoff from 5 ms), so a
    /// watcher usually sees no error, only a delay.
    ServiceUnavailable,
    /// Not listening: new connections are refused and open ones (watches included) are
    /// closed, like an API server that is down. Watchers see errors and back off.
    Down,
}

/// A running fake API server; dropping it stops the server and closes every connection.
pub struct FakeApiServer {
    addr: SocketAddr,
    /// The namespace the listening socket lives in; re-listening after
    /// [`Availability::Down`] binds there again.
    netns: Option<PathBuf>,
    shared: Arc<Shared>,
    runtime: Handle,
    /// The accept loop, while listening.
    serving: Mutex<Option<tokio::task::JoinHandle<()>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Starts serving on `bind` in the calling thread's network namespace (port 0 picks a
    /// free port; see [`FakeApiServer::addr`]).
    pub fn start(bind: SocketAddr) -> Result<Self, FakeApiError> {
        Self::launch(bind_listener(None, bind)?, None)
    }

    /// Starts serving on `bind` inside the network namespace at `netns_path` (e.g. a
    /// testbed node's [`crate::Node::netns_path`]). Only the listening socket is created
    /// there — a socket stays in the namespace it was made in — so processes in that
    /// namespace reach the server at `bind`, and the root namespace is never used.
    pub fn start_in_netns(netns_path: &Path, bind: SocketAddr) -> Result<Self, FakeApiError> {
        let listener = bind_listener(Some(netns_path), bind)?;
        Self::launch(listener, Some(netns_path.to_owned()))
    }

    fn launch(listener: TcpListener, netns: Option<PathBuf>) -> Result<Self, FakeApiError> {
        let addr = listener.local_addr().map_err(FakeApiError::Runtime)?;
        let shared = Arc::new(Shared::new());
        let (shutdown, shutdown_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-apiserver-{}", addr.port()))
            .spawn(move || run(thread_shared, shutdown_rx, ready_tx))
            .map_err(FakeApiError::Runtime)?;
        let runtime = match ready_rx.recv() {
            Ok(Ok(runtime)) => runtime,
            Ok(Err(e)) => return Err(FakeApiError::Runtime(e)),
            Err(_) => return Err(FakeApiError::StartupAborted),
        };
        let server = FakeApiServer {
            addr,
            netns,
            shared,
            runtime,
            serving: Mutex::new(None),
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        // On failure `server` is dropped here, which stops the thread.
        server.listen(listener)?;
        Ok(server)
    }

    /// Starts the accept loop on `listener` (a no-op if one is running).
    fn listen(&self, listener: TcpListener) -> Result<(), FakeApiError> {
        let mut serving = self.serving.lock().unwrap_or_else(PoisonError::into_inner);
        if serving.is_some() {
            return Ok(());
        }
        listener
            .set_nonblocking(true)
            .map_err(FakeApiError::Runtime)?;
        // from_std registers the socket with the reactor of the runtime entered here.
        let _entered = self.runtime.enter();
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(FakeApiError::Runtime)?;
        let router = http::router(self.shared.clone());
        *serving = Some(self.runtime.spawn(serve::serve(listener, router)));
        Ok(())
    }

    /// Stops the accept loop and waits until its listener is closed, so a connection
    /// attempt right after this returns is refused.
    fn stop_listening(&self) {
        let task = self
            .serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let (done_tx, done_rx) = mpsc::channel();
            self.runtime.spawn(async move {
                let _ = task.await;
                let _ = done_tx.send(());
            });
            // The wait is bounded so that a wedged runtime cannot hang a test forever.
            let _ = done_rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the cluster server URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: plain HTTP, no credentials, namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            url = self.url()
        )
    }

    /// Writes [`FakeApiServer::kubeconfig_yaml`] to `path` (for `--kubeconfig`).
    pub fn kubeconfig(&self, path: &Path) -> Result<(), FakeApiError> {
        std::fs::write(path, self.kubeconfig_yaml()).map_err(|source| FakeApiError::Kubeconfig {
            path: path.to_owned(),
            source,
        })
    }

    /// Creates or replaces an object (kind Service, EndpointSlice or Node), sending ADDED
    /// or MODIFIED to the watches; returns its new resourceVersion. A missing namespace
    /// means `default`; uid and creationTimestamp are filled in on creation and kept on
    /// update. Re-applying identical content changes nothing and sends no event.
    pub fn apply(&self, object: Value) -> Result<u64, FakeApiError> {
        self.shared.store().apply(object)
    }

    /// Applies every document of a multi-document YAML text (a `kind: List` is applied
    /// item by item); returns the resourceVersions in order. Stops at the first error.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<u64>, FakeApiError> {
        let mut versions = Vec::new();
        for document in serde_norway::Deserializer::from_str(yaml) {
            let value = Value::deserialize(document)?;
            match value {
                Value::Null => {}
                Value::Object(ref map)
                    if map.get("kind").and_then(Value::as_str) == Some("List") =>
                {
                    let items = map.get("items").and_then(Value::as_array);
                    for item in items.into_iter().flatten() {
                        versions.push(self.apply(item.clone())?);
                    }
                }
                other => versions.push(self.apply(other)?),
            }
        }
        Ok(versions)
    }

    /// Deletes an object (namespace `""` for nodes), sending DELETED; returns the
    /// resourceVersion of the deletion.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<u64, FakeApiError> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        self.shared
            .store()
            .delete(kind, (namespace.to_owned(), name.to_owned()))
    }

    /// The stored object, with its server-set metadata.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let key = (namespace.to_owned(), name.to_owned());
        self.shared.store().objects(kind).get(&key).cloned()
    }

    /// The current resourceVersion (what a list would report).
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Forgets the event history and advances the resourceVersion: from now on, a watch
    /// from any resourceVersion handed out before gets a 410 Gone ERROR event, so a
    /// client has to relist. Open watches keep streaming (as with etcd compaction);
    /// combine with [`FakeApiServer::drop_watches`] to force the resume.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Cuts every open watch abruptly: the connection closes mid-body, without the final
    /// chunk, as when an API server instance dies or a load balancer resets the flow.
    pub fn drop_watches(&self) {
        self.shared.store().end_all(true);
    }

    /// Ends every open watch cleanly, as when its `timeoutSeconds` runs out.
    pub fn end_watches(&self) {
        self.shared.store().end_all(false);
    }

    /// Simulates an outage (`false`: [`Availability::Down`]) or ends it (`true`:
    /// [`Availability::Up`]). Objects may be changed meanwhile; the events are kept for
    /// the clients' resumed watches. Fails only if the address cannot be bound again.
    pub fn set_available(&self, available: bool) -> Result<(), FakeApiError> {
        self.set_availability(if available {
            Availability::Up
        } else {
            Availability::Down
        })
    }

    /// Switches between serving, answering 503, and refusing connections; see
    /// [`Availability`]. Leaving [`Availability::Down`] listens on the same address (and
    /// namespace) again.
    pub fn set_availability(&self, availability: Availability) -> Result<(), FakeApiError> {
        match availability {
            Availability::Up | Availability::ServiceUnavailable => {
                let refuse = availability == Availability::ServiceUnavailable;
                self.shared.store().set_available(!refuse);
                let listening = self
                    .serving
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some();
                if !listening {
                    self.listen(bind_listener(self.netns.as_deref(), self.addr)?)?;
                }
            }
            Availability::Down => {
                self.shared.store().end_all(true);
                self.stop_listening();
                self.shared.store().set_available(true);
            }
        }
        Ok(())
    }

    /// Sends a bookmark now to every open watch that allows bookmarks (they also get one
    /// every [`BOOKMARK_INTERVAL`]).
    pub fn bookmark_now(&self) {
        self.shared.store().bookmark_all();
    }

    /// LIST responses served for `kind` (one per page).
    pub fn lists_served(&self, kind: Kind) -> u64 {
        self.shared.lists(kind)
    }

    /// Watch streams started for `kind`, including ones that only carried 410 Gone.
    pub fn watches_started(&self, kind: Kind) -> u64 {
        self.shared.watches(kind)
    }

    /// Watches of `kind` open right now; for waiting until a client is following.
    pub fn open_watches(&self, kind: Kind) -> usize {
        self.shared.store().open_watches(kind)
    }

    /// The resourceVersions of the bookmarks sent so far to watches of `kind` (periodic
    /// ones and [`FakeApiServer::bookmark_now`]'s, not the initial-events-end bookmark of
    /// a `sendInitialEvents` watch), in sending order; only watches that allow bookmarks
    /// get them. A watch's bookmark at or above a change's resourceVersion comes after
    /// that change's event on the same stream, so waiting for one proves the event has
    /// been sent; waiting for periodic ones proves that [`BOOKMARK_INTERVAL`]s passed.
    pub fn bookmarks_sent(&self, kind: Kind) -> Vec<u64> {
        self.shared.bookmarks(kind)
    }

    /// The events.k8s.io/v1 Events clients created (and patched), by namespace and name.
    pub fn events(&self) -> Vec<Value> {
        self.shared.events().values().cloned().collect()
    }

    /// Every request so far as `METHOD PATH?QUERY`, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds a listening socket, inside `netns` if given.
fn bind_listener(netns: Option<&Path>, addr: SocketAddr) -> Result<TcpListener, FakeApiError> {
    let bound = match netns {
        Some(path) => crate::netns::run_in_netns(path, || Ok(TcpListener::bind(addr)))
            .map_err(|e| FakeApiError::Netns(Box::new(e)))?,
        None => TcpListener::bind(addr),
    };
    bound.map_err(|source| FakeApiError::Bind { addr, source })
}

/// The server thread: a current-thread runtime that runs the accept loop (spawned onto it
/// through its handle) and the bookmark ticker until shutdown.
fn run(
    shared: Arc<Shared>,
    shutdown: oneshot::Receiver<()>,
    ready: mpsc::Sender<std::io::Result<Handle>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(runtime.handle().clone()));
    runtime.block_on(async move {
        let ticker_shared = shared.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(BOOKMARK_INTERVAL);
            loop {
                interval.tick().await;
                ticker_shared.store().bookmark_all();
            }
        });
        // Ends on shutdown, and also when the handle is dropped without sending.
        let _ = shutdown.await;
        shared.store().end_all(false);
    });
    // Dropping the runtime cancels the accept loop and the connection tasks, closing
    // their sockets.
    runtime.shutdown_timeout(Duration::from_secs(1));
}
