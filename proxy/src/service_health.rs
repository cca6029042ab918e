//! The health check node port servers (upstream `pkg/proxy/healthcheck/service_health.go`):
//! one HTTP listener per `externalTrafficPolicy: Local` LoadBalancer service, on its
//! `healthCheckNodePort`, answering 200 while this node has a ready endpoint of the service
//! and the proxy is healthy, 503 otherwise, so a cloud load balancer sends traffic only to
//! nodes that can serve it.
//!
//! Mode-independent: the controller publishes what the applied state asks for
//! ([`HealthChecks`]) after every sync, and the manager task here opens and closes listeners
//! by the difference ([`ListenerPlan`]), leaving unchanged ones alone. Endpoint counts take
//! effect at once, without touching a listener. A port that cannot be bound is logged once,
//! naming the service, and retried every [`RETRY_INTERVAL`] and on every new publication;
//! it never stops the process.
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use socket2::{Domain, Protocol, Socket, Type};

use crate::events::Events;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::Health;
use crate::model::{HealthChecks, ListenerPlan, ListenerSpec, ObjectKey};
use crate::server::{serve_bounded, Limits};

/// How often a port that could not be bound is tried again (besides every sync that
/// publishes a change).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Local endpoint counts by service, read by every request.
type Counts = Arc<RwLock<BTreeMap<ObjectKey, usize>>>;

/// Starts the manager task; the controller publishes into the returned sender. Dropping the
/// sender closes every listener.
pub fn start(health: Arc<Health>, events: Option<Events>) -> watch::Sender<HealthChecks> {
    start_reporting(health, RETRY_INTERVAL, Limits::default(), events)
}

/// [`start`] with a retry interval and connection limits of its own (tests).
pub fn start_with(
    health: Arc<Health>,
    retry: Duration,
    limits: Limits,
) -> watch::Sender<HealthChecks> {
    start_reporting(health, retry, limits, None)
}

/// [`start_with`], recording a Kubernetes Event for each failed attempt to open a port.
fn start_reporting(
    health: Arc<Health>,
    retry: Duration,
    limits: Limits,
    events: Option<Events>,
) -> watch::Sender<HealthChecks> {
    let (sender, receiver) = watch::channel(HealthChecks::default());
    let manager = Manager {
        health,
        limits,
        events,
        counts: Counts::default(),
        open: BTreeMap::new(),
        failed: BTreeMap::new(),
    };
    tokio::spawn(manager.run(receiver, retry));
    sender
}

/// Why one service's listeners could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct ListenError {
    /// The address and port.
    pub address: String,
    /// The socket error.
    #[source]
    pub source: io::Error,
}

struct Open {
    spec: ListenerSpec,
    tasks: Vec<JoinHandle<()>>,
}

struct Manager {
    health: Arc<Health>,
    limits: Limits,
    /// Where failed ports are reported as Events (the API source only).
    events: Option<Events>,
    counts: Counts,
    open: BTreeMap<ObjectKey, Open>,
    /// Services whose listeners failed, with the error last logged.
    failed: BTreeMap<ObjectKey, String>,
}

impl Manager {
    async fn run(mut self, mut receiver: watch::Receiver<HealthChecks>, retry: Duration) {
        loop {
            let wanted = receiver.borrow_and_update().clone();
            self.apply(&wanted).await;
            let retrying = !self.failed.is_empty();
            tokio::select! {
                changed = receiver.changed() => {
                    if changed.is_err() {
                        self.apply(&HealthChecks::default()).await;
                        return;
                    }
                }
                _ = tokio::time::sleep(retry), if retrying => {}
            }
        }
    }

    async fn apply(&mut self, wanted: &HealthChecks) {
        // Counts first: a listener opened below answers with the new count at once, and a
        // count change alone touches no listener.
        let counts = wanted
            .services
            .iter()
            .map(|(service, hc)| (service.clone(), hc.local_endpoints))
            .collect();
        *self.counts.write().unwrap_or_else(|e| e.into_inner()) = counts;
        let open: BTreeMap<ObjectKey, ListenerSpec> = self
            .open
            .iter()
            .map(|(service, o)| (service.clone(), o.spec.clone()))
            .collect();
        let plan = ListenerPlan::between(&open, &wanted.listeners());
        for service in &plan.close {
            let Some(open) = self.open.remove(service) else {
                continue;
            };
            for task in &open.tasks {
                task.abort();
            }
            // The listener is closed once its task is gone, so a port moving to another
            // service can be bound right after.
            for task in open.tasks {
                let _ = task.await;
            }
            tracing::info!(%service, listen = %open.spec.describe(), "closed health check node port");
        }
        self.failed
            .retain(|service, _| wanted.services.contains_key(service));
        for (service, spec) in plan.open {
            match self.listen(&service, &spec) {
                Ok(tasks) => {
                    let retried = self.failed.remove(&service).is_some();
                    tracing::info!(%service, listen = %spec.describe(), retried, "serving health check node port");
                    self.open.insert(service, Open { spec, tasks });
                }
                Err(error) => {
                    let text = error.to_string();
                    if self.failed.get(&service) != Some(&text) {
                        tracing::error!(
                            %service,
                            port = spec.port,
                            error = %text,
                            "cannot open the health check node port; retrying every {}s",
                            RETRY_INTERVAL.as_secs()
                        );
                    }
                    // As upstream, every failed attempt is an event (kube-rs' recorder
                    // folds repeats into one event's series).
                    if let Some(events) = &self.events {
                        events.health_check_failed(&service, spec.port, &error.source.to_string());
                    }
                    self.failed.insert(service, text);
                }
            }
        }
    }

    /// Binds every address of `spec` (all or none), then serves each.
    fn listen(
        &self,
        service: &ObjectKey,
        spec: &ListenerSpec,
    ) -> Result<Vec<JoinHandle<()>>, ListenError> {
        let mut listeners = Vec::new();
        for address in &spec.addresses {
            let listener = bind(*address, spec.port).map_err(|source| ListenError {
                address: match address {
                    Some(ip) => SocketAddr::new(*ip, spec.port).to_string(),
                    None => format!("*:{}", spec.port),
                },
                source,
            })?;
            listeners.push(listener);
        }
        let router = Router::new().fallback(answer).with_state(Handler {
            service: service.clone(),
            counts: self.counts.clone(),
            health: self.health.clone(),
        });
        let listeners = listeners
            .into_iter()
            .map(tokio::net::TcpListener::from_std)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| ListenError {
                address: format!("*:{}", spec.port),
                source,
            })?;
        let tasks = listeners
            .into_iter()
            .map(|listener| tokio::spawn(serve_bounded(listener, router.clone(), self.limits)))
            .collect();
        Ok(tasks)
    }
}

/// A listening socket on `address` (`None`: every address, both families where the node has
/// IPv6, as Go's listener on `0.0.0.0` is), with `SO_REUSEADDR` as Go sets it.
fn bind(address: Option<IpAddr>, port: u16) -> io::Result<std::net::TcpListener> {
    let socket = match address {
        Some(ip) => listen_on(SocketAddr::new(ip, port), false)?,
        None => match listen_on(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port), true) {
            Ok(socket) => socket,
            // No IPv6 on this node: IPv4 alone.
            Err(e)
                if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                    || e.kind() == io::ErrorKind::AddrNotAvailable =>
            {
                listen_on(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), false)?
            }
            Err(e) => return Err(e),
        },
    };
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn listen_on(address: SocketAddr, dual_stack: bool) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(128)?;
    Ok(socket)
}

#[derive(Clone)]
struct Handler {
    service: ObjectKey,
    counts: Counts,
    health: Arc<Health>,
}

/// Every path and method, as upstream's handler: 200 with local endpoints and a healthy
/// proxy, 503 otherwise, and upstream's body.
async fn answer(State(h): State<Handler>) -> Response {
    let count = h
        .counts
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&h.service)
        .copied()
        .unwrap_or(0);
    // Upstream's `IsHealthy`: the proxy's sync freshness, ignoring the Node (that is, /livez).
    let healthy = h.health.livez(SystemTime::now()).healthy;
    let code = if count > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (code, body(&h.service, count, healthy)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Upstream's body, byte for byte: tab-indented, no trailing newline.
pub fn body(service: &ObjectKey, local_endpoints: usize, healthy: bool) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        quote(&service.namespace),
        quote(&service.name),
    )
}

#[cfg(test)]
mod tests;
