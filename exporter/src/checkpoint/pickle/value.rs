//! What the unpickler builds: plain values, tensors described (not loaded),
//! and the allowlist of globals a state dict may name.

use super::PickleError;

/// What the unpickler builds: plain data, tensors described (not loaded), allowlisted globals.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// An allowlisted callable, not called until REDUCE interprets it.
    Global(Global),
    /// A persistent id naming a storage entry of the archive.
    Storage(Storage),
    Tensor(Tensor),
}

impl Value {
    /// Python-ish type name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// The globals a state dict may reference. Element types are torch's dtype names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` and friends: a storage of one dtype.
    TypedStorage(&'static str),
    /// `torch.storage.UntypedStorage`: bytes, typed by `_rebuild_tensor_v3`'s dtype argument.
    UntypedStorage,
    /// `torch.float16` and friends, as passed to `_rebuild_tensor_v3`.
    Dtype(&'static str),
}

/// Legacy typed storage classes and the dtype each holds.
const TYPED_STORAGES: [(&str, &str); 12] = [
    ("FloatStorage", "float32"),
    ("HalfStorage", "float16"),
    ("BFloat16Storage", "bfloat16"),
    ("DoubleStorage", "float64"),
    ("LongStorage", "int64"),
    ("IntStorage", "int32"),
    ("ShortStorage", "int16"),
    ("CharStorage", "int8"),
    ("ByteStorage", "uint8"),
    ("BoolStorage", "bool"),
    ("ComplexFloatStorage", "complex64"),
    ("ComplexDoubleStorage", "complex128"),
];

/// dtypes `_rebuild_tensor_v3` may name (those without a legacy storage class, and the rest).
const DTYPES: [&str; 19] = [
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
];

impl Global {
    pub(super) fn resolve(module: &str, name: &str) -> Result<Global, PickleError> {
        let global = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch.storage", "UntypedStorage") => Global::UntypedStorage,
            ("torch", name) => {
                if let Some(&(_, dtype)) = TYPED_STORAGES.iter().find(|(class, _)| *class == name) {
                    Global::TypedStorage(dtype)
                } else if let Some(&dtype) = DTYPES.iter().find(|&&dtype| dtype == name) {
                    Global::Dtype(dtype)
                } else {
                    return Err(PickleError::DisallowedGlobal(format!("{module}.{name}")));
                }
            }
            _ => return Err(PickleError::DisallowedGlobal(format!("{module}.{name}"))),
        };
        Ok(global)
    }
}

/// `('storage', storage_type, key, location, numel)`: the archive entry `data/<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// `None` for an untyped storage.
    pub dtype: Option<&'static str>,
    pub key: String,
}

/// A tensor as `_rebuild_tensor_v2/v3` describes it; offsets and strides count elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// torch dtype name, e.g. `float32`.
    pub dtype: &'static str,
    pub storage_key: String,
    pub storage_offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}
