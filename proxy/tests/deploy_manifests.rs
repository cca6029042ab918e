//! `deploy/`: every manifest, and the `kubectl kustomize` output of every overlay, parses into
//! k8s-openapi types with no field left over (k8s-openapi ignores unknown fields, so a
//! misspelt `mountPropagaton` would vanish silently; `serde_ignored` names them), every
//! kustomization uses only the fields it is meant to, the configuration files parse as
//! Switchyard reads them without a single warning, and the commands in the DaemonSet resolve
//! with Switchyard's own flag parser against the overlay's configuration.
//!
//! `kubectl` comes from `cargo xtask setup` (README "Setup").
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Endpoints, Node, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use switchyard::config::file::ConfigFile;
use switchyard::config::{Cli, ProxyMode, Settings};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The documents of a YAML text, as JSON values (empty documents skipped).
fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{what}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Deserializes `value` as `T`, failing with the path of every field `T` would ignore.
fn strict<T: DeserializeOwned>(value: &Value, what: &str) -> T {
    let mut ignored = Vec::new();
    let parsed = serde_ignored::deserialize(value.clone(), |path| ignored.push(path.to_string()))
        .unwrap_or_else(|e: serde_json::Error| panic!("{what}: {e}"));
    assert!(
        ignored.is_empty(),
        "{what}: fields the type does not have: {ignored:?}"
    );
    parsed
}

/// One manifest, typed.
enum Object {
    DaemonSet(Box<DaemonSet>),
    ConfigMap(Box<ConfigMap>),
    Other(String),
}

/// A whole Kubernetes object: its apiVersion and kind must be one the deployment uses.
fn object(value: &Value, what: &str) -> Object {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let kind = value["kind"].as_str().unwrap_or_default();
    let what = format!("{what}: {kind} {}", value["metadata"]["name"]);
    match (api_version, kind) {
        ("apps/v1", "DaemonSet") => Object::DaemonSet(Box::new(strict(value, &what))),
        ("v1", "ConfigMap") => Object::ConfigMap(Box::new(strict(value, &what))),
        ("v1", "ServiceAccount") => Object::Other(kind_of(strict::<ServiceAccount>(value, &what))),
        ("v1", "Service") => Object::Other(kind_of(strict::<Service>(value, &what))),
        ("v1", "Endpoints") => Object::Other(kind_of(strict::<Endpoints>(value, &what))),
        ("v1", "Node") => Object::Other(kind_of(strict::<Node>(value, &what))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::Other(kind_of(strict::<EndpointSlice>(value, &what)))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            Object::Other(kind_of(strict::<ClusterRole>(value, &what)))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Object::Other(kind_of(strict::<ClusterRoleBinding>(value, &what)))
        }
        _ => panic!("{what}: unexpected apiVersion/kind {api_version}/{kind}"),
    }
}

fn kind_of<T: k8s_openapi::Resource>(_: T) -> String {
    T::KIND.to_owned()
}

/// The fields of a kustomization this repository uses; any other is a mistake (or a field
/// that older kustomize versions lack, such as the deprecated `patchesStrategicMerge`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    config_map_generator: Vec<Generator>,
    #[serde(default)]
    images: Vec<Image>,
    #[serde(default)]
    patches: Vec<Patch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Generator {
    #[allow(dead_code)]
    name: String,
    behavior: Option<String>,
    files: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Image {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    path: Option<String>,
    patch: Option<String>,
    target: Option<Target>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Target {
    kind: Option<String>,
    name: Option<String>,
}

/// A KubeProxyConfiguration as Switchyard reads it: valid, and without one warning.
fn config_file(text: &str, what: &str) -> ConfigFile {
    let file = ConfigFile::parse(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    let config = file
        .kube_proxy_config()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(config.warnings.is_empty(), "{what}: {:?}", config.warnings);
    file
}

/// A kubeconfig as kube-rs reads it, with no field it would ignore.
fn kubeconfig(text: &str, what: &str) -> kube::config::Kubeconfig {
    let value = documents(text, what).pop().expect("one document");
    let config: kube::config::Kubeconfig = strict(&value, what);
    // kube-rs keeps fields it does not model in `other` maps instead of ignoring them.
    let mut unknown: Vec<String> = config.other.keys().cloned().collect();
    for c in &config.clusters {
        unknown.extend(c.other.keys().cloned());
        unknown.extend(c.cluster.iter().flat_map(|c| c.other.keys().cloned()));
    }
    for a in &config.auth_infos {
        unknown.extend(a.other.keys().cloned());
        unknown.extend(a.auth_info.iter().flat_map(|a| a.other.keys().cloned()));
    }
    for c in &config.contexts {
        unknown.extend(c.other.keys().cloned());
        unknown.extend(c.context.iter().flat_map(|c| c.other.keys().cloned()));
    }
    assert!(
        unknown.is_empty(),
        "{what}: unknown kubeconfig fields {unknown:?}"
    );
    for cluster in &config.clusters {
        let server = cluster
            .cluster
            .as_ref()
            .and_then(|c| c.server.as_deref())
            .unwrap_or_else(|| panic!("{what}: cluster {} has no server", cluster.name));
        assert!(server.starts_with("https://"), "{what}: {server}");
    }
    config
}

#[test]
fn every_file_under_deploy_parses_strictly() {
    let mut kustomizations = Vec::new();
    let mut yaml = Vec::new();
    let mut conf = Vec::new();
    for entry in walkdir::WalkDir::new(deploy()) {
        let entry = entry.expect("walk deploy/");
        let path = entry.path().to_owned();
        if !entry.file_type().is_file() {
            continue;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") if path.file_name() == Some("kustomization.yaml".as_ref()) => {
                kustomizations.push(path)
            }
            Some("yaml") => yaml.push(path),
            Some("conf") => conf.push(path),
            _ => panic!("{}: unexpected file in deploy/", path.display()),
        }
    }
    assert!(kustomizations.len() >= 4, "{kustomizations:?}");

    // Kustomizations: only the known fields, and every file they name exists. Patch files
    // are partial objects; what they do is checked in the overlays' output below.
    let mut patch_files = BTreeSet::new();
    for path in &kustomizations {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path).expect("read");
        let value = documents(&text, &what).pop().expect("one document");
        let k: Kustomization =
            serde_json::from_value(value).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1", "{what}");
        assert_eq!(k.kind, "Kustomization", "{what}");
        let dir = path.parent().expect("dir");
        let files = k
            .resources
            .iter()
            .chain(k.config_map_generator.iter().flat_map(|g| &g.files))
            .chain(k.patches.iter().filter_map(|p| p.path.as_ref()));
        for file in files {
            assert!(dir.join(file).exists(), "{what}: {file} does not exist");
        }
        for patch in &k.patches {
            assert!(
                patch.path.is_some() != patch.patch.is_some(),
                "{what}: a patch is a path or inline: {patch:?}"
            );
            if let Some(file) = &patch.path {
                patch_files.insert(dir.join(file).canonicalize().expect("patch file"));
            }
            if let Some(inline) = &patch.patch {
                assert!(
                    patch.target.is_some(),
                    "{what}: inline patch without target"
                );
                documents(inline, &what);
            }
        }
        for generator in &k.config_map_generator {
            assert!(
                generator.behavior.as_deref().is_none_or(|b| b == "merge"),
                "{what}: {generator:?}"
            );
        }
        let _ = (&k.namespace, &k.images);
    }

    let mut objects = 0;
    for path in &yaml {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path).expect("read");
        let docs = documents(&text, &what);
        assert!(!docs.is_empty(), "{what}: empty");
        if patch_files.contains(&path.canonicalize().expect("path")) {
            for doc in &docs {
                assert!(
                    doc["apiVersion"].is_string() && doc["kind"].is_string(),
                    "{what}: a patch names apiVersion and kind"
                );
            }
            continue;
        }
        for doc in &docs {
            object(doc, &what);
            objects += 1;
        }
    }
    assert!(objects >= 8, "only {objects} objects found under deploy/");

    for path in &conf {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path).expect("read");
        match path.file_name().and_then(|n| n.to_str()) {
            Some("config.conf") => drop(config_file(&text, &what)),
            Some("kubeconfig.conf") => drop(kubeconfig(&text, &what)),
            _ => panic!("{what}: unexpected configuration file"),
        }
    }
}

/// `kubectl kustomize DIR`.
fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (cargo xtask setup installs it): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// One overlay's output, typed, with what the checks need.
struct Rendered {
    daemonset: DaemonSet,
    config_maps: Vec<ConfigMap>,
    kinds: BTreeSet<String>,
}

fn render(overlay: &str) -> Rendered {
    let dir = deploy().join("overlays").join(overlay);
    let text = kustomize(&dir);
    let mut daemonsets = Vec::new();
    let mut config_maps = Vec::new();
    let mut kinds = BTreeSet::new();
    for doc in documents(&text, overlay) {
        let what = format!("kubectl kustomize {overlay}");
        match object(&doc, &what) {
            Object::DaemonSet(d) => {
                kinds.insert("DaemonSet".to_owned());
                daemonsets.push(*d)
            }
            Object::ConfigMap(c) => {
                kinds.insert("ConfigMap".to_owned());
                config_maps.push(*c)
            }
            Object::Other(kind) => {
                kinds.insert(kind);
            }
        }
    }
    assert_eq!(daemonsets.len(), 1, "{overlay}: one DaemonSet");
    Rendered {
        daemonset: daemonsets.remove(0),
        config_maps,
        kinds,
    }
}

fn pod_spec(daemonset: &DaemonSet) -> &PodSpec {
    daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn container<'a>(containers: &'a [Container], name: &str) -> &'a Container {
    containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container's command as Switchyard resolves it with `config` as its `--config` file:
/// no error, and no warning.
fn resolve(container: &Container, config: &str, overlay: &str) -> Settings {
    let command: Vec<String> = container
        .command
        .iter()
        .flatten()
        .map(|a| a.replace("$(NODE_NAME)", "node1"))
        .collect();
    assert_eq!(
        command.first().map(String::as_str),
        Some("/usr/local/bin/switchyard"),
        "{overlay}"
    );
    let cli = Cli::try_parse_from(&command)
        .unwrap_or_else(|e| panic!("{overlay}: {} {command:?}: {e}", container.name));
    let file = config_file(config, overlay);
    let settings = Settings::from_parts(cli, Some(&file), || "hostname".into())
        .unwrap_or_else(|e| panic!("{overlay}: {}: {e}", container.name));
    assert!(
        settings.warnings.is_empty(),
        "{overlay}: {}: {:?}",
        container.name,
        settings.warnings
    );
    assert_eq!(settings.node_name, "node1", "{overlay}");
    settings
}

/// The checks every overlay's DaemonSet passes; returns the proxy container's settings and
/// its added capabilities.
fn check_daemonset(r: &Rendered, config: &str, overlay: &str) -> (Settings, Vec<String>) {
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ] {
        assert!(r.kinds.contains(kind), "{overlay}: no {kind}");
    }
    let spec = pod_spec(&r.daemonset);
    assert_eq!(spec.host_network, Some(true), "{overlay}");
    // Default: the node's resolver; the cluster DNS Service is programmed by this proxy.
    assert_eq!(spec.dns_policy.as_deref(), Some("Default"), "{overlay}");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("switchyard"),
        "{overlay}"
    );
    let proxy = container(&spec.containers, "switchyard");
    let security = proxy.security_context.as_ref().expect("securityContext");
    assert_ne!(security.privileged, Some(true), "{overlay}: privileged");
    assert_eq!(
        security.allow_privilege_escalation,
        Some(false),
        "{overlay}"
    );
    assert_eq!(security.read_only_root_filesystem, Some(true), "{overlay}");
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "{overlay}"
    );
    let added = caps.add.clone().unwrap_or_default();
    assert!(!added.is_empty(), "{overlay}: no capabilities added");
    let startup = proxy.startup_probe.as_ref().expect("startupProbe");
    let get = startup.http_get.as_ref().expect("startupProbe httpGet");
    assert_eq!(get.path.as_deref(), Some("/healthz"), "{overlay}");
    let liveness = proxy.liveness_probe.as_ref().expect("livenessProbe");
    let get = liveness.http_get.as_ref().expect("livenessProbe httpGet");
    assert_eq!(get.path.as_deref(), Some("/livez"), "{overlay}");

    let settings = resolve(proxy, config, overlay);
    let init = container(spec.init_containers.as_deref().unwrap_or_default(), "init");
    let init_settings = resolve(init, config, overlay);
    assert!(
        init_settings.init_only,
        "{overlay}: the init container runs --init-only"
    );
    assert!(!settings.init_only, "{overlay}");

    // The volume holding the configuration is a ConfigMap the output has, or kubeadm's.
    let config_volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "config")
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone())
        .expect("config volume");
    let names: Vec<String> = r
        .config_maps
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert!(
        names.contains(&config_volume) || config_volume == "kube-proxy",
        "{overlay}: volume names ConfigMap {config_volume}, the output has {names:?}"
    );
    (settings, added)
}

/// The overlay's own ConfigMap: its config.conf and kubeconfig.conf, checked.
fn own_config(r: &Rendered, overlay: &str) -> String {
    assert_eq!(r.config_maps.len(), 1, "{overlay}: one ConfigMap");
    let data = r.config_maps[0].data.as_ref().expect("data");
    let config = data.get("config.conf").expect("config.conf").clone();
    kubeconfig(
        data.get("kubeconfig.conf").expect("kubeconfig.conf"),
        overlay,
    );
    config
}

#[test]
fn iptables_overlay() {
    let r = render("iptables");
    let config = own_config(&r, "iptables");
    let (settings, caps) = check_daemonset(&r, &config, "iptables");
    assert_eq!(settings.mode, ProxyMode::Iptables);
    assert!(
        !caps.iter().any(|c| c == "SYS_ADMIN" || c == "BPF"),
        "{caps:?}"
    );
}

#[test]
fn ebpf_overlay() {
    let r = render("ebpf");
    let config = own_config(&r, "ebpf");
    let (settings, _) = check_daemonset(&r, &config, "ebpf");
    assert_eq!(settings.mode, ProxyMode::Ebpf);
    assert_eq!(
        settings.cgroup_path.as_deref(),
        Some(Path::new("/run/switchyard/cgroup"))
    );
    let spec = pod_spec(&r.daemonset);
    let proxy = container(&spec.containers, "switchyard");
    let mounts = proxy.volume_mounts.as_deref().unwrap_or_default();
    let mount = |name: &str| {
        mounts
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no mount {name}"))
    };
    let bpffs = mount("bpffs");
    assert!(settings.bpffs_path.starts_with(&bpffs.mount_path));
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("HostToContainer"));
    assert_eq!(
        Some(Path::new(&mount("cgroup").mount_path)),
        settings.cgroup_path.as_deref()
    );
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let mount_bpffs = container(init, "mount-bpffs");
    let propagation = mount_bpffs
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "bpffs")
        .and_then(|m| m.mount_propagation.clone());
    assert_eq!(propagation.as_deref(), Some("Bidirectional"));
    let volume = |name: &str| {
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    assert_eq!(volume("bpffs").as_deref(), Some("/sys/fs/bpf"));
    assert_eq!(volume("cgroup").as_deref(), Some("/sys/fs/cgroup"));
}

#[test]
fn migration_overlay_reads_kubeadms_config_map_and_cleans_up_kube_proxy() {
    let r = render("migrate-from-kube-proxy");
    assert!(
        r.config_maps.is_empty(),
        "kubeadm's kube-proxy ConfigMap replaces Switchyard's own"
    );
    // What kubeadm writes into its `kube-proxy` ConfigMap.
    let kubeadm = include_str!("fixtures/kubeadm-kube-proxy-config.conf");
    let (settings, _) = check_daemonset(&r, kubeadm, "migrate-from-kube-proxy");
    assert_eq!(settings.mode, ProxyMode::Iptables);
    assert!(settings.cleanup_kube_proxy, "--cleanup-kube-proxy is set");
    let affinity = pod_spec(&r.daemonset)
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("node affinity");
    let keys: Vec<&str> = affinity
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(keys, ["proxy.switchyard.io/enabled"]);
}
