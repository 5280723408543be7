//! The embedded DNS of user-defined networks, as Docker's: each container on such a
//! network finds a resolver at 127.0.0.11 in its own network namespace that answers the
//! names of the running containers on the same network (name, `--network-alias`es, short
//! id, and their reverse `PTR`s) and relays every other question to the upstream servers
//! (`--dns`, else the host's), from the host's network namespace so that a resolver on the
//! host's loopback works too.
//!
//! The container's monitor serves it while the container runs (berth has no daemon): its
//! sockets are made inside the container's namespace and served from a thread of the
//! monitor. Answers are computed from the containers' records at the moment of the
//! question: nothing is copied, so a container that starts or stops is seen at once.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};

use crate::container::Status;
use crate::{io, Engine, Error, Result};

/// Where containers find the resolver, as in Docker.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// Docker's TTL for container names.
const TTL: u32 = 600;

/// A container the resolver can name: its names (lowercase) and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub names: Vec<String>,
    pub ip: Ipv4Addr,
}

/// The answer to a query about a container, or `None` to relay it upstream. Pure.
pub fn respond(query: &Message, peers: &[Peer]) -> Option<Message> {
    let question = query.queries.first()?;
    let name = question.name().to_ascii().trim_end_matches('.').to_lowercase();
    let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if let Some(ip) = reverse_name(&name) {
        let peer = peers.iter().find(|p| p.ip == ip)?;
        if question.query_type() == RecordType::PTR {
            let target = Name::from_ascii(format!("{}.", peer.names.first()?)).ok()?;
            response.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::PTR(rdata::PTR(target)),
            ));
        }
        return Some(response);
    }
    let peer = peers.iter().find(|p| p.names.contains(&name))?;
    match question.query_type() {
        RecordType::A | RecordType::ANY => {
            response.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::A(rdata::A(peer.ip)),
            ));
        }
        // The name exists, with no record of that type (no IPv6 on berth's networks).
        _ => {}
    }
    Some(response)
}

/// `4.3.2.1.in-addr.arpa` as an address.
fn reverse_name(name: &str) -> Option<Ipv4Addr> {
    let octets = name.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = octets.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [d, c, b, a] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

/// A reply saying the question could not be answered.
fn failure(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let message = Message::from_vec(query).ok()?;
    let mut response =
        Message::new(message.metadata.id, MessageType::Response, message.metadata.op_code);
    response.metadata.response_code = code;
    response.metadata.recursion_desired = message.metadata.recursion_desired;
    for q in message.queries {
        response.add_query(q);
    }
    response.to_vec().ok()
}

/// The resolver of one running container: a small process of its own (the monitor must
/// stay single-threaded to fork the container), killed when this is dropped and, through
/// its parent-death signal, when the monitor dies.
pub struct Resolver {
    child: Option<std::process::Child>,
}

impl Resolver {
    /// Lets the resolver run on after this is dropped: one started with `until` ends with
    /// its container (a thread reaps it, should this process live longer).
    pub fn detach(mut self) {
        if let Some(mut child) = self.child.take() {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the serving threads need to answer.
struct Context {
    root: PathBuf,
    /// The container asking: its networks are those whose containers are named.
    id: String,
    upstreams: Vec<SocketAddr>,
}

/// The host's resolvers, from `/etc/resolv.conf`.
pub use berth_stdx::net::host_resolvers;

/// Starts the resolver of container `id` in the network namespace at `netns`
/// (`berth __dns ROOT ID NETNS [--until PID] UPSTREAM...`) and returns once it listens.
/// With `until`, it ends when that process does rather than with this one.
pub fn serve(
    root: &Path,
    id: &str,
    netns: &Path,
    upstreams: &[SocketAddr],
    until: Option<i32>,
) -> Result<Resolver> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("/proc/self/exe")
        .arg0("berth")
        .arg("__dns")
        .arg(root)
        .arg(id)
        .arg(netns)
        .args(until.into_iter().flat_map(|pid| ["--until".to_owned(), pid.to_string()]))
        .args(upstreams.iter().map(ToString::to_string))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io("start the embedded DNS from", "/proc/self/exe"))?;
    let mut ready = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut ready);
    }
    if ready.trim() != "ready" {
        let mut why = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut why);
        }
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Network(format!(
            "the embedded DNS did not start: {}",
            why.trim().trim_start_matches("Error: ")
        )));
    }
    Ok(Resolver { child: Some(child) })
}

/// The resolver process: binds 127.0.0.11:53 (UDP and TCP) inside the namespace, comes
/// back to the namespace it started in (where upstream servers are reached), says
/// `ready` on stdout, and answers until it is killed.
///
/// With `--until PID` first among `rest`, it ends when that process does (a container
/// that joined a network after it started) instead of with its parent.
pub fn main(root: &Path, id: &str, netns: &Path, rest: &[String]) -> Result<()> {
    use berth_sys::nix::sched::{setns, CloneFlags};
    let (until, upstreams) = match rest {
        [flag, pid, upstreams @ ..] if flag == "--until" => {
            let pid = pid
                .parse::<i32>()
                .map_err(|_| Error::Other(format!("--until {pid}: not a process id")))?;
            (Some(pid), upstreams)
        }
        upstreams => (None, upstreams),
    };
    match until {
        Some(pid) => {
            let pidfd = berth_sys::process::pidfd_open(berth_sys::nix::unistd::Pid::from_raw(pid))
                .map_err(|e| Error::Other(format!("process {pid} is gone: {e}")))?;
            // Out of the caller's session: its terminal's signals are not ours.
            let _ = berth_sys::nix::unistd::setsid();
            std::thread::spawn(move || {
                use berth_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&pidfd), PollFlags::POLLIN)];
                while poll(&mut fds, PollTimeout::NONE).is_err() {}
                std::process::exit(0);
            });
        }
        None => {
            berth_sys::nix::sys::prctl::set_pdeathsig(berth_sys::nix::sys::signal::Signal::SIGKILL)
                .map_err(|e| Error::Other(format!("cannot set the parent-death signal: {e}")))?;
        }
    }
    let home = std::fs::File::open("/proc/self/ns/net").map_err(io("open", "/proc/self/ns/net"))?;
    let target = std::fs::File::open(netns).map_err(io("open", netns))?;
    setns(&target, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::Network(format!("cannot enter {}: {e}", netns.display())))?;
    let at = SocketAddr::from((ADDRESS, 53));
    let udp = UdpSocket::bind(at).map_err(io("bind the embedded DNS at", "127.0.0.11:53"))?;
    let tcp =
        TcpListener::bind(at).map_err(io("bind the embedded DNS at", "127.0.0.11:53 (tcp)"))?;
    setns(&home, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::Network(format!("cannot return to the host's network: {e}")))?;
    let context = Arc::new(Context {
        root: root.to_owned(),
        id: id.to_owned(),
        upstreams: upstreams.iter().filter_map(|u| u.parse().ok()).collect(),
    });
    println!("ready");
    // stdout is a pipe the monitor reads to its end: close it.
    let _ = berth_sys::nix::unistd::close(1);
    let udp = Arc::new(udp);
    {
        let context = context.clone();
        std::thread::spawn(move || serve_tcp(&tcp, &context));
    }
    serve_udp(&udp, &context);
    Ok(())
}

/// The running containers that share a network with the asking one, each with its
/// names and its address on the first network they share.
fn peers(context: &Context) -> Vec<Peer> {
    let Ok(engine) = Engine::open(&context.root) else { return Vec::new() };
    let records = engine.peek_all();
    let Some(me) = records.iter().find(|r| r.id == context.id) else { return Vec::new() };
    let mine: Vec<&str> = me
        .networks()
        .map(|n| n.network.as_str())
        .filter(|n| *n != crate::network::DEFAULT_NETWORK)
        .collect();
    records
        .iter()
        .filter(|r| matches!(r.state.status, Status::Running | Status::Paused))
        .filter_map(|r| {
            let shared = r.networks().find(|n| mine.contains(&n.network.as_str()))?;
            let ip = shared.ip.parse().ok()?;
            // Names on every shared network (aliases are per network).
            let mut names: Vec<String> = r
                .networks()
                .filter(|n| mine.contains(&n.network.as_str()))
                .flat_map(|n| crate::network::names_on(r, &n.network))
                .map(|n| n.to_lowercase())
                .collect();
            names.dedup();
            Some(Peer { names, ip })
        })
        .collect()
}

/// The answer to one wire-format query: ours for containers, the upstream's otherwise.
fn answer(query: &[u8], context: &Context, over_tcp: bool) -> Option<Vec<u8>> {
    let message = Message::from_vec(query).ok()?;
    if message.metadata.message_type != MessageType::Query {
        return None;
    }
    if let Some(response) = respond(&message, &peers(context)) {
        return response.to_vec().ok();
    }
    for upstream in &context.upstreams {
        let relayed =
            if over_tcp { relay_tcp(query, upstream) } else { relay_udp(query, upstream) };
        if let Some(reply) = relayed {
            return Some(reply);
        }
    }
    failure(query, ResponseCode::ServFail)
}

fn relay_udp(query: &[u8], upstream: &SocketAddr) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let socket = UdpSocket::bind(bind).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    socket.send_to(query, upstream).ok()?;
    let mut buffer = vec![0u8; 65_535];
    let (n, _) = socket.recv_from(&mut buffer).ok()?;
    buffer.truncate(n);
    Some(buffer)
}

fn relay_tcp(query: &[u8], upstream: &SocketAddr) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(upstream, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).ok()?;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).ok()?;
    let mut reply = vec![0u8; u16::from_be_bytes(length) as usize];
    stream.read_exact(&mut reply).ok()?;
    Some(reply)
}

fn serve_udp(socket: &Arc<UdpSocket>, context: &Arc<Context>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buffer) else { continue };
        if n == 0 {
            continue;
        }
        let query = buffer[..n].to_vec();
        let (socket, context) = (socket.clone(), context.clone());
        // A slow upstream must not hold up the containers' own names.
        std::thread::spawn(move || {
            if let Some(reply) = answer(&query, &context, false) {
                let _ = socket.send_to(&reply, from);
            }
        });
    }
}

fn serve_tcp(listener: &TcpListener, context: &Arc<Context>) {
    use std::io::{Read, Write};
    loop {
        let Ok((mut stream, _)) = listener.accept() else { continue };
        let context = context.clone();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            loop {
                let mut length = [0u8; 2];
                if stream.read_exact(&mut length).is_err() {
                    return;
                }
                let mut query = vec![0u8; u16::from_be_bytes(length) as usize];
                if stream.read_exact(&mut query).is_err() {
                    return;
                }
                let Some(reply) = answer(&query, &context, true) else { return };
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, kind: RecordType) -> Message {
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message
    }

    fn peers() -> Vec<Peer> {
        vec![
            Peer { names: vec!["db".into(), "postgres".into()], ip: Ipv4Addr::new(10, 89, 0, 2) },
            Peer { names: vec!["web".into()], ip: Ipv4Addr::new(10, 89, 0, 3) },
        ]
    }

    #[test]
    fn containers_are_answered_and_the_rest_relayed() {
        let reply = respond(&query("postgres.", RecordType::A), &peers()).unwrap();
        assert_eq!(reply.metadata.id, 7);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].data, RData::A(rdata::A(Ipv4Addr::new(10, 89, 0, 2))));
        // Case does not matter.
        assert_eq!(respond(&query("WEB.", RecordType::A), &peers()).unwrap().answers.len(), 1);
        // The name exists, but has no AAAA: an empty answer, not a relay.
        let reply = respond(&query("web.", RecordType::AAAA), &peers()).unwrap();
        assert!(reply.answers.is_empty());
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        let reply = respond(&query("3.0.89.10.in-addr.arpa.", RecordType::PTR), &peers()).unwrap();
        assert_eq!(
            reply.answers[0].data,
            RData::PTR(rdata::PTR(Name::from_ascii("web.").unwrap()))
        );
        assert!(respond(&query("example.org.", RecordType::A), &peers()).is_none());
        assert!(respond(&query("9.9.9.9.in-addr.arpa.", RecordType::PTR), &peers()).is_none());
    }
}
