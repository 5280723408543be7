//! The image endpoints: pull and push with Docker's JSON progress stream, build from a tar
//! context, tag, remove, history, save, load, prune, search.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;

use berth_image::digest::Digest;
use berth_image::progress::Progress;
use berth_image::reference::Reference;
use berth_image::store::Removed;
use hyper::StatusCode;
use serde_json::{json, Value};

use super::{filters, json_reply, streamed, truthy, ApiError, Feed, Reply};
use crate::cli::Global;

/// The query key under which `respond` passes the `X-Registry-Auth` header.
pub(super) const REGISTRY_AUTH: &str = "\u{0}X-Registry-Auth";

/// Credentials from `X-Registry-Auth` (base64url JSON `{username, password, ...}`, as
/// the docker client sends them), else those `berth login` saved.
fn client_options(
    global: &Global,
    registry: &str,
    q: &BTreeMap<String, String>,
) -> Result<berth_image::registry::ClientOptions, ApiError> {
    let mut options = crate::images::client_options(global, registry)?;
    if let Some(header) = q.get(REGISTRY_AUTH).filter(|h| !h.is_empty()) {
        use base64::Engine as _;
        let text = header.trim();
        let decoded = base64::engine::general_purpose::URL_SAFE
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
            .map_err(|e| ApiError::bad(format!("X-Registry-Auth is not base64: {e}")))?;
        let auth: Value = serde_json::from_slice(&decoded)
            .map_err(|e| ApiError::bad(format!("X-Registry-Auth is not JSON: {e}")))?;
        let username = auth["username"].as_str().unwrap_or("");
        let password = auth["password"].as_str().unwrap_or("");
        if !username.is_empty() {
            options.credentials = Some(berth_image::credentials::Credentials {
                username: username.to_owned(),
                password: password.to_owned(),
            });
        }
    }
    Ok(options)
}

/// Docker's progress lines for a pull or a push: a line per state of a layer, and
/// the bytes moved about every megabyte.
struct JsonProgress {
    feed: Arc<Feed>,
    moved: std::sync::Mutex<BTreeMap<String, (u64, u64, u64)>>,
    verb: &'static str,
}

impl Progress for JsonProgress {
    fn start(&self, digest: &Digest, total: u64, done: u64) {
        let id = digest.short().to_owned();
        let mut moved = super::lock(&self.moved);
        moved.insert(id.clone(), (total, done, done));
        self.feed.line(&json!({"status": self.verb, "progressDetail": {"current": done, "total": total}, "id": id}));
    }

    fn advance(&self, digest: &Digest, bytes: u64) {
        let id = digest.short().to_owned();
        let mut moved = super::lock(&self.moved);
        let entry = moved.entry(id.clone()).or_insert((0, 0, 0));
        entry.1 += bytes;
        if entry.1 - entry.2 >= 1 << 20 || entry.1 == entry.0 {
            entry.2 = entry.1;
            let (total, current) = (entry.0, entry.1);
            drop(moved);
            self.feed.line(&json!({"status": self.verb, "progressDetail": {"current": current, "total": total},
                "progress": format!("{} / {}", crate::images::human_size(current), crate::images::human_size(total)), "id": id}));
        }
    }

    fn status(&self, digest: &Digest, status: &str) {
        self.feed.line(&json!({"status": status, "progressDetail": {}, "id": digest.short()}));
    }
}

fn error_line(feed: &Feed, message: &str) {
    feed.line(&json!({"errorDetail": {"message": message}, "error": message}));
}

/// `POST /images/create?fromImage=&tag=&platform=`: a pull, with its progress as it goes.
pub(super) fn pull(global: &Arc<Global>, q: &BTreeMap<String, String>) -> Reply {
    let from = q.get("fromImage").filter(|f| !f.is_empty()).ok_or_else(|| {
        ApiError::bad("fromImage is required (importing with fromSrc is not served yet)")
    })?;
    let name = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) if tag.starts_with("sha256:") => format!("{from}@{tag}"),
        Some(tag) => format!("{from}:{tag}"),
        None => from.clone(),
    };
    let reference: Reference =
        name.parse().map_err(|e| ApiError::bad(format!("invalid reference format: {e}")))?;
    let platform = q
        .get("platform")
        .filter(|p| !p.is_empty())
        .map(|p| berth_image::manifest::Platform::parse(p))
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let options = berth_image::pull::PullOptions {
        platform,
        client: client_options(global, &reference.registry, q)?,
        mirrors: crate::images::mirrors(global)?,
        ..Default::default()
    };
    let store = crate::images::open_store(global)?;
    let (feed, response) = streamed("application/json");
    let global = global.clone();
    std::thread::spawn(move || {
        let feed = Arc::new(feed);
        let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
        feed.line(&json!({"status": format!("Pulling from {}", reference.repository), "id": tag}));
        let before = store.resolve(&reference.to_string()).ok().map(|i| i.record.id);
        let progress =
            JsonProgress { feed: feed.clone(), moved: Default::default(), verb: "Downloading" };
        match berth_image::pull::pull(&store, &reference, &options, &progress) {
            Ok(pulled) => {
                feed.line(&json!({"status": format!("Digest: {}", pulled.digest)}));
                let status = if before.as_ref() == Some(&pulled.id) {
                    "Image is up to date for"
                } else {
                    "Downloaded newer image for"
                };
                feed.line(&json!({"status": format!("Status: {status} {}", reference.familiar())}));
                crate::images::image_event(
                    &global,
                    "pull",
                    &reference.to_string(),
                    &reference.familiar(),
                );
            }
            Err(err) => error_line(&feed, &format!("{err:#}")),
        }
    });
    Ok(response)
}

/// `POST /images/create?fromSrc=-&repo=&tag=&changes=&message=`: `docker import`, the
/// body a tar of a filesystem (maybe compressed); `changes` are Dockerfile instructions
/// for the config, as `berth import --change` takes them.
pub(super) fn import(global: &Global, q: &BTreeMap<String, String>, body: std::fs::File) -> Reply {
    let source = q.get("fromSrc").map(String::as_str).unwrap_or("");
    if source != "-" {
        return Err(ApiError::bad(format!(
            "fromSrc {source:?}: importing from a URL is not served; send the archive in the body (fromSrc=-)"
        )));
    }
    let reference = match q.get("repo").filter(|r| !r.is_empty()) {
        Some(repo) => {
            let name = match q.get("tag").filter(|t| !t.is_empty()) {
                Some(tag) => format!("{repo}:{tag}"),
                None => repo.clone(),
            };
            Some(
                name.parse::<Reference>()
                    .map_err(|e| ApiError::bad(format!("invalid reference format: {e}")))?,
            )
        }
        None => None,
    };
    let changes: Vec<String> = q
        .get("changes")
        .map(|c| c.split('\u{0}').filter(|c| !c.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut run = berth_image::config::RunConfig::default();
    crate::images::apply_changes(&mut run, &changes)
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let shown = q.get("message").filter(|m| !m.is_empty()).cloned().unwrap_or_else(|| "-".into());
    let store = crate::images::open_store(global)?;
    let id = berth_image::archive::import(
        &store,
        std::io::BufReader::with_capacity(1 << 20, body),
        &shown,
        Some(run),
        reference.as_ref(),
    )
    .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    crate::images::image_event(global, "import", &id.to_string(), &id.to_string());
    json_reply(StatusCode::OK, &json!({"status": id.to_string()}))
}

/// `POST /images/{name}/push?tag=`.
pub(super) fn push(global: &Arc<Global>, name: &str, q: &BTreeMap<String, String>) -> Reply {
    let name = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) => format!("{name}:{tag}"),
        None => name.to_owned(),
    };
    let target: Reference =
        name.parse().map_err(|e| ApiError::bad(format!("invalid reference format: {e}")))?;
    let store = crate::images::open_store(global)?;
    store
        .resolve(&name)
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("No such image: {name}")))?;
    let options = client_options(global, &target.registry, q)?;
    let (feed, response) = streamed("application/json");
    let global = global.clone();
    std::thread::spawn(move || {
        let feed = Arc::new(feed);
        feed.line(&json!({"status": format!("The push refers to repository [{}]", target.name())}));
        let progress =
            JsonProgress { feed: feed.clone(), moved: Default::default(), verb: "Pushing" };
        match berth_image::push::push(&store, &name, &target, &options, &progress) {
            Ok(pushed) => {
                let tag = target.tag.as_deref().unwrap_or("latest");
                feed.line(&json!({"status": format!("{tag}: digest: {} size: {}", pushed.digest, pushed.size)}));
                feed.line(&json!({"progressDetail": {}, "aux": {"Tag": tag, "Digest": pushed.digest.to_string(), "Size": pushed.size}}));
                crate::images::image_event(
                    &global,
                    "push",
                    &target.to_string(),
                    &target.familiar(),
                );
            }
            Err(err) => error_line(&feed, &format!("{err:#}")),
        }
    });
    Ok(response)
}

/// `POST /images/{name}/tag?repo=&tag=`.
pub(super) fn tag(global: &Global, name: &str, q: &BTreeMap<String, String>) -> Reply {
    let repo = q
        .get("repo")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad("repo is required (?repo=)"))?;
    let target = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) => format!("{repo}:{tag}"),
        None => repo.clone(),
    };
    target
        .parse::<Reference>()
        .map_err(|e| ApiError::bad(format!("invalid reference format: {e}")))?;
    let store = crate::images::open_store(global)?;
    let image = store
        .resolve(name)
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("No such image: {name}")))?;
    store.tag(name, &target)?;
    let familiar = target.parse::<Reference>().map(|r| r.familiar()).unwrap_or(target);
    crate::images::image_event(global, "tag", &image.record.id.to_string(), &familiar);
    super::empty(StatusCode::CREATED)
}

/// `DELETE /images/{name}?force=`: what was untagged and deleted.
pub(super) fn remove(global: &Global, name: &str, q: &BTreeMap<String, String>) -> Reply {
    let store = crate::images::open_store(global)?;
    let id = store
        .resolve(name)
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("No such image: {name}")))?
        .record
        .id
        .to_string();
    let removed = store.remove(name, truthy(q, "force")).map_err(|e| {
        let message = e.to_string();
        if message.contains("in use") || message.contains("used by") {
            ApiError(StatusCode::CONFLICT, message)
        } else {
            ApiError::from(e)
        }
    })?;
    let mut list = Vec::new();
    for line in removed {
        match line {
            Removed::Untagged(name) => {
                crate::images::image_event(global, "untag", &id, &name);
                list.push(json!({"Untagged": name}));
            }
            Removed::Deleted(deleted) => {
                crate::images::image_event(
                    global,
                    "delete",
                    &deleted.to_string(),
                    &deleted.to_string(),
                );
                list.push(json!({"Deleted": deleted.to_string()}));
            }
        }
    }
    json_reply(StatusCode::OK, &Value::Array(list))
}

/// `GET /images/{name}/history`: newest first, the image's ID on the newest entry.
pub(super) fn history(global: &Global, name: &str) -> Reply {
    let store = crate::images::open_store(global)?;
    let image = store
        .resolve(name)
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("No such image: {name}")))?;
    let mut layer = image.chain_ids.len();
    let mut list = Vec::new();
    for (i, entry) in image.config.history.iter().rev().enumerate() {
        let size = if entry.empty_layer || layer == 0 {
            0
        } else {
            layer -= 1;
            store.snapshot(&image.chain_ids[layer])?.map_or(0, |s| s.size)
        };
        list.push(json!({
            "Id": if i == 0 { image.record.id.to_string() } else { "<missing>".to_owned() },
            "Created": entry.created.as_deref().and_then(berth_image::config::parse_rfc3339).unwrap_or(0),
            "CreatedBy": entry.created_by.clone().unwrap_or_default(),
            "Tags": if i == 0 { json!(image.record.names) } else { Value::Null },
            "Size": size,
            "Comment": entry.comment.clone().unwrap_or_default(),
        }));
    }
    json_reply(StatusCode::OK, &Value::Array(list))
}

/// `GET /images/get?names=a&names=b` and `GET /images/{name}/get`: a `docker save` tar.
pub(super) fn save(global: &Global, names: Vec<String>) -> Reply {
    if names.is_empty() {
        return Err(ApiError::bad("name the images to save (?names=)"));
    }
    let store = crate::images::open_store(global)?;
    for name in &names {
        store
            .resolve(name)
            .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("No such image: {name}")))?;
    }
    let (feed, response) = streamed("application/x-tar");
    std::thread::spawn(move || {
        let out = std::io::BufWriter::with_capacity(1 << 20, super::containers::FeedWriter(feed));
        match berth_image::archive::save(&store, &names, out) {
            Ok(mut writer) => {
                let _ = std::io::Write::flush(&mut writer);
            }
            Err(err) => tracing::warn!("save of {names:?} ended early: {err}"),
        }
    });
    Ok(response)
}

/// `POST /images/load?quiet=`: a `docker save` or OCI archive in the body.
pub(super) fn load(global: &Global, body: std::fs::File) -> Reply {
    let store = crate::images::open_store(global)?;
    let loaded = berth_image::archive::load(
        &store,
        std::io::BufReader::with_capacity(1 << 20, body),
        std::path::Path::new("the request body"),
        None,
    )
    .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let mut lines = String::new();
    for image in loaded {
        let id = image.id.to_string();
        crate::images::image_event(global, "load", &id, image.names.first().unwrap_or(&id));
        if image.names.is_empty() {
            lines.push_str(&json!({"stream": format!("Loaded image ID: {id}\n")}).to_string());
            lines.push('\n');
        }
        for name in image.names {
            let shown = name.parse::<Reference>().map(|r| r.familiar()).unwrap_or(name);
            lines.push_str(&json!({"stream": format!("Loaded image: {shown}\n")}).to_string());
            lines.push('\n');
        }
    }
    Ok(hyper::Response::builder()
        .header("Content-Type", "application/json")
        .header("Api-Version", super::API_VERSION)
        .body(super::whole(lines))
        .unwrap_or_default())
}

/// `POST /images/prune?filters={"dangling":["false"]}`.
pub(super) fn prune(global: &Global, q: &BTreeMap<String, String>) -> Reply {
    let filters = filters(q)?;
    // Filters berth cannot apply are refused: ignoring one would delete more than asked.
    if let Some(other) = filters.keys().find(|k| k.as_str() != "dangling") {
        return Err(ApiError::bad(format!(
            "invalid filter '{other}': berth prunes images by dangling only"
        )));
    }
    let all = filters.get("dangling").is_some_and(|d| d.iter().any(|v| v == "false" || v == "0"));
    let store = crate::images::open_store(global)?;
    let (removed, freed) = store.prune(all)?;
    let deleted: Vec<Value> = removed.iter().map(|id| json!({"Deleted": id.to_string()})).collect();
    json_reply(StatusCode::OK, &json!({"ImagesDeleted": deleted, "SpaceReclaimed": freed}))
}

/// Unpacks a build context (a tar, maybe gzip-compressed) into `dir`. Entries that would
/// land outside it are refused by the tar reader.
fn unpack_context(mut body: std::fs::File, dir: &std::path::Path) -> Result<(), ApiError> {
    use std::io::{Read, Seek};
    let mut head = [0u8; 8];
    let n = body.read(&mut head).unwrap_or(0);
    if n == 0 {
        // No context at all (a Dockerfile-less build fails later, saying so).
        return Ok(());
    }
    body.rewind().map_err(|e| ApiError::bad(format!("the build context: {e}")))?;
    let reader = berth_image::manifest::Compression::sniff(&head[..n])
        .decoder(std::io::BufReader::with_capacity(1 << 20, body))
        .map_err(|e| ApiError::bad(format!("the build context cannot be decompressed: {e}")))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.unpack(dir).map_err(|e| {
        ApiError::bad(format!("the build context is not a tar archive (or is damaged): {e}"))
    })
}

/// `POST /build`: the classic builder's endpoint. The body is the context as a tar; the
/// build is `berth build`, run as a child, and its output comes back as Docker's
/// `{"stream": ...}` lines, then `{"aux": {"ID": ...}}` and "Successfully built/tagged".
pub(super) fn build(
    global: &Arc<Global>,
    q: &BTreeMap<String, String>,
    body: std::fs::File,
) -> Reply {
    if q.get("remote").is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::bad(
            "building from a remote context (git or URL) is not served: send the context as a tar",
        ));
    }
    let context =
        tempfile::Builder::new().prefix("berth-build-context-").tempdir().map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot make a temporary directory: {e}"),
            )
        })?;
    unpack_context(body, context.path())?;
    let json_map = |key: &str| -> Result<BTreeMap<String, Value>, ApiError> {
        match q.get(key).filter(|v| !v.is_empty()) {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| ApiError::bad(format!("{key} is not a JSON object: {e}"))),
            None => Ok(BTreeMap::new()),
        }
    };
    let build_args = json_map("buildargs")?;
    let labels = json_map("labels")?;
    let tags: Vec<String> = q
        .get("t")
        .map(|t| t.split('\u{0}').filter(|t| !t.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let dockerfile = q.get("dockerfile").filter(|d| !d.is_empty()).cloned();
    // The Dockerfile must be a file of the context: not an absolute path, not `..`, not a
    // symlink that leads out (its text would come back in error messages).
    {
        let file = dockerfile.as_deref().unwrap_or("Dockerfile");
        let outside = || {
            ApiError::bad(format!("dockerfile {file:?} must be a file inside the build context"))
        };
        let relative = std::path::Path::new(file);
        if relative.is_absolute()
            || relative.components().any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(outside());
        }
        let root = context.path().canonicalize().map_err(|e| {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the build context: {e}"))
        })?;
        if let Ok(real) = root.join(relative).canonicalize() {
            if !real.starts_with(&root) || !real.is_file() {
                return Err(outside());
            }
        }
    }
    let iidfile = context.path().join(".berth-build-iid");
    let mut command = std::process::Command::new("/proc/self/exe");
    command.arg("--root").arg(&global.root);
    for registry in &global.insecure_registries {
        command.arg("--insecure-registry").arg(registry);
    }
    command.arg("build").arg("--progress").arg("plain").arg("--iidfile").arg(&iidfile);
    for tag in &tags {
        command.arg("-t").arg(tag);
    }
    if let Some(file) = &dockerfile {
        command.arg("-f").arg(context.path().join(file));
    }
    // Values go through the child's environment (`--build-arg KEY` takes it from there):
    // a command line is readable by every user, and build args often carry tokens.
    for (key, value) in &build_args {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ApiError::bad(format!("build arg {key:?} is not a valid name")));
        }
        if let Some(v) = value.as_str() {
            command.env(key, v);
        }
        command.arg("--build-arg").arg(key);
    }
    for (key, value) in &labels {
        command.arg("--label").arg(format!("{key}={}", value.as_str().unwrap_or_default()));
    }
    if let Some(target) = q.get("target").filter(|t| !t.is_empty()) {
        command.arg("--target").arg(target);
    }
    if truthy(q, "nocache") {
        command.arg("--no-cache");
    }
    if truthy(q, "pull") {
        command.arg("--pull");
    }
    if let Some(platform) = q.get("platform").filter(|p| !p.is_empty()) {
        command.arg("--platform").arg(platform);
    }
    if let Some(network) = q.get("networkmode").filter(|n| !n.is_empty() && *n != "default") {
        command.arg("--network").arg(network);
    }
    command.arg(context.path());
    let quiet = truthy(q, "q");
    let (feed, response) = streamed("application/json");
    std::thread::spawn(move || {
        let _context = context;
        let output = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match output {
            Ok(child) => child,
            Err(e) => return error_line(&feed, &format!("cannot run the build: {e}")),
        };
        let feed = Arc::new(feed);
        // Both streams, line by line; stderr's last lines are kept for the error.
        let last_error = Arc::new(std::sync::Mutex::new(String::new()));
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            let feed = feed.clone();
            pumps.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if !quiet && !feed.line(&json!({"stream": format!("{line}\n")})) {
                        return;
                    }
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let (feed, last_error) = (feed.clone(), last_error.clone());
            pumps.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    if line.starts_with("Error") {
                        *super::lock(&last_error) = line.trim_start_matches("Error: ").to_owned();
                    }
                    if !quiet && !feed.line(&json!({"stream": format!("{line}\n")})) {
                        return;
                    }
                }
            }));
        }
        for pump in pumps {
            let _ = pump.join();
        }
        let status = child.wait();
        let id = std::fs::read_to_string(&iidfile).unwrap_or_default().trim().to_owned();
        if !status.is_ok_and(|s| s.success()) || id.is_empty() {
            let message = super::lock(&last_error).clone();
            let message = if message.is_empty() { "the build failed".to_owned() } else { message };
            return error_line(&feed, &message);
        }
        feed.line(&json!({"aux": {"ID": id}}));
        let short = id.trim_start_matches("sha256:").chars().take(12).collect::<String>();
        if quiet {
            feed.line(&json!({"stream": format!("{id}\n")}));
            return;
        }
        feed.line(&json!({"stream": format!("Successfully built {short}\n")}));
        for tag in &tags {
            let shown = tag.parse::<Reference>().map(|r| r.familiar()).unwrap_or(tag.clone());
            feed.line(&json!({"stream": format!("Successfully tagged {shown}\n")}));
        }
    });
    Ok(response)
}
