//! Docker's `--format`: Go's text/template over the JSON a command shows, with the
//! functions Docker adds (`json`, `upper`, `lower`, `title`, `join`, `split`, `truncate`,
//! `pad`) and Go's own (`index`, `len`, `print`, `printf`, `println`, `eq`, `ne`, `lt`,
//! `le`, `gt`, `ge`, `and`, `or`, `not`, `slice`), actions `if`/`else if`/`else`, `range`
//! (with `$i, $v :=`), `with`, variables, parentheses, and trim markers (`{{-`, `-}}`).
//! Values print as Go prints them: lists as `[a b]`, maps as `map[k:v]` (keys sorted), a
//! missing key as `<no value>`. `table` at the start makes a header row and aligned columns,
//! as Docker's tabwriter does.
//!
//! (gtmpl, the Go-template crate, was weighed: it prints lists and maps in Rust's Debug
//! form, which scripts parsing Docker's output would not understand.)

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    /// `{{pipeline}}` (or a `$x := pipeline` declaration, which prints nothing).
    Action {
        declare: Option<String>,
        pipeline: Pipeline,
    },
    If {
        branches: Vec<(Pipeline, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Range {
        key: Option<String>,
        value: Option<String>,
        pipeline: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    With {
        pipeline: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

type Pipeline = Vec<Command>;

#[derive(Debug, Clone, PartialEq)]
enum Command {
    /// A function call: `name arg...`.
    Call(String, Vec<Arg>),
    /// A lone operand: `.Field`, `$x`, `"text"`, `(pipeline)`.
    Operand(Arg),
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    /// `.A.B` (empty for `.`).
    Field(Vec<String>),
    /// `$x.A.B` (`$` alone is the root).
    Variable(String, Vec<String>),
    Literal(Value),
    Pipeline(Box<Pipeline>, Vec<String>),
    /// A bare function name used as an operand (`{{len .}}` puts `len` in a call instead).
    Function(String),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

// ----- lexing of actions -----

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Field(Vec<String>),
    Variable(String, Vec<String>),
    Word(String),
    Str(String),
    Number(f64),
    Pipe,
    Open,
    Close(Vec<String>),
    Declare,
    Comma,
}

fn split_fields(text: &str) -> Vec<String> {
    text.split('.').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '|' => {
                tokens.push(Token::Pipe);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                i += 1;
                // `(...).Field`
                let start = i;
                while i < chars.len() && (chars[i] == '.' || is_ident(chars[i])) {
                    i += 1;
                }
                tokens
                    .push(Token::Close(split_fields(&chars[start..i].iter().collect::<String>())));
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::Declare);
                i += 2;
            }
            '=' => {
                tokens.push(Token::Declare);
                i += 1;
            }
            '"' => {
                let mut out = String::new();
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        bail!("unterminated string in {{{{{text}}}}}")
                    };
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            let escaped = chars.get(i).copied().unwrap_or('\\');
                            i += 1;
                            out.push(match escaped {
                                'n' => '\n',
                                't' => '\t',
                                other => other,
                            });
                        }
                        other => out.push(other),
                    }
                }
                tokens.push(Token::Str(out));
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| anyhow!("unterminated raw string in {{{{{text}}}}}"))?;
                tokens.push(Token::Str(chars[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
            }
            '.' => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i] == '.' || is_ident(chars[i])) {
                    i += 1;
                }
                tokens
                    .push(Token::Field(split_fields(&chars[start..i].iter().collect::<String>())));
            }
            '$' => {
                let start = i + 1;
                i += 1;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                let fields_start = i;
                while i < chars.len() && (chars[i] == '.' || is_ident(chars[i])) {
                    i += 1;
                }
                let fields = split_fields(&chars[fields_start..i].iter().collect::<String>());
                tokens.push(Token::Variable(name, fields));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                tokens.push(Token::Number(text.parse().map_err(|_| anyhow!("bad number {text}"))?));
            }
            c if is_ident(c) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                tokens.push(Token::Word(chars[start..i].iter().collect()));
            }
            other => bail!("unexpected {other:?} in {{{{{text}}}}}"),
        }
    }
    Ok(tokens)
}

fn parse_pipeline(tokens: &[Token], pos: &mut usize) -> Result<Pipeline> {
    let mut pipeline = Vec::new();
    loop {
        let mut words: Vec<Arg> = Vec::new();
        let mut name: Option<String> = None;
        while let Some(token) = tokens.get(*pos) {
            match token {
                Token::Pipe | Token::Close(_) => break,
                Token::Word(w)
                    if words.is_empty()
                        && name.is_none()
                        && !matches!(w.as_str(), "true" | "false" | "nil") =>
                {
                    name = Some(w.clone());
                    *pos += 1;
                }
                _ => {
                    words.push(parse_operand(tokens, pos)?);
                }
            }
        }
        pipeline.push(match name {
            Some(name) => Command::Call(name, words),
            None if words.len() == 1 => Command::Operand(words.remove(0)),
            None if words.is_empty() => bail!("empty command in a pipeline"),
            None => bail!("{} operands without a function to take them", words.len()),
        });
        match tokens.get(*pos) {
            Some(Token::Pipe) => *pos += 1,
            _ => return Ok(pipeline),
        }
    }
}

fn parse_operand(tokens: &[Token], pos: &mut usize) -> Result<Arg> {
    let token = tokens.get(*pos).cloned().ok_or_else(|| anyhow!("missing operand"))?;
    *pos += 1;
    Ok(match token {
        Token::Field(fields) => Arg::Field(fields),
        Token::Variable(name, fields) => Arg::Variable(name, fields),
        Token::Str(s) => Arg::Literal(Value::String(s)),
        Token::Number(n) => {
            Arg::Literal(serde_json::Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null))
        }
        Token::Word(w) if w == "true" => Arg::Literal(Value::Bool(true)),
        Token::Word(w) if w == "false" => Arg::Literal(Value::Bool(false)),
        Token::Word(w) if w == "nil" => Arg::Literal(Value::Null),
        Token::Word(w) => Arg::Function(w),
        Token::Open => {
            let inner = parse_pipeline(tokens, pos)?;
            match tokens.get(*pos) {
                Some(Token::Close(fields)) => {
                    *pos += 1;
                    Arg::Pipeline(Box::new(inner), fields.clone())
                }
                _ => bail!("missing ')'"),
            }
        }
        other => bail!("unexpected {other:?}"),
    })
}

/// Splits a template into text and actions, applying trim markers.
fn actions(text: &str) -> Result<Vec<(bool, String)>> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let mut literal = rest[..start].to_owned();
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| anyhow!("unclosed {{{{ in the template"))?;
        let mut inner = &after[..end];
        if let Some(trimmed) =
            inner.strip_prefix('-').filter(|t| t.starts_with(char::is_whitespace))
        {
            literal = literal.trim_end().to_owned();
            inner = trimmed;
        }
        let mut trim_after = false;
        if let Some(trimmed) = inner.strip_suffix('-').filter(|t| t.ends_with(char::is_whitespace))
        {
            trim_after = true;
            inner = trimmed;
        }
        out.push((false, literal));
        let inner = inner.trim();
        // Comments print nothing.
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            out.push((true, inner.to_owned()));
        }
        rest = &after[end + 2..];
        if trim_after {
            rest = rest.trim_start();
        }
    }
    out.push((false, rest.to_owned()));
    Ok(out)
}

fn parse_nodes(
    items: &[(bool, String)],
    pos: &mut usize,
    ends: &[&str],
) -> Result<(Vec<Node>, String)> {
    let mut nodes = Vec::new();
    while *pos < items.len() {
        let (is_action, text) = &items[*pos];
        *pos += 1;
        if !is_action {
            if !text.is_empty() {
                nodes.push(Node::Text(text.clone()));
            }
            continue;
        }
        let keyword = text.split_whitespace().next().unwrap_or_default();
        if ends.contains(&keyword) {
            return Ok((nodes, text.clone()));
        }
        let rest = text[keyword.len()..].trim();
        match keyword {
            "if" => {
                let mut branches = Vec::new();
                let mut condition = pipeline_of(rest)?;
                let otherwise;
                loop {
                    let (body, end) = parse_nodes(items, pos, &["else", "end"])?;
                    branches.push((condition, body));
                    let else_rest = end.strip_prefix("else").map(str::trim);
                    match else_rest {
                        Some(r) if r.starts_with("if ") => condition = pipeline_of(&r[3..])?,
                        Some(_) => {
                            let (body, end) = parse_nodes(items, pos, &["end"])?;
                            if end != "end" {
                                bail!("missing {{{{end}}}} after {{{{else}}}}");
                            }
                            otherwise = body;
                            break;
                        }
                        None if end == "end" => {
                            otherwise = Vec::new();
                            break;
                        }
                        None => bail!("missing {{{{end}}}} for {{{{if}}}}"),
                    }
                }
                nodes.push(Node::If { branches, otherwise });
            }
            "range" | "with" => {
                let (mut key, mut value) = (None, None);
                let mut expression = rest;
                if let Some((vars, pipe)) = rest.split_once(":=") {
                    let names: Vec<String> = vars
                        .split(',')
                        .map(|v| v.trim().trim_start_matches('$').to_owned())
                        .collect();
                    match names.as_slice() {
                        [v] => value = Some(v.clone()),
                        [k, v] => {
                            key = Some(k.clone());
                            value = Some(v.clone());
                        }
                        _ => bail!("bad variables in {{{{{text}}}}}"),
                    }
                    expression = pipe.trim();
                }
                let pipeline = pipeline_of(expression)?;
                let (body, end) = parse_nodes(items, pos, &["else", "end"])?;
                let otherwise = if end.starts_with("else") {
                    let (otherwise, end) = parse_nodes(items, pos, &["end"])?;
                    if end != "end" {
                        bail!("missing {{{{end}}}} for {{{{{keyword}}}}}");
                    }
                    otherwise
                } else if end == "end" {
                    Vec::new()
                } else {
                    bail!("missing {{{{end}}}} for {{{{{keyword}}}}}");
                };
                nodes.push(if keyword == "range" {
                    Node::Range { key, value, pipeline, body, otherwise }
                } else {
                    Node::With { pipeline, body, otherwise }
                });
            }
            "end" | "else" => bail!("unexpected {{{{{keyword}}}}}"),
            _ => {
                let tokens = tokenize(text)?;
                let (declare, start) = match tokens.as_slice() {
                    [Token::Variable(name, fields), Token::Declare, ..] if fields.is_empty() => {
                        (Some(name.clone()), 2)
                    }
                    _ => (None, 0),
                };
                let mut at = start;
                let pipeline = parse_pipeline(&tokens, &mut at)?;
                if at != tokens.len() {
                    bail!("unexpected text in {{{{{text}}}}}");
                }
                nodes.push(Node::Action { declare, pipeline });
            }
        }
    }
    if ends.is_empty() {
        Ok((nodes, String::new()))
    } else {
        bail!("missing {{{{end}}}}")
    }
}

fn pipeline_of(text: &str) -> Result<Pipeline> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let pipeline = parse_pipeline(&tokens, &mut pos)?;
    if pos != tokens.len() {
        bail!("unexpected text in {{{{{text}}}}}");
    }
    Ok(pipeline)
}

impl Template {
    pub fn parse(text: &str) -> Result<Template> {
        let items = actions(text)?;
        let mut pos = 0;
        let (nodes, _) = parse_nodes(&items, &mut pos, &[])
            .map_err(|e| anyhow!("template parsing error: {e}"))?;
        Ok(Template { nodes })
    }

    pub fn render(&self, data: &Value) -> Result<String> {
        let mut out = String::new();
        let mut scope = Scope { vars: vec![("".into(), data.clone())] };
        render_nodes(&self.nodes, data, &mut scope, &mut out)
            .map_err(|e| anyhow!("template: executing: {e}"))?;
        Ok(out)
    }
}

struct Scope {
    vars: Vec<(String, Value)>,
}

impl Scope {
    fn get(&self, name: &str) -> Option<&Value> {
        self.vars.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

fn render_nodes(nodes: &[Node], dot: &Value, scope: &mut Scope, out: &mut String) -> Result<()> {
    let mark = scope.vars.len();
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Action { declare: Some(name), pipeline } => {
                let value = eval_pipeline(pipeline, dot, scope)?;
                scope.vars.push((name.clone(), value));
            }
            Node::Action { declare: None, pipeline } => {
                let value = eval_pipeline(pipeline, dot, scope)?;
                out.push_str(&go_string(&value));
            }
            Node::If { branches, otherwise } => {
                let mut done = false;
                for (condition, body) in branches {
                    if truthy(&eval_pipeline(condition, dot, scope)?) {
                        render_nodes(body, dot, scope, out)?;
                        done = true;
                        break;
                    }
                }
                if !done {
                    render_nodes(otherwise, dot, scope, out)?;
                }
            }
            Node::With { pipeline, body, otherwise } => {
                let value = eval_pipeline(pipeline, dot, scope)?;
                if truthy(&value) {
                    render_nodes(body, &value, scope, out)?;
                } else {
                    render_nodes(otherwise, dot, scope, out)?;
                }
            }
            Node::Range { key, value, pipeline, body, otherwise } => {
                let collection = eval_pipeline(pipeline, dot, scope)?;
                let items: Vec<(Value, Value)> = match &collection {
                    Value::Array(items) => {
                        items.iter().enumerate().map(|(i, v)| (Value::from(i), v.clone())).collect()
                    }
                    Value::Object(map) => {
                        let sorted: BTreeMap<&String, &Value> = map.iter().collect();
                        sorted
                            .into_iter()
                            .map(|(k, v)| (Value::String(k.clone()), v.clone()))
                            .collect()
                    }
                    Value::Null => Vec::new(),
                    Value::Number(n) => (0..n.as_u64().unwrap_or(0))
                        .map(|i| (Value::from(i), Value::from(i)))
                        .collect(),
                    other => bail!("range can't iterate over {}", go_string(other)),
                };
                if items.is_empty() {
                    render_nodes(otherwise, dot, scope, out)?;
                }
                for (k, v) in items {
                    let inner = scope.vars.len();
                    if let Some(name) = key {
                        scope.vars.push((name.clone(), k));
                    }
                    if let Some(name) = value {
                        scope.vars.push((name.clone(), v.clone()));
                    }
                    render_nodes(body, &v, scope, out)?;
                    scope.vars.truncate(inner);
                }
            }
        }
    }
    scope.vars.truncate(mark);
    Ok(())
}

fn field(value: &Value, fields: &[String]) -> Value {
    let mut current = value.clone();
    for name in fields {
        current = match &current {
            Value::Object(map) => map.get(name).cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        };
    }
    current
}

fn eval_arg(arg: &Arg, dot: &Value, scope: &Scope) -> Result<Value> {
    Ok(match arg {
        Arg::Field(fields) => {
            if let (Value::Object(map), Some(first)) = (dot, fields.first()) {
                if !map.contains_key(first) {
                    // Go: a missing key of a map is the zero value, shown as <no value>.
                    return Ok(Value::Null);
                }
            }
            field(dot, fields)
        }
        Arg::Variable(name, fields) => {
            let value = scope.get(name).ok_or_else(|| anyhow!("undefined variable: ${name}"))?;
            field(value, fields)
        }
        Arg::Literal(value) => value.clone(),
        Arg::Pipeline(pipeline, fields) => field(&eval_pipeline(pipeline, dot, scope)?, fields),
        Arg::Function(name) => call(name, &[])?,
    })
}

fn eval_pipeline(pipeline: &Pipeline, dot: &Value, scope: &Scope) -> Result<Value> {
    let mut previous: Option<Value> = None;
    for command in pipeline {
        let value = match command {
            Command::Operand(arg) => {
                if previous.is_some() {
                    bail!("a value cannot take a piped argument");
                }
                eval_arg(arg, dot, scope)?
            }
            Command::Call(name, args) => {
                let mut values = Vec::with_capacity(args.len() + 1);
                for arg in args {
                    values.push(eval_arg(arg, dot, scope)?);
                }
                if let Some(p) = previous.take() {
                    values.push(p);
                }
                call(name, &values)?
            }
        };
        previous = Some(value);
    }
    previous.ok_or_else(|| anyhow!("empty pipeline"))
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value as Go's fmt prints it with %v.
pub fn go_string(value: &Value) -> String {
    match value {
        Value::Null => "<no value>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            format!("[{}]", items.iter().map(go_inner).collect::<Vec<_>>().join(" "))
        }
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            format!(
                "map[{}]",
                sorted
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", go_inner(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
    }
}

fn go_inner(value: &Value) -> String {
    match value {
        // Inside a list or map Go prints a nil as <nil>.
        Value::Null => "<nil>".into(),
        other => go_string(other),
    }
}

fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => as_f64(a) == as_f64(b),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Null, Value::Null) => true,
        _ => false,
    }
}

fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        _ => match (as_f64(a), as_f64(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y).ok_or_else(|| anyhow!("incomparable numbers")),
            _ => bail!("incompatible types for comparison"),
        },
    }
}

fn string_arg(args: &[Value], i: usize, function: &str) -> Result<String> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(go_string(other)),
        None => bail!("wrong number of args for {function}"),
    }
}

fn call(name: &str, args: &[Value]) -> Result<Value> {
    let count = |n: usize| -> Result<()> {
        if args.len() != n {
            bail!("wrong number of args for {name}: want {n} got {}", args.len());
        }
        Ok(())
    };
    Ok(match name {
        "json" => {
            count(1)?;
            Value::String(serde_json::to_string(&args[0])?)
        }
        "upper" => Value::String(string_arg(args, 0, name)?.to_uppercase()),
        "lower" => Value::String(string_arg(args, 0, name)?.to_lowercase()),
        "title" => {
            let text = string_arg(args, 0, name)?;
            let mut out = String::new();
            let mut start = true;
            for c in text.chars() {
                out.extend(if start { c.to_uppercase().collect::<Vec<_>>() } else { vec![c] });
                start = c.is_whitespace();
            }
            Value::String(out)
        }
        "join" => {
            count(2)?;
            let items: Vec<String> = match &args[0] {
                Value::Array(items) => items.iter().map(go_string).collect(),
                other => vec![go_string(other)],
            };
            Value::String(items.join(&string_arg(args, 1, name)?))
        }
        "split" => {
            count(2)?;
            let text = string_arg(args, 0, name)?;
            let sep = string_arg(args, 1, name)?;
            Value::Array(text.split(sep.as_str()).map(|s| Value::String(s.to_owned())).collect())
        }
        "truncate" => {
            count(2)?;
            let text = string_arg(args, 0, name)?;
            let n = as_f64(&args[1]).unwrap_or(0.0) as usize;
            Value::String(text.chars().take(n).collect())
        }
        "pad" => {
            count(3)?;
            let text = string_arg(args, 0, name)?;
            let before = as_f64(&args[1]).unwrap_or(0.0) as usize;
            let after = as_f64(&args[2]).unwrap_or(0.0) as usize;
            Value::String(format!("{}{text}{}", " ".repeat(before), " ".repeat(after)))
        }
        "len" => {
            count(1)?;
            Value::from(match &args[0] {
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                Value::String(s) => s.len(),
                Value::Null => 0,
                other => bail!("len of {}", go_string(other)),
            })
        }
        "index" => {
            let mut current =
                args.first().cloned().ok_or_else(|| anyhow!("index needs a value"))?;
            for key in &args[1..] {
                current = match (&current, key) {
                    (Value::Array(items), k) => {
                        let i =
                            as_f64(k).ok_or_else(|| anyhow!("index of a list must be a number"))?;
                        items
                            .get(i as usize)
                            .cloned()
                            .ok_or_else(|| anyhow!("index out of range: {i}"))?
                    }
                    (Value::Object(map), k) => {
                        map.get(&go_string(k)).cloned().unwrap_or(Value::Null)
                    }
                    (Value::Null, _) => Value::Null,
                    (other, _) => bail!("can't index item of type {}", go_string(other)),
                };
            }
            current
        }
        "slice" => {
            let value = args.first().cloned().unwrap_or(Value::Null);
            let from = args.get(1).and_then(as_f64).unwrap_or(0.0) as usize;
            match value {
                Value::String(s) => {
                    let to = args.get(2).and_then(as_f64).map(|n| n as usize).unwrap_or(s.len());
                    Value::String(s.get(from..to).unwrap_or_default().to_owned())
                }
                Value::Array(a) => {
                    let to = args.get(2).and_then(as_f64).map(|n| n as usize).unwrap_or(a.len());
                    Value::Array(a.get(from..to).unwrap_or_default().to_vec())
                }
                other => bail!("can't slice {}", go_string(&other)),
            }
        }
        "print" => Value::String(args.iter().map(go_string).collect::<Vec<_>>().join("")),
        "println" => {
            Value::String(format!("{}\n", args.iter().map(go_string).collect::<Vec<_>>().join(" ")))
        }
        "printf" => {
            let format = string_arg(args, 0, name)?;
            Value::String(printf(&format, &args[1..]))
        }
        "eq" => {
            let first = args.first().ok_or_else(|| anyhow!("eq needs arguments"))?;
            Value::Bool(args[1..].iter().any(|other| equal(first, other)))
        }
        "ne" => {
            count(2)?;
            Value::Bool(!equal(&args[0], &args[1]))
        }
        "lt" => {
            count(2)?;
            Value::Bool(compare(&args[0], &args[1])?.is_lt())
        }
        "le" => {
            count(2)?;
            Value::Bool(compare(&args[0], &args[1])?.is_le())
        }
        "gt" => {
            count(2)?;
            Value::Bool(compare(&args[0], &args[1])?.is_gt())
        }
        "ge" => {
            count(2)?;
            Value::Bool(compare(&args[0], &args[1])?.is_ge())
        }
        "and" => args.iter().find(|v| !truthy(v)).or(args.last()).cloned().unwrap_or(Value::Null),
        "or" => args.iter().find(|v| truthy(v)).or(args.last()).cloned().unwrap_or(Value::Null),
        "not" => {
            count(1)?;
            Value::Bool(!truthy(&args[0]))
        }
        other => bail!("function {other:?} not defined"),
    })
}

/// Go's Printf for the verbs templates use: %s %v %d %q %%, with widths (`%-10s`).
fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut next = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek() {
            if d == '-' || d.is_ascii_digit() || d == '.' {
                spec.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else { break };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let value = next.next().cloned().unwrap_or(Value::Null);
        let text = match verb {
            'q' => serde_json::to_string(&go_string(&value)).unwrap_or_default(),
            'd' => {
                as_f64(&value).map(|f| (f as i64).to_string()).unwrap_or_else(|| go_string(&value))
            }
            _ => go_string(&value),
        };
        let left = spec.starts_with('-');
        let width: usize =
            spec.trim_start_matches('-').split('.').next().unwrap_or("").parse().unwrap_or(0);
        if text.chars().count() >= width {
            out.push_str(&text);
        } else if left {
            out.push_str(&format!("{text:<width$}"));
        } else {
            out.push_str(&format!("{text:>width$}"));
        }
    }
    out
}

/// How a list command shows its rows with `--format`.
#[derive(Debug)]
pub enum Listing {
    /// The command's own table.
    Table,
    /// One JSON object per line.
    Json,
    /// A template per row, with a header row of `headers` when `table` was asked.
    Template { template: Template, table: bool, header: String },
}

impl Listing {
    /// `headers` maps a field name to its column title (Docker's: `.ID` → `CONTAINER ID`);
    /// unknown fields get their name in capitals.
    pub fn parse(format: &str, headers: &[(&str, &str)]) -> Result<Listing> {
        let trimmed = format.trim();
        if trimmed.is_empty() || trimmed == "table" {
            return Ok(Listing::Table);
        }
        if trimmed == "json" || trimmed == "{{json .}}" {
            return Ok(Listing::Json);
        }
        let (table, body) = match format.strip_prefix("table") {
            Some(rest) if rest.starts_with(char::is_whitespace) => (true, rest.trim_start()),
            _ => (false, format),
        };
        // The escapes people type in a shell: \t and \n.
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let template = Template::parse(&body)?;
        // The header: the same template over titles.
        let mut titles = serde_json::Map::new();
        for (start, _) in body.match_indices("{{") {
            let inner = &body[start + 2..];
            let Some(end) = inner.find("}}") else { continue };
            for token in inner[..end].split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
                if let Some(name) =
                    token.strip_prefix('.').map(|n| n.split('.').next().unwrap_or(n))
                {
                    if !name.is_empty() {
                        let title = headers
                            .iter()
                            .find(|(field, _)| *field == name)
                            .map(|(_, title)| (*title).to_owned())
                            .unwrap_or_else(|| name.to_uppercase());
                        titles.insert(name.to_owned(), Value::String(title));
                    }
                }
            }
        }
        let header = if table {
            let header_template = Template::parse(&strip_functions(&body))?;
            header_template.render(&Value::Object(titles)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Listing::Template { template, table, header })
    }

    /// Renders `rows` (JSON objects); `Table` is the caller's to print.
    pub fn render(&self, rows: &[Value]) -> Result<String> {
        match self {
            Listing::Table => Ok(String::new()),
            Listing::Json => Ok(rows.iter().map(|r| format!("{r}\n")).collect()),
            Listing::Template { template, table, header } => {
                let mut lines = Vec::new();
                if *table {
                    lines.push(header.clone());
                }
                for row in rows {
                    lines.push(template.render(row)?);
                }
                if *table {
                    Ok(align(&lines))
                } else {
                    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
                }
            }
        }
    }
}

/// Reduces `{{upper .Name}}` and `{{json .Labels}}` to `{{.Name}}` for the header row.
fn strip_functions(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..];
        let Some(end) = inner.find("}}") else { break };
        let field = inner[..end]
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .find(|t| t.starts_with('.') && t.len() > 1)
            .map(|t| t.split('.').nth(1).unwrap_or_default().to_owned());
        if let Some(field) = field {
            out.push_str(&format!("{{{{.{field}}}}}"));
        }
        rest = &inner[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Docker's tabwriter: cells split at tabs, each column as wide as its widest cell plus 3
/// spaces, the last cell of a line not padded.
pub fn align(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                out.push_str(&format!("{cell:<width$}", width = widths[i] + 3));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, data: &Value) -> String {
        Template::parse(template).expect(template).render(data).expect(template)
    }

    #[test]
    fn fields_functions_and_go_printing() {
        let data = json!({
            "Names": "web", "Labels": {"b": "2", "a": "1"}, "Env": ["A=1", "B=2"], "Count": 3,
            "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}, "other": {"IPAddress": "10.89.0.3"}}},
            "State": {"Running": true, "Health": null}
        });
        assert_eq!(render("{{.Names}}", &data), "web");
        assert_eq!(render("{{.Labels}}", &data), "map[a:1 b:2]");
        assert_eq!(render("{{.Env}}", &data), "[A=1 B=2]");
        assert_eq!(render("{{.Missing}}", &data), "<no value>");
        assert_eq!(render("{{json .Env}}", &data), r#"["A=1","B=2"]"#);
        assert_eq!(render("{{upper .Names}}|{{.Names | upper}}", &data), "WEB|WEB");
        assert_eq!(render("{{join .Env \",\"}}", &data), "A=1,B=2");
        assert_eq!(render("{{index .Labels \"a\"}}", &data), "1");
        assert_eq!(render("{{len .Env}}", &data), "2");
        assert_eq!(
            render("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", &data),
            "172.17.0.2 10.89.0.3 "
        );
        assert_eq!(render("{{range $k, $v := .Labels}}{{$k}}={{$v}};{{end}}", &data), "a=1;b=2;");
        assert_eq!(render("{{range $i, $e := .Env}}{{$i}}:{{$e}} {{end}}", &data), "0:A=1 1:B=2 ");
        assert_eq!(render("{{if .State.Running}}up{{else}}down{{end}}", &data), "up");
        assert_eq!(
            render("{{if .State.Health}}h{{else if eq .Count 3}}three{{end}}", &data),
            "three"
        );
        assert_eq!(render("{{with .State}}{{.Running}}{{end}}", &data), "true");
        assert_eq!(render("{{$n := .Names}}{{range .Env}}{{$n}}{{end}}", &data), "webweb");
        assert_eq!(render("{{printf \"%-5s|%3d\" .Names .Count}}", &data), "web  |  3");
        assert_eq!(
            render("{{(index .NetworkSettings.Networks \"bridge\").IPAddress}}", &data),
            "172.17.0.2"
        );
        assert_eq!(render("a {{- \" b \" -}} c", &data), "a b c");
        assert_eq!(render("{{/* nothing */}}x", &data), "x");
        assert_eq!(render("{{if and .State.Running (gt .Count 2)}}yes{{end}}", &data), "yes");
        assert_eq!(render("{{split \"a:b\" \":\"}}", &data), "[a b]");
        assert_eq!(render("{{title \"hello world\"}}", &data), "Hello World");
    }

    #[test]
    fn bad_templates_say_so() {
        assert!(Template::parse("{{.Names").is_err());
        assert!(Template::parse("{{if .X}}").is_err());
        assert!(Template::parse("{{end}}").is_err());
        assert!(Template::parse("{{nosuch .X}}").expect("parse").render(&json!({})).is_err());
    }

    #[test]
    fn tables_have_headers_and_aligned_columns() {
        let listing = Listing::parse("table {{.ID}}\\t{{upper .Names}}", &[("ID", "CONTAINER ID")])
            .expect("parse");
        let out = listing
            .render(&[json!({"ID": "abc", "Names": "web"}), json!({"ID": "defghi", "Names": "db"})])
            .expect("render");
        assert_eq!(out, "CONTAINER ID   NAMES\nabc            WEB\ndefghi         DB\n");
        let plain = Listing::parse("{{.Names}}", &[]).expect("parse");
        assert_eq!(plain.render(&[json!({"Names": "web"})]).expect("render"), "web\n");
        assert!(matches!(Listing::parse("json", &[]).expect("json"), Listing::Json));
        assert!(matches!(Listing::parse("table", &[]).expect("table"), Listing::Table));
    }
}
