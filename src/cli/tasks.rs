//! `lanswarm task`, `lanswarm job`, `lanswarm infer`, `lanswarm offers`
//! and `lanswarm models`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::Client;
use super::{out, RequestArgs};
use crate::core::tasks::JobSpec;
use crate::work::{TaskRecord, TaskStatus};

/// `lanswarm task ...`
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Run a template on a lease: `lanswarm task run square n=7`. The lease
    /// is placed on a node that offers the template (or use --allocation),
    /// and given back when the task ends.
    Run(Box<TaskRunArgs>),
    /// Tasks this node submitted, newest first.
    List,
    /// One task, with its output.
    Show { task_id: String },
    /// Stop a running task.
    Cancel { task_id: String },
}

#[derive(Debug, Args)]
pub struct TaskRunArgs {
    /// The template, as the owner declared it.
    pub template: String,
    /// Parameters, `NAME=VALUE` each.
    #[arg(value_name = "NAME=VALUE", value_parser = param_arg)]
    pub params: Vec<(String, String)>,
    /// Run on this lease (one this node holds) instead of placing one.
    #[arg(long)]
    pub allocation: Option<String>,
    /// Print the task id and return at once instead of waiting.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub place: RequestArgs,
}

/// `lanswarm infer`
#[derive(Debug, Args)]
pub struct InferArgs {
    /// The model, as its node's model server names it (e.g. llama3).
    #[arg(long)]
    pub model: String,
    /// The prompt.
    pub prompt: String,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Wait for the whole answer instead of printing it as it comes.
    #[arg(long)]
    pub no_stream: bool,
    /// Model options as a JSON object, e.g. '{"temperature": 0}'.
    #[arg(long)]
    pub options: Option<String>,
    /// Only this node (id or name).
    #[arg(long)]
    pub node: Option<String>,
    /// CPU cores for the lease (default 1).
    #[arg(long, default_value_t = 1)]
    pub cpu: u32,
    /// GPUs for the lease.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
}

/// `lanswarm job ...`
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a scatter/gather job described in a TOML file, and follow it
    /// to its end (see docs/tasks.md for the format).
    Run {
        file: PathBuf,
        /// Print the job id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Jobs of this node, newest first.
    List,
    /// One job: status, progress, subtasks and result.
    Show { job_id: String },
    /// Cancel a job: queued, it leaves the queue; running, its tasks stop.
    Cancel { job_id: String },
}

fn param_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("{s:?} has no name before ="));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
}

/// Exit status for a task that ended other than `succeeded`.
fn check(rec: &TaskRecord) -> anyhow::Result<()> {
    match rec.status {
        TaskStatus::Succeeded | TaskStatus::Running | TaskStatus::Placing => Ok(()),
        s => bail!(
            "task {} {}{}",
            rec.task_id,
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            rec.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    }
}

fn task_text(rec: &TaskRecord) -> String {
    let mut s = String::new();
    if let Some(r) = &rec.result {
        s.push_str(&r.stdout);
        if !r.stdout.is_empty() && !r.stdout.ends_with('\n') {
            s.push('\n');
        }
        if r.stdout_truncated {
            s.push_str(&format!(
                "[output truncated: {} of {} bytes shown]\n",
                r.stdout.len(),
                r.stdout_bytes
            ));
        }
    }
    s
}

fn task_line(rec: &TaskRecord) -> String {
    format!(
        "{}  {:<12} {:<20} {}{}\n",
        rec.task_id,
        serde_json::to_value(rec.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        rec.label,
        rec.node_name.clone().unwrap_or_else(|| "-".into()),
        rec.result
            .as_ref()
            .and_then(|r| r.exit_code)
            .map(|c| format!("  exit {c}"))
            .unwrap_or_default()
    )
}

pub async fn task(c: &Client, json: bool, cmd: &TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Run(args) => {
            let mut req = args.place.to_request();
            if args.place.wait.is_none() {
                req.wait_secs = None;
            }
            let params: BTreeMap<String, String> = args.params.iter().cloned().collect();
            let body = json!({
                "template": args.template,
                "params": params,
                "allocation_id": args.allocation,
                "request": req,
            });
            let path = if args.detach {
                "/api/v1/tasks?wait=false"
            } else {
                "/api/v1/tasks"
            };
            let rec: TaskRecord = c.call(Method::POST, path, Some(&body)).await?;
            if args.detach {
                return out(json, &rec, || format!("{}\n", rec.task_id));
            }
            out(json, &rec, || {
                let mut s = task_text(&rec);
                if let Some(r) = &rec.result {
                    if !r.stderr.is_empty() {
                        eprint!("{}", r.stderr);
                    }
                }
                if rec.status != TaskStatus::Succeeded {
                    s.push_str(&task_line(&rec));
                }
                s
            })?;
            check(&rec)
        }
        TaskCommand::List => {
            let v: Vec<TaskRecord> = c.get("/api/v1/tasks").await?;
            out(json, &v, || v.iter().map(task_line).collect())
        }
        TaskCommand::Show { task_id } => {
            let rec: TaskRecord = c.get(&format!("/api/v1/tasks/{task_id}")).await?;
            out(json, &rec, || {
                format!("{}{}", task_line(&rec), task_text(&rec))
            })
        }
        TaskCommand::Cancel { task_id } => {
            let rec: TaskRecord = c
                .call(
                    Method::DELETE,
                    &format!("/api/v1/tasks/{task_id}"),
                    None::<&()>,
                )
                .await?;
            out(json, &rec, || format!("cancelling {}\n", rec.task_id))
        }
    }
}

pub async fn infer(c: &Client, json: bool, args: &InferArgs) -> anyhow::Result<()> {
    let options: Option<Value> = match &args.options {
        None => None,
        Some(o) => Some(serde_json::from_str(o).context("--options is not JSON")?),
    };
    let body = json!({
        "model": args.model,
        "prompt": args.prompt,
        "system": args.system,
        "options": options,
        "stream": !args.no_stream && !json,
        "request": {
            "required_resources": { "cpu_cores": args.cpu, "gpu_count": args.gpus },
            "node_id": args.node,
        },
    });
    if args.no_stream || json {
        let rec: TaskRecord = c.call(Method::POST, "/api/v1/tasks", Some(&body)).await?;
        out(json, &rec, || task_text(&rec))?;
        return check(&rec);
    }
    let mut last = None;
    let mut stdout = std::io::stdout();
    c.post_lines("/api/v1/tasks", &body, |line| {
        if let Some(text) = line.get("chunk").and_then(Value::as_str) {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        } else if let Some(task) = line.get("task") {
            last = serde_json::from_value::<TaskRecord>(task.clone()).ok();
        }
    })
    .await?;
    println!();
    match last {
        Some(rec) => check(&rec),
        None => bail!("the answer ended without the task's record"),
    }
}

/// How often `job run` shows progress.
const JOB_POLL: Duration = Duration::from_millis(500);

fn job_line(j: &Value) -> String {
    let p = &j["progress"];
    format!(
        "{}  {:<10} {:<20} {}/{} done, {} running, {} pending, {} failed\n",
        j["id"].as_str().unwrap_or(""),
        j["status"].as_str().unwrap_or(""),
        j["spec"]["name"].as_str().unwrap_or(""),
        p["succeeded"],
        p["total"],
        p["running"].as_u64().unwrap_or(0) + p["placing"].as_u64().unwrap_or(0),
        p["pending"],
        p["failed"],
    )
}

fn job_text(j: &Value) -> String {
    let mut s = job_line(j);
    if let Some(subs) = j["subtasks"].as_array() {
        for st in subs {
            s.push_str(&format!(
                "  [{}] {:<10} {:<16} attempts {}{}\n",
                st["index"],
                st["status"].as_str().unwrap_or(""),
                st["node_name"].as_str().unwrap_or("-"),
                st["attempts"],
                st["history"]
                    .as_array()
                    .filter(|h| h.len() > 1)
                    .map(|h| format!(
                        "  ({})",
                        h.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                    .unwrap_or_default()
            ));
        }
    }
    if !j["result"].is_null() {
        s.push_str(&format!("result: {}\n", j["result"]));
    }
    if let Some(e) = j["error"].as_str() {
        s.push_str(&format!("error: {e}\n"));
    }
    s
}

pub async fn job(c: &Client, json: bool, cmd: &JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Run { file, detach } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let spec =
                JobSpec::from_toml(&text).map_err(|e| anyhow::anyhow!("{}:{e}", file.display()))?;
            spec.validate()
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let j: Value = c.call(Method::POST, "/api/v1/jobs", Some(&spec)).await?;
            let id = j["id"].as_str().unwrap_or_default().to_owned();
            if *detach {
                return out(json, &j, || format!("{id}\n"));
            }
            let mut shown = String::new();
            let j = loop {
                let j: Value = c.get(&format!("/api/v1/jobs/{id}")).await?;
                let line = job_line(&j);
                if !json && line != shown {
                    eprint!("{line}");
                    shown = line;
                }
                if matches!(
                    j["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                ) {
                    break j;
                }
                tokio::time::sleep(JOB_POLL).await;
            };
            out(json, &j, || job_text(&j))?;
            if j["status"] != "succeeded" {
                bail!(
                    "job {id} {}",
                    j["error"]
                        .as_str()
                        .unwrap_or(j["status"].as_str().unwrap_or(""))
                );
            }
            Ok(())
        }
        JobCommand::List => {
            let v: Vec<Value> = c.get("/api/v1/jobs").await?;
            out(json, &v, || v.iter().map(job_line).collect())
        }
        JobCommand::Show { job_id } => {
            let j: Value = c.get(&format!("/api/v1/jobs/{job_id}")).await?;
            out(json, &j, || job_text(&j))
        }
        JobCommand::Cancel { job_id } => {
            let j: Value = c
                .call(
                    Method::DELETE,
                    &format!("/api/v1/jobs/{job_id}"),
                    None::<&()>,
                )
                .await?;
            out(json, &j, || job_line(&j))
        }
    }
}

pub async fn offers(c: &Client, json: bool) -> anyhow::Result<()> {
    let o: Value = c.get("/api/v1/offers").await?;
    out(json, &o, || {
        let mut s = String::new();
        match serde_json::from_value::<OffersView>(o.clone()) {
            Ok(v) => {
                s.push_str(&format!("model server: {}\n", v.model_status));
                s.push_str(&format!(
                    "models: {}\n",
                    if v.models.is_empty() {
                        "none".to_owned()
                    } else {
                        v.models
                            .iter()
                            .map(|m| {
                                if v.loaded_models.contains(m) {
                                    format!("{m} (loaded)")
                                } else {
                                    m.clone()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
                s.push_str("templates:\n");
                for t in &v.templates {
                    let params: Vec<String> = t["params"]
                        .as_object()
                        .map(|p| {
                            p.iter()
                                .map(|(k, spec)| {
                                    format!("{k}:{}", spec["type"].as_str().unwrap_or("?"))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    s.push_str(&format!(
                        "  {:<16} {}  {}\n",
                        t["name"].as_str().unwrap_or(""),
                        params.join(" "),
                        t["description"].as_str().unwrap_or("")
                    ));
                }
                s.push_str(&format!("tasks run for peers: {}\n", v.tasks.len()));
            }
            Err(_) => s.push_str(&format!("{o:#}\n")),
        }
        s
    })
}

/// The parts of `/api/v1/offers` the table shows (templates as JSON).
#[derive(serde::Deserialize)]
struct OffersView {
    templates: Vec<Value>,
    models: Vec<String>,
    loaded_models: Vec<String>,
    model_status: String,
    tasks: Vec<Value>,
}

pub async fn models(c: &Client, json: bool) -> anyhow::Result<()> {
    let m: BTreeMap<String, Vec<Value>> = c.get("/api/v1/models").await?;
    out(json, &m, || {
        if m.is_empty() {
            return "no node serves a model\n".to_owned();
        }
        let mut s = String::new();
        for (model, places) in &m {
            let nodes: Vec<String> = places
                .iter()
                .map(|p| {
                    let name = p["node_name"].as_str().unwrap_or("?");
                    if p["loaded"] == true {
                        format!("{name} (loaded)")
                    } else {
                        name.to_owned()
                    }
                })
                .collect();
            s.push_str(&format!("{model:<28} {}\n", nodes.join(", ")));
        }
        s
    })
}
