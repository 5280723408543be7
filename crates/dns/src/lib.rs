//! Cluster DNS, as Kubernetes' DNS specification says (`answer` is the pure part), served
//! over UDP and TCP from the shared caches of Services and EndpointSlices: every answer
//! reflects the caches at the moment of the question (an answer once encoded is kept, by
//! the question's bytes, until the next change of either cache). Names outside the
//! cluster domain are relayed to the host's resolvers (`/etc/resolv.conf`). Messages are
//! decoded and encoded with `hickory-proto`.

pub mod answer;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Cache, Informers};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use answer::{Data, Endpoint, Kind, Lookup, Outcome, ServiceRecord};

/// How long answers may be cached (kube-dns's default for services).
const TTL: u32 = 5;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where to answer (UDP and TCP on each).
    pub listen: Vec<SocketAddr>,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// Resolvers for other names; the host's when empty.
    pub upstreams: Vec<SocketAddr>,
}

/// The host's resolvers, from `/etc/resolv.conf`.
pub use berth_stdx::net::host_resolvers;

/// The caches as a `Lookup`.
struct Caches {
    services: Arc<Cache<Service>>,
    slices: Arc<Cache<EndpointSlice>>,
}

impl Lookup for Caches {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        let service = self.services.store().get(&ObjectRef::new(name).within(namespace))?;
        let spec = service.spec.clone().unwrap_or_default();
        let mut record = ServiceRecord {
            cluster_ip: spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()),
            headless: spec.cluster_ip.as_deref() == Some("None"),
            external_name: (spec.type_.as_deref() == Some("ExternalName"))
                .then(|| spec.external_name.clone().unwrap_or_default()),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.name.clone().unwrap_or_default(),
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase(),
                        u16::try_from(p.port).unwrap_or(0),
                    )
                })
                .collect(),
            endpoints: Vec::new(),
        };
        if record.headless {
            for slice in self.slices.store().state() {
                let owned = slice.metadata.namespace.as_deref() == Some(namespace)
                    && slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .map(String::as_str)
                        == Some(name);
                if !owned || slice.address_type != "IPv4" {
                    continue;
                }
                for endpoint in &slice.endpoints {
                    let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    for address in &endpoint.addresses {
                        if let Ok(ip) = address.parse::<Ipv4Addr>() {
                            record.endpoints.push(Endpoint {
                                ip,
                                hostname: endpoint.hostname.clone(),
                                ready,
                            });
                        }
                    }
                }
            }
        }
        Some(record)
    }

    fn names_of(&self, ip: Ipv4Addr) -> Vec<String> {
        let wanted = ip.to_string();
        let mut names = Vec::new();
        for service in self.services.store().state() {
            let (Some(ns), Some(svc)) = (&service.metadata.namespace, &service.metadata.name)
            else {
                continue;
            };
            let spec = service.spec.clone().unwrap_or_default();
            let ips = spec.cluster_ips.clone().unwrap_or_default();
            if spec.cluster_ip.as_deref() == Some(wanted.as_str()) || ips.contains(&wanted) {
                names.push(format!("{svc}.{ns}.svc"));
            }
        }
        // Headless endpoints that name a hostname.
        for slice in self.slices.store().state() {
            let (Some(ns), Some(svc)) = (
                &slice.metadata.namespace,
                slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")),
            ) else {
                continue;
            };
            for endpoint in &slice.endpoints {
                if let Some(host) = &endpoint.hostname {
                    if endpoint.addresses.contains(&wanted) {
                        names.push(format!("{host}.{svc}.{ns}.svc"));
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

/// Answers one query message; `None` means "relay it upstream as it is".
pub fn respond(lookup: &dyn Lookup, domain: &str, query: &Message) -> Option<Message> {
    let question = query.queries.first()?;
    let name = question.name().to_ascii().trim_end_matches('.').to_lowercase();
    let kind = match question.query_type() {
        RecordType::A => Kind::A,
        RecordType::AAAA => Kind::Aaaa,
        RecordType::SRV => Kind::Srv,
        RecordType::CNAME => Kind::Cname,
        RecordType::PTR => Kind::Ptr,
        _ => Kind::Other,
    };
    let outcome = answer::resolve(lookup, domain, &name, kind);
    if outcome == Outcome::Forward {
        return None;
    }
    let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(question.clone());
    match outcome {
        Outcome::Answer(records) => {
            for (owner, data) in records {
                let Ok(owner) = Name::from_ascii(format!("{owner}.")) else { continue };
                let rdata = match data {
                    Data::A(ip) => RData::A(rdata::A(ip)),
                    Data::Cname(target) => match Name::from_ascii(format!("{target}.")) {
                        Ok(target) => RData::CNAME(rdata::CNAME(target)),
                        Err(_) => continue,
                    },
                    Data::Ptr(target) => match Name::from_ascii(format!("{target}.")) {
                        Ok(target) => RData::PTR(rdata::PTR(target)),
                        Err(_) => continue,
                    },
                    Data::Srv(priority, weight, port, target) => {
                        match Name::from_ascii(format!("{target}.")) {
                            Ok(target) => {
                                RData::SRV(rdata::SRV::new(priority, weight, port, target))
                            }
                            Err(_) => continue,
                        }
                    }
                };
                response.add_answer(Record::from_rdata(owner, TTL, rdata));
            }
        }
        Outcome::NoData => {}
        Outcome::NxDomain => response.metadata.response_code = ResponseCode::NXDomain,
        Outcome::Forward => {}
    }
    Some(response)
}

fn refuse(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
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

/// What to do with one wire-format query.
enum Reply {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Relay the query to the upstream resolvers.
    Forward,
    /// Not a query: say nothing.
    Drop,
}

/// Answers already encoded, by the bytes of the query after its ID (so a query asked the
/// same way gets the same answer, its ID put back), for as long as no Service or
/// EndpointSlice changed: every answer still reflects the caches at the moment of the
/// question, it is only not encoded again (dnsperf measured the decode-resolve-encode
/// path at two thirds of dnsmasq's rate).
struct Answers {
    /// Moves on at every change of the caches.
    generation: std::sync::atomic::AtomicU64,
    /// The generation the entries were made in, and the entries.
    entries: std::sync::Mutex<(u64, Encoded)>,
}

/// Encoded answers by the query's bytes after its ID.
type Encoded = std::collections::HashMap<Box<[u8]>, Arc<[u8]>>;

/// At most this many different questions are kept; then the table starts again.
const ANSWERS_KEPT: usize = 16_384;

/// The largest question whose answer is kept (a classic UDP message).
const MAX_KEPT_QUERY: usize = 512;

impl Answers {
    fn new() -> Answers {
        Answers { generation: 0.into(), entries: Default::default() }
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn get(&self, query: &[u8]) -> Option<Vec<u8>> {
        let key = query.get(2..)?;
        let now = self.generation();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.0 != now {
            return None;
        }
        let mut answer = entries.1.get(key)?.to_vec();
        answer[..2].copy_from_slice(&query[..2]);
        Some(answer)
    }

    /// Keeps `answer`, made from the caches as they were at generation `made_in`.
    fn put(&self, query: &[u8], made_in: u64, answer: &[u8]) {
        // Questions are small; a large one (TCP allows 64 KiB) is answered, not kept, so
        // that no client can fill the table with big keys.
        if query.len() > MAX_KEPT_QUERY {
            return;
        }
        let (Some(key), true) = (query.get(2..), answer.len() >= 2) else { return };
        if self.generation() != made_in {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.0 != made_in || entries.1.len() >= ANSWERS_KEPT {
            entries.1.clear();
            entries.0 = made_in;
        }
        entries.1.insert(key.into(), answer.into());
    }
}

/// What every serving loop shares: the caches, the encoded answers kept, the domain and
/// where other names are relayed.
struct Serving {
    lookup: Caches,
    answers: Arc<Answers>,
    domain: String,
    upstreams: Vec<SocketAddr>,
}

impl Serving {
    /// The answer to one query from the cluster's names (without relaying anything).
    fn local(&self, query: &[u8]) -> Reply {
        if let Some(answer) = self.answers.get(query) {
            return Reply::Send(answer);
        }
        let made_in = self.answers.generation();
        let message = match Message::from_vec(query) {
            Ok(message) => message,
            Err(_) => return Reply::Drop,
        };
        if message.metadata.message_type != MessageType::Query {
            return Reply::Drop;
        }
        match respond(&self.lookup, &self.domain, &message).map(|r| r.to_vec()) {
            Some(Ok(answer)) => {
                self.answers.put(query, made_in, &answer);
                Reply::Send(answer)
            }
            Some(Err(_)) => refuse(query, ResponseCode::ServFail).map_or(Reply::Drop, Reply::Send),
            None => Reply::Forward,
        }
    }

    /// The answer to one wire-format query (the upstream's, relayed, for other names).
    async fn handle(&self, query: &[u8]) -> Option<Vec<u8>> {
        match self.local(query) {
            Reply::Send(answer) => Some(answer),
            Reply::Forward => forward(&self.upstreams, query).await,
            Reply::Drop => None,
        }
    }
}

/// The upstream's answer to a query for a name outside the cluster.
async fn forward(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr =
            if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else { continue };
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buffer = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer)).await
        {
            buffer.truncate(n);
            return Some(buffer);
        }
    }
    refuse(query, ResponseCode::ServFail)
}

/// Takes every listen address (UDP and TCP) first, so one that is taken or not allowed
/// is an error naming it; then, once the caches are filled, answers until the informers'
/// shutdown (questions that come meanwhile wait in the sockets). Returns once serving.
pub async fn run(informers: Arc<Informers>, config: Config) -> std::io::Result<()> {
    let taken = |kind: &'static str, address: SocketAddr| {
        move |err: std::io::Error| {
            std::io::Error::new(err.kind(), format!("cannot listen on {kind} {address}: {err}"))
        }
    };
    let mut sockets = Vec::new();
    for &address in &config.listen {
        let udp = tokio::net::UdpSocket::bind(address).await.map_err(taken("udp", address))?;
        let tcp = tokio::net::TcpListener::bind(address).await.map_err(taken("tcp", address))?;
        sockets.push((udp, tcp));
    }
    let lookup = Caches {
        services: informers.typed::<Service>(),
        slices: informers.typed::<EndpointSlice>(),
    };
    let answers = Arc::new(Answers::new());
    // Any change of either cache may change any answer.
    let kept = answers.clone();
    lookup.services.follow(&informers, move |_| kept.changed());
    let kept = answers.clone();
    lookup.slices.follow(&informers, move |_| kept.changed());
    let shutdown = informers.shutdown().clone();
    tokio::select! {
        _ = async { lookup.services.ready().await; lookup.slices.ready().await } => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    let upstreams =
        if config.upstreams.is_empty() { host_resolvers() } else { config.upstreams.clone() };
    let serving = Arc::new(Serving { lookup, answers, domain: config.domain.clone(), upstreams });
    for (socket, listener) in sockets {
        // A receiving loop per core on each socket: the cluster's names are answered in
        // the loop, only relayed questions get a task of their own.
        let socket = Arc::new(socket);
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        for _ in 0..workers {
            let (socket, serving, shutdown) = (socket.clone(), serving.clone(), shutdown.clone());
            informers.tasks().spawn(async move {
                let mut buffer = vec![0u8; 4096];
                loop {
                    let received = tokio::select! {
                        received = socket.recv_from(&mut buffer) => received,
                        _ = shutdown.cancelled() => return,
                    };
                    let Ok((n, peer)) = received else { continue };
                    let query = &buffer[..n];
                    match serving.local(query) {
                        Reply::Send(answer) => {
                            let _ = socket.send_to(&answer, peer).await;
                        }
                        Reply::Drop => {}
                        Reply::Forward => {
                            let (socket, serving, query) =
                                (socket.clone(), serving.clone(), query.to_vec());
                            tokio::spawn(async move {
                                if let Some(answer) = forward(&serving.upstreams, &query).await {
                                    let _ = socket.send_to(&answer, peer).await;
                                }
                            });
                        }
                    }
                }
            });
        }
        let (serving, shutdown) = (serving.clone(), shutdown.clone());
        informers.tasks().spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = shutdown.cancelled() => return,
                };
                let Ok((mut stream, _)) = accepted else { continue };
                let serving = serving.clone();
                tokio::spawn(async move {
                    loop {
                        let mut length = [0u8; 2];
                        let read = tokio::time::timeout(
                            Duration::from_secs(10),
                            stream.read_exact(&mut length),
                        )
                        .await;
                        if !matches!(read, Ok(Ok(_))) {
                            return;
                        }
                        let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(answer) = serving.handle(&query).await else { return };
                        let Ok(size) = u16::try_from(answer.len()) else { return };
                        if stream.write_all(&size.to_be_bytes()).await.is_err()
                            || stream.write_all(&answer).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
    }
    tracing::info!(listen = ?config.listen, "cluster DNS serving {}", config.domain);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    struct One;

    impl Lookup for One {
        fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
            (namespace == "default" && name == "web").then(|| ServiceRecord {
                cluster_ip: Some(Ipv4Addr::new(10, 43, 0, 20)),
                ..Default::default()
            })
        }

        fn names_of(&self, ip: Ipv4Addr) -> Vec<String> {
            if ip == Ipv4Addr::new(10, 43, 0, 20) {
                vec!["web.default.svc".into()]
            } else {
                Vec::new()
            }
        }
    }

    fn query(name: &str, kind: RecordType) -> Message {
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message
    }

    #[test]
    fn encoded_answers_are_kept_until_the_caches_change() {
        let answers = Answers::new();
        let asked = query("web.default.svc.cluster.local.", RecordType::A).to_vec().unwrap();
        let made_in = answers.generation();
        let answer = respond(&One, "cluster.local", &Message::from_vec(&asked).unwrap())
            .unwrap()
            .to_vec()
            .unwrap();
        answers.put(&asked, made_in, &answer);
        // The same question under another ID gets the answer with its own ID.
        let mut again = asked.clone();
        again[..2].copy_from_slice(&[0x12, 0x34]);
        let kept = answers.get(&again).unwrap();
        assert_eq!(Message::from_vec(&kept).unwrap().metadata.id, 0x1234);
        assert_eq!(kept[2..], answer[2..]);
        // Another question (another case is another question) is not answered from it.
        let other = query("WEB.default.svc.cluster.local.", RecordType::A).to_vec().unwrap();
        assert!(answers.get(&other).is_none());
        // A change of the caches forgets everything; an answer made before it is not kept.
        answers.changed();
        assert!(answers.get(&asked).is_none());
        answers.put(&asked, made_in, &answer);
        assert!(answers.get(&asked).is_none());
        answers.put(&asked, answers.generation(), &answer);
        assert!(answers.get(&asked).is_some());
        // A large question is answered but not kept.
        let mut large = asked.clone();
        large.resize(MAX_KEPT_QUERY + 1, 0);
        answers.put(&large, answers.generation(), &answer);
        assert!(answers.get(&large).is_none());
    }

    #[test]
    fn wire_answers_round_trip() {
        let response =
            respond(&One, "cluster.local", &query("WEB.default.svc.cluster.local.", RecordType::A))
                .unwrap();
        let bytes = response.to_vec().unwrap();
        let back = Message::from_vec(&bytes).unwrap();
        assert_eq!(back.metadata.id, 7);
        assert_eq!(back.metadata.response_code, ResponseCode::NoError);
        assert!(back.metadata.authoritative);
        assert_eq!(back.answers.len(), 1);
        assert_eq!(back.answers[0].data, RData::A(rdata::A(Ipv4Addr::new(10, 43, 0, 20))));
        let missing =
            respond(&One, "cluster.local", &query("db.default.svc.cluster.local.", RecordType::A))
                .unwrap();
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert!(
            respond(&One, "cluster.local", &query("example.org.", RecordType::A)).is_none(),
            "forwarded"
        );
    }
}
