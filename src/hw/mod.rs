//! The local machine: what it has ([`probe`], [`gpu`]) and what of that
//! the node lends ([`lendable`]).
//!
//! Probing does IO; [`lendable`] does not. It turns the probed machine, the
//! detected GPUs and the config into the [`Capacity`] the ledger admits
//! requests against, so the node, the simulator and tests all derive
//! capacity the same way.

pub mod gpu;
pub mod models;
pub mod probe;

pub use gpu::{detect_gpus, GpuMonitor};
pub use probe::{probe, MachineInfo, Sampler};

use crate::config::Config;
use crate::model::{Capacity, GpuInfo, GpuSlot};

/// What this node lends, and the GPUs it announces.
///
/// 1. `[resources]` replaces probed values: `cpu_cores`, `memory`, and
///    `disk` (taken as free space). If `detect_gpus = false`, the detected
///    `gpus` are ignored. Declared GPUs are appended with indices after the
///    highest detected one, marked `synthetic`, with all memory free.
/// 2. `[lend]` takes its share of that. Asking for more than exists is
///    clamped, with a warning. A GPU lends `gpu_memory` of its total
///    memory; GPUs not selected by `lend.gpus`, or left with no memory to
///    lend, get no slot.
/// 3. Custom resources are lent as declared.
///
/// Returns the capacity (GPU slots sorted by index) and every GPU of the
/// node, lent or not, for the announcement. `lend.allow_remote` is not
/// applied here: it decides who may use the capacity, not how big it is.
pub fn lendable(
    config: &Config,
    machine: &MachineInfo,
    gpus: &[GpuInfo],
) -> (Capacity, Vec<GpuInfo>) {
    let res = &config.resources;
    let lend = &config.lend;

    let cores = res.cpu_cores.unwrap_or(machine.cpu_cores);
    let memory = res.memory.unwrap_or(machine.memory_mb);
    let disk = res.disk.unwrap_or(machine.disk_free_mb);

    let mut all_gpus: Vec<GpuInfo> = if res.detect_gpus {
        gpus.to_vec()
    } else {
        Vec::new()
    };
    all_gpus.sort_by_key(|g| g.index);
    let first_synthetic = all_gpus.last().map_or(0, |g| g.index + 1);
    all_gpus.extend(
        res.gpus
            .iter()
            .zip(first_synthetic..)
            .map(|(g, index)| GpuInfo {
                index,
                name: g.name.clone(),
                memory_total_mb: g.memory,
                memory_free_mb: g.memory,
                utilization_pct: 0,
                synthetic: true,
                compute_capability: g.compute_capability,
            }),
    );

    let cpu_cores = clamp(
        "lend.cpu_cores",
        "cores",
        u64::from(lend.cpu_cores.resolve(cores)),
        u64::from(cores),
    ) as u32;
    let memory_mb = clamp("lend.memory", "MiB", lend.memory.resolve(memory), memory);
    let disk_mb = clamp("lend.disk", "MiB", lend.disk.resolve(disk), disk);

    if let crate::config::GpuSelection::Only(wanted) = &lend.gpus {
        for index in wanted {
            if !all_gpus.iter().any(|g| g.index == *index) {
                tracing::warn!(
                    gpu = index,
                    "lend.gpus names a GPU this node does not have; ignoring it"
                );
            }
        }
    }
    let mut slots = Vec::new();
    for gpu in all_gpus.iter().filter(|g| lend.gpus.includes(g.index)) {
        let total = gpu.memory_total_mb;
        let memory_mb = clamp(
            "lend.gpu_memory",
            "MiB",
            lend.gpu_memory.resolve(total),
            total,
        );
        if memory_mb == 0 {
            tracing::warn!(gpu = gpu.index, "GPU has no memory to lend; not lending it");
            continue;
        }
        slots.push(GpuSlot {
            index: gpu.index,
            memory_mb,
        });
    }

    let capacity = Capacity {
        cpu_cores,
        memory_mb,
        disk_mb,
        gpus: slots,
        custom: res.custom.clone(),
    };
    (capacity, all_gpus)
}

/// `want` capped at `have`, warning when it was more.
fn clamp(key: &str, unit: &str, want: u64, have: u64) -> u64 {
    if want > have {
        tracing::warn!(
            key,
            want,
            have,
            unit,
            "{key} asks to lend more than the machine has; lending what it has"
        );
        have
    } else {
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Amount, CpuAmount, GpuSelection, SyntheticGpu};

    fn machine() -> MachineInfo {
        MachineInfo {
            cpu_cores: 8,
            memory_mb: 32 * 1024,
            disk_total_mb: 1000 * 1024,
            disk_free_mb: 400 * 1024,
            cpu_usage_pct: 5.0,
            hostname: "box".into(),
        }
    }

    fn gpu(index: u32, total: u64) -> GpuInfo {
        GpuInfo {
            index,
            name: format!("GPU {index}"),
            memory_total_mb: total,
            memory_free_mb: total / 2,
            utilization_pct: 30,
            synthetic: false,
            compute_capability: None,
        }
    }

    #[test]
    fn defaults_lend_a_share_of_the_machine() {
        let (cap, gpus) = lendable(&Config::default(), &machine(), &[gpu(0, 80 * 1024)]);
        assert_eq!(cap.cpu_cores, 7);
        assert_eq!(cap.memory_mb, 24 * 1024);
        assert_eq!(cap.disk_mb, 100 * 1024);
        assert_eq!(
            cap.gpus,
            vec![GpuSlot {
                index: 0,
                memory_mb: 80 * 1024
            }]
        );
        assert!(cap.custom.is_empty());
        assert_eq!(gpus, vec![gpu(0, 80 * 1024)]);
    }

    #[test]
    fn resources_override_and_synthetic_gpus_follow_real_ones() {
        let mut c = Config::default();
        c.resources.cpu_cores = Some(4);
        c.resources.memory = Some(1024);
        c.resources.disk = Some(2048);
        c.resources.gpus = vec![
            SyntheticGpu {
                name: "Synthetic A100".into(),
                memory: 40 * 1024,
                compute_capability: None,
            },
            SyntheticGpu {
                name: "Synthetic T4".into(),
                memory: 16 * 1024,
                compute_capability: None,
            },
        ];
        c.resources.custom.insert("db-connections".into(), 20);
        c.lend.cpu_cores = CpuAmount::All;
        c.lend.memory = Amount::All;
        c.lend.disk = Amount::Percent(50.0);
        c.lend.gpu_memory = Amount::Percent(50.0);
        let (cap, gpus) = lendable(&c, &machine(), &[gpu(2, 1000), gpu(0, 2000)]);
        assert_eq!((cap.cpu_cores, cap.memory_mb, cap.disk_mb), (4, 1024, 1024));
        let idx: Vec<_> = gpus.iter().map(|g| (g.index, g.synthetic)).collect();
        assert_eq!(idx, vec![(0, false), (2, false), (3, true), (4, true)]);
        assert_eq!(gpus[2].name, "Synthetic A100");
        assert_eq!(gpus[2].memory_free_mb, 40 * 1024);
        let slots: Vec<_> = cap.gpus.iter().map(|s| (s.index, s.memory_mb)).collect();
        assert_eq!(
            slots,
            vec![(0, 1000), (2, 500), (3, 20 * 1024), (4, 8 * 1024)]
        );
        assert_eq!(cap.custom.get("db-connections"), Some(&20));

        c.resources.detect_gpus = false;
        let (cap, gpus) = lendable(&c, &machine(), &[gpu(0, 2000)]);
        let idx: Vec<_> = gpus.iter().map(|g| g.index).collect();
        assert_eq!(idx, vec![0, 1]);
        assert!(gpus.iter().all(|g| g.synthetic));
        assert_eq!(cap.gpus.len(), 2);
    }

    #[test]
    fn asking_for_more_than_exists_is_clamped() {
        let mut c = Config::default();
        c.lend.cpu_cores = CpuAmount::Count(64);
        c.lend.memory = Amount::Absolute(1 << 30);
        c.lend.disk = Amount::Absolute(1 << 30);
        c.lend.gpu_memory = Amount::Absolute(1 << 30);
        let (cap, _) = lendable(&c, &machine(), &[gpu(0, 1000)]);
        assert_eq!(cap.cpu_cores, 8);
        assert_eq!(cap.memory_mb, 32 * 1024);
        assert_eq!(cap.disk_mb, 400 * 1024);
        assert_eq!(cap.gpus[0].memory_mb, 1000);
    }

    #[test]
    fn gpu_selection() {
        let mut c = Config::default();
        let real = [gpu(0, 100), gpu(1, 100), gpu(2, 100)];
        c.lend.gpus = GpuSelection::Only(vec![2, 0, 9]);
        let (cap, gpus) = lendable(&c, &machine(), &real);
        let lent: Vec<_> = cap.gpus.iter().map(|s| s.index).collect();
        assert_eq!(lent, vec![0, 2]);
        assert_eq!(gpus.len(), 3, "unlent GPUs are still announced");

        c.lend.gpus = GpuSelection::None;
        assert!(lendable(&c, &machine(), &real).0.gpus.is_empty());

        c.lend.gpus = GpuSelection::All;
        c.lend.gpu_memory = Amount::Percent(0.0);
        assert!(lendable(&c, &machine(), &real).0.gpus.is_empty());
    }

    #[test]
    fn a_one_core_machine_still_lends_one_core() {
        let mut m = machine();
        m.cpu_cores = 1;
        assert_eq!(lendable(&Config::default(), &m, &[]).0.cpu_cores, 1);
    }
}
