//! The Dockerfile as text: parser directives (`# escape=`, `# syntax=`), comments, line
//! continuations, here-documents, instruction flags and the JSON (exec) form, read as
//! Docker's parser reads them. Pure: no variables are expanded here.

use std::fmt;

/// Instructions the builder knows.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// The flags each instruction accepts (`--name` or `--name=value`).
fn allowed_flags(keyword: &str) -> &'static [&'static str] {
    match keyword {
        "FROM" => &["platform"],
        "RUN" => &["mount", "network", "security"],
        "COPY" => &["from", "chown", "chmod", "link", "parents", "exclude"],
        "ADD" => &["chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"],
        "HEALTHCHECK" => &["interval", "timeout", "start-period", "start-interval", "retries"],
        _ => &[],
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub escape: char,
    pub syntax: Option<String>,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line the instruction starts on.
    pub line: usize,
    /// Upper-case keyword.
    pub keyword: String,
    /// `--name=value` flags, in order (`None` for a bare `--name`).
    pub flags: Vec<(String, Option<String>)>,
    pub args: Args,
    pub heredocs: Vec<Heredoc>,
    /// The instruction as written (continuations joined), for history and errors.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// `["a", "b"]`
    Exec(Vec<String>),
    /// Everything after the keyword and flags, verbatim.
    Shell(String),
}

impl Args {
    pub fn shell_text(&self) -> String {
        match self {
            Args::Shell(text) => text.clone(),
            Args::Exec(words) => words.join(" "),
        }
    }
}

/// A here-document: `<<EOF` (expanded), `<<"EOF"` (literal), `<<-EOF` (leading tabs gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub content: String,
    pub expand: bool,
}

/// A parse error, with the line it was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dockerfile:{}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    pub fn flag_values(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
            .collect()
    }
}

fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix('#')?.trim();
    let (name, value) = rest.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.trim().to_owned()))
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut syntax = None;
    let mut index = 0;
    // Directives come first, before any comment, blank line or instruction.
    let mut seen_directives = std::collections::HashSet::new();
    while index < lines.len() {
        let Some((name, value)) = directive(lines[index]) else { break };
        if !seen_directives.insert(name.clone()) {
            return Err(ParseError {
                line: index + 1,
                message: format!("the parser directive {name:?} is given twice"),
            });
        }
        match name.as_str() {
            "escape" => {
                escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(ParseError {
                            line: index + 1,
                            message: format!("invalid escape character {other:?}: use \\ or `"),
                        })
                    }
                }
            }
            "syntax" => syntax = Some(value),
            // Unknown directives are comments, as Docker treats them, and end the header.
            _ => break,
        }
        index += 1;
    }
    let mut instructions = Vec::new();
    while index < lines.len() {
        let raw = lines[index];
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            index += 1;
            continue;
        }
        let start = index;
        let mut joined = String::new();
        loop {
            let line = lines[index];
            index += 1;
            let body = line.trim_end();
            if let Some(stripped) = body.strip_suffix(escape) {
                // An escaped escape character at the end is not a continuation.
                if !stripped.ends_with(escape) || escape == '`' {
                    joined.push_str(stripped);
                    // Comment and blank lines inside a continuation are dropped.
                    while index < lines.len() {
                        let next = lines[index].trim_start();
                        if next.starts_with('#') || next.is_empty() {
                            index += 1;
                        } else {
                            break;
                        }
                    }
                    if index < lines.len() {
                        continue;
                    }
                    break;
                }
            }
            joined.push_str(line);
            break;
        }
        let text = joined.trim().to_owned();
        let (word, rest) = match text.find(char::is_whitespace) {
            Some(at) => (&text[..at], text[at..].trim_start()),
            None => (text.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        if !KEYWORDS.contains(&keyword.as_str()) {
            return Err(ParseError {
                line: start + 1,
                message: format!(
                    "unknown instruction: {word} (instructions are {})",
                    KEYWORDS.join(", ")
                ),
            });
        }
        let (flags, rest) = split_flags(&keyword, rest)
            .map_err(|message| ParseError { line: start + 1, message })?;
        let mut heredocs = Vec::new();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            for (name, strip_tabs, expand) in heredoc_markers(rest) {
                let mut content = String::new();
                let mut closed = false;
                while index < lines.len() {
                    let line = lines[index];
                    index += 1;
                    let line = if strip_tabs { line.trim_start_matches('\t') } else { line };
                    if line == name {
                        closed = true;
                        break;
                    }
                    content.push_str(line);
                    content.push('\n');
                }
                if !closed {
                    return Err(ParseError {
                        line: start + 1,
                        message: format!(
                            "the here-document <<{name} is not closed: end it with a line holding only {name}"
                        ),
                    });
                }
                heredocs.push(Heredoc { name, content, expand });
            }
        }
        let args = parse_args(rest);
        if keyword == "SHELL" && !matches!(args, Args::Exec(_)) {
            return Err(ParseError {
                line: start + 1,
                message: "SHELL takes the JSON form: SHELL [\"executable\", \"parameters\"]".into(),
            });
        }
        instructions.push(Instruction { line: start + 1, keyword, flags, args, heredocs, text });
    }
    Ok(Dockerfile { escape, syntax, instructions })
}

/// An instruction's `--name[=value]` flags.
type Flags = Vec<(String, Option<String>)>;

fn split_flags<'a>(keyword: &str, mut rest: &'a str) -> Result<(Flags, &'a str), String> {
    let allowed = allowed_flags(keyword);
    let mut flags = Vec::new();
    if allowed.is_empty() {
        return Ok((flags, rest));
    }
    while let Some(flag) = rest.strip_prefix("--") {
        let end = flag.find(char::is_whitespace).unwrap_or(flag.len());
        let word = &flag[..end];
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (word, None),
        };
        if !allowed.contains(&name) {
            return Err(format!(
                "unknown flag: --{name} for {keyword} (it takes {})",
                allowed.iter().map(|a| format!("--{a}")).collect::<Vec<_>>().join(", ")
            ));
        }
        flags.push((name.to_owned(), value));
        rest = flag[end..].trim_start();
    }
    Ok((flags, rest))
}

fn parse_args(rest: &str) -> Args {
    let trimmed = rest.trim();
    if trimmed.starts_with('[') {
        if let Ok(words) = serde_json::from_str::<Vec<String>>(trimmed) {
            return Args::Exec(words);
        }
    }
    Args::Shell(rest.to_owned())
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'` markers in an instruction's text, in order.
fn heredoc_markers(text: &str) -> Vec<(String, bool, bool)> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i + 1 < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == b'"' || c == b'\'' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if c == b'<' && bytes[i + 1] == b'<' && bytes.get(i + 2) != Some(&b'<') {
            let mut j = i + 2;
            let strip = bytes.get(j) == Some(&b'-');
            if strip {
                j += 1;
            }
            let quoted = match bytes.get(j) {
                Some(&q @ (b'"' | b'\'')) => {
                    j += 1;
                    Some(q)
                }
                _ => None,
            };
            let start = j;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            if j > start && !bytes[start].is_ascii_digit() {
                let name = text[start..j].to_owned();
                if let Some(q) = quoted {
                    if bytes.get(j) == Some(&q) {
                        j += 1;
                    }
                }
                found.push((name, strip, quoted.is_none()));
                i = j;
                continue;
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_forms() {
        let file = parse(
            "# syntax=docker/dockerfile:1\n\
             FROM busybox AS base\n\
             # a comment\n\
             RUN echo a \\\n\
             # inside\n\
             \n\
             && echo b\n\
             CMD [\"sh\", \"-c\", \"echo hi\"]\n\
             copy --chown=1:2 --from=base a b /dst/\n",
        )
        .expect("parse");
        assert_eq!(file.syntax.as_deref(), Some("docker/dockerfile:1"));
        let keywords: Vec<_> = file.instructions.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(keywords, ["FROM", "RUN", "CMD", "COPY"]);
        assert_eq!(file.instructions[1].args, Args::Shell("echo a && echo b".into()));
        assert_eq!(file.instructions[1].line, 4);
        assert_eq!(
            file.instructions[2].args,
            Args::Exec(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        let copy = &file.instructions[3];
        assert_eq!(copy.flag("chown"), Some("1:2"));
        assert_eq!(copy.flag("from"), Some("base"));
        assert_eq!(copy.args, Args::Shell("a b /dst/".into()));
        assert_eq!(copy.line, 9);
    }

    #[test]
    fn escape_directive() {
        let file = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo\n").expect("parse");
        assert_eq!(file.escape, '`');
        assert_eq!(file.instructions[1].args, Args::Shell("dir c:\\   && echo".into()));
        assert!(parse("# escape=x\nFROM a\n").is_err());
    }

    #[test]
    fn a_directive_after_an_instruction_is_a_comment() {
        let file = parse("FROM a\n# escape=`\nRUN x \\\n y\n").expect("parse");
        assert_eq!(file.escape, '\\');
        assert_eq!(file.instructions[1].args, Args::Shell("x  y".into()));
    }

    #[test]
    fn heredocs() {
        let file = parse(
            "FROM a\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-'END' /x\n\t$HOME\n\tEND\nRUN cat <<A <<B\na\nA\nb\nB\n",
        )
        .expect("parse");
        let run = &file.instructions[1];
        assert_eq!(
            run.heredocs,
            vec![Heredoc {
                name: "EOF".into(),
                content: "echo one\necho two\n".into(),
                expand: true
            }]
        );
        let copy = &file.instructions[2];
        assert_eq!(
            copy.heredocs,
            vec![Heredoc { name: "END".into(), content: "$HOME\n".into(), expand: false }]
        );
        assert_eq!(file.instructions[3].heredocs.len(), 2);
        assert!(parse("FROM a\nRUN <<EOF\nnever closed\n").is_err());
        // A shift inside quotes is not a here-document.
        let quoted = parse("FROM a\nRUN echo '<<EOF'\n").expect("parse");
        assert!(quoted.instructions[1].heredocs.is_empty());
    }

    #[test]
    fn bad_input_names_the_line() {
        let err = parse("FROM a\n\nFOO bar\n").expect_err("unknown");
        assert_eq!(err.line, 3);
        assert!(err.to_string().starts_with("Dockerfile:3: unknown instruction: FOO"), "{err}");
        let err = parse("FROM a\nCOPY --bogus=1 a b\n").expect_err("flag");
        assert!(err.message.contains("unknown flag: --bogus"), "{err}");
        assert!(parse("FROM a\nSHELL sh -c\n").is_err());
    }

    #[test]
    fn flags_only_where_allowed() {
        let file = parse("FROM a\nCMD --help\nRUN --network=none true\n").expect("parse");
        assert_eq!(file.instructions[1].args, Args::Shell("--help".into()));
        assert_eq!(file.instructions[2].flag("network"), Some("none"));
    }
}
