//! The manager against real sockets on loopback: answers, count changes without a re-bind,
//! closing, and a busy port retried until it is free.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

use super::*;
use crate::model::{HealthCheckBind, HealthCheckService};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind((LOOPBACK, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

fn checks(services: &[(&str, u16, usize)]) -> HealthChecks {
    HealthChecks {
        services: services
            .iter()
            .map(|&(name, port, local_endpoints)| {
                (
                    ObjectKey::new("shop", name),
                    HealthCheckService {
                        port,
                        local_endpoints,
                    },
                )
            })
            .collect(),
        bind: HealthCheckBind::Addresses(vec![LOOPBACK]),
    }
}

/// One GET from a blocking client off the runtime: the status code and the whole response,
/// or the connect error.
async fn get(port: u16) -> io::Result<(u16, String)> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(SocketAddr::new(LOOPBACK, port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let code = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, raw))
    })
    .await
    .expect("client thread")
}

/// Polls until `check` holds for the answer on `port` (the manager runs on its own task).
async fn until(port: u16, what: &str, check: impl Fn(&io::Result<(u16, String)>) -> bool) {
    let mut last = None;
    for _ in 0..100 {
        let answer = get(port).await;
        if check(&answer) {
            return;
        }
        last = Some(answer);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: last answer {last:?}");
}

fn synced_health() -> Arc<Health> {
    let health = Arc::new(Health::new(Duration::from_secs(60)));
    health.updated(SystemTime::now());
    health
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_as_upstream_follows_counts_and_closes_with_the_service() {
    let port = free_port();
    let sender = start_with(
        synced_health(),
        Duration::from_millis(50),
        Limits::default(),
    );
    sender.send_replace(checks(&[("web", port, 1)]));
    until(port, "200 with one local endpoint", |a| {
        matches!(a, Ok((200, _)))
    })
    .await;
    let (_, raw) = get(port).await.expect("answer");
    let head = raw.to_lowercase();
    assert!(head.contains("content-type: application/json"), "{raw}");
    assert!(head.contains("x-content-type-options: nosniff"), "{raw}");
    let body = raw.split_once("\r\n\r\n").expect("a body").1;
    assert_eq!(
        body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
    );
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(json["localEndpoints"], 1);

    // A held connection shows the listener is not re-bound when only the count changes.
    let held = TcpStream::connect(SocketAddr::new(LOOPBACK, port)).expect("held");
    sender.send_replace(checks(&[("web", port, 0)]));
    until(
        port,
        "503 without local endpoints",
        |a| matches!(a, Ok((503, raw)) if raw.contains("\"localEndpoints\": 0")),
    )
    .await;
    let mut held = held;
    held.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("the held connection still works");
    let mut raw = String::new();
    held.read_to_string(&mut raw)
        .expect("answer on the held connection");
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");

    sender.send_replace(checks(&[]));
    until(
        port,
        "refused once the service is gone",
        |a| matches!(a, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_proxy_answers_503_even_with_local_endpoints() {
    let port = free_port();
    let health = Arc::new(Health::new(Duration::from_millis(1)));
    // A change queued long ago and never synced: the proxy is not healthy.
    health.queued(SystemTime::now() - Duration::from_secs(10));
    let sender = start_with(health, Duration::from_millis(50), Limits::default());
    sender.send_replace(checks(&[("web", port, 2)]));
    until(port, "503 from an unhealthy proxy", |a| {
        matches!(a, Ok((503, raw)) if raw.contains("\"serviceProxyHealthy\": false")
            && raw.contains("\"localEndpoints\": 2"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_retried_and_the_other_services_are_served_meanwhile() {
    let busy = std::net::TcpListener::bind((LOOPBACK, 0)).expect("occupy a port");
    let busy_port = busy.local_addr().expect("addr").port();
    let other = free_port();
    let sender = start_with(
        synced_health(),
        Duration::from_millis(50),
        Limits::default(),
    );
    sender.send_replace(checks(&[("blocked", busy_port, 1), ("web", other, 1)]));
    until(other, "the other service is served", |a| {
        matches!(a, Ok((200, _)))
    })
    .await;
    // Whoever holds the port gets the connections meanwhile; once it lets go, the retry
    // binds it.
    drop(busy);
    until(
        busy_port,
        "the busy port, once free, is served",
        |a| matches!(a, Ok((200, raw)) if raw.contains("\"name\": \"blocked\"")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_moving_between_services_is_closed_before_it_is_opened() {
    let port = free_port();
    let sender = start_with(
        synced_health(),
        Duration::from_secs(3600),
        Limits::default(),
    );
    sender.send_replace(checks(&[("old", port, 1)]));
    until(
        port,
        "old serves",
        |a| matches!(a, Ok((200, raw)) if raw.contains("\"name\": \"old\"")),
    )
    .await;
    // In one publication; with a retry interval of an hour, only an in-order plan succeeds.
    sender.send_replace(checks(&[("new", port, 1)]));
    until(
        port,
        "new serves the same port",
        |a| matches!(a, Ok((200, raw)) if raw.contains("\"name\": \"new\"")),
    )
    .await;
}
