//! The fake API server against the real kube-rs client: list + watch through
//! `kube::runtime::watcher` into a reflector store, pagination, relist after compaction,
//! recovery after an outage, bookmarks, field selectors, the raw wire format, and serving
//! inside a testbed node's network namespace.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use switchyard_testbed::fake_apiserver::{Availability, FakeApiServer, Kind};
use switchyard_testbed::{Testbed, TopologySpec};

const TIMEOUT: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn start() -> FakeApiServer {
    FakeApiServer::start(loopback()).expect("starting the fake API server")
}

fn service(name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
    })
}

/// A client built the way switchyard builds one: from a kubeconfig file.
async fn client(server: &FakeApiServer) -> Client {
    let path = std::env::temp_dir().join(format!(
        "fake-apiserver-{}-{}.kubeconfig",
        std::process::id(),
        server.addr().port()
    ));
    server.kubeconfig(&path).expect("writing kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).expect("reading kubeconfig");
    let _ = std::fs::remove_file(&path);
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig to config");
    Client::try_from(config).expect("building the client")
}

/// A reflector fed by a backed-off watcher, running in the background.
struct Reflector<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: Store<K>,
    errors: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Reflector<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    fn start(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        let errors = Arc::new(AtomicUsize::new(0));
        let counted = errors.clone();
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        let task = tokio::spawn(async move {
            stream
                .for_each(|event| {
                    if event.is_err() {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    async {}
                })
                .await;
        });
        Reflector {
            store,
            errors,
            task,
        }
    }

    /// name -> resourceVersion of every object in the store.
    fn contents(&self) -> BTreeMap<String, String> {
        self.store
            .state()
            .iter()
            .map(|o| (o.name_any(), o.resource_version().unwrap_or_default()))
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.contents().into_keys().collect()
    }

    fn errors(&self) -> usize {
        self.errors.load(Ordering::Relaxed)
    }
}

impl<K: Resource + Clone + 'static> Drop for Reflector<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cluster_ip(store: &Store<Service>, name: &str) -> Option<String> {
    store
        .state()
        .iter()
        .find(|s| s.name_any() == name)
        .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
}

/// Objects the server holds for `kind`, name -> resourceVersion, to compare with a store.
fn server_contents(server: &FakeApiServer, kind: Kind, names: &[&str]) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|name| {
            let object = server.get(kind, "default", name)?;
            let rv = object["metadata"]["resourceVersion"].as_str()?.to_owned();
            Some((name.to_string(), rv))
        })
        .collect()
}

#[tokio::test]
async fn watcher_follows_creates_updates_and_deletes() {
    let server = start();
    server
        .apply_yaml(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 198.18.128.10}\n\
             ---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\nspec: {clusterIP: 198.18.128.11}\n\
             ---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nendpoints: [{addresses: [198.19.1.10], conditions: {ready: true}}]\n",
        )
        .expect("applying YAML");
    let client = client(&server).await;
    let services = Reflector::start(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let slices = Reflector::start(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    );
    eventually("both services listed", || services.names() == ["db", "web"]).await;
    eventually("the slice listed", || slices.names() == ["web-abc"]).await;
    eventually("the service watch", || {
        server.open_watches(Kind::Service) == 1
    })
    .await;

    server
        .apply(service("web", "198.18.128.20"))
        .expect("update");
    eventually("the update", || {
        cluster_ip(&services.store, "web").as_deref() == Some("198.18.128.20")
    })
    .await;
    server
        .delete(Kind::Service, "default", "db")
        .expect("delete");
    server
        .apply(service("cache", "198.18.128.12"))
        .expect("create");
    eventually("the delete and the create", || {
        services.names() == ["cache", "web"]
    })
    .await;
    server
        .delete(Kind::EndpointSlice, "default", "web-abc")
        .expect("delete slice");
    eventually("the slice delete", || slices.names().is_empty()).await;

    // One list and one watch each: the changes arrived over the watch.
    assert_eq!(server.lists_served(Kind::Service), 1);
    assert_eq!(server.watches_started(Kind::Service), 1);
    assert_eq!(services.errors(), 0);
    assert_eq!(
        services.contents(),
        server_contents(&server, Kind::Service, &["cache", "web"])
    );
    let requests = server.requests();
    eprintln!("requests made by kube-rs:\n{}", requests.join("\n"));
    assert!(requests
        .iter()
        .any(|r| r.starts_with("GET /api/v1/services?") && r.contains("limit=500")));
    assert!(requests.iter().any(|r| {
        r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?")
            && r.contains("watch=true")
            && r.contains("allowWatchBookmarks=true")
    }));
}

#[tokio::test]
async fn lists_are_paginated_with_limit_and_continue() {
    let server = start();
    for i in 0..7 {
        server
            .apply(service(
                &format!("svc{i}"),
                &format!("198.18.128.{}", 10 + i),
            ))
            .expect("create");
    }
    let api = Api::<Service>::all(client(&server).await);
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(3);
    let mut pages = Vec::new();
    loop {
        let page = api.list(&params).await.expect("list page");
        pages.push((page.items.len(), page.metadata.remaining_item_count));
        names.extend(page.items.iter().map(|s| s.name_any()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, [(3, Some(4)), (3, Some(1)), (1, None)]);
    assert_eq!(names, (0..7).map(|i| format!("svc{i}")).collect::<Vec<_>>());

    // The watcher pages its initial list the same way.
    let before = server.lists_served(Kind::Service);
    let services = Reflector::start(api, watcher::Config::default().page_size(3));
    eventually("all seven services", || services.names().len() == 7).await;
    assert_eq!(server.lists_served(Kind::Service) - before, 3);

    // A continue token from before a compaction is rejected with 410, as in the API server.
    let first = Api::<Service>::all(client(&server).await)
        .list(&ListParams::default().limit(3))
        .await
        .expect("first page");
    server.compact();
    let token = first.metadata.continue_.expect("a continue token");
    let err = Api::<Service>::all(client(&server).await)
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect_err("stale continue token");
    assert!(
        err.to_string().contains("410") || err.to_string().contains("Expired"),
        "{err}"
    );
}

#[tokio::test]
async fn label_selectors_filter_lists() {
    let server = start();
    let mut headless = service("headless", "None");
    headless["metadata"]["labels"] = json!({"service.kubernetes.io/headless": ""});
    server.apply(headless).expect("create");
    let mut other = service("other-proxy", "198.18.128.11");
    other["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
    server.apply(other).expect("create");
    server
        .apply(service("plain", "198.18.128.12"))
        .expect("create");
    let api = Api::<Service>::all(client(&server).await);
    let names = |list: kube::core::ObjectList<Service>| {
        list.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
    };
    let selected = api
        .list(
            &ListParams::default().labels(
                "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
            ),
        )
        .await
        .expect("list");
    assert_eq!(names(selected), ["plain"]);
    let selected = api
        .list(&ListParams::default().labels("service.kubernetes.io/service-proxy-name=other"))
        .await
        .expect("list");
    assert_eq!(names(selected), ["other-proxy"]);
    let namespaced = Api::<Service>::namespaced(client(&server).await, "kube-system")
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(namespaced.items.is_empty());
}

#[tokio::test]
async fn compaction_and_cut_watches_force_a_correct_relist() {
    let server = start();
    for name in ["a", "b", "c"] {
        server
            .apply(service(name, "198.18.128.10"))
            .expect("create");
    }
    let services = Reflector::start(
        Api::<Service>::all(client(&server).await),
        watcher::Config::default(),
    );
    eventually("the watch", || server.open_watches(Kind::Service) == 1).await;
    assert_eq!(services.names(), ["a", "b", "c"]);

    // Compaction alone does not disturb an open watch; cutting it makes kube-rs resume
    // from its last resourceVersion, which is now too old: 410, then a relist.
    server.compact();
    server.drop_watches();
    eventually("a relist", || server.lists_served(Kind::Service) == 2).await;
    eventually("the new watch", || server.open_watches(Kind::Service) == 1).await;
    assert_eq!(services.names(), ["a", "b", "c"]);
    assert!(
        services.errors() >= 1,
        "the 410 reaches the watcher as an error"
    );

    // Changes the client cannot see as events (they happen during an outage, and the
    // history is compacted before it ends) still end up in the store, exactly.
    server.set_available(false).expect("outage");
    server
        .delete(Kind::Service, "default", "a")
        .expect("delete");
    server.apply(service("b", "198.18.128.99")).expect("update");
    server.apply(service("d", "198.18.128.13")).expect("create");
    server.compact();
    server.set_available(true).expect("end of the outage");
    eventually("the relisted state", || {
        services.contents() == server_contents(&server, Kind::Service, &["a", "b", "c", "d"])
    })
    .await;
    assert_eq!(services.names(), ["b", "c", "d"]);
    assert_eq!(
        cluster_ip(&services.store, "b").as_deref(),
        Some("198.18.128.99")
    );
    assert_eq!(server.lists_served(Kind::Service), 3);
}

#[tokio::test]
async fn watcher_backs_off_through_an_outage_and_resumes_without_relisting() {
    let server = start();
    server.apply(service("a", "198.18.128.10")).expect("create");
    let services = Reflector::start(
        Api::<Service>::all(client(&server).await),
        watcher::Config::default(),
    );
    eventually("the watch", || server.open_watches(Kind::Service) == 1).await;
    let watches = server.watches_started(Kind::Service);
    let requests = server.requests().len();

    let outage = Instant::now();
    server.set_available(false).expect("outage");
    assert!(
        TcpStream::connect(server.addr()).is_err(),
        "connections are refused"
    );
    server
        .apply(service("b", "198.18.128.11"))
        .expect("create during the outage");
    // Each failed attempt is one error. The default backoff waits at least 0.8 s after the
    // first and 1.6 s after the second (jitter only adds), so a third error cannot come
    // before 2.4 s into the outage; without the backoff it would take milliseconds.
    eventually("three failed attempts", || services.errors() >= 3).await;
    let elapsed = outage.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2400),
        "{} failed attempts within {elapsed:?}: no backoff?",
        services.errors()
    );
    // Nothing reached the server, so nothing can have reached the store.
    assert_eq!(server.requests().len(), requests);
    assert_eq!(services.names(), ["a"]);

    server.set_available(true).expect("end of the outage");
    eventually("the change made during the outage", || {
        services.names() == ["a", "b"]
    })
    .await;
    // The resumed watch replayed the missed event: no relist was needed.
    assert_eq!(server.lists_served(Kind::Service), 1);
    assert!(server.watches_started(Kind::Service) > watches);
}

#[tokio::test]
async fn service_unavailable_is_retried_by_the_client() {
    let server = start();
    server.apply(service("a", "198.18.128.10")).expect("create");
    let services = Reflector::start(
        Api::<Service>::all(client(&server).await),
        watcher::Config::default(),
    );
    eventually("the watch", || server.open_watches(Kind::Service) == 1).await;
    let before = server.requests().len();

    server
        .set_availability(Availability::ServiceUnavailable)
        .expect("503s");
    server
        .apply(service("b", "198.18.128.11"))
        .expect("create during the 503s");
    eventually("several refused watch attempts", || {
        server.requests().len() >= before + 3
    })
    .await;
    assert_eq!(services.names(), ["a"]);

    server
        .set_availability(Availability::Up)
        .expect("serving again");
    eventually("the change made during the 503s", || {
        services.names() == ["a", "b"]
    })
    .await;
    assert_eq!(server.lists_served(Kind::Service), 1);
    // kube-rs 5 retries 503s inside the client, so the watcher saw no error at all.
    assert_eq!(services.errors(), 0);
}

#[tokio::test]
async fn bookmarks_do_not_disturb_the_store() {
    let server = start();
    server.apply(service("a", "198.18.128.10")).expect("create");
    server.apply(node("node1", "z1")).expect("create");
    let services = Reflector::start(
        Api::<Service>::all(client(&server).await),
        watcher::Config::default(),
    );
    eventually("the watch", || server.open_watches(Kind::Service) == 1).await;
    let before = services.contents();
    let bookmarks_from = |rv: u64| {
        server
            .bookmarks_sent(Kind::Service)
            .into_iter()
            .filter(|&b| b >= rv)
            .count()
    };

    // Node changes advance the resourceVersion the Service bookmarks carry.
    let mut rv = 0;
    for i in 0..5 {
        rv = server
            .apply(node("node1", &format!("z{i}")))
            .expect("update node");
        server.bookmark_now();
        eventually("a bookmark with the node change", || {
            bookmarks_from(rv) >= 1
        })
        .await;
    }
    // ...and the periodic ones: two more after the last change, a BOOKMARK_INTERVAL
    // apart, give the client time to have read the first.
    eventually("two periodic bookmarks", || bookmarks_from(rv) >= 3).await;
    assert_eq!(services.contents(), before);
    assert_eq!(services.errors(), 0);
    assert_eq!(server.lists_served(Kind::Service), 1);
    assert_eq!(server.watches_started(Kind::Service), 1);

    // After a bookmark the client resumes from the bookmark's resourceVersion.
    server.drop_watches();
    eventually("the resumed watch", || {
        server.watches_started(Kind::Service) >= 2
    })
    .await;
    let resumed = server.requests();
    let last_watch = resumed
        .iter()
        .rev()
        .find(|r| r.starts_with("GET /api/v1/services?") && r.contains("watch=true"))
        .expect("a service watch");
    assert_eq!(server.resource_version(), rv);
    assert!(
        last_watch.contains(&format!("resourceVersion={rv}")),
        "{last_watch}, current {rv}"
    );
    // Only bookmarks carried `rv` to the client, so it had read the last one before the cut,
    // and the bookmarks neither changed the store nor made it relist or rewatch.
    assert_eq!(services.contents(), before);
    assert_eq!(server.lists_served(Kind::Service), 1);
    assert_eq!(server.watches_started(Kind::Service), 2);
    server.apply(service("b", "198.18.128.11")).expect("create");
    eventually("a change after the bookmarks", || {
        services.names() == ["a", "b"]
    })
    .await;
    assert_eq!(server.lists_served(Kind::Service), 1);
}

#[tokio::test]
async fn node_watch_with_a_field_selector_sees_only_its_node() {
    let server = start();
    server.apply(node("node1", "z1")).expect("create");
    server.apply(node("node2", "z1")).expect("create");
    let nodes = Reflector::start(
        Api::<Node>::all(client(&server).await),
        watcher::Config::default().fields("metadata.name=node1"),
    );
    eventually("node1 listed", || nodes.names() == ["node1"]).await;
    eventually("the node watch", || server.open_watches(Kind::Node) == 1).await;

    server.apply(node("node2", "z2")).expect("update node2");
    server.apply(node("node1", "z3")).expect("update node1");
    let zone = |nodes: &Reflector<Node>| {
        nodes
            .store
            .state()
            .first()
            .and_then(|n| n.labels().get("topology.kubernetes.io/zone").cloned())
    };
    eventually("node1's update", || zone(&nodes).as_deref() == Some("z3")).await;
    assert_eq!(nodes.names(), ["node1"]);
    server.delete(Kind::Node, "", "node1").expect("delete");
    eventually("node1's deletion", || nodes.names().is_empty()).await;
    assert!(server
        .requests()
        .iter()
        .any(|r| r.contains("watch=true") && r.contains("fieldSelector=metadata.name%3Dnode1")));
}

/// A raw HTTP/1.1 GET; returns the stream after the request is sent.
fn raw_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    stream
}

/// Reads into `buf` until `done(buf)` or EOF/reset; returns whether the connection ended.
fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 4096];
    loop {
        if done(&String::from_utf8_lossy(buf)) {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; got {}",
            String::from_utf8_lossy(buf)
        );
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

/// Whether the body read so far ends at a chunk boundary (each chunk is one event line).
fn whole_lines(raw: &str) -> bool {
    raw.ends_with("\n\r\n")
}

/// The JSON lines of a chunked watch body read so far (chunks are whole lines here).
fn watch_lines(raw: &str) -> Vec<Value> {
    raw.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON watch event"))
        .collect()
}

#[test]
fn watch_wire_format_bookmarks_and_abrupt_cut() {
    let server = start();
    server.apply(service("a", "198.18.128.10")).expect("create");
    let mut stream = raw_get(
        server.addr(),
        "/api/v1/services?watch=1&resourceVersion=0&allowWatchBookmarks=true",
    );
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |s| {
        whole_lines(s) && s.contains("\"ADDED\"")
    });
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");

    server.apply(service("a", "198.18.128.11")).expect("update");
    server
        .delete(Kind::Service, "default", "a")
        .expect("delete");
    read_until(&mut stream, &mut buf, |s| {
        whole_lines(s) && s.contains("\"DELETED\"")
    });
    // The ticker may have sent bookmarks already; ask for one after the deletion.
    server.bookmark_now();
    read_until(&mut stream, &mut buf, |s| {
        whole_lines(s) && s.rfind("\"BOOKMARK\"") > s.find("\"DELETED\"")
    });
    let lines = watch_lines(&String::from_utf8_lossy(&buf));
    let types: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["type"].as_str())
        .filter(|t| *t != "BOOKMARK")
        .collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
    let bookmark = &lines.last().expect("a bookmark")["object"];
    assert_eq!(bookmark["kind"], "Service");
    assert_eq!(bookmark["apiVersion"], "v1");
    assert_eq!(
        bookmark["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );

    server.drop_watches();
    let ended = read_until(&mut stream, &mut buf, |_| false);
    assert!(ended);
    let raw = String::from_utf8_lossy(&buf);
    assert!(
        !raw.ends_with("0\r\n\r\n"),
        "a cut watch must not end cleanly: {raw:?}"
    );
}

#[test]
fn expired_watch_gets_a_410_event_and_timeouts_end_cleanly() {
    let server = start();
    let rv = server.apply(service("a", "198.18.128.10")).expect("create");
    server.compact();
    let mut stream = raw_get(
        server.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={rv}"),
    );
    let mut buf = Vec::new();
    assert!(read_until(&mut stream, &mut buf, |_| false));
    let raw = String::from_utf8_lossy(&buf);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("0\r\n\r\n"), "{raw:?}");
    let lines = watch_lines(&raw);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["type"], "ERROR");
    assert_eq!(lines[0]["object"]["code"], 410);
    assert_eq!(lines[0]["object"]["reason"], "Expired");

    let current = server.resource_version();
    let started = Instant::now();
    let mut stream = raw_get(
        server.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={current}&timeoutSeconds=1"),
    );
    let mut buf = Vec::new();
    assert!(read_until(&mut stream, &mut buf, |_| false));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(String::from_utf8_lossy(&buf).ends_with("0\r\n\r\n"));
}

#[test]
fn served_only_inside_the_node_namespace() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 0,
    })
    .expect("building the testbed");
    let node_ns: PathBuf = testbed.node(1).netns_path.clone();
    let bind = SocketAddr::from(([127, 0, 0, 1], 6443));
    let server = FakeApiServer::start_in_netns(&node_ns, bind).expect("starting in the netns");
    assert_eq!(server.addr(), bind);
    server.apply(node("node1", "z1")).expect("create");

    // The root namespace's 127.0.0.1:6443 is not this server.
    if let Ok(mut stream) = TcpStream::connect_timeout(&bind, Duration::from_millis(200)) {
        let _ = write!(
            stream,
            "GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.read(&mut [0u8; 64]);
    }
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // A kube-rs client running in the node namespace (as switchyard would) reaches it.
    let names = switchyard_testbed::netns::run_in_netns(&node_ns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| switchyard_testbed::Error::Protocol(e.to_string()))?;
        runtime.block_on(async {
            let nodes = Api::<Node>::all(client(&server).await)
                .list(&ListParams::default())
                .await
                .map_err(|e| switchyard_testbed::Error::Protocol(e.to_string()))?;
            Ok(nodes.items.iter().map(|n| n.name_any()).collect::<Vec<_>>())
        })
    })
    .expect("listing from inside the namespace");
    assert_eq!(names, ["node1"]);
    assert_eq!(server.lists_served(Kind::Node), 1);
}
