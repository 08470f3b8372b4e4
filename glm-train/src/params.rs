//! Parameters of a module as a flat list (through burn's visitor / mapper, never by field): their
//! original names, f32 master copies, gradients, and writing master values back into the model.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

/// Name and shape of one parameter, in visiting order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Original (SAT) name, e.g. `transformer.layers.0.attention.dense.weight`.
    pub name: String,
    /// burn's id of the parameter.
    pub id: ParamId,
    /// Shape.
    pub shape: Vec<usize>,
}

/// burn module path → original name: `transformer.` + the path, with `.weight` added to the bare
/// word-embedding parameter. Components starting with an upper-case letter (enum variants such as
/// a float/quantized weight enum) are dropped.
pub fn original_name(path: &[String]) -> String {
    let parts: Vec<&str> = path
        .iter()
        .map(String::as_str)
        .filter(|p| !p.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .collect();
    let mut name = format!("transformer.{}", parts.join("."));
    if parts == ["word_embeddings"] {
        name.push_str(".weight");
    }
    name
}

struct Collect<'a, B: Backend> {
    path: Vec<String>,
    infos: Vec<ParamInfo>,
    values: Option<&'a mut Vec<Tensor<B, 1>>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        self.infos.push(ParamInfo {
            name: original_name(&self.path),
            id: param.id,
            shape: shape.clone(),
        });
        if let Some(v) = self.values.as_deref_mut() {
            let n: usize = shape.iter().product();
            v.push(t.cast(DType::F32).reshape([n]));
        }
    }
}

/// Names and shapes of every float parameter of `module`, in visiting order.
pub fn param_infos<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut c = Collect::<B> {
        path: Vec::new(),
        infos: Vec::new(),
        values: None,
    };
    module.visit(&mut c);
    c.infos
}

/// Every float parameter as a flat f32 tensor, in visiting order.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> Vec<Tensor<B, 1>> {
    let mut values = Vec::new();
    let mut c = Collect::<B> {
        path: Vec::new(),
        infos: Vec::new(),
        values: Some(&mut values),
    };
    module.visit(&mut c);
    values
}

struct Grads<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims();
        let n: usize = shape.iter().product();
        let g = match t.grad(self.grads) {
            Some(g) => g.cast(DType::F32).reshape([n]),
            None => t.inner().zeros_like().cast(DType::F32).reshape([n]),
        };
        self.out.push(g);
    }
}

/// The gradient of every float parameter (f32, flat, zeros where a parameter got none), in
/// visiting order.
pub fn param_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Vec<Tensor<B::InnerBackend, 1>> {
    let mut v = Grads::<B> {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

struct Assign<'a, B: AutodiffBackend> {
    values: &'a [Tensor<B::InnerBackend, 1>],
    next: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Assign<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, _mapper) = param.consume();
        let Some(v) = self.values.get(self.next) else {
            return Param::initialized(id, tensor);
        };
        self.next += 1;
        let dims: [usize; D] = tensor.dims();
        let dtype = tensor.dtype();
        let inner = v.clone().cast(dtype).reshape(dims);
        Param::initialized(id, Tensor::from_inner(inner).require_grad())
    }
}

/// Replaces every float parameter of `module` by `values[i]` (flat f32, visiting order), cast to
/// the parameter's dtype and marked as requiring gradients; ids are kept.
pub fn assign_params<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    values: &[Tensor<B::InnerBackend, 1>],
) -> M {
    let mut a = Assign::<B> { values, next: 0 };
    module.map(&mut a)
}

struct CastParams {
    dtype: DType,
}

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, _mapper) = param.consume();
        let req = tensor.is_require_grad();
        let t = tensor.detach().set_require_grad(false).cast(self.dtype);
        Param::initialized(id, if req { t.require_grad() } else { t })
    }
}

/// Casts every float parameter of `module` to `dtype`.
pub fn cast_params<B: Backend, M: Module<B>>(module: M, dtype: DType) -> M {
    module.map(&mut CastParams { dtype })
}
