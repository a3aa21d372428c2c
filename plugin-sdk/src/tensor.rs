//! Helpers on the WIT `tensor` record.

use crate::{Error, Tensor};

impl Tensor {
    /// Creates a tensor after checking that `data` holds `product(shape)`
    /// values.
    ///
    /// # Errors
    ///
    /// Fails if the lengths disagree.
    pub fn new(shape: Vec<u32>, data: Vec<f32>) -> Result<Self, Error> {
        let tensor = Self { shape, data };
        let expected = tensor.element_count();
        if expected != Some(tensor.data.len()) {
            return Err(Error::Shape {
                what: format!("a tensor of {} values", tensor.data.len()),
                found: tensor.shape,
                expected: "a shape whose product is the number of values".into(),
            });
        }
        Ok(tensor)
    }

    /// Returns `product(shape)`, or `None` if it overflows `usize`.
    pub fn element_count(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |count, &dim| count.checked_mul(dim as usize))
    }

    /// Returns the rows of a 2-D tensor, such as the per-image logits of a
    /// `[batch, classes]` result.
    ///
    /// # Errors
    ///
    /// Fails if the tensor is not 2-D or its data does not match its shape;
    /// `what` names the tensor in the message.
    pub fn rows(&self, what: &str) -> Result<std::slice::ChunksExact<'_, f32>, Error> {
        let [rows, columns] = self.shape[..] else {
            return Err(self.shape_error(what, "2 dimensions"));
        };
        let (rows, columns) = (rows as usize, columns as usize);
        if columns == 0 || rows.checked_mul(columns) != Some(self.data.len()) {
            return Err(self.shape_error(
                what,
                &format!("non-empty rows holding all {} values", self.data.len()),
            ));
        }
        Ok(self.data.chunks_exact(columns))
    }

    /// Returns the items of a batch: the tensor split along its first
    /// dimension, such as the per-image input gradients of a
    /// `[batch, channels, height, width]` result.
    ///
    /// # Errors
    ///
    /// Fails if the tensor has no dimension, an item holds no value, or the
    /// data does not match the shape; `what` names the tensor in the message.
    pub fn items(&self, what: &str) -> Result<std::slice::ChunksExact<'_, f32>, Error> {
        let Some((&items, item_shape)) = self.shape.split_first() else {
            return Err(self.shape_error(what, "at least 1 dimension"));
        };
        let item_len = item_shape
            .iter()
            .try_fold(1usize, |len, &dim| len.checked_mul(dim as usize));
        match item_len {
            Some(len) if len > 0 && (items as usize).checked_mul(len) == Some(self.data.len()) => {
                Ok(self.data.chunks_exact(len))
            }
            _ => Err(self.shape_error(
                what,
                &format!("non-empty items holding all {} values", self.data.len()),
            )),
        }
    }

    pub(crate) fn shape_error(&self, what: &str, expected: &str) -> Error {
        Error::Shape {
            what: what.to_owned(),
            found: self.shape.clone(),
            expected: expected.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
        assert!(Tensor::new(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::new(vec![u32::MAX, u32::MAX, u32::MAX], vec![]).is_err());
    }

    #[test]
    fn rows_split_a_batch() {
        let tensor = Tensor {
            shape: vec![2, 3],
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };

        let rows: Vec<&[f32]> = tensor.rows("logits").expect("2-D tensor").collect();

        assert_eq!(rows, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    }

    #[test]
    fn rows_reject_other_shapes() {
        let flat = Tensor {
            shape: vec![6],
            data: vec![0.0; 6],
        };
        let short = Tensor {
            shape: vec![2, 3],
            data: vec![0.0; 5],
        };

        let error = flat.rows("logits").expect_err("1-D tensor");
        assert!(error.to_string().contains("logits"), "{error}");
        assert!(short.rows("logits").is_err());
    }

    #[test]
    fn items_split_along_the_first_dimension() {
        let tensor = Tensor {
            shape: vec![2, 1, 2, 2],
            data: (0..8).map(|v| v as f32).collect(),
        };

        let items: Vec<&[f32]> = tensor.items("gradients").expect("4-D tensor").collect();

        assert_eq!(items, [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]);
    }

    #[test]
    fn items_reject_empty_or_short_tensors() {
        let scalar = Tensor {
            shape: vec![],
            data: vec![1.0],
        };
        let empty_items = Tensor {
            shape: vec![2, 0],
            data: vec![],
        };
        let short = Tensor {
            shape: vec![2, 3],
            data: vec![0.0; 5],
        };

        let error = scalar.items("gradients").expect_err("no dimension");
        assert!(error.to_string().contains("gradients"), "{error}");
        assert!(empty_items.items("gradients").is_err());
        assert!(short.items("gradients").is_err());
    }
}
