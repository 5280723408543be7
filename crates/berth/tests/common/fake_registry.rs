//! A registry that misbehaves on purpose: serves canned manifests and blobs over plain
//! HTTP on loopback, and can answer 500, cut a blob off halfway, or send a document of an
//! unknown media type. It records the requests it saw.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub enum Behavior {
    /// 200 with this content type and body; Range requests get 206.
    Serve { content_type: String, body: Vec<u8> },
    /// Like Serve, but the first `times` full requests send only `cut` bytes and close.
    CutOff { content_type: String, body: Vec<u8>, cut: usize, times: usize },
    /// 500 for the first `times` requests, then Serve.
    Fail { times: usize, content_type: String, body: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

pub struct FakeRegistry {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    routes: Arc<Mutex<HashMap<String, Behavior>>>,
    /// When set, Docker Hub's scheme: a bearer token from `/token`, which wants this
    /// `Authorization: Basic` value.
    bearer: Arc<Mutex<Option<String>>>,
}

const TOKEN: &str = "the-fake-token";

impl FakeRegistry {
    pub fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let routes: Arc<Mutex<HashMap<String, Behavior>>> = Arc::new(Mutex::new(HashMap::new()));
        let bearer: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let (seen2, routes2, bearer2) = (seen.clone(), routes.clone(), bearer.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, routes, bearer) = (seen2.clone(), routes2.clone(), bearer2.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, port, &seen, &routes, &bearer);
                });
            }
        });
        FakeRegistry { port, seen, routes, bearer }
    }

    /// Requires a bearer token, given by `/token` to `user:password` (basic auth).
    pub fn require_token(&self, basic: &str) {
        *self.bearer.lock().unwrap() = Some(basic.to_owned());
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn route(&self, path: &str, behavior: Behavior) {
        self.routes.lock().unwrap().insert(path.to_owned(), behavior);
    }

    /// Serves every blob of an OCI layout, and its single manifest under `repo:tag`.
    pub fn serve_layout(&self, layout: &std::path::Path, repository: &str, tag: &str) {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap().flatten() {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            let body = std::fs::read(entry.path()).unwrap();
            self.route(
                &format!("/v2/{repository}/blobs/{digest}"),
                Behavior::Serve { content_type: "application/octet-stream".into(), body },
            );
        }
        let manifest =
            std::fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap();
        let serve = Behavior::Serve {
            content_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: manifest,
        };
        self.route(&format!("/v2/{repository}/manifests/{tag}"), serve.clone());
        self.route(&format!("/v2/{repository}/manifests/{manifest_digest}"), serve);
    }

    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }
}

fn handle(
    stream: TcpStream,
    port: u16,
    seen: &Mutex<Vec<Seen>>,
    routes: &Mutex<HashMap<String, Behavior>>,
    bearer: &Mutex<Option<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let path = target.split('?').next().unwrap_or("").to_owned();
    let mut range = None;
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("range:") {
            range = Some(value.trim().to_owned());
        }
        if lower.starts_with("authorization:") {
            authorization = Some(header["authorization:".len()..].trim().to_owned());
        }
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: target.clone(),
        range: range.clone(),
    });
    let mut stream = stream;
    if let Some(basic) = bearer.lock().unwrap().clone() {
        if path == "/token" {
            return if authorization.as_deref() == Some(&format!("Basic {basic}")) {
                let body = format!("{{\"token\":\"{TOKEN}\"}}");
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else {
                write!(
                    stream,
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            };
        }
        if authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            let repository = path
                .trim_start_matches("/v2/")
                .split("/manifests/")
                .next()
                .unwrap_or("")
                .split("/blobs/")
                .next()
                .unwrap_or("");
            return write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake-registry\",scope=\"repository:{repository}:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    }
    let behavior = {
        let mut routes = routes.lock().unwrap();
        let current = routes.get(&path).cloned();
        // Count down the misbehaviours.
        match &current {
            Some(Behavior::CutOff { content_type, body, cut, times })
                if *times > 0 && range.is_none() =>
            {
                let next = if *times == 1 {
                    Behavior::Serve { content_type: content_type.clone(), body: body.clone() }
                } else {
                    Behavior::CutOff {
                        content_type: content_type.clone(),
                        body: body.clone(),
                        cut: *cut,
                        times: times - 1,
                    }
                };
                routes.insert(path.clone(), next);
            }
            Some(Behavior::Fail { times, content_type, body }) if *times > 0 => {
                let next = if *times == 1 {
                    Behavior::Serve { content_type: content_type.clone(), body: body.clone() }
                } else {
                    Behavior::Fail {
                        times: times - 1,
                        content_type: content_type.clone(),
                        body: body.clone(),
                    }
                };
                routes.insert(path.clone(), next);
            }
            _ => {}
        }
        current
    };
    if path == "/v2/" {
        return write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
    }
    let head_only = method == "HEAD";
    match behavior {
        None => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 57\r\nConnection: close\r\n\r\n{{\"errors\":[{{\"code\":\"NOT_FOUND\",\"message\":\"not here\"}}]}}   "),
        Some(Behavior::Fail { times, .. }) if times > 0 => write!(stream, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        Some(Behavior::CutOff { content_type, body, cut, times }) if times > 0 && range.is_none() => {
            write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
            stream.write_all(&body[..cut.min(body.len())])?;
            stream.flush()?;
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Ok(())
        }
        Some(Behavior::Serve { content_type, body } | Behavior::CutOff { content_type, body, .. } | Behavior::Fail { content_type, body, .. }) => {
            let start = range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            match start {
                Some(start) if start < body.len() => {
                    write!(stream, "HTTP/1.1 206 Partial Content\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n", body.len() - start, body.len() - 1, body.len())?;
                    if !head_only {
                        stream.write_all(&body[start..])?;
                    }
                }
                _ => {
                    write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
                    if !head_only {
                        stream.write_all(&body)?;
                    }
                }
            }
            Ok(())
        }
    }
}
