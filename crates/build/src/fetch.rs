//! `ADD https://...`: a download to a file, with its digest (the step's cache key takes
//! the content, not the URL alone) and the server's Last-Modified time, which Docker
//! gives the file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// A downloaded file.
#[derive(Debug)]
pub struct Fetched {
    pub path: PathBuf,
    /// The name the file gets in a directory destination: the URL's last path segment.
    pub name: String,
    pub mtime: Option<i64>,
    /// `sha256:<hex>` of the content.
    pub digest: String,
}

/// Downloads `url` into `dir`.
pub fn fetch(url: &str, dir: &Path, index: usize) -> Result<Fetched, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(format!("berth-build/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => format!("the server answered {code}"),
        other => format!("cannot download it ({other}): does this machine reach it? Fetch the file first and COPY it from the context"),
    })?;
    let mtime = response
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let path = dir.join(format!("download-{index}"));
    let mut file =
        std::fs::File::create(&path).map_err(|e| format!("write {}: {e}", path.display()))?;
    let mut reader = response.into_body().into_reader();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut buffer).map_err(|e| format!("the download broke off: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    file.sync_all().map_err(|e| format!("write {}: {e}", path.display()))?;
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let name = without_query
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !n.contains(':'))
        .unwrap_or("download")
        .to_owned();
    Ok(Fetched { path, name, mtime, digest: format!("sha256:{:x}", hasher.finalize()) })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 7231's IMF-fixdate) in seconds since the epoch.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m == month)? as u32
        + 1;
    let day: u32 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else { return None };
    let days = berth_stdx::time::days_from_civil(year, month, day);
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"), Some(1_700_000_000));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
