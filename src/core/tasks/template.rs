//! Task templates: what the owner lets peers run, and how a peer's
//! parameters become an argv.
//!
//! A template's argv elements may hold placeholders, `{name}`, anywhere
//! inside them (`"--n={n}"`); `{{` and `}}` are literal braces. Rendering
//! checks every value against its parameter's declared type and limits,
//! then substitutes its canonical text in place. A value never becomes more
//! or fewer argv elements than the one that names it, and no shell sees it
//! unless the template itself runs one, which [`Template::validate`] allows
//! only where a value cannot become code (see the `safety` module).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::serde_text::{self, float_text};
use super::{
    safety, shorten, valid_param_name, valid_template_name, DEFAULT_MAX_OUTPUT, DEFAULT_TIMEOUT,
    MAX_ARGV_BYTES, MAX_ARG_LEN, MAX_OUTPUT_LIMIT, MAX_TIMEOUT, RESERVED_ENV,
};
use crate::units;

/// Most argv elements in a template.
pub const MAX_ARGV: usize = 256;
/// Most parameters a template declares.
pub const MAX_PARAMS: usize = 64;
/// Most environment variables a template sets.
pub const MAX_ENV: usize = 256;
/// Most choices of one parameter.
pub const MAX_CHOICES: usize = 256;
/// A string parameter's `max_len` when it names none, bytes.
pub const DEFAULT_MAX_LEN: usize = 4096;
/// Longest description, characters.
pub const MAX_DESCRIPTION: usize = 1024;

/// A command the owner lets peers run (config `[[tasks.templates]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The name peers use: `a-z`, `0-9`, then also `_`, `.` and `-`, at
    /// most 64 characters.
    pub name: String,
    /// What it does, for `lanswarm offers` and the dashboard.
    #[serde(default)]
    pub description: String,
    /// The program and its arguments. `argv[0]` is fixed (no placeholder)
    /// and looked up in `PATH`. Placeholders `{param}` may stand anywhere
    /// inside the other elements (`"--n={n}"`); `{{` and `}}` are literal
    /// braces.
    pub argv: Vec<String>,
    /// The parameters peers may fill in (`[tasks.templates.params.NAME]`).
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// Environment variables set for the process, fixed by the owner. The
    /// node sets `CUDA_VISIBLE_DEVICES` and `LANSWARM_*` itself.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, absolute. Default: the node's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// The process is killed after this long. Default 10m, at most 7d.
    #[serde(default = "default_timeout", with = "units::serde_duration")]
    pub timeout: Duration,
    /// Bytes of each output stream (stdout, stderr) kept for the result:
    /// `"64KiB"`, `"1MiB"`, or a whole number of bytes. Default 1MiB, at
    /// most 4MiB.
    #[serde(default = "default_max_output", with = "serde_text::bytes")]
    pub max_output: u64,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_max_output() -> u64 {
    DEFAULT_MAX_OUTPUT
}

/// One declared parameter (`[tasks.templates.params.NAME]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// `"string"` (default), `"int"`, `"float"` or `"bool"`.
    #[serde(rename = "type", default)]
    pub kind: ParamType,
    /// The value when a peer gives none; without one the parameter is
    /// required. Written as a value of the type (`default = 3`), kept as
    /// its canonical text.
    #[serde(
        default,
        with = "serde_text::scalar_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub default: Option<String>,
    /// What it means, for listings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Least value (int and float).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Greatest value (int and float).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Longest value in bytes (string). Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// When not empty, the only values allowed (compared in canonical
    /// form, so `choices = [1, 2]` takes `"01"` as `1`).
    #[serde(
        default,
        with = "serde_text::scalar_vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub choices: Vec<String>,
}

/// The type of a parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text without NUL bytes, up to `max_len` bytes.
    #[default]
    #[serde(alias = "str")]
    String,
    /// A 64-bit signed integer, written in decimal.
    #[serde(alias = "integer")]
    Int,
    /// A finite number.
    #[serde(alias = "number")]
    Float,
    /// `true` or `false`.
    #[serde(alias = "boolean")]
    Bool,
}

impl ParamType {
    /// The name used in configs and messages.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::Bool => "bool",
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a peer's parameters do not fit a template. The owner answers the
/// task request with the text (`bad_params`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A parameter the template does not declare.
    #[error("unknown parameter `{name}`: template `{template}` takes {}", list_params(.declared))]
    Unknown {
        template: String,
        name: String,
        /// The declared parameters, sorted.
        declared: Vec<String>,
    },
    /// A parameter without a default that was not given.
    #[error("missing required parameter `{name}` ({kind}){}", describe(.description))]
    Missing {
        name: String,
        kind: ParamType,
        description: String,
    },
    /// A value of the wrong type or outside the parameter's limits.
    #[error("parameter `{name}`: {message}")]
    Invalid { name: String, message: String },
    /// The rendered element is longer than a program may be given.
    #[error("argv[{index}] would be {len} bytes; a single argument may be at most {MAX_ARG_LEN}")]
    TooLong { index: usize, len: usize },
    /// The whole rendered argv is too big.
    #[error("the command line would be {len} bytes; at most {MAX_ARGV_BYTES} are allowed")]
    TooBig { len: usize },
    /// The template itself is broken (it was never validated).
    #[error("template `{template}` is invalid: {message}")]
    BadTemplate { template: String, message: String },
}

fn list_params(declared: &[String]) -> String {
    if declared.is_empty() {
        "no parameters".to_owned()
    } else {
        declared.join(", ")
    }
}

fn describe(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(": {description}")
    }
}

/// A problem with a template or the `[tasks]` section, with the key it is
/// about relative to where the check started (`argv[2]`,
/// `params.n.default`, `templates[1].name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateProblem {
    pub key: String,
    pub message: String,
}

impl TemplateProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        TemplateProblem {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same problem with `prefix` put before its key.
    pub fn within(self, prefix: &str) -> Self {
        let key = if self.key.is_empty() {
            prefix.to_owned()
        } else if self.key.starts_with('[') {
            format!("{prefix}{}", self.key)
        } else {
            format!("{prefix}.{}", self.key)
        };
        TemplateProblem { key, ..self }
    }
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for TemplateProblem {}

/// Shorthand for [`TemplateProblem::new`].
fn p(key: impl Into<String>, message: impl Into<String>) -> TemplateProblem {
    TemplateProblem::new(key, message)
}

/// A piece of an argv element: literal text or a placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Lit(String),
    Param(String),
}

/// Splits an argv element into literal text and placeholders.
pub(crate) fn parse_element(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '{' => {
                let rest = &s[i + 1..];
                let Some(end) = rest.find('}') else {
                    return Err("unclosed `{` (write `{{` for a literal brace)".to_owned());
                };
                let name = &rest[..end];
                if name.is_empty() {
                    return Err(
                        "empty placeholder `{}` (write `{{}}` for literal braces)".to_owned()
                    );
                }
                if !valid_param_name(name) {
                    return Err(format!(
                        "`{{{}}}` is not a placeholder: parameter names use a-z, 0-9 and _ \
                         (write `{{{{` and `}}}}` for literal braces)",
                        shorten(name, 40)
                    ));
                }
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Param(name.to_owned()));
                // Skip the name and its closing brace.
                while let Some((j, _)) = chars.peek() {
                    if *j > i + end + 1 {
                        break;
                    }
                    chars.next();
                }
            }
            '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '}' => {
                return Err("unmatched `}` (write `}}` for a literal brace)".to_owned());
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

impl Template {
    /// A template with this name and argv, no parameters and the defaults.
    pub fn new<S: Into<String>>(name: &str, argv: impl IntoIterator<Item = S>) -> Self {
        Template {
            name: name.to_owned(),
            description: String::new(),
            argv: argv.into_iter().map(Into::into).collect(),
            params: BTreeMap::new(),
            env: BTreeMap::new(),
            workdir: None,
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }

    /// Checks the template (see [`Template::check`]); the error is
    /// `"<key>: <problem>"`, e.g. `"argv[2]: a placeholder inside a shell
    /// script would …"`.
    pub fn validate(&self) -> Result<(), String> {
        self.check().map_err(|p| p.to_string())
    }

    /// Checks the template: its name; a non-empty argv whose program is
    /// fixed; well-formed placeholders that each name a declared
    /// parameter, and every parameter used; parameter names, limits,
    /// choices and defaults that fit their type; environment names, none
    /// that the node sets itself; an absolute `workdir`; `timeout` and
    /// `max_output` in range; and that no parameter can reach a shell
    /// script or an interpreter's inline code.
    pub fn check(&self) -> Result<(), TemplateProblem> {
        if !valid_template_name(&self.name) {
            return Err(p(
                "name",
                format!(
                    "{:?} is not a template name: use a-z and 0-9, then also '_', '.' and '-', at most 64 characters",
                    self.name
                ),
            ));
        }
        if self.description.chars().count() > MAX_DESCRIPTION {
            return Err(p(
                "description",
                format!("at most {MAX_DESCRIPTION} characters"),
            ));
        }
        if self.argv.is_empty() {
            return Err(p(
                "argv",
                "must name a program and its arguments, e.g. [\"echo\", \"{msg}\"]",
            ));
        }
        if self.argv.len() > MAX_ARGV {
            return Err(p(
                "argv",
                format!("at most {MAX_ARGV} elements, got {}", self.argv.len()),
            ));
        }
        let mut parsed = Vec::with_capacity(self.argv.len());
        for (i, a) in self.argv.iter().enumerate() {
            let key = format!("argv[{i}]");
            if a.contains('\0') {
                return Err(p(key, "must not contain a NUL byte"));
            }
            if a.len() > MAX_ARG_LEN {
                return Err(p(key, format!("{} bytes; at most {MAX_ARG_LEN}", a.len())));
            }
            let pieces = parse_element(a).map_err(|m| p(key.clone(), m))?;
            for piece in &pieces {
                if let Piece::Param(name) = piece {
                    if i == 0 {
                        return Err(p(
                            key,
                            "the program must be fixed: a placeholder here would let a peer choose what runs",
                        ));
                    }
                    if !self.params.contains_key(name) {
                        return Err(p(
                            key,
                            format!(
                                "placeholder {{{name}}} names no declared parameter; declare it under [tasks.templates.params.{name}] (declared: {})",
                                list_params(&self.params.keys().cloned().collect::<Vec<_>>())
                            ),
                        ));
                    }
                }
            }
            parsed.push(pieces);
        }
        if self.argv[0].trim().is_empty() {
            return Err(p("argv[0]", "must name a program"));
        }
        if self.params.len() > MAX_PARAMS {
            return Err(p(
                "params",
                format!("at most {MAX_PARAMS} parameters, got {}", self.params.len()),
            ));
        }
        for (name, spec) in &self.params {
            if !valid_param_name(name) {
                return Err(p(
                    "params",
                    format!(
                        "{name:?} is not a parameter name: use a-z, 0-9 and _, starting with a letter or _"
                    ),
                ));
            }
            spec.check()
                .map_err(|e| e.within(&format!("params.{name}")))?;
            let used = parsed
                .iter()
                .flatten()
                .any(|piece| matches!(piece, Piece::Param(n) if n == name));
            if !used {
                return Err(p(
                    format!("params.{name}"),
                    format!("declared but used nowhere in argv; add {{{name}}} to an argument or remove it"),
                ));
            }
        }
        if self.env.len() > MAX_ENV {
            return Err(p(
                "env",
                format!("at most {MAX_ENV} variables, got {}", self.env.len()),
            ));
        }
        for (k, v) in &self.env {
            let valid = k
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(p(
                    "env",
                    format!("{k:?} is not a variable name: use A-Z, a-z, 0-9 and _, not starting with a digit"),
                ));
            }
            if k.starts_with("LANSWARM_") || RESERVED_ENV.contains(&k.as_str()) {
                return Err(p(
                    format!("env.{k}"),
                    "is set by the node for every task (the lease's GPUs, task and allocation ids); a template may not set it",
                ));
            }
            if v.contains('\0') || v.len() > MAX_ARG_LEN {
                return Err(p(
                    format!("env.{k}"),
                    format!("must be at most {MAX_ARG_LEN} bytes, without NUL bytes"),
                ));
            }
        }
        if let Some(dir) = &self.workdir {
            if !dir.is_absolute() {
                return Err(p(
                    "workdir",
                    format!(
                        "must be an absolute path, got {:?}",
                        dir.display().to_string()
                    ),
                ));
            }
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(p(
                "timeout",
                format!(
                    "must be more than 0s and at most {}, got {}",
                    units::format_duration(MAX_TIMEOUT),
                    units::format_duration(self.timeout)
                ),
            ));
        }
        if self.max_output > MAX_OUTPUT_LIMIT {
            return Err(p(
                "max_output",
                format!(
                    "must be at most {} (a result must fit one task message), got {}",
                    serde_text::format_bytes(MAX_OUTPUT_LIMIT),
                    serde_text::format_bytes(self.max_output)
                ),
            ));
        }
        let has_placeholder: Vec<bool> = parsed
            .iter()
            .map(|pieces| pieces.iter().any(|x| matches!(x, Piece::Param(_))))
            .collect();
        safety::check(&self.argv, &has_placeholder).map_err(|(i, m)| p(format!("argv[{i}]"), m))?;
        Ok(())
    }

    /// The parameters as they will be used: each given value checked and
    /// in canonical form, defaults filled in.
    pub fn resolve_params(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ParamError> {
        if let Some(name) = params.keys().find(|k| !self.params.contains_key(*k)) {
            return Err(ParamError::Unknown {
                template: self.name.clone(),
                name: shorten(name, 64),
                declared: self.params.keys().cloned().collect(),
            });
        }
        let mut out = BTreeMap::new();
        for (name, spec) in &self.params {
            let value = match (params.get(name), &spec.default) {
                (Some(v), _) => v,
                (None, Some(d)) => d,
                (None, None) => {
                    return Err(ParamError::Missing {
                        name: name.clone(),
                        kind: spec.kind,
                        description: spec.description.clone(),
                    })
                }
            };
            let canonical = spec.value(value).map_err(|message| ParamError::Invalid {
                name: name.clone(),
                message,
            })?;
            out.insert(name.clone(), canonical);
        }
        Ok(out)
    }

    /// The argv for these parameters: every value checked against its
    /// declaration, then its canonical text put in place of its
    /// placeholders. A value stays inside the element that names it, as
    /// is: it is never split, unquoted or expanded.
    pub fn render(&self, params: &BTreeMap<String, String>) -> Result<Vec<String>, ParamError> {
        let values = self.resolve_params(params)?;
        let mut argv = Vec::with_capacity(self.argv.len());
        let mut total = 0usize;
        for (index, element) in self.argv.iter().enumerate() {
            let pieces = parse_element(element).map_err(|message| ParamError::BadTemplate {
                template: self.name.clone(),
                message: format!("argv[{index}]: {message}"),
            })?;
            let mut out = String::new();
            for piece in pieces {
                match piece {
                    Piece::Lit(s) => out.push_str(&s),
                    Piece::Param(name) => match values.get(&name) {
                        Some(v) => out.push_str(v),
                        None => {
                            return Err(ParamError::BadTemplate {
                                template: self.name.clone(),
                                message: format!(
                                "argv[{index}]: placeholder {{{name}}} names no declared parameter"
                            ),
                            })
                        }
                    },
                }
            }
            if out.len() > MAX_ARG_LEN {
                return Err(ParamError::TooLong {
                    index,
                    len: out.len(),
                });
            }
            total += out.len() + 1;
            argv.push(out);
        }
        if total > MAX_ARGV_BYTES {
            return Err(ParamError::TooBig { len: total });
        }
        Ok(argv)
    }
}

impl ParamSpec {
    /// A parameter of this type, required, with no limits.
    pub fn of(kind: ParamType) -> Self {
        ParamSpec {
            kind,
            ..ParamSpec::default()
        }
    }

    /// The string `max_len` in effect.
    pub fn effective_max_len(&self) -> usize {
        self.max_len.unwrap_or(DEFAULT_MAX_LEN)
    }

    /// Checks `text` against the type alone; returns its canonical form.
    fn typed(&self, text: &str) -> Result<String, String> {
        let got = || format!("{:?}", shorten(text, 40));
        match self.kind {
            ParamType::String => {
                if text.contains('\0') {
                    Err("must not contain a NUL byte".to_owned())
                } else {
                    Ok(text.to_owned())
                }
            }
            ParamType::Int => text
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| format!("expected an integer, got {}", got())),
            ParamType::Float => match text.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(float_text(x)),
                _ => Err(format!("expected a finite number, got {}", got())),
            },
            ParamType::Bool => match text {
                "true" | "false" => Ok(text.to_owned()),
                _ => Err(format!("expected true or false, got {}", got())),
            },
        }
    }

    /// Checks a value against the type and every limit; returns the text
    /// that goes into argv.
    pub fn value(&self, text: &str) -> Result<String, String> {
        let v = self.typed(text)?;
        self.limits(&v)?;
        if !self.choices.is_empty() {
            let allowed: Vec<String> = self
                .choices
                .iter()
                .map(|c| self.typed(c).unwrap_or_else(|_| c.clone()))
                .collect();
            if !allowed.contains(&v) {
                return Err(format!(
                    "{:?} is not one of the allowed values: {}",
                    shorten(&v, 40),
                    allowed.join(", ")
                ));
            }
        }
        Ok(v)
    }

    /// Range and length limits of a value already in canonical form.
    fn limits(&self, v: &str) -> Result<(), String> {
        match self.kind {
            ParamType::Int | ParamType::Float => {
                let x: f64 = v.parse().unwrap_or(f64::NAN);
                if let Some(min) = self.min {
                    if x < min {
                        return Err(format!("must be at least {}, got {v}", num(min)));
                    }
                }
                if let Some(max) = self.max {
                    if x > max {
                        return Err(format!("must be at most {}, got {v}", num(max)));
                    }
                }
            }
            ParamType::String => {
                let max = self.effective_max_len();
                if v.len() > max {
                    return Err(format!("{} bytes long; at most {max} allowed", v.len()));
                }
            }
            ParamType::Bool => {}
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TemplateProblem> {
        let numeric = matches!(self.kind, ParamType::Int | ParamType::Float);
        for (key, bound) in [("min", self.min), ("max", self.max)] {
            if let Some(b) = bound {
                if !numeric {
                    return Err(p(
                        key,
                        format!(
                            "only int and float parameters take {key}, this one is {}",
                            self.kind
                        ),
                    ));
                }
                if !b.is_finite() {
                    return Err(p(key, "must be a finite number"));
                }
            }
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                return Err(p(
                    "max",
                    format!("must be at least min ({}), got {}", num(min), num(max)),
                ));
            }
        }
        if let Some(len) = self.max_len {
            if self.kind != ParamType::String {
                return Err(p(
                    "max_len",
                    format!(
                        "only string parameters take max_len, this one is {}",
                        self.kind
                    ),
                ));
            }
            if !(1..=MAX_ARG_LEN).contains(&len) {
                return Err(p(
                    "max_len",
                    format!("must be between 1 and {MAX_ARG_LEN} (the longest argument a program may be given), got {len}"),
                ));
            }
        }
        if self.description.chars().count() > MAX_DESCRIPTION {
            return Err(p(
                "description",
                format!("at most {MAX_DESCRIPTION} characters"),
            ));
        }
        if self.choices.len() > MAX_CHOICES {
            return Err(p(
                "choices",
                format!("at most {MAX_CHOICES} choices, got {}", self.choices.len()),
            ));
        }
        let mut seen = Vec::new();
        for (i, c) in self.choices.iter().enumerate() {
            let key = format!("choices[{i}]");
            let v = self.typed(c).map_err(|m| p(key.clone(), m))?;
            self.limits(&v).map_err(|m| p(key.clone(), m))?;
            if seen.contains(&v) {
                return Err(p(key, format!("{v:?} is listed twice")));
            }
            seen.push(v);
        }
        if let Some(d) = &self.default {
            self.value(d).map_err(|m| p("default", m))?;
        }
        Ok(())
    }
}

/// A bound as written: `10`, not `10.0`, for whole numbers.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn template(argv: &[&str], ps: &[(&str, ParamSpec)]) -> Template {
        let mut t = Template::new("t", argv.iter().copied());
        for (name, spec) in ps {
            t.params.insert((*name).to_owned(), spec.clone());
        }
        t
    }

    fn int() -> ParamSpec {
        ParamSpec::of(ParamType::Int)
    }

    fn string() -> ParamSpec {
        ParamSpec::of(ParamType::String)
    }

    #[test]
    fn placeholders_parse() {
        use Piece::*;
        assert_eq!(
            parse_element("--n={n}").unwrap(),
            [Lit("--n=".into()), Param("n".into())]
        );
        assert_eq!(
            parse_element("{a}{b}x").unwrap(),
            [Param("a".into()), Param("b".into()), Lit("x".into())]
        );
        assert_eq!(
            parse_element("{{print $1}}").unwrap(),
            [Lit("{print $1}".into())]
        );
        assert_eq!(
            parse_element("{{{n}}}").unwrap(),
            [Lit("{".into()), Param("n".into()), Lit("}".into())]
        );
        assert_eq!(parse_element("").unwrap(), []);
        assert_eq!(parse_element("é{x}é").unwrap().len(), 3);
        for (bad, want) in [
            ("{n", "unclosed `{`"),
            ("x}", "unmatched `}`"),
            ("{}", "empty placeholder"),
            ("{print $1}", "`{print $1}` is not a placeholder"),
            ("{N}", "is not a placeholder"),
            ("{a{b}", "is not a placeholder"),
        ] {
            let e = parse_element(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn renders_values_in_place_never_split() {
        let t = template(
            &["prog", "--n={n}", "{msg}", "{{literal}}", "{a}-{b}"],
            &[
                ("n", int()),
                ("msg", string()),
                ("a", string()),
                ("b", string()),
            ],
        );
        t.validate().unwrap();
        let argv = t
            .render(&params(&[
                ("n", "-042"),
                ("msg", "hello world; rm -rf / $(id) `x` \"q\" 'q' \n*"),
                ("a", "{b}"),
                ("b", ""),
            ]))
            .unwrap();
        assert_eq!(
            argv,
            [
                "prog",
                "--n=-42",
                "hello world; rm -rf / $(id) `x` \"q\" 'q' \n*",
                "{literal}",
                "{b}-",
            ]
        );
    }

    #[test]
    fn defaults_and_canonical_forms() {
        let mut n = int();
        n.default = Some("+7".into());
        let mut x = ParamSpec::of(ParamType::Float);
        x.default = Some("1".into());
        let mut b = ParamSpec::of(ParamType::Bool);
        b.default = Some("false".into());
        let t = template(&["p", "{n}", "{x}", "{b}"], &[("n", n), ("x", x), ("b", b)]);
        t.validate().unwrap();
        assert_eq!(
            t.render(&BTreeMap::new()).unwrap(),
            ["p", "7", "1.0", "false"]
        );
        assert_eq!(
            t.render(&params(&[("x", "2.50"), ("b", "true"), ("n", "0")]))
                .unwrap(),
            ["p", "0", "2.5", "true"]
        );
        assert_eq!(t.render(&params(&[("x", "1e-7")])).unwrap()[2], "1e-7");
        assert_eq!(
            t.resolve_params(&BTreeMap::new()).unwrap(),
            params(&[("b", "false"), ("n", "7"), ("x", "1.0")])
        );
    }

    #[test]
    fn every_render_error_is_clear() {
        let mut n = int();
        n.min = Some(1.0);
        n.max = Some(10.0);
        let mut mode = string();
        mode.choices = vec!["fast".into(), "slow".into()];
        let mut short = string();
        short.max_len = Some(3);
        short.default = Some("abc".into());
        let mut x = ParamSpec::of(ParamType::Float);
        x.default = Some("0.5".into());
        x.max = Some(1.0);
        let mut flag = ParamSpec::of(ParamType::Bool);
        flag.default = Some("true".into());
        let mut level = int();
        level.choices = vec!["1".into(), "2".into()];
        level.default = Some("1".into());
        let mut mode_default = mode.clone();
        mode_default.default = Some("fast".into());
        mode_default.description = "how hard to try".into();
        let t = template(
            &["p", "{n}", "{mode}", "{short}", "{x}", "{flag}", "{level}"],
            &[
                ("n", n),
                ("mode", mode_default),
                ("short", short),
                ("x", x),
                ("flag", flag),
                ("level", level),
            ],
        );
        t.validate().unwrap();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("n", "3"), ("m", "1")],
                "unknown parameter `m`: template `t` takes flag, level, mode, n, short, x",
            ),
            (&[], "missing required parameter `n` (int)"),
            (
                &[("n", "abc")],
                "parameter `n`: expected an integer, got \"abc\"",
            ),
            (
                &[("n", "1.5")],
                "parameter `n`: expected an integer, got \"1.5\"",
            ),
            (&[("n", " 3")], "parameter `n`: expected an integer"),
            (
                &[("n", "99999999999999999999")],
                "parameter `n`: expected an integer",
            ),
            (&[("n", "0")], "parameter `n`: must be at least 1, got 0"),
            (&[("n", "11")], "parameter `n`: must be at most 10, got 11"),
            (
                &[("n", "3"), ("mode", "medium")],
                "parameter `mode`: \"medium\" is not one of the allowed values: fast, slow",
            ),
            (
                &[("n", "3"), ("short", "abcd")],
                "parameter `short`: 4 bytes long; at most 3 allowed",
            ),
            (
                &[("n", "3"), ("short", "a\0")],
                "parameter `short`: must not contain a NUL byte",
            ),
            (
                &[("n", "3"), ("x", "NaN")],
                "parameter `x`: expected a finite number, got \"NaN\"",
            ),
            (
                &[("n", "3"), ("x", "inf")],
                "parameter `x`: expected a finite number",
            ),
            (
                &[("n", "3"), ("x", "1.5")],
                "parameter `x`: must be at most 1, got 1.5",
            ),
            (
                &[("n", "3"), ("flag", "yes")],
                "parameter `flag`: expected true or false, got \"yes\"",
            ),
            (
                &[("n", "3"), ("flag", "True")],
                "parameter `flag`: expected true or false",
            ),
            (
                &[("n", "3"), ("level", "3")],
                "parameter `level`: \"3\" is not one of the allowed values: 1, 2",
            ),
        ];
        for (given, want) in cases {
            let e = t.render(&params(given)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{given:?}:\n got  {e}\n want {want}");
        }
        // Canonical comparison with choices: "02" is 2.
        assert_eq!(
            t.render(&params(&[("n", "3"), ("level", "02")])).unwrap()[6],
            "2"
        );
        let mut required = string();
        required.description = "who to greet".into();
        let t2 = template(&["echo", "{who}"], &[("who", required)]);
        assert_eq!(
            t2.render(&BTreeMap::new()).unwrap_err().to_string(),
            "missing required parameter `who` (string): who to greet"
        );
        let t3 = Template::new("bare", ["true"]);
        assert_eq!(
            t3.render(&params(&[("x", "1")])).unwrap_err().to_string(),
            "unknown parameter `x`: template `bare` takes no parameters"
        );
    }

    #[test]
    fn over_long_arguments_are_refused() {
        let mut s = string();
        s.max_len = Some(MAX_ARG_LEN);
        let t = template(&["p", "--x={s}"], &[("s", s)]);
        let long = "a".repeat(MAX_ARG_LEN);
        assert!(matches!(
            t.render(&params(&[("s", &long)])),
            Err(ParamError::TooLong { index: 1, .. })
        ));
        let mut s = string();
        s.max_len = Some(100_000);
        let args: Vec<String> = (0..12).map(|i| format!("{{s{i}}}")).collect();
        let mut t = Template::new("big", std::iter::once("p".to_owned()).chain(args));
        for i in 0..12 {
            t.params.insert(format!("s{i}"), s.clone());
        }
        t.validate().unwrap();
        let v = "b".repeat(100_000);
        let given: BTreeMap<String, String> =
            (0..12).map(|i| (format!("s{i}"), v.clone())).collect();
        assert!(matches!(t.render(&given), Err(ParamError::TooBig { .. })));
    }

    #[test]
    fn validation_problems_name_their_key() {
        let ok = || template(&["prog", "{n}"], &[("n", int())]);
        ok().validate().unwrap();
        let mut cases: Vec<(Template, &str)> = Vec::new();
        let mut t = ok();
        t.name = "Bad Name".into();
        cases.push((t, "name: \"Bad Name\" is not a template name"));
        let mut t = ok();
        t.argv.clear();
        cases.push((t, "argv: must name a program"));
        cases.push((
            template(&["{n}"], &[("n", int())]),
            "argv[0]: the program must be fixed",
        ));
        cases.push((
            template(&["/bin/{n}"], &[("n", int())]),
            "argv[0]: the program must be fixed",
        ));
        cases.push((template(&[" "], &[]), "argv[0]: must name a program"));
        cases.push((template(&["p", "{m}"], &[("n", int())]), "argv[1]: placeholder {m} names no declared parameter; declare it under [tasks.templates.params.m] (declared: n)"));
        cases.push((
            template(&["p", "{n"], &[("n", int())]),
            "argv[1]: unclosed `{`",
        ));
        cases.push((template(&["p", "n}"], &[]), "argv[1]: unmatched `}`"));
        cases.push((
            template(&["p", "{n}", "a\0b"], &[("n", int())]),
            "argv[2]: must not contain a NUL byte",
        ));
        cases.push((
            template(&["p", "x"], &[("n", int())]),
            "params.n: declared but used nowhere in argv",
        ));
        cases.push((
            template(&["p", "{n}"], &[("n", int()), ("Bad", int())]),
            "params: \"Bad\" is not a parameter name",
        ));
        let mut s = string();
        s.min = Some(1.0);
        cases.push((
            template(&["p", "{s}"], &[("s", s)]),
            "params.s.min: only int and float parameters take min",
        ));
        let mut n = int();
        n.max_len = Some(3);
        cases.push((
            template(&["p", "{n}"], &[("n", n)]),
            "params.n.max_len: only string parameters take max_len",
        ));
        let mut s = string();
        s.max_len = Some(1 << 20);
        cases.push((
            template(&["p", "{s}"], &[("s", s)]),
            "params.s.max_len: must be between 1 and 131071",
        ));
        let mut n = int();
        n.min = Some(5.0);
        n.max = Some(1.0);
        cases.push((
            template(&["p", "{n}"], &[("n", n)]),
            "params.n.max: must be at least min (5), got 1",
        ));
        let mut n = int();
        n.default = Some("ten".into());
        cases.push((
            template(&["p", "{n}"], &[("n", n)]),
            "params.n.default: expected an integer, got \"ten\"",
        ));
        let mut n = int();
        n.default = Some("0".into());
        n.min = Some(1.0);
        cases.push((
            template(&["p", "{n}"], &[("n", n)]),
            "params.n.default: must be at least 1, got 0",
        ));
        let mut n = int();
        n.choices = vec!["1".into(), "x".into()];
        cases.push((
            template(&["p", "{n}"], &[("n", n)]),
            "params.n.choices[1]: expected an integer",
        ));
        let mut n = int();
        n.choices = vec!["1".into(), "01".into()];
        cases.push((
            template(&["p", "{n}"], &[("n", n)]),
            "params.n.choices[1]: \"1\" is listed twice",
        ));
        let mut s = string();
        s.choices = vec!["a".into()];
        s.default = Some("b".into());
        cases.push((
            template(&["p", "{s}"], &[("s", s)]),
            "params.s.default: \"b\" is not one of the allowed values: a",
        ));
        let mut t = ok();
        t.env.insert("1X".into(), "v".into());
        cases.push((t, "env: \"1X\" is not a variable name"));
        let mut t = ok();
        t.env.insert("LANSWARM_TASK_ID".into(), "v".into());
        cases.push((t, "env.LANSWARM_TASK_ID: is set by the node"));
        let mut t = ok();
        t.env.insert("CUDA_VISIBLE_DEVICES".into(), "0".into());
        cases.push((t, "env.CUDA_VISIBLE_DEVICES: is set by the node"));
        let mut t = ok();
        t.workdir = Some("rel/dir".into());
        cases.push((t, "workdir: must be an absolute path, got \"rel/dir\""));
        let mut t = ok();
        t.timeout = Duration::ZERO;
        cases.push((t, "timeout: must be more than 0s and at most 7d, got 0s"));
        let mut t = ok();
        t.max_output = 8 << 20;
        cases.push((
            t,
            "max_output: must be at most 4MiB (a result must fit one task message), got 8MiB",
        ));
        for (t, want) in cases {
            let e = t.validate().unwrap_err();
            assert!(
                e.starts_with(want),
                "{:?}:\n got  {e}\n want {want}",
                t.argv
            );
        }
    }

    #[test]
    fn shell_scripts_may_not_hold_placeholders() {
        let msg = ParamSpec::of(ParamType::String);
        let bad = template(&["sh", "-c", "echo {msg}"], &[("msg", msg.clone())]);
        assert_eq!(
            bad.validate().unwrap_err(),
            "argv[2]: a placeholder inside a shell script would let a parameter run as shell code; \
             pass it as a positional argument instead (argv = [\"sh\", \"-c\", \"echo \\\"$1\\\"\", \"sh\", \"{msg}\"])"
        );
        // The safe way: the value is $1, never parsed as code.
        let good = template(&["sh", "-c", "echo \"$1\"", "sh", "{msg}"], &[("msg", msg)]);
        good.validate().unwrap();
        assert_eq!(
            good.render(&params(&[("msg", "$(reboot); `id`")])).unwrap(),
            ["sh", "-c", "echo \"$1\"", "sh", "$(reboot); `id`"]
        );
    }

    #[test]
    fn round_trips_through_toml() {
        let text = r#"
            name = "square"
            description = "Squares a number"
            argv = ["python3", "square.py", "--n={n}", "--mode", "{mode}"]
            env = { PYTHONUNBUFFERED = "1" }
            workdir = "/srv/jobs"
            timeout = "30s"
            max_output = "64KiB"
            [params.n]
            type = "int"
            min = 0
            max = 1000
            default = 2
            description = "the number"
            [params.mode]
            choices = ["fast", "slow"]
            default = "fast"
        "#;
        let t: Template = toml::from_str(text).unwrap();
        t.validate().unwrap();
        assert_eq!(t.max_output, 64 * 1024);
        assert_eq!(t.timeout, Duration::from_secs(30));
        assert_eq!(t.params["n"].default.as_deref(), Some("2"));
        assert_eq!(t.params["n"].min, Some(0.0));
        assert_eq!(t.params["mode"].kind, ParamType::String);
        let back: Template = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Template>(&json).unwrap(), t);

        let minimal: Template = toml::from_str("name = \"x\"\nargv = [\"true\"]").unwrap();
        assert_eq!(minimal.timeout, DEFAULT_TIMEOUT);
        assert_eq!(minimal.max_output, DEFAULT_MAX_OUTPUT);
        let e = toml::from_str::<Template>("name = \"x\"\nargv = [\"true\"]\ncommand = \"ls\"")
            .unwrap_err();
        assert!(e.message().contains("unknown field `command`"), "{e}");
        let e = toml::from_str::<Template>("name = \"x\"\nargv = [\"true\"]\nmax_output = \"1K\"")
            .unwrap_err();
        assert!(e.message().contains("invalid size \"1K\""), "{e}");
        let e = toml::from_str::<Template>(
            "name = \"x\"\nargv = [\"true\"]\nparams.n = { type = \"complex\" }",
        )
        .unwrap_err();
        assert!(e.message().contains("unknown variant `complex`"), "{e}");
    }
}
