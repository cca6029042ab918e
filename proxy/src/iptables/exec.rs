//! Running the iptables tools: restores, single-rule checks, and listing our chains.
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use wait_timeout::ChildExt;

use super::backend::{IptablesBackend, Tools};
use super::chains::is_ours;
use super::rule_set::{ChainRef, Table};
use switchyard_model::iptables::rule_set::Family;

/// A failed iptables command, with what it printed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The program exited non-zero.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// Program and arguments.
        program: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr (names the failing line for restores).
        stderr: String,
    },
    /// The program did not finish in time and was killed.
    #[error("{program} did not finish within {after:?}; killed")]
    TimedOut {
        /// Program and arguments.
        program: String,
        /// The deadline.
        after: std::time::Duration,
    },
    /// The program stopped reading its input, yet exited successfully.
    #[error("cannot write the input of {program}: {source}")]
    Input {
        /// Program and arguments.
        program: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The program's output could not be read.
    #[error("cannot read the output of {program}: {message}")]
    Parse {
        /// Program.
        program: String,
        /// Parser message.
        message: String,
    },
}

/// Seconds to wait for the xtables lock held by another writer (kubelet, CNI plugins).
const LOCK_WAIT_SECONDS: &str = "5";
/// How long one iptables command may run: a 10,000-service restore takes seconds.
const COMMAND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

fn run(cmd: Command, input: Option<&str>) -> Result<String, ExecError> {
    run_reading(cmd, input, |mut pipe| {
        // Read whole, not line by line: nft's JSON is one line of up to tens of MB.
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

/// Like [`run`], but keeps only the output lines `keep` accepts, filtered as they are read:
/// iptables-save of a 10,000-service table prints about 50 MB, of which a sync needs the
/// chain declarations or a handful of rules.
fn run_keeping(
    cmd: Command,
    input: Option<&str>,
    keep: impl Fn(&str) -> bool + Sync,
) -> Result<String, ExecError> {
    run_reading(cmd, input, |pipe| kept_lines(pipe, &keep))
}

/// Runs `cmd` with `input`, `read` taking its output as it comes.
fn run_reading<R: Send>(
    mut cmd: Command,
    input: Option<&str>,
    read: impl FnOnce(ChildStdout) -> R + Send,
) -> Result<R, ExecError> {
    let program = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_error = |source| ExecError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    // Feeding and draining happen on helper threads so a hung tool (a stuck xtables lock, a
    // wedged netlink socket) costs this sync a deadline, not the controller forever. The
    // threads borrow the input (no copy of a restore input of tens of MB); once the child
    // exits or is killed, its pipes close and they end. The child itself stays here,
    // unreaped until it is waited for, so killing it on timeout can never hit a process that
    // reused its pid.
    std::thread::scope(|scope| {
        let stdin = child.stdin.take();
        if let (Some(text), Some(mut stdin)) = (input, stdin) {
            scope.spawn(move || {
                // A write error shows up as the child's failure, with its own message.
                let _ = stdin.write_all(text.as_bytes());
            });
        }
        let stdout = child
            .stdout
            .take()
            .map(|pipe| scope.spawn(move || read(pipe)));
        let stderr = child.stderr.take().map(|mut pipe| {
            scope.spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        });
        let status = match child.wait_timeout(COMMAND_DEADLINE).map_err(spawn_error)? {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ExecError::TimedOut {
                    program: program.clone(),
                    after: COMMAND_DEADLINE,
                });
            }
        };
        let stdout = stdout.and_then(|h| h.join().ok());
        let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        if !status.success() {
            return Err(ExecError::Failed {
                program: program.clone(),
                status,
                stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
            });
        }
        stdout.ok_or_else(|| ExecError::Parse {
            program: program.clone(),
            message: "its output could not be read".into(),
        })
    })
}

/// The lines of `pipe` that `keep` accepts, each ending in a newline.
fn kept_lines(pipe: impl Read, keep: &(impl Fn(&str) -> bool + Sync)) -> String {
    let mut out = String::new();
    for line in BufReader::new(pipe).split(b'\n') {
        let Ok(line) = line else {
            break;
        };
        let line = String::from_utf8_lossy(&line);
        if keep(&line) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Runs `iptables-restore --noflush` with `input`.
pub fn restore(tools: impl Into<Tools>, input: &str) -> Result<(), ExecError> {
    let mut run = RestoreRun::start(tools)?;
    run.write(input)?;
    run.finish()
}

/// An `iptables-restore --noflush` that reads its input while the caller writes it: a full
/// sync hands its 50 MB of rules on as it renders them, so they never exist whole in memory.
/// The deadline runs from the start: a tool that stops reading is killed then, which ends the
/// caller's blocked write.
pub struct RestoreRun {
    program: String,
    stdin: Option<BufWriter<ChildStdin>>,
    /// Waits for the child within the deadline (killing it after), with its exit status.
    status: Option<JoinHandle<Result<ExitStatus, ExecError>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl RestoreRun {
    /// Starts `tools`' iptables-restore.
    pub fn start(tools: impl Into<Tools>) -> Result<Self, ExecError> {
        let mut cmd = Command::new(tools.into().restore());
        cmd.args(["--noflush", "-w", LOCK_WAIT_SECONDS])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let program = format!("{cmd:?}");
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
        let stdin = child
            .stdin
            .take()
            .map(|p| BufWriter::with_capacity(64 * 1024, p));
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        });
        let name = program.clone();
        // The child is reaped only here, so killing it on timeout never hits a process that
        // reused its pid.
        let status = std::thread::spawn(move || match child.wait_timeout(COMMAND_DEADLINE) {
            Ok(Some(status)) => Ok(status),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(ExecError::TimedOut {
                    program: name,
                    after: COMMAND_DEADLINE,
                })
            }
            Err(source) => Err(ExecError::Spawn {
                program: name,
                source,
            }),
        });
        Ok(Self {
            program,
            stdin,
            status: Some(status),
            stderr,
        })
    }

    /// Writes more input. When the tool has stopped reading (a line it refused, the
    /// deadline), the run ends here with the tool's own error.
    pub fn write(&mut self, text: &str) -> Result<(), ExecError> {
        let Some(stdin) = &mut self.stdin else {
            return Ok(());
        };
        let Err(source) = stdin.write_all(text.as_bytes()) else {
            return Ok(());
        };
        self.wait()?;
        Err(ExecError::Input {
            program: self.program.clone(),
            source,
        })
    }

    /// Ends the input and waits for the tool.
    pub fn finish(mut self) -> Result<(), ExecError> {
        let flushed = self.stdin.as_mut().map_or(Ok(()), |stdin| stdin.flush());
        self.wait()?;
        flushed.map_err(|source| ExecError::Input {
            program: self.program.clone(),
            source,
        })
    }

    /// Closes the input, waits for the tool and reads its verdict.
    fn wait(&mut self) -> Result<(), ExecError> {
        drop(self.stdin.take());
        let Some(status) = self.status.take() else {
            return Ok(());
        };
        let status = status.join().unwrap_or_else(|_| {
            Err(ExecError::Parse {
                program: self.program.clone(),
                message: "the thread waiting for it panicked".into(),
            })
        })?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(ExecError::Failed {
                program: self.program.clone(),
                status,
                stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

/// `iptables -w N -t TABLE OP CHAIN`, ready for the operation's further arguments.
pub fn chain_command(tools: impl Into<Tools>, op: &str, chain: &ChainRef) -> Command {
    let mut cmd = Command::new(tools.into().iptables());
    cmd.args([
        "-w",
        LOCK_WAIT_SECONDS,
        "-t",
        chain.table.as_str(),
        op,
        &chain.chain,
    ]);
    cmd
}

/// Whether `rule` exists in `chain` (`iptables -C`).
pub fn rule_exists(tools: impl Into<Tools>, chain: &ChainRef, rule: &[String]) -> bool {
    let mut cmd = chain_command(tools, "-C", chain);
    cmd.args(rule);
    run(cmd, None).is_ok()
}

/// Inserts `rule` at `position` (1-based) of `chain`.
pub fn insert_rule(
    tools: impl Into<Tools>,
    chain: &ChainRef,
    position: usize,
    rule: &[String],
) -> Result<(), ExecError> {
    let mut cmd = chain_command(tools, "-I", chain);
    cmd.arg(position.to_string()).args(rule);
    run(cmd, None).map(drop)
}

/// Deletes one copy of `rule` from `chain`.
pub fn delete_rule(
    tools: impl Into<Tools>,
    chain: &ChainRef,
    rule: &[String],
) -> Result<(), ExecError> {
    let mut cmd = chain_command(tools, "-D", chain);
    cmd.args(rule);
    run(cmd, None).map(drop)
}

/// Whether `chain` exists (`iptables -L CHAIN -n`, cheap on both backends even with large tables).
pub fn chain_exists(tools: impl Into<Tools>, chain: &ChainRef) -> bool {
    let mut cmd = chain_command(tools, "-L", chain);
    cmd.arg("-n");
    run(cmd, None).is_ok()
}

/// Whether the tools can be used at all: the nat table answers a listing of POSTROUTING
/// (upstream's presence check of a family's iptables). The error says why not.
pub fn usable(tools: impl Into<Tools>) -> Result<(), ExecError> {
    let mut cmd = chain_command(tools, "-L", &ChainRef::new(Table::Nat, "POSTROUTING"));
    cmd.arg("-n");
    run(cmd, None).map(drop)
}

/// Every rule of `table` as `iptables -S` prints them, or `None` if the table is not there.
pub fn list_table_rules(tools: impl Into<Tools>, table: Table) -> Option<String> {
    let mut cmd = Command::new(tools.into().iptables());
    cmd.args(["-w", LOCK_WAIT_SECONDS, "-t", table.as_str(), "-S"]);
    run(cmd, None).ok()
}

/// The iptables-legacy tables that exist in this network namespace. Any legacy command on a
/// table creates it, so cleanup touches only these.
pub fn legacy_tables() -> BTreeSet<String> {
    legacy_tables_of(Family::Ipv4)
}

/// [`legacy_tables`] of `family` (`ip6_tables_names` for ip6tables-legacy).
pub fn legacy_tables_of(family: Family) -> BTreeSet<String> {
    // thread-self: /proc/net shows the process's first thread's namespace, which is not this
    // thread's when it entered another one (as the tests' namespace helper does).
    let paths: [&str; 2] = match family {
        Family::Ipv4 => [
            "/proc/thread-self/net/ip_tables_names",
            "/proc/net/ip_tables_names",
        ],
        Family::Ipv6 => [
            "/proc/thread-self/net/ip6_tables_names",
            "/proc/net/ip6_tables_names",
        ],
    };
    paths
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|names| names.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The rules of `chain` as `iptables -S` prints them, or `None` if the chain (or table) is
/// not there on this backend.
pub fn list_rules(tools: impl Into<Tools>, chain: &ChainRef) -> Option<String> {
    run(chain_command(tools, "-S", chain), None).ok()
}

/// The rules of the built-in `chains` of `table`, as argument vectors (without `-A CHAIN`),
/// from one `iptables-save -t TABLE`. On iptables-legacy every command reads the whole table
/// from the kernel, so one save per table replaces a `-C` per rule (seconds each on a table
/// of 10,000 services).
pub fn saved_rules(
    tools: impl Into<Tools>,
    table: Table,
    chains: &[&str],
) -> Result<Vec<(String, Vec<String>)>, ExecError> {
    let mut cmd = Command::new(tools.into().save());
    cmd.args(["-t", table.as_str()]);
    let wanted = |line: &str| {
        line.strip_prefix("-A ")
            .and_then(|rest| rest.split_once(' '))
            .is_some_and(|(chain, _)| chains.contains(&chain))
    };
    Ok(rules_of_chains(&run_keeping(cmd, None, wanted)?, chains))
}

/// `iptables-save -t TABLE` reduced to our chains (declarations and rules) and the rules of
/// other chains that jump into ours, for `switchyard status`.
pub fn save_ours(tools: impl Into<Tools>, table: Table) -> Result<String, ExecError> {
    save_prefixed(tools, table, super::chains::PREFIX)
}

/// [`save_ours`] for the chains whose names start with `prefix` (ebpf mode's SCTP fallback
/// has its own).
pub fn save_prefixed(
    tools: impl Into<Tools>,
    table: Table,
    prefix: &str,
) -> Result<String, ExecError> {
    let mut cmd = Command::new(tools.into().save());
    cmd.args(["-t", table.as_str()]);
    let (jump, goto) = (format!(" -j {prefix}"), format!(" -g {prefix}"));
    let keep = |line: &str| {
        line.starts_with('*')
            || line
                .strip_prefix(':')
                .is_some_and(|c| c.starts_with(prefix))
            || line.strip_prefix("-A ").is_some_and(|rule| {
                rule.starts_with(prefix) || rule.contains(&jump) || rule.contains(&goto)
            })
    };
    run_keeping(cmd, None, keep)
}

/// The `-A CHAIN ...` lines of `save` for the given chains, split like a shell would.
fn rules_of_chains(save: &str, chains: &[&str]) -> Vec<(String, Vec<String>)> {
    save.lines()
        .filter_map(|line| line.strip_prefix("-A "))
        .filter_map(|rest| {
            let (chain, args) = rest.split_once(' ')?;
            chains
                .contains(&chain)
                .then(|| Some((chain.to_owned(), shlex::split(args)?)))
                .flatten()
        })
        .collect()
}

/// Our chains currently in `table`. Legacy: `iptables-save` (fast there). nft: `nft -j list
/// chains`, because iptables-nft-save takes minutes on a table with 100,000 chains.
pub fn our_chains(tools: impl Into<Tools>, table: Table) -> Result<BTreeSet<ChainRef>, ExecError> {
    chains_where(tools, table, is_ours)
}

/// The chains of `table` whose names `wanted` accepts, listed as [`our_chains`] lists.
pub fn chains_where(
    tools: impl Into<Tools>,
    table: Table,
    wanted: impl Fn(&str) -> bool,
) -> Result<BTreeSet<ChainRef>, ExecError> {
    let tools = tools.into();
    let names: Vec<String> = match tools.backend {
        IptablesBackend::Legacy => {
            let mut cmd = Command::new(tools.save());
            cmd.args(["-t", table.as_str()]);
            chain_declarations(&run_keeping(cmd, None, |line| line.starts_with(':'))?)
        }
        IptablesBackend::Nft => nft_chain_names(nft_list_chains(tools.family)?, table.as_str()),
    };
    Ok(names
        .into_iter()
        .filter(|n| wanted(n))
        .map(|n| ChainRef::new(table, n))
        .collect())
}

/// Chain names declared (`:NAME POLICY [p:b]`) in iptables-save output.
fn chain_declarations(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[derive(serde::Deserialize)]
struct NftList {
    nftables: Vec<NftItem>,
}

#[derive(serde::Deserialize)]
struct NftItem {
    chain: Option<NftChain>,
}

#[derive(serde::Deserialize)]
struct NftChain {
    table: String,
    name: String,
}

/// `iptables-save -t TABLE`, keeping only the lines `keep` accepts as they are read.
pub fn save_lines(
    tools: impl Into<Tools>,
    table: Table,
    keep: impl Fn(&str) -> bool + Sync,
) -> Result<String, ExecError> {
    let mut cmd = Command::new(tools.into().save());
    cmd.args(["-t", table.as_str()]);
    run_keeping(cmd, None, keep)
}

/// Every chain of the `ip` family's nat, filter and mangle tables (iptables-nft's tables),
/// from one `nft -j list chains ip`.
pub fn nft_chains() -> Result<Vec<(Table, String)>, ExecError> {
    nft_chains_of(Family::Ipv4)
}

/// [`nft_chains`] of `family` (`ip6` for ip6tables-nft's tables).
pub fn nft_chains_of(family: Family) -> Result<Vec<(Table, String)>, ExecError> {
    let list = nft_list_chains(family)?;
    Ok(list
        .nftables
        .into_iter()
        .filter_map(|item| item.chain)
        .filter_map(|c| {
            let table = super::dataplane::TABLES
                .into_iter()
                .find(|t| t.as_str() == c.table)?;
            Some((table, c.name))
        })
        .collect())
}

/// The jumps and gotos of one `ip` family chain: (rule handle, target chain).
pub fn nft_jumps(table: Table, chain: &str) -> Result<Vec<(u64, String)>, ExecError> {
    nft_jumps_of(Family::Ipv4, table, chain)
}

/// [`nft_jumps`] in the nftables family of `family`.
pub fn nft_jumps_of(
    family: Family,
    table: Table,
    chain: &str,
) -> Result<Vec<(u64, String)>, ExecError> {
    let nf = family.nft_family();
    let mut cmd = Command::new("nft");
    cmd.args(["-a", "-j", "list", "chain", nf, table.as_str(), chain]);
    let program = format!("nft -a -j list chain {nf} {} {chain}", table.as_str());
    nft_rule_jumps(&run(cmd, None)?).map_err(|e| ExecError::Parse {
        program,
        message: e.to_string(),
    })
}

/// (handle, target) of every rule with a `jump` or `goto` verdict in `nft -a -j` output.
fn nft_rule_jumps(json: &str) -> Result<Vec<(u64, String)>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Listing {
        nftables: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        rule: Option<Rule>,
    }
    #[derive(serde::Deserialize)]
    struct Rule {
        handle: u64,
        #[serde(default)]
        expr: Vec<serde_json::Value>,
    }
    let listing: Listing = serde_json::from_str(json)?;
    Ok(listing
        .nftables
        .into_iter()
        .filter_map(|item| item.rule)
        .flat_map(|rule| {
            let handle = rule.handle;
            rule.expr.into_iter().filter_map(move |e| {
                let verdict = e.get("jump").or_else(|| e.get("goto"))?;
                Some((handle, verdict.get("target")?.as_str()?.to_owned()))
            })
        })
        .collect())
}

/// Deletes `family`'s `table` (`ip` or `ip6`) when it holds nothing but empty built-in
/// chains: its base chains alone keep netfilter's hooks registered (for nat, NAT and
/// conntrack for every packet). Returns whether it went. A rule another tool adds between the
/// listing and the delete would go with it; tools that add rules do so to a table that
/// already has some.
pub fn nft_delete_table_if_empty(family: Family, table: Table) -> Result<bool, ExecError> {
    if !nft_chains_of(family)?.iter().any(|(t, _)| *t == table) {
        return Ok(false);
    }
    let nf = family.nft_family();
    let mut cmd = Command::new("nft");
    cmd.args(["-j", "list", "table", nf, table.as_str()]);
    let program = format!("nft -j list table {nf} {}", table.as_str());
    let empty = nft_table_is_empty(&run(cmd, None)?).map_err(|e| ExecError::Parse {
        program,
        message: e.to_string(),
    })?;
    if empty {
        nft_script(&format!("delete table {nf} {}\n", table.as_str()))?;
    }
    Ok(empty)
}

/// Whether `nft -j list table` output has no rule and only base chains (those with a hook).
fn nft_table_is_empty(json: &str) -> Result<bool, serde_json::Error> {
    let listing: serde_json::Value = serde_json::from_str(json)?;
    let items = listing
        .get("nftables")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(items.iter().all(|item| {
        item.get("rule").is_none()
            && item.get("set").is_none()
            && item.get("map").is_none()
            && item.get("chain").is_none_or(|c| c.get("hook").is_some())
    }))
}

/// Runs an nft script (`nft -f -`) as one transaction.
pub fn nft_script(script: &str) -> Result<(), ExecError> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"]);
    run(cmd, Some(script)).map(drop)
}

/// `nft -j list chains` of `family`, parsed as it is read: with 110,000 chains the JSON is
/// 11 MB, which never needs to exist as text.
fn nft_list_chains(family: Family) -> Result<NftList, ExecError> {
    let nf = family.nft_family();
    let mut cmd = Command::new("nft");
    cmd.args(["-j", "list", "chains", nf]);
    let parsed = run_reading(cmd, None, |pipe| {
        let mut reader = BufReader::new(pipe);
        let parsed = serde_json::from_reader(&mut reader);
        // Whatever is left is drained, so nft never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        parsed
    })?;
    parsed.map_err(|e| ExecError::Parse {
        program: format!("nft -j list chains {nf}"),
        message: e.to_string(),
    })
}

/// Chain names of `table` in an `nft -j list chains` listing.
fn nft_chain_names(list: NftList, table: &str) -> Vec<String> {
    list.nftables
        .into_iter()
        .filter_map(|item| item.chain)
        .filter(|c| c.table == table)
        .map(|c| c.name)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_nft_table_of_empty_base_chains_is_empty_and_one_with_a_rule_or_chain_is_not() {
        let empty = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "nat", "handle": 1}},
            {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "handle": 1,
              "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}]}"#;
        assert_eq!(super::nft_table_is_empty(empty).ok(), Some(true));
        let rule = empty.replace(
            "]}",
            r#", {"rule": {"family": "ip", "table": "nat", "chain": "PREROUTING", "handle": 4, "expr": []}}]}"#,
        );
        assert_eq!(super::nft_table_is_empty(&rule).ok(), Some(false));
        let chain = empty.replace(
            "]}",
            r#", {"chain": {"family": "ip", "table": "nat", "name": "KUBE-SERVICES", "handle": 2}}]}"#,
        );
        assert_eq!(super::nft_table_is_empty(&chain).ok(), Some(false));
    }

    use super::*;

    #[test]
    fn nft_jumps_and_gotos_are_read_with_their_handles() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "handle": 18}},
            {"rule": {"family": "ip", "table": "nat", "chain": "PREROUTING", "handle": 860043,
              "expr": [{"xt": {"type": "match", "name": "comment"}}, {"counter": {"packets": 0, "bytes": 0}},
                       {"jump": {"target": "SWY-SERVICES"}}]}},
            {"rule": {"family": "ip", "table": "nat", "chain": "PREROUTING", "handle": 7,
              "expr": [{"goto": {"target": "OTHER"}}]}},
            {"rule": {"family": "ip", "table": "nat", "chain": "PREROUTING", "handle": 8,
              "expr": [{"accept": null}]}}]}"#;
        assert_eq!(
            nft_rule_jumps(json).unwrap(),
            [(860043, "SWY-SERVICES".to_owned()), (7, "OTHER".to_owned())]
        );
    }

    #[test]
    fn saved_rules_of_built_in_chains_are_split_like_a_shell() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n\
            -A PREROUTING -m comment --comment \"switchyard service portals\" -j SWY-SERVICES\n\
            -A SWY-SERVICES -d 198.18.128.10/32 -j SWY-SVC-X\nCOMMIT\n";
        let rules = rules_of_chains(save, &["PREROUTING", "OUTPUT"]);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].0, "PREROUTING");
        assert_eq!(
            rules[0].1,
            [
                "-m",
                "comment",
                "--comment",
                "switchyard service portals",
                "-j",
                "SWY-SERVICES"
            ]
        );
    }

    #[test]
    fn save_output_chain_declarations() {
        let save = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:SWY-SERVICES - [0:0]\n-A PREROUTING -j SWY-SERVICES\nCOMMIT\n";
        assert_eq!(chain_declarations(save), ["PREROUTING", "SWY-SERVICES"]);
    }

    #[test]
    fn nft_json_chain_names() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "nat", "name": "SWY-SERVICES", "handle": 3}},
            {"chain": {"family": "ip", "table": "filter", "name": "SWY-FORWARD", "handle": 4}}]}"#;
        let list = || serde_json::from_str::<NftList>(json).unwrap();
        assert_eq!(nft_chain_names(list(), "nat"), ["SWY-SERVICES"]);
        assert_eq!(nft_chain_names(list(), "filter"), ["SWY-FORWARD"]);
        assert!(serde_json::from_str::<NftList>("not json").is_err());
    }
}
