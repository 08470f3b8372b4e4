//! Application and test support, not model code: choosing and checking a backend at run time
//! ([`device`]: `--device cpu|wgpu|cuda`, the CUDA preflight) and finding the fixture / data
//! folders from an environment variable or a path relative to the workspace ([`data_dir`]).
//! The model itself never uses them.

pub mod data_dir;
pub mod device;
