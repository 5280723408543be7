//! Load for `berth server`, for `benches/apiserver.sh`: creates at a fixed rate (latency
//! percentiles), gets and lists at full speed, watch delivery latency, then a fill up to
//! a number of objects. Usage: `apiload DATA_DIR [rate/s] [seconds] [objects]`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark tool: failing loudly is the point

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn report(name: &str, mut latencies: Vec<Duration>, elapsed: Duration, errors: usize) {
    latencies.sort();
    println!(
        "| {name} | {} | {:.0}/s | {:.2} ms | {:.2} ms | {:.2} ms | {errors} |",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1).expect("usage: apiload DATA_DIR [rate] [seconds] [objects]"),
    );
    let rate: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200.0);
    let seconds: f64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let objects: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let kubeconfig = std::fs::read_to_string(dir.join("kubeconfig")).expect("kubeconfig");
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig")
        .to_owned();
    let token = std::fs::read_to_string(dir.join("token")).expect("token").trim().to_owned();
    let ca = std::fs::read(dir.join("tls/ca.crt")).expect("ca");
    let ca = ureq::tls::Certificate::from_pem(&ca).expect("ca pem").to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_idle_connections_per_host(64)
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let base = format!("{server}/api/v1/namespaces/default/configmaps");
    let create = {
        let (auth, base) = (auth.clone(), base.clone());
        move |agent: &ureq::Agent, name: &str| -> bool {
            let body = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"key":"{}"}}}}"#,
                "v".repeat(200)
            );
            agent
                .post(&base)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .map(|r| r.status().as_u16() == 201)
                .unwrap_or(false)
        }
    };
    println!("| operation | count | throughput | p50 | p99 | max | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    // 1. Creates at a fixed rate, from 8 threads.
    let threads = 8;
    let total = (rate * seconds) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (agent, next, latencies, errors) =
                (agent.clone(), next.clone(), latencies.clone(), errors.clone());
            let create = create.clone();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let sent = Instant::now();
                if !create(&agent, &format!("rated-{i}")) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().expect("lock").push(sent.elapsed());
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let created = total;
    report(
        &format!("create at {rate:.0}/s"),
        latencies.lock().expect("lock").clone(),
        start.elapsed(),
        errors.load(Ordering::Relaxed),
    );
    // 2. Gets, full speed for 2 s.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (agent, latencies, auth, base) =
                (agent.clone(), latencies.clone(), auth.clone(), base.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while start.elapsed() < Duration::from_secs(2) {
                    let sent = Instant::now();
                    let _ = agent
                        .get(&format!("{base}/rated-{}", i % created))
                        .header("Authorization", &auth)
                        .call();
                    latencies.lock().expect("lock").push(sent.elapsed());
                    i += threads;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    report("get", latencies.lock().expect("lock").clone(), start.elapsed(), 0);
    // 3. Lists of everything created so far.
    let mut list_latencies = Vec::new();
    let start = Instant::now();
    for _ in 0..20 {
        let sent = Instant::now();
        let response = agent.get(&base).header("Authorization", &auth).call().expect("list");
        let _ = response.into_body().read_to_vec();
        list_latencies.push(sent.elapsed());
    }
    report(&format!("list of {created}"), list_latencies, start.elapsed(), 0);
    // 4. Watch delivery: from the create request to the event on an open watch.
    let revision = {
        let response = agent
            .get(&format!("{base}?limit=1"))
            .header("Authorization", &auth)
            .call()
            .expect("list");
        let body: serde_json::Value =
            serde_json::from_slice(&response.into_body().read_to_vec().expect("body"))
                .expect("json");
        body["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_owned()
    };
    let sent_at = Arc::new(Mutex::new(std::collections::HashMap::<String, Instant>::new()));
    let watcher = {
        let (agent, auth, base, sent_at) =
            (agent.clone(), auth.clone(), base.clone(), sent_at.clone());
        std::thread::spawn(move || {
            let response = agent
                .get(&format!("{base}?watch=1&resourceVersion={revision}&timeoutSeconds=30"))
                .header("Authorization", &auth)
                .call()
                .expect("watch");
            let mut reader = std::io::BufReader::new(response.into_body().into_reader());
            let mut delays = Vec::new();
            let mut line = String::new();
            use std::io::BufRead;
            while delays.len() < 200 {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let name = event["object"]["metadata"]["name"].as_str().unwrap_or("").to_owned();
                if let Some(sent) = sent_at.lock().expect("lock").get(&name) {
                    delays.push(sent.elapsed());
                }
            }
            delays
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    for i in 0..200 {
        let name = format!("watched-{i}");
        sent_at.lock().expect("lock").insert(name.clone(), Instant::now());
        create(&agent, &name);
    }
    report("watch delivery", watcher.join().expect("watcher"), start.elapsed(), 0);
    // 5. Fill up to `objects`.
    let have = created + 200;
    let next = Arc::new(AtomicUsize::new(have));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (agent, next) = (agent.clone(), next.clone());
            let create = create.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= objects {
                        return latencies;
                    }
                    let sent = Instant::now();
                    create(&agent, &format!("fill-{i}"));
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.join().expect("worker"));
    }
    report("create, unthrottled (fill)", all, start.elapsed(), 0);
    // 6. A non-admin caller (`bench` in tokens.csv, allowed by one RoleBinding), before
    // and after 1,000 other RoleBindings exist: RBAC must not read them all per request.
    let Some(user_token) = std::fs::read_to_string(dir.join("tokens.csv")).ok().and_then(|t| {
        t.lines()
            .find(|l| l.contains(",bench,"))
            .map(|l| l.split(',').next().unwrap_or("").to_owned())
    }) else {
        return;
    };
    let rbac = format!("{server}/apis/rbac.authorization.k8s.io/v1/namespaces/default");
    let post = |url: &str, body: String| {
        let response = agent
            .post(url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .expect("post");
        assert!(response.status().as_u16() == 201, "{url}: {}", response.status());
    };
    post(&format!("{rbac}/roles"), r#"{"metadata":{"name":"writer"},"rules":[{"apiGroups":[""],"resources":["configmaps"],"verbs":["create","get"]}]}"#.to_owned());
    let binding = |name: &str, user: &str| {
        format!(
            r#"{{"metadata":{{"name":"{name}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"writer"}},"subjects":[{{"kind":"User","name":"{user}"}}]}}"#
        )
    };
    post(&format!("{rbac}/rolebindings"), binding("bench", "bench"));
    let user_auth = format!("Bearer {user_token}");
    let rated_as_user = |label: &str, prefix: &str| {
        let count = (rate * seconds / 2.0) as usize;
        let start = Instant::now();
        let mut latencies = Vec::new();
        let mut errors = 0;
        for i in 0..count {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let body = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{prefix}-{i}"}}}}"#
            );
            let sent = Instant::now();
            let ok = agent
                .post(&base)
                .header("Authorization", &user_auth)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .map(|r| r.status().as_u16() == 201)
                .unwrap_or(false);
            latencies.push(sent.elapsed());
            if !ok {
                errors += 1;
            }
        }
        report(label, latencies, start.elapsed(), errors);
    };
    rated_as_user(&format!("create at {rate:.0}/s as a non-admin, 1 RoleBinding"), "user-a");
    for i in 0..1000 {
        post(
            &format!("{rbac}/rolebindings"),
            binding(&format!("other-{i}"), &format!("other-{i}")),
        );
    }
    rated_as_user(&format!("create at {rate:.0}/s as a non-admin, 1,001 RoleBindings"), "user-b");
}
