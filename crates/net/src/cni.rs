//! CNI plugins run as the CNI specification says: the command and its arguments in the
//! environment, the network configuration on stdin, the result (or an error object) on
//! stdout. A configuration list runs its plugins in order on ADD, each given the previous
//! result as `prevResult`, and in reverse order on DEL with the result ADD returned.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

use crate::{io, Error, Result};

/// Where Debian's `containernetworking-plugins` puts the plugins.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";
/// Where the standard configuration lists live.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// The plugin directories (colon-separated): `BERTH_CNI_PATH` if set, else Debian's.
pub fn plugin_path() -> String {
    std::env::var("BERTH_CNI_PATH").unwrap_or_else(|_| DEFAULT_PLUGIN_DIR.to_owned())
}

/// Who is being attached, and where.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS` pairs (`K8S_POD_NAME`, ...).
    pub args: &'a [(String, String)],
    /// Values for plugins that declare the capability (`portMappings`, `dns`, ...).
    pub runtime_config: &'a Map<String, Value>,
}

/// Runs one plugin with one command; returns what it printed (a result for ADD).
pub fn run_plugin(
    plugin: &str,
    command: &str,
    who: &Attachment<'_>,
    conf: &Value,
) -> Result<Value> {
    let path = plugin_path();
    let binary = path
        .split(':')
        .map(|dir| Path::new(dir).join(plugin))
        .find(|candidate| candidate.exists())
        .ok_or_else(|| {
            Error::Failed(format!(
                "the CNI plugin {plugin} is not in {path}; install Debian's containernetworking-plugins"
            ))
        })?;
    let cni_args = who.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
    let mut child = Command::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", who.container_id)
        .env("CNI_NETNS", who.netns)
        .env("CNI_IFNAME", who.ifname)
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", &path)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("run", &binary))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let output = child.wait_with_output().map_err(io("run", &binary))?;
    let stdout: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    if !output.status.success() {
        let message = stdout["msg"].as_str().map(str::to_owned).unwrap_or_else(|| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let details = stdout["details"].as_str().map(|d| format!(" ({d})")).unwrap_or_default();
        return Err(Error::Failed(format!("CNI {plugin} {command}: {}{details}", message.trim())));
    }
    Ok(stdout)
}

/// A network configuration list (`.conflist`), or a single configuration lifted into one.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// The file it came from.
    pub source: PathBuf,
}

impl ConfList {
    /// Parses a `.conflist`, or a `.conf`/`.json` holding one plugin's configuration.
    pub fn parse(data: &[u8], source: &Path) -> Result<ConfList> {
        let bad =
            |why: String| Error::Failed(format!("CNI configuration {}: {why}", source.display()));
        let value: Value = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
        let name = value["name"].as_str().ok_or_else(|| bad("has no \"name\"".into()))?.to_owned();
        let cni_version = value["cniVersion"].as_str().unwrap_or("0.4.0").to_owned();
        let plugins = match value.get("plugins") {
            Some(Value::Array(plugins)) => plugins.clone(),
            Some(_) => return Err(bad("\"plugins\" is not a list".into())),
            None if value.get("type").is_some() => vec![value.clone()],
            None => return Err(bad("has neither \"plugins\" nor \"type\"".into())),
        };
        if plugins.is_empty() {
            return Err(bad("lists no plugins".into()));
        }
        for plugin in &plugins {
            if plugin["type"].as_str().is_none_or(str::is_empty) {
                return Err(bad(format!("a plugin has no \"type\": {plugin}")));
            }
        }
        Ok(ConfList { name, cni_version, plugins, source: source.to_owned() })
    }

    /// The first configuration in `dir` by file name (`.conflist`, `.conf`, `.json`), as
    /// libcni picks the default network; `None` if there is none.
    pub fn first_in(dir: &Path) -> Result<Option<ConfList>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
                })
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io("read", dir)(err)),
        };
        files.sort();
        let Some(first) = files.first() else { return Ok(None) };
        let data = std::fs::read(first).map_err(io("read", first))?;
        ConfList::parse(&data, first).map(Some)
    }

    /// The configuration one plugin of the list is given.
    fn plugin_conf(
        &self,
        plugin: &Value,
        previous: Option<&Value>,
        runtime_config: &Map<String, Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        if let Value::Object(map) = &mut conf {
            map.insert("name".into(), json!(self.name));
            map.insert("cniVersion".into(), json!(self.cni_version));
            if let Some(previous) = previous {
                map.insert("prevResult".into(), previous.clone());
            }
            let wanted: Map<String, Value> = plugin["capabilities"]
                .as_object()
                .map(|caps| {
                    caps.iter()
                        .filter(|(_, on)| on.as_bool() == Some(true))
                        .filter_map(|(cap, _)| {
                            runtime_config.get(cap).map(|v| (cap.clone(), v.clone()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !wanted.is_empty() {
                map.insert("runtimeConfig".into(), Value::Object(wanted));
            }
        }
        conf
    }

    /// ADD through every plugin in order; returns the last result. A failure part-way
    /// deletes what the earlier plugins made.
    pub fn add(&self, who: &Attachment<'_>) -> Result<Value> {
        let mut previous: Option<Value> = None;
        for (done, plugin) in self.plugins.iter().enumerate() {
            let kind = plugin["type"].as_str().unwrap_or_default();
            let conf = self.plugin_conf(plugin, previous.as_ref(), who.runtime_config);
            match run_plugin(kind, "ADD", who, &conf) {
                Ok(result) => previous = Some(result),
                Err(err) => {
                    let partial =
                        ConfList { plugins: self.plugins[..done].to_vec(), ..self.clone() };
                    let _ = partial.del(who, previous.as_ref());
                    return Err(err);
                }
            }
        }
        Ok(previous.unwrap_or(Value::Null))
    }

    /// DEL through every plugin in reverse order, each given ADD's result; carries on past
    /// failures and reports the first.
    pub fn del(&self, who: &Attachment<'_>, result: Option<&Value>) -> Result<()> {
        let mut first_error = None;
        for plugin in self.plugins.iter().rev() {
            let kind = plugin["type"].as_str().unwrap_or_default();
            let conf = self.plugin_conf(plugin, result, who.runtime_config);
            if let Err(err) = run_plugin(kind, "DEL", who, &conf) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The first IPv4 (then IPv6) address of a CNI result, without its prefix length.
pub fn result_ips(result: &Value) -> Vec<String> {
    let mut ips: Vec<String> = result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_owned())
                .collect()
        })
        .unwrap_or_default();
    ips.sort_by_key(|ip| ip.contains(':'));
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_conf_becomes_a_list_of_one() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#;
        let list = ConfList::parse(conf, Path::new("x.conf")).unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.name, "n");
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        let err = ConfList::parse(br#"{"name":"n","plugins":[{}]}"#, Path::new("a.conflist"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.conflist") && err.contains("no \"type\""), "{err}");
        let err = ConfList::parse(b"{", Path::new("b.conflist")).unwrap_err().to_string();
        assert!(err.contains("b.conflist"), "{err}");
    }

    #[test]
    fn capabilities_pick_runtime_config_and_prev_result_chains() {
        let list = ConfList::parse(
            br#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            Path::new("10.conflist"),
        )
        .unwrap();
        let mut runtime = Map::new();
        runtime.insert("portMappings".into(), json!([{"hostPort": 8080}]));
        runtime.insert("bandwidth".into(), json!({}));
        let first = list.plugin_conf(&list.plugins[0], None, &runtime);
        assert!(first.get("runtimeConfig").is_none());
        assert!(first.get("prevResult").is_none());
        let prev = json!({"ips": [{"address": "10.1.0.2/24"}]});
        let second = list.plugin_conf(&list.plugins[1], Some(&prev), &runtime);
        assert_eq!(second["runtimeConfig"], json!({"portMappings": [{"hostPort": 8080}]}));
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["name"], "pods");
        assert_eq!(result_ips(&prev), vec!["10.1.0.2"]);
    }

    #[test]
    fn the_first_file_by_name_is_the_default_network() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            br#"{"name":"b","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("10-a.conf"), br#"{"name":"a","type":"y"}"#).unwrap();
        std::fs::write(dir.path().join("README"), b"not a conf").unwrap();
        assert_eq!(ConfList::first_in(dir.path()).unwrap().unwrap().name, "a");
        assert!(ConfList::first_in(&dir.path().join("none")).unwrap().is_none());
    }
}
