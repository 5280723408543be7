//! `berth server` (the control plane, and a node agent unless disabled), `berth agent` (a
//! node agent joining a server elsewhere) and `berth kubeconfig`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the server keeps its store, certificates, token and kubeconfig.
    #[arg(long = "data-dir", default_value = "/var/lib/berth/server")]
    pub data_dir: PathBuf,
    /// HTTPS port of the API (0: any free port; the kubeconfig says which).
    #[arg(long = "https-listen-port", default_value_t = 6443)]
    pub port: u16,
    #[arg(long = "bind-address", default_value = "0.0.0.0")]
    pub bind_address: String,
    /// The address pods and other servers reach this API server at: the `kubernetes`
    /// Service's endpoint (default: --bind-address when it names one, else --node-ip,
    /// else the address of the default route), as k3s's flag.
    #[arg(long = "advertise-address")]
    pub advertise_address: Option<String>,
    /// More host names or addresses for the serving certificate (repeat it), as k3s's flag;
    /// the advertised address and this machine's name are always in it.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// The pods' network: every node gets a range of it (spec.podCIDR) that its pods take
    /// their addresses from and the other nodes route to; "" gives nodes none (then the
    /// server's own agent uses 10.42.0.0/24).
    #[arg(long = "cluster-cidr", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// The size of each node's range, in prefix bits.
    #[arg(long = "node-cidr-mask-size", default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// etcd endpoint (http://HOST:PORT); the embedded SQLite store when not given.
    #[arg(long = "datastore-endpoint")]
    pub datastore_endpoint: Option<String>,
    /// The admin bearer token (default: made once and kept in DATA_DIR/token).
    #[arg(long, env = "BERTH_TOKEN")]
    pub token: Option<String>,
    /// Run without the node agent (as k3s's `server --disable-agent`): no Node for this
    /// machine, no pods run here.
    #[arg(long = "disable-agent")]
    pub disable_agent: bool,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Run without the controllers (garbage collector, namespace and service-account
    /// controllers), as k3s's flag does.
    #[arg(long = "disable-controller-manager")]
    pub disable_controller_manager: bool,
    /// Run without the scheduler, as k3s's flag does.
    #[arg(long = "disable-scheduler")]
    pub disable_scheduler: bool,
    /// Register this many simulated nodes (no containers run; pods bound to them become
    /// Running, and finish as their `sim.berth.dev/exit-after` annotation says).
    #[arg(long = "simulate-nodes", default_value_t = 0)]
    pub simulate_nodes: usize,
    /// Capacity of each simulated node: `cpu=32,memory=256Gi,pods=110[,example.com/dev=4]`.
    #[arg(long = "simulated-node-capacity", default_value = "cpu=32,memory=256Gi,pods=110")]
    pub simulated_node_capacity: String,
    /// Labels of each simulated node: `k=v,k2=v2`.
    #[arg(long = "simulated-node-labels", default_value = "")]
    pub simulated_node_labels: String,
    /// Taints of each simulated node: `key=value:Effect,...`.
    #[arg(long = "simulated-node-taints", default_value = "")]
    pub simulated_node_taints: String,
    /// Seconds between renewals of each simulated node's Lease.
    #[arg(long = "simulated-lease-interval-seconds", default_value_t = 10)]
    pub simulated_lease_interval_seconds: u64,
    /// Milliseconds from a pod's binding to its Running on a simulated node.
    #[arg(long = "simulated-pod-start-delay-ms", default_value_t = 100)]
    pub simulated_pod_start_delay_ms: u64,
    /// The embedded store's size limit in bytes, as etcd's flag: past it, creates and
    /// updates are refused while deletes still work (default: 2 GiB, or 80% of a smaller
    /// filesystem). With --datastore-endpoint, etcd's own quota applies.
    #[arg(long = "quota-backend-bytes")]
    pub quota_backend_bytes: Option<u64>,
    /// Seconds between compactions of the store's history.
    #[arg(long = "compaction-interval-seconds", default_value_t = 60)]
    pub compaction_interval_seconds: u64,
    /// Seconds a stopping server (SIGTERM, SIGINT) gives requests, watches and loops to end.
    #[arg(long = "shutdown-grace-period", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// How long a node may go without renewing its Lease before it is marked Unknown and
    /// tainted unreachable (a Go duration: `40s`, `1m`), as kube-controller-manager's flag.
    #[arg(long = "node-monitor-grace-period", default_value = "40s", value_parser = go_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// Seconds a pod stays on a not-ready node before it is evicted, unless it says
    /// otherwise (the toleration the API server adds to every pod).
    #[arg(long = "default-not-ready-toleration-seconds", default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
    /// Seconds a pod stays on an unreachable node before it is evicted, unless it says
    /// otherwise.
    #[arg(long = "default-unreachable-toleration-seconds", default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,
    /// How often nodes' usage is read for the metrics API (`kubectl top`, autoscalers),
    /// as metrics-server's flag.
    #[arg(long = "metric-resolution", default_value = "15s", value_parser = go_duration)]
    pub metric_resolution: std::time::Duration,
    /// How often HorizontalPodAutoscalers are evaluated, as kube-controller-manager's flag.
    #[arg(long = "horizontal-pod-autoscaler-sync-period", default_value = "15s", value_parser = go_duration)]
    pub horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// The longest a service-account token issued by this server lives, whatever its
    /// request asked (kube-apiserver's flag; it takes an hour at least, berth any length,
    /// so that tests can watch tokens rotate). Unset: as asked.
    #[arg(long = "service-account-max-token-expiration", value_parser = go_duration)]
    pub service_account_max_token_expiration: Option<std::time::Duration>,
}

fn go_duration(text: &str) -> Result<std::time::Duration, String> {
    berth_stdx::time::parse_go_duration(text)
        .map(std::time::Duration::from_nanos)
        .ok_or_else(|| format!("not a duration: {text:?} (write it as 40s, 2m or 1m30s)"))
}

/// The node agent's settings, shared by `berth server` (its in-process agent) and
/// `berth agent`.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The agent's Node name (default: this machine's hostname).
    #[arg(long = "node-name", env = "BERTH_NODE_NAME")]
    pub node_name: Option<String>,
    /// The agent's node address (default: the address of the default route, else 127.0.0.1).
    #[arg(long = "node-ip")]
    pub node_ip: Option<String>,
    /// The CRI runtime the agent drives (unix:///PATH): berth's own, in this process, when
    /// not given; containerd's `unix:///run/containerd/containerd.sock` works as well.
    #[arg(long = "container-runtime-endpoint")]
    pub container_runtime_endpoint: Option<String>,
    /// Where the in-process CRI reads its CNI configuration lists (default:
    /// DATA_DIR/agent/cni, where a bridge network over the node's pod range is written
    /// once the server has given the node one).
    #[arg(long = "cni-conf-dir")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Node ports answer on 127.0.0.1 too (the proxy turns on route_localnet); by default
    /// only on the node's other addresses, as kube-proxy's nftables mode.
    #[arg(long = "nodeport-localhost")]
    pub nodeport_localhost: bool,
    /// Run the node agent without the service proxy (no ClusterIP or NodePort rules), as
    /// k3s's flag does.
    #[arg(long = "disable-kube-proxy")]
    pub disable_kube_proxy: bool,
    /// Keep no routes to the other nodes' pod ranges (when another network, a CNI that
    /// routes or encapsulates itself, joins the nodes' pods).
    #[arg(long = "disable-pod-routes")]
    pub disable_pod_routes: bool,
    /// The cluster DNS address (a Service in kube-system, answered by this server on the
    /// node's address), given to pods with `dnsPolicy: ClusterFirst`.
    #[arg(long = "cluster-dns", default_value = "10.43.0.10")]
    pub cluster_dns: String,
    /// The cluster's DNS domain.
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Run without the cluster DNS (pods get the host's resolvers).
    #[arg(long = "disable-dns")]
    pub disable_dns: bool,
    /// The port of the agent's kubelet API (what `kubectl logs` reaches through the API
    /// server); 0 picks a free one.
    #[arg(long = "kubelet-port", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// The first delay before a crashed container is restarted; it doubles per restart up
    /// to 30 times this (the kubelet's 10 s .. 5 min).
    #[arg(long = "container-restart-backoff-ms", default_value_t = 10_000)]
    pub container_restart_backoff_ms: u64,
    /// Where device plugins register (its `kubelet.sock`) and put their sockets. Default:
    /// the agent's directory's `device-plugins`; give `/var/lib/kubelet/device-plugins`
    /// for plugins that only know the kubelet's path.
    #[arg(long = "device-plugin-dir")]
    pub device_plugin_dir: Option<PathBuf>,
    /// Run without device plugins.
    #[arg(long = "disable-device-plugins")]
    pub disable_device_plugins: bool,
    /// Hard eviction thresholds, as the kubelet's: SIGNAL<QUANTITY pairs
    /// (memory.available, nodefs.available, nodefs.inodesFree, imagefs.available,
    /// imagefs.inodesFree, pid.available; a quantity or a percentage);
    /// "" turns node-pressure eviction off.
    #[arg(long = "eviction-hard", default_value = berth_agent::eviction::DEFAULT)]
    pub eviction_hard: String,
    /// What the system keeps from pods (cpu=100m,memory=256Mi,ephemeral-storage=1Gi),
    /// left out of the Node's allocatable with --kube-reserved and the hard eviction
    /// thresholds, as the kubelet's.
    #[arg(long = "system-reserved", default_value = "")]
    pub system_reserved: String,
    /// What berth itself keeps from pods (same form as --system-reserved).
    #[arg(long = "kube-reserved", default_value = "")]
    pub kube_reserved: String,
}

/// `berth agent`: a node agent joining a server elsewhere.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The server's API (https://HOST:PORT).
    #[arg(long, env = "BERTH_URL")]
    pub server: String,
    /// The server's node token (its DATA_DIR/node-token).
    #[arg(long, env = "BERTH_TOKEN")]
    pub token: String,
    /// Where the agent keeps its credentials, pods' volumes and logs.
    #[arg(long = "data-dir", default_value = "/var/lib/berth/agent")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// `berth dns`: the cluster DNS alone, answering from a server's API.
#[derive(Debug, Args)]
pub struct DnsArgs {
    /// A kubeconfig whose user may list and watch Services and EndpointSlices (the
    /// server's DATA_DIR/kubeconfig, or one from `berth kubeconfig --user`).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Where to answer, over UDP and TCP (repeat for more than one address).
    #[arg(long = "listen", default_value = "0.0.0.0:53")]
    pub listen: Vec<std::net::SocketAddr>,
    /// The cluster's DNS domain.
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Resolvers for names outside the cluster (repeatable); the host's
    /// /etc/resolv.conf when none is given.
    #[arg(long = "upstream")]
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// `berth proxy`: the service proxy alone, programming a server's Services.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// A kubeconfig whose user may list and watch Services and EndpointSlices (and patch
    /// Services' status, for LoadBalancer ingress with --node-ip).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// This node's address: LoadBalancer Services answer there and get it as ingress.
    #[arg(long = "node-ip")]
    pub node_ip: Option<String>,
    /// This node's name: its endpoints are the local ones of `Local` traffic policies.
    #[arg(long = "node-name")]
    pub node_name: Option<String>,
    /// Node ports answer on 127.0.0.1 too.
    #[arg(long = "nodeport-localhost")]
    pub nodeport_localhost: bool,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    #[arg(long = "data-dir", default_value = "/var/lib/berth/server")]
    pub data_dir: PathBuf,
    /// Print a kubeconfig for this user instead of the admin: a client certificate signed
    /// by the server's CA, whose common name is the user (RBAC decides what it may do).
    #[arg(long)]
    pub user: Option<String>,
    /// The user's group (the certificate's organization), with --user.
    #[arg(long, requires = "user")]
    pub group: Option<String>,
}

pub fn server(global: &crate::cli::Global, args: ServerArgs) -> Result<i32> {
    let simulated = simulated_nodes(&args)?;
    let agent = agent_setup(global, &args)?;
    let advertise = advertise_address(&args);
    let bind_address = args.bind_address.clone();
    let mut tls_san = vec![advertise.clone()];
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        tls_san.push(name.trim().to_owned());
    }
    tls_san.extend(args.tls_san.iter().cloned());
    let config = berth_apiserver::server::Config {
        data_dir: args.data_dir,
        bind_address: args.bind_address,
        tls_san,
        port: args.port,
        datastore_endpoint: args.datastore_endpoint,
        token: args.token,
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_seconds),
        quota_backend_bytes: args.quota_backend_bytes,
        compaction_interval: std::time::Duration::from_secs(
            args.compaction_interval_seconds.max(1),
        ),
        components: [
            (!args.disable_scheduler).then_some("scheduler"),
            (!args.disable_controller_manager).then_some("controller-manager"),
        ]
        .into_iter()
        .flatten()
        .map(str::to_owned)
        .collect(),
        default_toleration_seconds: (
            args.default_not_ready_toleration_seconds,
            args.default_unreachable_toleration_seconds,
        ),
        metric_resolution: args.metric_resolution.max(std::time::Duration::from_millis(100)),
        service_account_max_token_expiration: args.service_account_max_token_expiration,
    };
    let node_monitor_grace_period = args.node_monitor_grace_period;
    let node_ipam = if args.cluster_cidr.is_empty() {
        None
    } else {
        let cluster = berth_controllers::nodeipam::Cidr::parse(&args.cluster_cidr)
            .map_err(anyhow::Error::msg)
            .context("--cluster-cidr")?;
        anyhow::ensure!(
            (cluster.bits..=30).contains(&args.node_cidr_mask_size),
            "--node-cidr-mask-size {} does not fit in --cluster-cidr {cluster}: give {} to 30",
            args.node_cidr_mask_size,
            cluster.bits
        );
        Some(berth_controllers::nodeipam::Config { cluster, node_bits: args.node_cidr_mask_size })
    };
    let hpa_sync_period =
        args.horizontal_pod_autoscaler_sync_period.max(std::time::Duration::from_millis(100));
    let runtime = async_runtime()?;
    let kubeconfig = config.data_dir.join("kubeconfig");
    let data_dir = config.data_dir.clone();
    let disable_kube_proxy = args.node.disable_kube_proxy;
    let disable_pod_routes = args.node.disable_pod_routes;
    let nodeport_localhost = args.node.nodeport_localhost;
    let (grace, disable_controller_manager, disable_scheduler) =
        (config.shutdown_grace, args.disable_controller_manager, args.disable_scheduler);
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = berth_apiserver::server::Server::prepare(config, shutdown.clone())
            .await
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        eprintln!(
            "berth server: serving the Kubernetes API on port {}; kubeconfig: {}",
            server.port(),
            kubeconfig.display()
        );
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let loops = tokio_util::task::TaskTracker::new();
        match reachable_at(&bind_address, &advertise) {
            Ok(()) => {
                let admin =
                    berth_client::in_process(server.handler(), berth_api::identity::User::admin());
                loops.spawn(api_endpoints(admin, advertise, server.port(), shutdown.clone()));
            }
            Err(why) => eprintln!(
                "berth server: pods cannot reach the API (the kubernetes Service gets no endpoints): {why}"
            ),
        }
        // The controllers reach the API in-process, as kube-controller-manager's identity.
        // Their caches are shared with the scheduler and the simulated nodes, which act as
        // their own identities (one decode of each pod for the three, not three).
        let shared = std::sync::Arc::new(berth_reconcile::Informers::new(
            berth_client::in_process(
                server.handler(),
                berth_api::identity::User::controller_manager(),
            ),
            shutdown.clone(),
        ));
        let controllers = (!disable_controller_manager).then(|| {
            let root_ca = std::fs::read_to_string(data_dir.join("tls/ca.crt")).ok();
            let options = berth_controllers::Options {
                node_ipam,
                root_ca,
                node_monitor_grace_period,
                horizontal_pod_autoscaler_sync_period: hpa_sync_period,
            };
            berth_controllers::Manager::start_on(shared.clone(), options)
        });
        let mut informers = vec![shared.clone()];
        if !disable_scheduler {
            let client =
                berth_client::in_process(server.handler(), berth_api::identity::User::scheduler());
            let scheduler = std::sync::Arc::new(shared.sharing(client));
            loops.spawn(berth_scheduler::run(scheduler.clone()));
        }
        if let Some(config) = simulated {
            let client = berth_client::in_process(
                server.handler(),
                berth_api::identity::User::simulated_nodes(),
            );
            let nodes = std::sync::Arc::new(shared.sharing(client));
            loops.spawn(berth_simnodes::run(nodes, config));
        }
        if let Some((mut agent_config, cri)) = agent {
            agent_tls(&data_dir, &mut agent_config)?;
            if let Some((node, socket)) = cri {
                let stop = shutdown.clone();
                loops.spawn(async move {
                    if let Err(err) =
                        berth_cri::serve(node, &socket, async move { stop.cancelled().await }).await
                    {
                        eprintln!("berth server: the CRI runtime stopped: {err}");
                    }
                });
            }
            let node_ip = agent_config.node_ip.clone();
            let node_name = agent_config.node_name.clone();
            if let Some(dns_ip) = agent_config.cluster_dns.clone() {
                let admin =
                    berth_client::in_process(server.handler(), berth_api::identity::User::admin());
                if let Err(err) = bootstrap_dns(&admin, &dns_ip, &node_ip).await {
                    eprintln!("berth server: cannot publish the cluster DNS service: {err}");
                }
                let client = berth_client::in_process(
                    server.handler(),
                    berth_api::identity::User::kube_proxy(),
                );
                let dns =
                    std::sync::Arc::new(berth_reconcile::Informers::new(client, shutdown.clone()));
                let listen = format!("{node_ip}:53").parse().with_context(|| {
                    format!("the node address {node_ip:?} is not an IP address")
                })?;
                let config = berth_dns::Config {
                    listen: vec![listen],
                    domain: agent_config.cluster_domain.clone(),
                    upstreams: Vec::new(),
                };
                let serving = berth_dns::run(dns.clone(), config);
                loops.spawn(async move {
                    if let Err(err) = serving.await {
                        eprintln!("berth server: no cluster DNS: {err}");
                    }
                });
                informers.push(dns);
            }
            let client = berth_client::in_process(
                server.handler(),
                berth_api::identity::User::node(&agent_config.node_name),
            );
            let agent =
                std::sync::Arc::new(berth_reconcile::Informers::new(client, shutdown.clone()));
            loops.spawn(berth_agent::run(agent.clone(), agent_config));
            informers.push(agent);
            if !disable_kube_proxy {
                let client = berth_client::in_process(
                    server.handler(),
                    berth_api::identity::User::kube_proxy(),
                );
                let proxy =
                    std::sync::Arc::new(berth_reconcile::Informers::new(client, shutdown.clone()));
                let proxy_config = berth_proxy::Config {
                    node_ip: Some(node_ip.clone()),
                    node_name: Some(node_name.clone()),
                    nodeport_localhost,
                };
                loops.spawn(berth_proxy::run(proxy.clone(), proxy_config));
                informers.push(proxy);
            }
            if !disable_pod_routes {
                let client = berth_client::in_process(
                    server.handler(),
                    berth_api::identity::User::kube_proxy(),
                );
                let routes =
                    std::sync::Arc::new(berth_reconcile::Informers::new(client, shutdown.clone()));
                loops.spawn(berth_proxy::routes::run(routes.clone(), node_name.clone()));
                informers.push(routes);
            }
        }
        loops.close();
        server.serve().await.map_err(|err| anyhow::anyhow!("{err}"))?;
        if let Some(controllers) = controllers {
            controllers.stopped(grace).await;
        }
        let all = async {
            loops.wait().await;
            for informers in &informers {
                informers.tasks().close();
                informers.tasks().wait().await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            eprintln!("berth server: the scheduler or simulated nodes did not stop in time");
        }
        eprintln!("berth server: stopped");
        Ok(0)
    })
}

/// `berth agent`: joins the server with the node token (see `berth_agent::join`), then
/// runs the node agent, its in-process CRI runtime and its service proxy as the node,
/// until SIGTERM or SIGINT. Its credentials stay in DATA_DIR/credentials for the next start.
pub fn agent(global: &crate::cli::Global, args: AgentArgs) -> Result<i32> {
    let (mut config, cri) = node_setup(global, &args.node, args.data_dir.clone(), true)?;
    let disable_kube_proxy = args.node.disable_kube_proxy;
    let runtime = async_runtime()?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let credentials = args.data_dir.join("credentials");
        let joined = berth_agent::join::join(
            &args.server,
            &args.token,
            &credentials,
            &config.node_name,
            &config.node_ip,
        )
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot join the cluster")?;
        if let Some(api) = config.api.as_mut() {
            api.tls = joined.serving.clone();
        }
        eprintln!("berth agent: joined {} as node {}", args.server, config.node_name);
        let loops = tokio_util::task::TaskTracker::new();
        if let Some((node, socket)) = cri {
            let stop = shutdown.clone();
            loops.spawn(async move {
                if let Err(err) =
                    berth_cri::serve(node, &socket, async move { stop.cancelled().await }).await
                {
                    eprintln!("berth agent: the CRI runtime stopped: {err}");
                }
            });
        }
        let client = berth_client::from_kubeconfig(&joined.kubeconfig)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut informers = Vec::new();
        let (node_ip, node_name) = (config.node_ip.clone(), config.node_name.clone());
        let agent =
            std::sync::Arc::new(berth_reconcile::Informers::new(client.clone(), shutdown.clone()));
        loops.spawn(berth_agent::run(agent.clone(), config));
        informers.push(agent);
        if !args.node.disable_pod_routes {
            let routes = std::sync::Arc::new(berth_reconcile::Informers::new(
                client.clone(),
                shutdown.clone(),
            ));
            loops.spawn(berth_proxy::routes::run(routes.clone(), node_name.clone()));
            informers.push(routes);
        }
        if !disable_kube_proxy {
            let proxy =
                std::sync::Arc::new(berth_reconcile::Informers::new(client, shutdown.clone()));
            loops.spawn(berth_proxy::run(
                proxy.clone(),
                berth_proxy::Config {
                    node_ip: Some(node_ip),
                    node_name: Some(node_name),
                    nodeport_localhost: args.node.nodeport_localhost,
                },
            ));
            informers.push(proxy);
        }
        loops.close();
        shutdown.cancelled().await;
        let all = async {
            loops.wait().await;
            for informers in &informers {
                informers.tasks().close();
                informers.tasks().wait().await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(10), all).await.is_err() {
            eprintln!("berth agent: the agent's loops did not stop in time");
        }
        eprintln!("berth agent: stopped");
        Ok(0)
    })
}

/// The cluster DNS Service (`kube-system/kube-dns` on the cluster DNS address, as k3s's
/// CoreDNS is) and an EndpointSlice naming this node's address, where the server answers.
async fn bootstrap_dns(client: &kube::Client, dns_ip: &str, node_ip: &str) -> Result<()> {
    use kube::api::{Api, Patch, PatchParams};
    let params = PatchParams::apply("berth-server").force();
    let service: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "kube-system");
    let ports = serde_json::json!([
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
    ]);
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": dns_ip, "clusterIPs": [dns_ip], "ports": ports},
    });
    service
        .patch("kube-dns", &params, &Patch::Apply(&object))
        .await
        .context("the kube-dns Service")?;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "kube-system");
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-berth", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "berth-server"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [node_ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
    });
    slices
        .patch("kube-dns-berth", &params, &Patch::Apply(&slice))
        .await
        .context("the kube-dns EndpointSlice")?;
    Ok(())
}

/// The address the API is advertised at (see `--advertise-address`).
fn advertise_address(args: &ServerArgs) -> String {
    if let Some(address) = &args.advertise_address {
        return address.clone();
    }
    let bound = args.bind_address.parse::<std::net::IpAddr>().ok();
    if let Some(bound) = bound.filter(|a| !a.is_unspecified()) {
        return bound.to_string();
    }
    args.node.node_ip.clone().unwrap_or_else(berth_agent::default_node_ip)
}

/// Whether pods can reach an API listening on `bind` at `advertised`: not on a loopback
/// address, and the listener takes that address.
fn reachable_at(bind: &str, advertised: &str) -> std::result::Result<(), String> {
    let address: std::net::IpAddr = advertised
        .parse()
        .map_err(|_| format!("the advertised address {advertised:?} is not an IP address"))?;
    if address.is_loopback() {
        return Err(format!(
            "the advertised address {address} is a loopback address: give --advertise-address or --node-ip"
        ));
    }
    let listening =
        bind.parse::<std::net::IpAddr>().is_ok_and(|b| b.is_unspecified() || b == address);
    if !listening {
        return Err(format!("the server listens on {bind} only, not on the advertised {address}"));
    }
    Ok(())
}

/// Label of the Leases API servers hold for the `kubernetes` Service's endpoints.
const API_ENDPOINT_LABEL: &str = "berth.dev/apiserver-endpoint";

/// The `kubernetes` Service's endpoints, as kube-apiserver's lease endpoint reconciler
/// keeps them: every API server holds a Lease in kube-system (renewed every 10 s, for
/// 15 s) naming its advertised address and port, and writes the Endpoints and the
/// EndpointSlice `default/kubernetes` with the addresses whose Leases are still held, so
/// in-cluster clients reach any live server, and one killed drops out. A server that stops
/// gives its Lease up.
async fn api_endpoints(
    client: kube::Client,
    address: String,
    port: u16,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // The port is part of the name: two servers on one address never share a Lease.
    let lease = format!("apiserver-endpoint-{}-{port}", address.replace(['.', ':'], "-"));
    loop {
        if let Err(err) = publish_api_endpoints(&client, &lease, &address, port).await {
            tracing::warn!("the kubernetes Service's endpoints: {err:#}; trying again in 10 s");
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            () = shutdown.cancelled() => break,
        }
    }
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), "kube-system");
    let params = kube::api::DeleteParams::default();
    let gone = leases.delete(&lease, &params);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), gone).await;
}

async fn publish_api_endpoints(
    client: &kube::Client,
    lease: &str,
    address: &str,
    port: u16,
) -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Endpoints;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    const DURATION: i64 = 15;
    let params = PatchParams::apply("berth-server").force();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let now = k8s_openapi::jiff::Timestamp::now();
    let held = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease, "namespace": "kube-system", "labels": {API_ENDPOINT_LABEL: "true"}},
        "spec": {"holderIdentity": format!("{address}:{port}"), "leaseDurationSeconds": DURATION,
                 "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now)},
    });
    leases.patch(lease, &params, &Patch::Apply(&held)).await.context("the server's Lease")?;
    let mut live: Vec<String> = leases
        .list(&ListParams::default().labels(API_ENDPOINT_LABEL))
        .await
        .context("the API servers' Leases")?
        .items
        .into_iter()
        .filter_map(|l| {
            let spec = l.spec?;
            let renewed = spec.renew_time?.0;
            let until = renewed
                + k8s_openapi::jiff::SignedDuration::from_secs(
                    spec.lease_duration_seconds.unwrap_or(DURATION.try_into().unwrap_or(15)).into(),
                );
            let (ip, their_port) = spec
                .holder_identity?
                .rsplit_once(':')
                .map(|(a, p)| (a.to_owned(), p.to_owned()))?;
            // One port for all: a server on another port is left out; a holder that is not
            // an address is nobody's.
            let ip = ip.parse::<std::net::IpAddr>().ok()?.to_string();
            (until > now && their_port == port.to_string()).then_some(ip)
        })
        .collect();
    live.sort();
    live.dedup();
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let current = endpoints.get_opt("kubernetes").await.context("the kubernetes Endpoints")?;
    let has: Vec<String> = current
        .iter()
        .flat_map(|e| e.subsets.iter().flatten())
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect();
    let has_port = current
        .iter()
        .flat_map(|e| e.subsets.iter().flatten())
        .flat_map(|s| s.ports.iter().flatten())
        .any(|p| p.port == i32::from(port));
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = slices.get_opt("kubernetes").await.context("the kubernetes EndpointSlice")?;
    // The slice is what the service proxy reads: compared by its content too, so that one
    // whose write failed after the Endpoints' is mended.
    let family = if live.iter().any(|ip| ip.contains(':')) { "IPv6" } else { "IPv4" };
    let slice_right = slice.is_some_and(|s| {
        let mut addresses: Vec<String> =
            s.endpoints.iter().flat_map(|e| e.addresses.iter().cloned()).collect();
        addresses.sort();
        addresses == live
            && s.address_type == family
            && s.ports.iter().flatten().any(|p| p.port == Some(i32::from(port)))
    });
    if has == live && has_port && slice_right {
        return Ok(());
    }
    let addresses: Vec<serde_json::Value> =
        live.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": if live.is_empty() { serde_json::json!([]) } else {
            serde_json::json!([{"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}])
        },
    });
    endpoints
        .patch("kubernetes", &params, &Patch::Apply(&object))
        .await
        .context("the kubernetes Endpoints")?;
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "berth-server"}},
        "addressType": family,
        "endpoints": live.iter().map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}})).collect::<Vec<_>>(),
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    slices
        .patch("kubernetes", &params, &Patch::Apply(&slice))
        .await
        .context("the kubernetes EndpointSlice")?;
    Ok(())
}

/// The informers of a loop run on its own (`berth dns`, `berth proxy`) against the
/// server a kubeconfig names, once a list of `K` has shown that the server answers and
/// lets the user read it (said at once, not as a cache that never fills).
async fn standalone_informers<K>(
    kubeconfig: &std::path::Path,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<std::sync::Arc<berth_reconcile::Informers>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let client =
        berth_client::from_kubeconfig(kubeconfig).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    use kube::api::{Api, ListParams};
    Api::<K>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .with_context(|| format!("cannot list {}s with {}", K::kind(&()), kubeconfig.display()))?;
    Ok(std::sync::Arc::new(berth_reconcile::Informers::new(client, shutdown.clone())))
}

/// Waits up to 5 s for a standalone command's loops to end after its shutdown.
async fn stop_loops(informers: &berth_reconcile::Informers, command: &str) {
    informers.tasks().close();
    let waited =
        tokio::time::timeout(std::time::Duration::from_secs(5), informers.tasks().wait()).await;
    if waited.is_err() {
        eprintln!("berth {command}: its loops did not stop in time");
    }
    eprintln!("berth {command}: stopped");
}

/// `berth dns`: the cluster DNS alone, answering from the API of the server its
/// kubeconfig names, until SIGTERM or SIGINT.
pub fn dns(args: DnsArgs) -> Result<i32> {
    async_runtime()?.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let informers = standalone_informers::<k8s_openapi::api::core::v1::Service>(
            &args.kubeconfig,
            &shutdown,
        )
        .await?;
        let listen = args.listen.clone();
        let low_port = listen.iter().any(|a| a.port() < 1024);
        berth_dns::run(
            informers.clone(),
            berth_dns::Config {
                listen: args.listen,
                domain: args.cluster_domain,
                upstreams: args.upstreams,
            },
        )
        .await
        .with_context(|| {
            let hint = if low_port {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another with --listen"
            } else {
                "choose a free address with --listen"
            };
            format!("the cluster DNS cannot start ({hint})")
        })?;
        eprintln!("berth dns: answering on {listen:?}");
        shutdown.cancelled().await;
        stop_loops(&informers, "dns").await;
        Ok(0)
    })
}

/// `berth proxy`: berth-proxy over a kubeconfig's server until SIGTERM or SIGINT. The
/// rules stay in the kernel when it stops (traffic flows on; the next start reconciles).
pub fn proxy(args: ProxyArgs) -> Result<i32> {
    async_runtime()?.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let informers = standalone_informers::<k8s_openapi::api::discovery::v1::EndpointSlice>(
            &args.kubeconfig,
            &shutdown,
        )
        .await?;
        let config = berth_proxy::Config {
            node_ip: args.node_ip,
            node_name: args.node_name,
            nodeport_localhost: args.nodeport_localhost,
        };
        eprintln!(
            "berth proxy: programming Services into nftables table {}",
            berth_proxy::plan::TABLE
        );
        berth_proxy::run(informers.clone(), config).await;
        stop_loops(&informers, "proxy").await;
        Ok(0)
    })
}

/// The agent's serving certificate for its kubelet API, signed by the server's CA (which
/// `Server::prepare` has made), naming the node's address and name.
fn agent_tls(data_dir: &std::path::Path, config: &mut berth_agent::Config) -> Result<()> {
    let Some(api) = config.api.as_mut() else { return Ok(()) };
    let tls_dir = data_dir.join("tls");
    let names = vec![config.node_ip.clone(), config.node_name.clone(), "127.0.0.1".to_owned()];
    let (cert_pem, key_pem) = berth_apiserver::tls::issue_serving_certificate(
        &tls_dir,
        &format!("system:node:{}", config.node_name),
        &names,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ca_pem = std::fs::read_to_string(tls_dir.join("ca.crt"))
        .with_context(|| format!("cannot read {}", tls_dir.join("ca.crt").display()))?;
    api.tls = berth_agent::server::Tls { cert_pem, key_pem, ca_pem };
    Ok(())
}

type InProcessCri = Option<(std::sync::Arc<berth_cri::Node>, PathBuf)>;

/// The node agent's settings, and the in-process CRI it drives unless told to use another
/// runtime; `None` with `--disable-agent`.
fn agent_setup(
    global: &crate::cli::Global,
    args: &ServerArgs,
) -> Result<Option<(berth_agent::Config, InProcessCri)>> {
    if args.disable_agent {
        return Ok(None);
    }
    // The node's range comes from the node IPAM controller, when this server runs it.
    let ranges = !args.disable_controller_manager && !args.cluster_cidr.is_empty();
    node_setup(global, &args.node, args.data_dir.join("agent"), ranges).map(Some)
}

/// A node agent's settings (its state in `dir`), and the in-process CRI it drives unless
/// told to use another runtime. With `ranges`, the server gives the node its pod range
/// and the bridge network waits for it; without, it is 10.42.0.0/24.
fn node_setup(
    global: &crate::cli::Global,
    args: &NodeArgs,
    dir: PathBuf,
    ranges: bool,
) -> Result<(berth_agent::Config, InProcessCri)> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let node_name = match &args.node_name {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_else(|_| "berth".into()),
    };
    let (socket, cri) = match &args.container_runtime_endpoint {
        Some(endpoint) => (berth_agent::cri::socket_of(endpoint), None),
        None => {
            let (cni_conf_dir, cni_conf_template) = match &args.cni_conf_dir {
                Some(dir) => (dir.clone(), None),
                None => default_cni(&dir, ranges)?,
            };
            let node = berth_cri::Node::open(berth_cri::Config {
                root: global.root.clone(),
                cni_conf_dir,
                exe: PathBuf::from("/proc/self/exe"),
                insecure_registries: global.insecure_registries.clone(),
                registries_config: Some(global.registries_config.clone()),
                cni_conf_template,
            })
            .map_err(anyhow::Error::msg)
            .context("cannot open the CRI state")?;
            let socket = dir.join("cri.sock");
            (socket.clone(), Some((std::sync::Arc::new(node), socket)))
        }
    };
    let config = berth_agent::Config {
        node_name,
        runtime_socket: socket,
        root: dir.clone(),
        log_dir: dir.join("logs"),
        restart_backoff: std::time::Duration::from_millis(args.container_restart_backoff_ms),
        node_ip: args.node_ip.clone().unwrap_or_else(berth_agent::default_node_ip),
        lease_interval: std::time::Duration::from_secs(10),
        labels: std::collections::BTreeMap::new(),
        cluster_dns: (!args.disable_dns).then(|| args.cluster_dns.clone()),
        cluster_domain: args.cluster_domain.clone(),
        device_plugin_dir: (!args.disable_device_plugins)
            .then(|| args.device_plugin_dir.clone().unwrap_or_else(|| dir.join("device-plugins"))),
        eviction: berth_agent::eviction::Thresholds::parse(&args.eviction_hard)
            .map_err(anyhow::Error::msg)
            .context("--eviction-hard")?,
        reserved: {
            let mut reserved = berth_agent::Reserved::default();
            reserved
                .add(&args.system_reserved)
                .map_err(anyhow::Error::msg)
                .context("--system-reserved")?;
            reserved
                .add(&args.kube_reserved)
                .map_err(anyhow::Error::msg)
                .context("--kube-reserved")?;
            reserved
        },
        // Filled in once the server's CA exists (see `agent_tls`).
        api: Some(berth_agent::ApiConfig {
            bind_address: "0.0.0.0".into(),
            port: args.kubelet_port,
            tls: berth_agent::server::Tls {
                cert_pem: String::new(),
                key_pem: String::new(),
                ca_pem: String::new(),
            },
        }),
    };
    Ok((config, cri))
}

/// The pod network of a node: a bridge with host-local addresses in the node's pod range
/// and port mappings, in DATA_DIR/agent/cni. With `ranges` it is a template the CRI fills
/// in when the agent learns the range (UpdateRuntimeConfig); without, it is written for
/// 10.42.0.0/24 if the directory is empty.
fn default_cni(agent_dir: &std::path::Path, ranges: bool) -> Result<(PathBuf, Option<String>)> {
    let dir = agent_dir.join("cni");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let conf = |subnet: &str| {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "berth-pods",
            "plugins": [
                {"type": "bridge", "bridge": "berthpods0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": agent_dir.join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    };
    if ranges {
        return Ok((dir, Some(serde_json::to_string_pretty(&conf("{{.PodCIDR}}"))?)));
    }
    let empty = std::fs::read_dir(&dir).map(|mut d| d.next().is_none()).unwrap_or(true);
    if empty {
        let path = dir.join(berth_cri::TEMPLATED_CONFLIST);
        std::fs::write(&path, serde_json::to_vec_pretty(&conf("10.42.0.0/24"))?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok((dir, None))
}

/// The simulated nodes' settings from the flags; `None` without `--simulate-nodes`.
fn simulated_nodes(args: &ServerArgs) -> Result<Option<berth_simnodes::Config>> {
    if args.simulate_nodes == 0 {
        return Ok(None);
    }
    let pairs = |text: &str, flag: &str| -> Result<std::collections::BTreeMap<String, String>> {
        text.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|pair| {
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("{flag}: {pair:?} is not KEY=VALUE"))?;
                Ok((key.trim().to_owned(), value.trim().to_owned()))
            })
            .collect()
    };
    let capacity = pairs(&args.simulated_node_capacity, "--simulated-node-capacity")?;
    let labels = pairs(&args.simulated_node_labels, "--simulated-node-labels")?;
    let mut taints = Vec::new();
    for taint in args.simulated_node_taints.split(',').filter(|t| !t.trim().is_empty()) {
        let (pair, effect) = taint.rsplit_once(':').with_context(|| {
            format!("--simulated-node-taints: {taint:?} is not KEY=VALUE:EFFECT")
        })?;
        anyhow::ensure!(
            ["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect),
            "--simulated-node-taints: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        );
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        taints.push(k8s_openapi::api::core::v1::Taint {
            key: key.to_owned(),
            value: (!value.is_empty()).then(|| value.to_owned()),
            effect: effect.to_owned(),
            time_added: None,
        });
    }
    Ok(Some(berth_simnodes::Config {
        count: args.simulate_nodes,
        capacity,
        labels,
        taints,
        start_delay: std::time::Duration::from_millis(args.simulated_pod_start_delay_ms),
        lease_interval: std::time::Duration::from_secs(
            args.simulated_lease_interval_seconds.max(1),
        ),
        ..berth_simnodes::Config::default()
    }))
}

/// The async runtime of the long-running commands (server, agent, cri, dns): two
/// workers, as many as this project's machines have cores.
pub(crate) fn async_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// SIGTERM or SIGINT starts the drain; a second one is left to the default action.
async fn stop_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::warn!("cannot listen for SIGTERM and SIGINT; stop the server with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    eprintln!("berth: stopping (draining requests, watches and loops)");
    shutdown.cancel();
}

pub fn kubeconfig(args: KubeconfigArgs) -> Result<i32> {
    let path = args.data_dir.join("kubeconfig");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: has `berth server --data-dir {}` run?",
            path.display(),
            args.data_dir.display()
        )
    })?;
    let Some(user) = args.user else {
        print!("{text}");
        return Ok(0);
    };
    anyhow::ensure!(
        !user.is_empty() && !user.contains(['\n', '\r']),
        "--user needs a name on one line"
    );
    use base64::Engine as _;
    let encode = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let (cert, key) = berth_apiserver::tls::issue_client_certificate(
        &args.data_dir.join("tls"),
        &user,
        args.group.as_deref(),
    )?;
    // The admin's kubeconfig, with the cluster kept and the user replaced.
    let cluster = text
        .split("users:")
        .next()
        .unwrap_or_default()
        .replace("user: admin", &format!("user: {user:?}"));
    print!(
        "{cluster}users:\n- name: {user:?}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        encode(&cert),
        encode(&key)
    );
    Ok(0)
}
