//! Process wiring: settings -> source, dataplane, servers, controller.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use switchyard_common::DEFAULT_SOURCE_RANGES_MAX;

use crate::config::settings::DEFAULT_CGROUP_ROOTS;
use crate::config::{ProxyMode, Settings, Source};
use crate::conntrack::Reconciler;
use crate::controller::{Controller, SystemClock};
use crate::dataplane::Dataplane;
use crate::ebpf::sctp_fallback::WithSctpFallback;
use crate::ebpf::{EbpfConfig, EbpfDataplane, LoadedEbpf};
use crate::handover::{
    remove_ebpf_state, remove_iptables_state, remove_old_masquerade_rules,
    remove_sctp_fallback_state, Leftovers,
};
use crate::health::Health;
use crate::iptables::rule_set::{Family, RuleConfig};
use crate::iptables::{DualStackIptables, IptablesBackend, IptablesDataplane, SystemIptables};
use crate::metrics::Metrics;
use crate::server::{health_router, metrics_router, serve, ServerState};
use crate::source::kube_api;
use crate::source::ManifestDir;

/// Runs the proxy until SIGTERM or SIGINT, which end it cleanly at any point, also while
/// it still waits for the API server's first lists; or until the `--config` file changes,
/// which ends it with an error (exit status 1, as kube-proxy) so that it is restarted with
/// the new configuration. Either way the dataplane stays programmed for the next start.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // As kube-proxy, a refusal (a container may forbid it) is not fatal.
    match crate::oom_score::set_oom_score_adj(settings.oom_score_adj) {
        Ok(()) => tracing::debug!(oom_score_adj = settings.oom_score_adj, "set oom_score_adj"),
        Err(e) => tracing::warn!(
            oom_score_adj = settings.oom_score_adj,
            error = %e,
            "cannot set oom_score_adj; going on"
        ),
    }
    let config_changed = match &settings.config_file {
        Some(file) => Some(
            crate::config::watch::watch_config(&file.path, file.text.clone())
                .context("--config")?,
        ),
        None => None,
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = serve_until_the_source_ends(settings) => result,
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: exiting");
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: exiting");
            Ok(())
        }
        change = config_change(config_changed) => {
            tracing::info!("{change}: exiting, to be restarted with it");
            Err(anyhow::anyhow!("{change}"))
        }
    }
}

/// The config file's first change; never, without a config file or once its watcher is gone.
async fn config_change(
    watch: Option<tokio::sync::oneshot::Receiver<crate::config::watch::ConfigChange>>,
) -> crate::config::watch::ConfigChange {
    match watch {
        Some(rx) => match rx.await {
            Ok(change) => change,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn serve_until_the_source_ends(mut settings: Settings) -> anyhow::Result<()> {
    let health = Arc::new(Health::new(settings.sync_period * 2));
    // Health and metrics answer from the start, also while waiting for the first lists.
    let metrics = Arc::new(Metrics::for_mode(settings.mode));
    let state = ServerState {
        health: health.clone(),
        metrics: metrics.clone(),
        mode: settings.mode,
    };
    if let Some(addr) = settings.healthz_bind {
        serve("--healthz-bind-address", addr, health_router(state.clone())).await?;
    }
    if let Some(addr) = settings.metrics_bind {
        serve("--metrics-bind-address", addr, metrics_router(state)).await?;
    }
    let addresses = crate::node_addresses::watch_addresses()?;
    // ebpf mode: the programs load (blocking kernel work, most of a start's after the
    // objects) on a thread while the source reads the objects; they are attached once the
    // Node object has chosen the devices.
    let loading = match settings.mode {
        ProxyMode::Ebpf => {
            let config = ebpf_config(&settings, &addresses.borrow())?;
            if config.no_ipv6.is_none() {
                metrics.serve_ipv6();
            }
            Some(tokio::task::spawn_blocking(move || {
                let loaded = EbpfDataplane::load(config);
                crate::memory::release_freed();
                loaded
            }))
        }
        ProxyMode::Iptables => None,
    };
    let mut events = None;
    let source = match &settings.source {
        Source::Manifests(dir) => ManifestDir::new(dir.clone()).watch()?,
        Source::Kubeconfig(_) | Source::InCluster => {
            let kubeconfig = match &settings.source {
                Source::Kubeconfig(path) => Some(path.as_path()),
                _ => None,
            };
            let (client, server) = kube_api::client(kubeconfig).await?;
            let recorder = crate::events::Events::new(client.clone(), &settings.node_name);
            // As kube-proxy: recorded once the client exists, before the first lists.
            recorder.starting();
            events = Some(recorder);
            kube_api::watch_api(client, &server, &settings.node_name, health.clone()).await?
        }
    };
    let node = source
        .borrow()
        .objects
        .nodes
        .get(&settings.node_name)
        .cloned();
    let node_ips = node
        .as_deref()
        .map(crate::model::reported_node_ips)
        .unwrap_or_default();
    // `nodePortAddresses: [primary]` is fixed at start-up from the first snapshot's Node, as
    // in kube-proxy; the dataplane and the controller then see plain CIDRs.
    match settings.resolve_primary_nodeport_addresses(node.as_deref()) {
        Some(Ok(chosen)) => tracing::info!("{chosen}"),
        Some(Err(fallback)) => tracing::warn!("{fallback}"),
        None => {}
    }
    let local = addresses.borrow().clone();
    let loaded = match loading {
        Some(loading) => Some(loading.await.context("ebpf mode: loading the programs")??),
        None => None,
    };
    let (dataplane, leftovers) = start_dataplane(&settings, &node_ips, &local, &metrics, loaded)?;
    tracing::info!(mode = %settings.mode, node = %settings.node_name, "switchyard running");
    // Health check node ports are served from the controller's applied state, whatever the
    // mode.
    let health_checks = crate::service_health::start(health.clone(), events);
    let cleanup_kube_proxy = settings.cleanup_kube_proxy;
    let (done, first_sync) = tokio::sync::oneshot::channel();
    let controller = Controller::new(settings, dataplane, metrics, health, Box::new(SystemClock))
        .with_health_checks(health_checks)
        .with_first_sync(done);
    // The other mode's state, and kube-proxy's rules with --cleanup-kube-proxy, go only once
    // ours serve every service.
    tokio::spawn(async move {
        if first_sync.await.is_err() {
            return;
        }
        // The start's transient memory (the objects' text, the parse, the first sync's
        // rendering) goes back to the kernel before the handover and the verifies allocate
        // on top of it.
        crate::memory::release_freed();
        // On a thread of its own: removing 10,000 services' chains, or waiting for ebpf
        // mode's flows to end, takes seconds, and this mode's syncs need none of it (neither
        // mode touches the other's state). A process that exits meanwhile does not wait for
        // it: what is left is removed by the next start's handover.
        let (removed, handed_over) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                leftovers.remove();
                let _ = removed.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = handed_over.await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "handover: cannot start its thread; the other mode's state stays")
            }
        }
        if cleanup_kube_proxy {
            crate::kube_proxy_cleanup::run().await;
        }
    });
    crate::controller::run(controller, source, addresses).await;
    tracing::warn!("source ended");
    Ok(())
}

/// ebpf mode's settings, but for the devices ([`LoadedEbpf::attach`] takes them); `local`:
/// the node's addresses at start (whether it proxies IPv6).
fn ebpf_config(settings: &Settings, local: &[std::net::IpAddr]) -> anyhow::Result<EbpfConfig> {
    let cgroup_path = match &settings.cgroup_path {
        Some(path) => path.clone(),
        None => default_cgroup_root()?,
    };
    Ok(EbpfConfig {
        cgroup_path,
        bpffs_path: settings.bpffs_path.clone(),
        devices: Vec::new(),
        follow_devices: None,
        services_max: settings.ebpf_map_sizes.services,
        backends_max: settings.ebpf_map_sizes.backends,
        conntrack_max: settings.ebpf_map_sizes.conntrack,
        source_ranges_max: DEFAULT_SOURCE_RANGES_MAX,
        snat_ports: crate::ebpf::masquerade::snat_ports(&settings.nodeport_range),
        kernel_logs: settings.verbosity >= 4,
        // After start-up's conntrack sysctls, so the `conntrack` section applies.
        flow_timeouts: crate::ebpf::flow_timeouts::read(),
        icmp_limits: crate::ebpf::icmp_limits::read(),
        no_ipv6: crate::ebpf::ipv6_maps::decide(crate::ebpf::ipv6_maps::kernel_has_ipv6(), local)
            .err(),
    })
}

/// Starts the mode's dataplane, and says what of the other mode's state to remove after its
/// first successful sync (see [`crate::handover`] for why then and not before).
fn start_dataplane(
    settings: &Settings,
    node_ips: &[std::net::IpAddr],
    local: &[std::net::IpAddr],
    metrics: &Metrics,
    loaded: Option<LoadedEbpf>,
) -> anyhow::Result<(Box<dyn Dataplane>, Leftovers)> {
    match (settings.mode, loaded) {
        (ProxyMode::Ebpf, None) => anyhow::bail!("ebpf mode: the programs were not loaded"),
        (ProxyMode::Ebpf, Some(loaded)) => {
            let follow_devices = settings.devices.is_empty().then(|| node_ips.to_vec());
            let devices = if settings.devices.is_empty() {
                crate::node_addresses::default_devices(node_ips)
                    .context("listing interfaces for --devices")?
            } else {
                settings.devices.clone()
            };
            tracing::info!(?devices, "ebpf mode: packet programs on these devices");
            let dataplane = loaded
                .attach(devices, follow_devices)?
                .with_metrics(metrics.ebpf.clone());
            // SCTP ports are served by iptables rules of their own (see the module); without
            // iptables they fail every sync, never silently.
            let backend = iptables_backend(settings)
                .inspect_err(|e| tracing::warn!(error = %e, "ebpf mode: no iptables, so SCTP service ports cannot be served"))
                .ok();
            let dataplane = WithSctpFallback::new(
                dataplane,
                backend,
                rule_config(settings, local, Family::Ipv4),
                rule_config(settings, local, Family::Ipv6),
            );
            // iptables mode's chains keep translating until the maps are written; older
            // versions' masquerade chains go with them (any nat rule would hook netfilter's
            // NAT, and its conntrack, back in).
            Ok((Box::new(dataplane), Leftovers::Iptables))
        }
        (ProxyMode::Iptables, _) => {
            // An older ebpf version's masquerade chain is named like ours: a full sync would
            // try to delete it while POSTROUTING still jumps there, so it goes first.
            remove_old_masquerade_rules();
            // One rule set per family, as upstream's proxier per family.
            let family = |family: Family| -> anyhow::Result<IptablesDataplane> {
                let label = match family {
                    Family::Ipv4 => crate::metrics::IpFamily::IPv4,
                    Family::Ipv6 => crate::metrics::IpFamily::IPv6,
                };
                Ok(start_iptables(settings, local, family)?
                    .with_metrics(metrics.iptables.for_family(label))
                    .with_conntrack(Reconciler::netlink_for(
                        metrics.conntrack_reconciler.clone(),
                        family,
                    )))
            };
            let ip6tables = crate::iptables::Tools::new(iptables_backend(settings)?, Family::Ipv6);
            let ipv6 = match crate::iptables::exec::usable(ip6tables) {
                Ok(()) => {
                    metrics.serve_ipv6();
                    Some(family(Family::Ipv6)?)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ip6tables unusable: IPv6 services are not served");
                    None
                }
            };
            let dataplane = DualStackIptables::new(family(Family::Ipv4)?, ipv6, local);
            // ebpf mode's pinned programs keep translating (before these rules would see the
            // traffic) until the rules are written.
            Ok((
                Box::new(dataplane),
                Leftovers::Ebpf {
                    bpffs_path: settings.bpffs_path.clone(),
                },
            ))
        }
    }
}

fn iptables_backend(settings: &Settings) -> anyhow::Result<IptablesBackend> {
    match settings.iptables_backend {
        Some(b) => Ok(b),
        None => IptablesBackend::detect()
            .context("cannot run `iptables --version` (is iptables installed?)"),
    }
}

fn start_iptables(
    settings: &Settings,
    local: &[std::net::IpAddr],
    family: Family,
) -> anyhow::Result<IptablesDataplane> {
    let backend = iptables_backend(settings)?;
    if family == Family::Ipv4 {
        ensure_route_localnet(settings)?;
    }
    tracing::info!(%backend, %family, "iptables mode");
    Ok(IptablesDataplane::new(
        Box::new(SystemIptables::new(backend, family)),
        backend.strategy(),
        rule_config(settings, local, family),
    ))
}

/// The iptables renderer's node-wide inputs for `family` (iptables mode, and ebpf mode's
/// SCTP fallback).
fn rule_config(settings: &Settings, local: &[std::net::IpAddr], family: Family) -> RuleConfig {
    RuleConfig {
        family,
        cluster_cidrs: settings.cluster_cidrs.clone(),
        masquerade_all: settings.masquerade_all,
        nodeport_cidrs: settings.nodeport_cidrs.clone(),
        node_ips: local
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback() && family.has(ip))
            .collect(),
        localhost_nodeports: localhost_nodeports(settings),
    }
}

/// Whether iptables mode serves NodePorts on 127.0.0.1 (kube-proxy's `localhostNodePorts`,
/// when the NodePort addresses include it).
fn localhost_nodeports(settings: &Settings) -> bool {
    settings.mode == ProxyMode::Iptables
        && settings.localhost_nodeports
        && (settings.nodeport_cidrs.is_empty()
            || settings
                .nodeport_cidrs
                .iter()
                .any(|c| c.contains(&std::net::IpAddr::from([127, 0, 0, 1]))))
}

const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// Sets `net.ipv4.conf.all.route_localnet=1` where localhost NodePorts need it (the kernel
/// must route DNATed loopback traffic). Written only when it differs, so that the proxy
/// container, whose /proc/sys is read-only, starts after the privileged `--init-only` step
/// set it (deploy/base/daemonset.yaml).
pub fn ensure_route_localnet(settings: &Settings) -> anyhow::Result<()> {
    if !localhost_nodeports(settings) {
        return Ok(());
    }
    let current = std::fs::read_to_string(ROUTE_LOCALNET).unwrap_or_default();
    if current.trim() == "1" {
        return Ok(());
    }
    std::fs::write(ROUTE_LOCALNET, "1")
        .context("iptables mode: setting net.ipv4.conf.all.route_localnet=1")
}

/// The cgroup v2 root: the unified hierarchy on hybrid hosts, else /sys/fs/cgroup.
fn default_cgroup_root() -> anyhow::Result<PathBuf> {
    DEFAULT_CGROUP_ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        .context("no cgroup v2 hierarchy found; pass --cgroup-path")
}

/// `--cleanup`: removes what Switchyard left on the node, for both modes and both iptables
/// backends, so switching modes never leaves the other mode's state behind.
pub fn cleanup(settings: &Settings) -> anyhow::Result<()> {
    let mut incomplete = remove_iptables_state();
    incomplete.extend(remove_sctp_fallback_state());
    remove_old_masquerade_rules();
    remove_ebpf_state(&settings.bpffs_path)?;
    if !incomplete.is_empty() {
        anyhow::bail!(
            "--cleanup left iptables state behind: {}",
            incomplete.join("; ")
        );
    }
    Ok(())
}
