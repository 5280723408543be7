//! Container networking. Bridge networks are made by the standard CNI plugins
//! (`bridge` with `host-local` IP management, whose reservations live on disk and so
//! survive restarts), run as the CNI spec says; the loopback is up in every namespace
//! berth makes. Outbound masquerade and
//! published ports are berth's own nftables table (`ip berth`): one `ports` map from
//! protocol and host port to container address and port, looked up for traffic to any
//! local address, including 127.0.0.1 (the bridge gets `route_localnet` and such
//! connections are masqueraded) and a container's own published port (hairpin).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::container::{NetworkState, PortBinding, Record, Status};
use crate::options::{valid_volume_name, RunOptions};
use crate::spec::NetNs;
use crate::{invalid, io, write_atomic, Engine, Error, Result};

pub const DEFAULT_NETWORK: &str = "bridge";
const DEFAULT_BRIDGE: &str = "berth0";
/// The root whose default bridge is `berth0`; other roots get a bridge of their own.
const DEFAULT_ROOT: &str = "/var/lib/berth";

/// Docker's address pool for bridge networks: 172.17-31.0.0/16, then 192.168.N.0/20.
fn default_pool() -> impl Iterator<Item = String> {
    (17..=31)
        .map(|n| format!("172.{n}.0.0/16"))
        .chain((0..16).map(|n| format!("192.168.{}.0/20", n * 16)))
}

/// `a.b.c.d/p` as (network address, prefix).
fn parse_cidr(subnet: &str) -> Option<(u32, u8)> {
    let (addr, prefix) = subnet.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Some((u32::from(addr) & mask, prefix))
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let prefix = a.1.min(b.1);
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    a.0 & mask == b.0 & mask
}

/// The IPv4 routes of this network namespace's main table (the default route left out):
/// a subnet that overlaps one would make the host's traffic go two ways.
fn host_routes() -> Vec<(u32, u8)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
            // The kernel prints the network-order words as host-order numbers.
            let destination = u32::from_be(destination);
            let prefix = mask.count_ones() as u8;
            (prefix > 0).then_some((destination, prefix))
        })
        .collect()
}

/// The first of `candidates` that overlaps nothing in `taken`.
fn free_subnet(candidates: impl Iterator<Item = String>, taken: &[(u32, u8)]) -> Option<String> {
    candidates.into_iter().find(|candidate| {
        parse_cidr(candidate).is_some_and(|c| !taken.iter().any(|t| overlaps(c, *t)))
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub bridge: String,
    pub subnet: String,
    pub gateway: String,
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `10.88.0.0/16` → (`10.88.0.1`, prefix 16).
fn gateway_of(subnet: &str) -> Result<(String, u8)> {
    let (addr, prefix) = subnet
        .split_once('/')
        .ok_or_else(|| invalid(format!("subnet {subnet:?}"), "expected ADDRESS/PREFIX"))?;
    let addr: std::net::Ipv4Addr =
        addr.parse().map_err(|_| invalid(format!("subnet {subnet:?}"), "not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| invalid(format!("subnet {subnet:?}"), "the prefix must be 8 to 30"))?;
    let mask = u32::MAX << (32 - prefix);
    let network = u32::from(addr) & mask;
    Ok((std::net::Ipv4Addr::from(network + 1).to_string(), prefix))
}

impl Engine {
    fn networks_dir(&self) -> PathBuf {
        self.root.join("networks")
    }

    /// This root's nftables table: `berth` for /var/lib/berth, `berth_XXXXXXXX` for
    /// another root, so that two roots never change each other's rules.
    pub(crate) fn nft_table(&self) -> String {
        match root_suffix(&self.root) {
            None => "berth".into(),
            Some(suffix) => format!("berth_{suffix}"),
        }
    }

    /// The default bridge network, chosen on first use and kept: its subnet is the first of
    /// Docker's pool that overlaps no route of the host and no other network of this root,
    /// and a root other than /var/lib/berth gets a bridge of its own, so that two roots on
    /// one host never share addresses.
    fn default_network(&self) -> Result<Network> {
        let path = self.networks_dir().join("default.json");
        if let Ok(data) = std::fs::read(&path) {
            return serde_json::from_slice(&data)
                .map_err(|e| Error::Network(format!("{} is corrupt: {e}", path.display())));
        }
        let _lock = self.network_lock()?;
        if let Ok(data) = std::fs::read(&path) {
            return serde_json::from_slice(&data)
                .map_err(|e| Error::Network(format!("{} is corrupt: {e}", path.display())));
        }
        let mut taken = host_routes();
        taken.extend(self.user_networks().iter().filter_map(|n| parse_cidr(&n.subnet)));
        let subnet = free_subnet(default_pool(), &taken).ok_or_else(|| {
            Error::Network(
                "every subnet of the pool (172.17-31.0.0/16, 192.168.0-240.0/20) overlaps a route of this host".into(),
            )
        })?;
        let (gateway, _) = gateway_of(&subnet)?;
        // Interface names have at most 15 characters.
        let bridge = match root_suffix(&self.root) {
            None => DEFAULT_BRIDGE.to_owned(),
            Some(suffix) => format!("berth{suffix}"),
        };
        let network = Network {
            name: DEFAULT_NETWORK.into(),
            id: "0".repeat(64),
            bridge,
            subnet,
            gateway,
            created: crate::now(),
            labels: BTreeMap::new(),
        };
        let data = serde_json::to_vec_pretty(&network).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&path, &data)?;
        Ok(network)
    }

    /// The networks `network create` made.
    fn user_networks(&self) -> Vec<Network> {
        let dir = self.networks_dir().join("defs");
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().trim_end_matches(".json").to_owned();
                if let Ok(network) = self.network_inspect(&name) {
                    out.push(network);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn network_inspect(&self, name: &str) -> Result<Network> {
        if name == DEFAULT_NETWORK {
            return self.default_network();
        }
        let path = self.networks_dir().join("defs").join(format!("{name}.json"));
        let data = std::fs::read(&path)
            .map_err(|_| Error::Network(format!("network {name} not found")))?;
        serde_json::from_slice(&data)
            .map_err(|e| Error::Network(format!("{} is corrupt: {e}", path.display())))
    }

    pub fn network_list(&self) -> Result<Vec<Network>> {
        let mut out = vec![self.default_network()?];
        out.extend(self.user_networks());
        Ok(out)
    }

    /// `network create`: a bridge network with its own subnet (the next free 10.89.N.0/24
    /// unless one is given).
    pub fn network_create(
        &self,
        name: &str,
        subnet: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Network> {
        if !valid_volume_name(name) || matches!(name, "none" | "host" | DEFAULT_NETWORK) {
            return Err(invalid(
                format!("network name {name:?}"),
                "use [a-zA-Z0-9][a-zA-Z0-9_.-]*, not none, host or bridge",
            ));
        }
        // Chosen before the lock is taken: the first use of the default network takes it.
        let default = self.default_network()?;
        let _lock = self.network_lock()?;
        if self.network_inspect(name).is_ok() {
            return Err(Error::Conflict(format!("network with name {name} already exists")));
        }
        let mut existing = vec![default];
        existing.extend(self.user_networks());
        let routes = host_routes();
        let subnet = match subnet {
            Some(s) => {
                gateway_of(s)?;
                let wanted = parse_cidr(s)
                    .ok_or_else(|| invalid(format!("subnet {s:?}"), "expected ADDRESS/PREFIX"))?;
                if let Some(other) = existing
                    .iter()
                    .find(|n| parse_cidr(&n.subnet).is_some_and(|t| overlaps(wanted, t)))
                {
                    return Err(Error::Conflict(format!(
                        "subnet {s} overlaps {} of network {}: pick a subnet no other network uses",
                        other.subnet, other.name
                    )));
                }
                if routes.iter().any(|r| overlaps(wanted, *r)) {
                    return Err(Error::Conflict(format!(
                        "subnet {s} overlaps a route of this host (see `ip route`): pick a free subnet"
                    )));
                }
                s.to_owned()
            }
            None => {
                let mut taken = routes;
                taken.extend(existing.iter().filter_map(|n| parse_cidr(&n.subnet)));
                free_subnet(
                    (0..=255).map(|n| format!("10.89.{n}.0/24")).chain(default_pool()),
                    &taken,
                )
                .ok_or_else(|| {
                    Error::Network("no free subnet left in 10.89.0.0/16 or Docker's pool".into())
                })?
            }
        };
        let (gateway, _) = gateway_of(&subnet)?;
        let id = crate::random_id()?;
        let network = Network {
            name: name.to_owned(),
            bridge: format!("br-{}", &id[..12]),
            id,
            subnet,
            gateway,
            created: crate::now(),
            labels,
        };
        let dir = self.networks_dir().join("defs");
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let data = serde_json::to_vec_pretty(&network).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&dir.join(format!("{name}.json")), &data)?;
        self.event(
            "network",
            "create",
            &network.id,
            &[("name", network.name.clone()), ("type", "bridge".into())],
        );
        Ok(network)
    }

    pub fn network_remove(&self, name: &str) -> Result<()> {
        if matches!(name, DEFAULT_NETWORK | "none" | "host") {
            return Err(Error::Conflict(format!(
                "{name} is a predefined network and cannot be removed"
            )));
        }
        let network = self.network_inspect(name)?;
        let _lock = self.network_lock()?;
        let users: Vec<String> =
            self.list()?.into_iter().filter(|r| r.uses_network(name)).map(|r| r.name).collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "network {name} has containers ({}); remove them first",
                users.join(", ")
            )));
        }
        // The bridge goes too (if this namespace has it); nothing else refers to it.
        let _ = Command::new("ip")
            .args(["link", "delete", &network.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = nft(&format!(
            "delete element ip {} subnets {{ {} }}\n",
            self.nft_table(),
            network.subnet
        ));
        let path = self.networks_dir().join("defs").join(format!("{name}.json"));
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
        self.event(
            "network",
            "destroy",
            &network.id,
            &[("name", network.name.clone()), ("type", "bridge".into())],
        );
        Ok(())
    }

    fn network_lock(&self) -> Result<File> {
        let dir = self.networks_dir();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        file.lock().map_err(io("lock", &path))?;
        Ok(file)
    }

    /// Checks `--network` and `-p` before anything is made.
    pub(crate) fn check_network_option(&self, options: &RunOptions) -> Result<()> {
        let mode = options.network.as_str();
        let user_network =
            !matches!(mode, "none" | "host" | DEFAULT_NETWORK) && !mode.starts_with("container:");
        if options.ip.is_some() && !user_network {
            return Err(invalid(
                "--ip",
                "a chosen address is for user-defined networks only: `berth network create NAME` and run with --network NAME",
            ));
        }
        if !options.network_aliases.is_empty() && !user_network {
            return Err(invalid(
                "--network-alias",
                "aliases are for user-defined networks only: `berth network create NAME` and run with --network NAME",
            ));
        }
        if let Some(mac) = &options.mac_address {
            if mode == "host" || mode == "none" || mode.starts_with("container:") {
                return Err(invalid(
                    "--mac-address",
                    format!("conflicts with --network {mode}: the container has no interface of its own"),
                ));
            }
            let octets: Vec<&str> = mac.split(':').collect();
            if octets.len() != 6
                || !octets.iter().all(|o| o.len() == 2 && u8::from_str_radix(o, 16).is_ok())
            {
                return Err(invalid(
                    format!("--mac-address {mac}"),
                    "expected six hex octets: 02:42:ac:11:00:02",
                ));
            }
            if u8::from_str_radix(octets[0], 16).is_ok_and(|first| first & 1 == 1) {
                return Err(invalid(format!("--mac-address {mac}"), "is a multicast address"));
            }
        }
        if let Some(ip) = &options.ip {
            let Ok(addr) = ip.parse::<std::net::Ipv4Addr>() else {
                return Err(invalid(format!("--ip {ip}"), "not an IPv4 address"));
            };
            let network = self.network_inspect(mode)?;
            let (base, prefix) = parse_cidr(&network.subnet).unwrap_or((0, 32));
            if !overlaps((u32::from(addr), 32), (base, prefix)) {
                return Err(invalid(
                    format!("--ip {ip}"),
                    format!("is outside network {}'s subnet {}", network.name, network.subnet),
                ));
            }
        }
        for alias in &options.network_aliases {
            if alias.is_empty() || alias.len() > 253 || alias.contains(char::is_whitespace) {
                return Err(invalid(format!("--network-alias {alias:?}"), "not a host name"));
            }
        }
        match mode {
            "none" | "host" => {
                if !options.publish.is_empty() {
                    tracing::warn!("published ports are discarded with --network {mode}");
                }
            }
            _ if mode.starts_with("container:") => {
                let other = &mode["container:".len()..];
                self.resolve_id(other)?;
            }
            _ => {
                self.network_inspect(mode)?;
            }
        }
        Ok(())
    }

    /// Connects a starting container: returns how its spec should name its network
    /// namespace and records the address and ports in `record.network`.
    pub(crate) fn network_setup(&self, record: &mut Record) -> Result<NetNs> {
        let mode = record.options.network.clone();
        if matches!(mode.as_str(), "host" | "none") || mode.starts_with("container:") {
            // No network of its own: nothing of an earlier run's attachments stays.
            record.network = None;
            record.extra_networks.clear();
        }
        match mode.as_str() {
            "host" => return Ok(NetNs::Host),
            // A namespace of its own with only a loopback device, up: the runtime makes
            // it with the container (as runc, it brings the loopback up), and the
            // monitor pins it once the container exists (see `pin_own_netns`).
            "none" => return Ok(NetNs::New),
            _ => {}
        }
        if let Some(other) = mode.strip_prefix("container:") {
            let other = self.peek(&self.resolve_id(other)?)?;
            if other.state.status != Status::Running || other.state.pid <= 0 {
                return Err(Error::Conflict(format!(
                    "cannot join the network of container {}: it is not running",
                    other.name
                )));
            }
            return Ok(NetNs::Join(format!("/proc/{}/ns/net", other.state.pid)));
        }
        let network = self.network_inspect(&mode)?;
        let _lock = self.network_lock()?;
        let netns = self.make_netns(&record.id)?;
        record.extra_networks.clear();
        let first = Attachment {
            ifname: "eth0".into(),
            ip: record.options.ip.clone(),
            mac: record.options.mac_address.clone(),
            primary: true,
            default_route: true,
        };
        let mut attached = self.attach(record, &network, &netns, &first).map(|state| {
            self.connect_event(record, &network, "connect");
            record.network = Some(state);
        });
        // Then the networks `network connect` added, each on the next interface.
        for (index, connection) in record.options.connected.clone().iter().enumerate() {
            if attached.is_err() {
                break;
            }
            attached = self.network_inspect(&connection.network).and_then(|other| {
                let extra = Attachment {
                    ifname: format!("eth{}", index + 1),
                    ip: connection.ip.clone(),
                    mac: None,
                    primary: false,
                    default_route: false,
                };
                let state = self.attach(record, &other, &netns, &extra)?;
                self.connect_event(record, &other, "connect");
                record.extra_networks.push(state);
                Ok(())
            });
        }
        match attached {
            Ok(()) => Ok(NetNs::Join(netns.to_string_lossy().into_owned())),
            Err(err) => {
                let _ = cni(&network, &self.ipam_dir(), "DEL", &record.id, &netns, "eth0");
                for (index, connection) in record.options.connected.iter().enumerate() {
                    if let Ok(other) = self.network_inspect(&connection.network) {
                        let ifname = format!("eth{}", index + 1);
                        let _ = cni(&other, &self.ipam_dir(), "DEL", &record.id, &netns, &ifname);
                    }
                }
                record.network = None;
                record.extra_networks.clear();
                remove_netns(&netns);
                Err(err)
            }
        }
    }

    fn connect_event(&self, record: &Record, network: &Network, action: &str) {
        self.event(
            "network",
            action,
            &network.id,
            &[
                ("container", record.id.clone()),
                ("name", network.name.clone()),
                ("type", "bridge".into()),
            ],
        );
    }

    /// `network connect`: the container joins another network, at once when it runs
    /// (a new interface in its namespace, its name in the peers' /etc/hosts and DNS) and
    /// at every start.
    pub fn network_connect(
        &self,
        network: &str,
        container: &str,
        aliases: &[String],
        ip: Option<&str>,
    ) -> Result<()> {
        let target = self.network_inspect(network)?;
        if matches!(network, DEFAULT_NETWORK | "none" | "host") {
            return Err(invalid(
                format!("network connect {network}"),
                "only user-defined networks can be connected to a container",
            ));
        }
        let mut locked = self.lock(container)?;
        let record = &mut locked.record;
        if record.options.network == "host" || record.options.network.starts_with("container:") {
            return Err(Error::Conflict(format!(
                "container {} uses --network {}: it has no network of its own to connect",
                record.name, record.options.network
            )));
        }
        if record.uses_network(network) {
            return Err(Error::Conflict(format!(
                "container {} is already connected to network {network}",
                record.name
            )));
        }
        if let Some(ip) = ip {
            let mut probe = RunOptions { network: network.to_owned(), ..RunOptions::default() };
            probe.ip = Some(ip.to_owned());
            self.check_network_option(&probe)?;
        }
        // A container with no network (`--network none`, or all disconnected) gets this
        // one as its first: the default route, and the published ports at the next start.
        let first = record.options.network == "none";
        if first {
            record.options.network = network.to_owned();
            record.options.network_aliases = aliases.to_vec();
            record.options.ip = ip.map(str::to_owned);
        } else {
            record.options.connected.push(crate::options::Connection {
                network: network.to_owned(),
                aliases: aliases.to_vec(),
                ip: ip.map(str::to_owned),
            });
        }
        let running = matches!(record.state.status, Status::Running | Status::Paused);
        let netns = self.networks_dir().join("netns").join(&record.id);
        if running && berth_net::netns::is_pinned(&netns) {
            // Whether the container has a resolver at 127.0.0.11 already: its resolv.conf
            // names it exactly when one was started, and it runs as long as the container.
            let resolv = locked.dir.join("resolv.conf");
            let resolving = std::fs::read_to_string(&resolv)
                .is_ok_and(|text| text.contains(&format!("nameserver {}", crate::dns::ADDRESS)));
            let _lock = self.network_lock()?;
            let how = Attachment {
                ifname: free_interface(record),
                ip: ip.map(str::to_owned),
                mac: None,
                primary: false,
                default_route: first,
            };
            let state = self.attach(record, &target, &netns, &how)?;
            if first {
                record.network = Some(state);
            } else {
                record.extra_networks.push(state);
            }
            self.connect_event(record, &target, "connect");
            let lines = self.peer_hosts_on(record, &target.name);
            let hosts = locked.dir.join("hosts");
            if let Ok(mut text) = std::fs::read_to_string(&hosts) {
                text.push_str(&lines);
                // In place: the file is bind-mounted, a rename would not be seen.
                let _ = std::fs::write(&hosts, text);
            }
            if !resolving {
                // The first user-defined network: names are answered from now on (as
                // Docker's sandbox starts its resolver when it joins one). The connection
                // stands without it (its next start starts one).
                if let Err(err) = self.late_dns(&locked.record, &netns, &resolv) {
                    tracing::warn!(
                        "container {}: no embedded DNS until it restarts: {err}",
                        locked.record.name
                    );
                }
            }
        }
        locked.save()
    }

    /// Starts the resolver at 127.0.0.11 of a running container that joins its first
    /// user-defined network, for as long as the container's process lives, and points
    /// its resolv.conf at it.
    fn late_dns(&self, record: &Record, netns: &Path, resolv: &Path) -> Result<()> {
        let upstreams = self.upstreams(record);
        let resolver =
            crate::dns::serve(&self.root, &record.id, netns, &upstreams, Some(record.state.pid))?;
        resolver.detach();
        let old = std::fs::read_to_string(resolv).unwrap_or_default();
        // In place: the file is bind-mounted, a rename would not be seen.
        std::fs::write(resolv, embedded_resolv_conf(&old)).map_err(io("write", resolv))
    }

    /// Where the embedded resolver sends what it does not answer: `--dns`, else the
    /// host's resolvers.
    fn upstreams(&self, record: &Record) -> Vec<std::net::SocketAddr> {
        if record.options.dns.is_empty() {
            crate::dns::host_resolvers()
        } else {
            record
                .options
                .dns
                .iter()
                .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
                .map(|ip| std::net::SocketAddr::new(ip, 53))
                .collect()
        }
    }

    /// `network disconnect`: the reverse of `network_connect`, at once when the container
    /// runs. Disconnecting the first network takes its published ports with it (as in
    /// Docker) and makes the next network the first (its gateway the default route); a
    /// container left with no network keeps its loopback, as `--network none`.
    pub fn network_disconnect(&self, network: &str, container: &str) -> Result<()> {
        let target = self.network_inspect(network)?;
        let mut locked = self.lock(container)?;
        let record = &mut locked.record;
        if record.options.network == network {
            self.disconnect_first(record, &target)?;
            return locked.save();
        }
        let Some(index) = record.options.connected.iter().position(|c| c.network == network) else {
            return Err(Error::Conflict(format!(
                "container {} is not connected to network {network}",
                record.name
            )));
        };
        record.options.connected.remove(index);
        if let Some(at) = record.extra_networks.iter().position(|n| n.network == network) {
            let state = record.extra_networks.remove(at);
            let _lock = self.network_lock()?;
            if let Err(err) = cni(
                &target,
                &self.ipam_dir(),
                "DEL",
                &record.id,
                Path::new(&state.netns),
                state.interface(),
            ) {
                tracing::warn!("CNI DEL for {}: {err}", record.id);
            }
            self.remove_peer_entries(record, &target);
            self.connect_event(record, &target, "disconnect");
        }
        locked.save()
    }

    /// `network disconnect` of the container's first network.
    fn disconnect_first(&self, record: &mut Record, target: &Network) -> Result<()> {
        let live = matches!(record.state.status, Status::Running | Status::Paused)
            && record.network.as_ref().is_some_and(|n| n.network == target.name);
        let next =
            (!record.options.connected.is_empty()).then(|| record.options.connected.remove(0));
        let options = &mut record.options;
        match &next {
            Some(next) => {
                options.network = next.network.clone();
                options.network_aliases = next.aliases.clone();
                options.ip = next.ip.clone();
            }
            None => {
                options.network = "none".into();
                options.network_aliases.clear();
                options.ip = None;
            }
        }
        options.mac_address = None;
        if !live {
            // What the last run left is no longer true: the next start attaches afresh.
            record.network = None;
            record.extra_networks.clear();
            return Ok(());
        }
        let _lock = self.network_lock()?;
        let Some(state) = record.network.take() else { return Ok(()) };
        self.unpublish(&state.ports);
        if !state.ports.is_empty() {
            kill_port_holder(record.state.monitor_pid);
        }
        let netns = Path::new(&state.netns);
        if let Err(err) = cni(target, &self.ipam_dir(), "DEL", &record.id, netns, state.interface())
        {
            tracing::warn!("CNI DEL for {}: {err}", record.id);
        }
        self.remove_peer_entries(record, target);
        self.connect_event(record, target, "disconnect");
        if let Some(next) = &next {
            if let Some(at) = record.extra_networks.iter().position(|n| n.network == next.network) {
                let promoted = record.extra_networks.remove(at);
                // The disconnect is done either way: a route that cannot be set is said.
                if let Err(err) = default_route(
                    Path::new(&promoted.netns),
                    &promoted.gateway,
                    promoted.interface(),
                ) {
                    tracing::warn!("container {}: {err}", record.name);
                }
                record.network = Some(promoted);
            }
        }
        Ok(())
    }

    /// The resolver at 127.0.0.11 of a container on a user-defined network (none for a
    /// container only on the default bridge, as in Docker).
    pub(crate) fn embedded_dns(&self, record: &Record) -> Result<Option<crate::dns::Resolver>> {
        let Some(state) = record.networks().find(|n| n.network != DEFAULT_NETWORK) else {
            return Ok(None);
        };
        if state.netns.is_empty() {
            return Ok(None);
        }
        let upstreams = self.upstreams(record);
        crate::dns::serve(&self.root, &record.id, Path::new(&state.netns), &upstreams, None)
            .map(Some)
    }

    fn ipam_dir(&self) -> PathBuf {
        self.networks_dir().join("ipam")
    }

    fn attach(
        &self,
        record: &Record,
        network: &Network,
        netns: &Path,
        how: &Attachment,
    ) -> Result<NetworkState> {
        let mut wanted = serde_json::Map::new();
        if let Some(ip) = &how.ip {
            wanted.insert("ips".into(), json!([ip]));
        }
        if let Some(mac) = &how.mac {
            wanted.insert("mac".into(), json!(mac));
        }
        if !how.default_route {
            // Only the first network gives the default route (as in Docker).
            wanted.insert(NO_DEFAULT_ROUTE.into(), Value::Bool(true));
        }
        let result =
            cni_with(network, &self.ipam_dir(), "ADD", &record.id, netns, &how.ifname, &wanted)
                .map_err(|err| match (&how.ip, &err) {
                    (Some(ip), Error::Network(text))
                        if text.contains("already") || text.contains("not available") =>
                    {
                        Error::Conflict(format!(
                            "address {ip} is already in use on network {}",
                            network.name
                        ))
                    }
                    _ => err,
                });
        let result = result?;
        let ip = result["ips"][0]["address"].as_str().unwrap_or_default().to_owned();
        let (ip, prefix) = ip
            .split_once('/')
            .map(|(a, p)| (a.to_owned(), p.parse().unwrap_or(0)))
            .unwrap_or_default();
        if ip.is_empty() {
            return Err(Error::Network(format!(
                "the CNI bridge plugin returned no address: {result}"
            )));
        }
        let mac = result["interfaces"]
            .as_array()
            .and_then(|i| i.iter().find(|i| i["sandbox"].as_str().is_some_and(|s| !s.is_empty())))
            .and_then(|i| i["mac"].as_str())
            .unwrap_or_default()
            .to_owned();
        self.ensure_nat(network)?;
        let ports = if how.primary { self.publish(record, &ip)? } else { Vec::new() };
        Ok(NetworkState {
            network: network.name.clone(),
            ip,
            prefix_len: prefix,
            gateway: network.gateway.clone(),
            mac,
            ports,
            netns: netns.to_string_lossy().into_owned(),
            ifname: if how.primary { String::new() } else { how.ifname.clone() },
        })
    }

    /// Binds the container's published ports: checks they are free, picks ports for
    /// `-p CONTAINER` and `-P`, and adds them to the nftables map.
    fn publish(&self, record: &Record, ip: &str) -> Result<Vec<PortBinding>> {
        let mut wanted = record.options.publish.clone();
        if record.options.publish_all {
            for exposed in &record.exposed_ports {
                let spec = crate::options::PortSpec::parse(exposed)?;
                for p in spec {
                    if !wanted
                        .iter()
                        .any(|w| w.container_port == p.container_port && w.protocol == p.protocol)
                    {
                        wanted.push(p);
                    }
                }
            }
        }
        let mut taken: Vec<(String, u16)> = Vec::new();
        for other in self.peek_all() {
            if other.id == record.id
                || !matches!(other.state.status, Status::Running | Status::Paused)
            {
                continue;
            }
            for p in other.network.iter().flat_map(|n| n.ports.iter()) {
                taken.push((p.protocol.clone(), p.host_port));
            }
        }
        let mut bindings = Vec::new();
        let mut script = String::new();
        let table = self.nft_table();
        for p in wanted {
            let host_port = if p.host_port == 0 { free_port(&p.protocol)? } else { p.host_port };
            if taken.contains(&(p.protocol.clone(), host_port)) {
                return Err(Error::Conflict(format!(
                    "port {host_port}/{} is already allocated to another container",
                    p.protocol
                )));
            }
            taken.push((p.protocol.clone(), host_port));
            let host_ip = p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into());
            if host_ip == "0.0.0.0" {
                script.push_str(&format!(
                    "add element ip {table} ports {{ {} . {host_port} : {ip} . {} }}\n",
                    p.protocol, p.container_port
                ));
            } else {
                script.push_str(&format!(
                    "add element ip {table} ports_ip {{ {host_ip} . {} . {host_port} : {ip} . {} }}\n",
                    p.protocol, p.container_port
                ));
            }
            bindings.push(PortBinding {
                host_ip,
                host_port,
                container_port: p.container_port,
                protocol: p.protocol,
            });
        }
        // Held on the host first (a port another process or root has is refused here),
        // then mapped to the container.
        if let Some(holder) = crate::ports::hold(&bindings, ip)? {
            HOLDERS.lock().unwrap_or_else(|p| p.into_inner()).push(holder);
        }
        if !script.is_empty() {
            nft(&script)?;
        }
        Ok(bindings)
    }

    /// The root's nftables table (`ip berth` for /var/lib/berth), the subnet's masquerade and the bridge's sysctls.
    fn ensure_nat(&self, network: &Network) -> Result<()> {
        // One transaction, idempotent: `add` leaves what exists, the chains' rules are
        // rewritten (atomically: no packet sees them missing), and the subnet joins the set.
        let script = format!(
            "add table ip {t}
add set ip {t} subnets {{ type ipv4_addr; flags interval; }}
add map ip {t} ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
add map ip {t} ports_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
add chain ip {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain ip {t} output {{ type nat hook output priority -100; policy accept; }}
add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain ip {t} prerouting
flush chain ip {t} output
flush chain ip {t} postrouting
add rule ip {t} prerouting fib daddr type local dnat to ip daddr . meta l4proto . th dport map @ports_ip
add rule ip {t} prerouting fib daddr type local dnat to meta l4proto . th dport map @ports
add rule ip {t} output fib daddr type local dnat to ip daddr . meta l4proto . th dport map @ports_ip
add rule ip {t} output fib daddr type local dnat to meta l4proto . th dport map @ports
add rule ip {t} postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade
add rule ip {t} postrouting ct status dnat ip saddr @subnets masquerade
add rule ip {t} postrouting ip saddr @subnets ip daddr != @subnets masquerade
add element ip {t} subnets {{ {} }}
",
            network.subnet,
            t = self.nft_table(),
        );
        nft(&script)?;
        for (path, value) in [
            ("/proc/sys/net/ipv4/ip_forward".to_owned(), "1"),
            (format!("/proc/sys/net/ipv4/conf/{}/route_localnet", network.bridge), "1"),
        ] {
            if std::fs::read_to_string(&path).map(|v| v.trim() != value).unwrap_or(true) {
                std::fs::write(&path, value).map_err(io("write", &path))?;
            }
        }
        Ok(())
    }

    /// Disconnects a container: ports, address, namespace. Idempotent.
    pub(crate) fn network_teardown(&self, record: &Record) {
        let netns = self.networks_dir().join("netns").join(&record.id);
        let Some(state) = &record.network else {
            if netns.exists() {
                remove_netns(&netns);
            }
            return;
        };
        // The namespace goes last: without it, this ran already (the monitor tears down
        // when the container exits, `rm` and `--rm` ask again) and the plugins need not.
        if !netns.exists() {
            return;
        }
        let Ok(_lock) = self.network_lock() else { return };
        self.unpublish(&state.ports);
        // The ports are let go once nothing maps them (held only in the monitor's process).
        HOLDERS.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for state in record.networks() {
            let Ok(network) = self.network_inspect(&state.network) else { continue };
            if let Err(err) =
                cni(&network, &self.ipam_dir(), "DEL", &record.id, &netns, state.interface())
            {
                tracing::warn!("CNI DEL for {}: {err}", record.id);
            }
            self.remove_peer_entries(record, &network);
            self.connect_event(record, &network, "disconnect");
        }
        remove_netns(&netns);
    }

    /// Lines for /etc/hosts naming the other containers on the container's user networks,
    /// and this container's line added to theirs.
    pub(crate) fn peer_hosts(&self, record: &Record) -> String {
        let networks: Vec<String> = record.networks().map(|n| n.network.clone()).collect();
        networks.iter().map(|network| self.peer_hosts_on(record, network)).collect()
    }

    /// `peer_hosts` for one network.
    fn peer_hosts_on(&self, record: &Record, network: &str) -> String {
        let Some(state) = record.networks().find(|n| n.network == network) else {
            return String::new();
        };
        if network == DEFAULT_NETWORK || state.ip.is_empty() {
            return String::new();
        }
        let mut lines = String::new();
        let mine = format!(
            "{}\t{}\t{}\n",
            state.ip,
            names_on(record, network).join(" "),
            marker(record, network)
        );
        for other in self.peek_all() {
            if other.id == record.id || other.state.status != Status::Running {
                continue;
            }
            let Some(theirs) = other.networks().find(|n| n.network == network) else {
                continue;
            };
            lines.push_str(&format!(
                "{}\t{}\t{}\n",
                theirs.ip,
                names_on(&other, network).join(" "),
                marker(&other, network)
            ));
            let hosts = self.container_dir(&other.id).join("hosts");
            if let Ok(mut text) = std::fs::read_to_string(&hosts) {
                if !text.contains(&marker(record, network)) {
                    text.push_str(&mine);
                    // In place: the file is bind-mounted, a rename would not be seen.
                    let _ = std::fs::write(&hosts, text);
                }
            }
        }
        lines
    }

    fn remove_peer_entries(&self, record: &Record, network: &Network) {
        if network.name == DEFAULT_NETWORK {
            return;
        }
        let marker = marker(record, &network.name);
        for other in self.peek_all() {
            let hosts = self.container_dir(&other.id).join("hosts");
            if let Ok(text) = std::fs::read_to_string(&hosts) {
                // Its own file loses the lines of that network's peers too.
                let own = other.id == record.id;
                let suffix = format!("@{}", network.name);
                let gone = |l: &str| {
                    l.ends_with(&marker) || (own && l.contains("# berth:") && l.ends_with(&suffix))
                };
                if text.lines().any(gone) {
                    let kept: String =
                        text.lines().filter(|l| !gone(l)).map(|l| format!("{l}\n")).collect();
                    let _ = std::fs::write(&hosts, kept);
                }
            }
        }
    }

    /// Takes published ports out of the nftables maps (the caller holds the network lock).
    fn unpublish(&self, ports: &[PortBinding]) {
        for p in ports {
            let line = if p.host_ip == "0.0.0.0" {
                format!(
                    "delete element ip {} ports {{ {} . {} }}\n",
                    self.nft_table(),
                    p.protocol,
                    p.host_port
                )
            } else {
                format!(
                    "delete element ip {} ports_ip {{ {} . {} . {} }}\n",
                    self.nft_table(),
                    p.host_ip,
                    p.protocol,
                    p.host_port
                )
            };
            // One by one: an element already gone must not keep the others.
            let _ = nft(&line);
        }
    }

    /// Pins the network namespace the runtime made for a `--network none` container at
    /// `networks/netns/<id>` (where `network connect` finds it while it runs; released
    /// with the container's other resources).
    pub(crate) fn pin_own_netns(&self, id: &str, pid: i32) -> Result<()> {
        let path = self.networks_dir().join("netns").join(id);
        berth_net::netns::pin_existing(Path::new(&format!("/proc/{pid}/ns/net")), &path)
            .map_err(net)
    }

    /// A new network namespace kept alive by a bind mount at `networks/netns/<id>`.
    fn make_netns(&self, id: &str) -> Result<PathBuf> {
        let path = self.networks_dir().join("netns").join(id);
        berth_net::netns::pin_net(&path).map_err(net)
    }
}

/// Ends the `berth __ports` process of the container whose monitor is `monitor`: its
/// published ports are let go while it runs on.
fn kill_port_holder(monitor: i32) {
    use berth_sys::nix::unistd::Pid;
    // berth's own holder: this binary, not a container's process named alike.
    let Ok(ours) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let pid = Pid::from_raw(pid);
        if berth_sys::process::parent_of(pid) != Some(Pid::from_raw(monitor))
            || std::fs::read_link(entry.path().join("exe")).ok().as_ref() != Some(&ours)
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).nth(1) == Some(b"__ports".as_slice()) {
            let _ = berth_sys::nix::sys::signal::kill(
                pid,
                berth_sys::nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Makes `gateway` on `interface` the default route of the namespace at `netns`.
fn default_route(netns: &Path, gateway: &str, interface: &str) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "route", "replace", "default", "via", gateway, "dev", interface])
        .output()
        .map_err(io("run", "nsenter ip route"))?;
    if !out.status.success() {
        return Err(Error::Network(format!(
            "cannot route through {gateway} on {interface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The holders of the published ports of the container this process (its monitor) runs.
static HOLDERS: std::sync::Mutex<Vec<crate::ports::Holder>> = std::sync::Mutex::new(Vec::new());

/// What names the bridge and the nftables table of a root other than the default one:
/// eight hex digits of a hash of its path.
fn root_suffix(root: &Path) -> Option<String> {
    if root == Path::new(DEFAULT_ROOT) {
        return None;
    }
    let hash = root
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    Some(format!("{:08x}", hash as u32))
}

/// How a container is attached to one network.
struct Attachment {
    ifname: String,
    ip: Option<String>,
    mac: Option<String>,
    /// The first network: the one its published ports lead to.
    primary: bool,
    /// Whether the network's gateway is the default route (the first network's).
    default_route: bool,
}

/// The next interface name no network of the container has.
fn free_interface(record: &Record) -> String {
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|name| !record.networks().any(|n| n.interface() == name))
        .unwrap_or_default()
}

/// A resolv.conf that sends questions to the embedded resolver and keeps the search
/// domains of `base`.
pub(crate) fn embedded_resolv_conf(base: &str) -> String {
    let mut text: String = base
        .lines()
        .filter(|l| l.starts_with("search") || l.starts_with("domain"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("nameserver {}\noptions ndots:0\n", crate::dns::ADDRESS));
    text
}

/// A key of `cni_with`'s runtime config that is berth's own: no default route.
const NO_DEFAULT_ROUTE: &str = "berth.noDefaultRoute";

/// The names a container answers to on a network: its name, the aliases given for that
/// network, its short id.
pub(crate) fn names_on(record: &Record, network: &str) -> Vec<String> {
    let mut names = vec![record.name.clone()];
    if record.options.network == network {
        names.extend(record.options.network_aliases.iter().cloned());
    }
    for connection in record.options.connected.iter().filter(|c| c.network == network) {
        names.extend(connection.aliases.iter().cloned());
    }
    names.push(record.short_id().to_owned());
    names
}

/// What marks a container's line in its peers' /etc/hosts, per network.
fn marker(record: &Record, network: &str) -> String {
    format!("# berth:{}@{network}", record.id)
}

fn remove_netns(path: &Path) {
    berth_net::netns::unpin(path);
}

fn net(err: berth_net::Error) -> Error {
    Error::Network(err.to_string())
}

fn bridge_conf(
    network: &Network,
    ipam_dir: &Path,
    wanted: &serde_json::Map<String, Value>,
) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": network.name,
        "type": "bridge",
        "bridge": network.bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": network.subnet, "gateway": network.gateway}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        }
    });
    let mut wanted = wanted.clone();
    if wanted.remove(NO_DEFAULT_ROUTE).is_some() {
        conf["ipam"]["routes"] = json!([]);
    }
    if !wanted.is_empty() {
        // A chosen address (host-local's `ips`) and MAC (the bridge's `mac`), passed as
        // a runtime would pass them: capabilities and their runtimeConfig.
        let caps: serde_json::Map<String, Value> =
            wanted.keys().map(|k| (k.clone(), Value::Bool(true))).collect();
        conf["capabilities"] = Value::Object(caps);
        conf["runtimeConfig"] = Value::Object(wanted);
    }
    conf
}

fn cni(
    network: &Network,
    ipam_dir: &Path,
    command: &str,
    id: &str,
    netns: &Path,
    ifname: &str,
) -> Result<Value> {
    cni_with(network, ipam_dir, command, id, netns, ifname, &serde_json::Map::new())
}

fn cni_with(
    network: &Network,
    ipam_dir: &Path,
    command: &str,
    id: &str,
    netns: &Path,
    ifname: &str,
    wanted: &serde_json::Map<String, Value>,
) -> Result<Value> {
    let who = berth_net::cni::Attachment {
        container_id: id,
        netns,
        ifname,
        args: &[],
        runtime_config: &serde_json::Map::new(),
    };
    berth_net::cni::run_plugin("bridge", command, &who, &bridge_conf(network, ipam_dir, wanted))
        .map_err(net)
}

/// Applies an nftables script atomically.
fn nft(script: &str) -> Result<()> {
    berth_net::nft::apply(script).map_err(net)
}

fn free_port(protocol: &str) -> Result<u16> {
    let port = if protocol == "udp" {
        std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.local_addr()).map(|a| a.port())
    } else {
        std::net::TcpListener::bind("0.0.0.0:0").and_then(|s| s.local_addr()).map(|a| a.port())
    };
    port.map_err(|e| Error::Network(format!("cannot find a free port: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways() {
        assert_eq!(gateway_of("10.88.0.0/16").unwrap(), ("10.88.0.1".into(), 16));
        // Subnets are chosen away from what is taken, by overlap, not equality.
        let taken = [parse_cidr("172.17.0.0/16").unwrap(), parse_cidr("172.18.5.0/24").unwrap()];
        assert_eq!(free_subnet(default_pool(), &taken).as_deref(), Some("172.19.0.0/16"));
        assert!(overlaps(parse_cidr("10.88.0.0/16").unwrap(), parse_cidr("10.88.3.0/24").unwrap()));
        assert!(!overlaps(
            parse_cidr("10.88.0.0/16").unwrap(),
            parse_cidr("10.89.0.0/24").unwrap()
        ));
        assert_eq!(gateway_of("10.89.3.77/24").unwrap(), ("10.89.3.1".into(), 24));
        assert!(gateway_of("10.0.0.0").is_err());
        assert!(gateway_of("10.0.0.0/31").is_err());
        assert!(gateway_of("banana/16").is_err());
    }

    #[test]
    fn bridge_configuration_is_cni() {
        let engine_net = Network {
            name: "n".into(),
            id: "1".into(),
            bridge: "br-x".into(),
            subnet: "10.89.0.0/24".into(),
            gateway: "10.89.0.1".into(),
            created: String::new(),
            labels: BTreeMap::new(),
        };
        let conf = bridge_conf(&engine_net, Path::new("/r/ipam"), &serde_json::Map::new());
        assert_eq!(conf["type"], "bridge");
        assert_eq!(conf["ipMasq"], false);
        assert_eq!(conf["ipam"]["type"], "host-local");
        assert_eq!(conf["ipam"]["dataDir"], "/r/ipam");
        assert_eq!(conf["ipam"]["ranges"][0][0]["subnet"], "10.89.0.0/24");
    }
}
