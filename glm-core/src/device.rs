//! Choosing a backend at run time: the `--device cpu|wgpu|cuda` value of the command lines, and a
//! CUDA driver check that turns "no driver / no GPU" into an error instead of a panic.

use crate::error::{Error, Result};

/// The backends a program can pick at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU backend (Flex).
    Cpu,
    /// wgpu (Vulkan / Metal / DX12).
    Wgpu,
    /// CUDA.
    Cuda,
}

impl DeviceKind {
    /// The name used on command lines and as the cargo feature (`cpu`, `wgpu`, `cuda`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this build of the crate has the backend compiled in (`cpu` needs the `flex`
    /// feature, the others their own).
    pub fn compiled_in(self) -> bool {
        match self {
            Self::Cpu => cfg!(feature = "flex"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// A clear error for a backend this binary was built without.
    pub fn not_compiled_in(self) -> Error {
        Error::Device(format!(
            "this binary was built without the {} backend (rebuild with --features {})",
            self.name(),
            if self == Self::Cpu {
                "flex"
            } else {
                self.name()
            }
        ))
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(Error::Device(format!(
                "unknown device `{other}` (expected cpu, wgpu or cuda)"
            ))),
        }
    }
}

/// Number of CUDA devices, or a clear error when the CUDA driver library is missing, fails, or
/// sees no device (burn's CUDA backend panics on a background thread in those cases, which a
/// program cannot catch cleanly).
#[cfg(feature = "cuda")]
pub fn cuda_preflight() -> Result<usize> {
    // SAFETY: only probes whether libcuda can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Device(
            "cuda: the CUDA driver library (libcuda) is not installed".into(),
        ));
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(n as usize),
        Ok(_) => Err(Error::Device("cuda: no CUDA device present".into())),
        Err(e) => Err(Error::Device(format!("cuda: CUDA driver error: {e:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for kind in [DeviceKind::Cpu, DeviceKind::Wgpu, DeviceKind::Cuda] {
            assert_eq!(kind.name().parse::<DeviceKind>().ok(), Some(kind));
        }
        let err = "tpu".parse::<DeviceKind>().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("unknown device `tpu`")));
    }
}
