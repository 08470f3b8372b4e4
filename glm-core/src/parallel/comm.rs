//! The ranks' communication: burn-collective's all-reduce (its CUDA path moves data with NCCL),
//! with a shared failure flag so that one failing rank stops every rank instead of leaving them
//! waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use burn_collective::{all_reduce, reset_collective, PeerId, ReduceOperation};

use super::layout::ShardDims;
use crate::error::{Error, Result};

/// burn-collective keeps ONE local server per backend type and process: every user of it in this
/// process (tensor-parallel groups here, glm-train's data-parallel steps) takes its turn through
/// this lock, from `register` to `finish`.
static COLLECTIVE: Mutex<()> = Mutex::new(());

/// Takes the process-wide turn on burn-collective (one local server per backend type and
/// process: tensor-parallel groups and glm-train's data-parallel steps take turns); released on
/// drop.
pub fn collective_turn() -> MutexGuard<'static, ()> {
    COLLECTIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `B` computes synchronously on the host (the CPU backend), where tensors handed between
/// threads need no stream synchronisation.
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn runs_on_host<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Flex>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// What the ranks of one group share: the first failure.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    failed: AtomicBool,
    first: Mutex<Option<(usize, String)>>,
}

impl GroupState {
    /// Records the failure of `rank` (the first one recorded is the one reported) and wakes every
    /// rank waiting in a collective of backend `B` (burn-collective's reset drops the pending
    /// operation: their waits end with an error).
    pub(crate) fn fail<B: Backend>(&self, rank: usize, reason: String) {
        {
            let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
            if first.is_none() {
                *first = Some((rank, reason));
            }
        }
        if !self.failed.swap(true, Ordering::SeqCst) {
            reset_collective::<B>();
        }
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The first failure, as the typed error every rank returns.
    pub(crate) fn error(&self) -> Option<Error> {
        let first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        first.as_ref().map(|(rank, reason)| Error::TensorParallel {
            rank: *rank,
            reason: reason.clone(),
        })
    }

    /// The rank that failed first and why, if any.
    pub(crate) fn first(&self) -> Option<(usize, String)> {
        let first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        first.clone()
    }

    pub(crate) fn clear(&self) {
        *self.first.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.failed.store(false, Ordering::SeqCst);
    }
}

/// One rank of a tensor-parallel model: its sizes and its group's shared state. Carried by the
/// rank's [`GlmModel`](crate::GlmModel).
#[derive(Debug, Clone)]
pub struct TpRank {
    pub(crate) dims: ShardDims,
    pub(crate) state: Arc<GroupState>,
}

impl TpRank {
    /// What this rank holds.
    pub fn dims(&self) -> &ShardDims {
        &self.dims
    }

    /// `Err` (the group's first failure) once any rank of the group has failed.
    pub fn check(&self) -> Result<()> {
        match self.state.failed() {
            false => Ok(()),
            true => Err(self.state.error().unwrap_or(Error::TensorParallel {
                rank: self.dims.rank,
                reason: "a rank failed".into(),
            })),
        }
    }

    /// Sum of `t` over the ranks (every rank gets the same result). After a failure in the
    /// group it returns `t` unchanged at once; the failure is reported by [`check`](Self::check),
    /// which the model calls after every layer, so no such value reaches an output.
    pub fn all_reduce<B: Backend, const D: usize>(&self, t: Tensor<B, D>) -> Tensor<B, D> {
        if self.dims.world == 1 || self.state.failed() {
            return t;
        }
        // burn-collective sums on its own thread: the input must be complete before it reads it
        // (on GPU backends each thread queues work on its own stream).
        let device = t.device();
        if let Err(e) = B::sync(&device) {
            self.state.fail::<B>(
                self.dims.rank,
                format!("device sync before all-reduce: {e:?}"),
            );
            return t;
        }
        let primitive = t.clone().into_primitive().tensor();
        let reduced = all_reduce::<B>(
            PeerId::from(self.dims.rank as u32),
            primitive,
            ReduceOperation::Sum,
        );
        match reduced {
            Ok(sum) => {
                let sum = Tensor::from_primitive(TensorPrimitive::Float(sum));
                if runs_on_host::<B>() {
                    return sum;
                }
                // On GPU backends the ranks receive one shared buffer, written on the collective
                // thread's stream; a rank that later updates its copy in place could race with
                // another rank's pending reads. Each rank takes a private copy, read back once the
                // sum is complete.
                Tensor::from_data(sum.into_data(), &device)
            }
            Err(e) => {
                self.state
                    .fail::<B>(self.dims.rank, format!("burn-collective all-reduce: {e:?}"));
                t
            }
        }
    }
}
