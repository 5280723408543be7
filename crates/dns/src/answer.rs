//! Names of Kubernetes' DNS specification and what they resolve to, as a pure function of
//! a name, a record type and a lookup of Services:
//!
//! ```text
//! SVC.NS.svc.DOMAIN                A: the ClusterIP (headless: the ready endpoints)
//!                                  ExternalName: a CNAME
//! HOST.SVC.NS.svc.DOMAIN           A: the endpoint whose hostname is HOST (headless)
//! _PORT._PROTO.SVC.NS.svc.DOMAIN   SRV: the named port, at the Service (or each endpoint)
//! A-B-C-D.NS.pod.DOMAIN            A: A.B.C.D
//! D.C.B.A.in-addr.arpa             PTR: the Service whose ClusterIP is A.B.C.D, or
//!                                  HOST.SVC.NS.svc.DOMAIN for a headless endpoint
//! ```
//! Other names in the cluster domain do not exist (NXDOMAIN); names outside it are
//! forwarded.

use std::net::Ipv4Addr;

/// What DNS needs of one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRecord {
    pub cluster_ip: Option<Ipv4Addr>,
    pub headless: bool,
    pub external_name: Option<String>,
    /// (name, protocol in lowercase, port)
    pub ports: Vec<(String, String, u16)>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    pub ready: bool,
}

/// Finds a Service by namespace and name, and names by address.
pub trait Lookup {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord>;
    /// The cluster names of an address (relative to the domain: `SVC.NS.svc`,
    /// `HOST.SVC.NS.svc`): Services' ClusterIPs, headless endpoints with a hostname.
    fn names_of(&self, ip: Ipv4Addr) -> Vec<String>;
}

/// One answer record, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Cname(String),
    /// (priority, weight, port, target)
    Srv(u16, u16, u16, String),
    Ptr(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Records (name, data): the name may differ from the question's (SRV targets' A
    /// records go in the additional section, which this answer leaves out).
    Answer(Vec<(String, Data)>),
    /// The name exists, but has no record of that type.
    NoData,
    NxDomain,
    /// Not ours: ask the host's resolvers.
    Forward,
}

/// The kinds of question this server answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    A,
    Aaaa,
    Srv,
    Cname,
    Ptr,
    Other,
}

fn dashed_ip(text: &str) -> Option<Ipv4Addr> {
    text.replace('-', ".").parse().ok()
}

/// Resolves `name` (lowercase, without the trailing dot) in `domain`.
pub fn resolve(lookup: &dyn Lookup, domain: &str, name: &str, kind: Kind) -> Outcome {
    // Reverse lookups of the cluster's addresses; others are the host's resolvers'.
    if let Some(reversed) = name.strip_suffix(".in-addr.arpa") {
        let octets: Vec<u8> = reversed.split('.').filter_map(|o| o.parse().ok()).collect();
        if octets.len() != 4 || reversed.split('.').count() != 4 {
            return Outcome::Forward;
        }
        let ip = Ipv4Addr::new(octets[3], octets[2], octets[1], octets[0]);
        let names = lookup.names_of(ip);
        if names.is_empty() {
            return Outcome::Forward;
        }
        if kind != Kind::Ptr {
            return Outcome::NoData;
        }
        return Outcome::Answer(
            names
                .into_iter()
                .map(|n| (name.to_owned(), Data::Ptr(format!("{n}.{domain}"))))
                .collect(),
        );
    }
    let Some(relative) = name.strip_suffix(domain).and_then(|r| r.strip_suffix('.')) else {
        return if name == domain { Outcome::NoData } else { Outcome::Forward };
    };
    let labels: Vec<&str> = relative.split('.').collect();
    let service_name = |svc: &str, ns: &str| format!("{svc}.{ns}.svc.{domain}");
    match labels.as_slice() {
        [svc, ns, "svc"] => {
            let Some(service) = lookup.service(ns, svc) else { return Outcome::NxDomain };
            if let Some(target) = &service.external_name {
                return Outcome::Answer(vec![(
                    name.to_owned(),
                    Data::Cname(target.trim_end_matches('.').to_owned()),
                )]);
            }
            if kind != Kind::A {
                return Outcome::NoData;
            }
            let ips: Vec<Ipv4Addr> = if service.headless {
                service.endpoints.iter().filter(|e| e.ready).map(|e| e.ip).collect()
            } else {
                service.cluster_ip.into_iter().collect()
            };
            if ips.is_empty() {
                return Outcome::NoData;
            }
            Outcome::Answer(ips.into_iter().map(|ip| (name.to_owned(), Data::A(ip))).collect())
        }
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            let Some(service) = lookup.service(ns, svc) else { return Outcome::NxDomain };
            let (port_name, protocol) = (&port[1..], &proto[1..]);
            let Some((_, _, number)) =
                service.ports.iter().find(|(n, p, _)| n == port_name && p == protocol)
            else {
                return Outcome::NxDomain;
            };
            if kind != Kind::Srv {
                return Outcome::NoData;
            }
            let base = service_name(svc, ns);
            let targets: Vec<String> = if service.headless {
                service
                    .endpoints
                    .iter()
                    .filter(|e| e.ready)
                    .map(|e| {
                        format!(
                            "{}.{base}",
                            e.hostname
                                .clone()
                                .unwrap_or_else(|| e.ip.to_string().replace('.', "-"))
                        )
                    })
                    .collect()
            } else {
                vec![base]
            };
            let weight = u16::try_from(100 / targets.len().max(1)).unwrap_or(100);
            Outcome::Answer(
                targets
                    .into_iter()
                    .map(|t| (name.to_owned(), Data::Srv(0, weight, *number, t)))
                    .collect(),
            )
        }
        [host, svc, ns, "svc"] => {
            let Some(service) = lookup.service(ns, svc) else { return Outcome::NxDomain };
            let found = service
                .endpoints
                .iter()
                .find(|e| e.hostname.as_deref() == Some(*host) || dashed_ip(host) == Some(e.ip));
            match (found, kind) {
                (None, _) => Outcome::NxDomain,
                (Some(endpoint), Kind::A) => {
                    Outcome::Answer(vec![(name.to_owned(), Data::A(endpoint.ip))])
                }
                (Some(_), _) => Outcome::NoData,
            }
        }
        [address, _ns, "pod"] => match (dashed_ip(address), kind) {
            (None, _) => Outcome::NxDomain,
            (Some(ip), Kind::A) => Outcome::Answer(vec![(name.to_owned(), Data::A(ip))]),
            (Some(_), _) => Outcome::NoData,
        },
        _ => Outcome::NxDomain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Fixed(BTreeMap<(String, String), ServiceRecord>);

    impl Lookup for Fixed {
        fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
            self.0.get(&(namespace.to_owned(), name.to_owned())).cloned()
        }

        fn names_of(&self, ip: Ipv4Addr) -> Vec<String> {
            let mut names = Vec::new();
            for ((ns, svc), record) in &self.0 {
                if record.cluster_ip == Some(ip) {
                    names.push(format!("{svc}.{ns}.svc"));
                }
                for endpoint in record.endpoints.iter().filter(|e| e.ip == ip) {
                    if let Some(host) = &endpoint.hostname {
                        names.push(format!("{host}.{svc}.{ns}.svc"));
                    }
                }
            }
            names
        }
    }

    #[test]
    fn addresses_resolve_back_to_their_names() {
        let c = cluster();
        assert_eq!(
            resolve(&c, D, "20.0.43.10.in-addr.arpa", Kind::Ptr),
            Outcome::Answer(vec![(
                "20.0.43.10.in-addr.arpa".into(),
                Data::Ptr("web.default.svc.cluster.local".into())
            )])
        );
        assert_eq!(
            resolve(&c, D, "5.0.42.10.in-addr.arpa", Kind::Ptr),
            Outcome::Answer(vec![(
                "5.0.42.10.in-addr.arpa".into(),
                Data::Ptr("db-0.db.default.svc.cluster.local".into())
            )])
        );
        assert_eq!(resolve(&c, D, "20.0.43.10.in-addr.arpa", Kind::A), Outcome::NoData);
        assert_eq!(resolve(&c, D, "1.1.168.192.in-addr.arpa", Kind::Ptr), Outcome::Forward);
        assert_eq!(resolve(&c, D, "0.43.10.in-addr.arpa", Kind::Ptr), Outcome::Forward);
    }

    fn cluster() -> Fixed {
        let mut services = BTreeMap::new();
        services.insert(
            ("default".into(), "web".into()),
            ServiceRecord {
                cluster_ip: Some(Ipv4Addr::new(10, 43, 0, 20)),
                ports: vec![("http".into(), "tcp".into(), 80)],
                ..Default::default()
            },
        );
        services.insert(
            ("default".into(), "db".into()),
            ServiceRecord {
                headless: true,
                ports: vec![("pg".into(), "tcp".into(), 5432)],
                endpoints: vec![
                    Endpoint {
                        ip: Ipv4Addr::new(10, 42, 0, 5),
                        hostname: Some("db-0".into()),
                        ready: true,
                    },
                    Endpoint { ip: Ipv4Addr::new(10, 42, 0, 6), hostname: None, ready: true },
                    Endpoint { ip: Ipv4Addr::new(10, 42, 0, 7), hostname: None, ready: false },
                ],
                ..Default::default()
            },
        );
        services.insert(
            ("default".into(), "ext".into()),
            ServiceRecord { external_name: Some("example.org.".into()), ..Default::default() },
        );
        Fixed(services)
    }

    const D: &str = "cluster.local";

    #[test]
    fn services_resolve_to_their_cluster_ip_or_ready_endpoints() {
        let c = cluster();
        assert_eq!(
            resolve(&c, D, "web.default.svc.cluster.local", Kind::A),
            Outcome::Answer(vec![(
                "web.default.svc.cluster.local".into(),
                Data::A(Ipv4Addr::new(10, 43, 0, 20))
            )])
        );
        assert_eq!(resolve(&c, D, "web.default.svc.cluster.local", Kind::Aaaa), Outcome::NoData);
        let Outcome::Answer(db) = resolve(&c, D, "db.default.svc.cluster.local", Kind::A) else {
            panic!()
        };
        assert_eq!(db.len(), 2, "only ready endpoints: {db:?}");
        assert_eq!(
            resolve(&c, D, "db-0.db.default.svc.cluster.local", Kind::A),
            Outcome::Answer(vec![(
                "db-0.db.default.svc.cluster.local".into(),
                Data::A(Ipv4Addr::new(10, 42, 0, 5))
            )])
        );
        assert_eq!(
            resolve(&c, D, "ext.default.svc.cluster.local", Kind::A),
            Outcome::Answer(vec![(
                "ext.default.svc.cluster.local".into(),
                Data::Cname("example.org".into())
            )])
        );
    }

    #[test]
    fn srv_pod_and_missing_names() {
        let c = cluster();
        assert_eq!(
            resolve(&c, D, "_http._tcp.web.default.svc.cluster.local", Kind::Srv),
            Outcome::Answer(vec![(
                "_http._tcp.web.default.svc.cluster.local".into(),
                Data::Srv(0, 100, 80, "web.default.svc.cluster.local".into())
            )])
        );
        let Outcome::Answer(srv) =
            resolve(&c, D, "_pg._tcp.db.default.svc.cluster.local", Kind::Srv)
        else {
            panic!()
        };
        assert!(srv.iter().any(|(_, d)| matches!(d, Data::Srv(_, _, 5432, t) if t == "db-0.db.default.svc.cluster.local")));
        assert!(srv.iter().any(|(_, d)| matches!(d, Data::Srv(_, _, 5432, t) if t == "10-42-0-6.db.default.svc.cluster.local")));
        assert_eq!(
            resolve(&c, D, "10-42-0-9.default.pod.cluster.local", Kind::A),
            Outcome::Answer(vec![(
                "10-42-0-9.default.pod.cluster.local".into(),
                Data::A(Ipv4Addr::new(10, 42, 0, 9))
            )])
        );
        assert_eq!(resolve(&c, D, "nothere.default.svc.cluster.local", Kind::A), Outcome::NxDomain);
        assert_eq!(
            resolve(&c, D, "_nope._tcp.web.default.svc.cluster.local", Kind::Srv),
            Outcome::NxDomain
        );
        assert_eq!(resolve(&c, D, "x.y.z.cluster.local", Kind::A), Outcome::NxDomain);
        assert_eq!(resolve(&c, D, "example.org", Kind::A), Outcome::Forward);
        assert_eq!(resolve(&c, D, "notcluster.local", Kind::A), Outcome::Forward);
    }
}
