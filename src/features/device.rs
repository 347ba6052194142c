//! Which device a model runs on, parsed from `cpu`, `cuda` or `cuda:N`.
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context};

/// A device name as users write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => Ok(DeviceSpec::Cuda(
                    n.parse()
                        .with_context(|| format!("bad CUDA index in {other:?}"))?,
                )),
                None => bail!("unknown device {other:?}: expected cpu, cuda or cuda:N"),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The libtorch device, after checking it exists.
    pub fn to_device(self) -> anyhow::Result<tch::Device> {
        match self {
            DeviceSpec::Cpu => Ok(tch::Device::Cpu),
            DeviceSpec::Cuda(n) => {
                load_cuda_backend();
                let count = tch::Cuda::device_count();
                if (n as i64) >= count {
                    bail!("device cuda:{n} requested but libtorch sees {count} CUDA device(s)");
                }
                Ok(tch::Device::Cuda(n))
            }
        }
    }
}

/// The devices to run replicas on, as users write them: `cpu`, `cuda:0,cuda:1`, `cpu,cpu`
/// (two CPU replicas), or `all` (every CUDA device, else the CPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    All,
    List(Vec<DeviceSpec>),
}

impl From<DeviceSpec> for Devices {
    fn from(d: DeviceSpec) -> Self {
        Devices::List(vec![d])
    }
}

impl FromStr for Devices {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "all" {
            return Ok(Devices::All);
        }
        let list = s
            .split(',')
            .map(|d| d.trim().parse())
            .collect::<anyhow::Result<Vec<DeviceSpec>>>()?;
        if list.is_empty() {
            bail!("no device in {s:?}");
        }
        Ok(Devices::List(list))
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Devices::All => write!(f, "all"),
            Devices::List(list) => {
                for (i, d) in list.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{d}")?;
                }
                Ok(())
            }
        }
    }
}

impl Devices {
    /// The devices, each checked to exist (the error names the first that does not).
    pub fn resolve(&self) -> anyhow::Result<Vec<DeviceSpec>> {
        let list = match self {
            Devices::All => {
                load_cuda_backend();
                let count = tch::Cuda::device_count().max(0) as usize;
                if count == 0 {
                    vec![DeviceSpec::Cpu]
                } else {
                    (0..count).map(DeviceSpec::Cuda).collect()
                }
            }
            Devices::List(list) => list.clone(),
        };
        for d in &list {
            d.to_device()?;
        }
        Ok(list)
    }
}

/// The linker drops `libtorch_cuda` (nothing references its symbols directly), so CUDA kernels
/// would never register; loading it by hand before first use registers them. Harmless when the
/// library is missing: the device count then reads 0 and the caller reports it.
fn load_cuda_backend() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for name in [c"libtorch_cuda.so", c"libtorch_cuda_linalg.so"] {
            // SAFETY: dlopen with a valid NUL-terminated name; the handle is intentionally kept.
            unsafe {
                libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        assert_eq!("all".parse::<Devices>().unwrap(), Devices::All);
        let two: Devices = "cpu, cpu".parse().unwrap();
        assert_eq!(two, Devices::List(vec![DeviceSpec::Cpu, DeviceSpec::Cpu]));
        assert_eq!(two.to_string(), "cpu,cpu");
        assert_eq!(two.resolve().unwrap().len(), 2);
        assert!("cpu,gpu".parse::<Devices>().is_err());
    }
}
