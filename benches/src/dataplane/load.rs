//! The load generator of the dataplane benchmark: `switchyard-bench load ...`, a hidden
//! subcommand the benchmark starts inside the testbed's namespaces (a pod, or the external
//! client), so that its sockets join the place's network namespace and cgroup like a real
//! workload (in ebpf mode the cgroup's socket programs translate a pod's ClusterIP connects).
//!
//! The protocol is one line each way: the client sends `x\n`, the server answers `ok\n`
//! for every line, until the client closes. `swy-probe serve` spawns a thread per
//! connection, which would cost more than the paths being compared; this server has a fixed
//! pool of threads blocking in `accept` and serves each connection on the thread that
//! accepted it.
//!
//! Every client run is bounded by `--seconds` and `--max` and prints one JSON line
//! ([`Outcome`]).
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Line the server prints on stdout once it listens.
pub const READY_LINE: &str = "ready";

/// Longest run a client accepts (`--seconds` is capped to it).
const MAX_SECONDS: f64 = 60.0;

/// Options of `switchyard-bench load`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(clap::Subcommand)]
enum Role {
    /// Answer `ok\n` to every line on TCP `--port`, from `--threads` threads.
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 16)]
        threads: usize,
    },
    /// New connections: connect, one line each way, close; `--concurrency` at a time.
    Connect(ClientArgs),
    /// Keep-alive: `--concurrency` connections, one request in flight on each.
    KeepAlive(ClientArgs),
}

/// What a client run is told.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server address.
    #[arg(long)]
    pub to: SocketAddr,
    /// Parallel connections (threads).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Stop after this long.
    #[arg(long)]
    pub seconds: f64,
    /// Stop after this many requests in all.
    #[arg(long)]
    pub max: usize,
    /// Per-operation timeout (connect, and the reply).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// The JSON line a client prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// Requests answered.
    pub done: usize,
    /// Requests that failed (refused, timed out, reset...).
    pub errors: usize,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Wall time of the run.
    pub seconds: f64,
    /// Latency of the answered requests (connect + reply for new connections, the round
    /// trip for keep-alive), microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> anyhow::Result<()> {
    match &args.role {
        Role::Serve { port, threads } => serve(*port, *threads),
        Role::Connect(c) => print(&client(c, false)),
        Role::KeepAlive(c) => print(&client(c, true)),
    }
}

fn print(outcome: &Outcome) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(outcome)?);
    Ok(())
}

fn serve(port: u16, threads: usize) -> anyhow::Result<()> {
    let listener = Arc::new(TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?);
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let listener = Arc::clone(&listener);
        handles.push(std::thread::spawn(move || loop {
            match listener.accept() {
                Ok((stream, _)) => answer(stream),
                // EMFILE and the like: do not spin.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }));
    }
    println!("{READY_LINE}");
    io::stdout().flush()?;
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

/// One connection, until the client closes it: `ok\n` per line received.
fn answer(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // A client that vanished must not hold a thread for long.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let lines = buf[..n].iter().filter(|b| **b == b'\n').count();
                if lines > 0 && stream.write_all(&b"ok\n".repeat(lines)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs `concurrency` workers until the deadline or `max` requests, and sums them up.
fn client(args: &ClientArgs, keep_alive: bool) -> Outcome {
    let seconds = args.seconds.clamp(0.0, MAX_SECONDS);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let issued = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (issued, stop, to, max) =
                (Arc::clone(&issued), Arc::clone(&stop), args.to, args.max);
            std::thread::spawn(move || {
                let mut w = Worker::default();
                // Claims one request at a time, so the total never exceeds `max`.
                let mut next = || {
                    !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && issued.fetch_add(1, Ordering::Relaxed) < max
                };
                if keep_alive {
                    w.keep_alive(to, timeout, &mut next);
                } else {
                    while next() {
                        w.record(one_connection(to, timeout));
                    }
                }
                w
            })
        })
        .collect();
    let mut all = Worker::default();
    for handle in workers {
        match handle.join() {
            Ok(w) => all.merge(w),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                all.record(Err(io::Error::other("a client thread panicked")));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    Outcome {
        done: all.latencies_us.len(),
        errors: all.errors,
        first_error: all.first_error,
        seconds,
        p50_us: percentile(&all.latencies_us, 0.50),
        p99_us: percentile(&all.latencies_us, 0.99),
    }
}

/// Nearest-rank percentile of sorted samples; 0 without samples.
pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

/// One worker's results.
#[derive(Default)]
struct Worker {
    latencies_us: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

impl Worker {
    fn record(&mut self, result: io::Result<Duration>) {
        match result {
            Ok(took) => self
                .latencies_us
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn merge(&mut self, other: Worker) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// One connection for the whole run; a failed one is replaced (and counted).
    fn keep_alive(&mut self, to: SocketAddr, timeout: Duration, next: &mut impl FnMut() -> bool) {
        let mut conn: Option<BufReader<TcpStream>> = None;
        while next() {
            let mut stream = match conn.take() {
                Some(s) => s,
                None => match open(to, timeout) {
                    Ok(s) => BufReader::new(s),
                    Err(e) => {
                        self.record(Err(e));
                        continue;
                    }
                },
            };
            let result = round_trip(&mut stream, Instant::now());
            if result.is_ok() {
                conn = Some(stream);
            }
            self.record(result);
        }
    }
}

fn open(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Connect, one line each way, close (the client closes first, as HTTP/1.0 clients do).
fn one_connection(to: SocketAddr, timeout: Duration) -> io::Result<Duration> {
    let started = Instant::now();
    let mut stream = BufReader::new(open(to, timeout)?);
    round_trip(&mut stream, started)
}

/// Sends one line and reads the answer; the latency counts from `started`.
fn round_trip(stream: &mut BufReader<TcpStream>, started: Instant) -> io::Result<Duration> {
    stream.get_mut().write_all(b"x\n")?;
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 || line != "ok\n" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {line:?}"),
        ));
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), 50.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn outcome_round_trips_as_one_json_line() {
        let o = Outcome {
            done: 3,
            errors: 1,
            first_error: Some("refused".into()),
            seconds: 1.5,
            p50_us: 80.0,
            p99_us: 200.0,
        };
        let line = serde_json::to_string(&o).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Outcome>(&line).unwrap(), o);
    }
}
