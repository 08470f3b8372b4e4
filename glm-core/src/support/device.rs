//! Choosing a backend at run time: the `--device cpu|wgpu|cuda` value of the command lines, and a
//! CUDA driver check that turns "no driver / no GPU" into an error instead of a panic.

use burn::tensor::backend::Backend;

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

/// Work that runs on whichever backend a run-time [`DeviceKind`] picks (generic over the backend
/// type, so one code path serves the CPU, wgpu and CUDA).
pub trait OnBackend {
    /// What the work returns.
    type Output;
    /// Error type of the work (must accept this crate's device errors).
    type Error: From<Error>;
    /// Runs on backend `B` with `devices` (never empty: one per replica).
    fn run<B: Backend>(
        self,
        devices: &[B::Device],
    ) -> std::result::Result<Self::Output, Self::Error>;
}

/// Runs `task` on the backend of `kind` with `replicas` devices (at least one): the CPU and wgpu
/// get their default device `replicas` times, CUDA gets devices `0..replicas` after a driver
/// preflight (fewer GPUs than replicas is an error). A backend this build lacks is an error.
#[cfg_attr(
    not(any(feature = "flex", feature = "wgpu", feature = "cuda")),
    allow(unused_variables)
)]
pub fn dispatch<T: OnBackend>(
    kind: DeviceKind,
    replicas: usize,
    task: T,
) -> std::result::Result<T::Output, T::Error> {
    let n = replicas.max(1);
    match kind {
        #[cfg(feature = "flex")]
        DeviceKind::Cpu => task.run::<burn::backend::Flex>(&vec![Default::default(); n]),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => task.run::<burn::backend::Wgpu>(&vec![Default::default(); n]),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            let available = cuda_preflight()?;
            if n > available {
                return Err(Error::Device(format!(
                    "cuda: {n} devices requested but only {available} present"
                ))
                .into());
            }
            let devices: Vec<_> = (0..n)
                .map(|index| burn::backend::cuda::CudaDevice { index })
                .collect();
            task.run::<burn::backend::Cuda>(&devices)
        }
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled_in().into()),
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
