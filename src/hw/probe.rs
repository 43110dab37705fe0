//! What the machine has: cores, memory, the disk holding the data
//! directory, and how busy the CPU is. Backed by `sysinfo`.
//!
//! Probing never fails: a value that cannot be read is reported as zero
//! (and logged), so a node on an odd platform still starts and lends what
//! its config declares in `[resources]`.

use std::path::{Path, PathBuf};

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

const MIB: u64 = 1 << 20;

/// The machine as probed at start-up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MachineInfo {
    /// CPU cores this process may use (respects affinity and cgroup quotas).
    pub cpu_cores: u32,
    /// Total memory, MiB (the cgroup limit if lower).
    pub memory_mb: u64,
    /// Size of the disk holding the data directory, MiB.
    pub disk_total_mb: u64,
    /// Free space on that disk (available to unprivileged users), MiB.
    pub disk_free_mb: u64,
    /// Host CPU utilization, percent 0..=100.
    pub cpu_usage_pct: f32,
    /// The machine's host name, or `""` if it has none.
    pub hostname: String,
}

/// Probes the machine. `data_dir` picks the disk: the one whose mount
/// point is the longest prefix of the (canonicalized) path; if none
/// matches, all disks are summed.
///
/// Blocks for about [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] (200 ms on
/// Linux) to measure CPU usage; call it from a blocking context.
pub fn probe(data_dir: &Path) -> MachineInfo {
    let mut sampler = Sampler::new();
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    let (cpu_usage_pct, _) = sampler.sample();
    let memory_mb = sampler.total_memory_mb();
    let (disk_total_mb, disk_free_mb) = disk_space_mb(data_dir);
    let cpu_cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or_else(|e| {
            let n = sampler.cpu_count();
            tracing::warn!(error = %e, fallback = n, "cannot read the number of usable cores");
            n
        });
    MachineInfo {
        cpu_cores,
        memory_mb,
        disk_total_mb,
        disk_free_mb,
        cpu_usage_pct,
        hostname: hostname(),
    }
}

/// The machine's host name, or `""` if it cannot be read.
pub fn hostname() -> String {
    System::host_name()
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// Total and free space, MiB, of the disk holding `path`.
fn disk_space_mb(path: &Path) -> (u64, u64) {
    let disks = match Disks::new_with_refreshed_list() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list disks; lending no disk unless [resources] disk is set");
            return (0, 0);
        }
    };
    let mounts: Vec<(PathBuf, u64, u64)> = disks
        .iter()
        .map(|d| {
            (
                d.mount_point().to_owned(),
                d.total_space(),
                d.available_space(),
            )
        })
        .collect();
    let (total, free) = pick_disk(&existing_ancestor(path), &mounts);
    (total / MIB, free / MIB)
}

/// `path` canonicalized, or, if it does not exist yet, its nearest
/// existing ancestor canonicalized (the data directory is created later,
/// on the same disk as its parent).
fn existing_ancestor(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_owned())
    };
    abs.ancestors()
        .find_map(|p| p.canonicalize().ok())
        .unwrap_or(abs)
}

/// Picks the disk whose mount point is the longest prefix of `path` and
/// returns its (total, free) bytes; sums all disks if none matches.
fn pick_disk(path: &Path, mounts: &[(PathBuf, u64, u64)]) -> (u64, u64) {
    mounts
        .iter()
        .filter(|(mount, _, _)| path.starts_with(mount))
        .max_by_key(|(mount, _, _)| mount.components().count())
        .map(|(_, total, free)| (*total, *free))
        .unwrap_or_else(|| {
            mounts.iter().fold((0, 0), |(t, f), (_, total, free)| {
                (t.saturating_add(*total), f.saturating_add(*free))
            })
        })
}

/// Cheap periodic readings of CPU usage and available memory, for the
/// announcements. Keeps one `sysinfo::System` so CPU usage is measured
/// between consecutive calls; sample no more often than
/// [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`].
pub struct Sampler {
    system: Option<System>,
}

impl Sampler {
    /// A sampler with a first reading taken. If the platform offers no
    /// readings, every sample is zero.
    pub fn new() -> Self {
        let kind = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        let system = match System::new_with_specifics(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read CPU and memory usage; reporting zero");
                None
            }
        };
        Sampler { system }
    }

    /// Host CPU usage in percent since the previous call (or since
    /// [`Sampler::new`]), and memory available right now, MiB (within the
    /// cgroup limit, if there is one).
    pub fn sample(&mut self) -> (f32, u64) {
        let Some(system) = &mut self.system else {
            return (0.0, 0);
        };
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let mut available = system.available_memory();
        if let Some(limits) = system.cgroup_limits() {
            available = available.min(limits.free_memory);
        }
        let usage = system.global_cpu_usage();
        let usage = if usage.is_finite() {
            usage.clamp(0.0, 100.0)
        } else {
            0.0
        };
        (usage, available / MIB)
    }

    /// Total memory, MiB, capped by the cgroup limit.
    fn total_memory_mb(&self) -> u64 {
        let Some(system) = &self.system else {
            return 0;
        };
        let mut total = system.total_memory();
        if let Some(limits) = system.cgroup_limits() {
            if limits.total_memory > 0 {
                total = total.min(limits.total_memory);
            }
        }
        total / MIB
    }

    fn cpu_count(&self) -> u32 {
        self.system
            .as_ref()
            .map_or(0, |s| s.cpus().len() as u32)
            .max(1)
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_longest_mount_prefix() {
        let mounts = vec![
            (PathBuf::from("/"), 100, 10),
            (PathBuf::from("/home"), 200, 20),
            (PathBuf::from("/home/u/data"), 300, 30),
            (PathBuf::from("/ho"), 400, 40),
        ];
        assert_eq!(pick_disk(Path::new("/home/u/x"), &mounts), (200, 20));
        assert_eq!(pick_disk(Path::new("/home/u/data/db"), &mounts), (300, 30));
        assert_eq!(pick_disk(Path::new("/srv"), &mounts), (100, 10));
        // No mount matches: everything summed.
        assert_eq!(pick_disk(Path::new("relative"), &mounts), (1000, 100));
        assert_eq!(pick_disk(Path::new("/x"), &[]), (0, 0));
    }

    #[test]
    fn missing_dirs_resolve_to_an_existing_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        assert_eq!(existing_ancestor(&deep), tmp.path().canonicalize().unwrap());
    }

    #[test]
    fn probe_reads_something_sane() {
        let tmp = tempfile::tempdir().unwrap();
        let m = probe(tmp.path());
        assert!(m.cpu_cores >= 1, "{m:?}");
        assert!(m.memory_mb > 0, "{m:?}");
        assert!(m.disk_free_mb <= m.disk_total_mb, "{m:?}");
        assert!((0.0..=100.0).contains(&m.cpu_usage_pct), "{m:?}");
        let mut s = Sampler::new();
        let (cpu, avail) = s.sample();
        assert!((0.0..=100.0).contains(&cpu));
        assert!(avail > 0);
    }
}
