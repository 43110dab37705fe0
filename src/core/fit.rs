//! Does a request fit in some free capacity? Shared by the owner's ledger
//! (which decides) and the requester's view (which only guesses whom to
//! ask), so both sides agree on what "fits" means.

use crate::model::{Capacity, GpuSlot, ResourceRequirements};

/// The first dimension that does not fit, in human-readable form.
pub type Misfit = String;

/// Choose GPUs for a request, best fit first.
///
/// `free` and `total` are per-GPU memory (MiB), matched by index. With
/// `mem_per_gpu == 0` the request wants whole GPUs: a GPU qualifies only if
/// it is entirely free, and the assignment takes all its memory. Otherwise a
/// GPU qualifies if it has `mem_per_gpu` free, and the assignment takes that
/// much. Among qualifying GPUs the ones with the least free memory are
/// taken first (ties by index), which keeps large GPUs whole for large jobs.
pub fn assign_gpus(
    free: &[GpuSlot],
    total: &[GpuSlot],
    want: u32,
    mem_per_gpu: u64,
) -> Option<Vec<GpuSlot>> {
    if want == 0 {
        return Some(Vec::new());
    }
    let mut usable: Vec<(u64, u32, u64)> = free
        .iter()
        .filter_map(|f| {
            let t = total.iter().find(|t| t.index == f.index)?;
            if mem_per_gpu == 0 {
                (f.memory_mb >= t.memory_mb && t.memory_mb > 0).then_some((
                    f.memory_mb,
                    f.index,
                    t.memory_mb,
                ))
            } else {
                (f.memory_mb >= mem_per_gpu).then_some((f.memory_mb, f.index, mem_per_gpu))
            }
        })
        .collect();
    if usable.len() < want as usize {
        return None;
    }
    usable.sort_unstable();
    let mut out: Vec<GpuSlot> = usable
        .into_iter()
        .take(want as usize)
        .map(|(_, index, take)| GpuSlot {
            index,
            memory_mb: take,
        })
        .collect();
    out.sort();
    Some(out)
}

/// Check every dimension of `req` against `free` (with `total` for the
/// whole-GPU rule). Returns the GPUs that would be assigned, or the first
/// dimension that does not fit.
pub fn fit(
    free: &Capacity,
    total: &Capacity,
    req: &ResourceRequirements,
) -> Result<Vec<GpuSlot>, Misfit> {
    if req.cpu_cores > free.cpu_cores {
        return Err(format!(
            "cpu_cores: want {}, free {}",
            req.cpu_cores, free.cpu_cores
        ));
    }
    if req.memory_mb > free.memory_mb {
        return Err(format!(
            "memory_mb: want {}, free {}",
            req.memory_mb, free.memory_mb
        ));
    }
    if req.disk_mb > free.disk_mb {
        return Err(format!(
            "disk_mb: want {}, free {}",
            req.disk_mb, free.disk_mb
        ));
    }
    for (name, want) in &req.custom {
        let have = free.custom.get(name).copied().unwrap_or(0);
        if *want > have {
            return Err(format!("custom.{name}: want {want}, free {have}"));
        }
    }
    let want = req.gpus_wanted();
    assign_gpus(&free.gpus, &total.gpus, want, req.gpu_memory_mb).ok_or_else(|| {
        if req.gpu_memory_mb == 0 {
            format!(
                "gpus: want {want} whole GPU(s), {} entirely free",
                free.gpus
                    .iter()
                    .filter(|f| total
                        .gpus
                        .iter()
                        .any(|t| t.index == f.index && f.memory_mb >= t.memory_mb))
                    .count()
            )
        } else {
            format!(
                "gpus: want {want} GPU(s) with {} MiB free each, {} have it",
                req.gpu_memory_mb,
                free.gpus
                    .iter()
                    .filter(|f| f.memory_mb >= req.gpu_memory_mb)
                    .count()
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(m: &[u64]) -> Vec<GpuSlot> {
        m.iter()
            .enumerate()
            .map(|(i, m)| GpuSlot {
                index: i as u32,
                memory_mb: *m,
            })
            .collect()
    }

    #[test]
    fn best_fit_takes_the_smallest_gpu_that_fits() {
        let total = slots(&[24_000, 8_000, 16_000]);
        let got = assign_gpus(&total, &total, 1, 6_000).unwrap();
        assert_eq!(
            got,
            vec![GpuSlot {
                index: 1,
                memory_mb: 6_000
            }]
        );
    }

    #[test]
    fn whole_gpu_needs_an_entirely_free_gpu() {
        let total = slots(&[8_000, 8_000]);
        let free = slots(&[7_000, 8_000]);
        let got = assign_gpus(&free, &total, 1, 0).unwrap();
        assert_eq!(
            got,
            vec![GpuSlot {
                index: 1,
                memory_mb: 8_000
            }]
        );
        assert!(assign_gpus(&free, &total, 2, 0).is_none());
    }

    #[test]
    fn misfit_names_the_dimension() {
        let total = Capacity {
            cpu_cores: 4,
            memory_mb: 1024,
            ..Default::default()
        };
        let req = ResourceRequirements {
            memory_mb: 2048,
            ..Default::default()
        };
        let err = fit(&total, &total, &req).unwrap_err();
        assert!(err.starts_with("memory_mb"), "{err}");
    }
}
