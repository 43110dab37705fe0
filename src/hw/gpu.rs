//! NVIDIA GPUs, read through NVML (`nvml-wrapper`).
//!
//! NVML is loaded at run time. On a machine without an NVIDIA driver
//! `Nvml::init` fails; that is the normal case, logged once at info, and
//! the node simply has no detected GPUs. Nothing here panics or returns an
//! error: a GPU whose readings fail keeps its last known values.
//!
//! `CUDA_VISIBLE_DEVICES` is honoured the way CUDA reads it, so a node
//! started with `CUDA_VISIBLE_DEVICES=1` lends only GPU 1. Detected GPUs
//! keep their NVML index, which is in PCI bus order; CUDA numbers devices
//! fastest-first unless `CUDA_DEVICE_ORDER=PCI_BUS_ID` is set, so on
//! machines with mixed GPUs prefer UUIDs (`GPU-…`) in the variable.

use std::sync::Once;

use nvml_wrapper::Nvml;

use crate::model::GpuInfo;

/// The environment variable that limits which GPUs are used.
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

const MIB: u64 = 1 << 20;

/// Which GPUs `CUDA_VISIBLE_DEVICES` lets us use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VisibleDevices {
    /// The variable is unset: every GPU.
    All,
    /// Only these, in the order given (empty: none).
    Only(Vec<DeviceSelector>),
}

/// One entry of `CUDA_VISIBLE_DEVICES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSelector {
    /// A device index, e.g. `1`.
    Index(u32),
    /// A device UUID or a unique prefix of one, e.g. `GPU-8932f937`.
    Uuid(String),
}

/// Parses the value of `CUDA_VISIBLE_DEVICES` (`None` when unset).
///
/// Like CUDA, it reads a comma-separated list of indices or UUIDs and stops
/// at the first entry that is neither (so `"0,-1,1"` and `"0,,1"` mean
/// just `0`); an empty value means no GPUs.
pub fn parse_visible_devices(value: Option<&str>) -> VisibleDevices {
    let Some(value) = value else {
        return VisibleDevices::All;
    };
    let mut list = Vec::new();
    for entry in value.split(',') {
        let entry = entry.trim();
        if let Ok(i) = entry.parse::<u32>() {
            list.push(DeviceSelector::Index(i));
        } else if entry.len() > 4
            && (entry[..4].eq_ignore_ascii_case("GPU-") || entry[..4].eq_ignore_ascii_case("MIG-"))
        {
            list.push(DeviceSelector::Uuid(entry.to_owned()));
        } else {
            break;
        }
    }
    VisibleDevices::Only(list)
}

/// The indices of the `devices` (index, UUID) that `visible` selects,
/// ascending. As in CUDA, an entry that matches no device (an index out of
/// range, an unknown or ambiguous UUID) ends the list.
pub fn select_visible(visible: &VisibleDevices, devices: &[(u32, String)]) -> Vec<u32> {
    let mut chosen: Vec<u32> = match visible {
        VisibleDevices::All => devices.iter().map(|(i, _)| *i).collect(),
        VisibleDevices::Only(list) => {
            let mut chosen = Vec::new();
            for sel in list {
                let found = match sel {
                    DeviceSelector::Index(i) => {
                        devices.iter().find(|(d, _)| d == i).map(|(d, _)| *d)
                    }
                    DeviceSelector::Uuid(prefix) => {
                        let prefix = prefix.to_ascii_lowercase();
                        let mut matches = devices
                            .iter()
                            .filter(|(_, uuid)| uuid.to_ascii_lowercase().starts_with(&prefix));
                        match (matches.next(), matches.next()) {
                            (Some((d, _)), None) => Some(*d),
                            _ => None,
                        }
                    }
                };
                match found {
                    Some(d) => chosen.push(d),
                    None => break,
                }
            }
            chosen
        }
    };
    chosen.sort_unstable();
    chosen.dedup();
    chosen
}

static NVML_UNAVAILABLE: Once = Once::new();

/// Detects the GPUs this node may use, once. Empty without NVML.
pub fn detect_gpus() -> Vec<GpuInfo> {
    GpuMonitor::new().gpus().to_vec()
}

/// Keeps NVML open to re-read free memory and utilization cheaply.
pub struct GpuMonitor {
    nvml: Option<Nvml>,
    /// One per visible GPU, with the last values read.
    gpus: Vec<GpuInfo>,
    /// Whether a failed reading has been logged, per GPU.
    warned: Vec<bool>,
}

impl GpuMonitor {
    /// Opens NVML and reads every visible GPU. Without NVML the monitor
    /// is empty and [`GpuMonitor::refresh`] returns nothing.
    pub fn new() -> Self {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(err) => {
                NVML_UNAVAILABLE.call_once(|| {
                    tracing::info!("NVML not available, running without GPUs: {err}");
                });
                return GpuMonitor {
                    nvml: None,
                    gpus: Vec::new(),
                    warned: Vec::new(),
                };
            }
        };
        let count = nvml.device_count().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "NVML cannot count GPUs; running without GPUs");
            0
        });
        let mut devices = Vec::new();
        for index in 0..count {
            match nvml.device_by_index(index) {
                Ok(d) => devices.push((index, d.uuid().unwrap_or_default())),
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e, "NVML cannot open GPU; skipping it")
                }
            }
        }
        let env = std::env::var(CUDA_VISIBLE_DEVICES).ok();
        let visible = select_visible(&parse_visible_devices(env.as_deref()), &devices);
        if visible.len() < devices.len() {
            tracing::info!(
                visible = ?visible,
                detected = devices.len(),
                "{CUDA_VISIBLE_DEVICES}={} hides some GPUs",
                env.as_deref().unwrap_or_default()
            );
        }
        let gpus = visible
            .iter()
            .map(|&index| GpuInfo {
                index,
                name: nvml
                    .device_by_index(index)
                    .and_then(|d| d.name())
                    .unwrap_or_else(|_| format!("GPU {index}")),
                memory_total_mb: 0,
                memory_free_mb: 0,
                utilization_pct: 0,
                synthetic: false,
                compute_capability: nvml
                    .device_by_index(index)
                    .and_then(|d| d.cuda_compute_capability())
                    .ok()
                    .map(|c| crate::model::ComputeCapability {
                        major: c.major.max(0) as u32,
                        minor: c.minor.max(0) as u32,
                    }),
            })
            .collect::<Vec<_>>();
        let warned = vec![false; gpus.len()];
        let mut monitor = GpuMonitor {
            nvml: Some(nvml),
            gpus,
            warned,
        };
        monitor.refresh();
        monitor
    }

    /// Whether NVML was loaded.
    pub fn is_available(&self) -> bool {
        self.nvml.is_some()
    }

    /// The GPUs as last read.
    pub fn gpus(&self) -> &[GpuInfo] {
        &self.gpus
    }

    /// Re-reads memory and utilization of every GPU and returns them. A GPU
    /// whose reading fails keeps its previous values (logged once per GPU).
    pub fn refresh(&mut self) -> Vec<GpuInfo> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        for (gpu, warned) in self.gpus.iter_mut().zip(self.warned.iter_mut()) {
            let reading = nvml.device_by_index(gpu.index).and_then(|d| {
                let mem = d.memory_info()?;
                // Some GPUs do not report utilization; that is not fatal.
                let util = d.utilization_rates().map(|u| u.gpu).unwrap_or(0);
                Ok((mem, util))
            });
            match reading {
                Ok((mem, util)) => {
                    gpu.memory_total_mb = mem.total / MIB;
                    gpu.memory_free_mb = mem.free / MIB;
                    gpu.utilization_pct = util.min(100) as u8;
                }
                Err(e) if !*warned => {
                    *warned = true;
                    tracing::warn!(gpu = gpu.index, error = %e, "cannot read GPU memory; keeping the last values");
                }
                Err(e) => {
                    tracing::debug!(gpu = gpu.index, error = %e, "cannot read GPU memory");
                }
            }
        }
        self.gpus.clone()
    }
}

impl Default for GpuMonitor {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devs() -> Vec<(u32, String)> {
        vec![
            (0, "GPU-aaaa1111-0000".to_owned()),
            (1, "GPU-bbbb2222-0000".to_owned()),
            (2, "GPU-bbbb3333-0000".to_owned()),
            (3, "GPU-cccc4444-0000".to_owned()),
        ]
    }

    fn sel(v: Option<&str>) -> Vec<u32> {
        select_visible(&parse_visible_devices(v), &devs())
    }

    #[test]
    fn parses_cuda_visible_devices() {
        use DeviceSelector::*;
        assert_eq!(parse_visible_devices(None), VisibleDevices::All);
        assert_eq!(
            parse_visible_devices(Some("")),
            VisibleDevices::Only(vec![])
        );
        assert_eq!(
            parse_visible_devices(Some("0, 2")),
            VisibleDevices::Only(vec![Index(0), Index(2)])
        );
        assert_eq!(
            parse_visible_devices(Some("GPU-abc,1")),
            VisibleDevices::Only(vec![Uuid("GPU-abc".into()), Index(1)])
        );
        assert_eq!(
            parse_visible_devices(Some("0,-1,1")),
            VisibleDevices::Only(vec![Index(0)])
        );
        assert_eq!(
            parse_visible_devices(Some("1,,2")),
            VisibleDevices::Only(vec![Index(1)])
        );
        assert_eq!(
            parse_visible_devices(Some("NoDevFiles")),
            VisibleDevices::Only(vec![])
        );
    }

    #[test]
    fn selects_visible_devices() {
        assert_eq!(sel(None), vec![0, 1, 2, 3]);
        assert_eq!(sel(Some("")), Vec::<u32>::new());
        assert_eq!(sel(Some("-1")), Vec::<u32>::new());
        assert_eq!(sel(Some("3,1")), vec![1, 3]);
        assert_eq!(sel(Some("1,1")), vec![1]);
        // An index out of range ends the list.
        assert_eq!(sel(Some("0,7,1")), vec![0]);
        // UUIDs, full or unique prefixes, any case.
        assert_eq!(sel(Some("GPU-cccc4444-0000")), vec![3]);
        assert_eq!(sel(Some("gpu-AAAA")), vec![0]);
        assert_eq!(sel(Some("GPU-bbbb3,0")), vec![0, 2]);
        // An ambiguous prefix matches nothing and ends the list.
        assert_eq!(sel(Some("0,GPU-bbbb,3")), vec![0]);
        assert_eq!(sel(Some("GPU-ffff")), Vec::<u32>::new());
    }

    #[test]
    fn detection_never_panics() {
        // On machines without NVIDIA this is empty; with one it lists GPUs.
        let gpus = detect_gpus();
        for g in &gpus {
            assert!(!g.synthetic);
            assert!(g.memory_free_mb <= g.memory_total_mb);
        }
        let mut m = GpuMonitor::new();
        assert_eq!(m.refresh().len(), gpus.len());
    }
}
