pub(crate) mod base;
pub(crate) mod state;

pub use base::start_global_orchestrator;
pub use base::run_global_orchestrator; // PATCH (glm-rs)
