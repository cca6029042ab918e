//! The `--manifests DIR` source: every YAML file under a directory, re-read on change.
//!
//! A scan walks the tree and stats every entry, but reads only the files whose stamp
//! (device, inode, size, mtime, ctime) changed since the last scan: a 16 MB tree that nobody
//! touches costs one `stat` per entry per scan, not a re-parse. A bad file (unreadable,
//! too large, not UTF-8, not YAML, nested too deep) keeps the objects of its last good read.
//! The watcher that triggers scans lives in `manifest_watch.rs`.
use std::collections::BTreeMap;
use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::manifest_parse::{escape_controls, parse_manifest, ManifestObject, MAX_FILE_SIZE};
use super::{Snapshot, SourceError};
use crate::model::ClusterObjects;

/// A file changed this recently may change again within the same timestamp tick without its
/// stamp changing (coarse or 2-second file system clocks), so its stamp is not trusted yet and
/// the next scan reads it again. Git's index handles "racily clean" files the same way.
const RACY_WINDOW: Duration = Duration::from_secs(3);

/// Most threads a scan parses files on.
const PARSE_THREADS: usize = 4;

/// The directory's files and the last good parse of each.
pub struct ManifestDir {
    pub(super) root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Problems of the walk itself (loops, unreadable directories, FIFOs), by path.
    walk_warnings: Vec<(PathBuf, String)>,
    /// The objects of all files, built when something changed.
    objects: Option<Arc<ClusterObjects>>,
    max_file_size: u64,
    racy_window: Duration,
    files_read: Arc<AtomicU64>,
}

/// What is known of one file.
#[derive(Clone, Debug)]
struct FileState {
    stamp: Stamp,
    /// False while the stamp cannot vouch for the contents (see [`RACY_WINDOW`]), or after an
    /// I/O error that may be passing: the next scan reads the file again.
    trusted: bool,
    /// The last good parse; `None` if the file never parsed.
    objects: Option<Vec<ManifestObject>>,
    /// Problems from the last read, repeated in every snapshot until the file changes.
    warnings: Vec<String>,
}

/// Identity and version of a file's contents, from `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file changed (its inode did: ctime covers writes, renames onto it and
    /// chmod) within `window` of `now`, or claims a time in the future.
    fn is_racy(&self, now: SystemTime, window: Duration) -> bool {
        let (secs, nanos) = self.ctime;
        let changed = u64::try_from(secs).ok().and_then(|secs| {
            let nanos = u32::try_from(nanos).unwrap_or(0);
            SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        });
        match changed.map(|changed| now.duration_since(changed)) {
            Some(Ok(age)) => age < window,
            Some(Err(_)) => true, // in the future: the clock moved, trust nothing
            None => false,        // before 1970: old
        }
    }
}

/// Why a file could not be read. Each one keeps the file's previous contents.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("cannot open: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("not valid UTF-8: {0}")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

/// One scan's view of the tree.
#[derive(Default)]
struct Listing {
    /// Regular `*.yaml`/`*.yml` files and their `stat`.
    files: Vec<(PathBuf, Metadata)>,
    warnings: Vec<(PathBuf, String)>,
    /// Paths that could not be looked at: files under them keep their previous contents.
    unreadable: Vec<PathBuf>,
}

impl ManifestDir {
    /// A source over `root`; nothing is read until [`ManifestDir::load`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
            walk_warnings: Vec::new(),
            objects: None,
            max_file_size: MAX_FILE_SIZE,
            racy_window: RACY_WINDOW,
            files_read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reads every `*.yaml`/`*.yml` file that changed since the last call. A file that cannot
    /// be used (read error, over [`MAX_FILE_SIZE`], not UTF-8, YAML syntax error, nesting
    /// too deep) keeps its previous objects, so a half-saved edit must not delete services;
    /// a bad document is skipped. Blocks on file I/O: call it off the async workers.
    pub fn load(&mut self) -> Result<Snapshot, SourceError> {
        self.scan()?;
        Ok(self.snapshot())
    }

    /// How many files have been read (opened to be parsed) so far. Unchanged files are not.
    pub fn files_read(&self) -> u64 {
        self.files_read.load(Ordering::Relaxed)
    }

    /// Like [`ManifestDir::load`], but `None` when neither the objects nor the warnings
    /// changed, so that nothing needs publishing.
    pub(super) fn refresh(&mut self) -> Result<Option<Snapshot>, SourceError> {
        Ok(self.scan()?.then(|| self.snapshot()))
    }

    /// The current objects and warnings.
    fn snapshot(&mut self) -> Snapshot {
        let objects = self
            .objects
            .get_or_insert_with(|| {
                let mut objects = ClusterObjects::default();
                for object in self
                    .files
                    .values()
                    .filter_map(|f| f.objects.as_ref())
                    .flatten()
                {
                    // Later files win on duplicate names, like a later `kubectl apply`.
                    match object.clone() {
                        ManifestObject::Service(s) => drop(objects.insert_service_arc(s)),
                        ManifestObject::EndpointSlice(s) => drop(objects.insert_slice_arc(s)),
                        ManifestObject::Endpoints(e) => drop(objects.insert_endpoints_arc(e)),
                        ManifestObject::Node(n) => drop(objects.insert_node_arc(n)),
                    }
                }
                Arc::new(objects)
            })
            .clone();
        let mut warnings: Vec<(&Path, &String)> = self
            .files
            .iter()
            .flat_map(|(path, f)| f.warnings.iter().map(move |w| (path.as_path(), w)))
            .chain(self.walk_warnings.iter().map(|(p, w)| (p.as_path(), w)))
            .collect();
        warnings.sort_by_key(|(path, _)| *path);
        Snapshot {
            objects,
            warnings: warnings.into_iter().map(|(_, w)| w.clone()).collect(),
            ..Snapshot::default()
        }
    }

    /// Brings the file states up to date; true if objects or warnings changed.
    fn scan(&mut self) -> Result<bool, SourceError> {
        let listing = self.list()?;
        let now = SystemTime::now();
        let mut previous = std::mem::take(&mut self.files);
        let mut changed = false;
        let mut to_read = Vec::new();
        for (path, meta) in listing.files {
            let prev = previous.remove(&path);
            let stamp = Stamp::of(&meta);
            match prev {
                Some(prev) if prev.trusted && prev.stamp == stamp => {
                    self.files.insert(path, prev);
                }
                prev => to_read.push((path, stamp, prev)),
            }
        }
        for (path, prev, state) in self.read_all(to_read, now) {
            changed |= prev
                .as_ref()
                .is_none_or(|p| p.objects != state.objects || p.warnings != state.warnings);
            self.files.insert(path, state);
        }
        for (path, state) in previous {
            if listing.unreadable.iter().any(|dir| path.starts_with(dir)) {
                self.files.insert(path, state);
            } else {
                changed = true; // deleted
            }
        }
        if listing.warnings != self.walk_warnings {
            self.walk_warnings = listing.warnings;
            changed = true;
        }
        if changed {
            self.objects = None;
        }
        Ok(changed)
    }

    /// Walks the tree. `walkdir` follows symlinks and reports a link back to an ancestor as
    /// a loop instead of descending forever.
    fn list(&self) -> Result<Listing, SourceError> {
        let root_error = |source| SourceError::ReadDir {
            path: self.root.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.root).map_err(root_error)?;
        if !meta.is_dir() {
            return Err(root_error(std::io::Error::from(
                std::io::ErrorKind::NotADirectory,
            )));
        }
        let mut listing = Listing::default();
        let walk = walkdir::WalkDir::new(&self.root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
        for entry in walk {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let Some(path) = e.path().map(Path::to_path_buf) else {
                        continue; // walkdir names a path for every error it yields
                    };
                    let shown = shown(&path);
                    if let Some(ancestor) = e.loop_ancestor() {
                        let warning = format!(
                            "{shown}: symlink loop (leads back to {}); skipping it",
                            self::shown(ancestor)
                        );
                        listing.warnings.push((path, warning));
                        continue;
                    }
                    let io = e
                        .io_error()
                        .map_or_else(|| e.to_string(), ToString::to_string);
                    if path == self.root {
                        return Err(root_error(
                            e.into_io_error()
                                .unwrap_or_else(|| std::io::Error::other(io)),
                        ));
                    }
                    // A dangling symlink that is not named like a manifest is not ours.
                    if is_yaml(&path) || std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                        let warning = format!(
                            "{shown}: cannot read: {}; keeping its previous contents",
                            escape_controls(&io)
                        );
                        listing.warnings.push((path.clone(), warning));
                        listing.unreadable.push(path);
                    }
                    continue;
                }
            };
            let file_type = entry.file_type();
            if file_type.is_dir() || !is_yaml(entry.path()) {
                continue;
            }
            let path = entry.path().to_path_buf();
            if !file_type.is_file() {
                // Opening a FIFO would block until a writer comes; a device may never end.
                let warning = format!(
                    "{}: is {}, not a regular file; skipping it",
                    shown(&path),
                    describe(file_type)
                );
                listing.warnings.push((path, warning));
                continue;
            }
            match entry.metadata() {
                Ok(meta) => listing.files.push((path, meta)),
                Err(e) => {
                    let warning = format!(
                        "{}: cannot read: {}; keeping its previous contents",
                        shown(&path),
                        escape_controls(&e.to_string())
                    );
                    listing.warnings.push((path.clone(), warning));
                    listing.unreadable.push(path);
                }
            }
        }
        Ok(listing)
    }

    /// Reads and parses one file whose stamp changed.
    /// Reads and parses `files` on up to [`PARSE_THREADS`] threads: parsing dominates a
    /// start on a large directory (10,000 services: about a second on one core), and nothing
    /// else runs yet. Results come back in input order.
    fn read_all(
        &self,
        files: Vec<(PathBuf, Stamp, Option<FileState>)>,
        now: SystemTime,
    ) -> Vec<(PathBuf, Option<FileState>, FileState)> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, PARSE_THREADS);
        let per_thread = files.len().div_ceil(threads).max(1);
        let states: Vec<FileState> = if files.len() <= 1 || threads == 1 {
            files
                .iter()
                .map(|(path, stamp, prev)| self.read(path, *stamp, now, prev.as_ref()))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let workers: Vec<_> = files
                    .chunks(per_thread)
                    .map(|chunk| {
                        scope.spawn(move || {
                            chunk
                                .iter()
                                .map(|(path, stamp, prev)| {
                                    self.read(path, *stamp, now, prev.as_ref())
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| {
                        w.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            })
        };
        files
            .into_iter()
            .zip(states)
            .map(|((path, _, prev), state)| (path, prev, state))
            .collect()
    }

    fn read(
        &self,
        path: &Path,
        stamp: Stamp,
        now: SystemTime,
        prev: Option<&FileState>,
    ) -> FileState {
        self.files_read.fetch_add(1, Ordering::Relaxed);
        let shown = shown(path);
        let (text, stamp) = match read_file(path, self.max_file_size) {
            Ok((text, meta)) => (text, Stamp::of(&meta)),
            Err(e) => {
                // An I/O error may pass (EIO, ENOMEM, a file replaced under us): try again
                // at the next scan. The others last until the file changes.
                let passing = matches!(e, ReadError::Open(_) | ReadError::Read(_));
                return kept(prev, stamp, !passing, format!("{shown}: {e}"));
            }
        };
        let trusted = !stamp.is_racy(now, self.racy_window);
        match parse_manifest(&shown, &text) {
            Ok(mut parsed) => {
                if let Some(old) = prev.and_then(|p| p.objects.as_ref()) {
                    keep_unchanged(old, &mut parsed.objects);
                }
                FileState {
                    stamp,
                    trusted,
                    objects: Some(parsed.objects),
                    warnings: parsed.warnings,
                }
            }
            Err(e) => kept(prev, stamp, trusted, e.to_string()),
        }
    }

    #[cfg(test)]
    pub(super) fn with_limits(mut self, max_file_size: u64, racy_window: Duration) -> Self {
        self.max_file_size = max_file_size;
        self.racy_window = racy_window;
        self
    }

    #[cfg(test)]
    pub(super) fn read_counter(&self) -> Arc<AtomicU64> {
        self.files_read.clone()
    }
}

/// The state of a file that could not be used: its previous objects, and a warning.
/// Puts the previous reading's object back wherever the new one equals it, document by
/// document: the model recognises unchanged objects by pointer, so re-reading a file (an
/// edit of one object in it, or a read while its stamp cannot be trusted yet) recomputes
/// only the objects that really changed.
fn keep_unchanged(old: &[ManifestObject], new: &mut [ManifestObject]) {
    for (old, new) in old.iter().zip(new.iter_mut()) {
        if old == new {
            *new = old.clone();
        }
    }
}

fn kept(prev: Option<&FileState>, stamp: Stamp, trusted: bool, problem: String) -> FileState {
    let objects = prev.and_then(|p| p.objects.clone());
    let what = if objects.is_some() {
        "keeping its previous contents"
    } else {
        "skipping it"
    };
    FileState {
        stamp,
        trusted,
        objects,
        warnings: vec![format!("{problem}; {what}")],
    }
}

/// Opens without blocking (O_NONBLOCK: a FIFO swapped in after the walk's `stat` must not
/// wedge the scan), checks the opened file is regular, and reads at most `limit` bytes.
/// Returns the text and the `fstat` of what was read.
fn read_file(path: &Path, limit: u64) -> Result<(String, Metadata), ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadError::Open)?;
    let meta = file.metadata().map_err(ReadError::Read)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(describe(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let bytes = read_limited(file, limit, meta.len())?;
    let text = String::from_utf8(bytes).map_err(ReadError::NotUtf8)?;
    Ok((text, meta))
}

/// Reads to the end, but never more than `limit` bytes into memory: the file may have grown
/// since its `stat`, or be endless.
fn read_limited(file: File, limit: u64, expected: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::with_capacity(usize::try_from(expected.min(limit)).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Read)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

fn describe(file_type: FileType) -> &'static str {
    if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// A path as warnings show it: control characters in file names escaped.
pub(super) fn shown(path: &Path) -> String {
    escape_controls(&path.display().to_string()).into_owned()
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const SVC: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                                  spec: {clusterIP: 198.18.128.10, ports: [{port: 80}]}\n";

    /// A fresh directory (with a `sub/`) under the temp dir; `tag` keeps tests apart.
    pub(crate) fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("swy-manifests-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        dir
    }

    fn svc(name: &str) -> String {
        SVC.replace("name: web", &format!("name: {name}"))
    }

    /// Loads `dir` on a thread of its own and waits at most 30 s for it, so that a load that
    /// hangs (in open(), or walking a loop) fails the test instead of wedging it.
    fn load_within_30s(dir: &Path) -> Snapshot {
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.to_owned();
        std::thread::spawn(move || tx.send(ManifestDir::new(root).load()));
        rx.recv_timeout(Duration::from_secs(30))
            .expect("load returns within 30 s")
            .expect("load succeeds")
    }

    /// Sets a file's mtime an hour back (its ctime becomes now: nothing can backdate that).
    fn backdate(path: &Path, hours: u64) {
        let file = File::options().write(true).open(path).unwrap();
        let then = SystemTime::now() - Duration::from_secs(3600 * hours);
        file.set_modified(then).unwrap();
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

    #[test]
    fn unchanged_files_are_not_read_again_and_nothing_is_republished() {
        let dir = tempdir("stamps");
        for name in ["a", "b", "c"] {
            std::fs::write(dir.join(format!("{name}.yaml")), svc(name)).unwrap();
        }
        // A zero racy window: the files were written just now, and a stamp that is only
        // trusted after 3 s would make this test wait.
        let mut source = ManifestDir::new(&dir).with_limits(MAX_FILE_SIZE, Duration::ZERO);
        assert_eq!(source.load().unwrap().objects.services.len(), 3);
        assert_eq!(source.files_read(), 3);

        // Reading the files changes nothing a scan looks at.
        for name in ["a", "b", "c"] {
            std::fs::read(dir.join(format!("{name}.yaml"))).unwrap();
        }
        assert!(source.refresh().unwrap().is_none(), "nothing changed");
        assert_eq!(source.files_read(), 3, "no file read again");

        // Touching one file re-reads that file only; its objects are the same: no publish.
        backdate(&dir.join("b.yaml"), 1);
        assert!(source.refresh().unwrap().is_none());
        assert_eq!(source.files_read(), 4);

        // An edit is read and published.
        std::fs::write(dir.join("c.yaml"), svc("c2")).unwrap();
        let snapshot = source.refresh().unwrap().expect("c.yaml changed");
        assert_eq!(source.files_read(), 5);
        assert_eq!(snapshot.objects.services.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reread_file_keeps_the_shared_objects_it_still_holds() {
        let dir = tempdir("shared");
        let path = dir.join("all.yaml");
        let two = |second: &str| format!("{}---\n{}", svc("a"), svc(second));
        std::fs::write(&path, two("b")).unwrap();
        let mut source = ManifestDir::new(&dir).with_limits(MAX_FILE_SIZE, Duration::ZERO);
        let first = source.load().unwrap();
        let service = |snapshot: &Snapshot, name: &str| {
            snapshot.objects.services[&crate::model::ObjectKey::new("shop", name)].clone()
        };
        // The second document is edited: the first keeps its Arc, so the model sees one
        // changed object, not two.
        std::fs::write(&path, two("c")).unwrap();
        let second = source.refresh().unwrap().expect("the file changed");
        assert!(Arc::ptr_eq(&service(&first, "a"), &service(&second, "a")));
        assert_eq!(second.objects.services.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_recently_changed_file_is_read_again_until_its_stamp_can_be_trusted() {
        let dir = tempdir("racy");
        std::fs::write(dir.join("a.yaml"), SVC).unwrap();
        let mut source =
            ManifestDir::new(&dir).with_limits(MAX_FILE_SIZE, Duration::from_secs(3600));
        source.load().unwrap();
        source.load().unwrap();
        assert_eq!(
            source.files_read(),
            2,
            "a file changed within the window is re-read"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_or_socket_named_yaml_is_skipped_with_a_warning() {
        let dir = tempdir("fifo");
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        let fifo = dir.join("x.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.join("sub/s.yml")).unwrap();
        let snapshot = load_within_30s(&dir);
        assert_eq!(snapshot.objects.services.len(), 1);
        let warnings = snapshot.warnings.join("\n");
        assert!(
            warnings.contains("x.yaml: is a FIFO, not a regular file"),
            "{warnings}"
        );
        assert!(
            warnings.contains("s.yml: is a socket, not a regular file"),
            "{warnings}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reading_is_capped_even_for_an_endless_file() {
        let zero = File::open("/dev/zero").unwrap();
        let err = read_limited(zero, 1 << 20, 0).unwrap_err();
        assert!(
            matches!(err, ReadError::TooLarge { limit: 1_048_576 }),
            "{err}"
        );

        let dir = tempdir("cap");
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
        let mut source = ManifestDir::new(&dir).with_limits(SVC.len() as u64 + 10, RACY_WINDOW);
        assert_eq!(source.load().unwrap().objects.services.len(), 1);
        std::fs::write(
            dir.join("web.yaml"),
            format!("{SVC}# {}\n", "x".repeat(100)),
        )
        .unwrap();
        let snapshot = source.load().unwrap();
        assert_eq!(snapshot.objects.services.len(), 1, "previous contents kept");
        let warnings = snapshot.warnings.join("\n");
        assert!(
            warnings.contains(&format!(
                "{}: larger than the {}-byte limit; keeping its previous contents",
                dir.join("web.yaml").display(),
                SVC.len() + 10
            )),
            "{warnings}"
        );
        assert!(
            warnings.contains("zero.yaml: is a character device"),
            "{warnings}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlink_loops_are_named_and_the_rest_still_loads() {
        let dir = tempdir("loop");
        std::fs::write(dir.join("sub/web.yaml"), SVC).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("again")).unwrap();
        std::os::unix::fs::symlink("..", dir.join("sub/up")).unwrap();
        let snapshot = load_within_30s(&dir);
        assert_eq!(snapshot.objects.services.len(), 1);
        let warnings = snapshot.warnings.join("\n");
        for entry in ["again", "sub/up"] {
            let expected = format!("{}: symlink loop", dir.join(entry).display());
            assert!(warnings.contains(&expected), "{expected} in {warnings}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_utf8_or_unreadable_keeps_its_previous_contents() {
        let dir = tempdir("utf8");
        let path = dir.join("web.yaml");
        std::fs::write(&path, SVC).unwrap();
        let mut source = ManifestDir::new(&dir);
        assert_eq!(source.load().unwrap().objects.services.len(), 1);

        std::fs::write(&path, b"kind: Service\nname: \xff\xfe\n").unwrap();
        let snapshot = source.load().unwrap();
        assert_eq!(snapshot.objects.services.len(), 1, "previous contents kept");
        assert_eq!(snapshot.warnings.len(), 1, "{:?}", snapshot.warnings);
        let warning = &snapshot.warnings[0];
        assert!(
            warning.starts_with(&format!("{}: not valid UTF-8", path.display())),
            "{warning}"
        );
        assert!(
            warning.ends_with("; keeping its previous contents"),
            "{warning}"
        );

        // An unreadable file (checked only where the mode bits bind: root reads anything).
        std::fs::write(&path, SVC).unwrap();
        assert!(source.load().unwrap().warnings.is_empty());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(&path).is_err() {
            let snapshot = source.load().unwrap();
            assert_eq!(snapshot.objects.services.len(), 1, "previous contents kept");
            assert!(
                snapshot.warnings[0].contains("cannot open"),
                "{:?}",
                snapshot.warnings
            );
            assert!(snapshot.warnings[0].ends_with("; keeping its previous contents"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_name_with_a_newline_is_escaped_in_warnings() {
        let dir = tempdir("names");
        std::fs::write(dir.join("evil\nWARN forged.yaml"), "kind: [").unwrap();
        let snapshot = ManifestDir::new(&dir).load().unwrap();
        assert_eq!(snapshot.warnings.len(), 1, "{:?}", snapshot.warnings);
        assert!(snapshot.warnings[0].contains("evil\\nWARN forged.yaml: YAML syntax error"));
        assert!(!snapshot.warnings[0].contains('\n'));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
