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
}
