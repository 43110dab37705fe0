//! Plain-text tables for the CLI.

use serde_json::Value;

use std::time::Duration;

use super::size;
use crate::core::access::AccessPolicy;
use crate::core::contention::ContentionReport;
use crate::core::quota::Limits;
use crate::core::sched::SchedPolicy;
use crate::handle::{
    Allocation, AllocationStatus, Allocations, EventPosted, GroupInfo, GroupMember, NodeInfo,
    PoolInfo, QueueEntry, QuotaEntry, ReservationInfo, Reservations,
};
use crate::model::{Capacity, NodeStatus, ResourceRequirements, Usage};
use crate::units::format_duration;

/// Lay out rows in aligned columns.
pub(super) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

pub(super) fn short(id: &str) -> String {
    if id.len() > 12 {
        format!("…{}", &id[id.len() - 10..])
    } else {
        id.to_owned()
    }
}

fn gpus(c: &Capacity) -> String {
    if c.gpus.is_empty() {
        "-".into()
    } else {
        format!("{} ({})", c.gpus.len(), size(c.gpu_memory_mb()))
    }
}

fn status_word(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Online => "online",
        NodeStatus::Degraded => "degraded",
        NodeStatus::Suspect => "suspect",
        NodeStatus::Left => "left",
        NodeStatus::Offline => "offline",
    }
}

pub fn status(n: &NodeInfo) -> String {
    let r = &n.resources;
    let mut s = String::new();
    s.push_str(&format!("node      {} ({})\n", n.name, n.id));
    s.push_str(&format!("version   {}\n", n.version));
    for a in &n.addresses {
        s.push_str(&format!("address   {a}\n"));
    }
    s.push_str(&format!(
        "machine   {} cores, {}\n",
        r.machine_cpu_cores,
        size(r.machine_memory_mb)
    ));
    s.push_str(&format!(
        "lends     {} cores, {} memory, {} disk, GPUs {}\n",
        r.lendable.cpu_cores,
        size(r.lendable.memory_mb),
        size(r.lendable.disk_mb),
        gpus(&r.lendable)
    ));
    s.push_str(&format!(
        "free      {} cores, {} memory, {} disk, GPUs {}\n",
        r.free.cpu_cores,
        size(r.free.memory_mb),
        size(r.free.disk_mb),
        gpus(&r.free)
    ));
    for g in &r.gpus {
        s.push_str(&format!(
            "gpu {}     {} {} total, {} free, {}% busy{}\n",
            g.index,
            g.name,
            size(g.memory_total_mb),
            size(g.memory_free_mb),
            g.utilization_pct,
            if g.synthetic { " (synthetic)" } else { "" }
        ));
    }
    for (k, v) in &r.lendable.custom {
        let free = r.free.custom.get(k).copied().unwrap_or(0);
        s.push_str(&format!("custom    {k}: {free} of {v} free\n"));
    }
    if !n.models.is_empty() {
        s.push_str(&format!("models    {}\n", n.models.join(", ")));
    }
    s.push_str(&format!(
        "leases    {} granted; remote access {}\n",
        n.active_allocations,
        if n.allow_remote_access {
            "allowed"
        } else {
            "off"
        }
    ));
    if let Some(d) = &n.duplicate_identity {
        s.push_str(&format!("WARNING   {d}\n"));
    }
    s
}

pub fn nodes(ns: &[NodeInfo]) -> String {
    let rows: Vec<Vec<String>> = ns
        .iter()
        .map(|n| {
            let f = &n.resources.free;
            let l = &n.resources.lendable;
            vec![
                format!("{}{}", n.name, if n.is_local { " *" } else { "" }),
                short(&n.id.0),
                status_word(n.status).into(),
                format!("{}/{}", f.cpu_cores, l.cpu_cores),
                format!("{}/{}", size(f.memory_mb), size(l.memory_mb)),
                format!("{}/{}", size(f.disk_mb), size(l.disk_mb)),
                format!("{}/{}", gpus(f), gpus(l)),
                n.rtt_ms.map(|r| format!("{r:.2}ms")).unwrap_or("-".into()),
                n.active_allocations.to_string(),
                if n.models.is_empty() {
                    "-".into()
                } else {
                    n.models.join(",")
                },
            ]
        })
        .collect();
    render(
        &[
            "NAME", "ID", "STATUS", "CPU", "MEMORY", "DISK", "GPUS", "RTT", "LEASES", "MODELS",
        ],
        &rows,
    )
}

fn alloc_row(a: &Allocation) -> Vec<String> {
    let r = &a.allocated_resources;
    vec![
        a.allocation_id.clone(),
        format!("{} ({})", a.node_name, short(&a.node_id.0)),
        r.cpu_cores.to_string(),
        size(r.memory_mb),
        if r.gpus.is_empty() {
            "-".into()
        } else {
            r.gpus
                .iter()
                .map(|g| format!("#{}:{}", g.index, size(g.memory_mb)))
                .collect::<Vec<_>>()
                .join(",")
        },
        a.expires_at.format("%H:%M:%S").to_string(),
        match a.queue_position {
            Some(p) if a.status == AllocationStatus::Queued => format!("queued #{p}"),
            _ => alloc_status_word(a.status).to_owned(),
        },
    ]
}

const ALLOC_HEADER: [&str; 7] = [
    "ALLOCATION",
    "NODE",
    "CPU",
    "MEMORY",
    "GPUS",
    "EXPIRES",
    "STATUS",
];

fn alloc_status_word(s: AllocationStatus) -> &'static str {
    match s {
        AllocationStatus::Active => "active",
        AllocationStatus::Queued => "queued",
        AllocationStatus::Preempted => "preempted",
        AllocationStatus::TimedOut => "timed_out",
        AllocationStatus::Ended => "ended",
        AllocationStatus::Lost => "lost",
    }
}

pub fn allocation(a: &Allocation) -> String {
    let mut s = render(&ALLOC_HEADER, &[alloc_row(a)]);
    if a.status != AllocationStatus::Active {
        s.push_str(&format!("status: {}", alloc_status_word(a.status)));
        if let Some(p) = a.queue_position {
            s.push_str(&format!(
                ", position {p} in {}'s queue, waiting until {}",
                a.node_name,
                a.expires_at.format("%H:%M:%S")
            ));
        }
        if let Some(r) = &a.ended_reason {
            s.push_str(&format!(" ({r})"));
        }
        s.push('\n');
        return s;
    }
    let r = &a.allocated_resources;
    if r.disk_mb > 0 {
        s.push_str(&format!("disk: {}\n", size(r.disk_mb)));
    }
    for (k, v) in &r.custom {
        s.push_str(&format!("custom {k}: {v}\n"));
    }
    s.push_str(&format!(
        "lease {}s, renewed automatically by this node{}\n",
        a.lease_secs,
        a.release_at
            .map(|t| format!(", released at {}", t.format("%H:%M:%S")))
            .unwrap_or_default()
    ));
    for r in &a.refusals {
        s.push_str(&format!(
            "  first refused by {} ({}): {}\n",
            r.node_name, r.reason, r.message
        ));
    }
    s
}

pub fn allocations(a: &Allocations) -> String {
    let mut s = String::from("HELD (this node uses them)\n");
    s.push_str(&render(
        &ALLOC_HEADER,
        &a.held.iter().map(alloc_row).collect::<Vec<_>>(),
    ));
    s.push_str("\nGRANTED (this node lends them)\n");
    let mut header = ALLOC_HEADER.to_vec();
    header[1] = "HOLDER";
    let rows: Vec<Vec<String>> = a
        .granted
        .iter()
        .map(|g| {
            let mut r = alloc_row(g);
            r[1] = short(&g.holder.0);
            r
        })
        .collect();
    s.push_str(&render(&header, &rows));
    s
}

/// Explain a `no_capacity` error body: who refused and why.
pub fn refusals(body: &Value) -> String {
    let e = &body["error"];
    let mut s = String::new();
    for r in e["refusals"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {} refused: {} ({})\n",
            r["node_name"].as_str().unwrap_or("?"),
            r["message"].as_str().unwrap_or(""),
            r["reason"].as_str().unwrap_or("?"),
        ));
    }
    for x in e["excluded"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {} not asked: {}\n",
            x["node_name"].as_str().unwrap_or("?"),
            x["why"].as_str().unwrap_or(""),
        ));
    }
    s
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

pub fn groups(gs: &[GroupInfo]) -> String {
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.id.clone(),
                format!("{}/{}", g.members.len(), g.max_members),
                if g.open { "open" } else { "invite" }.into(),
                yes_no(g.is_member).into(),
            ]
        })
        .collect();
    render(&["NAME", "ID", "MEMBERS", "JOIN", "MEMBER"], &rows)
}

pub fn group(g: &GroupInfo) -> String {
    let mut s = String::new();
    s.push_str(&format!("group     {} ({})\n", g.name, g.id));
    s.push_str(&format!(
        "members   {} of at most {}; {}\n",
        g.members.len(),
        g.max_members,
        if g.open {
            "anyone may join"
        } else {
            "invited nodes only"
        }
    ));
    s.push_str(&format!("member    {}\n", yes_no(g.is_member)));
    s.push_str(&format!("creator   {}\n", g.created_by));
    for m in &g.members {
        s.push_str(&format!("  {}\n", member_label(m)));
    }
    for i in &g.invited {
        s.push_str(&format!("invited   {i}\n"));
    }
    s
}

fn member_label(m: &GroupMember) -> String {
    match &m.name {
        Some(n) => format!("{n} ({})", m.id),
        None => m.id.to_string(),
    }
}

pub fn members(ms: &[GroupMember]) -> String {
    let rows: Vec<Vec<String>> = ms
        .iter()
        .map(|m| {
            vec![
                m.name.clone().unwrap_or_else(|| "-".into()),
                m.id.to_string(),
            ]
        })
        .collect();
    render(&["NAME", "ID"], &rows)
}

pub fn access(p: &AccessPolicy) -> String {
    let list = |ids: &std::collections::BTreeSet<crate::model::NodeId>| {
        if ids.is_empty() {
            "-".to_owned()
        } else {
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut s = String::new();
    s.push_str(&format!("remote access     {}\n", on_off(p.allow_remote)));
    s.push_str(&format!(
        "group peers only  {}\n",
        on_off(p.group_peers_only)
    ));
    s.push_str(&format!("allow             {}\n", list(&p.allow)));
    s.push_str(&format!("deny              {}\n", list(&p.deny)));
    s
}

fn selector(p: &PoolInfo) -> String {
    let mut parts: Vec<String> = p.selector.nodes.iter().map(|n| short(&n.0)).collect();
    parts.extend(p.selector.labels.iter().map(|(k, v)| format!("{k}={v}")));
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

pub fn pools(ps: &[PoolInfo]) -> String {
    let rows: Vec<Vec<String>> = ps
        .iter()
        .map(|p| {
            let c = &p.capacity;
            vec![
                p.name.clone(),
                c.nodes.to_string(),
                format!("{}/{}", c.cpu_cores_free, c.cpu_cores_total),
                format!("{}/{}", size(c.memory_mb_free), size(c.memory_mb_total)),
                format!("{}/{}", c.gpus_free, c.gpus_total),
                format!(
                    "{}/{}",
                    size(c.gpu_memory_mb_free),
                    size(c.gpu_memory_mb_total)
                ),
                selector(p),
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "NODES",
            "CORES",
            "MEMORY",
            "GPUS",
            "GPU MEMORY",
            "SELECTOR",
        ],
        &rows,
    )
}

pub fn pool(p: &PoolInfo) -> String {
    let c = &p.capacity;
    let mut s = String::new();
    s.push_str(&format!("pool      {}\n", p.name));
    s.push_str(&format!("selector  {}\n", selector(p)));
    s.push_str(&format!("creator   {}\n", p.created_by));
    s.push_str(&format!(
        "capacity  {} online node(s): {}/{} cores, {}/{} memory, {}/{} disk free\n",
        c.nodes,
        c.cpu_cores_free,
        c.cpu_cores_total,
        size(c.memory_mb_free),
        size(c.memory_mb_total),
        size(c.disk_mb_free),
        size(c.disk_mb_total),
    ));
    s.push_str(&format!(
        "gpus      {}/{} free, {}/{} GPU memory free\n",
        c.gpus_free,
        c.gpus_total,
        size(c.gpu_memory_mb_free),
        size(c.gpu_memory_mb_total),
    ));
    s.push_str(&format!("members   {}\n", p.members.len()));
    for m in &p.members {
        s.push_str(&format!("  {}\n", member_label(m)));
    }
    s
}

/// What a request asks for, briefly: `2 cores, 4GiB, 1 GPU`.
fn wants(r: &ResourceRequirements) -> String {
    let mut parts = Vec::new();
    match r.cpu_cores {
        0 => {}
        1 => parts.push("1 core".to_owned()),
        n => parts.push(format!("{n} cores")),
    }
    if r.memory_mb > 0 {
        parts.push(size(r.memory_mb));
    }
    if r.disk_mb > 0 {
        parts.push(format!("{} disk", size(r.disk_mb)));
    }
    let gpus = if r.gpu_count == 0 && (r.gpu_required || r.gpu_memory_mb > 0) {
        1
    } else {
        r.gpu_count
    };
    if gpus > 0 {
        if r.gpu_memory_mb > 0 {
            parts.push(format!("{gpus} GPU x {}", size(r.gpu_memory_mb)));
        } else {
            parts.push(format!("{gpus} GPU"));
        }
    }
    for (k, v) in &r.custom {
        parts.push(format!("{k}={v}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// What a capacity holds, e.g. `2 cores, 4GiB, 1 GPU (24GiB)`; `nothing`
/// when empty.
fn holds(c: &Capacity) -> String {
    let mut parts = Vec::new();
    if c.cpu_cores > 0 {
        parts.push(format!("{} cores", c.cpu_cores));
    }
    if c.memory_mb > 0 {
        parts.push(size(c.memory_mb));
    }
    if c.disk_mb > 0 {
        parts.push(format!("{} disk", size(c.disk_mb)));
    }
    if !c.gpus.is_empty() {
        parts.push(format!(
            "{} GPU ({})",
            c.gpus.len(),
            size(c.gpu_memory_mb())
        ));
    }
    for (k, v) in &c.custom {
        parts.push(format!("{k}={v}"));
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// What a conditional reservation waits on, and when it held.
fn condition(r: &ReservationInfo) -> String {
    let what = match (&r.when_event, &r.after_reservation) {
        (Some(e), _) => format!("event {e}"),
        (None, Some(id)) => format!("after {id}"),
        (None, None) => return "-".into(),
    };
    match r.condition_met {
        Some(t) => format!("{what} (met {})", t.format("%H:%M:%S")),
        None => what,
    }
}

/// The group a pooled reservation is shared with, and (on its owner) what
/// is left to draw.
fn pooled(r: &ReservationInfo) -> String {
    match (&r.shared_with, &r.left) {
        (None, _) => "-".into(),
        (Some(g), None) => short(g),
        (Some(g), Some(left)) => format!("{} ({} left)", short(g), holds(left)),
    }
}

fn reservation_row(r: &ReservationInfo) -> Vec<String> {
    vec![
        r.reservation_id.clone(),
        format!("{} ({})", r.node_name, short(&r.node_id.0)),
        r.start.format("%Y-%m-%d %H:%M:%S").to_string(),
        r.end.format("%Y-%m-%d %H:%M:%S").to_string(),
        r.status.clone(),
        r.priority.to_string(),
        condition(r),
        pooled(r),
        wants(&r.required_resources),
    ]
}

const RESERVATION_HEADER: [&str; 9] = [
    "RESERVATION",
    "NODE",
    "START (UTC)",
    "END (UTC)",
    "STATUS",
    "PRIORITY",
    "CONDITION",
    "SHARED WITH",
    "RESOURCES",
];

pub fn reservation(r: &ReservationInfo) -> String {
    let mut s = render(&RESERVATION_HEADER, &[reservation_row(r)]);
    for g in &r.gpus {
        s.push_str(&format!(
            "gpu #{} set aside: {}\n",
            g.index,
            size(g.memory_mb)
        ));
    }
    s
}

pub fn reservations(rs: &Reservations) -> String {
    let mut s = String::from("HELD (this node reserved them)\n");
    s.push_str(&render(
        &RESERVATION_HEADER,
        &rs.held.iter().map(reservation_row).collect::<Vec<_>>(),
    ));
    s.push_str("\nGRANTED (this node keeps them for others)\n");
    let mut header = RESERVATION_HEADER.to_vec();
    header[1] = "HOLDER";
    let rows: Vec<Vec<String>> = rs
        .granted
        .iter()
        .map(|r| {
            let mut row = reservation_row(r);
            row[1] = short(&r.holder.0);
            row
        })
        .collect();
    s.push_str(&render(&header, &rows));
    s
}

/// What `lanswarm reservations event NAME` did.
pub fn event_posted(p: &EventPosted) -> String {
    let mut s = if p.met.is_empty() {
        format!("event {}: no reservation was waiting on it\n", p.name)
    } else {
        let mut s = format!("event {} met {} reservation(s)\n", p.name, p.met.len());
        let rows: Vec<Vec<String>> = p
            .met
            .iter()
            .map(|m| {
                vec![
                    m.reservation_id.clone(),
                    format!("{} ({})", m.node_name, short(&m.node_id.0)),
                ]
            })
            .collect();
        s.push_str(&render(&["RESERVATION", "NODE"], &rows));
        s
    };
    for e in &p.errors {
        s.push_str(&format!("not told: {e}\n"));
    }
    s
}

/// `used/cap`, with `-` for no cap.
fn used_of<T: std::fmt::Display>(used: String, cap: Option<T>) -> String {
    match cap {
        Some(c) => format!("{used}/{c}"),
        None => format!("{used}/-"),
    }
}

fn quota_cells(l: &Limits, u: &Usage) -> Vec<String> {
    let mut custom: Vec<String> = l
        .custom
        .iter()
        .map(|(k, cap)| format!("{k} {}/{cap}", u.custom.get(k).copied().unwrap_or(0)))
        .collect();
    if custom.is_empty() {
        custom.push("-".into());
    }
    vec![
        used_of(u.cpu_cores.to_string(), l.cpu_cores),
        used_of(size(u.memory_mb), l.memory_mb.map(size)),
        used_of(size(u.disk_mb), l.disk_mb.map(size)),
        used_of(u.gpus.to_string(), l.gpus),
        used_of(size(u.gpu_memory_mb), l.gpu_memory_mb.map(size)),
        custom.join(","),
    ]
}

/// Quotas: each dimension as `used/cap` (`-`: no cap).
pub fn quotas(qs: &[QuotaEntry]) -> String {
    let rows: Vec<Vec<String>> = qs
        .iter()
        .map(|q| {
            let mut row = vec![q.subject.clone(), q.scope.clone()];
            row.extend(quota_cells(&q.limits, &q.usage));
            row.push(match &q.burst {
                None => "-".into(),
                Some(b) => {
                    let l = &b.limits;
                    let mut parts = Vec::new();
                    if let Some(c) = l.cpu_cores {
                        parts.push(format!("{c} cores"));
                    }
                    if let Some(m) = l.memory_mb {
                        parts.push(size(m));
                    }
                    if let Some(d) = l.disk_mb {
                        parts.push(format!("{} disk", size(d)));
                    }
                    if let Some(g) = l.gpus {
                        parts.push(format!("{g} GPU"));
                    }
                    if let Some(g) = l.gpu_memory_mb {
                        parts.push(format!("{} GPU memory", size(g)));
                    }
                    for (k, v) in &l.custom {
                        parts.push(format!("{k}={v}"));
                    }
                    format!(
                        "{} for {}",
                        parts.join(", "),
                        format_duration(Duration::from_secs(b.secs))
                    )
                }
            });
            row
        })
        .collect();
    let mut s = render(
        &[
            "SUBJECT",
            "SCOPE",
            "CPU",
            "MEMORY",
            "DISK",
            "GPUS",
            "GPU MEMORY",
            "CUSTOM",
            "BURST",
        ],
        &rows,
    );
    if qs.is_empty() {
        s.push_str("(no quotas)\n");
    }
    s
}

fn ms(ms: u64) -> String {
    format_duration(Duration::from_millis(ms))
}

pub fn sched_policy(p: &SchedPolicy) -> String {
    let mut s = String::new();
    s.push_str(&format!("preemption           {}\n", on_off(p.preemption)));
    s.push_str(&format!("max queue            {}\n", p.max_queue));
    s.push_str(&format!("max wait             {}\n", ms(p.max_wait_ms)));
    s.push_str(&format!(
        "rate                 {}/s per peer, burst {}\n",
        p.rate.per_sec, p.rate.burst
    ));
    s.push_str(&format!("max reservations     {}\n", p.max_reservations));
    s.push_str(&format!(
        "reservation horizon  {}\n",
        ms(p.reservation_horizon_ms)
    ));
    s
}

pub fn queue(q: &[QueueEntry]) -> String {
    let rows: Vec<Vec<String>> = q
        .iter()
        .map(|e| {
            vec![
                e.position.to_string(),
                e.ticket.clone(),
                short(&e.holder.0),
                e.priority.to_string(),
                wants(&e.required_resources),
                e.queued_at.format("%H:%M:%S").to_string(),
                e.deadline.format("%H:%M:%S").to_string(),
            ]
        })
        .collect();
    let mut s = render(
        &[
            "POS", "TICKET", "HOLDER", "PRIORITY", "WANTS", "QUEUED", "DEADLINE",
        ],
        &rows,
    );
    if q.is_empty() {
        s.push_str("(nothing waiting)\n");
    }
    s
}

/// Contention: the overall severity, then each dimension the queue wants.
pub fn contention(r: &ContentionReport) -> String {
    let mut s = format!(
        "contention  {} ({} request(s) queued)\n",
        r.severity, r.queued
    );
    if !r.suggestions.is_empty() {
        let sug: Vec<&str> = r.suggestions.iter().map(|x| x.name()).collect();
        s.push_str(&format!("suggested   {}\n", sug.join(", ")));
    }
    let rows: Vec<Vec<String>> = r
        .dimensions
        .iter()
        .filter(|d| d.demand > 0 || d.severity > crate::core::contention::Severity::None)
        .map(|d| {
            vec![
                d.dimension.clone(),
                d.demand.to_string(),
                d.free.to_string(),
                d.capacity.to_string(),
                format!("{:.2}", d.ratio),
                d.severity.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        s.push('\n');
        s.push_str(&render(
            &[
                "DIMENSION",
                "DEMAND",
                "FREE",
                "CAPACITY",
                "RATIO",
                "SEVERITY",
            ],
            &rows,
        ));
    }
    s
}

/// `lanswarm health`: one line per node.
pub fn health(checks: &[crate::handle::HealthCheck]) -> String {
    let mut out = format!(
        "{:<20} {:<9} {:>9} {:>10} {:>7} {:>6}  {}\n",
        "NODE", "STATUS", "RESPONSE", "FREE CPU", "LEASES", "TASKS", "NOTE"
    );
    for c in checks {
        let status = serde_json::to_value(c.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let response = c
            .response_time_ms
            .map(|ms| format!("{ms:.1} ms"))
            .unwrap_or_else(|| "-".into());
        let free = c
            .resources
            .as_ref()
            .map(|r| format!("{}/{}", r.free.cpu_cores, r.lendable.cpu_cores))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<20} {:<9} {:>9} {:>10} {:>7} {:>6}  {}\n",
            c.name,
            status,
            response,
            free,
            c.active_allocations,
            c.running_tasks,
            c.error.clone().unwrap_or_default()
        ));
    }
    out
}
