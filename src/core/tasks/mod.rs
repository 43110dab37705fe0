//! Task templates, parameters, aggregation and jobs (sans-IO).
//!
//! Principle 6 of `DESIGN.md`: a remote peer can only run what the owner
//! declared. The owner lists [`Template`]s in its config (`[tasks]`, read
//! into [`TasksConfig`]); a peer names one and fills in its declared
//! parameters ([`crate::model::TaskSpec::Template`]), and the owner turns
//! that into an argv with [`Template::render`]. A peer never sends a command
//! line, and a parameter value is never interpreted by a shell: it is
//! checked against its declared type and placed, as one piece of text,
//! inside the argv element that names it. [`Template::validate`] also
//! refuses templates that would hand a value to a shell or an interpreter
//! as code (`sh -c "echo {msg}"`).
//!
//! On the requester's side, a distributed job ([`JobSpec`]) is a list of
//! subtasks, each with its own resource requirement. [`JobState`] is the
//! state machine of one job: which subtasks to place next (respecting
//! `parallel`), what happened to each attempt, re-placing a subtask whose
//! node was lost, failing the job when a subtask's work fails, and the
//! [`aggregate`](fn@aggregate) of the outputs once all succeeded.
//! [`JobQueue`] orders the jobs waiting on the requester's node. The driver
//! that allocates, sends tasks and feeds results back lives in the network
//! shell; nothing here reads a clock (`now_ms` is passed in) or does IO.
//!
//! - [`template`]: templates, parameter types, rendering.
//! - `safety` (private): the check that keeps parameters out of shell
//!   scripts and inline interpreter code.
//! - [`aggregate`](mod@aggregate): collect, concat, sum, min, max.
//! - [`job`]: the job spec (TOML or JSON) and its subtask plans.
//! - [`state`]: the job state machine.
//! - [`queue`]: the requester's priority queue of jobs.

pub mod aggregate;
pub mod job;
pub mod queue;
mod safety;
mod serde_text;
pub mod state;
pub mod template;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units;

pub use aggregate::{aggregate, Aggregate};
pub use job::{JobSpec, SubtaskPlan, SubtaskSpec};
pub use queue::{JobQueue, QueuedJob};
pub use state::{Cancel, JobState, JobStatus, Progress, SubtaskState, SubtaskStatus};
pub use template::{ParamError, ParamSpec, ParamType, Template, TemplateProblem};

/// Most bytes of each output stream a template may keep (`max_output`): a
/// result carries two of them and must fit one task message on the wire.
pub const MAX_OUTPUT_LIMIT: u64 = 4 * 1024 * 1024;

/// `max_output` when a template names none: 1 MiB per stream.
pub const DEFAULT_MAX_OUTPUT: u64 = 1024 * 1024;

/// A template's `timeout` when it names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Longest `timeout` a template may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest argv element, bytes: Linux refuses to `exec` a single argument
/// of `MAX_ARG_STRLEN` (128 KiB) or more.
pub const MAX_ARG_LEN: usize = 128 * 1024 - 1;

/// Most bytes of a whole rendered argv, elements together.
pub const MAX_ARGV_BYTES: usize = 1024 * 1024;

/// Most templates one node may declare.
pub const MAX_TEMPLATES: usize = 128;

/// Environment variables the node sets for every task itself; a template
/// may not set them (`LANSWARM_*` is reserved as a whole).
pub const RESERVED_ENV: &[&str] = &["CUDA_VISIBLE_DEVICES"];

/// How the owner holds a task process to its lease (`tasks.isolation`).
/// The runner in [`crate::exec`] has the same choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskIsolation {
    /// cgroup v2 where it can hold the task, else setrlimit.
    #[default]
    Auto,
    /// cgroup v2 only: a task it cannot hold fails to start.
    Cgroup,
    /// setrlimit only (memory as `RLIMIT_AS`; CPU is not limited).
    Rlimit,
    /// No limits: own process group, death signal and timeout only.
    None,
}

/// `[tasks]`: the work this node runs for peers on their leases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// `[[tasks.templates]]`: the commands peers may run here, by name.
    /// Default: none, so peers can lease resources but run nothing.
    pub templates: Vec<Template>,
    /// How a task is held to the lease's CPU and memory: `"auto"` (cgroup
    /// v2 when possible, else setrlimit), `"cgroup"`, `"rlimit"` or
    /// `"none"`. Default `"auto"`.
    pub isolation: TaskIsolation,
    /// A cgroup v2 directory delegated to the node (for example
    /// `/sys/fs/cgroup/lanswarm.slice`), under which each task gets a
    /// cgroup of its own. Default: `<the node's own cgroup>/lanswarm-tasks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<PathBuf>,
    /// Most tasks running at once on this node, 1..=4096. Default 16.
    pub max_running: u32,
    /// Most of this node's own jobs running at once, 1..=256; the others
    /// wait in its priority queue. Default 4.
    pub max_running_jobs: u32,
    /// How long a finished task's result is kept for the requester to
    /// fetch, when it could not be delivered at once. Default 10m.
    #[serde(with = "units::serde_duration")]
    pub keep_results: Duration,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            templates: Vec::new(),
            isolation: TaskIsolation::Auto,
            cgroup_parent: None,
            max_running: 16,
            max_running_jobs: 4,
            keep_results: Duration::from_secs(10 * 60),
        }
    }
}

impl TasksConfig {
    /// The template with this name.
    pub fn template(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// The names of the templates, in config order (as announced).
    pub fn template_names(&self) -> Vec<String> {
        self.templates.iter().map(|t| t.name.clone()).collect()
    }

    /// Checks every template and the section's own keys. The problem's key
    /// is relative to `[tasks]`: `templates[1].argv[2]`.
    pub fn check(&self) -> Result<(), TemplateProblem> {
        if self.templates.len() > MAX_TEMPLATES {
            return Err(TemplateProblem::new(
                "templates",
                format!(
                    "at most {MAX_TEMPLATES} templates, got {}",
                    self.templates.len()
                ),
            ));
        }
        for (i, t) in self.templates.iter().enumerate() {
            t.check()
                .map_err(|p| p.within(&format!("templates[{i}]")))?;
            if let Some(first) = self.templates[..i].iter().position(|o| o.name == t.name) {
                return Err(TemplateProblem::new(
                    format!("templates[{i}].name"),
                    format!(
                        "template {:?} is declared twice (also templates[{first}])",
                        t.name
                    ),
                ));
            }
        }
        if let Some(p) = &self.cgroup_parent {
            if !p.is_absolute() {
                return Err(TemplateProblem::new(
                    "cgroup_parent",
                    format!(
                        "must be an absolute path like \"/sys/fs/cgroup/lanswarm.slice\", got {:?}",
                        p.display().to_string()
                    ),
                ));
            }
        }
        if !(1..=4096).contains(&self.max_running) {
            return Err(TemplateProblem::new(
                "max_running",
                format!("must be between 1 and 4096, got {}", self.max_running),
            ));
        }
        if !(1..=256).contains(&self.max_running_jobs) {
            return Err(TemplateProblem::new(
                "max_running_jobs",
                format!("must be between 1 and 256, got {}", self.max_running_jobs),
            ));
        }
        if self.keep_results.is_zero() || self.keep_results > Duration::from_secs(7 * 24 * 3600) {
            return Err(TemplateProblem::new(
                "keep_results",
                format!(
                    "must be more than 0s and at most 7d, got {}",
                    units::format_duration(self.keep_results)
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `name` is a template name: `[a-z0-9][a-z0-9_.-]{0,63}`.
pub fn valid_template_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

/// Whether `name` is a parameter name: `[a-z_][a-z0-9_]*`, at most 64.
pub fn valid_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `s` cut to about `max` characters, with `…` when cut: for error texts.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "echo",
            "sum-of-squares",
            "v1.2_x",
            "0",
            &"a".repeat(64),
        ] {
            assert!(valid_template_name(ok), "{ok}");
        }
        for bad in ["", "A", "-x", ".x", "a b", "a/b", &"a".repeat(65), "é"] {
            assert!(!valid_template_name(bad), "{bad}");
        }
        for ok in ["n", "_x", "n2", "max_len"] {
            assert!(valid_param_name(ok), "{ok}");
        }
        for bad in ["", "2n", "N", "a-b", "a.b", "a b"] {
            assert!(!valid_param_name(bad), "{bad}");
        }
    }

    #[test]
    fn tasks_config_parses_with_defaults_and_checks() {
        let c: TasksConfig = toml::from_str("").unwrap();
        assert_eq!(c, TasksConfig::default());
        c.check().unwrap();
        let c: TasksConfig = toml::from_str(
            r#"
            isolation = "cgroup"
            cgroup_parent = "/sys/fs/cgroup/lanswarm.slice"
            max_running = 4
            keep_results = "1h"
            [[templates]]
            name = "hello"
            argv = ["echo", "hello", "{who}"]
            [templates.params.who]
            type = "string"
            default = "world"
            [[templates]]
            name = "square"
            argv = ["python3", "square.py", "--n={n}"]
            params.n = { type = "int", min = 0, max = 1000 }
            "#,
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.isolation, TaskIsolation::Cgroup);
        assert_eq!(c.template_names(), ["hello", "square"]);
        assert_eq!(
            c.template("square").unwrap().params["n"].kind,
            ParamType::Int
        );
        assert!(c.template("nope").is_none());
    }

    #[test]
    fn tasks_config_problems_name_the_key() {
        let t = |name: &str| Template::new(name, ["true"]);
        let c = TasksConfig {
            templates: vec![t("a"), t("b"), t("a")],
            ..TasksConfig::default()
        };
        let p = c.check().unwrap_err();
        assert_eq!(p.key, "templates[2].name");
        assert!(
            p.message.contains("declared twice (also templates[0])"),
            "{p}"
        );

        let mut bad = t("x");
        bad.argv = vec!["sh".into(), "-c".into(), "echo {m}".into()];
        bad.params.insert("m".into(), ParamSpec::default());
        let c = TasksConfig {
            templates: vec![t("a"), bad],
            ..TasksConfig::default()
        };
        assert_eq!(c.check().unwrap_err().key, "templates[1].argv[2]");

        let c = TasksConfig {
            max_running: 0,
            ..TasksConfig::default()
        };
        assert_eq!(c.check().unwrap_err().key, "max_running");
        let c = TasksConfig {
            cgroup_parent: Some("relative".into()),
            ..TasksConfig::default()
        };
        assert_eq!(c.check().unwrap_err().key, "cgroup_parent");
        let c = TasksConfig {
            keep_results: Duration::ZERO,
            ..TasksConfig::default()
        };
        assert_eq!(c.check().unwrap_err().key, "keep_results");
    }
}
