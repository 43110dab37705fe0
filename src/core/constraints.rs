//! Placement constraints: which nodes, and which of their GPUs, a request
//! may use (seed 001's "capabilities").
//!
//! A [`Constraints`] narrows the nodes a request may run on by labels, zone
//! and CPU architecture, and the GPUs it may use by name and CUDA compute
//! capability. The requester filters candidates with [`check`] before
//! ranking them; the owner re-checks with [`check`] (its own announcement is
//! the truth) and assigns only the GPUs [`usable_gpus`] allows.
//! Before a
//! request is left waiting in a queue, [`never_satisfiable`] asks whether any
//! known node could *ever* serve it, so a request no node could satisfy is
//! refused at once with the constraint that failed (seed 001: "refused with
//! the constraint that failed, not left waiting").
//!
//! Sans-IO and deterministic: plain functions over announcements; every
//! "first" or "most" is decided by a fixed order (labels by name, then
//! zone, arch, GPU name, compute capability, then capacity) and by
//! [`NodeId`] ascending.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::fit::fit;
use crate::model::{Announcement, Capacity, ComputeCapability, GpuInfo, ResourceRequirements};

/// At most this many label constraints.
pub const MAX_LABELS: usize = 32;
/// Longest label name, bytes.
pub const MAX_LABEL_NAME: usize = 64;
/// Longest label value, and longest `arch`, `gpu_name` or `zone`, bytes.
pub const MAX_VALUE: usize = 128;

/// Where a request may run. Every field defaults to "no constraint", so an
/// empty table (or `{}`) is a valid, empty set of constraints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// The node must carry each of these labels with exactly this value
    /// (its announced [`Announcement::labels`]), e.g. `rack = "r2"`.
    pub labels: BTreeMap<String, String>,
    /// The node's CPU architecture, as Rust names it (`x86_64`,
    /// `aarch64`). Compared ignoring ASCII case, with `amd64`/`x86-64`
    /// accepted for `x86_64` and `arm64` for `aarch64` on either side.
    pub arch: Option<String>,
    /// A case-insensitive substring of the GPU name, e.g. `"A100"`. The
    /// GPUs a request uses must match; see [`check`] for how many a node
    /// needs.
    pub gpu_name: Option<String>,
    /// The GPUs used must have at least this CUDA compute capability. A
    /// GPU whose capability is unknown never qualifies. Written `"8.0"`
    /// (a number `8.6` or a `{ major, minor }` table are accepted too).
    #[serde(with = "cc_text")]
    pub min_compute_capability: Option<ComputeCapability>,
    /// The node's [`Location::zone`](crate::model::Location::zone) must be
    /// exactly this. A node without a zone never qualifies.
    pub zone: Option<String>,
}

impl Constraints {
    /// Whether nothing is constrained.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
            && self.arch.is_none()
            && self.gpu_name.is_none()
            && self.min_compute_capability.is_none()
            && self.zone.is_none()
    }

    /// Whether a GPU constraint (name or compute capability) is set.
    pub fn constrains_gpus(&self) -> bool {
        self.gpu_name.is_some() || self.min_compute_capability.is_some()
    }

    /// Check the bounds: at most [`MAX_LABELS`] labels; label names
    /// non-empty and at most [`MAX_LABEL_NAME`] bytes; label values at most
    /// [`MAX_VALUE`] bytes; `arch`, `gpu_name` and `zone`, when set,
    /// non-empty (after trimming) and at most [`MAX_VALUE`] bytes. The
    /// error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "labels: {} given, at most {MAX_LABELS} allowed",
                self.labels.len()
            ));
        }
        for (name, value) in &self.labels {
            if name.trim().is_empty() {
                return Err("labels: a label name is empty".to_owned());
            }
            if name.len() > MAX_LABEL_NAME {
                return Err(format!(
                    "labels: name {:?}… is {} bytes, at most {MAX_LABEL_NAME} allowed",
                    prefix(name),
                    name.len()
                ));
            }
            if value.len() > MAX_VALUE {
                return Err(format!(
                    "labels.{name}: value is {} bytes, at most {MAX_VALUE} allowed",
                    value.len()
                ));
            }
        }
        for (field, v) in [
            ("arch", &self.arch),
            ("gpu_name", &self.gpu_name),
            ("zone", &self.zone),
        ] {
            if let Some(v) = v {
                if v.trim().is_empty() {
                    return Err(format!("{field}: must not be empty"));
                }
                if v.len() > MAX_VALUE {
                    return Err(format!(
                        "{field}: {} bytes, at most {MAX_VALUE} allowed",
                        v.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The first few characters of `s`, for error messages.
fn prefix(s: &str) -> String {
    s.chars().take(16).collect()
}

/// `arch` in canonical form: trimmed, ASCII-lowercased, with the common
/// aliases mapped to Rust's names (`amd64`, `x86-64`, `x64` → `x86_64`;
/// `arm64` → `aarch64`).
pub fn normalize_arch(arch: &str) -> String {
    let a = arch.trim().to_ascii_lowercase();
    match a.as_str() {
        "amd64" | "x86-64" | "x64" => "x86_64".to_owned(),
        "arm64" => "aarch64".to_owned(),
        _ => a,
    }
}

/// Whether GPU `g` passes the name filter of `c` (always, when unset).
fn name_matches(c: &Constraints, g: &GpuInfo) -> bool {
    match &c.gpu_name {
        Some(want) => g.name.to_lowercase().contains(&want.trim().to_lowercase()),
        None => true,
    }
}

/// Whether GPU `g` passes the compute-capability filter of `c` (always,
/// when unset; never when its capability is unknown).
fn cc_matches(c: &Constraints, g: &GpuInfo) -> bool {
    match c.min_compute_capability {
        Some(min) => g.compute_capability.is_some_and(|cc| cc >= min),
        None => true,
    }
}

/// The indices of the GPUs in `ann_gpus` that pass the GPU filters of `c`
/// (name and compute capability), ascending and without duplicates. With
/// no GPU constraint that is every index. The owner intersects it with
/// what it lends and assigns only from the result
/// (see [`restrict_gpus`]).
pub fn usable_gpus(c: &Constraints, ann_gpus: &[GpuInfo]) -> Vec<u32> {
    let mut out: Vec<u32> = ann_gpus
        .iter()
        .filter(|g| name_matches(c, g) && cc_matches(c, g))
        .map(|g| g.index)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `cap` with only the GPUs whose index is in `usable`; every other
/// dimension unchanged.
pub fn restrict_gpus(cap: &Capacity, usable: &[u32]) -> Capacity {
    Capacity {
        gpus: cap
            .gpus
            .iter()
            .filter(|s| usable.contains(&s.index))
            .cloned()
            .collect(),
        ..cap.clone()
    }
}

/// How many GPUs a node needs that pass the GPU filters: the request's
/// [`gpus_wanted`](ResourceRequirements::gpus_wanted), but at least one
/// when a GPU constraint is set (so "on an A100" is never silently
/// ignored by a CPU-only request), and zero otherwise.
fn gpus_needed(c: &Constraints, req: &ResourceRequirements) -> u32 {
    if c.constrains_gpus() {
        req.gpus_wanted().max(1)
    } else {
        0
    }
}

/// Which constraint a failure is about. The derived order is the order
/// [`check`] tests them in, and breaks ties in [`never_satisfiable`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Label(String),
    Zone,
    Arch,
    GpuName,
    ComputeCapability,
    Capacity,
}

/// Every constraint of `c` that `ann` fails for `req`, each tested on its
/// own, in [`Key`] order, with a human-readable reason.
///
/// The GPU constraints count only GPUs the node lends (whose index is in
/// `ann.capacity.gpus`). `gpu_name` fails if fewer than [`gpus_needed`]
/// lent GPUs match the name. `min_compute_capability` fails if fewer than
/// that many reach the capability, or if the name passes but fewer GPUs
/// pass both filters together.
fn failures(c: &Constraints, req: &ResourceRequirements, ann: &Announcement) -> Vec<(Key, String)> {
    let mut out = Vec::new();
    for (name, want) in &c.labels {
        match ann.labels.get(name) {
            Some(have) if have == want => {}
            Some(have) => out.push((
                Key::Label(name.clone()),
                format!("label {name} = {want} wanted, node has {name} = {have}"),
            )),
            None => out.push((
                Key::Label(name.clone()),
                format!("label {name} = {want} wanted, node has no label {name}"),
            )),
        }
    }
    if let Some(want) = &c.zone {
        match &ann.location.zone {
            Some(have) if have == want => {}
            Some(have) => out.push((
                Key::Zone,
                format!("zone = {want} wanted, node is in zone {have}"),
            )),
            None => out.push((Key::Zone, format!("zone = {want} wanted, node has no zone"))),
        }
    }
    if let Some(want) = &c.arch {
        let (w, h) = (normalize_arch(want), normalize_arch(&ann.arch));
        if w != h {
            let have = if h.is_empty() { "unknown" } else { h.as_str() };
            out.push((Key::Arch, format!("arch = {w} wanted, node is {have}")));
        }
    }
    let needed = gpus_needed(c, req);
    if needed > 0 {
        let lent: Vec<&GpuInfo> = ann
            .gpus
            .iter()
            .filter(|g| ann.capacity.gpus.iter().any(|s| s.index == g.index))
            .collect();
        let count = |p: &dyn Fn(&GpuInfo) -> bool| lent.iter().filter(|g| p(g)).count();
        let by_name = count(&|g| name_matches(c, g));
        let by_cc = count(&|g| cc_matches(c, g));
        let both = count(&|g| name_matches(c, g) && cc_matches(c, g));
        let needed_n = needed as usize;
        if let Some(name) = &c.gpu_name {
            if by_name < needed_n {
                out.push((
                    Key::GpuName,
                    format!(
                        "gpu_name = {name} wanted on {needed} GPU(s), node lends {by_name} matching"
                    ),
                ));
            }
        }
        if let Some(min) = c.min_compute_capability {
            if by_cc < needed_n {
                out.push((
                    Key::ComputeCapability,
                    format!(
                        "min_compute_capability = {min} wanted on {needed} GPU(s), node lends {by_cc} reaching it"
                    ),
                ));
            } else if by_name >= needed_n && both < needed_n {
                let name = c.gpu_name.as_deref().unwrap_or_default();
                out.push((
                    Key::ComputeCapability,
                    format!(
                        "min_compute_capability = {min} wanted on {needed} GPU(s) named {name}, node lends {both}"
                    ),
                ));
            }
        }
    }
    out
}

/// Does node `ann` satisfy `c` for request `req`?
///
/// `Err` holds the first constraint that fails, in this order: labels (by
/// name), zone, arch, `gpu_name`, `min_compute_capability`; as text that
/// names it, e.g. `"arch = aarch64 wanted, node is x86_64"`.
///
/// The GPU constraints count only GPUs the node lends (in
/// `ann.capacity.gpus`) and described in `ann.gpus`. A node qualifies if
/// at least `req.gpus_wanted()` of them (at least one, when a GPU
/// constraint is set) match the name *and* reach the compute capability.
/// Capacity is not checked here: that is [`fit`]'s job, against the GPUs
/// of [`usable_gpus`].
pub fn check(
    c: &Constraints,
    req: &ResourceRequirements,
    ann: &Announcement,
) -> Result<(), String> {
    match failures(c, req, ann).into_iter().next() {
        Some((_, why)) => Err(why),
        None => Ok(()),
    }
}

/// Could any of `nodes` ever serve `req` under `c`?
///
/// A node could if [`check`] accepts it *and* `req` fits in its total
/// capacity (`fit(total, total, req)`, as if the node were empty), counting
/// only its [`usable_gpus`] when a GPU constraint is set. Returns `None` as
/// soon as one node could; otherwise `Some(reason)`, so the request is
/// refused rather than left waiting.
///
/// The reason names what eliminated the most nodes, each constraint
/// counted on its own (a node can fail several), capacity counted for
/// every node too small in total. Ties go to the constraint first in
/// [`check`]'s order, capacity last. The text is that constraint's
/// reason on the first node (by id) it rules out, e.g. `"zone = lab
/// wanted, node is in zone office (on n1; rules out 3 of 3 known
/// nodes)"`, or for capacity `"more than any node has in total:
/// cpu_cores: want 64, free 16 (on n1)"`. No nodes at all gives
/// `"no nodes are known"`.
pub fn never_satisfiable<'a>(
    c: &Constraints,
    req: &ResourceRequirements,
    nodes: impl IntoIterator<Item = &'a Announcement>,
) -> Option<String> {
    let mut nodes: Vec<&Announcement> = nodes.into_iter().collect();
    if nodes.is_empty() {
        return Some("no nodes are known".to_owned());
    }
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    // Per key: how many nodes it rules out, and the first such node's reason.
    let mut tally: BTreeMap<Key, (usize, String, &Announcement)> = BTreeMap::new();
    for ann in &nodes {
        let mut failed = failures(c, req, ann);
        let total = if c.constrains_gpus() {
            restrict_gpus(&ann.capacity, &usable_gpus(c, &ann.gpus))
        } else {
            ann.capacity.clone()
        };
        if let Err(misfit) = fit(&total, &total, req) {
            failed.push((Key::Capacity, misfit));
        }
        if failed.is_empty() {
            return None;
        }
        for (key, why) in failed {
            tally.entry(key).or_insert((0, why, ann)).0 += 1;
        }
    }
    let n = nodes.len();
    // Largest count; on ties the smallest key (iteration is ascending and
    // only a strictly larger count replaces the best).
    let mut best: Option<(&Key, &(usize, String, &Announcement))> = None;
    for entry in &tally {
        if best.is_none_or(|(_, b)| entry.1 .0 > b.0) {
            best = Some(entry);
        }
    }
    let (key, (k, why, ann)) = best?;
    let node = &ann.node_id;
    // The misfit was computed against the node's total capacity.
    let why = why.replace(", free ", ", has in total ");
    Some(match key {
        Key::Capacity if *k == n => {
            format!("more than any node has in total: {why} (on {node})")
        }
        Key::Capacity => format!(
            "more than {k} of {n} known nodes have in total: {why} (on {node}); the others fail constraints"
        ),
        _ => format!("{why} (on {node}; rules out {k} of {n} known nodes)"),
    })
}

/// (De)serializes `Option<ComputeCapability>` as text (`"8.0"`). Readable
/// formats also accept a number (`8.6`) or a `{ major, minor }` table;
/// compact ones (postcard) read exactly what was written.
mod cc_text {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::model::ComputeCapability;

    pub fn serialize<S: Serializer>(
        v: &Option<ComputeCapability>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(cc) => s.serialize_some(&cc.to_string()),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Number(f64),
        Parts(ComputeCapability),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<ComputeCapability>, D::Error> {
        let text = if d.is_human_readable() {
            match Option::<Repr>::deserialize(d)? {
                None => return Ok(None),
                Some(Repr::Parts(cc)) => return Ok(Some(cc)),
                Some(Repr::Text(t)) => t,
                Some(Repr::Number(x)) => format!("{x}"),
            }
        } else {
            match Option::<String>::deserialize(d)? {
                None => return Ok(None),
                Some(t) => t,
            }
        };
        text.parse().map(Some).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccessHint, GpuSlot, Location, NodeId};
    use proptest::prelude::*;

    fn cc(major: u32, minor: u32) -> Option<ComputeCapability> {
        Some(ComputeCapability { major, minor })
    }

    fn gpu(index: u32, name: &str, mem: u64, cc: Option<ComputeCapability>) -> GpuInfo {
        GpuInfo {
            index,
            name: name.to_owned(),
            memory_total_mb: mem,
            memory_free_mb: mem,
            utilization_pct: 0,
            synthetic: false,
            compute_capability: cc,
        }
    }

    fn node(id: &str, gpus: Vec<GpuInfo>) -> Announcement {
        let cap = Capacity {
            cpu_cores: 16,
            memory_mb: 64_000,
            disk_mb: 100_000,
            gpus: gpus
                .iter()
                .map(|g| GpuSlot {
                    index: g.index,
                    memory_mb: g.memory_total_mb,
                })
                .collect(),
            ..Default::default()
        };
        Announcement {
            node_id: NodeId::from(id),
            seq: 1,
            issued_at_ms: 1,
            instance: 1,
            started_at_ms: 0,
            name: format!("host-{id}"),
            version: "0.1.0".into(),
            addrs: vec![],
            api: None,
            capacity: cap.clone(),
            free: cap,
            gpus,
            machine_cpu_cores: 16,
            machine_memory_mb: 64_000,
            cpu_usage_pct: 0.0,
            models: vec![],
            location: Location::default(),
            weight: 0,
            active_leases: 0,
            labels: BTreeMap::new(),
            access: AccessHint::default(),
            arch: "x86_64".into(),
            usage: vec![],
            queued: 0,
            preemption: false,
            refusals: vec![],
            leaving: false,
            loaded_models: vec![],
            templates: vec![],
        }
    }

    fn one_gpu() -> ResourceRequirements {
        ResourceRequirements {
            gpu_count: 1,
            gpu_memory_mb: 1_000,
            ..Default::default()
        }
    }

    fn cpu(n: u32) -> ResourceRequirements {
        ResourceRequirements {
            cpu_cores: n,
            ..Default::default()
        }
    }

    #[test]
    fn empty_constraints_accept_every_node() {
        let c = Constraints::default();
        assert!(c.is_empty());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(check(&c, &one_gpu(), &node("a", vec![])), Ok(()));
        assert_eq!(
            usable_gpus(&c, &[gpu(3, "x", 1, None), gpu(1, "y", 1, None)]),
            [1, 3]
        );
    }

    #[test]
    fn labels_need_every_label_with_its_value() {
        let mut n = node("a", vec![]);
        n.labels.insert("rack".into(), "r1".into());
        n.labels.insert("os".into(), "linux".into());
        let mut c = Constraints::default();
        c.labels.insert("rack".into(), "r1".into());
        assert_eq!(check(&c, &cpu(1), &n), Ok(()));
        c.labels.insert("os".into(), "linux".into());
        assert_eq!(check(&c, &cpu(1), &n), Ok(()));
        c.labels.insert("rack".into(), "r2".into());
        assert_eq!(
            check(&c, &cpu(1), &n),
            Err("label rack = r2 wanted, node has rack = r1".into())
        );
        let mut c = Constraints::default();
        c.labels.insert("gpu".into(), "yes".into());
        assert_eq!(
            check(&c, &cpu(1), &n),
            Err("label gpu = yes wanted, node has no label gpu".into())
        );
        // Values compare exactly.
        let mut c = Constraints::default();
        c.labels.insert("rack".into(), "R1".into());
        assert!(check(&c, &cpu(1), &n).is_err());
    }

    #[test]
    fn zone_must_equal() {
        let mut n = node("a", vec![]);
        let c = Constraints {
            zone: Some("lab".into()),
            ..Default::default()
        };
        assert_eq!(
            check(&c, &cpu(1), &n),
            Err("zone = lab wanted, node has no zone".into())
        );
        n.location.zone = Some("office".into());
        assert_eq!(
            check(&c, &cpu(1), &n),
            Err("zone = lab wanted, node is in zone office".into())
        );
        n.location.zone = Some("lab".into());
        assert_eq!(check(&c, &cpu(1), &n), Ok(()));
    }

    #[test]
    fn arch_accepts_aliases_on_either_side() {
        let mut n = node("a", vec![]);
        let want = |a: &str| Constraints {
            arch: Some(a.into()),
            ..Default::default()
        };
        for a in ["x86_64", "amd64", "AMD64", "x86-64", " x86_64 "] {
            assert_eq!(check(&want(a), &cpu(1), &n), Ok(()), "{a}");
        }
        assert_eq!(
            check(&want("aarch64"), &cpu(1), &n),
            Err("arch = aarch64 wanted, node is x86_64".into())
        );
        assert_eq!(
            check(&want("arm64"), &cpu(1), &n),
            Err("arch = aarch64 wanted, node is x86_64".into())
        );
        n.arch = "arm64".into();
        assert_eq!(check(&want("aarch64"), &cpu(1), &n), Ok(()));
        assert_eq!(check(&want("arm64"), &cpu(1), &n), Ok(()));
        assert!(check(&want("x86_64"), &cpu(1), &n).is_err());
        n.arch = String::new();
        assert_eq!(
            check(&want("x86_64"), &cpu(1), &n),
            Err("arch = x86_64 wanted, node is unknown".into())
        );
    }

    #[test]
    fn gpu_name_is_a_case_insensitive_substring_and_counts_gpus() {
        let n = node(
            "a",
            vec![
                gpu(0, "NVIDIA A100-SXM4-40GB", 40_000, cc(8, 0)),
                gpu(1, "NVIDIA GeForce RTX 3090", 24_000, cc(8, 6)),
            ],
        );
        let c = Constraints {
            gpu_name: Some("a100".into()),
            ..Default::default()
        };
        assert_eq!(check(&c, &one_gpu(), &n), Ok(()));
        assert_eq!(usable_gpus(&c, &n.gpus), [0]);
        let two = ResourceRequirements {
            gpu_count: 2,
            ..one_gpu()
        };
        assert_eq!(
            check(&c, &two, &n),
            Err("gpu_name = a100 wanted on 2 GPU(s), node lends 1 matching".into())
        );
        let c = Constraints {
            gpu_name: Some("H100".into()),
            ..Default::default()
        };
        assert!(check(&c, &one_gpu(), &n).is_err());
        assert!(usable_gpus(&c, &n.gpus).is_empty());
        // A CPU-only request with a GPU constraint still needs one such GPU.
        assert!(check(&c, &cpu(1), &n).is_err());
        assert!(check(&c, &cpu(1), &node("b", vec![])).is_err());
    }

    #[test]
    fn gpus_the_node_does_not_lend_do_not_count() {
        let mut n = node("a", vec![gpu(0, "A100", 40_000, cc(8, 0))]);
        n.capacity.gpus.clear();
        let c = Constraints {
            gpu_name: Some("A100".into()),
            ..Default::default()
        };
        assert!(check(&c, &one_gpu(), &n).is_err());
    }

    #[test]
    fn compute_capability_orders_as_versions_and_unknown_never_qualifies() {
        let n = node(
            "a",
            vec![
                gpu(0, "T4", 16_000, cc(7, 5)),
                gpu(1, "A100", 40_000, cc(8, 0)),
                gpu(2, "H100", 80_000, cc(9, 0)),
                gpu(3, "mystery", 80_000, None),
                gpu(4, "RTX 3090", 24_000, cc(8, 6)),
            ],
        );
        let min = |major, minor| Constraints {
            min_compute_capability: cc(major, minor),
            ..Default::default()
        };
        assert_eq!(usable_gpus(&min(7, 5), &n.gpus), [0, 1, 2, 4]);
        assert_eq!(usable_gpus(&min(8, 0), &n.gpus), [1, 2, 4]);
        assert_eq!(usable_gpus(&min(8, 1), &n.gpus), [2, 4]);
        assert_eq!(usable_gpus(&min(8, 6), &n.gpus), [2, 4]);
        assert_eq!(usable_gpus(&min(8, 10), &n.gpus), [2]);
        assert_eq!(usable_gpus(&min(9, 0), &n.gpus), [2]);
        assert!(usable_gpus(&min(10, 0), &n.gpus).is_empty());
        let three = ResourceRequirements {
            gpu_count: 3,
            ..one_gpu()
        };
        assert_eq!(check(&min(8, 0), &three, &n), Ok(()));
        assert_eq!(
            check(&min(8, 1), &three, &n),
            Err("min_compute_capability = 8.1 wanted on 3 GPU(s), node lends 2 reaching it".into())
        );
        // Name and capability must hold on the same GPUs.
        let both = Constraints {
            gpu_name: Some("a100".into()),
            min_compute_capability: cc(9, 0),
            ..Default::default()
        };
        assert_eq!(
            check(&both, &one_gpu(), &n),
            Err("min_compute_capability = 9.0 wanted on 1 GPU(s) named a100, node lends 0".into())
        );
        assert!(usable_gpus(&both, &n.gpus).is_empty());
    }

    #[test]
    fn check_reports_the_first_failure_in_order() {
        let mut n = node("a", vec![]);
        n.arch = "aarch64".into();
        let mut c = Constraints {
            arch: Some("x86_64".into()),
            zone: Some("lab".into()),
            gpu_name: Some("A100".into()),
            ..Default::default()
        };
        c.labels.insert("rack".into(), "r1".into());
        assert!(check(&c, &cpu(1), &n)
            .unwrap_err()
            .starts_with("label rack"));
        c.labels.clear();
        assert!(check(&c, &cpu(1), &n).unwrap_err().starts_with("zone"));
        c.zone = None;
        assert!(check(&c, &cpu(1), &n).unwrap_err().starts_with("arch"));
        c.arch = None;
        assert!(check(&c, &cpu(1), &n).unwrap_err().starts_with("gpu_name"));
    }

    #[test]
    fn validate_enforces_bounds() {
        let ok = Constraints {
            arch: Some("x86_64".into()),
            gpu_name: Some("A100".into()),
            zone: Some("z".repeat(MAX_VALUE)),
            min_compute_capability: cc(8, 0),
            labels: (0..MAX_LABELS)
                .map(|i| (format!("k{i}"), "v".repeat(MAX_VALUE)))
                .collect(),
        };
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.labels.insert("one-too-many".into(), "v".into());
        assert!(c.validate().unwrap_err().starts_with("labels"));
        let mut c = Constraints::default();
        c.labels.insert("n".repeat(MAX_LABEL_NAME + 1), "v".into());
        assert!(c.validate().is_err());
        let mut c = Constraints::default();
        c.labels.insert(" ".into(), "v".into());
        assert!(c.validate().is_err());
        let mut c = Constraints::default();
        c.labels.insert("k".into(), "v".repeat(MAX_VALUE + 1));
        assert!(c.validate().unwrap_err().starts_with("labels.k"));
        let c = Constraints {
            arch: Some(" ".into()),
            ..Default::default()
        };
        assert_eq!(c.validate(), Err("arch: must not be empty".into()));
        let c = Constraints {
            gpu_name: Some("g".repeat(MAX_VALUE + 1)),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().starts_with("gpu_name"));
        let c = Constraints {
            zone: Some(String::new()),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().starts_with("zone"));
    }

    #[test]
    fn serde_reads_readable_forms_and_round_trips() {
        let c: Constraints = toml::from_str(
            "arch = \"arm64\"\nmin_compute_capability = \"8.6\"\n[labels]\nrack = \"r2\"\n",
        )
        .unwrap();
        assert_eq!(c.min_compute_capability, cc(8, 6));
        assert_eq!(c.labels.get("rack").map(String::as_str), Some("r2"));
        let c2: Constraints = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, c2);
        let c: Constraints = serde_json::from_str(r#"{"min_compute_capability": 9}"#).unwrap();
        assert_eq!(c.min_compute_capability, cc(9, 0));
        let c: Constraints =
            serde_json::from_str(r#"{"min_compute_capability": {"major": 7, "minor": 5}}"#)
                .unwrap();
        assert_eq!(c.min_compute_capability, cc(7, 5));
        assert_eq!(
            serde_json::from_str::<Constraints>("{}").unwrap(),
            Constraints::default()
        );
        assert!(
            serde_json::from_str::<Constraints>(r#"{"min_compute_capability": "new"}"#).is_err()
        );
        assert!(serde_json::from_str::<Constraints>(r#"{"colour": "red"}"#).is_err());
        let full = Constraints {
            arch: Some("x86_64".into()),
            min_compute_capability: cc(8, 0),
            ..Default::default()
        };
        let json = serde_json::to_string(&full).unwrap();
        assert!(json.contains(r#""min_compute_capability":"8.0""#), "{json}");
        assert_eq!(serde_json::from_str::<Constraints>(&json).unwrap(), full);
        for c in [full, Constraints::default()] {
            let bytes = postcard::to_stdvec(&c).unwrap();
            assert_eq!(postcard::from_bytes::<Constraints>(&bytes).unwrap(), c);
        }
    }

    #[test]
    fn never_satisfiable_is_none_when_one_node_could_serve() {
        let mut a = node("a", vec![]);
        a.location.zone = Some("office".into());
        let mut b = node("b", vec![]);
        b.location.zone = Some("lab".into());
        // b is busy right now, but its total would do: not "never".
        b.free = Capacity::default();
        let c = Constraints {
            zone: Some("lab".into()),
            ..Default::default()
        };
        assert_eq!(never_satisfiable(&c, &cpu(16), [&a, &b]), None);
    }

    #[test]
    fn never_satisfiable_names_the_constraint_that_ruled_out_most() {
        let mut a = node("a", vec![]);
        a.location.zone = Some("lab".into());
        let b = node("b", vec![]);
        let mut d = node("d", vec![]);
        d.arch = "aarch64".into();
        let c = Constraints {
            zone: Some("lab".into()),
            arch: Some("aarch64".into()),
            ..Default::default()
        };
        // zone rules out b and d, arch rules out a and b: a tie, zone first.
        assert_eq!(
            never_satisfiable(&c, &cpu(1), [&d, &b, &a]).unwrap(),
            "zone = lab wanted, node has no zone (on b; rules out 2 of 3 known nodes)"
        );
        let mut e = node("e", vec![]);
        e.location.zone = Some("lab".into());
        // now arch rules out a, b, e (3) and zone b, d (2)
        assert_eq!(
            never_satisfiable(&c, &cpu(1), [&a, &b, &d, &e]).unwrap(),
            "arch = aarch64 wanted, node is x86_64 (on a; rules out 3 of 4 known nodes)"
        );
    }

    #[test]
    fn never_satisfiable_reports_total_capacity() {
        let a = node("a", vec![]);
        let b = node("b", vec![]);
        let why = never_satisfiable(&Constraints::default(), &cpu(64), [&a, &b]).unwrap();
        assert_eq!(
            why,
            "more than any node has in total: cpu_cores: want 64, has in total 16 (on a)"
        );
        assert_eq!(
            never_satisfiable(&Constraints::default(), &cpu(1), []).unwrap(),
            "no nodes are known"
        );
    }

    #[test]
    fn never_satisfiable_counts_only_usable_gpus() {
        // The A100 is too small; the big GPU is the wrong kind.
        let n = node(
            "a",
            vec![
                gpu(0, "A100", 40_000, cc(8, 0)),
                gpu(1, "H100", 80_000, cc(9, 0)),
            ],
        );
        let req = ResourceRequirements {
            gpu_count: 1,
            gpu_memory_mb: 60_000,
            ..Default::default()
        };
        let c = Constraints {
            gpu_name: Some("A100".into()),
            ..Default::default()
        };
        assert_eq!(check(&c, &req, &n), Ok(()));
        let why = never_satisfiable(&c, &req, [&n]).unwrap();
        assert!(
            why.starts_with("more than any node has in total: gpus"),
            "{why}"
        );
        assert_eq!(never_satisfiable(&Constraints::default(), &req, [&n]), None);
    }

    fn arb_gpu(index: u32) -> impl Strategy<Value = GpuInfo> {
        (
            prop::sample::select(vec!["NVIDIA A100", "nvidia h100", "RTX 3090", "T4"]),
            prop::option::of((7u32..10, 0u32..10)),
        )
            .prop_map(move |(name, c)| {
                gpu(
                    index,
                    name,
                    16_000,
                    c.map(|(major, minor)| ComputeCapability { major, minor }),
                )
            })
    }

    fn arb_node() -> impl Strategy<Value = Announcement> {
        (
            prop::collection::vec(0u32..4, 0..4),
            prop::sample::select(vec!["x86_64", "amd64", "aarch64", "arm64", "riscv64"]),
            prop::option::of(prop::sample::select(vec!["lab", "office"])),
            prop::option::of(prop::sample::select(vec!["r1", "r2"])),
            prop::collection::vec(any::<bool>(), 4),
        )
            .prop_flat_map(|(gpu_kinds, arch, zone, rack, lent)| {
                let gpus: Vec<_> = (0..gpu_kinds.len() as u32).map(arb_gpu).collect();
                (gpus, Just((arch, zone, rack, lent)))
            })
            .prop_map(|(gpus, (arch, zone, rack, lent))| {
                let mut n = node("n", gpus);
                n.capacity.gpus.retain(|s| lent[s.index as usize]);
                n.arch = arch.into();
                n.location.zone = zone.map(Into::into);
                if let Some(r) = rack {
                    n.labels.insert("rack".into(), r.into());
                }
                n
            })
    }

    fn arb_constraints() -> impl Strategy<Value = Constraints> {
        (
            prop::option::of(prop::sample::select(vec![
                "x86_64", "amd64", "aarch64", "arm64",
            ])),
            prop::option::of(prop::sample::select(vec!["a100", "H100", "nvidia"])),
            prop::option::of((7u32..10, 0u32..10)),
            prop::option::of(prop::sample::select(vec!["lab", "office"])),
            prop::option::of(prop::sample::select(vec!["r1", "r2"])),
        )
            .prop_map(|(arch, gpu_name, cc, zone, rack)| Constraints {
                arch: arch.map(Into::into),
                gpu_name: gpu_name.map(Into::into),
                min_compute_capability: cc.map(|(major, minor)| ComputeCapability { major, minor }),
                zone: zone.map(Into::into),
                labels: rack
                    .map(|r| ("rack".to_owned(), r.to_owned()))
                    .into_iter()
                    .collect(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// `check` accepts exactly the nodes that satisfy every constraint,
        /// each restated here from its definition.
        #[test]
        fn check_matches_the_definition(c in arb_constraints(), n in arb_node(), want in 0u32..4) {
            let req = ResourceRequirements { gpu_count: want, gpu_memory_mb: 1, ..Default::default() };
            let canon = |a: &str| match a { "amd64" => "x86_64", "arm64" => "aarch64", x => x }.to_owned();
            let labels_ok = c.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v));
            let zone_ok = c.zone.is_none() || c.zone == n.location.zone;
            let arch_ok = c.arch.as_deref().is_none_or(|a| canon(a) == canon(&n.arch));
            let good = n.gpus.iter().filter(|g| {
                n.capacity.gpus.iter().any(|s| s.index == g.index)
                    && c.gpu_name.as_deref().is_none_or(|s| g.name.to_lowercase().contains(&s.to_lowercase()))
                    && c.min_compute_capability.is_none_or(|m| g.compute_capability.is_some_and(|x| x >= m))
            }).count() as u32;
            let needed = if c.gpu_name.is_some() || c.min_compute_capability.is_some() { want.max(1) } else { 0 };
            let expected = labels_ok && zone_ok && arch_ok && good >= needed;
            prop_assert_eq!(check(&c, &req, &n).is_ok(), expected, "{:?}", check(&c, &req, &n));
            // usable_gpus agrees with the same filter (before the lent restriction).
            for i in usable_gpus(&c, &n.gpus) {
                let g = n.gpus.iter().find(|g| g.index == i).unwrap();
                prop_assert!(name_matches(&c, g) && cc_matches(&c, g));
            }
        }

        /// `never_satisfiable` is `None` exactly when some node passes
        /// `check` and fits its usable total.
        #[test]
        fn never_satisfiable_matches_check_and_fit(
            c in arb_constraints(),
            nodes in prop::collection::vec(arb_node(), 0..5),
            want in 0u32..3,
            mem in prop::sample::select(vec![0u64, 8_000, 20_000]),
        ) {
            let nodes: Vec<Announcement> = nodes
                .into_iter()
                .enumerate()
                .map(|(i, mut n)| { n.node_id = NodeId(format!("n{i}")); n })
                .collect();
            let req = ResourceRequirements { gpu_count: want, gpu_memory_mb: mem, ..Default::default() };
            let any = nodes.iter().any(|n| {
                let total = restrict_gpus(&n.capacity, &usable_gpus(&c, &n.gpus));
                check(&c, &req, n).is_ok() && fit(&total, &total, &req).is_ok()
            });
            let got = never_satisfiable(&c, &req, &nodes);
            prop_assert_eq!(got.is_none(), any, "{:?}", got);
            let mut rev = nodes.clone();
            rev.reverse();
            prop_assert_eq!(never_satisfiable(&c, &req, &rev), got);
        }
    }
}
