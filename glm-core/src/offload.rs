//! Layer-streamed offload (BMInf's row of the GLM-130B README): the first `resident` layers live
//! on the device as usual; every later layer stays in the checkpoint (a memory-mapped safetensors
//! file or a SAT folder, float or already quantized) and is moved to the device just before its
//! forward and dropped right after, its file pages handed back to the OS
//! ([`WeightSource::release`]). The outputs are those of the same model fully resident: the same
//! bytes go through the same kernels.
//!
//! Memory on the device: the embedding, final LayerNorm, the resident layers, one streamed layer,
//! the KV cache and the activations — what `glm plan --offload` counts. Cost: every streamed layer
//! is read from the checkpoint and uploaded once per forward (per decoded token). The read of the
//! next streamed layer is started ([`WeightSource::prefetch`]: the kernel's read-ahead of its
//! mapped pages) once the current layer is loaded, so the disk overlaps the compute; the upload from
//! host memory to a GPU is not overlapped yet. Setting `GLM_OFFLOAD_NO_PREFETCH` (any value) turns
//! the read-ahead off (for measuring it).
//!
//! Quantize-on-load is not combined with offload (each streamed layer would be quantized again
//! on every forward): quantize the checkpoint once with `glm quantize`, then offload it.

use std::sync::Arc;

use burn::tensor::backend::Backend;

use crate::config::GlmConfig;
use crate::error::{Error, Result};
use crate::layer::GlmLayer;
use crate::linear::GlmLinear;
use crate::model::{GlmModel, ModelOptions};
use crate::quantized::{load_linear, source_scheme, QuantScheme};
use crate::weights::{check_source, load_float, param_specs, WeightSource};

/// A checkpoint shared by an offloaded model (any [`WeightSource`] that can cross threads).
pub type SharedSource = Arc<dyn WeightSource + Send + Sync>;

/// Where the streamed layers of an offloaded model come from.
#[derive(Clone)]
pub struct OffloadStore {
    source: SharedSource,
    scheme: Option<QuantScheme>,
    resident: usize,
    options: ModelOptions,
    /// Every stored tensor name of each layer (weights, biases, scales), found once at load: what
    /// [`release`](Self::release) hands back after the layer's forward.
    layer_names: Arc<Vec<Vec<String>>>,
    /// Whether [`prefetch`](Self::prefetch) reads ahead (off with `GLM_OFFLOAD_NO_PREFETCH`, for
    /// measuring what it buys), read once at load.
    read_ahead: bool,
}

impl std::fmt::Debug for OffloadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffloadStore")
            .field("source", &self.source.location())
            .field("scheme", &self.scheme)
            .field("resident", &self.resident)
            .finish()
    }
}

impl OffloadStore {
    /// Layers kept on the device (the first ones).
    pub fn resident_layers(&self) -> usize {
        self.resident
    }

    /// Builds layer `l` on `device` from the checkpoint.
    pub(crate) fn layer<B: Backend>(
        &self,
        config: &GlmConfig,
        l: usize,
        device: &B::Device,
    ) -> Result<GlmLayer<B>> {
        let source: &dyn WeightSource = self.source.as_ref();
        let dtype = self.options.dtype;
        GlmModel::<B>::assemble_layer(
            config,
            &crate::parallel::ShardDims::single(config),
            l,
            device,
            dtype,
            &mut |name, _| load_float(source, name, dtype),
            &mut |prefix, _out, inp| -> Result<GlmLinear<B>> {
                load_linear(source, prefix, self.scheme, inp, device, dtype)
            },
        )
    }

    /// Asks the checkpoint to start reading layer `l` in the background (see
    /// [`WeightSource::prefetch`]): issued one layer ahead, so the disk read of the next layer
    /// overlaps the compute of the current one.
    pub(crate) fn prefetch(&self, l: usize) {
        if !self.read_ahead {
            return;
        }
        for name in self.layer_names.get(l).into_iter().flatten() {
            self.source.prefetch(name);
        }
    }

    /// Hands the file pages of layer `l` back to the OS (see [`WeightSource::release`]).
    pub(crate) fn release(&self, l: usize) {
        for name in self.layer_names.get(l).into_iter().flatten() {
            self.source.release(name);
        }
    }
}

/// The streamed layer whose read should start while layer `l` computes, layers `resident..n`
/// being streamed: `l + 1`, or after the last layer the first streamed one (the next forward's,
/// overlapping the final LayerNorm and LM head); `None` when that layer is resident or nothing is
/// streamed.
fn next_streamed(resident: usize, l: usize, n: usize) -> Option<usize> {
    let next = if l + 1 >= n { resident } else { l + 1 };
    (next >= resident && next < n).then_some(next)
}

impl<B: Backend> GlmModel<B> {
    /// Loads a model for layer-streamed offload: the embedding, the final LayerNorm and the first
    /// `resident` layers on `device`, the others streamed from `source` at every forward (see the
    /// module docs). `source` may be float or already quantized (INT8 / INT4), checked in full
    /// first as [`from_source_quantized`](Self::from_source_quantized) checks it.
    pub fn from_source_offloaded(
        config: &GlmConfig,
        source: SharedSource,
        device: &B::Device,
        options: ModelOptions,
        resident: usize,
    ) -> Result<Self> {
        config.validate()?;
        config.validate_rotary(options.rotary)?;
        let src: &dyn WeightSource = source.as_ref();
        let scheme = source_scheme(src, config)?;
        match scheme {
            Some(s) => crate::quantized::check_quantized_source(
                src,
                config,
                &crate::parallel::ShardDims::single(config),
                s,
            )?,
            None => check_source(src, &param_specs(config), config.num_layers, &|_| false)?,
        }
        let resident = resident.min(config.num_layers);
        let dtype = options.dtype;
        let mut model = Self::build_first(
            config,
            &crate::parallel::ShardDims::single(config),
            device,
            options,
            &mut |name, _| load_float(src, name, dtype),
            &mut |prefix, _out, inp| load_linear(src, prefix, scheme, inp, device, dtype),
            resident,
        )?;
        let mut layer_names = vec![Vec::new(); config.num_layers];
        for name in src.names() {
            let layer = name
                .strip_prefix("transformer.layers.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|l| l.parse::<usize>().ok());
            if let Some(names) = layer.and_then(|l| layer_names.get_mut(l)) {
                names.push(name);
            }
        }
        model.offload = Some(OffloadStore {
            source: Arc::clone(&source),
            scheme,
            resident,
            options,
            layer_names: Arc::new(layer_names),
            read_ahead: std::env::var_os("GLM_OFFLOAD_NO_PREFETCH").is_none(),
        });
        Ok(model)
    }

    /// The offload store, if this model streams layers.
    pub fn offload(&self) -> Option<&OffloadStore> {
        self.offload.as_ref()
    }

    /// Runs `f` on layer `l`: the resident one, or one streamed from the checkpoint onto the
    /// device of the embedding (released after `f`).
    pub(crate) fn with_layer<T>(&self, l: usize, f: impl FnOnce(&GlmLayer<B>) -> T) -> Result<T> {
        // Overlap: the next streamed layer's pages are read while this layer computes (asked for
        // once this layer's own weights are in, so the two reads do not compete).
        let read_ahead = || {
            if let Some(store) = &self.offload {
                if let Some(next) = next_streamed(store.resident, l, self.config().num_layers) {
                    store.prefetch(next);
                }
            }
        };
        if let Some(layer) = self.layers.get(l) {
            read_ahead();
            return Ok(f(layer));
        }
        let store = self.offload.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "layer {l} is neither resident nor offloaded ({} layers)",
                self.layers.len()
            ))
        })?;
        let device = self.word_embeddings.val().device();
        let layer = store.layer::<B>(self.config(), l, &device)?;
        read_ahead();
        let out = f(&layer);
        drop(layer);
        store.release(l);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::next_streamed;

    #[test]
    fn the_next_streamed_layer_is_read_one_layer_ahead_and_wraps_to_the_first_streamed() {
        // 6 layers, the first 2 resident: layer 1 starts the read of 2, 2 → 3, …, 5 → 2 (the
        // next forward), resident layers before 1 start nothing.
        let got: Vec<Option<usize>> = (0..6).map(|l| next_streamed(2, l, 6)).collect();
        assert_eq!(got, [None, Some(2), Some(3), Some(4), Some(5), Some(2)]);
        // Nothing streamed: nothing read ahead.
        assert!((0..4).all(|l| next_streamed(4, l, 4).is_none()));
        // Everything streamed, one layer: it is its own next.
        assert_eq!(next_streamed(0, 0, 1), Some(0));
    }
}
