//! The words of an instruction as Docker's shell lexer reads them: quotes, the escape
//! character, and `$VAR` / `${VAR}` / `${VAR:-default}` expansion against the build's
//! variables. Pure.

/// How a variable reference was resolved, for the "used before declared" check.
pub trait Variables {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Variables for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// An error in the text of a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    #[error("unterminated quote in {0:?}")]
    UnterminatedQuote(String),
    #[error("missing '}}' in {0:?}")]
    UnterminatedBrace(String),
    #[error("bad substitution {0:?}: a name must be letters, digits and '_'")]
    BadSubstitution(String),
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// The lexer, with the Dockerfile's escape character (`\` or `` ` ``).
#[derive(Clone, Copy)]
pub struct Lexer<'a> {
    pub escape: char,
    pub vars: &'a dyn Variables,
    /// Names referenced: filled so the caller can warn about undefined ones.
    pub seen: Option<&'a std::cell::RefCell<Vec<String>>>,
}

impl std::fmt::Debug for Lexer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lexer").field("escape", &self.escape).finish_non_exhaustive()
    }
}

impl Lexer<'_> {
    /// One word: quotes removed, variables expanded, whitespace kept.
    pub fn word(&self, text: &str) -> Result<String, WordError> {
        Ok(self.process(text, false)?.into_iter().next().unwrap_or_default())
    }

    /// Words split at unquoted whitespace, each processed.
    pub fn words(&self, text: &str) -> Result<Vec<String>, WordError> {
        self.process(text, true)
    }

    fn process(&self, text: &str, split: bool) -> Result<Vec<String>, WordError> {
        let chars: Vec<char> = text.chars().collect();
        let mut words = Vec::new();
        let mut current = String::new();
        let mut started = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if split && c.is_whitespace() {
                if started {
                    words.push(std::mem::take(&mut current));
                    started = false;
                }
                i += 1;
                continue;
            }
            started = true;
            if c == '\'' {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '\'')
                    .ok_or_else(|| WordError::UnterminatedQuote(text.to_owned()))?;
                current.extend(&chars[i + 1..i + 1 + end]);
                i += end + 2;
            } else if c == '"' {
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(WordError::UnterminatedQuote(text.to_owned()));
                    };
                    if c == '"' {
                        i += 1;
                        break;
                    }
                    if c == self.escape {
                        match chars.get(i + 1) {
                            Some(&next) if next == '"' || next == '$' || next == self.escape => {
                                current.push(next);
                                i += 2;
                            }
                            _ => {
                                current.push(c);
                                i += 1;
                            }
                        }
                        continue;
                    }
                    if c == '$' {
                        i = self.dollar(&chars, i, &mut current)?;
                        continue;
                    }
                    current.push(c);
                    i += 1;
                }
            } else if c == self.escape {
                if let Some(&next) = chars.get(i + 1) {
                    current.push(next);
                    i += 2;
                } else {
                    i += 1;
                }
            } else if c == '$' {
                i = self.dollar(&chars, i, &mut current)?;
            } else {
                current.push(c);
                i += 1;
            }
        }
        if started || !split {
            words.push(current);
        }
        Ok(words)
    }

    fn lookup(&self, name: &str) -> Option<String> {
        if let Some(seen) = self.seen {
            seen.borrow_mut().push(name.to_owned());
        }
        self.vars.get(name)
    }

    /// Expands the reference starting at `chars[at] == '$'`; returns the index after it.
    fn dollar(&self, chars: &[char], at: usize, out: &mut String) -> Result<usize, WordError> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        match chars.get(at + 1) {
            Some('{') => {
                let mut depth = 0;
                let mut end = None;
                for (offset, &c) in chars[at + 2..].iter().enumerate() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            end = Some(at + 2 + offset);
                            break;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                let text: String = chars[at..].iter().collect();
                let end = end.ok_or(WordError::UnterminatedBrace(text))?;
                let inner: String = chars[at + 2..end].iter().collect();
                let name_len = inner.chars().take_while(|&c| is_name(c)).count();
                let (name, rest) = inner.split_at(name_len);
                if name.is_empty() {
                    return Err(WordError::BadSubstitution(format!("${{{inner}}}")));
                }
                let value = self.lookup(name);
                let expanded = |word: &str| self.word(word);
                let result = if rest.is_empty() {
                    value.unwrap_or_default()
                } else if let Some(word) = rest.strip_prefix(":-") {
                    match value.filter(|v| !v.is_empty()) {
                        Some(v) => v,
                        None => expanded(word)?,
                    }
                } else if let Some(word) = rest.strip_prefix(":+") {
                    match value.filter(|v| !v.is_empty()) {
                        Some(_) => expanded(word)?,
                        None => String::new(),
                    }
                } else if let Some(word) = rest.strip_prefix(":?") {
                    match value.filter(|v| !v.is_empty()) {
                        Some(v) => v,
                        None => {
                            return Err(WordError::Required {
                                name: name.to_owned(),
                                message: expanded(word)?,
                            })
                        }
                    }
                } else if let Some(word) = rest.strip_prefix('-') {
                    match value {
                        Some(v) => v,
                        None => expanded(word)?,
                    }
                } else if let Some(word) = rest.strip_prefix('+') {
                    match value {
                        Some(_) => expanded(word)?,
                        None => String::new(),
                    }
                } else if let Some(word) = rest.strip_prefix('?') {
                    match value {
                        Some(v) => v,
                        None => {
                            return Err(WordError::Required {
                                name: name.to_owned(),
                                message: expanded(word)?,
                            })
                        }
                    }
                } else {
                    return Err(WordError::BadSubstitution(format!("${{{inner}}}")));
                };
                out.push_str(&result);
                Ok(end + 1)
            }
            Some(&c) if is_name(c) => {
                let len = chars[at + 1..].iter().take_while(|&&c| is_name(c)).count();
                let name: String = chars[at + 1..at + 1 + len].iter().collect();
                out.push_str(&self.lookup(&name).unwrap_or_default());
                Ok(at + 1 + len)
            }
            _ => {
                out.push('$');
                Ok(at + 1)
            }
        }
    }
}

/// Splits `k=v k2="v 2"` pairs (ENV, LABEL, ARG) at unquoted whitespace, keeping quotes and
/// escapes for the lexer to process.
pub fn raw_words(text: &str, escape: char) -> Result<Vec<String>, WordError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == escape && q == '"' {
                    if let Some(next) = chars.next() {
                        current.push(next);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            None => {
                current.push(c);
                if c == escape {
                    if let Some(next) = chars.next() {
                        current.push(next);
                    }
                } else if c == '"' || c == '\'' {
                    quote = Some(c);
                }
            }
        }
    }
    if quote.is_some() {
        return Err(WordError::UnterminatedQuote(text.to_owned()));
    }
    if !current.is_empty() {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("a b".into()),
            _ => None,
        }
    }

    fn word(text: &str) -> String {
        Lexer { escape: '\\', vars: &vars, seen: None }.word(text).expect(text)
    }

    #[test]
    fn expansion_as_docker_does_it() {
        assert_eq!(word("$A"), "alpha");
        assert_eq!(word("${A}x"), "alphax");
        assert_eq!(word("$A.$A"), "alpha.alpha");
        assert_eq!(word("${NOPE:-dflt}"), "dflt");
        assert_eq!(word("${EMPTY:-dflt}"), "dflt");
        assert_eq!(word("${EMPTY-dflt}"), "");
        assert_eq!(word("${A:+set}"), "set");
        assert_eq!(word("${NOPE:+set}"), "");
        assert_eq!(word("${NOPE:-$A}"), "alpha");
        assert_eq!(word("\\$A"), "$A");
        assert_eq!(word("'$A'"), "$A");
        assert_eq!(word("\"$A b\""), "alpha b");
        assert_eq!(word("\"\\\"q\\\"\""), "\"q\"");
        assert_eq!(word("$"), "$");
        assert_eq!(word("a$-b"), "a$-b");
        assert_eq!(word("/my dir"), "/my dir");
    }

    #[test]
    fn words_split_at_unquoted_space() {
        let lexer = Lexer { escape: '\\', vars: &vars, seen: None };
        assert_eq!(lexer.words("a \"b c\" $SP").expect("words"), vec!["a", "b c", "a b"]);
        assert_eq!(lexer.words("  ").expect("words"), Vec::<String>::new());
        assert_eq!(lexer.words("'' x").expect("words"), vec!["", "x"]);
    }

    #[test]
    fn errors() {
        let lexer = Lexer { escape: '\\', vars: &vars, seen: None };
        assert!(lexer.word("\"open").is_err());
        assert!(lexer.word("${A").is_err());
        assert!(lexer.word("${-x}").is_err());
        assert!(matches!(lexer.word("${NOPE:?must be set}"), Err(WordError::Required { .. })));
    }

    #[test]
    fn backtick_escape() {
        let lexer = Lexer { escape: '`', vars: &vars, seen: None };
        assert_eq!(lexer.word("c:\\dir`$A").expect("word"), "c:\\dir$A");
    }

    #[test]
    fn raw_pairs_keep_quotes() {
        assert_eq!(
            raw_words("a=1 b=\"x y\" c='z w' d=e\\ f", '\\').expect("raw"),
            vec!["a=1", "b=\"x y\"", "c='z w'", "d=e\\ f"]
        );
    }
}
