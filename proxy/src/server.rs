//! The health (/healthz, /livez) and metrics (/metrics, /proxyMode, /healthz) HTTP servers,
//! with upstream's paths, bodies and headers.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::ProxyMode;
use crate::health::Health;
use crate::metrics::{CodeLabel, Metrics};

/// Shared state of both servers.
#[derive(Clone)]
pub struct ServerState {
    /// Sync freshness and node eligibility.
    pub health: Arc<Health>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Mode reported by /proxyMode.
    pub mode: ProxyMode,
}

/// Routes of the health server.
pub fn health_router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(state)
}

/// Routes of the metrics server. Its `/healthz` is the generic apiserver-style check
/// upstream installs there (`healthz.InstallHandler`): "ok" while the process serves.
pub fn metrics_router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/proxyMode", get(proxy_mode))
        .route("/healthz", get(ping))
        .route("/healthz/ping", get(ping))
        .with_state(state)
}

/// Binds `addr` and serves `router` until the process ends. Binding errors name the flag.
pub async fn serve(flag: &'static str, addr: SocketAddr, router: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{flag} {addr}: {e}"))?;
    tokio::spawn(serve_bounded(listener, router, Limits::default()));
    Ok(())
}

/// What one server allows its clients, so idle or slow ones cannot hold it (or the process's
/// file descriptors) forever.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; a connection over the limit is closed at once.
    pub connections: usize,
    /// Time a client has to send its request headers (slowloris, idle connections).
    pub header_read: Duration,
    /// Time one connection may live in all.
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 64,
            header_read: Duration::from_secs(5),
            connection: Duration::from_secs(30),
        }
    }
}

/// Accepts connections on `listener` and serves `router` on each, within `limits`.
pub async fn serve_bounded(listener: tokio::net::TcpListener, router: Router, limits: Limits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the server stays up.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection, connection).await;
            drop(permit);
        });
    }
}

async fn healthz(State(s): State<ServerState>) -> Response {
    let view = s.health.healthz(SystemTime::now());
    verdict(view.healthy, &s.metrics.healthz_total, Json(view))
}

async fn livez(State(s): State<ServerState>) -> Response {
    let view = s.health.livez(SystemTime::now());
    verdict(view.healthy, &s.metrics.livez_total, Json(view))
}

/// 200 or 503 with the JSON body, counted by code, and upstream's `nosniff` header.
fn verdict(
    healthy: bool,
    counter: &Family<CodeLabel, Counter>,
    body: impl IntoResponse,
) -> Response {
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    counter
        .get_or_create(&CodeLabel {
            code: code.as_u16(),
        })
        .inc();
    nosniff((code, body).into_response())
}

fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn plain_text(text: String) -> Response {
    let mut response = nosniff(text.into_response());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn metrics(State(s): State<ServerState>) -> Response {
    let mut response = s.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::exposition::CONTENT_TYPE),
    );
    response
}

async fn proxy_mode(State(s): State<ServerState>) -> Response {
    plain_text(s.mode.to_string())
}

async fn ping() -> Response {
    plain_text("ok".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// Serves `router` on a loopback port and returns one response: status, headers
    /// (lower-cased), body.
    async fn get(router: Router, path: &str) -> (u16, String, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_bounded(listener, router, Limits::default()));
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        // A plain blocking client, off the runtime that serves.
        let raw = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut raw = String::new();
            stream.read_to_string(&mut raw).unwrap();
            raw
        })
        .await
        .unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_over_the_limit_refused_so_healthz_still_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            connections: 4,
            header_read: Duration::from_millis(300),
            connection: Duration::from_secs(5),
        };
        tokio::spawn(serve_bounded(listener, health_router(state()), limits));
        let result = tokio::task::spawn_blocking(move || {
            // Twice the limit of clients that connect and never send a byte.
            let idle: Vec<std::net::TcpStream> = (0..8)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            // Every one of them is closed by the server: the extra ones at once, the others
            // when their header time is up (a read then returns 0 bytes, not a timeout).
            for mut stream in idle {
                stream
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .unwrap();
                let mut buf = [0u8; 1];
                assert_eq!(stream.read(&mut buf).unwrap_or(usize::MAX), 0, "closed");
            }
            // And a real request is served afterwards.
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut raw = String::new();
            stream.read_to_string(&mut raw).unwrap();
            raw
        })
        .await
        .unwrap();
        assert!(result.starts_with("HTTP/1.1 "), "{result}");
    }

    fn state() -> ServerState {
        ServerState {
            health: Arc::new(Health::new(Duration::from_secs(60))),
            metrics: Arc::new(Metrics::new()),
            mode: ProxyMode::Iptables,
        }
    }

    #[tokio::test]
    async fn healthz_and_livez_answer_as_upstream() {
        let s = state();
        let (code, head, body) = get(health_router(s.clone()), "/healthz").await;
        assert_eq!(code, 503, "no sync and no Node yet");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["nodeEligible"], false);
        assert_eq!(json["lastUpdated"], "0001-01-01T00:00:00Z");
        let (code, head, body) = get(health_router(s.clone()), "/livez").await;
        assert_eq!(code, 200, "{body}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(!body.contains("nodeEligible"), "{body}");

        let mut node = k8s_openapi::api::core::v1::Node::default();
        node.metadata.name = Some("node-1".into());
        s.health.node(Some(&node));
        s.health.updated(SystemTime::now());
        s.health.source_error(SystemTime::now());
        let (code, _, body) = get(health_router(s.clone()), "/healthz").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"sourceFailingSince\""), "{body}");
        let encoded = s.metrics.encode();
        assert!(
            encoded.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1"),
            "{encoded}"
        );
        assert!(
            encoded.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1"),
            "{encoded}"
        );
    }

    #[tokio::test]
    async fn metrics_port_serves_healthz_and_proxy_mode() {
        let s = state();
        // Upstream's metrics-port /healthz is a plain liveness ping, whatever the sync state.
        for path in ["/healthz", "/healthz/ping"] {
            let (code, head, body) = get(metrics_router(s.clone()), path).await;
            assert_eq!((code, body.as_str()), (200, "ok"), "{path}");
            assert!(
                head.contains("content-type: text/plain; charset=utf-8"),
                "{head}"
            );
        }
        let (code, head, body) = get(metrics_router(s.clone()), "/proxyMode").await;
        assert_eq!((code, body.as_str()), (200, "iptables"));
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let (code, _, _) = get(health_router(s), "/metrics").await;
        assert_eq!(code, 404, "metrics stay off the health port");
    }
}
