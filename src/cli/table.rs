//! Plain-text tables for the CLI.

use serde_json::Value;

use super::size;
use crate::core::access::AccessPolicy;
use crate::handle::{Allocation, Allocations, GroupInfo, GroupMember, NodeInfo, PoolInfo};
use crate::model::{Capacity, NodeStatus};

/// Lay out rows in aligned columns.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
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

fn short(id: &str) -> String {
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
        NodeStatus::Stale => "stale",
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
    ]
}

const ALLOC_HEADER: [&str; 6] = ["ALLOCATION", "NODE", "CPU", "MEMORY", "GPUS", "EXPIRES"];

pub fn allocation(a: &Allocation) -> String {
    let mut s = render(&ALLOC_HEADER, &[alloc_row(a)]);
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
