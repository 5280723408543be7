//! Path patterns: Go's `filepath.Match` (COPY's wildcards) and `.dockerignore` (the same
//! patterns, plus `**` for any number of directories, `!` exceptions where the last match
//! wins, and a directory's match covering what is under it). Pure.

/// Go's `filepath.Match`: `*` (any run of non-`/`), `?` (one non-`/`), `[...]` classes with
/// ranges and `^`/`!` negation, `\` escapes. `None` when the pattern is malformed.
pub fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches_from(&p, &n, false)
}

fn matches_from(p: &[char], n: &[char], double_star: bool) -> Option<bool> {
    let mut pi = 0;
    let mut ni = 0;
    // Backtracking points for `*` (the pattern index after it, the name index to retry).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' if double_star && p.get(pi + 1) == Some(&'*') => {
                    // `**` matches anything, `/` included; `**/` also matches nothing.
                    let mut rest = pi + 2;
                    if p.get(rest) == Some(&'/') {
                        rest += 1;
                        for start in ni..=n.len() {
                            if (start == ni || n[start - 1] == '/')
                                && matches_from(&p[rest..], &n[start..], true)?
                            {
                                return Some(true);
                            }
                        }
                        return Some(false);
                    }
                    for start in ni..=n.len() {
                        if matches_from(&p[rest..], &n[start..], true)? {
                            return Some(true);
                        }
                    }
                    return Some(false);
                }
                '*' => {
                    star = Some((pi + 1, ni));
                    pi += 1;
                    continue;
                }
                '?' if ni < n.len() && n[ni] != '/' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' if ni < n.len() => {
                    let (matched, next) = class(p, pi, n[ni])?;
                    if matched && n[ni] != '/' {
                        pi = next;
                        ni += 1;
                        continue;
                    }
                }
                '\\' => {
                    let literal = *p.get(pi + 1)?;
                    if ni < n.len() && n[ni] == literal {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                '[' => {
                    class(p, pi, ' ')?;
                }
                c if c != '*' && c != '?' && ni < n.len() && n[ni] == c => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        } else if ni == n.len() {
            return Some(true);
        }
        // Mismatch: let the last `*` take one more character (never a `/`).
        match star {
            Some((after, taken)) if taken < n.len() && n[taken] != '/' => {
                star = Some((after, taken + 1));
                pi = after;
                ni = taken + 1;
            }
            _ => {
                // A malformed rest of the pattern is still an error, as Go reports it.
                check_rest(&p[pi.min(p.len())..])?;
                return Some(false);
            }
        }
    }
}

fn check_rest(p: &[char]) -> Option<()> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '[' => i = class(p, i, ' ')?.1,
            '\\' => {
                p.get(i + 1)?;
                i += 2
            }
            _ => i += 1,
        }
    }
    Some(())
}

/// Matches `c` against the class starting at `p[at] == '['`; returns the index after it.
fn class(p: &[char], at: usize, c: char) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negated = matches!(p.get(i), Some('^' | '!'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let mut lo = *p.get(i)?;
        if lo == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        if lo == '\\' {
            i += 1;
            lo = *p.get(i)?;
        }
        i += 1;
        let mut hi = lo;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&h| h != ']') {
            hi = p[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *p.get(i)?;
                i += 1;
            }
        }
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    Some((matched != negated, i))
}

/// A `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    exclusion: bool,
}

/// Cleans a path as Go's `filepath.Clean` does, without a leading `/`.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !path.starts_with('/') {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

impl Ignore {
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclusion, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let text = clean(body);
            if text == "." {
                continue;
            }
            check_rest(&text.chars().collect::<Vec<_>>())
                .ok_or_else(|| format!(".dockerignore: malformed pattern {line:?}"))?;
            patterns.push(Pattern { text, exclusion });
        }
        Ok(Ignore { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the context path (relative, `/`-separated) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        let mut excluded = false;
        for pattern in &self.patterns {
            if excluded != pattern.exclusion {
                // Only an opposite pattern can change the answer.
                continue;
            }
            if Self::pattern_matches(&pattern.text, &path) {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }

    /// Whether an excluded directory may still hold an exception (so it must be walked).
    pub fn may_include_under(&self, dir: &str) -> bool {
        let dir = clean(dir);
        self.patterns.iter().any(|p| {
            p.exclusion
                && (p.text.starts_with(&format!("{dir}/")) || p.text.starts_with("**") || {
                    // A wildcard before the directory's depth could match under it.
                    let depth = dir.split('/').count();
                    p.text.split('/').take(depth).any(|seg| seg.contains(['*', '?', '[']))
                })
        })
    }

    fn pattern_matches(pattern: &str, path: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        // The path itself, or any of its parents (a matched directory covers its content).
        let mut candidate = path;
        loop {
            let n: Vec<char> = candidate.chars().collect();
            if matches_from(&p, &n, true).unwrap_or(false) {
                return true;
            }
            match candidate.rfind('/') {
                Some(at) => candidate = &candidate[..at],
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match() {
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abe", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("*.go", "main.go", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(glob_match(pattern, name), Some(want), "{pattern} {name}");
        }
        assert_eq!(glob_match("[", "a"), None);
        assert_eq!(glob_match("a[", "ab"), None);
    }

    #[test]
    fn dockerignore_rules() {
        let ignore = Ignore::parse(
            "# comment\n*.md\n!README.md\n/build\n**/*.tmp\nnode_modules\ndocs/**\n!docs/keep.txt\n",
        )
        .expect("parse");
        assert!(ignore.excludes("CHANGES.md"));
        assert!(!ignore.excludes("README.md"));
        assert!(!ignore.excludes("src/CHANGES.md"), "* does not cross /");
        assert!(ignore.excludes("build"));
        assert!(ignore.excludes("build/out/x"), "a directory covers its content");
        assert!(ignore.excludes("a/b/c.tmp"));
        assert!(ignore.excludes("x.tmp"));
        assert!(ignore.excludes("node_modules/left-pad/index.js"));
        assert!(!ignore.excludes("src/node_modules"), "not anchored deeper without **");
        assert!(ignore.excludes("docs/a/b"));
        assert!(!ignore.excludes("docs/keep.txt"));
        assert!(ignore.may_include_under("docs"));
        assert!(!ignore.may_include_under("build"));
    }

    #[test]
    fn last_match_wins() {
        let ignore = Ignore::parse("*\n!src\nsrc/secret\n").expect("parse");
        assert!(ignore.excludes("Dockerfile.bak"));
        assert!(!ignore.excludes("src/main.rs"));
        assert!(ignore.excludes("src/secret"));
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean("/a/./b//c/"), "a/b/c");
        assert_eq!(clean("a/../b"), "b");
        assert_eq!(clean("./"), ".");
        assert_eq!(clean("../x"), "../x");
    }
}
