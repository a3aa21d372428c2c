//! Appends gradient nodes and constants to the derived graph.
//!
//! The helpers here hide the operator forms that changed between opsets (axes
//! as attributes before opset 13, as inputs after), so gradient rules read the
//! same for every opset.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{AttributeProto, NodeProto, TensorProto};

use crate::proto::{float_tensor, int_attr, int_tensor, ints_attr, tensor_attr};

#[derive(Debug)]
pub(crate) struct Emitter {
    pub opset: i64,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    used: HashSet<String>,
    counter: usize,
    float_scalars: HashMap<u32, String>,
    int_vectors: HashMap<Vec<i64>, String>,
    shapes: HashMap<String, String>,
}

impl Emitter {
    /// Starts an emitter that avoids every name in `used`.
    pub fn new(opset: i64, used: HashSet<String>) -> Self {
        Emitter {
            opset,
            nodes: Vec::new(),
            initializers: Vec::new(),
            used,
            counter: 0,
            float_scalars: HashMap::new(),
            int_vectors: HashMap::new(),
            shapes: HashMap::new(),
        }
    }

    /// A tensor or node name not used anywhere in the graph, readable as `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("grad/{hint}/{}", self.counter);
            if self.used.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Reserves an exact name if it is free, else a fresh one built from it.
    pub fn reserve(&mut self, wanted: &str) -> String {
        if self.used.insert(wanted.to_owned()) {
            return wanted.to_owned();
        }
        self.fresh(wanted)
    }

    /// Appends a node with one output and returns the output's name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let output = self.fresh(op_type);
        self.op_into(op_type, inputs, attributes, &[output.as_str()]);
        output
    }

    /// Appends a node whose outputs are the given names.
    pub fn op_into(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        outputs: &[&str],
    ) {
        let name = self.fresh(&format!("{op_type}_node"));
        self.nodes.push(NodeProto {
            name,
            op_type: op_type.to_owned(),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            attribute: attributes,
            ..Default::default()
        });
    }

    pub fn float_constant(&mut self, hint: &str, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(float_tensor(&name, dims, values));
        name
    }

    /// A float32 scalar initializer, shared by every use of the same value.
    pub fn scalar(&mut self, value: f32) -> String {
        if let Some(name) = self.float_scalars.get(&value.to_bits()) {
            return name.clone();
        }
        let name = self.fresh("scalar");
        self.initializers.push(float_tensor(&name, &[], &[value]));
        self.float_scalars.insert(value.to_bits(), name.clone());
        name
    }

    /// A 1-D int64 initializer, shared by every use of the same values.
    pub fn ints(&mut self, values: &[i64]) -> String {
        if let Some(name) = self.int_vectors.get(values) {
            return name.clone();
        }
        let name = self.fresh("ints");
        self.initializers
            .push(int_tensor(&name, &[values.len() as i64], values));
        self.int_vectors.insert(values.to_vec(), name.clone());
        name
    }

    /// An int64 scalar initializer.
    pub fn int_scalar(&mut self, value: i64) -> String {
        let name = self.fresh("int");
        self.initializers.push(int_tensor(&name, &[], &[value]));
        name
    }

    /// The run-time shape of `tensor`, computed once per tensor.
    pub fn shape(&mut self, tensor: &str) -> String {
        if let Some(name) = self.shapes.get(tensor) {
            return name.clone();
        }
        let name = self.op("Shape", &[tensor], vec![]);
        self.shapes.insert(tensor.to_owned(), name.clone());
        name
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }

    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }

    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b], vec![])
    }

    pub fn neg(&mut self, a: &str) -> String {
        self.op("Neg", &[a], vec![])
    }

    pub fn scale(&mut self, a: &str, factor: f32) -> String {
        if factor == 1.0 {
            return a.to_owned();
        }
        let s = self.scalar(factor);
        self.mul(a, &s)
    }

    /// A float32 0/1 mask from a boolean tensor.
    pub fn float_mask(&mut self, condition: &str) -> String {
        self.op(
            "Cast",
            &[condition],
            vec![int_attr("to", crate::proto::FLOAT as i64)],
        )
    }

    pub fn reshape(&mut self, x: &str, shape: &str) -> String {
        self.op("Reshape", &[x, shape], vec![])
    }

    /// Reshapes `x` to the run-time shape of `like`.
    pub fn reshape_like(&mut self, x: &str, like: &str) -> String {
        let shape = self.shape(like);
        self.reshape(x, &shape)
    }

    pub fn flatten_1d(&mut self, x: &str) -> String {
        let shape = self.ints(&[-1]);
        self.reshape(x, &shape)
    }

    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let keep = int_attr("keepdims", i64::from(keepdims));
        if self.opset >= 13 {
            let axes = self.ints(axes);
            self.op("ReduceSum", &[x, &axes], vec![keep])
        } else {
            self.op("ReduceSum", &[x], vec![ints_attr("axes", axes), keep])
        }
    }

    pub fn reduce_mean(&mut self, x: &str, axes: &[i64]) -> String {
        let keep = int_attr("keepdims", 1);
        if self.opset >= 18 {
            let axes = self.ints(axes);
            self.op("ReduceMean", &[x, &axes], vec![keep])
        } else {
            self.op("ReduceMean", &[x], vec![ints_attr("axes", axes), keep])
        }
    }

    /// `ReduceSum` over axes given as a run-time 1-D tensor; an empty tensor sums nothing.
    /// Needs opset 13, which the callers check.
    pub fn reduce_sum_dynamic(&mut self, x: &str, axes: &str) -> String {
        self.op(
            "ReduceSum",
            &[x, axes],
            vec![int_attr("keepdims", 1), int_attr("noop_with_empty_axes", 1)],
        )
    }

    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let axes = self.ints(axes);
            self.op("Unsqueeze", &[x, &axes], vec![])
        } else {
            self.op("Unsqueeze", &[x], vec![ints_attr("axes", axes)])
        }
    }

    /// `Slice` with constant starts and axes and a run-time `ends` tensor.
    pub fn slice(&mut self, x: &str, starts: &str, ends: &str, axes: &str) -> String {
        self.op("Slice", &[x, starts, ends, axes], vec![])
    }

    /// A float32 tensor of zeros with the run-time shape given by `shape`.
    pub fn zeros_of_shape(&mut self, shape: &str) -> String {
        let zero = float_tensor("", &[1], &[0.0]);
        self.op(
            "ConstantOfShape",
            &[shape],
            vec![tensor_attr("value", zero)],
        )
    }

    /// An int64 tensor of `value`s with the run-time shape given by `shape`.
    pub fn int_fill(&mut self, shape: &str, value: i64) -> String {
        let fill = int_tensor("", &[1], &[value]);
        self.op(
            "ConstantOfShape",
            &[shape],
            vec![tensor_attr("value", fill)],
        )
    }

    pub fn concat(&mut self, inputs: &[&str], axis: i64) -> String {
        self.op("Concat", inputs, vec![int_attr("axis", axis)])
    }

    /// The number of elements of `x` as a 1-D int64 tensor of length one.
    pub fn size_1d(&mut self, x: &str) -> String {
        let size = self.op("Size", &[x], vec![]);
        let one = self.ints(&[1]);
        self.reshape(&size, &one)
    }

    /// The dims of `x` from `start` on, as a run-time 1-D tensor.
    pub fn shape_tail(&mut self, x: &str, start: i64) -> String {
        let shape = self.shape(x);
        let starts = self.ints(&[start]);
        let ends = self.ints(&[i64::MAX]);
        let axes = self.ints(&[0]);
        self.slice(&shape, &starts, &ends, &axes)
    }
}
