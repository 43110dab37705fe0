//! A distributed job as the requester writes it: `lanswarm job run
//! job.toml`, or JSON to the HTTP API (the same struct).
//!
//! ```toml
//! name = "sum-of-squares"
//! priority = "normal"          # low | normal | high | critical
//! strategy = "round-robin"     # optional; a placement strategy
//! aggregate = "sum"            # collect | concat | sum | min | max
//! max_attempts = 3             # tries per subtask, re-placements counted
//! parallel = 0                 # most subtasks running at once; 0 = all
//! spread = true                # a different node for each subtask first
//!
//! [defaults]                   # merged into every subtask
//! template = "square"
//! cpu_cores = 1
//! memory = "64MiB"
//!
//! [[subtasks]]
//! params = { n = 3 }
//!
//! [[subtasks]]
//! params = { n = 4 }
//!
//! [[subtasks]]                 # an inference call instead of a template
//! model = "llama3"
//! prompt = "Say hi"
//! ```
//!
//! A subtask's own fields win over `[defaults]`; `params` and `custom` are
//! merged key by key. Parameter values may be written as strings, numbers
//! or booleans; they are kept as text and checked by the owner against the
//! template's declared types.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use super::aggregate::Aggregate;
use super::serde_text;
use super::{shorten, valid_param_name, valid_template_name, MAX_ARG_LEN};
use crate::core::constraints::Constraints;
use crate::core::placement::Strategy;
use crate::model::{InferenceCall, InferenceRequest, Priority, ResourceRequirements, TaskSpec};

/// Most subtasks in one job.
pub const MAX_SUBTASKS: usize = 1024;
/// Most tries of one subtask.
pub const MAX_ATTEMPTS: u32 = 20;
/// Longest job name, characters.
pub const MAX_JOB_NAME: usize = 128;
/// Longest prompt or system prompt, bytes.
pub const MAX_PROMPT: usize = 1024 * 1024;
/// Most parameters given to one subtask.
pub const MAX_SUBTASK_PARAMS: usize = 64;

/// A distributed job: subtasks, how to place them, how to combine their
/// outputs.
///
/// Stored as is (postcard) and sent as JSON, so it has no flattened or
/// untagged parts; the lenient value forms (numbers as parameter values,
/// `"64MiB"` sizes) apply to TOML and JSON only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSpec {
    /// A name for listings, at most 128 characters. Optional.
    pub name: String,
    /// Priority of the job in the requester's queue and of every
    /// allocation it makes. Default `normal`.
    pub priority: Priority,
    /// Placement strategy for the subtasks; default: the node's own.
    pub strategy: Option<Strategy>,
    /// How the outputs become the result. Default `collect`.
    pub aggregate: Aggregate,
    /// Tries per subtask, counting re-placements after a lost node,
    /// 1..=20. Default 3.
    pub max_attempts: u32,
    /// Most subtasks placed or running at once; 0 (the default) means all.
    pub parallel: u32,
    /// Prefer, for each subtask, a node that runs none of this job's other
    /// subtasks, while there is one. Default true.
    pub spread: bool,
    /// Fields merged into every subtask.
    pub defaults: SubtaskSpec,
    /// The subtasks, 1..=1024, in the order their outputs are combined.
    pub subtasks: Vec<SubtaskSpec>,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            name: String::new(),
            priority: Priority::Normal,
            strategy: None,
            aggregate: Aggregate::Collect,
            max_attempts: 3,
            parallel: 0,
            spread: true,
            defaults: SubtaskSpec::default(),
            subtasks: Vec::new(),
        }
    }
}

/// One subtask (or `[defaults]`): what runs, and the resources and place it
/// needs. Either `template` (with `params`) or `model` and `prompt`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubtaskSpec {
    /// A template the owner declared.
    pub template: Option<String>,
    /// The template's parameters: strings, numbers or booleans.
    #[serde(with = "serde_text::scalar_map")]
    pub params: BTreeMap<String, String>,
    /// For an inference subtask: the model (it goes only to nodes serving
    /// it).
    pub model: Option<String>,
    /// For an inference subtask: the prompt.
    pub prompt: Option<String>,
    /// For an inference subtask: an optional system prompt.
    pub system: Option<String>,
    /// CPU cores.
    pub cpu_cores: Option<u32>,
    /// Memory, `"512MiB"`, `"2GiB"` (an integer is MiB).
    #[serde(with = "serde_text::size_mb_opt")]
    pub memory: Option<u64>,
    /// Disk.
    #[serde(with = "serde_text::size_mb_opt")]
    pub disk: Option<u64>,
    /// Number of GPUs.
    pub gpu_count: Option<u32>,
    /// Memory on each GPU.
    #[serde(with = "serde_text::size_mb_opt")]
    pub gpu_memory: Option<u64>,
    /// Models the node must serve (one of them), for a template subtask.
    pub models: Option<Vec<String>>,
    /// Custom resources by name.
    pub custom: BTreeMap<String, u64>,
    /// Only this node (id or name).
    pub node_id: Option<String>,
    /// Only the nodes of this resource pool.
    pub pool: Option<String>,
    /// Only the members of this swarm group (id or name).
    pub group: Option<String>,
    /// Labels, architecture, GPU name and compute capability, zone.
    pub constraints: Option<Constraints>,
}

/// What to allocate and run for one subtask: the merged spec, ready for
/// an allocation request and a task request.
#[derive(Clone, Debug, PartialEq)]
pub struct SubtaskPlan {
    /// What runs on the granted lease.
    pub spec: TaskSpec,
    /// What to ask for. A subtask that names no resource asks for one CPU
    /// core, since every task runs on a lease and a lease holds something.
    pub req: ResourceRequirements,
    /// The job's priority.
    pub priority: Priority,
    /// The job's strategy, if it names one.
    pub strategy: Option<Strategy>,
    pub node_id: Option<String>,
    pub pool: Option<String>,
    pub group: Option<String>,
    pub constraints: Constraints,
}

impl SubtaskSpec {
    fn is_inference(&self) -> bool {
        self.model.is_some() || self.prompt.is_some() || self.system.is_some()
    }

    /// `self` over `defaults`: own fields win; `params` and `custom` merge
    /// by key. A subtask that names its own template or model takes
    /// nothing of the other kind from the defaults.
    pub fn merged(&self, defaults: &SubtaskSpec) -> SubtaskSpec {
        let own_template = self.template.is_some();
        let own_inference = self.is_inference();
        let (template, params, model, prompt, system) = if own_template {
            (
                self.template.clone(),
                merge(&defaults.params, &self.params),
                None,
                None,
                None,
            )
        } else if own_inference {
            (
                None,
                self.params.clone(),
                self.model.clone().or_else(|| defaults.model.clone()),
                self.prompt.clone().or_else(|| defaults.prompt.clone()),
                self.system.clone().or_else(|| defaults.system.clone()),
            )
        } else if defaults.template.is_some() {
            (
                defaults.template.clone(),
                merge(&defaults.params, &self.params),
                None,
                None,
                None,
            )
        } else {
            (
                None,
                merge(&defaults.params, &self.params),
                defaults.model.clone(),
                defaults.prompt.clone(),
                defaults.system.clone(),
            )
        };
        SubtaskSpec {
            template,
            params,
            model,
            prompt,
            system,
            cpu_cores: self.cpu_cores.or(defaults.cpu_cores),
            memory: self.memory.or(defaults.memory),
            disk: self.disk.or(defaults.disk),
            gpu_count: self.gpu_count.or(defaults.gpu_count),
            gpu_memory: self.gpu_memory.or(defaults.gpu_memory),
            models: self.models.clone().or_else(|| defaults.models.clone()),
            custom: merge(&defaults.custom, &self.custom),
            node_id: self.node_id.clone().or_else(|| defaults.node_id.clone()),
            pool: self.pool.clone().or_else(|| defaults.pool.clone()),
            group: self.group.clone().or_else(|| defaults.group.clone()),
            constraints: self
                .constraints
                .clone()
                .or_else(|| defaults.constraints.clone()),
        }
    }

    /// Checks the fields as written (not merged). Keys are relative.
    fn check_own(&self) -> Result<(), (String, String)> {
        let p = |k: &str, m: String| Err((k.to_owned(), m));
        if self.template.is_some() && self.is_inference() {
            return p(
                "",
                "give either template (with params) or model and prompt, not both".to_owned(),
            );
        }
        if self.is_inference() && !self.params.is_empty() {
            return p(
                "params",
                "only a template takes params; an inference subtask has model and prompt"
                    .to_owned(),
            );
        }
        if let Some(t) = &self.template {
            if !valid_template_name(t) {
                return p(
                    "template",
                    format!("{:?} is not a template name", shorten(t, 70)),
                );
            }
        }
        if self.params.len() > MAX_SUBTASK_PARAMS {
            return p(
                "params",
                format!(
                    "at most {MAX_SUBTASK_PARAMS} parameters, got {}",
                    self.params.len()
                ),
            );
        }
        for (k, v) in &self.params {
            if !valid_param_name(k) {
                return p(
                    "params",
                    format!(
                        "{:?} is not a parameter name (a-z, 0-9 and _)",
                        shorten(k, 70)
                    ),
                );
            }
            if v.len() > MAX_ARG_LEN || v.contains('\0') {
                return p(
                    &format!("params.{k}"),
                    format!("must be at most {MAX_ARG_LEN} bytes, without NUL bytes"),
                );
            }
        }
        if let Some(m) = &self.model {
            if m.trim().is_empty() || m.len() > 256 {
                return p("model", "must be a model name of 1 to 256 bytes".to_owned());
            }
        }
        for (key, text) in [("prompt", &self.prompt), ("system", &self.system)] {
            if text.as_ref().is_some_and(|t| t.len() > MAX_PROMPT) {
                return p(key, format!("at most {MAX_PROMPT} bytes"));
            }
        }
        if let Some(models) = &self.models {
            if models.iter().any(|m| m.trim().is_empty()) {
                return p("models", "model names must not be empty".to_owned());
            }
        }
        if self.custom.keys().any(|k| k.trim().is_empty()) {
            return p("custom", "resource names must not be empty".to_owned());
        }
        for (key, v) in [
            ("node_id", &self.node_id),
            ("pool", &self.pool),
            ("group", &self.group),
        ] {
            if v.as_ref().is_some_and(|v| v.trim().is_empty()) {
                return p(key, "must not be empty".to_owned());
            }
        }
        if let Some(c) = &self.constraints {
            c.validate().map_err(|e| match e.split_once(": ") {
                Some((field, msg)) => (format!("constraints.{field}"), msg.to_owned()),
                None => ("constraints".to_owned(), e),
            })?;
        }
        Ok(())
    }

    /// Checks a merged subtask: exactly one kind of work, complete.
    fn check_merged(&self) -> Result<(), (String, String)> {
        let p = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        match (&self.template, self.is_inference()) {
            (Some(_), false) => Ok(()),
            (None, true) => {
                if self.model.is_none() || self.prompt.is_none() {
                    return p(
                        "",
                        "an inference subtask needs both model and prompt (here or in [defaults])",
                    );
                }
                if !self.params.is_empty() {
                    return p(
                        "params",
                        "only a template takes params; this subtask is an inference call",
                    );
                }
                if self.models.is_some() {
                    return p(
                        "models",
                        "an inference subtask goes to nodes that serve its model; leave models out",
                    );
                }
                Ok(())
            }
            (None, false) => p(
                "",
                "needs a template (with params) or a model and a prompt, here or in [defaults]",
            ),
            (Some(_), true) => p(
                "",
                "give either template (with params) or model and prompt, not both",
            ),
        }
    }
}

fn merge<V: Clone>(base: &BTreeMap<String, V>, over: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    let mut out = base.clone();
    out.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

impl JobSpec {
    /// Parses and validates a job file. Errors read
    /// `"<line>:<column>: <key>: <problem>"`, like config errors without
    /// the file name (the caller adds it).
    pub fn from_toml(text: &str) -> Result<JobSpec, String> {
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(e) => return Err(located(text, e.span(), None, e.message())),
        };
        let spec: JobSpec = serde_path_to_error::deserialize(toml::de::Deserializer::from(
            root.clone(),
        ))
        .map_err(|e| {
            let path = e.path().to_string();
            let path = (path != ".").then_some(path);
            let inner = e.into_inner();
            located(text, inner.span(), path.as_deref(), inner.message())
        })?;
        if let Err((key, message)) = spec.check() {
            let span = span_of(root.get_ref(), &key);
            return Err(located(text, span, Some(&key), &message));
        }
        Ok(spec)
    }

    /// Parses and validates a job sent as JSON. Errors name the key.
    pub fn from_json(text: &str) -> Result<JobSpec, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        let spec: JobSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.into_inner().to_string()
            } else {
                format!("{path}: {}", e.into_inner())
            }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what the types alone cannot: 1..=1024 subtasks, each with
    /// exactly one of a template or a model and a prompt (after merging
    /// `[defaults]`), `max_attempts` in 1..=20, the name's length, and the
    /// fields' own limits. The error is `"<key>: <problem>"`, e.g.
    /// `"subtasks[2]: needs a template …"`.
    pub fn validate(&self) -> Result<(), String> {
        self.check().map_err(|(key, message)| {
            if key.is_empty() {
                message
            } else {
                format!("{key}: {message}")
            }
        })
    }

    fn check(&self) -> Result<(), (String, String)> {
        let p = |k: &str, m: String| Err((k.to_owned(), m));
        let n = self.name.chars().count();
        if n > MAX_JOB_NAME {
            return p(
                "name",
                format!("at most {MAX_JOB_NAME} characters, got {n}"),
            );
        }
        if self.name.chars().any(char::is_control) {
            return p("name", "must not contain control characters".to_owned());
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return p(
                "max_attempts",
                format!(
                    "must be between 1 and {MAX_ATTEMPTS}, got {}",
                    self.max_attempts
                ),
            );
        }
        if self.subtasks.is_empty() {
            return p(
                "subtasks",
                "a job needs at least one subtask ([[subtasks]])".to_owned(),
            );
        }
        if self.subtasks.len() > MAX_SUBTASKS {
            return p(
                "subtasks",
                format!(
                    "at most {MAX_SUBTASKS} subtasks, got {}",
                    self.subtasks.len()
                ),
            );
        }
        let within = |prefix: &str, (k, m): (String, String)| {
            let key = if k.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{k}")
            };
            (key, m)
        };
        self.defaults
            .check_own()
            .map_err(|e| within("defaults", e))?;
        for (i, sub) in self.subtasks.iter().enumerate() {
            let prefix = format!("subtasks[{i}]");
            sub.check_own().map_err(|e| within(&prefix, e))?;
            sub.merged(&self.defaults)
                .check_merged()
                .map_err(|e| within(&prefix, e))?;
        }
        Ok(())
    }

    /// Subtask `i` merged with `[defaults]`. Panics if `i` is out of range.
    pub fn resolved(&self, i: usize) -> SubtaskSpec {
        self.subtasks[i].merged(&self.defaults)
    }

    /// What to allocate and run for subtask `i`, on a validated spec.
    /// Panics if `i` is out of range.
    pub fn subtask(&self, i: usize) -> SubtaskPlan {
        let s = self.resolved(i);
        let mut req = ResourceRequirements {
            cpu_cores: s.cpu_cores.unwrap_or(0),
            memory_mb: s.memory.unwrap_or(0),
            disk_mb: s.disk.unwrap_or(0),
            gpu_count: s.gpu_count.unwrap_or(0),
            gpu_required: false,
            gpu_memory_mb: s.gpu_memory.unwrap_or(0),
            preferred_models: s.models.clone().unwrap_or_default(),
            custom: s.custom.clone(),
        };
        let spec = match (&s.template, &s.model) {
            (None, Some(model)) => {
                req.preferred_models = vec![model.clone()];
                TaskSpec::Inference(InferenceRequest {
                    model: model.clone(),
                    call: InferenceCall::Generate {
                        prompt: s.prompt.clone().unwrap_or_default(),
                        system: s.system.clone(),
                    },
                    stream: false,
                    options: None,
                })
            }
            _ => TaskSpec::Template {
                template: s.template.clone().unwrap_or_default(),
                params: s.params.clone(),
            },
        };
        if req.is_empty() {
            req.cpu_cores = 1;
        }
        SubtaskPlan {
            spec,
            req,
            priority: self.priority,
            strategy: self.strategy,
            node_id: s.node_id,
            pool: s.pool,
            group: s.group,
            constraints: s.constraints.unwrap_or_default(),
        }
    }
}

/// `"<line>:<col>: <key>: <message>"` for a byte span of `text`.
fn located(text: &str, span: Option<Range<usize>>, key: Option<&str>, message: &str) -> String {
    let mut out = String::new();
    if let Some(span) = span {
        let (line, col) = line_col(text, span.start);
        out.push_str(&format!("{line}:{col}: "));
    }
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(message.trim().replace('\n', "; ").as_str());
    out
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[start..pos].chars().count() + 1)
}

/// The span of the deepest part of `key` (`subtasks[2].params.n`) that
/// the document has.
fn span_of(root: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    enum Seg<'a> {
        Key(&'a str),
        Index(usize),
    }
    let mut segs = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            segs.push(Seg::Key(name));
        }
        while let Some((idx, after)) = rest.split_once(']') {
            if let Ok(i) = idx.parse() {
                segs.push(Seg::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    let mut table = Some(root);
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    let mut found = None;
    for seg in segs {
        let value = match seg {
            Seg::Key(name) => {
                let Some((k, v)) = table.and_then(|t| t.iter().find(|(k, _)| k.get_ref() == name))
                else {
                    return found;
                };
                found = Some(k.span());
                v
            }
            Seg::Index(i) => {
                let Some(v) = array.and_then(|a| a.get(i)) else {
                    return found;
                };
                found = Some(v.span());
                v
            }
        };
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "sum-of-squares"
priority = "high"
strategy = "round_robin"
aggregate = "sum"
max_attempts = 4
parallel = 2

[defaults]
template = "square"
cpu_cores = 1
memory = "64MiB"
params = { scale = 2 }

[[subtasks]]
params = { n = 3 }

[[subtasks]]
params = { n = 4, scale = 1.5 }
gpu_count = 1
gpu_memory = "8GiB"
node_id = "gpu-box"

[[subtasks]]
template = "other"
params = { flag = true, word = "hi" }
models = ["llama3"]
custom = { "db-connections" = 2 }
pool = "lab"
constraints = { arch = "x86_64", labels = { tier = "gpu" } }

[[subtasks]]
model = "llama3"
prompt = "Say hi"
system = "Be brief"
"#;

    #[test]
    fn parses_and_merges_defaults() {
        let spec = JobSpec::from_toml(EXAMPLE).unwrap();
        assert_eq!(spec.name, "sum-of-squares");
        assert_eq!(spec.priority, Priority::High);
        assert_eq!(spec.strategy, Some(Strategy::RoundRobin));
        assert_eq!(spec.aggregate, Aggregate::Sum);
        assert_eq!(spec.max_attempts, 4);
        assert_eq!(spec.parallel, 2);
        assert!(spec.spread);
        assert_eq!(spec.subtasks.len(), 4);

        let p0 = spec.subtask(0);
        assert_eq!(
            p0.spec,
            TaskSpec::Template {
                template: "square".into(),
                params: [("n", "3"), ("scale", "2")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            }
        );
        assert_eq!(p0.req.cpu_cores, 1);
        assert_eq!(p0.req.memory_mb, 64);
        assert_eq!(p0.priority, Priority::High);
        assert_eq!(p0.strategy, Some(Strategy::RoundRobin));
        assert_eq!(p0.node_id, None);

        let p1 = spec.subtask(1);
        match &p1.spec {
            TaskSpec::Template { params, .. } => {
                assert_eq!(params["scale"], "1.5");
                assert_eq!(params["n"], "4");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p1.req.gpu_count, 1);
        assert_eq!(p1.req.gpu_memory_mb, 8192);
        assert_eq!(p1.node_id.as_deref(), Some("gpu-box"));

        let p2 = spec.subtask(2);
        match &p2.spec {
            TaskSpec::Template { template, params } => {
                assert_eq!(template, "other");
                assert_eq!(params["flag"], "true");
                assert_eq!(params["word"], "hi");
                assert_eq!(params["scale"], "2", "defaults' params merge in");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p2.req.preferred_models, ["llama3"]);
        assert_eq!(p2.req.custom["db-connections"], 2);
        assert_eq!(p2.pool.as_deref(), Some("lab"));
        assert_eq!(p2.constraints.arch.as_deref(), Some("x86_64"));
        assert_eq!(p2.constraints.labels["tier"], "gpu");

        let p3 = spec.subtask(3);
        assert_eq!(
            p3.spec,
            TaskSpec::Inference(InferenceRequest {
                model: "llama3".into(),
                call: InferenceCall::Generate {
                    prompt: "Say hi".into(),
                    system: Some("Be brief".into()),
                },
                stream: false,
                options: None,
            })
        );
        assert_eq!(p3.req.preferred_models, ["llama3"]);
        assert_eq!(p3.req.cpu_cores, 1, "resources still come from defaults");
        assert_eq!(p3.req.memory_mb, 64);
    }

    #[test]
    fn minimal_job_and_empty_requirements() {
        let spec = JobSpec::from_toml("[[subtasks]]\ntemplate = \"hello\"").unwrap();
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.parallel, 0);
        assert!(spec.spread);
        assert_eq!(spec.aggregate, Aggregate::Collect);
        assert_eq!(spec.priority, Priority::Normal);
        let plan = spec.subtask(0);
        assert_eq!(plan.req.cpu_cores, 1, "a lease must hold something");
        assert!(!plan.req.is_empty());
        // Only GPU memory asked: nothing is added.
        let spec =
            JobSpec::from_toml("[[subtasks]]\ntemplate = \"g\"\ngpu_memory = \"1GiB\"").unwrap();
        assert_eq!(spec.subtask(0).req.cpu_cores, 0);
        // Inference model in defaults, prompts per subtask.
        let spec = JobSpec::from_toml(
            "[defaults]\nmodel = \"m\"\n[[subtasks]]\nprompt = \"a\"\n[[subtasks]]\nprompt = \"b\"",
        )
        .unwrap();
        assert!(matches!(spec.subtask(1).spec, TaskSpec::Inference(ref r) if r.model == "m"));
        // A subtask's own template wins over an inference default.
        let spec = JobSpec::from_toml(
            "[defaults]\nmodel = \"m\"\nprompt = \"p\"\n[[subtasks]]\ntemplate = \"t\"\n[[subtasks]]\n",
        )
        .unwrap();
        assert!(matches!(spec.subtask(0).spec, TaskSpec::Template { .. }));
        assert!(matches!(spec.subtask(1).spec, TaskSpec::Inference(_)));
    }

    #[test]
    fn errors_have_line_column_and_key() {
        let cases: &[(&str, &str)] = &[
            ("[[subtasks]]\ntemplate = \"t\"\nbogus = 1", "3:1: subtasks[0].bogus: unknown field `bogus`"),
            ("priority = \"urgent\"\n[[subtasks]]\ntemplate = \"t\"", "1:12: priority: unknown variant `urgent`"),
            ("[[subtasks]]\ntemplate = \"t\"\nmemory = \"lots\"", "3:10: subtasks[0].memory: invalid size \"lots\""),
            ("[[subtasks]]\ntemplate = \"t\"\nparams = { n = [1] }", "3:16: subtasks[0].params.n: expected a string, a number or a boolean, got a list"),
            ("name = \"x\n", "1:10: invalid basic string"),
            ("", "subtasks: a job needs at least one subtask"),
            ("max_attempts = 0\n[[subtasks]]\ntemplate = \"t\"", "1:1: max_attempts: must be between 1 and 20, got 0"),
            ("max_attempts = 21\n[[subtasks]]\ntemplate = \"t\"", "1:1: max_attempts: must be between 1 and 20, got 21"),
            ("[[subtasks]]\ntemplate = \"t\"\n[[subtasks]]\ncpu_cores = 2", "3:1: subtasks[1]: needs a template (with params) or a model and a prompt, here or in [defaults]"),
            ("[[subtasks]]\ntemplate = \"t\"\nmodel = \"m\"\nprompt = \"p\"", "1:1: subtasks[0]: give either template (with params) or model and prompt, not both"),
            ("[[subtasks]]\nmodel = \"m\"", "1:1: subtasks[0]: an inference subtask needs both model and prompt"),
            ("[[subtasks]]\nmodel = \"m\"\nprompt = \"p\"\nparams = { n = 1 }", "4:1: subtasks[0].params: only a template takes params"),
            ("[[subtasks]]\nmodel = \"m\"\nprompt = \"p\"\nmodels = [\"x\"]", "4:1: subtasks[0].models: an inference subtask goes to nodes that serve its model"),
            ("[[subtasks]]\ntemplate = \"Bad Name\"", "2:1: subtasks[0].template: \"Bad Name\" is not a template name"),
            ("[[subtasks]]\ntemplate = \"t\"\nparams = { N = 1 }", "3:1: subtasks[0].params: \"N\" is not a parameter name"),
            ("[[subtasks]]\ntemplate = \"t\"\nnode_id = \" \"", "3:1: subtasks[0].node_id: must not be empty"),
            ("[defaults]\ntemplate = \"t\"\nmodel = \"m\"\n[[subtasks]]", "1:2: defaults: give either template"),
            ("[[subtasks]]\ntemplate = \"t\"\nconstraints = { arch = \" \" }", "3:17: subtasks[0].constraints.arch: must not be empty"),
        ];
        for (text, want) in cases {
            let e = JobSpec::from_toml(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}:\n got  {e}\n want {want}");
        }
        let long = format!(
            "name = \"{}\"\n[[subtasks]]\ntemplate = \"t\"",
            "x".repeat(129)
        );
        assert!(JobSpec::from_toml(&long)
            .unwrap_err()
            .starts_with("1:1: name: at most 128 characters"));
        let many = "[[subtasks]]\ntemplate = \"t\"\n".repeat(MAX_SUBTASKS + 1);
        assert!(JobSpec::from_toml(&many)
            .unwrap_err()
            .contains("subtasks: at most 1024 subtasks, got 1025"));
    }

    #[test]
    fn the_example_job_file_parses() {
        let spec = JobSpec::from_toml(include_str!(
            "../../../swarm-config/jobs/sum-of-squares.toml"
        ))
        .unwrap();
        assert_eq!(spec.aggregate, Aggregate::Sum);
        assert_eq!(spec.subtasks.len(), 4);
        assert_eq!(spec.strategy, Some(Strategy::RoundRobin));
        let plan = spec.subtask(3);
        assert!(
            matches!(plan.spec, TaskSpec::Template { ref template, ref params }
            if template == "square" && params["n"] == "4")
        );
        assert_eq!((plan.req.cpu_cores, plan.req.memory_mb), (1, 64));
    }

    #[test]
    fn json_is_the_same_struct() {
        let spec = JobSpec::from_json(
            r#"{"name": "j", "aggregate": "max", "strategy": "least-loaded",
                "defaults": {"template": "square", "memory": 128},
                "subtasks": [{"params": {"n": 3}}, {"params": {"n": "4"}}]}"#,
        )
        .unwrap();
        assert_eq!(spec.aggregate, Aggregate::Max);
        assert_eq!(spec.defaults.memory, Some(128));
        assert_eq!(spec.subtasks[0].params["n"], "3");
        assert_eq!(spec.subtasks[1].params["n"], "4");
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_json(&text).unwrap(), spec);
        let e = JobSpec::from_json(r#"{"subtasks": [{"template": "t", "nope": 1}]}"#).unwrap_err();
        assert!(
            e.starts_with("subtasks[0].nope: unknown field `nope`"),
            "{e}"
        );
        let e = JobSpec::from_json(r#"{"subtasks": []}"#).unwrap_err();
        assert!(
            e.starts_with("subtasks: a job needs at least one subtask"),
            "{e}"
        );
        // Postcard keeps the stored form.
        let bytes = postcard::to_stdvec(&JobSpec::from_toml(EXAMPLE).unwrap()).unwrap();
        assert_eq!(
            postcard::from_bytes::<JobSpec>(&bytes).unwrap(),
            JobSpec::from_toml(EXAMPLE).unwrap()
        );
    }
}
