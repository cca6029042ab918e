//! Starting processes inside testbed namespaces and cgroups, and the guard that
//! reaps them.
//!
//! Children join their namespace with `setns` in `pre_exec` on a descriptor opened
//! before the fork, rather than through `ip netns exec`, because the latter remounts
//! `/sys` in a private mount namespace and would hide the testbed's cgroup paths from
//! the child (the proxy needs them to attach its programs).

use std::ffi::OsStr;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::netns::open_netns;

/// Where a process runs: a node's namespace, a pod's namespace, or the external client.
///
/// Indices are 1-based, matching the names (`Place::Pod { node: 2, pod: 1 }` is
/// `node2-pod1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// The node's own namespace (host network); the process joins the node's cgroup.
    Node(usize),
    /// A pod's namespace; the process joins the pod's node's cgroup.
    Pod {
        /// 1-based node index.
        node: usize,
        /// 1-based pod index within the node.
        pod: usize,
    },
    /// The external client's namespace; the process joins the testbed's `client`
    /// cgroup, which no proxy program is attached to.
    Client,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Node(n) => write!(f, "node{n}"),
            Place::Pod { node, pod } => write!(f, "node{node}-pod{pod}"),
            Place::Client => f.write_str("client"),
        }
    }
}

/// What happens to a child's stdout and stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// Collected in memory by background threads (never blocks the child); read with
    /// [`ChildGuard::stdout`], [`ChildGuard::wait_for_stdout_line`] etc.
    #[default]
    Capture,
    /// Shared with the test process (shows up live in the terminal).
    Inherit,
    /// Discarded.
    Null,
}

/// A resolved place: the files a child needs to enter it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Human-readable place, for errors.
    pub(crate) label: String,
    /// `/var/run/netns/NAME`.
    pub(crate) netns_path: PathBuf,
    /// The cgroup directory the child joins.
    pub(crate) cgroup: PathBuf,
}

/// Starts `cmd` inside `target`. Stdin is always `/dev/null`.
pub(crate) fn spawn(target: &Target, mut cmd: Command, output: OutputMode) -> Result<ChildGuard> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    // Open both files before forking: the child may only do async-signal-safe work.
    let ns = open_netns(&target.netns_path)?;
    let procs_path = target.cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|source| Error::Io {
            action: "opening",
            path: procs_path.clone(),
            source,
        })?;
    let ns_fd = ns.as_raw_fd();
    let procs_fd = procs.as_raw_fd();
    // SAFETY: the closure only calls write(2) and setns(2), both async-signal-safe,
    // on descriptors that stay open in the parent until spawn() has returned.
    unsafe {
        cmd.pre_exec(move || {
            // "0" means "the writing process" in cgroup.procs.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null());
    match output {
        OutputMode::Capture => cmd.stdout(Stdio::piped()).stderr(Stdio::piped()),
        OutputMode::Inherit => cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit()),
        OutputMode::Null => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
    };
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        place: target.label.clone(),
        source,
    })?;
    drop(ns);
    drop(procs);
    let stdout = child.stdout.take().map(Captured::start);
    let stderr = child.stderr.take().map(Captured::start);
    Ok(ChildGuard {
        child,
        label: format!("{program} in {}", target.label),
        stdout,
        stderr,
        status: None,
    })
}

/// Output collected from one pipe by a background thread.
#[derive(Debug, Default)]
struct Captured {
    state: Mutex<CaptureState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct CaptureState {
    data: Vec<u8>,
    closed: bool,
}

impl Captured {
    fn start(mut pipe: impl Read + Send + 'static) -> Arc<Self> {
        let captured = Arc::new(Captured::default());
        let writer = Arc::clone(&captured);
        // Detached on purpose: it ends at EOF, i.e. when the child (and anything that
        // inherited the pipe) is gone, which teardown guarantees via the cgroup.
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let mut state = writer.lock();
                state.data.extend_from_slice(&buf[..n]);
                writer.changed.notify_all();
            }
            writer.lock().closed = true;
            writer.changed.notify_all();
        });
        captured
    }

    fn lock(&self) -> MutexGuard<'_, CaptureState> {
        // A poisoned lock only means a reader panicked; the bytes are still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().data).into_owned()
    }

    /// Waits until the pipe is closed or `deadline` passes; returns whether closed.
    fn wait_closed(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Output of a finished child.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout (empty unless [`OutputMode::Capture`]).
    pub stdout: String,
    /// Captured stderr (empty unless [`OutputMode::Capture`]).
    pub stderr: String,
}

/// A child process started in a testbed place; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    label: String,
    stdout: Option<Arc<Captured>>,
    stderr: Option<Arc<Captured>>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// "PROGRAM in PLACE", for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends `signal` to the child. A no-op once the child has been reaped, so a
    /// recycled pid is never signalled.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        match kill(pid, signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(Error::Sys {
                action: format!("sending {signal} to {}", self.label),
                source,
            }),
        }
    }

    /// Sends SIGTERM (graceful stop).
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) -> Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// Returns the exit status if the child has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let status = self.child.try_wait().map_err(|source| Error::Spawn {
            program: "waitpid".into(),
            place: self.label.clone(),
            source,
        })?;
        self.status = status;
        Ok(status)
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        // Polling keeps this free of SIGCHLD handling; the back-off bounds the
        // added latency to a few milliseconds for short-lived probes.
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Waits (without limit) for the child to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().map_err(|source| Error::Spawn {
            program: "waitpid".into(),
            place: self.label.clone(),
            source,
        })?;
        self.status = Some(status);
        Ok(status)
    }

    /// Waits up to `timeout` for the child to exit and its output pipes to close, then
    /// returns everything it printed. On timeout the child is killed and an error
    /// containing its partial output is returned.
    pub fn wait_for_output(&mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let Some(status) = self.wait_timeout(timeout)? else {
            self.kill()?;
            self.wait()?;
            return Err(Error::Timeout {
                what: format!(
                    "{} to exit (stdout so far: {:?}, stderr: {:?})",
                    self.label,
                    self.stdout(),
                    self.stderr()
                ),
                after_ms: timeout.as_millis(),
            });
        };
        // Grandchildren could keep the pipes open; don't wait past the deadline
        // (plus a little grace for the reader threads to drain).
        let grace = deadline.max(Instant::now()) + Duration::from_millis(200);
        for pipe in [&self.stdout, &self.stderr].into_iter().flatten() {
            pipe.wait_closed(grace);
        }
        Ok(Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }

    /// Everything captured on stdout so far (empty unless [`OutputMode::Capture`]).
    pub fn stdout(&self) -> String {
        self.stdout.as_ref().map(|c| c.text()).unwrap_or_default()
    }

    /// Everything captured on stderr so far (empty unless [`OutputMode::Capture`]).
    pub fn stderr(&self) -> String {
        self.stderr.as_ref().map(|c| c.text()).unwrap_or_default()
    }

    /// Waits until a complete stdout line satisfies `pred` and returns it.
    ///
    /// Fails early if stdout closes (the child exited) and on timeout; both errors
    /// include the child's stderr. Requires [`OutputMode::Capture`].
    pub fn wait_for_stdout_line(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let what = format!("a matching stdout line from {}", self.label);
        let Some(captured) = self.stdout.clone() else {
            return Err(Error::Protocol(format!("{what}: stdout is not captured")));
        };
        let deadline = Instant::now() + timeout;
        let mut state = captured.lock();
        loop {
            let text = String::from_utf8_lossy(&state.data);
            // Only complete lines count: a partially written line may still change.
            let complete = match text.rfind('\n') {
                Some(end) => &text[..end],
                None => "",
            };
            if let Some(line) = complete.lines().find(|l| pred(l)) {
                return Ok(line.to_owned());
            }
            if state.closed {
                drop(state);
                let status = match self.wait_timeout(Duration::from_secs(1)) {
                    Ok(Some(s)) => s.to_string(),
                    _ => "still running, stdout closed".into(),
                };
                return Err(Error::ChildExited {
                    what,
                    status,
                    stderr: self.stderr(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(Error::Timeout {
                    what: format!("{what} (stderr: {:?})", self.stderr()),
                    after_ms: timeout.as_millis(),
                });
            }
            state = captured
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Errors are ignored: the child may already be gone, and the testbed's
            // cgroup teardown is the backstop anyway.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Builds a `Command` for `program args...`.
pub(crate) fn command<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}
