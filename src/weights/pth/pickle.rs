//! The pickle interpreter: a small virtual machine for the opcodes `torch.save` emits
//! (protocols 2 to 5) that only *interprets* a whitelist of globals and never executes
//! anything (see the parent module for why).

use super::storage::{DType, TensorMeta};
use super::PthError;
use std::collections::HashMap;

/// Index of an object in the unpickler's arena.
pub(super) type Id = usize;

/// The whitelisted globals, the only names a pickle may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Global {
    /// `collections.OrderedDict`: calling it with no arguments gives a dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])`.
    RebuildTensorV3,
    /// `torch._utils._rebuild_parameter(data, requires_grad, hooks)`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)`.
    RebuildParameterWithState,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)`.
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter`, only as the type
    /// argument of `_rebuild_from_type_v2`.
    TensorType,
    /// A storage class such as `torch.FloatStorage`, inside persistent ids.
    StorageType(DType),
    /// A `torch.dtype` such as `torch.float32`.
    Dtype(DType),
}

impl Global {
    /// Resolves `module.name` against the whitelist.
    pub(super) fn resolve(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
            ("torch" | "torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter") => {
                Global::TensorType
            }
            ("torch" | "torch.storage", "UntypedStorage") => Global::StorageType(DType::U8),
            ("torch", n) if n.ends_with("Storage") => {
                Global::StorageType(DType::from_storage_class(n)?)
            }
            ("torch", n) => Global::Dtype(DType::from_dtype_name(n)?),
            _ => return None,
        })
    }
}

/// A storage named by a persistent id.
#[derive(Debug, Clone)]
pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) dtype: DType,
    pub(super) numel: u64,
}

/// Hashable dict keys (the kinds Python compares by value that occur here).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    None,
    Int(i64),
    Str(String),
}

/// A dict that keeps insertion order, as Python's does.
#[derive(Debug, Default)]
pub(super) struct Dict {
    pub(super) entries: Vec<(Id, Id)>,
    pub(super) index: HashMap<Key, usize>,
}

/// The values the unpickler builds.
#[derive(Debug)]
pub(super) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Dict),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorMeta),
}

impl Obj {
    /// A short name of the kind, for error messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Storage(_) => "storage",
            Obj::Tensor(_) => "tensor",
        }
    }
}

/// Keys under which checkpoints commonly wrap their state dict.
pub(super) const WRAPPER_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

/// The pickle virtual machine: a stack, a mark stack and a memo over an arena
/// of objects. Lists and dicts are mutated in place in the arena, so memo
/// references see later `APPENDS`/`SETITEMS`.
pub(super) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for errors.
    op_start: usize,
    objs: Vec<Obj>,
    stack: Vec<Id>,
    /// Stack lengths at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<usize, Id>,
    what: &'a str,
    member: &'a str,
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(data: &'a [u8], what: &'a str, member: &'a str) -> Self {
        Unpickler {
            data,
            pos: 0,
            op_start: 0,
            objs: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            what,
            member,
        }
    }

    /// A pickle error at the opcode being executed (after `run`, the STOP).
    pub(super) fn err(&self, message: impl Into<String>) -> PthError {
        PthError::Pickle {
            what: self.what.to_string(),
            member: self.member.to_string(),
            offset: self.op_start,
            message: message.into(),
        }
    }

    pub(super) fn alloc(&mut self, obj: Obj) -> Id {
        self.objs.push(obj);
        self.objs.len() - 1
    }

    pub(super) fn push(&mut self, obj: Obj) {
        let id = self.alloc(obj);
        self.stack.push(id);
    }

    pub(super) fn obj(&self, id: Id) -> &Obj {
        // Ids only come from `alloc`, so they are always in range.
        &self.objs[id]
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], PthError> {
        let data: &'a [u8] = self.data;
        match self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: expected {n} bytes of {what}, only {} remain",
                data.len() - self.pos
            ))),
        }
    }

    pub(super) fn take_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], PthError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(super) fn take_u8(&mut self, what: &str) -> Result<u8, PthError> {
        Ok(self.take_array::<1>(what)?[0])
    }

    pub(super) fn take_len(&mut self, n: u64, what: &str) -> Result<&'a [u8], PthError> {
        let n = usize::try_from(n).map_err(|_| self.err(format!("{what} length {n} too large")))?;
        self.take(n, what)
    }

    /// Reads a `\n`-terminated line (text opcodes), without the newline.
    pub(super) fn take_line(&mut self, what: &str) -> Result<&'a str, PthError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err(format!("truncated: expected a newline-terminated {what}")))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    pub(super) fn pop(&mut self, what: &str) -> Result<Id, PthError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(format!("stack underflow: expected {what} on the stack")));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.err(format!("stack underflow: expected {what}")))
    }

    pub(super) fn top(&self, what: &str) -> Result<Id, PthError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(&id) if self.stack.len() > floor => Ok(id),
            _ => Err(self.err(format!("stack underflow: expected {what} on the stack"))),
        }
    }

    /// Pops everything down to the last `MARK`.
    pub(super) fn pop_mark(&mut self) -> Result<Vec<Id>, PthError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("expected a MARK on the stack, found none"))?;
        Ok(self.stack.split_off(m))
    }

    pub(super) fn memo_get(&mut self, index: usize) -> Result<(), PthError> {
        let id = *self
            .memo
            .get(&index)
            .ok_or_else(|| self.err(format!("memo key {index} was never stored")))?;
        self.stack.push(id);
        Ok(())
    }

    pub(super) fn memo_put(&mut self, index: usize) -> Result<(), PthError> {
        let id = self.top("a value to memoize")?;
        self.memo.insert(index, id);
        Ok(())
    }

    pub(super) fn push_str(&mut self, bytes: &[u8]) -> Result<(), PthError> {
        let s = std::str::from_utf8(bytes)
            .map_err(|_| self.err("string is not valid UTF-8"))?
            .to_string();
        self.push(Obj::Str(s));
        Ok(())
    }

    /// Signed little-endian integer of `bytes.len()` bytes (LONG1/LONG4).
    pub(super) fn long_le(&self, bytes: &[u8]) -> Result<i64, PthError> {
        if bytes.len() > 8 {
            return Err(self.err(format!(
                "integer of {} bytes does not fit in 64 bits",
                bytes.len()
            )));
        }
        let Some(&last) = bytes.last() else {
            return Ok(0);
        };
        let mut buf = if last & 0x80 != 0 { [0xff; 8] } else { [0; 8] };
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(buf))
    }

    pub(super) fn resolve_global(&mut self, module: &str, name: &str) -> Result<(), PthError> {
        match Global::resolve(module, name) {
            Some(g) => {
                self.push(Obj::Global(g));
                Ok(())
            }
            // A storage class of a dtype this reader cannot convert.
            None if module == "torch" && name.ends_with("Storage") => Err(self.err(format!(
                "unsupported storage type `torch.{name}`: expected a float (Float, Double, Half, \
                 BFloat16), integer (Long, Int, Short, Char, Byte) or Bool storage"
            ))),
            None => Err(PthError::ForbiddenGlobal {
                what: self.what.to_string(),
                member: self.member.to_string(),
                offset: self.op_start,
                module: module.to_string(),
                name: name.to_string(),
            }),
        }
    }

    pub(super) fn dict_key(&self, id: Id) -> Option<Key> {
        match self.obj(id) {
            Obj::None => Some(Key::None),
            Obj::Bool(b) => Some(Key::Int(i64::from(*b))),
            Obj::Int(i) => Some(Key::Int(*i)),
            Obj::Str(s) => Some(Key::Str(s.clone())),
            _ => None,
        }
    }

    /// `dict[key] = value`, keeping the first insertion's position.
    pub(super) fn set_items(&mut self, dict: Id, items: &[Id]) -> Result<(), PthError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS expects key/value pairs, found an odd count"));
        }
        let keys: Vec<Option<Key>> = items.chunks(2).map(|kv| self.dict_key(kv[0])).collect();
        let kind = self.obj(dict).kind();
        let Obj::Dict(d) = &mut self.objs[dict] else {
            return Err(self.err(format!("SETITEM(S) on a {kind}, expected a dict")));
        };
        for (kv, key) in items.chunks(2).zip(keys) {
            match key.as_ref().and_then(|k| d.index.get(k)) {
                Some(&i) => d.entries[i].1 = kv[1],
                None => {
                    if let Some(k) = key {
                        d.index.insert(k, d.entries.len());
                    }
                    d.entries.push((kv[0], kv[1]));
                }
            }
        }
        Ok(())
    }

    pub(super) fn append_items(&mut self, list: Id, items: Vec<Id>) -> Result<(), PthError> {
        let kind = self.obj(list).kind();
        match &mut self.objs[list] {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(self.err(format!("APPEND(S) on a {kind}, expected a list"))),
        }
    }

    pub(super) fn int_arg(&self, args: &[Id], i: usize, what: &str) -> Result<u64, PthError> {
        match args.get(i).map(|&a| self.obj(a)) {
            Some(Obj::Int(v)) if *v >= 0 => Ok(*v as u64),
            Some(o) => Err(self.err(format!(
                "argument {i} ({what}): expected a non-negative int, found {}",
                describe(o)
            ))),
            None => Err(self.err(format!("argument {i} ({what}) missing"))),
        }
    }

    pub(super) fn int_tuple_arg(
        &self,
        args: &[Id],
        i: usize,
        what: &str,
    ) -> Result<Vec<u64>, PthError> {
        let bad = |found: &str| {
            self.err(format!(
                "argument {i} ({what}): expected a tuple of non-negative ints, found {found}"
            ))
        };
        let Some(Obj::Tuple(items)) = args.get(i).map(|&a| self.obj(a)) else {
            return Err(bad(args.get(i).map_or("nothing", |&a| self.obj(a).kind())));
        };
        items
            .iter()
            .map(|&x| match self.obj(x) {
                Obj::Int(v) if *v >= 0 => Ok(*v as u64),
                o => Err(bad(&describe(o))),
            })
            .collect()
    }

    /// Applies a whitelisted callable (`REDUCE`) to its argument tuple.
    pub(super) fn call(&self, func: Global, args: &[Id]) -> Result<Obj, PthError> {
        let n = args.len();
        let arity = |ok: bool, expected: &str| -> Result<(), PthError> {
            if ok {
                Ok(())
            } else {
                Err(self.err(format!(
                    "{func:?} called with {n} arguments, expected {expected}"
                )))
            }
        };
        match func {
            Global::OrderedDict => {
                arity(n == 0, "0")?;
                Ok(Obj::Dict(Dict::default()))
            }
            Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                let v3 = func == Global::RebuildTensorV3;
                if v3 {
                    arity(n == 7 || n == 8, "7 or 8")?;
                } else {
                    arity(n == 6 || n == 7, "6 or 7")?;
                }
                let storage = match self.obj(args[0]) {
                    Obj::Storage(s) => s.clone(),
                    o => {
                        return Err(self.err(format!(
                            "argument 0 (storage): expected a persistent-id storage, found {}",
                            describe(o)
                        )))
                    }
                };
                let offset = self.int_arg(args, 1, "storage_offset")?;
                let size = self.int_tuple_arg(args, 2, "size")?;
                let stride = self.int_tuple_arg(args, 3, "stride")?;
                if size.len() != stride.len() {
                    return Err(self.err(format!(
                        "size {size:?} and stride {stride:?} have different lengths"
                    )));
                }
                let size = size
                    .into_iter()
                    .map(usize::try_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| self.err("size does not fit in usize"))?;
                let dtype = if v3 {
                    match self.obj(args[6]) {
                        Obj::Global(Global::Dtype(d)) => *d,
                        o => {
                            return Err(self.err(format!(
                                "argument 6 (dtype): expected a torch dtype, found {}",
                                describe(o)
                            )))
                        }
                    }
                } else {
                    storage.dtype
                };
                let storage_bytes = storage
                    .numel
                    .checked_mul(storage.dtype.size() as u64)
                    .ok_or_else(|| self.err("storage size overflows"))?;
                Ok(Obj::Tensor(TensorMeta {
                    key: storage.key,
                    storage_bytes,
                    storage_dtype: storage.dtype,
                    dtype,
                    offset,
                    size,
                    stride,
                    pickle_offset: self.op_start,
                }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                if func == Global::RebuildParameter {
                    arity(n == 3, "3")?;
                } else {
                    arity(n == 4, "4")?;
                }
                match self.obj(args[0]) {
                    Obj::Tensor(t) => Ok(Obj::Tensor(t.clone())),
                    o => Err(self.err(format!(
                        "argument 0 (data): expected a tensor, found {}",
                        describe(o)
                    ))),
                }
            }
            Global::RebuildFromTypeV2 => {
                arity(n == 4, "4")?;
                let inner = match self.obj(args[0]) {
                    // Only one level: the wrapped call is a plain rebuild.
                    Obj::Global(g) if *g != Global::RebuildFromTypeV2 => *g,
                    o => {
                        return Err(self.err(format!(
                            "argument 0 (func): expected a rebuild function, found {}",
                            describe(o)
                        )))
                    }
                };
                if !matches!(self.obj(args[1]), Obj::Global(Global::TensorType)) {
                    return Err(self.err(format!(
                        "argument 1 (type): expected torch.Tensor or torch.nn.Parameter, found {}",
                        describe(self.obj(args[1]))
                    )));
                }
                match self.obj(args[2]) {
                    Obj::Tuple(inner_args) => self.call(inner, inner_args),
                    o => Err(self.err(format!(
                        "argument 2 (args): expected a tuple, found {}",
                        describe(o)
                    ))),
                }
            }
            Global::TensorType | Global::StorageType(_) | Global::Dtype(_) => {
                Err(self.err(format!("{func:?} is not callable here")))
            }
        }
    }

    /// Runs the pickle to its `STOP` and returns the resulting object.
    pub(super) fn run(&mut self) -> Result<Id, PthError> {
        loop {
            self.op_start = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(self.err("truncated: the pickle ended before its STOP opcode"));
            };
            self.pos += 1;
            match op {
                // PROTO: protocol version.
                0x80 => {
                    let v = self.take_u8("protocol version")?;
                    if v > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {v}")));
                    }
                }
                // FRAME: an 8-byte frame length; frames are only a buffering hint.
                0x95 => {
                    self.take(8, "frame length")?;
                }
                // STOP
                b'.' => return self.pop("the pickled object"),
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // POP (or POP_MARK when only a mark is left, like CPython)
                b'0' => {
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() > floor {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let id = self.top("a value to duplicate")?;
                    self.stack.push(id);
                }
                b'N' => self.push(Obj::None),
                0x88 => self.push(Obj::Bool(true)),
                0x89 => self.push(Obj::Bool(false)),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array("BININT")?);
                    self.push(Obj::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.take_u8("BININT1")?;
                    self.push(Obj::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array("BININT2")?);
                    self.push(Obj::Int(i64::from(v)));
                }
                // LONG1, LONG4: little-endian two's complement of given length.
                0x8a => {
                    let n = self.take_u8("LONG1 length")?;
                    let b = self.take(usize::from(n), "LONG1")?;
                    let v = self.long_le(b)?;
                    self.push(Obj::Int(v));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.take_array("LONG4 length")?);
                    let n = u64::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let b = self.take_len(n, "LONG4")?;
                    let v = self.long_le(b)?;
                    self.push(Obj::Int(v));
                }
                // INT, LONG (protocol 0 text); `I01`/`I00` are True/False.
                b'I' | b'L' => {
                    let line = self.take_line("integer")?;
                    let obj = match line {
                        "01" if op == b'I' => Obj::Bool(true),
                        "00" if op == b'I' => Obj::Bool(false),
                        _ => Obj::Int(
                            line.trim_end_matches('L')
                                .parse()
                                .map_err(|_| self.err(format!("bad integer literal {line:?}")))?,
                        ),
                    };
                    self.push(obj);
                }
                // BINFLOAT: big-endian f64.
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array("BINFLOAT")?);
                    self.push(Obj::Float(v));
                }
                // FLOAT (text)
                b'F' => {
                    let line = self.take_line("float")?;
                    let v = line
                        .parse()
                        .map_err(|_| self.err(format!("bad float literal {line:?}")))?;
                    self.push(Obj::Float(v));
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8: UTF-8 strings.
                b'X' => {
                    let n = u32::from_le_bytes(self.take_array("BINUNICODE length")?);
                    let b = self.take_len(u64::from(n), "BINUNICODE")?;
                    self.push_str(b)?;
                }
                0x8c => {
                    let n = self.take_u8("SHORT_BINUNICODE length")?;
                    let b = self.take(usize::from(n), "SHORT_BINUNICODE")?;
                    self.push_str(b)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take_array("BINUNICODE8 length")?);
                    let b = self.take_len(n, "BINUNICODE8")?;
                    self.push_str(b)?;
                }
                // BINSTRING, SHORT_BINSTRING: Python 2 strings.
                b'T' => {
                    let n = i32::from_le_bytes(self.take_array("BINSTRING length")?);
                    let n = u64::try_from(n).map_err(|_| self.err("negative BINSTRING length"))?;
                    let b = self.take_len(n, "BINSTRING")?;
                    self.push_str(b)?;
                }
                b'U' => {
                    let n = self.take_u8("SHORT_BINSTRING length")?;
                    let b = self.take(usize::from(n), "SHORT_BINSTRING")?;
                    self.push_str(b)?;
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' => {
                    let n = u32::from_le_bytes(self.take_array("BINBYTES length")?);
                    let b = self.take_len(u64::from(n), "BINBYTES")?;
                    self.push(Obj::Bytes(b.to_vec()));
                }
                b'C' => {
                    let n = self.take_u8("SHORT_BINBYTES length")?;
                    let b = self.take(usize::from(n), "SHORT_BINBYTES")?;
                    self.push(Obj::Bytes(b.to_vec()));
                }
                0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.take_array("BINBYTES8 length")?);
                    let b = self.take_len(n, "BINBYTES8")?;
                    self.push(Obj::Bytes(b.to_vec()));
                }
                // Containers.
                b'}' => self.push(Obj::Dict(Dict::default())),
                b']' => self.push(Obj::List(Vec::new())),
                b')' => self.push(Obj::Tuple(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let id = self.alloc(Obj::Dict(Dict::default()));
                    self.set_items(id, &items)?;
                    self.stack.push(id);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop("a tuple item")?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items));
                }
                // SETITEM, SETITEMS
                b's' => {
                    let v = self.pop("a dict value")?;
                    let k = self.pop("a dict key")?;
                    let d = self.top("a dict")?;
                    self.set_items(d, &[k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top("a dict")?;
                    self.set_items(d, &items)?;
                }
                // APPEND, APPENDS
                b'a' => {
                    let v = self.pop("a list item")?;
                    let l = self.top("a list")?;
                    self.append_items(l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top("a list")?;
                    self.append_items(l, items)?;
                }
                // Memo: BINPUT, LONG_BINPUT, PUT, MEMOIZE, BINGET, LONG_BINGET, GET.
                b'q' => {
                    let i = self.take_u8("BINPUT index")?;
                    self.memo_put(usize::from(i))?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.take_array("LONG_BINPUT index")?);
                    self.memo_put(i as usize)?;
                }
                b'p' => {
                    let line = self.take_line("PUT index")?;
                    let i = line
                        .parse()
                        .map_err(|_| self.err(format!("bad memo index {line:?}")))?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.take_u8("BINGET index")?;
                    self.memo_get(usize::from(i))?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.take_array("LONG_BINGET index")?);
                    self.memo_get(i as usize)?;
                }
                b'g' => {
                    let line = self.take_line("GET index")?;
                    let i = line
                        .parse()
                        .map_err(|_| self.err(format!("bad memo index {line:?}")))?;
                    self.memo_get(i)?;
                }
                // GLOBAL: `module\nname\n`, checked against the whitelist.
                b'c' => {
                    let module = self.take_line("GLOBAL module")?;
                    let name = self.take_line("GLOBAL name")?;
                    self.resolve_global(module, name)?;
                }
                // STACK_GLOBAL: module and name strings from the stack.
                0x93 => {
                    let name = self.pop("a global name")?;
                    let module = self.pop("a global module")?;
                    match (self.obj(module), self.obj(name)) {
                        (Obj::Str(m), Obj::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.resolve_global(&m, &n)?;
                        }
                        (m, n) => {
                            return Err(self.err(format!(
                                "STACK_GLOBAL expects two strings, found {} and {}",
                                m.kind(),
                                n.kind()
                            )))
                        }
                    }
                }
                // REDUCE: callable(*args), for whitelisted callables only.
                b'R' => {
                    let args = self.pop("an argument tuple")?;
                    let func = self.pop("a callable")?;
                    let func = match self.obj(func) {
                        Obj::Global(g) => *g,
                        o => {
                            return Err(self.err(format!(
                                "REDUCE expects a whitelisted global, found {}",
                                describe(o)
                            )))
                        }
                    };
                    let obj = match self.obj(args) {
                        Obj::Tuple(args) => self.call(func, args)?,
                        o => {
                            return Err(self.err(format!(
                                "REDUCE expects an argument tuple, found {}",
                                o.kind()
                            )))
                        }
                    };
                    self.push(obj);
                }
                // NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args); only OrderedDict.
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop("NEWOBJ_EX keyword arguments")?;
                    }
                    self.pop("NEWOBJ arguments")?;
                    let cls = self.pop("a class")?;
                    match self.obj(cls) {
                        Obj::Global(Global::OrderedDict) => self.push(Obj::Dict(Dict::default())),
                        o => {
                            return Err(self.err(format!(
                                "NEWOBJ expects collections.OrderedDict, found {}",
                                describe(o)
                            )))
                        }
                    }
                }
                // BUILD: sets an object's state. A state dict carries its
                // `_metadata` attribute this way; tensors may carry Python
                // attributes. Both are irrelevant to the values, so dropped.
                b'b' => {
                    self.pop("a state")?;
                    let target = self.top("an object to build")?;
                    match self.obj(target) {
                        Obj::Dict(_) | Obj::Tensor(_) => {}
                        o => {
                            return Err(self.err(format!(
                                "BUILD on a {}, expected an OrderedDict or a tensor",
                                o.kind()
                            )))
                        }
                    }
                }
                // BINPERSID: a reference to a storage outside the pickle.
                b'Q' => {
                    let pid = self.pop("a persistent id")?;
                    let storage = self.persistent_storage(pid)?;
                    self.push(Obj::Storage(storage));
                }
                _ => {
                    return Err(self.err(format!(
                        "unsupported pickle opcode 0x{op:02x} ({:?}); torch.save checkpoints do \
                         not use it",
                        char::from(op)
                    )))
                }
            }
        }
    }

    /// Decodes `('storage', torch.XStorage, key, location, numel)`.
    pub(super) fn persistent_storage(&self, pid: Id) -> Result<StorageRef, PthError> {
        let expected =
            "expected a persistent id ('storage', <storage type>, <key>, <location>, <numel>)";
        let items = match self.obj(pid) {
            Obj::Tuple(items) if items.len() == 5 => items,
            o => return Err(self.err(format!("{expected}, found {}", describe(o)))),
        };
        let parts: Vec<&Obj> = items.iter().map(|&i| self.obj(i)).collect();
        match parts.as_slice() {
            [Obj::Str(tag), Obj::Global(Global::StorageType(dtype)), Obj::Str(key), Obj::Str(_), Obj::Int(numel)]
                if tag == "storage" && *numel >= 0 =>
            {
                Ok(StorageRef {
                    key: key.clone(),
                    dtype: *dtype,
                    numel: *numel as u64,
                })
            }
            _ => Err(self.err(format!(
                "{expected}, found ({})",
                parts
                    .iter()
                    .map(|o| describe(o))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Finds the state dict in the unpickled object and lists its tensors.
    /// Errors point at the STOP opcode, where the object was complete.
    pub(super) fn state_dict_entries(
        &self,
        root: Id,
    ) -> Result<Vec<(String, TensorMeta)>, PthError> {
        let not_sd = |found: &str| {
            self.err(format!(
                "expected a state dict (a dict of name -> tensor), or a dict wrapping one \
                     under {WRAPPER_KEYS:?}; found {found}"
            ))
        };
        let Obj::Dict(top) = self.obj(root) else {
            return Err(not_sd(&format!("a top-level {}", self.obj(root).kind())));
        };
        let mut sd = top;
        for key in WRAPPER_KEYS {
            if let Some(&i) = top.index.get(&Key::Str(key.to_string())) {
                if let Obj::Dict(inner) = self.obj(top.entries[i].1) {
                    sd = inner;
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(sd.entries.len());
        for &(k, v) in &sd.entries {
            let Obj::Str(name) = self.obj(k) else {
                return Err(not_sd(&format!("a key {}", describe(self.obj(k)))));
            };
            match self.obj(v) {
                Obj::Tensor(t) => out.push((name.clone(), t.clone())),
                o => {
                    let keys: Vec<String> = top
                        .entries
                        .iter()
                        .take(8)
                        .map(|&(k, _)| describe(self.obj(k)))
                        .collect();
                    return Err(not_sd(&format!(
                        "entry `{name}` holding {} (top-level keys: {})",
                        describe(o),
                        keys.join(", ")
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// A short description of a value, for error messages.
pub(super) fn describe(o: &Obj) -> String {
    match o {
        Obj::Int(i) => format!("int {i}"),
        Obj::Float(f) => format!("float {f}"),
        Obj::Bytes(b) => format!("{} bytes", b.len()),
        Obj::Str(s) if s.len() <= 60 => format!("str {s:?}"),
        Obj::Global(g) => format!("global {g:?}"),
        other => format!("a {}", other.kind()),
    }
}
