//! Writing and checking an OCI image layout (image-spec v1.1): uncompressed tar layers,
//! the config, the manifest and `index.json`, every blob named by its SHA-256.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// `sha256:<hex>` and the size of a file.
pub fn digest_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file = BufReader::new(File::open(path).with_context(|| path.display().to_string())?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((format!("sha256:{}", hex(&hasher.finalize())), size))
}

fn digest_bytes(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the image runs and how it is described.
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
    /// `created`, RFC 3339 (fixed for reproducible images).
    pub created: String,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// The tag recorded in `index.json` (`org.opencontainers.image.ref.name`).
    pub tag: String,
}

/// Writes an OCI image layout into `dir` (which must be empty or absent) from uncompressed tar
/// `layers`, bottom first. Returns the manifest's digest.
pub fn write_layout(
    dir: &Path,
    layers: &[PathBuf],
    config: &ImageConfig,
) -> anyhow::Result<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let (digest, size) = digest_file(layer)?;
        let target = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::copy(layer, &target)
            .with_context(|| format!("copying {} into the layout", layer.display()))?;
        diff_ids.push(digest.clone());
        descriptors.push(json!({"mediaType": LAYER, "digest": digest, "size": size}));
    }
    let labels: serde_json::Map<String, Value> = config
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let image_config = json!({
        "created": config.created,
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Env": config.env,
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_desc = write_blob(&blobs, CONFIG, &image_config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc,
        "layers": descriptors,
    });
    let mut manifest_desc = write_blob(&blobs, MANIFEST, &manifest)?;
    manifest_desc["annotations"] = json!({"org.opencontainers.image.ref.name": config.tag});
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [manifest_desc],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    std::fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )?;
    Ok(manifest_desc["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

fn write_blob(blobs: &Path, media_type: &str, value: &Value) -> anyhow::Result<Value> {
    let bytes = serde_json::to_vec(value)?;
    let digest = digest_bytes(&bytes);
    std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), &bytes)?;
    Ok(json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}))
}

/// The OCI name of this machine's architecture.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An image layout read back and verified: the layers' blob paths, bottom first, and the
/// config.
pub struct Verified {
    pub layers: Vec<PathBuf>,
    pub config: Value,
}

/// Verifies the layout in `dir`: `oci-layout`, one manifest in `index.json`, and every blob
/// it reaches (config, layers) present with the digest and size its descriptor names; the
/// config's `diff_ids` are the layers' digests (uncompressed layers).
pub fn verify_layout(dir: &Path) -> anyhow::Result<Verified> {
    let layout: Value = read_json(&dir.join("oci-layout"))?;
    ensure!(
        layout["imageLayoutVersion"] == "1.0.0",
        "oci-layout: {layout}"
    );
    let index: Value = read_json(&dir.join("index.json"))?;
    ensure!(index["schemaVersion"] == 2, "index.json: schemaVersion");
    let manifests = index["manifests"]
        .as_array()
        .context("index.json: manifests")?;
    ensure!(manifests.len() == 1, "index.json: one manifest expected");
    let manifest_desc = &manifests[0];
    ensure!(
        manifest_desc["mediaType"] == MANIFEST,
        "index.json: {manifest_desc}"
    );
    let manifest: Value = serde_json::from_slice(&blob(dir, manifest_desc)?)?;
    ensure!(manifest["mediaType"] == MANIFEST, "manifest mediaType");
    ensure!(
        manifest["config"]["mediaType"] == CONFIG,
        "config mediaType"
    );
    let config: Value = serde_json::from_slice(&blob(dir, &manifest["config"])?)?;
    let layers = manifest["layers"].as_array().context("manifest: layers")?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .context("config: rootfs.diff_ids")?;
    ensure!(
        layers.len() == diff_ids.len(),
        "layers and diff_ids differ in number"
    );
    let mut paths = Vec::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        ensure!(layer["mediaType"] == LAYER, "layer mediaType: {layer}");
        let path = blob_path(dir, layer)?;
        let (digest, size) = digest_file(&path)?;
        ensure!(
            Some(digest.as_str()) == layer["digest"].as_str(),
            "layer {}: content has digest {digest}",
            layer["digest"]
        );
        ensure!(
            Some(size) == layer["size"].as_u64(),
            "layer {}: size",
            layer["digest"]
        );
        ensure!(
            diff_id.as_str() == Some(digest.as_str()),
            "diff_id {diff_id} != {digest}"
        );
        paths.push(path);
    }
    Ok(Verified {
        layers: paths,
        config,
    })
}

fn blob_path(dir: &Path, desc: &Value) -> anyhow::Result<PathBuf> {
    let digest = desc["digest"]
        .as_str()
        .context("descriptor without digest")?;
    let Some(hex) = digest.strip_prefix("sha256:") else {
        bail!("{digest}: not a sha256 digest");
    };
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest}: malformed"
    );
    Ok(dir.join("blobs/sha256").join(hex))
}

/// A small blob (manifest, config), its digest and size checked.
fn blob(dir: &Path, desc: &Value) -> anyhow::Result<Vec<u8>> {
    let path = blob_path(dir, desc)?;
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    ensure!(
        Some(digest_bytes(&bytes).as_str()) == desc["digest"].as_str(),
        "blob {}: content does not match its digest",
        desc["digest"]
    );
    ensure!(
        Some(bytes.len() as u64) == desc["size"].as_u64(),
        "blob {}: size",
        desc["digest"]
    );
    Ok(bytes)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    serde_json::from_slice(&bytes).with_context(|| path.display().to_string())
}
