//! Published ports held on the host while their container runs, as Docker's proxy and
//! podman's conmon hold them: nftables sends the traffic to the container, but a socket
//! bound to each host port keeps any other process (or another berth root) from taking
//! the port, which would otherwise receive part of the traffic unnoticed. Ports published
//! on every address (or on 127.0.0.1) are also served on IPv6 (`[::]`, or `[::1]`) by
//! relaying TCP connections to the container's IPv4 address, so that clients that try
//! `::1` first (`localhost`) are not refused.
//!
//! The holder is a small `berth __ports` process per container (the monitor must stay
//! single-threaded to fork the container), started before the nftables elements are
//! added, killed when dropped and, through its parent-death signal, with its monitor.

use std::io::Read;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use crate::container::PortBinding;
use crate::{io, Error, Result};

/// The holder of one container's published ports; they are released when it is dropped.
#[derive(Debug)]
pub struct Holder {
    child: std::process::Child,
}

impl Drop for Holder {
    fn drop(&mut self) {
        // `network disconnect` may have ended it and the monitor reaped it already: a
        // pid that is no longer our child may be another process's by now.
        use berth_sys::nix::unistd::Pid;
        let child = Pid::from_raw(self.child.id() as i32);
        if berth_sys::process::parent_of(child) == Some(Pid::this()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `PROTO/HOST_IP/HOST_PORT/CONTAINER_PORT`, one argument per binding.
fn spec(binding: &PortBinding) -> String {
    format!(
        "{}/{}/{}/{}",
        binding.protocol, binding.host_ip, binding.host_port, binding.container_port
    )
}

/// Binds the host side of `bindings` (for a container at `container_ip`) and returns once
/// every port is held; a port another process has is a conflict that names it.
pub fn hold(bindings: &[PortBinding], container_ip: &str) -> Result<Option<Holder>> {
    use std::os::unix::process::CommandExt;
    if bindings.is_empty() {
        return Ok(None);
    }
    let mut child = std::process::Command::new("/proc/self/exe")
        .arg0("berth")
        .arg("__ports")
        .arg(container_ip)
        .args(bindings.iter().map(spec))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io("start the port holder from", "/proc/self/exe"))?;
    let mut ready = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut ready);
    }
    if ready.trim() == "ready" {
        return Ok(Some(Holder { child }));
    }
    let mut why = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut why);
    }
    let _ = child.kill();
    let _ = child.wait();
    let why = why.trim().trim_start_matches("Error: ").to_owned();
    if why.contains("in use") {
        Err(Error::Conflict(why))
    } else {
        Err(Error::Network(format!("cannot hold the published ports: {why}")))
    }
}

/// Whether an IPv6 socket bound to `[::]` takes IPv4 too (Linux's default).
fn dual_stack() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "0")
}

/// The holder process: `berth __ports CONTAINER_IP PROTO/HOST_IP/HOST_PORT/PORT...`.
pub fn main(container_ip: &str, specs: &[String]) -> Result<()> {
    berth_sys::nix::sys::prctl::set_pdeathsig(berth_sys::nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| Error::Other(format!("cannot set the parent-death signal: {e}")))?;
    let target: std::net::Ipv4Addr = container_ip
        .parse()
        .map_err(|_| Error::Other(format!("{container_ip:?} is not an IPv4 address")))?;
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut relays: Vec<(TcpListener, SocketAddr)> = Vec::new();
    for spec in specs {
        let parts: Vec<&str> = spec.split('/').collect();
        let [protocol, host_ip, host_port, container_port] = parts.as_slice() else {
            return Err(Error::Other(format!("bad port spec {spec:?}")));
        };
        let host_port: u16 =
            host_port.parse().map_err(|_| Error::Other(format!("bad port in {spec:?}")))?;
        let container_port: u16 =
            container_port.parse().map_err(|_| Error::Other(format!("bad port in {spec:?}")))?;
        let at: SocketAddr = format!("{host_ip}:{host_port}")
            .parse()
            .map_err(|_| Error::Other(format!("bad address in {spec:?}")))?;
        let in_use = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                Error::Conflict(format!(
                    "port {host_port}/{protocol} is in use by a process on the host (or another berth root)"
                ))
            } else {
                Error::Network(format!("cannot bind {at} ({protocol}): {e}"))
            }
        };
        if *protocol == "udp" {
            held.push(Box::new(UdpSocket::bind(at).map_err(in_use)?));
            continue;
        }
        let to = SocketAddr::from((target, container_port));
        match *host_ip {
            // One dual-stack socket holds the port on both families and relays IPv6 (an
            // IPv4 connection that reaches it, rather than nftables, is relayed too).
            "0.0.0.0" if dual_stack() => {
                match TcpListener::bind((Ipv6Addr::UNSPECIFIED, host_port)) {
                    Ok(listener) => relays.push((listener, to)),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(in_use(e)),
                    // No IPv6 on this host: IPv4 alone.
                    Err(_) => held.push(Box::new(TcpListener::bind(at).map_err(in_use)?)),
                }
            }
            "127.0.0.1" => {
                held.push(Box::new(TcpListener::bind(at).map_err(in_use)?));
                if let Ok(listener) = TcpListener::bind((Ipv6Addr::LOCALHOST, host_port)) {
                    relays.push((listener, to));
                }
            }
            _ => held.push(Box::new(TcpListener::bind(at).map_err(in_use)?)),
        }
    }
    println!("ready");
    let _ = berth_sys::nix::unistd::close(1);
    let mut threads = Vec::new();
    for (listener, to) in relays {
        threads.push(std::thread::spawn(move || relay(&listener, to)));
    }
    if threads.is_empty() {
        // Nothing to serve: hold the sockets until killed.
        loop {
            std::thread::park();
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    drop(held);
    Ok(())
}

/// Accepts IPv6 connections and copies each, both ways, to the container.
fn relay(listener: &TcpListener, to: SocketAddr) {
    loop {
        let Ok((client, _)) = listener.accept() else { continue };
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(10)) else {
                return;
            };
            let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone())
            else {
                return;
            };
            let upstream = std::thread::spawn(move || pipe(client_reader, server));
            pipe(server_reader, client);
            let _ = upstream.join();
        });
    }
}

/// Copies until end of input, then passes the end on.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}
