//! A safe unpickler for what `torch.save` writes: a stack machine that builds plain values,
//! calls nothing, and accepts only the handful of globals a state dict needs.

use std::collections::HashMap;

mod value;

pub use value::{Global, Storage, Tensor, Value};

/// Why a pickle was refused; byte offsets are into the pickle stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    #[error("pickle truncated at byte {0}")]
    Truncated(usize),
    #[error("unsupported pickle opcode {opcode:#04x} at byte {at}")]
    Opcode { opcode: u8, at: usize },
    #[error("global {0} is not allowed (a state dict needs only tensors and containers)")]
    DisallowedGlobal(String),
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: String },
    #[error("pickle copies more than {budget} values and bytes by byte {at} ({COPIES_PER_BYTE} per byte of the stream): a memo or DUP bomb, not a state dict")]
    OverBudget { at: usize, budget: usize },
    #[error("pickle nests values deeper than {MAX_DEPTH} at byte {0}")]
    TooDeep(usize),
}

/// How many values and bytes DUP, PUT and GET may copy per byte of the stream: a state dict
/// copies a few (memoised tuples, storage keys); DUP + TUPLE2 alone doubles with every two bytes.
const COPIES_PER_BYTE: usize = 16;
/// What even a tiny pickle may copy.
const COPIES_BASE: usize = 1 << 16;
/// Nesting deeper than this is refused: cloning, comparing and dropping values recurse.
const MAX_DEPTH: usize = 256;

/// Runs the pickle in `data` and returns the value STOP leaves on top of the stack.
///
/// Work and memory are bounded by the stream's length: copies within [`COPIES_PER_BYTE`],
/// nesting within [`MAX_DEPTH`].
pub fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    Machine {
        data,
        pos: 0,
        op_start: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: data.len().saturating_mul(COPIES_PER_BYTE) + COPIES_BASE,
    }
    .run()
    .map(|node| node.value)
}

/// A value with its size and depth, kept as it is built so that no opcode walks a value.
#[derive(Clone)]
struct Node {
    value: Value,
    /// Values and bytes a copy of it allocates.
    weight: usize,
    /// Levels of values nested inside it.
    depth: usize,
}

impl Node {
    /// A value that holds no other values.
    fn leaf(value: Value) -> Node {
        let bytes = match &value {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Storage(s) => s.key.len(),
            Value::Tensor(t) => t.storage_key.len() + t.shape.len() + t.stride.len(),
            _ => 0,
        };
        Node {
            value,
            weight: 1 + bytes,
            depth: 0,
        }
    }
}

/// The size and depth that a collection's items add to it.
#[derive(Default, Clone, Copy)]
struct Inner {
    weight: usize,
    depth: usize,
}

/// The items' values, and what they add to the collection that takes them.
fn unzip(items: Vec<Node>) -> (Vec<Value>, Inner) {
    let mut inner = Inner::default();
    let values = items
        .into_iter()
        .map(|node| {
            inner.weight += node.weight;
            inner.depth = inner.depth.max(node.depth + 1);
            node.value
        })
        .collect();
    (values, inner)
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Start of the opcode being executed, for error messages.
    op_start: usize,
    stack: Vec<Node>,
    marks: Vec<usize>,
    memo: HashMap<u64, Node>,
    /// What DUP, PUT and GET may still copy.
    budget: usize,
}

impl<'a> Machine<'a> {
    fn run(mut self) -> Result<Node, PickleError> {
        loop {
            self.op_start = self.pos;
            let opcode = self.byte()?;
            match opcode {
                b'.' => return self.pop(),
                0x80 => {
                    self.byte()?; // PROTO n
                }
                0x95 => {
                    self.take(8)?; // FRAME length: a hint for buffered readers.
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.copy_top()?;
                    self.stack.push(top);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let n = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(n.into()));
                }
                b'K' => {
                    let n = self.byte()?;
                    self.push(Value::Int(n.into()));
                }
                b'M' => {
                    let n = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(n.into()));
                }
                0x8a => {
                    let len = self.byte()?.into();
                    self.long(len)?;
                }
                0x8b => {
                    let len = self.len_u32()?;
                    self.long(len)?;
                }
                b'G' => {
                    let x = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(x));
                }
                b'X' => {
                    let len = self.len_u32()?;
                    self.string(len)?;
                }
                0x8c => {
                    let len = self.byte()?.into();
                    self.string(len)?;
                }
                0x8d => {
                    let len = self.len_u64()?;
                    self.string(len)?;
                }
                b'B' => {
                    let len = self.len_u32()?;
                    self.bytes(len)?;
                }
                b'C' => {
                    let len = self.byte()?.into();
                    self.bytes(len)?;
                }
                0x8e => {
                    let len = self.len_u64()?;
                    self.bytes(len)?;
                }
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.collection(Value::Tuple, items)?;
                }
                0x85..=0x87 => {
                    let mut items = (0x84..opcode)
                        .map(|_| self.pop())
                        .collect::<Result<Vec<_>, _>>()?;
                    items.reverse();
                    self.collection(Value::Tuple, items)?;
                }
                b']' => self.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.collection(Value::List, items)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()));
                    self.extend_dict(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_dict(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(Global::resolve(module, name)?));
                }
                0x93 => {
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed("STACK_GLOBAL needs two strings"));
                    };
                    self.push(Value::Global(Global::resolve(&module, &name)?));
                }
                b'R' => {
                    let args = self.pop()?.value;
                    let callable = self.pop()?.value;
                    let value = self.reduce(callable, args)?;
                    self.push(value);
                }
                b'b' => {
                    let _state = self.pop()?;
                    // An OrderedDict's state is the state dict's `_metadata` attribute.
                    let target = &self.top()?.value;
                    if !matches!(target, Value::Dict(_)) {
                        return Err(self.malformed(format!("BUILD on a {}", target.kind())));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?.value;
                    let storage = self.persistent_load(pid)?;
                    self.push(Value::Storage(storage));
                }
                b'q' => {
                    let index = self.byte()?.into();
                    self.put(index)?;
                }
                b'r' => {
                    let index = u32::from_le_bytes(self.array()?).into();
                    self.put(index)?;
                }
                0x94 => {
                    let index = self.memo.len() as u64;
                    self.put(index)?;
                }
                b'h' => {
                    let index = self.byte()?.into();
                    self.get(index)?;
                }
                b'j' => {
                    let index = u32::from_le_bytes(self.array()?).into();
                    self.get(index)?;
                }
                _ => {
                    return Err(PickleError::Opcode {
                        opcode,
                        at: self.op_start,
                    })
                }
            }
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let bytes = self.take(N)?;
        Ok(bytes.try_into().expect("take returns exactly N bytes"))
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.array::<1>()?[0])
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        let len = u64::from_le_bytes(self.array()?);
        // Longer than the address space means longer than the pickle.
        usize::try_from(len).map_err(|_| PickleError::Truncated(self.data.len()))
    }

    /// A newline-terminated ASCII line (GLOBAL's operands).
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.data.len()))?;
        self.pos += len + 1;
        std::str::from_utf8(&rest[..len]).map_err(|_| self.malformed("GLOBAL operand is not UTF-8"))
    }

    /// LONG1/LONG4: little-endian two's complement of `len` bytes.
    fn long(&mut self, len: usize) -> Result<(), PickleError> {
        let bytes = self.take(len)?;
        if len > 8 {
            return Err(self.malformed(format!("{len}-byte integer")));
        }
        let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut wide = [fill; 8];
        wide[..len].copy_from_slice(bytes);
        self.push(Value::Int(i64::from_le_bytes(wide)));
        Ok(())
    }

    fn string(&mut self, len: usize) -> Result<(), PickleError> {
        let bytes = self.take(len)?.to_vec();
        let s = String::from_utf8(bytes).map_err(|_| self.malformed("string is not UTF-8"))?;
        self.push(Value::Str(s));
        Ok(())
    }

    fn bytes(&mut self, len: usize) -> Result<(), PickleError> {
        let bytes = self.take(len)?.to_vec();
        self.push(Value::Bytes(bytes));
        Ok(())
    }

    fn malformed(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.op_start,
            what: what.into(),
        }
    }

    fn underflow(&self) -> PickleError {
        self.malformed("stack underflow")
    }

    fn push(&mut self, value: Value) {
        self.stack.push(Node::leaf(value));
    }

    /// Pushes the collection `make` builds from `items`.
    fn collection(
        &mut self,
        make: impl FnOnce(Vec<Value>) -> Value,
        items: Vec<Node>,
    ) -> Result<(), PickleError> {
        let (values, inner) = unzip(items);
        self.check_depth(inner.depth)?;
        self.stack.push(Node {
            value: make(values),
            weight: 1 + inner.weight,
            depth: inner.depth,
        });
        Ok(())
    }

    fn check_depth(&self, depth: usize) -> Result<(), PickleError> {
        if depth > MAX_DEPTH {
            return Err(PickleError::TooDeep(self.op_start));
        }
        Ok(())
    }

    /// Takes a copy's size out of the budget, before it is made.
    fn charge(&mut self, weight: usize) -> Result<(), PickleError> {
        self.budget = self
            .budget
            .checked_sub(weight)
            .ok_or(PickleError::OverBudget {
                at: self.op_start,
                budget: self.data.len().saturating_mul(COPIES_PER_BYTE) + COPIES_BASE,
            })?;
        Ok(())
    }

    fn copy_top(&mut self) -> Result<Node, PickleError> {
        self.charge(self.top()?.weight)?;
        Ok(self.top()?.clone())
    }

    fn pop(&mut self) -> Result<Node, PickleError> {
        // Values below the innermost MARK belong to an enclosing collection.
        if self.marks.last() == Some(&self.stack.len()) {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    fn top(&self) -> Result<&Node, PickleError> {
        self.stack.last().ok_or_else(|| self.underflow())
    }

    /// The top value, about to take items that add `inner` to it.
    fn grow_top(&mut self, inner: Inner) -> Result<&mut Value, PickleError> {
        let depth = self.top()?.depth.max(inner.depth);
        self.check_depth(depth)?;
        let top = self.stack.last_mut().expect("top() found it");
        top.weight += inner.weight;
        top.depth = depth;
        Ok(&mut top.value)
    }

    fn pop_mark(&mut self) -> Result<Vec<Node>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no MARK"))?;
        Ok(self.stack.split_off(mark))
    }

    fn extend_list(&mut self, items: Vec<Node>) -> Result<(), PickleError> {
        let (items, inner) = unzip(items);
        match self.grow_top(inner)? {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            other => {
                let kind = other.kind();
                Err(self.malformed(format!("APPEND to a {kind}")))
            }
        }
    }

    /// Sets keys and values, alternating in `items`.
    fn extend_dict(&mut self, items: Vec<Node>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of dict items"));
        }
        let (items, inner) = unzip(items);
        match self.grow_top(inner)? {
            Value::Dict(dict) => {
                let mut items = items.into_iter();
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    match dict.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, old)) => *old = value,
                        None => dict.push((key, value)),
                    }
                }
                Ok(())
            }
            other => {
                let kind = other.kind();
                Err(self.malformed(format!("SETITEM on a {kind}")))
            }
        }
    }

    fn put(&mut self, index: u64) -> Result<(), PickleError> {
        let top = self.copy_top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u64) -> Result<(), PickleError> {
        let node = self
            .memo
            .get(&index)
            .ok_or_else(|| self.malformed(format!("memo {index} unset")))?;
        // Values are copies, not shared references: a dict or list memoised before it was
        // filled would come back stale, so refuse rather than return the wrong contents.
        if matches!(node.value, Value::Dict(_) | Value::List(_)) {
            return Err(self.malformed(format!(
                "shared reference to a {} (memo {index})",
                node.value.kind()
            )));
        }
        self.charge(node.weight)?;
        let node = self.memo[&index].clone();
        self.stack.push(node);
        Ok(())
    }

    fn persistent_load(&self, pid: Value) -> Result<Storage, PickleError> {
        let Value::Tuple(fields) = pid else {
            return Err(self.malformed(format!("persistent id is a {}", pid.kind())));
        };
        match <[Value; 5]>::try_from(fields) {
            Ok(
                [Value::Str(tag), Value::Global(storage_type), Value::Str(key), _location, _numel],
            ) if tag == "storage" => {
                let dtype = match storage_type {
                    Global::TypedStorage(dtype) => Some(dtype),
                    Global::UntypedStorage => None,
                    _ => return Err(self.malformed("persistent id without a storage type")),
                };
                Ok(Storage { dtype, key })
            }
            _ => {
                Err(self.malformed("persistent id is not ('storage', type, key, location, numel)"))
            }
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(global) = callable else {
            return Err(self.malformed(format!("REDUCE calls a {}", callable.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.malformed(format!("REDUCE arguments are a {}", args.kind())));
        };
        match global {
            Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Global::RebuildTensorV2 if (6..=7).contains(&args.len()) => self.tensor(&args, None),
            Global::RebuildTensorV3 if (7..=8).contains(&args.len()) => match args[6] {
                Value::Global(Global::Dtype(dtype)) => self.tensor(&args, Some(dtype)),
                _ => Err(self.malformed("_rebuild_tensor_v3 without a dtype")),
            },
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                match args.into_iter().next() {
                    Some(tensor @ Value::Tensor(_)) => Ok(tensor),
                    _ => Err(self.malformed("_rebuild_parameter of a non-tensor")),
                }
            }
            _ => Err(self.malformed(format!(
                "cannot call {global:?} with {} arguments",
                args.len()
            ))),
        }
    }

    /// `_rebuild_tensor_v2/v3(storage, storage_offset, size, stride, ...)`; v3 passes `dtype`.
    fn tensor(&self, args: &[Value], dtype: Option<&'static str>) -> Result<Value, PickleError> {
        let [Value::Storage(storage), offset, Value::Tuple(shape), Value::Tuple(stride), ..] = args
        else {
            return Err(self.malformed(
                "_rebuild_tensor arguments are not (storage, offset, size, stride, ...)",
            ));
        };
        let Some(dtype) = dtype.or(storage.dtype) else {
            return Err(self.malformed("untyped storage outside _rebuild_tensor_v3"));
        };
        let shape = self.indices(shape)?;
        let stride = self.indices(stride)?;
        if shape.len() != stride.len() {
            return Err(self.malformed("size and stride differ in length"));
        }
        Ok(Value::Tensor(Tensor {
            dtype,
            storage_key: storage.key.clone(),
            storage_offset: self.index(offset)?,
            shape,
            stride,
        }))
    }

    fn indices(&self, values: &[Value]) -> Result<Vec<usize>, PickleError> {
        values.iter().map(|v| self.index(v)).collect()
    }

    fn index(&self, value: &Value) -> Result<usize, PickleError> {
        match value {
            Value::Int(n) => {
                usize::try_from(*n).map_err(|_| self.malformed(format!("negative size {n}")))
            }
            other => Err(self.malformed(format!("size is a {}", other.kind()))),
        }
    }
}

#[cfg(test)]
mod tests;
