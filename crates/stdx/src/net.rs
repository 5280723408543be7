//! The host's network configuration as std types.

use std::net::{IpAddr, SocketAddr};

/// The host's DNS resolvers (`nameserver` lines of `/etc/resolv.conf`), port 53.
pub fn host_resolvers() -> Vec<SocketAddr> {
    resolvers_in(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

/// The resolvers a resolv.conf names.
pub fn resolvers_in(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nameservers() {
        let found = super::resolvers_in(
            "# x\nsearch lan\nnameserver 10.0.0.2\nnameserver ::1\nnameserver bogus\n",
        );
        assert_eq!(
            found.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.2:53", "[::1]:53"]
        );
    }
}
