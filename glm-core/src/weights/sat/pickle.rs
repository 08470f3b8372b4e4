//! A small, bounded pickle reader for torch `data.pkl` state dicts.
//!
//! Only what `torch.save` emits is understood: containers, strings, numbers, `GLOBAL` references,
//! `BINPERSID` storage ids and the `torch._utils._rebuild_tensor*` / `_rebuild_parameter` /
//! `collections.OrderedDict` reductions. Every other reduction becomes an opaque value (checkpoints
//! may carry `argparse.Namespace` and the like next to the weights).
//!
//! Objects live in an arena and refer to each other by index, so shared references, cycles and deep
//! nesting cost neither recursion nor exponential copying; memory is linear in the input size.
//! Every length is checked against the remaining input before anything is allocated.
//!
//! (Over 400 lines: a bounded, non-recursive reader of the pickle opcodes torch checkpoints use, with an error for every malformed input.)

use std::collections::{BTreeMap, HashMap};

/// A value on the pickle stack (objects are arena indices).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(usize),
}

/// A torch storage named by a persistent id `('storage', <type>, <key>, <location>, <numel>)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StorageId {
    /// The storage class name, e.g. `HalfStorage`.
    pub type_name: String,
    /// The key: the zip entry is `<prefix>data/<key>`.
    pub key: String,
    /// Number of elements the pickle says the storage holds, if given.
    pub numel: Option<u64>,
}

/// A tensor view: `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TensorView {
    pub storage: StorageId,
    /// Offset into the storage, in elements.
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Debug)]
enum Obj {
    Str(String),
    Bytes,
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global {
        module: String,
        name: String,
    },
    Storage(StorageId),
    Tensor(TensorView),
    /// Anything we do not interpret (big ints, sets, foreign objects).
    Opaque,
}

/// Why a pickle could not be read (plain text; the caller adds the file name).
pub(super) type PResult<T> = std::result::Result<T, String>;

/// Nesting limit when flattening nested state dicts.
const MAX_DICT_DEPTH: usize = 32;
/// Limit on dict entries visited while flattening (shared sub-dicts could otherwise blow up).
const MAX_VISITS: usize = 1 << 22;

/// A parsed pickle: the arena plus the root value.
pub(super) struct Pickle {
    objs: Vec<Obj>,
    root: V,
    /// Bytes consumed up to and including `STOP`.
    pub consumed: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("pickle ends early (needs {n} bytes at {})", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len_u64(&mut self) -> PResult<usize> {
        usize::try_from(self.u64()?).map_err(|_| "length does not fit in memory".to_string())
    }
    fn line(&mut self) -> PResult<&'a [u8]> {
        let rest = &self.buf[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| "pickle ends inside a text line".to_string())?;
        let s = &rest[..n];
        self.pos += n + 1;
        Ok(s)
    }
}

fn utf8(b: &[u8]) -> PResult<String> {
    String::from_utf8(b.to_vec()).map_err(|_| "string is not valid UTF-8".to_string())
}

struct Vm {
    objs: Vec<Obj>,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u64, V>,
}

impl Vm {
    fn alloc(&mut self, o: Obj) -> V {
        self.objs.push(o);
        V::Obj(self.objs.len() - 1)
    }
    fn pop(&mut self) -> PResult<V> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pickle pops across a MARK".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }
    fn top(&self) -> PResult<V> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "pickle stack is empty".into())
    }
    fn pop_mark(&mut self) -> PResult<Vec<V>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| "pickle has no MARK to pop to".to_string())?;
        if m > self.stack.len() {
            return Err("pickle MARK beyond the stack".into());
        }
        Ok(self.stack.split_off(m))
    }
    fn obj(&self, v: V) -> Option<&Obj> {
        match v {
            V::Obj(i) => self.objs.get(i),
            _ => None,
        }
    }
    fn obj_mut(&mut self, v: V) -> Option<&mut Obj> {
        match v {
            V::Obj(i) => self.objs.get_mut(i),
            _ => None,
        }
    }
    fn str_of(&self, v: V) -> Option<&str> {
        match self.obj(v) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn tuple_of(&self, v: V) -> Option<&[V]> {
        match self.obj(v) {
            Some(Obj::Tuple(t)) => Some(t),
            _ => None,
        }
    }
    fn ints(&self, v: V, what: &str) -> PResult<Vec<u64>> {
        let t = self
            .tuple_of(v)
            .ok_or_else(|| format!("tensor {what} is not a tuple"))?;
        t.iter()
            .map(|x| match x {
                V::Int(i) => u64::try_from(*i).map_err(|_| format!("negative tensor {what} {i}")),
                _ => Err(format!("tensor {what} holds a non-integer")),
            })
            .collect()
    }
    fn memo_put(&mut self, idx: u64) -> PResult<()> {
        let v = self.top()?;
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u64) -> PResult<()> {
        let v = *self
            .memo
            .get(&idx)
            .ok_or_else(|| format!("pickle memo {idx} is not set"))?;
        self.stack.push(v);
        Ok(())
    }
    fn set_items(&mut self, target: V, items: Vec<V>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
            return Err("pickle SETITEMS with an odd item count".into());
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        match self.obj_mut(target) {
            Some(Obj::Dict(d)) => {
                d.extend(pairs);
                Ok(())
            }
            // setitems on a foreign object: keep it opaque.
            Some(Obj::Opaque) => Ok(()),
            _ => Err("pickle SETITEM(S) on a non-dict".into()),
        }
    }
    fn append(&mut self, target: V, items: Vec<V>) -> PResult<()> {
        match self.obj_mut(target) {
            Some(Obj::List(l)) => {
                l.extend(items);
                Ok(())
            }
            Some(Obj::Opaque) => Ok(()),
            _ => Err("pickle APPEND(S) on a non-list".into()),
        }
    }

    /// `callable(*args)` for the reductions torch emits.
    fn reduce(&mut self, callable: V, args: V, depth: usize) -> PResult<V> {
        if depth > 4 {
            return Err("pickle reductions nest too deeply".into());
        }
        let (module, name) = match self.obj(callable) {
            Some(Obj::Global { module, name }) => (module.clone(), name.clone()),
            _ => return Ok(self.alloc(Obj::Opaque)),
        };
        let args_t: Vec<V> = match self.tuple_of(args) {
            Some(t) => t.to_vec(),
            None => return Err(format!("{module}.{name}: arguments are not a tuple")),
        };
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                if args_t.len() < 4 {
                    return Err(format!(
                        "{name}: {} arguments, need at least 4",
                        args_t.len()
                    ));
                }
                let storage = match self.obj(args_t[0]) {
                    Some(Obj::Storage(s)) => s.clone(),
                    _ => return Err(format!("{name}: first argument is not a storage")),
                };
                let offset = match args_t[1] {
                    V::Int(i) => u64::try_from(i)
                        .map_err(|_| format!("{name}: negative storage offset {i}"))?,
                    _ => return Err(format!("{name}: storage offset is not an integer")),
                };
                let size = self.ints(args_t[2], "size")?;
                let stride = self.ints(args_t[3], "stride")?;
                if size.len() != stride.len() {
                    return Err(format!(
                        "{name}: size has {} dims, stride {}",
                        size.len(),
                        stride.len()
                    ));
                }
                Ok(self.alloc(Obj::Tensor(TensorView {
                    storage,
                    offset,
                    size,
                    stride,
                })))
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => args_t
                .first()
                .copied()
                .ok_or_else(|| format!("{name}: no arguments")),
            ("torch._tensor", "_rebuild_from_type_v2") => {
                if args_t.len() < 3 {
                    return Err(format!("{name}: {} arguments, need 3", args_t.len()));
                }
                self.reduce(args_t[0], args_t[2], depth + 1)
            }
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                let mut pairs = Vec::new();
                if let Some(&first) = args_t.first() {
                    let items: Vec<V> = match self.obj(first) {
                        Some(Obj::List(l)) | Some(Obj::Tuple(l)) => l.clone(),
                        _ => Vec::new(),
                    };
                    for item in items {
                        if let Some(p) = self.tuple_of(item).or(match self.obj(item) {
                            Some(Obj::List(l)) => Some(l.as_slice()),
                            _ => None,
                        }) {
                            if p.len() == 2 {
                                pairs.push((p[0], p[1]));
                            }
                        }
                    }
                }
                Ok(self.alloc(Obj::Dict(pairs)))
            }
            _ => Ok(self.alloc(Obj::Opaque)),
        }
    }

    fn persistent(&mut self, pid: V) -> PResult<V> {
        let t = self
            .tuple_of(pid)
            .ok_or_else(|| "persistent id is not a tuple".to_string())?
            .to_vec();
        if t.len() < 3 || self.str_of(t[0]) != Some("storage") {
            return Err("persistent id is not a ('storage', ...) tuple".into());
        }
        let type_name = match self.obj(t[1]) {
            Some(Obj::Global { name, .. }) => name.clone(),
            Some(Obj::Str(s)) => s.clone(),
            _ => return Err("persistent id: storage type is not a class".into()),
        };
        let key = self
            .str_of(t[2])
            .ok_or_else(|| "persistent id: storage key is not a string".to_string())?
            .to_string();
        let numel = match t.get(4) {
            Some(V::Int(n)) => {
                Some(u64::try_from(*n).map_err(|_| format!("persistent id: negative numel {n}"))?)
            }
            Some(_) => return Err("persistent id: numel is not an integer".into()),
            None => None,
        };
        Ok(self.alloc(Obj::Storage(StorageId {
            type_name,
            key,
            numel,
        })))
    }
}

fn int_from_le(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        // Accept sign-extension bytes beyond 8 only when they are redundant.
        let (lo, hi) = bytes.split_at(8);
        let v = int_from_le(lo)?;
        let ext = if v < 0 { 0xff } else { 0 };
        return hi.iter().all(|&b| b == ext).then_some(v);
    }
    let neg = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
    a[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(a))
}

/// Runs the pickle in `buf` (which may extend past `STOP`).
pub(super) fn parse(buf: &[u8]) -> PResult<Pickle> {
    let mut r = Reader { buf, pos: 0 };
    let mut vm = Vm {
        objs: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return Err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint only
            }
            b'.' => {
                let root = vm.pop()?;
                return Ok(Pickle {
                    objs: vm.objs,
                    root,
                    consumed: r.pos,
                });
            }
            b'(' => vm.marks.push(vm.stack.len()),
            b'0' => {
                vm.pop()?;
            }
            b'1' => {
                vm.pop_mark()?;
            }
            b'2' => {
                let v = vm.top()?;
                vm.stack.push(v);
            }
            b'N' => vm.stack.push(V::None),
            0x88 => vm.stack.push(V::Bool(true)),
            0x89 => vm.stack.push(V::Bool(false)),
            b'J' => {
                let v = r.u32()? as i32;
                vm.stack.push(V::Int(v.into()));
            }
            b'K' => {
                let v = r.u8()?;
                vm.stack.push(V::Int(v.into()));
            }
            b'M' => {
                let v = r.u16()?;
                vm.stack.push(V::Int(v.into()));
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    usize::from(r.u8()?)
                } else {
                    r.u32()? as usize
                };
                let bytes = r.take(n)?;
                let v = match int_from_le(bytes) {
                    Some(i) => V::Int(i),
                    None => vm.alloc(Obj::Opaque),
                };
                vm.stack.push(v);
            }
            b'I' | b'L' => {
                let line = r.line()?;
                let text = std::str::from_utf8(line).map_err(|_| "bad INT line".to_string())?;
                let text = text.trim_end_matches('L');
                let v = match text {
                    "01" if op == b'I' => V::Bool(true),
                    "00" if op == b'I' => V::Bool(false),
                    _ => match text.parse::<i64>() {
                        Ok(i) => V::Int(i),
                        Err(_) => vm.alloc(Obj::Opaque),
                    },
                };
                vm.stack.push(v);
            }
            b'G' => {
                let v = f64::from_bits(u64::from_be_bytes(
                    r.take(8)?.try_into().map_err(|_| "bad float".to_string())?,
                ));
                vm.stack.push(V::Float(v));
            }
            b'F' => {
                let line = r.line()?;
                let v = std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .ok_or_else(|| "bad FLOAT line".to_string())?;
                vm.stack.push(V::Float(v));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.u32()? as usize,
                    0x8c => usize::from(r.u8()?),
                    _ => r.len_u64()?,
                };
                let s = utf8(r.take(n)?)?;
                let v = vm.alloc(Obj::Str(s));
                vm.stack.push(v);
            }
            b'V' => {
                // raw-unicode-escape text; torch never writes it, keep the bytes as text if UTF-8.
                let s = utf8(r.line()?)?;
                let v = vm.alloc(Obj::Str(s));
                vm.stack.push(v);
            }
            b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'T' | b'B' => r.u32()? as usize,
                    b'U' | b'C' => usize::from(r.u8()?),
                    _ => r.len_u64()?,
                };
                let bytes = r.take(n)?;
                let v = if matches!(op, b'T' | b'U') {
                    // Python 2 str: text if it decodes.
                    match utf8(bytes) {
                        Ok(s) => vm.alloc(Obj::Str(s)),
                        Err(_) => vm.alloc(Obj::Bytes),
                    }
                } else {
                    vm.alloc(Obj::Bytes)
                };
                vm.stack.push(v);
            }
            b'S' => {
                let line = r.line()?;
                let inner = line
                    .strip_prefix(b"'")
                    .and_then(|l| l.strip_suffix(b"'"))
                    .or_else(|| line.strip_prefix(b"\"").and_then(|l| l.strip_suffix(b"\"")))
                    .ok_or_else(|| "bad STRING line".to_string())?;
                let v = match utf8(inner) {
                    Ok(s) => vm.alloc(Obj::Str(s)),
                    Err(_) => vm.alloc(Obj::Bytes),
                };
                vm.stack.push(v);
            }
            b')' => {
                let v = vm.alloc(Obj::Tuple(Vec::new()));
                vm.stack.push(v);
            }
            b't' => {
                let items = vm.pop_mark()?;
                let v = vm.alloc(Obj::Tuple(items));
                vm.stack.push(v);
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(vm.pop()?);
                }
                items.reverse();
                let v = vm.alloc(Obj::Tuple(items));
                vm.stack.push(v);
            }
            b']' => {
                let v = vm.alloc(Obj::List(Vec::new()));
                vm.stack.push(v);
            }
            b'l' => {
                let items = vm.pop_mark()?;
                let v = vm.alloc(Obj::List(items));
                vm.stack.push(v);
            }
            b'}' => {
                let v = vm.alloc(Obj::Dict(Vec::new()));
                vm.stack.push(v);
            }
            b'd' => {
                let items = vm.pop_mark()?;
                let v = vm.alloc(Obj::Dict(Vec::new()));
                vm.set_items(v, items)?;
                vm.stack.push(v);
            }
            0x8f => {
                let v = vm.alloc(Obj::Opaque);
                vm.stack.push(v);
            }
            0x91 => {
                vm.pop_mark()?;
                let v = vm.alloc(Obj::Opaque);
                vm.stack.push(v);
            }
            0x90 => {
                vm.pop_mark()?;
                vm.top()?;
            }
            b'a' => {
                let v = vm.pop()?;
                let target = vm.top()?;
                vm.append(target, vec![v])?;
            }
            b'e' => {
                let items = vm.pop_mark()?;
                let target = vm.top()?;
                vm.append(target, items)?;
            }
            b's' => {
                let v = vm.pop()?;
                let k = vm.pop()?;
                let target = vm.top()?;
                vm.set_items(target, vec![k, v])?;
            }
            b'u' => {
                let items = vm.pop_mark()?;
                let target = vm.top()?;
                vm.set_items(target, items)?;
            }
            b'q' => {
                let i = r.u8()?;
                vm.memo_put(i.into())?;
            }
            b'r' => {
                let i = r.u32()?;
                vm.memo_put(i.into())?;
            }
            0x94 => {
                let i = vm.memo.len() as u64;
                vm.memo_put(i)?;
            }
            b'p' => {
                let line = r.line()?;
                let i = std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| "bad PUT index".to_string())?;
                vm.memo_put(i)?;
            }
            b'h' => {
                let i = r.u8()?;
                vm.memo_get(i.into())?;
            }
            b'j' => {
                let i = r.u32()?;
                vm.memo_get(i.into())?;
            }
            b'g' => {
                let line = r.line()?;
                let i = std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| "bad GET index".to_string())?;
                vm.memo_get(i)?;
            }
            b'c' => {
                let module = utf8(r.line()?)?;
                let name = utf8(r.line()?)?;
                let v = vm.alloc(Obj::Global { module, name });
                vm.stack.push(v);
            }
            0x93 => {
                let name = vm.pop()?;
                let module = vm.pop()?;
                let (Some(module), Some(name)) = (vm.str_of(module), vm.str_of(name)) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                let (module, name) = (module.to_string(), name.to_string());
                let v = vm.alloc(Obj::Global { module, name });
                vm.stack.push(v);
            }
            b'R' => {
                let args = vm.pop()?;
                let callable = vm.pop()?;
                let v = vm.reduce(callable, args, 0)?;
                vm.stack.push(v);
            }
            0x81 => {
                let args = vm.pop()?;
                let cls = vm.pop()?;
                let v = match vm.obj(cls) {
                    Some(Obj::Global { module, name })
                        if module == "collections" && name == "OrderedDict" =>
                    {
                        vm.reduce(cls, args, 0)?
                    }
                    _ => vm.alloc(Obj::Opaque),
                };
                vm.stack.push(v);
            }
            0x92 => {
                vm.pop()?; // kwargs
                vm.pop()?; // args
                vm.pop()?; // cls
                let v = vm.alloc(Obj::Opaque);
                vm.stack.push(v);
            }
            b'b' => {
                // BUILD: sets attributes (e.g. an OrderedDict's `_metadata`); items are untouched.
                vm.pop()?;
                vm.top()?;
            }
            b'Q' => {
                let pid = vm.pop()?;
                let v = vm.persistent(pid)?;
                vm.stack.push(v);
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    r.pos - 1
                ))
            }
        }
    }
}

impl Pickle {
    fn obj(&self, v: V) -> Option<&Obj> {
        match v {
            V::Obj(i) => self.objs.get(i),
            _ => None,
        }
    }

    /// The tensors under `top_level_key` (or the root), flattened with `.` like `state_dict()` names.
    /// Non-tensor values (metadata) are skipped; a repeated name keeps the last value, as Python does.
    pub fn tensors(&self, top_level_key: Option<&str>) -> PResult<BTreeMap<String, TensorView>> {
        let mut start = self.root;
        if let Some(key) = top_level_key {
            let Some(Obj::Dict(d)) = self.obj(start) else {
                return Err("the pickled object is not a dict".into());
            };
            start = d
                .iter()
                .rev()
                .find(|(k, _)| matches!(self.obj(*k), Some(Obj::Str(s)) if s == key))
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("no top-level key `{key}`"))?;
        }
        if !matches!(self.obj(start), Some(Obj::Dict(_))) {
            return Err("the state dict is not a dict".into());
        }
        let mut out = BTreeMap::new();
        let mut visits = 0usize;
        self.flatten(start, String::new(), 0, &mut visits, &mut out)?;
        Ok(out)
    }

    fn flatten(
        &self,
        v: V,
        prefix: String,
        depth: usize,
        visits: &mut usize,
        out: &mut BTreeMap<String, TensorView>,
    ) -> PResult<()> {
        match self.obj(v) {
            Some(Obj::Tensor(t)) => {
                out.insert(prefix, t.clone());
            }
            Some(Obj::Dict(d)) => {
                if depth >= MAX_DICT_DEPTH {
                    return Err("state dict nests too deeply".into());
                }
                for (k, val) in d {
                    *visits += 1;
                    if *visits > MAX_VISITS {
                        return Err("state dict has too many entries".into());
                    }
                    let key = match (self.obj(*k), k) {
                        (Some(Obj::Str(s)), _) => s.clone(),
                        (_, V::Int(i)) => i.to_string(),
                        _ => continue,
                    };
                    let name = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    self.flatten(*val, name, depth + 1, visits, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_referencing_and_deep_inputs_stay_bounded() {
        // list appended into itself, then many nested tuples: no recursion, no blow-up.
        let mut p = vec![0x80, 2, b']', b'q', 0, b'h', 0, b'a'];
        p.extend(std::iter::repeat_n(0x85, 100_000));
        p.extend([b'0', b'}', b'.']);
        let pk = parse(&p).unwrap();
        assert!(pk.tensors(None).unwrap().is_empty());
        // a dict containing itself
        let p = [
            0x80, 2, b'}', b'q', 0, b'X', 1, 0, 0, 0, b'a', b'h', 0, b's', b'.',
        ];
        let pk = parse(&p).unwrap();
        assert!(pk.tensors(None).is_err());
    }

    #[test]
    fn truncated_and_malformed_pickles_are_errors() {
        for bad in [
            &[][..],
            &[0x80],
            &[b'X', 255, 255, 255, 255],
            b"a.",
            &[0xff],
        ] {
            assert!(parse(bad).is_err());
        }
    }
}
