//! The health (/healthz, /livez) and metrics (/metrics, /proxyMode) HTTP servers.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::config::ProxyMode;
use crate::health::{Health, HealthView};
use crate::metrics::{CodeLabel, Metrics};

/// Shared state of both servers.
#[derive(Clone)]
pub struct ServerState {
    /// Sync freshness.
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

/// Routes of the metrics server.
pub fn metrics_router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/proxyMode", get(proxy_mode))
        .with_state(state)
}

/// Binds `addr` and serves `router` until the process ends. Binding errors name the flag.
pub async fn serve(flag: &'static str, addr: SocketAddr, router: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{flag} {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(%addr, error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}

async fn healthz(State(s): State<ServerState>) -> (StatusCode, Json<HealthView>) {
    respond(&s, &s.metrics.healthz_total)
}

async fn livez(State(s): State<ServerState>) -> (StatusCode, Json<HealthView>) {
    respond(&s, &s.metrics.livez_total)
}

fn respond(
    s: &ServerState,
    counter: &prometheus_client::metrics::family::Family<
        CodeLabel,
        prometheus_client::metrics::counter::Counter,
    >,
) -> (StatusCode, Json<HealthView>) {
    let view = s.health.view(SystemTime::now());
    let code = if view.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    counter
        .get_or_create(&CodeLabel {
            code: code.as_u16(),
        })
        .inc();
    (code, Json(view))
}

async fn metrics(State(s): State<ServerState>) -> String {
    s.metrics.encode()
}

async fn proxy_mode(State(s): State<ServerState>) -> String {
    s.mode.to_string()
}
