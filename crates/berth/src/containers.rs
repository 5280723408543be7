//! Container commands (`run`, `ps`, `logs`, `exec`, ...), with Docker's flags and output.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_engine::container::{Record, Status};
use berth_engine::logs::{self, Query, Stream};
use berth_engine::ops::ExecRequest;
use berth_engine::options::{parse_bytes, Throttle, Ulimit};
use berth_engine::{attach, Engine, MountSpec, PortSpec, RestartPolicy, RunOptions};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cli::Global;
use crate::images::{ago, human_size, table};

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct CreateFlags {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Pull the image: missing (when not in the store), always, or never.
    #[arg(long, default_value = "missing")]
    pub pull: String,
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Environment variables, KEY=VALUE (or KEY to take the caller's value).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// USER[:GROUP], names resolved in the container's /etc/passwd and /etc/group.
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Publish a port: [IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL].
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// Publish every exposed port on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// SOURCE:DESTINATION[:ro] (host path or volume name), or DESTINATION (anonymous volume).
    #[arg(short, long = "volume")]
    pub volume: Vec<String>,
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// type=bind|volume|tmpfs,source=...,target=...[,readonly]
    #[arg(long)]
    pub mount: Vec<String>,
    /// none, host, bridge (default), container:NAME, or a network made with `network create`.
    #[arg(long, alias = "net", default_value = "bridge")]
    pub network: String,
    #[arg(short, long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub cpus: Option<f64>,
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    #[arg(long)]
    pub privileged: bool,
    /// A host device in the container: HOST[:CONTAINER][:PERMISSIONS], e.g. /dev/fuse.
    #[arg(long = "device")]
    pub device: Vec<String>,
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// seccomp=unconfined|PROFILE.json, no-new-privileges
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Run a small init (tini) as PID 1 that forwards signals and reaps zombies.
    #[arg(long)]
    pub init: bool,
    /// HOST:IP lines for /etc/hosts.
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    #[arg(long)]
    pub dns: Vec<String>,
    #[arg(short, long = "label")]
    pub label: Vec<String>,
    #[arg(long = "stop-signal")]
    pub stop_signal: Option<String>,
    #[arg(long = "stop-timeout")]
    pub stop_timeout: Option<u32>,
    /// no, always, unless-stopped, on-failure[:N]. Applied by the container's monitor while
    /// it runs; berth has no daemon, so nothing restarts containers after a reboot.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// max-size=SIZE, max-file=N
    #[arg(long = "log-opt")]
    pub log_opt: Vec<String>,
    /// A command to check the container's health (run with /bin/sh -c).
    #[arg(long = "health-cmd")]
    pub health_cmd: Option<String>,
    /// Time between checks (30s, 1m...).
    #[arg(long = "health-interval")]
    pub health_interval: Option<String>,
    /// How long a check may run.
    #[arg(long = "health-timeout")]
    pub health_timeout: Option<String>,
    /// Time to start up, in which failures do not count.
    #[arg(long = "health-start-period")]
    pub health_start_period: Option<String>,
    /// Failures in a row that make the container unhealthy.
    #[arg(long = "health-retries")]
    pub health_retries: Option<u32>,
    /// Disable the image's HEALTHCHECK.
    #[arg(long = "no-healthcheck")]
    pub no_healthcheck: bool,
    /// A resource limit: NAME=SOFT[:HARD] (nofile, nproc, core, memlock, stack...).
    #[arg(long)]
    pub ulimit: Vec<String>,
    /// The size of /dev/shm (64m by default).
    #[arg(long = "shm-size")]
    pub shm_size: Option<String>,
    /// A namespaced kernel parameter: KEY=VALUE (net.*, kernel.shm*, kernel.msg*...).
    #[arg(long)]
    pub sysctl: Vec<String>,
    /// IPC namespace: private, shareable, host, none, or container:NAME.
    #[arg(long, default_value = "")]
    pub ipc: String,
    /// PID namespace: host or container:NAME (a namespace of its own by default).
    #[arg(long, default_value = "")]
    pub pid: String,
    /// UTS namespace: host (a namespace of its own by default).
    #[arg(long, default_value = "")]
    pub uts: String,
    /// Cgroup namespace: private (the default) or host.
    #[arg(long, default_value = "")]
    pub cgroupns: String,
    /// More groups for the process (names from the container's /etc/group, or numbers).
    #[arg(long = "group-add")]
    pub group_add: Vec<String>,
    /// CPU weight relative to other containers (1024 is the default).
    #[arg(short = 'c', long = "cpu-shares")]
    pub cpu_shares: Option<u64>,
    /// CPUs the container may use: 0-2,4.
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use: 0-1.
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// CPU time per period, in microseconds (what --cpus sets for you).
    #[arg(long = "cpu-quota", allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,
    /// The period of --cpu-quota, in microseconds.
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    /// Memory plus swap; -1 for unlimited swap.
    #[arg(long = "memory-swap", allow_negative_numbers = true)]
    pub memory_swap: Option<String>,
    /// A soft memory limit.
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    /// Do not let the kernel's OOM killer kill the container (cgroup v1 only).
    #[arg(long = "oom-kill-disable")]
    pub oom_kill_disable: bool,
    /// Block I/O weight, 10 to 1000.
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    /// Limit reads from a device: DEVICE:RATE (1mb).
    #[arg(long = "device-read-bps")]
    pub device_read_bps: Vec<String>,
    /// Limit writes to a device: DEVICE:RATE (1mb).
    #[arg(long = "device-write-bps")]
    pub device_write_bps: Vec<String>,
    /// Limit read operations on a device: DEVICE:IOPS.
    #[arg(long = "device-read-iops")]
    pub device_read_iops: Vec<String>,
    /// Limit write operations on a device: DEVICE:IOPS.
    #[arg(long = "device-write-iops")]
    pub device_write_iops: Vec<String>,
    /// Write the container's id to this file (which must not exist).
    #[arg(long)]
    pub cidfile: Option<PathBuf>,
    /// Read labels from a file of KEY=VALUE lines.
    #[arg(long = "label-file")]
    pub label_file: Vec<PathBuf>,
    /// Another name for the container on its (user-defined) network.
    #[arg(long = "network-alias", alias = "net-alias")]
    pub network_alias: Vec<String>,
    /// The container's MAC address on its network.
    #[arg(long = "mac-address")]
    pub mac_address: Option<String>,
    /// The container's IPv4 address on its (user-defined) network.
    #[arg(long)]
    pub ip: Option<String>,
    /// Logging driver: json-file (the default) or none.
    #[arg(long = "log-driver", default_value = "json-file")]
    pub log_driver: String,
    /// The image's platform: this machine's (linux/amd64 here) is the one berth runs.
    #[arg(long)]
    pub platform: Option<String>,
    /// IMAGE [COMMAND [ARG...]]
    #[arg(required = true, trailing_var_arg = true, value_name = "IMAGE [COMMAND]")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Run in the background and print the container's id.
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub attach_options: AttachOptions,
    #[command(flatten)]
    pub flags: CreateFlags,
}

/// How a terminal attached to a container behaves.
#[derive(Debug, Clone, Args)]
pub struct AttachOptions {
    /// The keys that detach from the container and leave it running (`ctrl-p,ctrl-q`:
    /// ctrl-A to ctrl-Z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_, or single characters).
    #[arg(long = "detach-keys", default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
    /// Pass the signals this command receives on to the container.
    #[arg(long = "sig-proxy", default_value = "true", action = clap::ArgAction::Set)]
    pub sig_proxy: bool,
}

impl Default for AttachOptions {
    fn default() -> AttachOptions {
        AttachOptions { detach_keys: "ctrl-p,ctrl-q".into(), sig_proxy: true }
    }
}

/// Docker's `--detach-keys` syntax as bytes.
pub fn parse_detach_keys(text: &str) -> Result<Vec<u8>> {
    let mut keys = Vec::new();
    for key in text.split(',') {
        let key = key.trim();
        match key.strip_prefix("ctrl-") {
            Some(rest) if rest.len() == 1 => {
                let c = rest.as_bytes()[0].to_ascii_uppercase();
                if !(b'@'..=b'_').contains(&c) {
                    bail!("--detach-keys {text:?}: ctrl-{rest} is not a control key (ctrl-a..ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_)");
                }
                keys.push(c - b'@');
            }
            None if key.len() == 1 => keys.push(key.as_bytes()[0]),
            _ => bail!("--detach-keys {text:?}: {key:?} is not a key: use ctrl-X or one character"),
        }
    }
    if keys.is_empty() {
        bail!("--detach-keys is empty");
    }
    Ok(keys)
}

/// Finds the detach sequence in a stream of input, holding back what may be its start.
#[derive(Debug)]
struct DetachMatcher {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachMatcher {
    /// The bytes to pass on, and whether the sequence was completed.
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for &byte in input {
            if byte == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
            } else {
                // Not the sequence after all: what was held back goes through.
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if byte == self.keys[0] {
                    self.matched = 1;
                } else {
                    out.push(byte);
                }
            }
        }
        (out, false)
    }
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach to the container's output and wait for it.
    #[arg(short, long)]
    pub attach: bool,
    #[arg(short, long)]
    pub interactive: bool,
    /// Every stopped container (with --filter, those that match).
    #[arg(long, conflicts_with_all = ["attach", "containers"])]
    pub all: bool,
    /// With --all: restart-policy=NAME (repeatable; unless-stopped leaves out containers a
    /// user stopped). What a boot service runs, since berth has no daemon.
    #[arg(long, requires = "all")]
    pub filter: Vec<String>,
    #[arg(required_unless_present = "all")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before SIGKILL.
    #[arg(short, long = "time", alias = "timeout")]
    pub time: Option<u32>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    pub force: bool,
    /// Remove its anonymous volumes too.
    #[arg(short, long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show stopped containers too.
    #[arg(short, long)]
    pub all: bool,
    #[arg(short, long)]
    pub quiet: bool,
    /// status=, name=, id=, label=KEY[=VALUE], ancestor=, exited=CODE
    #[arg(short, long)]
    pub filter: Vec<String>,
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only the latest container.
    #[arg(short, long)]
    pub latest: bool,
    /// Output format: table (default), json, or a Go template (`table {{.Names}}\t{{.Status}}`).
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines from the end, or "all".
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// RFC 3339 time, Unix seconds, or a duration such as 10m.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(short, long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[arg(short, long)]
    pub detach: bool,
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(short, long)]
    pub tty: bool,
    /// KEY=VALUE, or KEY to pass this environment's value (unset: left out), as Docker's.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Files of KEY=VALUE lines (`#` comments), read before the -e values.
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    #[arg(long)]
    pub privileged: bool,
    /// CONTAINER COMMAND [ARG...]
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, value_name = "CONTAINER COMMAND")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct OneOrMore {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct One {
    pub container: String,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    pub container: String,
    /// Options for ps (`aux`, `-o pid,comm`): the host's ps, showing the container's rows.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_options: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one sample and exit.
    #[arg(long = "no-stream")]
    pub no_stream: bool,
    #[arg(short, long)]
    pub all: bool,
    /// Output format: table (default), json, or a Go template (`table {{.Names}}\t{{.Status}}`).
    #[arg(long, default_value = "table")]
    pub format: String,
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// CONTAINER:PATH or a host path.
    pub source: String,
    /// CONTAINER:PATH or a host path.
    pub destination: String,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    #[arg(short, long)]
    pub message: Option<String>,
    #[arg(short, long)]
    pub author: Option<String>,
    #[arg(short, long = "change")]
    pub changes: Vec<String>,
    /// Pause the container while its changes are read (default true).
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pause: bool,
    pub container: String,
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Memory limit (0: none).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Memory plus swap; -1 for unlimited swap.
    #[arg(long = "memory-swap", allow_negative_numbers = true)]
    pub memory_swap: Option<String>,
    /// A soft memory limit.
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    /// CPUs (fractions allowed; 0: none).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// CPU weight relative to other containers.
    #[arg(short = 'c', long = "cpu-shares")]
    pub cpu_shares: Option<u64>,
    /// CPU time per period, in microseconds.
    #[arg(long = "cpu-quota", allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,
    /// The period of --cpu-quota, in microseconds.
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    /// CPUs the container may use: 0-2,4.
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use.
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Most processes at once (-1 or 0: no limit).
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Block I/O weight, 10 to 1000.
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    /// no, always, unless-stopped, on-failure[:N].
    #[arg(long)]
    pub restart: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortArgs {
    pub container: String,
    /// PORT[/PROTO]
    pub port: Option<String>,
}

#[derive(Debug, Args)]
pub struct RenameArgs {
    pub container: String,
    pub new_name: String,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    #[command(flatten)]
    pub options: AttachOptions,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Go-template-like path such as {{.State.Pid}} or {{json .Config}}.
    #[arg(short, long)]
    pub format: Option<String>,
    /// container or image (default: whichever the name finds, containers first).
    #[arg(long = "type")]
    pub kind: Option<String>,
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (a random name without NAME).
    Create {
        name: Option<String>,
        /// A label, KEY=VALUE (repeatable).
        #[arg(short, long = "label")]
        label: Vec<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// Output format: table, json, or a Go template.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show volumes as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes.
    #[command(alias = "remove")]
    Rm {
        /// Do not fail when a volume does not exist.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes no container uses.
    Prune {
        /// Named volumes too, not only anonymous ones.
        #[arg(short, long)]
        all: bool,
        /// Do not ask (berth never asks; accepted for Docker's scripts).
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a bridge network.
    Create {
        name: String,
        /// Its subnet, CIDR (default: a free /24 from berth's pool).
        #[arg(long)]
        subnet: Option<String>,
        /// Only bridge networks exist.
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        /// A label, KEY=VALUE (repeatable).
        #[arg(short, long = "label")]
        label: Vec<String>,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        /// Output format: table, json, or a Go template.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show networks as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a container to a network (at once if it runs, and at every start).
    Connect {
        network: String,
        container: String,
        /// Another name for the container on this network.
        #[arg(long)]
        alias: Vec<String>,
        /// Its IPv4 address on this network.
        #[arg(long)]
        ip: Option<String>,
    },
    /// Disconnect a container from a network it was connected to.
    Disconnect {
        network: String,
        container: String,
        /// Accepted for Docker's scripts.
        #[arg(short, long)]
        force: bool,
    },
}

fn engine(global: &Global) -> Result<Engine> {
    Engine::open(&global.root)
        .with_context(|| format!("cannot open the berth root {}", global.root.display()))
}

fn labels(list: &[String]) -> BTreeMap<String, String> {
    list.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.clone(), String::new()),
        })
        .collect()
}

fn run_options(flags: &CreateFlags) -> Result<RunOptions> {
    let env = environment(&flags.env_file, &flags.env)?;
    let mut publish = Vec::new();
    for p in &flags.publish {
        publish.extend(PortSpec::parse(p)?);
    }
    let mut mounts = Vec::new();
    for v in &flags.volume {
        mounts.push(MountSpec::parse_volume(v)?);
    }
    for m in &flags.mount {
        mounts.push(MountSpec::parse_mount(m)?);
    }
    for t in &flags.tmpfs {
        mounts.push(MountSpec::parse_tmpfs(t)?);
    }
    let mut log_max_size = None;
    let mut log_max_files = None;
    for opt in &flags.log_opt {
        match opt.split_once('=') {
            Some(("max-size", v)) => {
                log_max_size = Some(berth_engine::options::parse_bytes(v)? as u64)
            }
            Some(("max-file", v)) => {
                log_max_files = Some(v.parse().context("--log-opt max-file needs a number")?)
            }
            _ => bail!("unknown --log-opt {opt:?}: use max-size=SIZE or max-file=N"),
        }
    }
    Ok(RunOptions {
        image: flags.args[0].clone(),
        name: flags.name.clone(),
        command: flags.args[1..].to_vec(),
        entrypoint: flags.entrypoint.clone(),
        env,
        workdir: flags.workdir.clone(),
        user: flags.user.clone(),
        hostname: flags.hostname.clone(),
        tty: flags.tty,
        interactive: flags.interactive,
        auto_remove: flags.rm,
        publish,
        publish_all: flags.publish_all,
        mounts,
        network: flags.network.clone(),
        memory: flags.memory.as_deref().map(berth_engine::options::parse_bytes).transpose()?,
        cpus: flags.cpus,
        pids_limit: flags.pids_limit,
        cap_add: flags.cap_add.clone(),
        cap_drop: flags.cap_drop.clone(),
        privileged: flags.privileged,
        devices: flags
            .device
            .iter()
            .map(|d| berth_engine::options::DeviceSpec::parse(d))
            .collect::<Result<_, _>>()?,
        read_only: flags.read_only,
        security_opt: flags.security_opt.clone(),
        init: flags.init,
        add_hosts: flags.add_host.clone(),
        dns: flags.dns.clone(),
        labels: {
            let mut all = Vec::new();
            for file in &flags.label_file {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read label file {}", file.display()))?;
                all.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned),
                );
            }
            // Flags after files: a -l of the same key wins.
            all.extend(flags.label.iter().cloned());
            labels(&all)
        },
        stop_signal: flags.stop_signal.clone(),
        stop_timeout: flags.stop_timeout,
        restart: RestartPolicy::parse(&flags.restart)?,
        log_max_size,
        log_max_files,
        health_cmd: flags.health_cmd.clone(),
        health_test: None,
        health_interval: flags
            .health_interval
            .as_deref()
            .map(berth_engine::options::parse_duration)
            .transpose()?,
        health_timeout: flags
            .health_timeout
            .as_deref()
            .map(berth_engine::options::parse_duration)
            .transpose()?,
        health_start_period: flags
            .health_start_period
            .as_deref()
            .map(berth_engine::options::parse_duration)
            .transpose()?,
        health_retries: flags.health_retries,
        no_healthcheck: flags.no_healthcheck,
        ulimits: flags.ulimit.iter().map(|u| Ulimit::parse(u)).collect::<Result<_, _>>()?,
        shm_size: flags.shm_size.as_deref().map(parse_bytes).transpose()?,
        sysctls: flags
            .sysctl
            .iter()
            .map(|s| berth_engine::options::parse_sysctl(s))
            .collect::<Result<_, _>>()?,
        ipc: flags.ipc.clone(),
        pid: flags.pid.clone(),
        uts: flags.uts.clone(),
        cgroupns: flags.cgroupns.clone(),
        group_add: flags.group_add.clone(),
        cpu_shares: flags.cpu_shares,
        cpuset_cpus: flags.cpuset_cpus.clone(),
        cpuset_mems: flags.cpuset_mems.clone(),
        cpu_quota: flags.cpu_quota,
        cpu_period: flags.cpu_period,
        memory_swap: flags
            .memory_swap
            .as_deref()
            .map(|s| if s == "-1" { Ok(-1) } else { parse_bytes(s) })
            .transpose()?,
        memory_reservation: flags.memory_reservation.as_deref().map(parse_bytes).transpose()?,
        oom_kill_disable: flags.oom_kill_disable,
        blkio_weight: flags.blkio_weight,
        device_throttles: [
            ("read_bps", &flags.device_read_bps),
            ("write_bps", &flags.device_write_bps),
            ("read_iops", &flags.device_read_iops),
            ("write_iops", &flags.device_write_iops),
        ]
        .into_iter()
        .flat_map(|(kind, list)| list.iter().map(move |t| Throttle::parse(kind, t)))
        .collect::<Result<_, _>>()?,
        network_aliases: flags.network_alias.clone(),
        connected: Vec::new(),
        mac_address: flags.mac_address.clone(),
        ip: flags.ip.clone(),
        log_driver: flags.log_driver.clone(),
        platform: flags.platform.clone(),
    })
}

/// Pulls the image of `run`/`create` as `--pull` says (Docker's `missing` by default),
/// showing the pull on stderr so that stdout keeps only the container's id or output.
fn ensure_image(global: &Global, options: &RunOptions, pull: &str) -> Result<()> {
    let (image, platform) = (options.image.as_str(), options.platform.as_deref());
    let store = crate::images::open_store(global)?;
    let platform = platform.map(berth_image::manifest::Platform::parse).transpose()?;
    let wanted = match pull {
        "always" => true,
        "never" => false,
        "missing" => match store.resolve(image) {
            // Another platform's image under the name is pulled again, as Docker does.
            Ok(found) => platform.as_ref().is_some_and(|p| {
                !berth_image::manifest::Platform {
                    architecture: found.config.architecture.clone(),
                    os: found.config.os.clone(),
                    variant: found.config.variant.clone(),
                    os_version: None,
                }
                .satisfies(p)
            }),
            Err(berth_image::Error::ImageNotFound { .. }) => {
                // An id that is not there cannot be pulled.
                let hex = image.strip_prefix("sha256:").unwrap_or(image);
                if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(());
                }
                eprintln!("Unable to find image '{image}' locally");
                true
            }
            Err(_) => false,
        },
        other => bail!("--pull {other:?}: use missing, always or never"),
    };
    if wanted {
        let reference: berth_image::Reference = image.parse()?;
        let options = berth_image::pull::PullOptions {
            client: crate::images::client_options(global, &reference.registry)?,
            mirrors: crate::images::mirrors(global)?,
            platform,
            ..berth_image::pull::PullOptions::default()
        };
        let pulled =
            berth_image::pull::pull(&store, &reference, &options, &berth_image::progress::Silent)
                .with_context(|| format!("cannot pull {image}"))?;
        eprintln!("Digest: {}", pulled.digest);
        eprintln!("Status: Downloaded newer image for {}", reference.familiar());
    }
    Ok(())
}

/// `--cidfile`: made before the container (it must not exist, as Docker says), so that
/// two runs cannot both write it.
fn claim_cidfile(path: Option<&Path>) -> Result<Option<(PathBuf, std::fs::File)>> {
    let Some(path) = path else { return Ok(None) };
    match std::fs::File::options().write(true).create_new(true).open(path) {
        Ok(file) => Ok(Some((path.to_owned(), file))),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "container ID file found, make sure the other container isn't running or delete {}",
            path.display()
        ),
        Err(err) => Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Writes the id into the claimed `--cidfile`, or removes the file if no container came.
fn fill_cidfile(
    cidfile: Option<(PathBuf, std::fs::File)>,
    record: berth_engine::Result<Record>,
) -> Result<Record> {
    match (cidfile, record) {
        (Some((_, mut file)), Ok(record)) => {
            file.write_all(record.id.as_bytes())?;
            Ok(record)
        }
        (Some((path, _)), Err(err)) => {
            let _ = std::fs::remove_file(path);
            Err(err.into())
        }
        (None, record) => Ok(record?),
    }
}

pub fn create(global: &Global, flags: CreateFlags) -> Result<i32> {
    let engine = engine(global)?;
    let options = run_options(&flags)?;
    ensure_image(global, &options, &flags.pull)?;
    let cidfile = claim_cidfile(flags.cidfile.as_deref())?;
    let record = engine.create(options);
    let record = fill_cidfile(cidfile, record)?;
    println!("{}", record.id);
    Ok(0)
}

pub fn run(global: &Global, args: RunArgs) -> Result<i32> {
    let engine = engine(global)?;
    let options = run_options(&args.flags)?;
    if !options.restart.name.is_empty() && options.auto_remove {
        bail!("--restart and --rm cannot be used together");
    }
    let (tty, interactive) = (options.tty, options.interactive);
    if tty && interactive && !args.detach && !std::io::stdin().is_terminal() {
        // As Docker: -it needs a terminal to hand to the container.
        eprintln!("the input device is not a TTY");
        return Ok(1);
    }
    ensure_image(global, &options, &args.flags.pull)?;
    let cidfile = claim_cidfile(args.flags.cidfile.as_deref())?;
    let record = engine.create(options);
    let record = fill_cidfile(cidfile, record)?;
    let started = match engine.start(&record.id) {
        Ok(started) => started,
        Err(err) => {
            if record.options.auto_remove {
                let _ = engine.remove(&record.id, true, true);
            }
            return Err(err.into());
        }
    };
    if args.detach {
        println!("{}", record.id);
        return Ok(0);
    }
    relay(&engine, started.stream, &record.id, interactive, tty, &args.attach_options)
}

pub fn start(global: &Global, args: StartArgs) -> Result<i32> {
    let engine = engine(global)?;
    let mut status = 0;
    let mut names = args.containers.clone();
    if args.all {
        let mut policies = Vec::new();
        for filter in &args.filter {
            match filter.split_once('=') {
                Some(("restart-policy", policy)) => {
                    berth_engine::options::RestartPolicy::parse(policy)?;
                    policies.push(policy.to_owned());
                }
                _ => anyhow::bail!(
                    "--filter {filter:?}: the filter start knows is restart-policy=NAME"
                ),
            }
        }
        names = engine.startable(&policies)?.into_iter().map(|r| r.name).collect();
    }
    for name in &names {
        match engine.start(name) {
            Ok(started) if args.attach => {
                let record = engine.peek(&started.id)?;
                return relay(
                    &engine,
                    started.stream,
                    &started.id,
                    args.interactive,
                    record.options.tty,
                    &AttachOptions::default(),
                );
            }
            Ok(_) => println!("{name}"),
            // As Docker: starting a running container is not an error.
            Err(berth_engine::Error::WrongState { status: state, .. })
                if !args.attach && state == "running" =>
            {
                println!("{name}")
            }
            Err(err) => {
                eprintln!("Error: {err}");
                status = 1;
            }
        }
    }
    Ok(status)
}

pub fn restart(global: &Global, args: StopArgs) -> Result<i32> {
    let engine = engine(global)?;
    each(&args.containers, |name| {
        engine.stop(name, args.time)?;
        engine.start(name)?;
        Ok(())
    })
}

fn each(names: &[String], mut action: impl FnMut(&str) -> berth_engine::Result<()>) -> Result<i32> {
    let mut status = 0;
    for name in names {
        match action(name) {
            Ok(()) => println!("{name}"),
            Err(err) => {
                eprintln!("Error: {err}");
                status = 1;
            }
        }
    }
    Ok(status)
}

pub fn stop(global: &Global, args: StopArgs) -> Result<i32> {
    let engine = engine(global)?;
    each(&args.containers, |name| engine.stop(name, args.time))
}

pub fn kill(global: &Global, args: KillArgs) -> Result<i32> {
    let engine = engine(global)?;
    each(&args.containers, |name| engine.kill(name, &args.signal))
}

pub fn rm(global: &Global, args: RmArgs) -> Result<i32> {
    let engine = engine(global)?;
    each(&args.containers, |name| engine.remove(name, args.force, args.volumes).map(drop))
}

pub fn update(global: &Global, args: UpdateArgs) -> Result<i32> {
    let engine = engine(global)?;
    let bytes = |value: &Option<String>| -> Result<Option<i64>> {
        Ok(value.as_deref().map(|v| if v == "-1" { Ok(-1) } else { parse_bytes(v) }).transpose()?)
    };
    let change = berth_engine::ops::Update {
        memory: bytes(&args.memory)?,
        memory_swap: bytes(&args.memory_swap)?,
        memory_reservation: bytes(&args.memory_reservation)?,
        cpus: args.cpus,
        cpu_shares: args.cpu_shares,
        cpu_quota: args.cpu_quota,
        cpu_period: args.cpu_period,
        cpuset_cpus: args.cpuset_cpus.clone(),
        cpuset_mems: args.cpuset_mems.clone(),
        pids_limit: args.pids_limit.map(|p| if p < 0 { 0 } else { p }),
        blkio_weight: args.blkio_weight,
        restart: args.restart.as_deref().map(RestartPolicy::parse).transpose()?,
    };
    // Docker prints each name as it is updated.
    each(&args.containers, |name| engine.update(name, &change))
}

pub fn pause(global: &Global, args: OneOrMore, pause: bool) -> Result<i32> {
    let engine = engine(global)?;
    each(&args.containers, |name| engine.pause(name, pause))
}

pub fn wait(global: &Global, args: OneOrMore) -> Result<i32> {
    let engine = engine(global)?;
    let mut status = 0;
    for name in &args.containers {
        match engine.wait_exit(name, None) {
            Ok(code) => println!("{}", code.unwrap_or(-1)),
            Err(err) => {
                eprintln!("Error: {err}");
                status = 1;
            }
        }
    }
    Ok(status)
}

fn seconds_of(time: &str) -> i64 {
    berth_image::config::parse_rfc3339(time).unwrap_or(0)
}

/// A time as Docker's list formats show it: `2024-01-02 15:04:05 +0000 UTC`.
pub fn docker_time(seconds: i64) -> String {
    let text = berth_stdx::time::format_rfc3339(seconds);
    format!("{} +0000 UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

/// A container as the row `ps --format` templates see (Docker's field names).
fn ps_row(r: &Record) -> Value {
    let labels =
        r.options.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let mounts = r
        .mounts
        .iter()
        .map(|m| if m.name.is_empty() { m.source.clone() } else { m.name.clone() })
        .collect::<Vec<_>>()
        .join(",");
    let local_volumes = r.mounts.iter().filter(|m| m.kind == "volume").count();
    let networks = std::iter::once(r.options.network.as_str())
        .chain(r.options.connected.iter().map(|c| c.network.as_str()))
        .collect::<Vec<_>>()
        .join(",");
    json!({
        "Command": format!("\"{}\"", command_text(r)),
        "CreatedAt": docker_time(seconds_of(&r.created)),
        "ID": r.short_id(),
        "Image": r.image,
        "Labels": labels,
        "LocalVolumes": local_volumes.to_string(),
        "Mounts": mounts,
        "Names": r.name,
        "Networks": networks,
        "Ports": ports_text(r),
        "RunningFor": ago(seconds_of(&r.created)),
        "Size": "0B",
        "State": r.state.status.to_string(),
        "Status": status_text(r),
    })
}

pub(crate) fn status_text(record: &Record) -> String {
    let state = &record.state;
    let since = |t: &str| {
        let text = ago(seconds_of(t));
        text.trim_end_matches(" ago").to_owned()
    };
    match state.status {
        Status::Created => "Created".into(),
        Status::Running => {
            let health = match state.health.as_ref().map(|h| h.status.as_str()) {
                Some("starting") => " (health: starting)".to_owned(),
                Some(status) if !status.is_empty() => format!(" ({status})"),
                _ => String::new(),
            };
            format!("Up {}{health}", since(&state.started_at))
        }
        Status::Paused => format!("Up {} (Paused)", since(&state.started_at)),
        Status::Restarting => {
            format!("Restarting ({}) {}", state.exit_code, ago(seconds_of(&state.finished_at)))
        }
        Status::Exited => {
            format!("Exited ({}) {}", state.exit_code, ago(seconds_of(&state.finished_at)))
        }
        Status::Dead => "Dead".into(),
    }
}

fn ports_text(record: &Record) -> String {
    if !matches!(record.state.status, Status::Running | Status::Paused) {
        return String::new();
    }
    record
        .network
        .iter()
        .flat_map(|n| n.ports.iter())
        .map(|p| format!("{}:{}->{}/{}", p.host_ip, p.host_port, p.container_port, p.protocol))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `--filter KEY=VALUE` of `ps`, against a container; `all` holds every container
/// (for `before`/`since`).
fn matches_filter(record: &Record, key: &str, value: &str, all: &[Record]) -> Result<bool> {
    let created = |name: &str| -> Result<String> {
        all.iter()
            .find(|r| r.name == name || r.id.starts_with(name))
            .map(|r| r.created.clone())
            .with_context(|| format!("--filter {key}={name}: no such container"))
    };
    Ok(match key {
        "status" => {
            if !matches!(value, "created" | "restarting" | "running" | "removing" | "paused" | "exited" | "dead") {
                bail!("invalid filter 'status={value}': use created, restarting, running, removing, paused, exited or dead");
            }
            record.state.status.to_string() == value
        }
        // A regular expression, as Docker's (`name=^web$`); names match without their '/'.
        "name" => regex::Regex::new(value)
            .with_context(|| format!("--filter name={value}: not a regular expression"))?
            .is_match(&record.name),
        "id" => record.id.starts_with(value),
        "ancestor" => record.image == value || record.image_id.contains(value) || record.image.split(':').next() == Some(value),
        "exited" => {
            record.state.status == Status::Exited && record.state.exit_code.to_string() == value
        }
        "label" => match value.split_once('=') {
            Some((k, v)) => record.options.labels.get(k).is_some_and(|x| x == v),
            None => record.options.labels.contains_key(value),
        },
        "network" => record.uses_network(value),
        "volume" => record.mounts.iter().any(|m| m.name == value || m.source == value || m.destination == value),
        "publish" | "expose" => {
            let (port, protocol) = value.split_once('/').unwrap_or((value, "tcp"));
            let ports: Vec<(u16, String)> = record
                .network
                .iter()
                .flat_map(|n| n.ports.iter())
                .map(|p| (if key == "publish" { p.host_port } else { p.container_port }, p.protocol.clone()))
                .chain(record.options.publish.iter().filter(|_| key == "expose").map(|p| (p.container_port, p.protocol.clone())))
                .collect();
            let (low, high) = match port.split_once('-') {
                Some((l, h)) => (l.parse::<u16>()?, h.parse::<u16>()?),
                None => {
                    let n = port.parse::<u16>().with_context(|| format!("--filter {key}={value}: use PORT[/PROTOCOL]"))?;
                    (n, n)
                }
            };
            ports.iter().any(|(p, proto)| (low..=high).contains(p) && proto == protocol)
        }
        "before" => record.created < created(value)?,
        "since" => record.created > created(value)?,
        "health" => {
            let status = record.state.health.as_ref().map(|h| h.status.as_str()).unwrap_or("none");
            match value {
                "starting" | "healthy" | "unhealthy" | "none" => status == value,
                other => bail!("health={other}: use starting, healthy, unhealthy or none"),
            }
        }
        other => bail!(
            "unknown filter {other:?}: use status, name, id, ancestor, exited, label, network, volume, publish, expose, before, since or health"
        ),
    })
}

pub fn ps(global: &Global, args: PsArgs) -> Result<i32> {
    let engine = engine(global)?;
    let mut records = engine.list()?;
    if !args.all
        && args.filter.iter().all(|f| !f.starts_with("status=") && !f.starts_with("exited="))
    {
        records.retain(|r| {
            matches!(r.state.status, Status::Running | Status::Paused | Status::Restarting)
        });
    }
    // As Docker: values of one key are ORed, different keys ANDed.
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for filter in &args.filter {
        let (key, value) = filter
            .split_once('=')
            .with_context(|| format!("bad filter {filter:?}: use KEY=VALUE"))?;
        by_key.entry(key.to_owned()).or_default().push(value.to_owned());
    }
    let everything = engine.list()?;
    for (key, values) in &by_key {
        let mut kept = Vec::new();
        for r in records {
            let mut any = false;
            for value in values {
                if matches_filter(&r, key, value, &everything)? {
                    any = true;
                    break;
                }
            }
            if any {
                kept.push(r);
            }
        }
        records = kept;
    }
    if args.latest {
        records.truncate(1);
    }
    if args.quiet {
        for r in &records {
            println!("{}", if args.no_trunc { r.id.as_str() } else { r.short_id() });
        }
        return Ok(0);
    }
    let listing = crate::template::Listing::parse(
        &args.format,
        &[
            ("ID", "CONTAINER ID"),
            ("RunningFor", "CREATED"),
            ("CreatedAt", "CREATED AT"),
            ("LocalVolumes", "LOCAL VOLUMES"),
        ],
    )?;
    if !matches!(listing, crate::template::Listing::Table) {
        let rows: Vec<Value> = records.iter().map(ps_row).collect();
        print!("{}", listing.render(&rows)?);
        return Ok(0);
    }
    let mut rows =
        vec![["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
            .map(String::from)
            .to_vec()];
    for r in &records {
        let mut command = command_text(r);
        if !args.no_trunc && command.chars().count() > 20 {
            command = format!("{}…", command.chars().take(19).collect::<String>());
        }
        rows.push(vec![
            if args.no_trunc { r.id.clone() } else { r.short_id().to_owned() },
            r.image.clone(),
            format!("\"{command}\""),
            ago(seconds_of(&r.created)),
            status_text(r),
            ports_text(r),
            r.name.clone(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

fn command_text(record: &Record) -> String {
    std::iter::once(record.path.as_str())
        .chain(record.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--since`/`--until`: RFC 3339, Unix seconds, or a duration back from now (10m, 2h).
pub(crate) fn parse_time(text: &str) -> Result<f64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok(seconds);
    }
    if let Some(seconds) = berth_image::config::parse_rfc3339(text) {
        return Ok(seconds as f64);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (number, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let value: f64 = number.parse().with_context(|| {
        format!("bad time {text:?}: use RFC 3339, Unix seconds or a duration like 10m")
    })?;
    let scale = match unit {
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "ms" => 0.001,
        _ => bail!("bad time {text:?}: unknown unit {unit:?}"),
    };
    Ok(now - value * scale)
}

pub fn logs(global: &Global, args: LogsArgs) -> Result<i32> {
    let engine = engine(global)?;
    let id = engine.resolve_id(&args.container)?;
    if engine.peek(&id)?.options.log_driver == "none" {
        bail!("configured logging driver does not support reading: the container runs with --log-driver none");
    }
    let path = global.root.join("containers").join(&id).join("container.log");
    let query = Query {
        tail: if args.tail == "all" {
            None
        } else {
            Some(args.tail.parse().context("--tail takes a number or \"all\"")?)
        },
        since: args.since.as_deref().map(parse_time).transpose()?,
        until: args.until.as_deref().map(parse_time).transpose()?,
    };
    let (entries, mut offset) = logs::read(&path, &query)?;
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let mut print = |entries: &[logs::Entry], stdout: &mut std::io::StdoutLock<'_>| -> Result<()> {
        for entry in entries {
            let mut text = Vec::new();
            if args.timestamps {
                text.extend_from_slice(entry.time.as_bytes());
                text.push(b' ');
            }
            text.extend_from_slice(&entry.text);
            match entry.stream {
                Stream::Stdout => stdout.write_all(&text)?,
                Stream::Stderr => stderr.write_all(&text)?,
            }
        }
        stdout.flush()?;
        Ok(())
    };
    print(&entries, &mut stdout)?;
    if !args.follow {
        return Ok(0);
    }
    loop {
        let running = engine
            .peek(&id)
            .map(|r| {
                matches!(r.state.status, Status::Running | Status::Paused | Status::Restarting)
            })
            .unwrap_or(false);
        let (mut more, next) = logs::read_from(&path, offset)?;
        offset = next;
        if query.until.is_some() {
            logs::filter(&mut more, &Query { tail: None, ..query.clone() });
        }
        print(&more, &mut stdout)?;
        if !running && more.is_empty() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An environment from `--env-file`s' lines, then `-e` values; a bare KEY takes this
/// process's value (and is left out when unset), as Docker's client does.
fn environment(files: &[PathBuf], entries: &[String]) -> Result<Vec<String>> {
    let mut env = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read env file {}", file.display()))?;
        env.extend(berth_engine::options::parse_env_file(&text));
    }
    for entry in entries {
        if entry.contains('=') {
            env.push(entry.clone());
        } else if let Ok(value) = std::env::var(entry) {
            env.push(format!("{entry}={value}"));
        }
    }
    Ok(env)
}

/// Set in the environment of the keeper an `exec -d` leaves behind.
const EXEC_KEEPER: &str = "BERTH_EXEC_KEEPER";

/// `exec -d`: the process is started by a keeper (this binary again, in a session of its
/// own) that outlives the command and waits for it, so that its exit code is kept (an
/// `exec_die` event). This command returns once the process runs, or with the keeper's
/// error and exit code (126, 127...) when it could not start.
fn exec_detached() -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let mut keeper = std::process::Command::new("/proc/self/exe")
        .arg0("berth")
        .args(std::env::args_os().skip(1))
        .env(EXEC_KEEPER, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .context("cannot start the exec's keeper")?;
    let mut said = String::new();
    if let Some(mut out) = keeper.stdout.take() {
        let _ = out.read_to_string(&mut said);
    }
    if said.trim() == "started" {
        // It lives on; whoever inherits it reaps it.
        std::mem::forget(keeper);
        return Ok(0);
    }
    let code = keeper.wait()?.code().unwrap_or(125);
    if !said.trim().is_empty() {
        eprintln!("Error: {}", said.trim());
    }
    Ok(code)
}

pub fn exec(global: &Global, args: ExecArgs) -> Result<i32> {
    crate::runc::protect_binary()?;
    let keeper = args.detach && std::env::var_os(EXEC_KEEPER).is_some();
    if args.detach && !keeper {
        return exec_detached();
    }
    let engine = engine(global)?;
    if !args.interactive && !args.detach {
        // Docker's exec without -i gives the process no input.
        let null = std::fs::File::open("/dev/null")?;
        berth_sys::process::dup_onto(std::os::fd::AsRawFd::as_raw_fd(&null), 0)?;
    }
    let request = ExecRequest {
        command: args.args[1..].to_vec(),
        env: environment(&args.env_file, &args.env)?,
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        tty: args.tty,
        detach: args.detach,
        privileged: args.privileged,
    };
    if !keeper {
        return Ok(engine.exec(&args.args[0], request)?);
    }
    // The keeper: its stdout is the pipe the command reads to its end. The process gets
    // no input or output (as Docker's exec -d), the pipe is kept aside to say "started"
    // (or why not), and the keeper waits.
    // A close-on-exec copy: the process never sees it.
    let report = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let null = std::fs::File::options().read(true).write(true).open("/dev/null")?;
    for fd in [0, 1, 2] {
        berth_sys::process::dup_onto(std::os::fd::AsRawFd::as_raw_fd(&null), fd)?;
    }
    let report = std::cell::RefCell::new(Some(report));
    let mut started = || {
        // Written and closed: the command's read ends here.
        if let Some(mut pipe) = report.borrow_mut().take() {
            let _ = pipe.write_all(b"started\n");
        }
    };
    let outcome = engine.exec_kept(&args.args[0], request, Some(&mut started));
    if let (Err(err), Some(mut pipe)) = (&outcome, report.borrow_mut().take()) {
        let _ = pipe.write_all(err.to_string().as_bytes());
    }
    Ok(outcome?)
}

pub fn attach(global: &Global, args: AttachArgs) -> Result<i32> {
    let engine = engine(global)?;
    let id = engine.resolve_id(&args.container)?;
    let record = engine.peek(&id)?;
    if record.state.status != Status::Running {
        bail!("you cannot attach to a stopped container, start it first");
    }
    let stream = berth_engine::monitor::connect(&global.root.join("containers").join(&id))?;
    relay(
        &engine,
        stream,
        &id,
        !args.no_stdin && record.options.interactive,
        record.options.tty,
        &args.options,
    )
}

/// Relays between this terminal and a container's monitor until the container exits;
/// returns its exit code. Signals sent to this command go to the container (Docker's
/// `--sig-proxy`); with a terminal, it is put in raw mode and its size follows along.
fn relay(
    engine: &Engine,
    stream: UnixStream,
    id: &str,
    stdin: bool,
    tty: bool,
    options: &AttachOptions,
) -> Result<i32> {
    use berth_sys::nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let detach_keys = parse_detach_keys(&options.detach_keys)?;
    let detached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let proxied = [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ];
    let mut set = SigSet::empty();
    for s in proxied {
        set.add(s);
    }
    let raw = if tty && std::io::stdin().is_terminal() { RawMode::enter() } else { None };
    if raw.is_none() && options.sig_proxy {
        berth_sys::nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let root = engine.root().to_owned();
        let id = id.to_owned();
        std::thread::spawn(move || {
            let Ok(engine) = Engine::open(&root) else { return };
            while let Ok(signal) = set.wait() {
                let _ = engine.kill(&id, signal.as_str());
            }
        });
    }
    if tty && std::io::stdout().is_terminal() {
        let writer = writer.clone();
        std::thread::spawn(move || {
            let mut last = None;
            loop {
                if let Ok(size) = berth_sys::tty::window_size(std::io::stdout().as_fd()) {
                    if last != Some((size.rows, size.cols)) {
                        last = Some((size.rows, size.cols));
                        let mut payload = size.rows.to_be_bytes().to_vec();
                        payload.extend_from_slice(&size.cols.to_be_bytes());
                        let Ok(mut w) = writer.lock() else { return };
                        if attach::write_frame(&mut *w, attach::RESIZE, &payload).is_err() {
                            return;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }
    if stdin {
        let writer = writer.clone();
        let detached = detached.clone();
        let mut matcher = DetachMatcher { keys: detach_keys, matched: 0 };
        std::thread::spawn(move || {
            let mut input = std::io::stdin().lock();
            let mut buffer = [0u8; 8192];
            loop {
                match input.read(&mut buffer) {
                    Ok(0) | Err(_) => {
                        if let Ok(mut w) = writer.lock() {
                            let _ = attach::write_frame(&mut *w, attach::STDIN_EOF, &[]);
                        }
                        return;
                    }
                    Ok(n) => {
                        let (pass, detach) = matcher.feed(&buffer[..n]);
                        let Ok(mut w) = writer.lock() else { return };
                        if !pass.is_empty()
                            && attach::write_frame(&mut *w, attach::STDIN, &pass).is_err()
                        {
                            return;
                        }
                        if detach {
                            // Leave the container running: close our side of the attach.
                            detached.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = w.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut reader = stream;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        match attach::read_frame(&mut reader) {
            Ok(Some((attach::STDOUT, data))) => {
                stdout.write_all(&data)?;
                stdout.flush()?;
            }
            Ok(Some((attach::STDERR, data))) => {
                stderr.write_all(&data)?;
            }
            Ok(Some((attach::EXIT, code))) if code.len() == 4 => {
                drop(raw);
                return Ok(i32::from_be_bytes([code[0], code[1], code[2], code[3]]));
            }
            Ok(Some((attach::ERROR, message))) => {
                drop(raw);
                bail!("{}", String::from_utf8_lossy(&message));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) if detached.load(std::sync::atomic::Ordering::SeqCst) => {
                drop(raw);
                eprintln!("\r\nread escape sequence");
                return Ok(0);
            }
            Ok(None) | Err(_) => {
                drop(raw);
                // The monitor went away without a word: ask the record.
                let code = engine.wait_exit(id, Some(Duration::from_secs(5)))?.unwrap_or(255);
                return Ok(code);
            }
        }
    }
}

struct RawMode {
    original: berth_sys::nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use berth_sys::nix::sys::termios;
        let stdin = std::io::stdin();
        let original = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use berth_sys::nix::sys::termios;
        let _ =
            termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, &self.original);
    }
}

// ----- inspect -----

/// One mount as Docker's inspect and list show it.
pub(crate) fn mount_json(m: &berth_engine::container::MountRecord) -> Value {
    let mut value = json!({"Type": m.kind, "Name": m.name, "Source": m.source,
        "Destination": m.destination, "RW": !m.read_only, "Mode": "",
        "Propagation": if m.kind == "bind" { "rprivate" } else { "" }});
    if m.kind == "volume" {
        value["Driver"] = json!("local");
        value["Mode"] = json!("z");
    }
    value
}

/// `container_json` with what only the engine knows: the image's layers under the
/// container's upper directory (`GraphDriver.Data.LowerDir`).
pub(crate) fn container_json_of(engine: &Engine, record: &Record) -> Value {
    let mut value = container_json(record, &engine.container_dir(&record.id));
    let lower = engine
        .images()
        .ok()
        .and_then(|store| store.resolve(&record.image_id).ok().map(|image| (store, image)))
        .and_then(|(store, image)| store.lower_dirs(&image).ok());
    if let Some(dirs) = lower {
        let joined = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
        value["GraphDriver"]["Data"]["LowerDir"] = json!(joined);
    }
    value
}

pub(crate) fn container_json(record: &Record, dir: &Path) -> Value {
    let s = &record.state;
    let o = &record.options;
    let mut ports = serde_json::Map::new();
    for p in record.network.iter().flat_map(|n| n.ports.iter()) {
        let key = format!("{}/{}", p.container_port, p.protocol);
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}));
        }
    }
    for exposed in &record.exposed_ports {
        ports.entry(exposed.clone()).or_insert(Value::Null);
    }
    let net = record.network.clone().unwrap_or_default();
    // On a user network a container also answers to its short ID, and Docker lists it
    // among the aliases (Compose looks for it there).
    let aliases = |given: &[String], network: &str| -> Value {
        if matches!(network, "bridge" | "host" | "none" | "") || network.starts_with("container:") {
            return if given.is_empty() { Value::Null } else { json!(given) };
        }
        let mut all = given.to_vec();
        all.push(record.short_id().to_owned());
        json!(all)
    };
    let mut networks = if net.network.is_empty() {
        // Not started yet: what it will have.
        json!({ record.options.network.clone(): {
            "Aliases": aliases(&o.network_aliases, &record.options.network),
            "IPAMConfig": o.ip.as_ref().map(|ip| json!({"IPv4Address": ip})),
        } })
    } else {
        json!({ net.network.clone(): {
            "IPAddress": net.ip, "IPPrefixLen": net.prefix_len, "Gateway": net.gateway, "MacAddress": net.mac,
            "Aliases": aliases(&o.network_aliases, &net.network),
            "IPAMConfig": o.ip.as_ref().map(|ip| json!({"IPv4Address": ip})),
        } })
    };
    for connection in &o.connected {
        let state = record.extra_networks.iter().find(|n| n.network == connection.network);
        networks[connection.network.as_str()] = match state {
            Some(s) => json!({
                "IPAddress": s.ip, "IPPrefixLen": s.prefix_len, "Gateway": s.gateway, "MacAddress": s.mac,
                "Aliases": aliases(&connection.aliases, &connection.network),
                "IPAMConfig": connection.ip.as_ref().map(|ip| json!({"IPv4Address": ip})),
            }),
            None => json!({
                "Aliases": aliases(&connection.aliases, &connection.network),
                "IPAMConfig": connection.ip.as_ref().map(|ip| json!({"IPv4Address": ip})),
            }),
        };
    }
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let throttles = |kind: &str| {
        o.device_throttles
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| json!({"Path": t.device, "Rate": t.rate}))
            .collect::<Vec<_>>()
    };
    let namespace_mode = |mode: &str, default: &str| {
        if mode.is_empty() {
            default.to_owned()
        } else {
            mode.to_owned()
        }
    };
    let mut log_config = serde_json::Map::new();
    if let Some(size) = o.log_max_size {
        log_config.insert("max-size".into(), json!(size.to_string()));
    }
    if let Some(files) = o.log_max_files {
        log_config.insert("max-file".into(), json!(files.to_string()));
    }
    let binds: Vec<String> = record
        .mounts
        .iter()
        .filter(|m| m.kind == "bind" || (m.kind == "volume" && !m.anonymous))
        .map(|m| {
            let source = if m.kind == "bind" { &m.source } else { &m.name };
            format!("{source}:{}{}", m.destination, if m.read_only { ":ro" } else { "" })
        })
        .collect();
    let tmpfs: serde_json::Map<String, Value> = record
        .mounts
        .iter()
        .filter(|m| m.kind == "tmpfs")
        .map(|m| (m.destination.clone(), json!(m.options.join(","))))
        .collect();
    let volumes: serde_json::Map<String, Value> = record
        .mounts
        .iter()
        .filter(|m| m.kind == "volume" && m.anonymous)
        .map(|m| (m.destination.clone(), json!({})))
        .collect();
    let exposed: serde_json::Map<String, Value> =
        record.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
    let mut host_config = json!({
        "Binds": if binds.is_empty() { Value::Null } else { json!(binds) },
        "LogConfig": {"Type": if o.log_driver.is_empty() { "json-file" } else { o.log_driver.as_str() }, "Config": log_config},
        "Dns": o.dns,
        "ExtraHosts": if o.add_hosts.is_empty() { Value::Null } else { json!(o.add_hosts) },
        "Tmpfs": if tmpfs.is_empty() { Value::Null } else { Value::Object(tmpfs) },
        "ShmSize": o.shm_size.unwrap_or(64 << 20),
        "SecurityOpt": if o.security_opt.is_empty() { Value::Null } else { json!(o.security_opt) },
        "Init": o.init,
    });
    let more = json!({
        "Ulimits": o.ulimits.iter().map(|u| json!({"Name": u.name, "Soft": u.soft as i64, "Hard": u.hard as i64})).collect::<Vec<_>>(),
        "Sysctls": o.sysctls,
        "IpcMode": namespace_mode(&o.ipc, "private"),
        "PidMode": o.pid,
        "UTSMode": o.uts,
        "CgroupnsMode": namespace_mode(&o.cgroupns, "private"),
        "GroupAdd": if o.group_add.is_empty() { Value::Null } else { json!(o.group_add) },
        "CpuShares": o.cpu_shares.unwrap_or(0),
        "CpuQuota": o.cpu_quota.unwrap_or(0),
        "CpuPeriod": o.cpu_period.unwrap_or(0),
        "CpusetCpus": o.cpuset_cpus.clone().unwrap_or_default(),
        "CpusetMems": o.cpuset_mems.clone().unwrap_or_default(),
        "MemorySwap": o.memory_swap.unwrap_or(0),
        "MemoryReservation": o.memory_reservation.unwrap_or(0),
        "OomKillDisable": o.oom_kill_disable,
        "BlkioWeight": o.blkio_weight.unwrap_or(0),
        "BlkioDeviceReadBps": throttles("read_bps"),
        "BlkioDeviceWriteBps": throttles("write_bps"),
        "BlkioDeviceReadIOps": throttles("read_iops"),
        "BlkioDeviceWriteIOps": throttles("write_iops"),
        "NetworkMode": record.options.network,
        "AutoRemove": record.options.auto_remove,
        "Privileged": record.options.privileged,
        "Devices": record.options.devices.iter().map(|d| json!({"PathOnHost": d.host, "PathInContainer": d.container, "CgroupPermissions": d.permissions})).collect::<Vec<_>>(),
        "ReadonlyRootfs": record.options.read_only,
        "Memory": record.options.memory.unwrap_or(0),
        "NanoCpus": record.options.cpus.map(|c| (c * 1e9) as i64).unwrap_or(0),
        "PidsLimit": record.options.pids_limit,
        "CapAdd": record.options.cap_add,
        "CapDrop": record.options.cap_drop,
        "RestartPolicy": {"Name": if record.options.restart.name.is_empty() { "no" } else { record.options.restart.name.as_str() }, "MaximumRetryCount": record.options.restart.max_retries},
        "PortBindings": record.options.publish.iter().map(|p| (format!("{}/{}", p.container_port, p.protocol), json!([{"HostIp": p.host_ip.clone().unwrap_or_default(), "HostPort": if p.host_port == 0 { String::new() } else { p.host_port.to_string() }}]))).collect::<serde_json::Map<_, _>>(),
    });
    if let (Some(all), Value::Object(more)) = (host_config.as_object_mut(), more) {
        all.extend(more);
    }
    // The rest of Docker's HostConfig, as berth has it (fixed where berth has no such knob).
    let (masked, readonly) = if o.privileged {
        (Value::Null, Value::Null)
    } else {
        (json!(berth_task::defaults::MASKED_PATHS), json!(berth_task::defaults::READONLY_PATHS))
    };
    let fixed = json!({
        "BlkioWeightDevice": [], "Cgroup": "", "CgroupParent": "", "ConsoleSize": [0, 0],
        "ContainerIDFile": "", "CpuCount": 0, "CpuPercent": 0, "CpuRealtimePeriod": 0,
        "CpuRealtimeRuntime": 0, "DeviceCgroupRules": null, "DeviceRequests": null,
        "DnsOptions": [], "DnsSearch": [], "IOMaximumBandwidth": 0, "IOMaximumIOps": 0,
        "Isolation": "", "KernelMemory": 0, "KernelMemoryTCP": 0, "Links": null,
        "MaskedPaths": masked, "ReadonlyPaths": readonly, "MemorySwappiness": null,
        "OomScoreAdj": 0, "PublishAllPorts": o.publish_all, "Runtime": "berth",
        "UsernsMode": "", "VolumeDriver": "", "VolumesFrom": null,
    });
    if let (Some(all), Value::Object(fixed)) = (host_config.as_object_mut(), fixed) {
        for (key, value) in fixed {
            all.entry(key).or_insert(value);
        }
    }
    let mut value = json!({
        "Id": record.id,
        "Created": record.created,
        "Path": record.path,
        "Args": record.args,
        "State": {
            "Status": s.status.to_string(),
            "Running": matches!(s.status, Status::Running | Status::Paused),
            "Paused": s.status == Status::Paused,
            "Restarting": s.status == Status::Restarting,
            "OOMKilled": s.oom_killed,
            "Dead": s.status == Status::Dead,
            "Pid": s.pid,
            "ExitCode": s.exit_code,
            "Error": s.error,
            "StartedAt": if s.started_at.is_empty() { "0001-01-01T00:00:00Z" } else { s.started_at.as_str() },
            "FinishedAt": if s.finished_at.is_empty() { "0001-01-01T00:00:00Z" } else { s.finished_at.as_str() },
            "Health": match s.health.as_ref() {
                Some(h) => json!({
                    "Status": h.status,
                    "FailingStreak": h.failing_streak,
                    "Log": h.log.iter().map(|p| json!({"Start": p.start, "End": p.end, "ExitCode": p.exit_code, "Output": p.output})).collect::<Vec<_>>(),
                }),
                // Started with a check that has not reported yet: "starting", as Docker
                // shows it from the start (docker-compose's service_healthy reads it at
                // once and calls a missing one "missing a healthcheck configuration").
                None if record.healthcheck.is_some()
                    && matches!(s.status, Status::Running | Status::Paused | Status::Restarting) =>
                {
                    json!({"Status": "starting", "FailingStreak": 0, "Log": []})
                }
                None => Value::Null,
            },
        },
        "Image": record.image_id,
        "Name": format!("/{}", record.name),
        "RestartCount": s.restart_count,
        "LogPath": if o.log_driver == "none" { String::new() } else { path("container.log") },
        "ResolvConfPath": path("resolv.conf"),
        "HostnamePath": path("hostname"),
        "HostsPath": path("hosts"),
        "Driver": "overlay2",
        "Platform": "linux",
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {"UpperDir": path("upper"), "WorkDir": path("work"), "MergedDir": path("rootfs")},
        },
        "HostConfig": host_config,
        "Mounts": record.mounts.iter().map(mount_json).collect::<Vec<_>>(),
        "Config": {
            "Hostname": record.hostname,
            "Env": record.options.env,
            "Cmd": record.options.command,
            "Image": record.image,
            "WorkingDir": record.options.workdir.clone().unwrap_or_default(),
            "Entrypoint": record.options.entrypoint,
            "Labels": record.options.labels,
            "Tty": record.options.tty,
            "OpenStdin": record.options.interactive,
            "User": record.options.user.clone().unwrap_or_default(),
            "StopSignal": record.stop_signal,
            "Healthcheck": record.healthcheck.as_ref().map(|h| json!({"Test": h.test, "Interval": h.interval, "Timeout": h.timeout, "StartPeriod": h.start_period, "Retries": h.retries})),
            "ExposedPorts": if exposed.is_empty() { Value::Null } else { Value::Object(exposed) },
            "Volumes": if volumes.is_empty() { Value::Null } else { Value::Object(volumes) },
            "MacAddress": o.mac_address.clone().unwrap_or_default(),
        },
        "NetworkSettings": {
            "IPAddress": net.ip,
            "Gateway": net.gateway,
            "MacAddress": net.mac,
            "Ports": ports,
            "Networks": networks,
            "SandboxKey": net.netns,
        },
    });
    // The rest of Docker's fields, fixed where berth has no such thing (SELinux and
    // AppArmor labels, IPv6, exec IDs kept by a daemon).
    let rest = [
        ("", json!({"AppArmorProfile": "", "ExecIDs": null, "MountLabel": "", "ProcessLabel": ""})),
        (
            "Config",
            json!({"Domainname": "", "AttachStdin": false, "AttachStdout": false,
            "AttachStderr": false, "StdinOnce": false, "OnBuild": null}),
        ),
        (
            "NetworkSettings",
            json!({"IPPrefixLen": net.prefix_len, "Bridge": "", "SandboxID": "",
            "HairpinMode": false, "EndpointID": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "IPv6Gateway": "", "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
            "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null}),
        ),
    ];
    for (section, fields) in rest {
        let target = if section.is_empty() { Some(&mut value) } else { value.get_mut(section) };
        if let (Some(Value::Object(target)), Value::Object(fields)) = (target, fields) {
            target.extend(fields);
        }
    }
    value
}

/// A small subset of Go templates: `{{.A.B}}`, `{{json .A}}`, literal text between.
/// `inspect -f`: a Go template over one object.
pub fn render_format(format: &str, value: &Value) -> Result<String> {
    crate::template::Template::parse(format)?.render(value)
}

pub fn inspect(global: &Global, args: InspectArgs) -> Result<i32> {
    let engine = engine(global)?;
    let mut out = Vec::new();
    let mut status = 0;
    let want_images = args.kind.as_deref() != Some("container");
    let want_containers = args.kind.as_deref() != Some("image");
    for name in &args.names {
        let container =
            if want_containers { engine.lock(name).ok().map(|l| l.record) } else { None };
        if let Some(record) = container {
            out.push(container_json_of(&engine, &record));
            continue;
        }
        if want_images {
            let store = crate::images::open_store(global)?;
            if let Ok(image) = store.resolve(name) {
                out.push(crate::images::image_json(&store, &image)?);
                continue;
            }
        }
        eprintln!("Error: No such object: {name}");
        status = 1;
    }
    match &args.format {
        Some(format) if format == "json" => println!("{}", serde_json::to_string(&out)?),
        Some(format) => {
            let template = crate::template::Template::parse(format)?;
            for value in &out {
                println!("{}", template.render(value)?);
            }
        }
        None => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(status)
}

// ----- top, stats, port, rename, diff, commit, cp -----

pub fn top(global: &Global, args: TopArgs) -> Result<i32> {
    let engine = engine(global)?;
    let processes = engine.top(&args.container)?;
    if args.ps_options.is_empty() {
        let mut rows = vec![["UID", "PID", "PPID", "CMD"].map(String::from).to_vec()];
        rows.extend(processes);
        print!("{}", table(&rows));
        return Ok(0);
    }
    // As Docker: the host's ps with the options given, keeping the container's rows.
    let pids: Vec<&str> = processes.iter().map(|row| row[1].as_str()).collect();
    let output = std::process::Command::new("ps")
        .args(&args.ps_options)
        .output()
        .context("cannot run ps (install procps)")?;
    if !output.status.success() {
        bail!(
            "ps {} failed: {}",
            args.ps_options.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let column = header.split_whitespace().position(|h| h == "PID").with_context(|| {
        format!("ps {} shows no PID column: add one (-o pid,...)", args.ps_options.join(" "))
    })?;
    println!("{header}");
    for line in lines {
        if line.split_whitespace().nth(column).is_some_and(|pid| pids.contains(&pid)) {
            println!("{line}");
        }
    }
    Ok(0)
}

pub fn stats(global: &Global, args: StatsArgs) -> Result<i32> {
    let engine = engine(global)?;
    let names: Vec<String> = if args.containers.is_empty() {
        engine
            .list()?
            .into_iter()
            .filter(|r| args.all || r.state.status == Status::Running)
            .map(|r| r.name)
            .collect()
    } else {
        args.containers.clone()
    };
    let listing = crate::template::Listing::parse(
        &args.format,
        &[
            ("ID", "CONTAINER ID"),
            ("CPUPerc", "CPU %"),
            ("MemUsage", "MEM USAGE / LIMIT"),
            ("MemPerc", "MEM %"),
            ("NetIO", "NET I/O"),
            ("BlockIO", "BLOCK I/O"),
        ],
    )?;
    loop {
        let mut templated = Vec::new();
        let first: Vec<_> = names.iter().map(|n| engine.stats(n).ok()).collect();
        let started = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let elapsed = started.elapsed().as_nanos() as f64;
        let mut rows = vec![[
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "NET I/O",
            "BLOCK I/O",
            "PIDS",
        ]
        .map(String::from)
        .to_vec()];
        for (name, before) in names.iter().zip(first) {
            let Ok(record) = engine.peek(&engine.resolve_id(name)?) else { continue };
            let Ok(after) = engine.stats(name) else { continue };
            let cpu = before
                .map(|b| {
                    (after.cpu.usage.total.saturating_sub(b.cpu.usage.total)) as f64 / elapsed
                        * 100.0
                })
                .unwrap_or(0.0);
            let usage = after.memory.usage.usage;
            let limit = match after.memory.usage.limit {
                0 | u64::MAX => host_memory(),
                l if l > host_memory() => host_memory(),
                l => l,
            };
            let percent = if limit > 0 { usage as f64 / limit as f64 * 100.0 } else { 0.0 };
            // Docker's forms: received / sent over the container's interfaces, and bytes
            // read / written to block devices by its cgroup.
            let (rx, tx) = net_io(record.state.pid);
            let io_bytes = |op: &str| -> u64 {
                after
                    .blkio
                    .io_service_bytes_recursive
                    .iter()
                    .filter(|e| e.op.eq_ignore_ascii_case(op))
                    .map(|e| e.value)
                    .sum()
            };
            let net = format!("{} / {}", human_size(rx), human_size(tx));
            let block =
                format!("{} / {}", human_size(io_bytes("Read")), human_size(io_bytes("Write")));
            if !matches!(listing, crate::template::Listing::Table) {
                templated.push(json!({"BlockIO": block, "CPUPerc": format!("{cpu:.2}%"), "Container": name, "ID": record.short_id(), "MemPerc": format!("{percent:.2}%"), "MemUsage": format!("{} / {}", human_binary(usage), human_binary(limit)), "Name": record.name, "NetIO": net, "PIDs": after.pids.current.to_string()}));
                continue;
            }
            rows.push(vec![
                record.short_id().to_owned(),
                record.name.clone(),
                format!("{cpu:.2}%"),
                format!("{} / {}", human_binary(usage), human_binary(limit)),
                format!("{percent:.2}%"),
                net,
                block,
                after.pids.current.to_string(),
            ]);
        }
        if matches!(listing, crate::template::Listing::Table) {
            print!("{}", table(&rows));
        } else {
            print!("{}", listing.render(&templated)?);
        }
        if args.no_stream {
            return Ok(0);
        }
    }
}

/// Bytes received and sent by a process's network namespace, loopback left out.
pub(crate) fn net_io(pid: i32) -> (u64, u64) {
    if pid <= 0 {
        return (0, 0);
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, fields) = line.split_once(':')?;
            if name.trim() == "lo" {
                return None;
            }
            let numbers: Vec<u64> =
                fields.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            Some((*numbers.first()?, *numbers.get(8)?))
        })
        .fold((0, 0), |(r, t), (a, b)| (r + a, t + b))
}

/// The machine's memory in bytes (MemTotal).
pub(crate) fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn human_binary(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2}{}", units[unit])
}

pub fn port(global: &Global, args: PortArgs) -> Result<i32> {
    let engine = engine(global)?;
    let ports = engine.ports(&args.container)?;
    let wanted =
        args.port
            .as_deref()
            .map(|p| if p.contains('/') { p.to_owned() } else { format!("{p}/tcp") });
    let mut found = false;
    for p in ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        match &wanted {
            Some(w) if *w == key => println!("{}:{}", p.host_ip, p.host_port),
            Some(_) => continue,
            None => println!("{key} -> {}:{}", p.host_ip, p.host_port),
        }
        found = true;
    }
    if !found && wanted.is_some() {
        bail!("no public port {} published for {}", wanted.unwrap_or_default(), args.container);
    }
    Ok(0)
}

pub fn rename(global: &Global, args: RenameArgs) -> Result<i32> {
    engine(global)?.rename(&args.container, &args.new_name)?;
    Ok(0)
}

pub fn diff(global: &Global, args: One) -> Result<i32> {
    for change in engine(global)?.diff(&args.container)? {
        println!("{change}");
    }
    Ok(0)
}

pub fn commit(global: &Global, args: CommitArgs) -> Result<i32> {
    let engine = engine(global)?;
    let changes = args.changes.clone();
    let digest = engine.commit(
        &args.container,
        args.reference.as_deref(),
        args.message.as_deref(),
        args.author.as_deref(),
        move |run| crate::images::apply_changes(run, &changes).map_err(|e| format!("{e:#}")),
        args.pause,
    )?;
    println!("{digest}");
    Ok(0)
}

fn split_container_path(text: &str) -> Option<(&str, &str)> {
    if text.starts_with('/') || text.starts_with('.') {
        return None;
    }
    text.split_once(':').filter(|(c, p)| !c.is_empty() && !p.is_empty())
}

pub fn cp(global: &Global, args: CpArgs) -> Result<i32> {
    let engine = engine(global)?;
    match (split_container_path(&args.source), split_container_path(&args.destination)) {
        (Some((container, path)), None) if args.destination == "-" => {
            let stdout = std::io::stdout();
            if std::io::IsTerminal::is_terminal(&stdout) {
                bail!("refusing to write a tar archive to a terminal: redirect the output");
            }
            let mut out = std::io::BufWriter::new(stdout.lock());
            engine.copy_out_tar(container, Path::new(path), &mut out)?;
            std::io::Write::flush(&mut out)?;
        }
        (Some((container, path)), None) => {
            engine.copy_out(container, Path::new(path), Path::new(&args.destination))?;
        }
        (None, Some((container, path))) if args.source == "-" => {
            engine.copy_in_tar(&mut std::io::stdin().lock(), container, Path::new(path))?;
        }
        (None, Some((container, path))) => {
            engine.copy_in(Path::new(&args.source), container, Path::new(path))?;
        }
        (Some(_), Some(_)) => {
            bail!("copying between containers is not supported; copy through the host")
        }
        (None, None) => bail!("one of SOURCE and DESTINATION must be CONTAINER:PATH"),
    }
    Ok(0)
}

// ----- volumes and networks -----

pub fn volume(global: &Global, command: VolumeCommand) -> Result<i32> {
    let engine = engine(global)?;
    match command {
        VolumeCommand::Create { name, label } => {
            let volume = engine.volume_create(name.as_deref(), labels(&label))?;
            println!("{}", volume.name);
        }
        VolumeCommand::Ls { quiet, format } => {
            let volumes = engine.volume_list()?;
            let listing = crate::template::Listing::parse(&format, &[("Name", "VOLUME NAME")])?;
            if quiet {
                volumes.iter().for_each(|v| println!("{}", v.name));
            } else if !matches!(listing, crate::template::Listing::Table) {
                let rows: Vec<Value> = volumes
                    .iter()
                    .map(|v| {
                        let labels = v.labels.iter().map(|(k, l)| format!("{k}={l}")).collect::<Vec<_>>().join(",");
                        json!({"Driver": v.driver, "Labels": labels, "Links": "N/A", "Mountpoint": v.mountpoint, "Name": v.name, "Scope": "local", "Size": "N/A"})
                    })
                    .collect();
                print!("{}", listing.render(&rows)?);
            } else {
                let mut rows = vec![vec!["DRIVER".to_owned(), "VOLUME NAME".to_owned()]];
                rows.extend(volumes.iter().map(|v| vec![v.driver.clone(), v.name.clone()]));
                print!("{}", table(&rows));
            }
        }
        VolumeCommand::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                let v = engine.volume_inspect(name)?;
                out.push(json!({"Name": v.name, "Driver": v.driver, "Mountpoint": v.mountpoint, "CreatedAt": v.created_at, "Labels": v.labels, "Scope": "local", "Options": {}}));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm { force, names } => {
            return each(&names, |name| engine.volume_remove(name, force));
        }
        VolumeCommand::Prune { all, force: _ } => {
            let removed = engine.volume_prune(all)?;
            println!("Deleted Volumes:");
            removed.iter().for_each(|n| println!("{n}"));
        }
    }
    Ok(0)
}

pub fn network(global: &Global, command: NetworkCommand) -> Result<i32> {
    let engine = engine(global)?;
    match command {
        NetworkCommand::Create { name, subnet, driver, label } => {
            if driver != "bridge" {
                bail!("only bridge networks are supported (driver {driver:?})");
            }
            let network = engine.network_create(&name, subnet.as_deref(), labels(&label))?;
            println!("{}", network.id);
        }
        NetworkCommand::Ls { quiet, format } => {
            let networks = engine.network_list()?;
            let listing = crate::template::Listing::parse(&format, &[("ID", "NETWORK ID")])?;
            if quiet {
                networks.iter().for_each(|n| println!("{}", &n.id[..12]));
            } else if !matches!(listing, crate::template::Listing::Table) {
                let mut rows: Vec<Value> = networks
                    .iter()
                    .map(|n| {
                        let labels = n.labels.iter().map(|(k, l)| format!("{k}={l}")).collect::<Vec<_>>().join(",");
                        json!({"CreatedAt": n.created, "Driver": "bridge", "ID": &n.id[..12], "IPv6": "false", "Internal": "false", "Labels": labels, "Name": n.name, "Scope": "local"})
                    })
                    .collect();
                for (name, driver) in [("host", "host"), ("none", "null")] {
                    rows.push(json!({"CreatedAt": "", "Driver": driver, "ID": "-", "IPv6": "false", "Internal": "false", "Labels": "", "Name": name, "Scope": "local"}));
                }
                print!("{}", listing.render(&rows)?);
            } else {
                let mut rows =
                    vec![["NETWORK ID", "NAME", "DRIVER", "SCOPE"].map(String::from).to_vec()];
                rows.extend(networks.iter().map(|n| {
                    vec![n.id[..12].to_owned(), n.name.clone(), "bridge".into(), "local".into()]
                }));
                rows.push(vec!["-".into(), "host".into(), "host".into(), "local".into()]);
                rows.push(vec!["-".into(), "none".into(), "null".into(), "local".into()]);
                print!("{}", table(&rows));
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                let n = engine.network_inspect(name)?;
                let containers: serde_json::Map<String, Value> = engine
                    .list()?
                    .into_iter()
                    .filter(|r| r.state.status == Status::Running)
                    .filter_map(|r| {
                        let s = r.networks().find(|s| s.network == n.name)?.clone();
                        Some((r.id.clone(), json!({"Name": r.name, "IPv4Address": format!("{}/{}", s.ip, s.prefix_len), "MacAddress": s.mac})))
                    })
                    .collect();
                out.push(json!({"Name": n.name, "Id": n.id, "Created": n.created, "Driver": "bridge", "Scope": "local",
                    "IPAM": {"Driver": "host-local", "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
                    "Options": {"com.docker.network.bridge.name": n.bridge}, "Labels": n.labels, "Containers": containers}));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { names } => return each(&names, |name| engine.network_remove(name)),
        NetworkCommand::Connect { network, container, alias, ip } => {
            engine.network_connect(&network, &container, &alias, ip.as_deref())?
        }
        NetworkCommand::Disconnect { network, container, force: _ } => {
            engine.network_disconnect(&network, &container)?
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_as_docker_writes_them() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![0x10, 0x11]);
        assert_eq!(parse_detach_keys("ctrl-a,d").unwrap(), vec![0x01, b'd']);
        assert_eq!(parse_detach_keys("ctrl-@,ctrl-_").unwrap(), vec![0x00, 0x1f]);
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("alt-x").is_err());
        let mut matcher = DetachMatcher { keys: vec![0x10, 0x11], matched: 0 };
        // A partial sequence is held back, then passed on when it turns out not to be one.
        assert_eq!(matcher.feed(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(matcher.feed(b"c"), (b"\x10c".to_vec(), false));
        assert_eq!(matcher.feed(b"x\x10\x10"), (b"x\x10".to_vec(), false));
        assert_eq!(matcher.feed(b"\x11rest"), (Vec::new(), true));
    }

    #[test]
    fn formats_pick_fields() {
        let value = json!({"State": {"Pid": 42, "Status": "running"}, "Config": {"Env": ["A=1"]}});
        assert_eq!(render_format("{{.State.Pid}}", &value).unwrap(), "42");
        assert_eq!(
            render_format("pid={{.State.Pid}} {{.State.Status}}", &value).unwrap(),
            "pid=42 running"
        );
        assert_eq!(render_format("{{json .Config.Env}}", &value).unwrap(), "[\"A=1\"]");
        assert_eq!(render_format("{{.Nope}}", &value).unwrap(), "<no value>");
        assert!(render_format("{{.State", &value).is_err());
        assert!(render_format("{{range .X}}", &value).is_err());
        assert_eq!(render_format("{{range .Config.Env}}{{.}} {{end}}", &value).unwrap(), "A=1 ");
    }

    #[test]
    fn container_paths() {
        assert_eq!(split_container_path("web:/etc/hosts"), Some(("web", "/etc/hosts")));
        assert_eq!(split_container_path("/tmp/a:b"), None);
        assert_eq!(split_container_path("./x"), None);
        assert_eq!(split_container_path("file"), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000.0);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((parse_time("10m").unwrap() - (now - 600.0)).abs() < 5.0);
        assert!(parse_time("yesterday").is_err());
    }
}
