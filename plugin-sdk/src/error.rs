//! The error a render ends with.

use crate::__bindings::picasso::plugin::model::ModelError;

/// The reason a render failed. The host shows the message (its `Display` form) to
/// the user, so each variant names the value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `render` read a setting that `describe` does not declare.
    #[error("setting `{name}` is missing; declare it in `describe`")]
    MissingSetting {
        /// The setting's name.
        name: String,
    },

    /// A setting contains a different kind of value than the accessor reads.
    #[error("setting `{name}` is {found}, expected {expected}")]
    SettingKind {
        /// The setting's name.
        name: String,
        /// The kind the accessor reads, such as "an integer".
        expected: &'static str,
        /// The kind the setting holds.
        found: &'static str,
    },

    /// A setting's value fits its declared kind and range but not this
    /// image or model, such as a window larger than the input frame.
    #[error("setting `{name}` is invalid: {reason}")]
    InvalidSetting {
        /// The setting's name.
        name: String,
        /// The problem and the values that would fit.
        reason: String,
    },

    /// A call into the host's model failed.
    #[error("model call `{call}` failed: {}", describe_model_error(.source))]
    Model {
        /// The model function, such as `logits`.
        call: &'static str,
        /// The host's reason.
        source: ModelError,
    },

    /// The host or the plugin produced data of an unexpected shape.
    #[error("{what} has shape {found:?}, expected {expected}")]
    Shape {
        /// The value at fault, such as "the logits of `logits`".
        what: String,
        /// Its shape.
        found: Vec<u32>,
        /// The shape it should have, in words.
        expected: String,
    },

    /// Any other failure, with a message for the user.
    #[error("{0}")]
    Message(String),
}

impl Error {
    /// Creates an [`Error::InvalidSetting`] for the setting `name`.
    pub fn invalid_setting(name: &str, reason: impl Into<String>) -> Self {
        Self::InvalidSetting {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    /// Creates an [`Error::Message`] from any message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::Message(message.into())
    }

    pub(crate) fn model(call: &'static str) -> impl FnOnce(ModelError) -> Self {
        move |source| Self::Model { call, source }
    }
}

// The generated `Display` of `ModelError` is its `Debug` form; users read
// this text, so it gets words.
fn describe_model_error(error: &ModelError) -> String {
    match error {
        ModelError::InvalidArgument(message) => format!("invalid argument: {message}"),
        ModelError::Unsupported(message) => format!("unsupported: {message}"),
        ModelError::LimitExceeded(message) => format!("limit exceeded: {message}"),
        ModelError::Failed(message) => format!("model run failed: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_error_message_names_call_and_reason() {
        let error = Error::model("logits")(ModelError::LimitExceeded(
            "the render's budget of 100 images is spent".into(),
        ));

        assert_eq!(
            error.to_string(),
            "model call `logits` failed: limit exceeded: the render's budget of 100 images is spent"
        );
    }

    #[test]
    fn setting_errors_name_the_setting() {
        let missing = Error::MissingSetting {
            name: "window".into(),
        };
        let invalid = Error::invalid_setting("window", "300 is larger than the 224 x 224 frame");

        assert!(missing.to_string().contains("`window`"), "{missing}");
        assert!(invalid.to_string().contains("`window`"), "{invalid}");
        assert!(invalid.to_string().contains("300"), "{invalid}");
    }
}
