//! Small readers and builders for ONNX protobuf messages.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto::{self, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::shapes::{Dim, Shape};

/// `TensorProto.DataType` of float32.
pub(crate) const FLOAT: i32 = DataType::FLOAT as i32;
/// `TensorProto.DataType` of int64.
pub(crate) const INT64: i32 = DataType::INT64 as i32;
/// `TensorProto.DataType` of bool.
pub(crate) const BOOL: i32 = DataType::BOOL as i32;

/// Tells whether a `TensorProto.DataType` is a floating-point type: values of
/// such a type carry gradients, though the rules handle float32 only.
pub(crate) fn is_floating(elem_type: i32) -> bool {
    [
        DataType::FLOAT,
        DataType::FLOAT16,
        DataType::DOUBLE,
        DataType::BFLOAT16,
        DataType::FLOAT8E4M3FN,
        DataType::FLOAT8E4M3FNUZ,
        DataType::FLOAT8E5M2,
        DataType::FLOAT8E5M2FNUZ,
    ]
    .iter()
    .any(|&t| t as i32 == elem_type)
}

/// Names a `TensorProto.DataType` for messages.
pub(crate) fn type_name(elem_type: i32) -> String {
    let name = match elem_type {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        17..=20 => "float8",
        _ => return format!("data type {elem_type}"),
    };
    format!("{name} ({elem_type})")
}

/// Names a node in messages by its name, or by its first output when unnamed.
pub(crate) fn node_label(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        return node.name.clone();
    }
    node.output.first().cloned().unwrap_or_default()
}

fn attribute<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(crate) fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    attribute(node, name).map(|a| a.i)
}

pub(crate) fn attr_float(node: &NodeProto, name: &str) -> Option<f32> {
    attribute(node, name).map(|a| a.f)
}

pub(crate) fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attribute(node, name).map(|a| a.ints.clone())
}

pub(crate) fn attr_string(node: &NodeProto, name: &str) -> Option<String> {
    attribute(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

pub(crate) fn attr_tensor<'n>(node: &'n NodeProto, name: &str) -> Option<&'n TensorProto> {
    attribute(node, name).and_then(|a| a.t.as_ref())
}

/// Returns the input at `index`, or `None` when it is absent or the empty name.
pub(crate) fn optional_input(node: &NodeProto, index: usize) -> Option<&str> {
    node.input
        .get(index)
        .map(String::as_str)
        .filter(|name| !name.is_empty())
}

pub(crate) fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        type_: AttributeType::INT.into(),
        i: value,
        ..Default::default()
    }
}

pub(crate) fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        type_: AttributeType::INTS.into(),
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn float_attr(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        type_: AttributeType::FLOAT.into(),
        f: value,
        ..Default::default()
    }
}

pub(crate) fn string_attr(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        type_: AttributeType::STRING.into(),
        s: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub(crate) fn tensor_attr(name: &str, value: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        type_: AttributeType::TENSOR.into(),
        t: Some(value).into(),
        ..Default::default()
    }
}

/// The values of a constant tensor, converted to the two element types gradient rules use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

/// A constant tensor read from an initializer or a `Constant` node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Constant {
    pub dims: Vec<i64>,
    pub values: Values,
}

impl Constant {
    pub fn ints(&self) -> Option<Vec<i64>> {
        match &self.values {
            Values::Int(v) => Some(v.clone()),
            Values::Float(_) => None,
        }
    }

    pub fn floats(&self) -> Option<Vec<f32>> {
        match &self.values {
            Values::Float(v) => Some(v.clone()),
            Values::Int(v) => Some(v.iter().map(|&x| x as f32).collect()),
        }
    }
}

/// Reads a tensor's values, or `None` for external data and element types that no
/// gradient rule reads (the caller then falls back to a run-time construction).
pub(crate) fn read_tensor(tensor: &TensorProto) -> Option<Constant> {
    if !tensor.external_data.is_empty() {
        return None;
    }
    let dims = tensor.dims.clone();
    let raw = &tensor.raw_data;
    let values = match tensor.data_type {
        t if t == FLOAT => Values::Float(if raw.is_empty() {
            tensor.float_data.clone()
        } else {
            le_chunks::<4>(raw).map(f32::from_le_bytes).collect()
        }),
        t if t == DataType::DOUBLE as i32 => Values::Float(if raw.is_empty() {
            tensor.double_data.iter().map(|&x| x as f32).collect()
        } else {
            le_chunks::<8>(raw)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect()
        }),
        t if t == INT64 => Values::Int(if raw.is_empty() {
            tensor.int64_data.clone()
        } else {
            le_chunks::<8>(raw).map(i64::from_le_bytes).collect()
        }),
        t if t == DataType::INT32 as i32 => Values::Int(if raw.is_empty() {
            tensor.int32_data.iter().map(|&x| i64::from(x)).collect()
        } else {
            le_chunks::<4>(raw)
                .map(|b| i64::from(i32::from_le_bytes(b)))
                .collect()
        }),
        _ => return None,
    };
    let expected = crate::shapes::checked_product(&dims)?;
    let found = match &values {
        Values::Float(v) => v.len(),
        Values::Int(v) => v.len(),
    };
    (usize::try_from(expected).ok() == Some(found)).then_some(Constant { dims, values })
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|chunk| {
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(chunk);
        bytes
    })
}

/// Reads the value of a `Constant` node, in any of its attribute forms.
pub(crate) fn read_constant_node(node: &NodeProto) -> Option<Constant> {
    if let Some(t) = attr_tensor(node, "value") {
        return read_tensor(t);
    }
    let a = node.attribute.first()?;
    match a.name.as_str() {
        "value_float" => Some(Constant {
            dims: vec![],
            values: Values::Float(vec![a.f]),
        }),
        "value_floats" => Some(Constant {
            dims: vec![a.floats.len() as i64],
            values: Values::Float(a.floats.clone()),
        }),
        "value_int" => Some(Constant {
            dims: vec![],
            values: Values::Int(vec![a.i]),
        }),
        "value_ints" => Some(Constant {
            dims: vec![a.ints.len() as i64],
            values: Values::Int(a.ints.clone()),
        }),
        _ => None,
    }
}

pub(crate) fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub(crate) fn int_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: INT64,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// Reads the element type and shape recorded in a value info of a tensor.
pub(crate) fn tensor_type(info: &ValueInfoProto) -> Option<(i32, Option<Shape>)> {
    let Some(TypeValue::TensorType(t)) = info.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        return None;
    };
    let shape = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(v)) if *v >= 0 => Dim::Fixed(*v),
                Some(dimension::Value::DimParam(p)) if !p.is_empty() => Dim::Param(p.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    Some((t.elem_type, shape))
}

/// Builds a value info for a tensor of `elem_type`, with `shape` when known.
pub(crate) fn value_info(name: &str, elem_type: i32, shape: Option<&Shape>) -> ValueInfoProto {
    let shape = shape.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: match d {
                    Dim::Fixed(v) => Some(dimension::Value::DimValue(*v)),
                    Dim::Param(p) => Some(dimension::Value::DimParam(p.clone())),
                    Dim::Unknown => None,
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    let tensor = type_proto::Tensor {
        elem_type,
        shape: shape.into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.to_owned(),
        type_: Some(TypeProto {
            value: Some(TypeValue::TensorType(tensor)),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}
