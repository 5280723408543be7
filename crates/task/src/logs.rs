//! Container logs in the CRI format (`<RFC3339Nano> stdout|stderr F|P <text>`), the format
//! the kubelet reads, so the node agent can reuse them. Written by the monitor, rotated by
//! size; read back by `berth logs`.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{io, Result};

/// A line longer than this is written in parts (tag `P`), as containerd does.
const MAX_LINE: usize = 16 * 1024;

/// One CRI log entry: `<time> <stream> F|P <text>\n`.
fn record(time: &str, stream: Stream, text: &[u8], full: bool) -> Vec<u8> {
    let mut record = Vec::with_capacity(text.len() + 48);
    record.extend_from_slice(time.as_bytes());
    record.push(b' ');
    record.extend_from_slice(stream.name().as_bytes());
    record.extend_from_slice(if full { b" F " } else { b" P " });
    record.extend_from_slice(text);
    record.push(b'\n');
    record
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends a container's output to its log file.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl Writer {
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> Result<Writer> {
        let file =
            File::options().create(true).append(true).open(path).map_err(io("open", path))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Writer { path: path.to_owned(), file, size, max_size, max_files: max_files.max(1) })
    }

    /// Takes a chunk of output and writes it at once: each complete line as an `F` entry,
    /// a line longer than 16 KiB in `P` parts, and an unfinished line (a prompt, a `\r`
    /// progress bar) as a `P` entry now rather than when its newline comes, as conmon
    /// does. One write per chunk, not per line.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> Result<()> {
        let now = crate::now();
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut rest = data;
        loop {
            let (line, full, next) = match rest.iter().position(|b| *b == b'\n') {
                Some(at) => (&rest[..at], true, &rest[at + 1..]),
                None if rest.is_empty() => break,
                None => (rest, false, &rest[rest.len()..]),
            };
            let mut parts = line.chunks(MAX_LINE).peekable();
            if line.is_empty() {
                records.push(record(&now, stream, b"", full));
            }
            while let Some(part) = parts.next() {
                let last = parts.peek().is_none();
                records.push(record(&now, stream, part, full && last));
            }
            rest = next;
        }
        self.emit(&records)
    }

    /// Nothing is held back any more (unfinished lines are written as they come); kept
    /// for the callers that end a container's output with it.
    pub fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn emit(&mut self, records: &[Vec<u8>]) -> Result<()> {
        let total: u64 = records.iter().map(|r| r.len() as u64).sum();
        if self.max_size == 0 || self.size + total <= self.max_size {
            let batch: Vec<u8> = records.concat();
            self.file.write_all(&batch).map_err(io("write", &self.path))?;
            self.size += total;
            return Ok(());
        }
        // The batch crosses the size limit: rotate where it does.
        for record in records {
            if self.max_size > 0 && self.size > 0 && self.size + record.len() as u64 > self.max_size
            {
                self.rotate()?;
            }
            self.file.write_all(record).map_err(io("write", &self.path))?;
            self.size += record.len() as u64;
        }
        Ok(())
    }

    /// container.log → container.log.1 → ... → dropped beyond max_files.
    fn rotate(&mut self) -> Result<()> {
        if self.max_files <= 1 {
            self.file.set_len(0).map_err(io("truncate", &self.path))?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.max_files - 1).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                let _ = std::fs::rename(&from, rotated(&self.path, n + 1));
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1)).map_err(io("rotate", &self.path))?;
        self.file = File::options()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io("open", &self.path))?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// One parsed log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time: String,
    pub stream: Stream,
    /// A whole line (its newline included) or a part of one.
    pub text: Vec<u8>,
}

pub fn parse_line(line: &[u8]) -> Option<Entry> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let mut text = parts.next().unwrap_or_default().to_vec();
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    if full {
        text.push(b'\n');
    }
    Some(Entry { time, stream, text })
}

/// What `berth logs` asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only entries at or after this time (seconds since the epoch).
    pub since: Option<f64>,
    pub until: Option<f64>,
}

fn seconds(time: &str) -> f64 {
    let whole = berth_stdx::time::parse_rfc3339(time).unwrap_or(0) as f64;
    let fraction = time
        .split_once('.')
        .map(|(_, f)| f.trim_end_matches('Z'))
        .and_then(|f| format!("0.{f}").parse::<f64>().ok())
        .unwrap_or(0.0);
    whole + fraction
}

/// Reads every entry of the log (rotated files first) that matches the query, and returns
/// them with the offset in the current file where reading stopped (for `--follow`).
pub fn read(path: &Path, query: &Query) -> Result<(Vec<Entry>, u64)> {
    let mut files = Vec::new();
    for n in (1..100).rev() {
        let old = rotated(path, n);
        if old.exists() {
            files.push(old);
        }
    }
    files.push(path.to_owned());
    let mut entries = Vec::new();
    let mut offset = 0;
    for file in &files {
        let Ok(handle) = File::open(file) else { continue };
        let mut reader = BufReader::new(handle);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io("read", file))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if file == path {
                offset += n as u64;
            }
            if let Some(entry) = parse_line(&line) {
                entries.push(entry);
            }
        }
    }
    filter(&mut entries, query);
    Ok((entries, offset))
}

pub fn filter(entries: &mut Vec<Entry>, query: &Query) {
    if query.since.is_some() || query.until.is_some() {
        entries.retain(|e| {
            let t = seconds(&e.time);
            query.since.is_none_or(|s| t >= s) && query.until.is_none_or(|u| t <= u)
        });
    }
    if let Some(tail) = query.tail {
        // Count whole lines: partial entries belong to the line their final part ends.
        let mut lines = 0;
        let mut cut = 0;
        for (index, entry) in entries.iter().enumerate().rev() {
            if entry.text.last() == Some(&b'\n') {
                if lines == tail {
                    cut = index + 1;
                    break;
                }
                lines += 1;
            }
        }
        if tail == 0 {
            cut = entries.len();
        }
        entries.drain(..cut);
    }
}

/// New complete entries appended after `offset`; returns them and the new offset. A file
/// that shrank (rotated) is read from its start.
pub fn read_from(path: &Path, offset: u64) -> Result<(Vec<Entry>, u64)> {
    let Ok(mut file) = File::open(path) else { return Ok((Vec::new(), offset)) };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut offset = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(offset)).map_err(io("seek", path))?;
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io("read", path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        offset += n as u64;
        if let Some(entry) = parse_line(&line) {
            entries.push(entry);
        }
    }
    Ok((entries, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_partials_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut writer = Writer::open(&path, 0, 1).unwrap();
        writer.write(Stream::Stdout, b"hello\nwor").unwrap();
        writer.write(Stream::Stderr, b"oops\n").unwrap();
        writer.write(Stream::Stdout, b"ld\n").unwrap();
        writer.write(Stream::Stdout, &vec![b'x'; MAX_LINE + 10]).unwrap();
        writer.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let tags: Vec<(&str, &str)> = text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.splitn(4, ' ').collect();
                (f[1], f[2])
            })
            .collect();
        // "wor" is written as a partial entry at once; the long line in parts.
        assert_eq!(
            tags,
            [
                ("stdout", "F"),
                ("stdout", "P"),
                ("stderr", "F"),
                ("stdout", "F"),
                ("stdout", "P"),
                ("stdout", "P")
            ]
        );
        let first = text.lines().next().unwrap();
        assert!(first.ends_with(" stdout F hello"), "{first}");
        let time = first.split(' ').next().unwrap();
        assert!(time.ends_with('Z') && time.contains('T') && time.contains('.'), "{time}");
        let (entries, _) = read(&path, &Query::default()).unwrap();
        let stdout: Vec<u8> = entries
            .iter()
            .filter(|e| e.stream == Stream::Stdout)
            .flat_map(|e| e.text.clone())
            .collect();
        assert!(stdout.starts_with(b"hello\nworld\nxxx"));
        // The last line has no newline yet: it is shown as far as it goes.
        assert_eq!(stdout.len(), 12 + MAX_LINE + 10);
        let (tail, _) = read(&path, &Query { tail: Some(2), ..Query::default() }).unwrap();
        assert!(tail.len() >= 2, "the last lines came in parts");
        let (none, _) = read(&path, &Query { tail: Some(0), ..Query::default() }).unwrap();
        assert!(none.is_empty());
        let (future, _) = read(&path, &Query { since: Some(4e9), ..Query::default() }).unwrap();
        assert!(future.is_empty());

        let rotating = dir.path().join("r.log");
        let mut writer = Writer::open(&rotating, 200, 3).unwrap();
        for i in 0..40 {
            writer.write(Stream::Stdout, format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(rotated(&rotating, 1).exists() && rotated(&rotating, 2).exists());
        assert!(!rotated(&rotating, 3).exists());
        for file in [rotating.clone(), rotated(&rotating, 1)] {
            assert!(std::fs::metadata(&file).unwrap().len() <= 200);
        }
        let (entries, _) = read(&rotating, &Query::default()).unwrap();
        let last = String::from_utf8(entries.last().unwrap().text.clone()).unwrap();
        assert_eq!(last, "line 39\n");
        let numbers: Vec<usize> = entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.text).trim()[5..].parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order: {numbers:?}");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_line(b"garbage\n").is_none());
        assert!(parse_line(b"2026-01-01T00:00:00Z stdin F x\n").is_none());
        let e = parse_line(b"2026-01-01T00:00:00Z stdout P abc\n").unwrap();
        assert_eq!(e.text, b"abc");
    }
}
