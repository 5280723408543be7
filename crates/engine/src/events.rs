//! What happened to containers, images, networks and volumes (`berth events`), in Docker's
//! shape. With no daemon to hold them, events are lines appended to `<root>/events.log`
//! by whichever berth process did the thing (one `write` per line on an `O_APPEND` file,
//! so lines from processes at the same moment never interleave); `berth events` reads the
//! file and follows it. The file is rotated to `events.log.1` past `MAX_BYTES`, so about
//! the last `2 * MAX_BYTES` of history is kept. Recording is best-effort: an event that
//! cannot be written never fails the operation it describes.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Past this size the log is rotated.
const MAX_BYTES: u64 = 1 << 20;

/// One event, as Docker's API and `docker events --format '{{json .}}'` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    /// Seconds since the epoch.
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    pub fn new(kind: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) -> Event {
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as i64;
        Event {
            kind: kind.to_owned(),
            action: action.to_owned(),
            actor: Actor { id: id.to_owned(), attributes },
            scope: "local".into(),
            time: nanos / 1_000_000_000,
            time_nano: nanos,
        }
    }

    /// Docker's line: `TIME TYPE ACTION ID (k=v, ...)`.
    pub fn line(&self) -> String {
        let time = berth_stdx::time::format_rfc3339_nanos(
            UNIX_EPOCH + std::time::Duration::from_nanos(self.time_nano.max(0) as u64),
        );
        let attributes: Vec<String> =
            self.actor.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{time} {} {} {} ({})",
            self.kind,
            self.action,
            self.actor.id,
            attributes.join(", ")
        )
    }

    /// Docker's `--filter` keys: each key ORs its values, keys AND together.
    pub fn matches(&self, filters: &BTreeMap<String, Vec<String>>) -> bool {
        filters.iter().all(|(key, values)| {
            values.iter().any(|value| {
                let attribute = |name: &str| self.actor.attributes.get(name).map(String::as_str);
                match key.as_str() {
                    "type" => self.kind == *value,
                    // `health_status: healthy` is the event `health_status`.
                    "event" => {
                        self.action == *value
                            || self.action.split(':').next() == Some(value.as_str())
                    }
                    "container" | "network" | "volume" => {
                        (self.kind == *key
                            && (self.actor.id.starts_with(value.as_str())
                                || attribute("name") == Some(value.as_str())))
                            || (key == "container" && attribute("container") == Some(value))
                    }
                    "image" => {
                        (self.kind == "image"
                            && (self.actor.id.starts_with(value.as_str())
                                || attribute("name") == Some(value.as_str())))
                            || (self.kind == "container" && attribute("image") == Some(value))
                    }
                    "label" => match value.split_once('=') {
                        Some((k, v)) => attribute(k) == Some(v),
                        None => self.actor.attributes.contains_key(value),
                    },
                    "scope" => self.scope == *value,
                    _ => false,
                }
            })
        })
    }
}

fn log_path(root: &Path) -> PathBuf {
    root.join("events.log")
}

/// Appends an event; failures are logged at debug level and otherwise ignored.
pub fn record(root: &Path, event: &Event) {
    if let Err(err) = append(root, event) {
        tracing::debug!("cannot record the event {} {}: {err}", event.kind, event.action);
    }
}

fn append(root: &Path, event: &Event) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = log_path(root);
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::File::options().create(true).append(true).mode(0o600).open(&path)?;
    file.write_all(&line)?;
    if file.metadata()?.len() > MAX_BYTES {
        // Whoever crosses the size first renames it; a reader notices the new file.
        let _ = std::fs::rename(&path, root.join("events.log.1"));
    }
    Ok(())
}

/// Every recorded event, oldest first, and where the current log ends (for `follow`).
pub fn history(root: &Path) -> (Vec<Event>, Position) {
    let mut events = Vec::new();
    if let Ok(text) = std::fs::read(root.join("events.log.1")) {
        events.extend(parse(&text));
    }
    let (mut current, position) = read_from(root, &Position::default());
    events.append(&mut current);
    (events, position)
}

/// Where a reader is in the log: the file (by inode) and the offset in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    inode: u64,
    offset: u64,
}

/// The events written since `from`; a rotated log is read from its start.
pub fn read_from(root: &Path, from: &Position) -> (Vec<Event>, Position) {
    use std::os::unix::fs::MetadataExt;
    let Ok(mut file) = std::fs::File::open(log_path(root)) else {
        return (Vec::new(), from.clone());
    };
    let Ok(meta) = file.metadata() else { return (Vec::new(), from.clone()) };
    let mut offset = if meta.ino() == from.inode { from.offset } else { 0 };
    if offset > meta.len() {
        offset = 0;
    }
    let mut data = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut data).is_err() {
        return (Vec::new(), from.clone());
    }
    // Only whole lines: a line being written is read next time.
    let whole = data.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
    data.truncate(whole);
    (parse(&data), Position { inode: meta.ino(), offset: offset + whole as u64 })
}

fn parse(data: &[u8]) -> Vec<Event> {
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, action: &str, id: &str, attributes: &[(&str, &str)]) -> Event {
        Event::new(
            kind,
            action,
            id,
            attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        )
    }

    fn filters(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            map.entry((*k).to_owned()).or_default().push((*v).to_owned());
        }
        map
    }

    #[test]
    fn filters_are_dockers() {
        let start = event(
            "container",
            "start",
            "abc123",
            &[("name", "web"), ("image", "nginx"), ("tier", "front")],
        );
        let health = event("container", "health_status: healthy", "abc123", &[("name", "web")]);
        let pull = event("image", "pull", "nginx:latest", &[("name", "nginx")]);
        assert!(start.matches(&filters(&[])));
        assert!(start.matches(&filters(&[("type", "container"), ("event", "start")])));
        assert!(start.matches(&filters(&[("event", "die"), ("event", "start")])));
        assert!(!start.matches(&filters(&[("event", "die")])));
        assert!(start.matches(&filters(&[("container", "web")])));
        assert!(start.matches(&filters(&[("container", "abc")])));
        assert!(!start.matches(&filters(&[("container", "db")])));
        assert!(start.matches(&filters(&[("image", "nginx")])));
        assert!(pull.matches(&filters(&[("image", "nginx:latest")])));
        assert!(start.matches(&filters(&[("label", "tier=front")])));
        assert!(start.matches(&filters(&[("label", "tier")])));
        assert!(!start.matches(&filters(&[("label", "tier=back")])));
        assert!(health.matches(&filters(&[("event", "health_status")])));
        assert!(!pull.matches(&filters(&[("type", "container")])));
    }

    #[test]
    fn the_log_is_appended_read_on_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        record(root, &event("container", "create", "a", &[("name", "x")]));
        let (first, at) = history(root);
        assert_eq!(first.len(), 1);
        record(root, &event("container", "start", "a", &[("name", "x")]));
        let (next, at) = read_from(root, &at);
        assert_eq!(next.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["start"]);
        assert_eq!(read_from(root, &at).0.len(), 0);
        assert!(next[0].line().ends_with(" container start a (name=x)"), "{}", next[0].line());
        // Past the size, the log moves aside; a reader starts the new one from its start.
        let big = "v".repeat(4096);
        for _ in 0..300 {
            record(root, &event("volume", "create", "v", &[("driver", big.as_str())]));
        }
        record(root, &event("container", "die", "a", &[]));
        let (after, _) = read_from(root, &at);
        assert!(after.last().is_some_and(|e| e.action == "die"));
        let (all, _) = history(root);
        assert!(all.len() > 200 && all.last().is_some_and(|e| e.action == "die"));
    }
}
