//! The `--manifests DIR` source: every YAML file under a directory, re-read on change.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::manifest_parse::{parse_manifest, ManifestObject};
use super::{Snapshot, SourceError};
use crate::model::ClusterObjects;

/// Quiet time after a file event before re-reading, so an editor's burst of writes is read once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Safety-net rescan in case an event was missed (e.g. a directory swapped under a watch).
const RESCAN: Duration = Duration::from_secs(10);

/// The directory's files and the last good parse of each.
pub struct ManifestDir {
    root: PathBuf,
    last_good: BTreeMap<PathBuf, Vec<ManifestObject>>,
}

impl ManifestDir {
    /// A source over `root`; nothing is read until [`ManifestDir::load`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            last_good: BTreeMap::new(),
        }
    }

    /// Reads every `*.yaml`/`*.yml` file. A file with a YAML syntax error keeps its previous
    /// objects (a half-saved edit must not delete services); a bad document is skipped.
    pub fn load(&mut self) -> Result<Snapshot, SourceError> {
        let mut files = Vec::new();
        list_yaml_files(&self.root, &mut files).map_err(|source| SourceError::ReadDir {
            path: self.root.clone(),
            source,
        })?;
        files.sort();
        let mut warnings = Vec::new();
        let mut next = BTreeMap::new();
        for path in files {
            let shown = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    warnings.push(format!("{shown}: cannot read: {e}"));
                    continue;
                }
            };
            match parse_manifest(&shown, &text) {
                Ok(parsed) => {
                    warnings.extend(parsed.warnings);
                    next.insert(path, parsed.objects);
                }
                Err(e) => {
                    let kept = self.last_good.remove(&path);
                    let what = if kept.is_some() {
                        "keeping its previous contents"
                    } else {
                        "skipping it"
                    };
                    warnings.push(format!("{e}; {what}"));
                    if let Some(objects) = kept {
                        next.insert(path, objects);
                    }
                }
            }
        }
        self.last_good = next;
        let mut objects = ClusterObjects::default();
        for object in self.last_good.values().flatten() {
            // Later files win on duplicate names, like a later `kubectl apply`.
            match object.clone() {
                ManifestObject::Service(s) => drop(objects.insert_service(*s)),
                ManifestObject::EndpointSlice(s) => drop(objects.insert_slice(*s)),
                ManifestObject::Endpoints(e) => drop(objects.insert_endpoints(*e)),
                ManifestObject::Node(n) => drop(objects.insert_node(*n)),
            }
        }
        Ok(Snapshot {
            objects: Arc::new(objects),
            warnings,
            ..Snapshot::default()
        })
    }

    /// Loads once, publishes, then re-publishes after every change under the directory until
    /// the receiver side is gone. Returns the receiver of snapshots.
    pub fn watch(mut self) -> Result<watch::Receiver<Snapshot>, SourceError> {
        let first = self.load()?;
        let (tx, rx) = watch::channel(first);
        let (event_tx, mut event_rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Any event (or watcher error) only means "look again".
                let _ = event_tx.send(event.is_ok());
            })
            .map_err(|e| SourceError::Watch(e.to_string()))?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|e| SourceError::Watch(e.to_string()))?;
        tokio::spawn(async move {
            let _watcher = watcher; // dropping it stops the events
            loop {
                tokio::select! {
                    got = event_rx.recv() => {
                        if got.is_none() { return; }
                        // Debounce: wait until the burst of events is over.
                        while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, event_rx.recv()).await {}
                    }
                    _ = tokio::time::sleep(RESCAN) => {}
                }
                match self.load() {
                    Ok(snapshot) => {
                        if tx.send(snapshot).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "manifest directory unreadable; keeping the last objects")
                    }
                }
            }
        });
        Ok(rx)
    }
}

fn list_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if path.is_dir() {
            if !hidden {
                list_yaml_files(&path, out)?;
            }
        } else if !hidden
            && matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml") | Some("yml")
            )
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                       spec: {clusterIP: 198.18.128.10, ports: [{port: 80}]}\n";

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("swy-manifests-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        dir
    }

    #[test]
    fn a_syntax_error_keeps_the_files_previous_objects() {
        let dir = tempdir("keep");
        std::fs::write(dir.join("sub/web.yaml"), SVC).unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml: [").unwrap();
        let mut source = ManifestDir::new(&dir);
        let first = source.load().unwrap();
        assert_eq!(first.objects.services.len(), 1);
        assert!(first.warnings.is_empty(), "{:?}", first.warnings);

        std::fs::write(dir.join("sub/web.yaml"), "kind: [unclosed").unwrap();
        let second = source.load().unwrap();
        assert_eq!(second.objects.services.len(), 1, "previous contents kept");
        assert!(second.warnings[0].contains("keeping its previous contents"));

        std::fs::remove_file(dir.join("sub/web.yaml")).unwrap();
        assert_eq!(source.load().unwrap().objects.services.len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn edits_are_published() {
        let dir = tempdir("watch");
        let mut rx = ManifestDir::new(&dir).watch().unwrap();
        assert_eq!(rx.borrow().objects.services.len(), 0);
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .expect("a snapshot within 5 s")
                .unwrap();
            if rx.borrow().objects.services.len() == 1 {
                break;
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
