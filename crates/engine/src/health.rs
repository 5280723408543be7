//! Health checks: the monitor runs a container's check (the image's HEALTHCHECK or the
//! `--health-*` flags) every interval as an `exec` into it, and records `State.Health` as
//! Docker does: `starting` until the first success (failures inside the start period do
//! not count), `healthy` after a success, `unhealthy` after `retries` failures in a row,
//! with the last five probes' output.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::container::{Health, HealthCheck, HealthProbe, Status};
use crate::Engine;

/// The probes running now: the monitor reaps every other child it is given (orphans of
/// the container), never these, which their thread waits for.
pub(crate) static PROBES: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Output kept per probe, as Docker keeps it.
const OUTPUT_LIMIT: usize = 4096;
const LOG_LENGTH: usize = 5;

/// The argv of a check: `CMD-SHELL x` runs `/bin/sh -c x`, `CMD a b` runs `a b`.
pub fn command(check: &HealthCheck) -> Option<Vec<String>> {
    match check.test.first().map(String::as_str) {
        Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), check.test[1..].join(" ")]),
        Some("CMD") if check.test.len() > 1 => Some(check.test[1..].to_vec()),
        _ => None,
    }
}

/// The next state after a probe that ended with `code`.
pub fn next(health: &Health, code: i32, in_start_period: bool, retries: u32) -> Health {
    let mut health = health.clone();
    if code == 0 {
        health.status = "healthy".into();
        health.failing_streak = 0;
    } else if in_start_period && health.status == "starting" {
        // Failures while the container starts up do not count.
    } else {
        health.failing_streak += 1;
        if health.failing_streak >= retries {
            health.status = "unhealthy".into();
        }
    }
    health
}

/// Runs the container's check until `stop` is dropped or the container stops running.
/// `exe` is berth's binary, whose `exec` runs each probe.
pub fn run(exe: &Path, root: &Path, id: &str, check: &HealthCheck, stop: &Receiver<()>) {
    let Some(argv) = command(check) else { return };
    let started = Instant::now();
    let engine = match Engine::open(root) {
        Ok(engine) => engine,
        Err(err) => {
            tracing::warn!(id, "health checks cannot run: {err}");
            return;
        }
    };
    if update(&engine, id, |h| *h = Health { status: "starting".into(), ..Health::default() })
        .is_none()
    {
        return;
    }
    let interval = Duration::from_nanos(check.interval.max(1_000_000));
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let probe = probe(exe, root, id, &argv, Duration::from_nanos(check.timeout.max(1_000_000)));
        let in_start_period = started.elapsed() < Duration::from_nanos(check.start_period);
        let kept = update(&engine, id, |health| {
            let mut after = next(health, probe.exit_code, in_start_period, check.retries.max(1));
            after.log.push(probe.clone());
            let excess = after.log.len().saturating_sub(LOG_LENGTH);
            after.log.drain(..excess);
            *health = after;
        });
        if kept.is_none() {
            return;
        }
    }
}

/// Changes the recorded health of a running container; `None` once it is not running.
fn update(engine: &Engine, id: &str, change: impl FnOnce(&mut Health)) -> Option<()> {
    let mut locked = engine.lock(id).ok()?;
    if locked.record.state.status != Status::Running {
        return None;
    }
    let health = locked.record.state.health.get_or_insert_with(Health::default);
    let before = health.status.clone();
    change(health);
    let after = health.status.clone();
    locked.save().ok()?;
    if after != before && after != "starting" {
        engine.container_event(&format!("health_status: {after}"), &locked.record, &[]);
    }
    Some(())
}

fn probe(exe: &Path, root: &Path, id: &str, argv: &[String], timeout: Duration) -> HealthProbe {
    let start = crate::now();
    let mut probes = PROBES.lock().unwrap_or_else(|p| p.into_inner());
    let spawned = Command::new(exe)
        .arg("--root")
        .arg(root)
        .arg("exec")
        .arg(id)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    if let Ok(child) = &spawned {
        probes.push(child.id());
    }
    drop(probes);
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            return HealthProbe {
                start,
                end: crate::now(),
                exit_code: -1,
                output: format!("cannot run the check: {err}"),
            }
        }
    };
    // Output is read on threads so a chatty check cannot block on a full pipe.
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut stream| {
        std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = stream.by_ref().take(OUTPUT_LIMIT as u64).read_to_end(&mut buffer);
            // Drain the rest so the check does not block writing it.
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
            buffer
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(_) => break None,
        }
    };
    let pid = child.id();
    PROBES.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| *p != pid);
    let mut output = Vec::new();
    for reader in readers {
        output.extend(reader.join().unwrap_or_default());
    }
    output.truncate(OUTPUT_LIMIT);
    let (exit_code, output) = match status {
        Some(status) => {
            (status.code().unwrap_or(-1), String::from_utf8_lossy(&output).into_owned())
        }
        None => (-1, format!("Health check exceeded timeout ({timeout:?})")),
    };
    HealthProbe { start, end: crate::now(), exit_code, output }
}

/// berth's own binary, for the probes' `exec`: the monitor runs from a sealed copy of it
/// (see `protect_binary`), which has no path, but /proc/self/exe re-executes it.
pub fn exe() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_dockers_rules() {
        let starting = Health { status: "starting".into(), ..Health::default() };
        // Failures in the start period keep it starting; after it, they count.
        assert_eq!(next(&starting, 1, true, 3).status, "starting");
        let once = next(&starting, 1, false, 2);
        assert_eq!((once.status.as_str(), once.failing_streak), ("starting", 1));
        let twice = next(&once, 1, false, 2);
        assert_eq!(twice.status, "unhealthy");
        let back = next(&twice, 0, false, 2);
        assert_eq!((back.status.as_str(), back.failing_streak), ("healthy", 0));
        // A failure while healthy counts even in the start period.
        assert_eq!(next(&back, 1, true, 1).status, "unhealthy");
    }

    #[test]
    fn commands() {
        let shell = HealthCheck {
            test: vec!["CMD-SHELL".into(), "test -e /ok".into()],
            ..HealthCheck::default()
        };
        assert_eq!(command(&shell).unwrap_or_default(), ["/bin/sh", "-c", "test -e /ok"]);
        let exec =
            HealthCheck { test: vec!["CMD".into(), "true".into()], ..HealthCheck::default() };
        assert_eq!(command(&exec).unwrap_or_default(), ["true"]);
        assert!(
            command(&HealthCheck { test: vec!["NONE".into()], ..HealthCheck::default() }).is_none()
        );
    }
}
