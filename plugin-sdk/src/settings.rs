//! Typed access to the setting values passed to `render`.

use crate::__bindings::Setting;
use crate::{Error, SettingValue};

/// The setting values of one render, one per setting that
/// [`crate::Visualization::describe`] declares.
///
/// The host has already checked each value against its declared kind and
/// range, so the accessors fail only when the plugin reads a setting it
/// does not declare, or reads it as the wrong kind. Their errors name the
/// setting.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: Vec<Setting>,
}

impl Settings {
    /// Creates settings from `(name, value)` pairs, as a test would pass
    /// them to [`crate::Visualization::render`].
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, SettingValue)>) -> Self {
        let values = pairs
            .into_iter()
            .map(|(name, value)| Setting {
                name: name.to_owned(),
                value,
            })
            .collect();
        Self { values }
    }

    pub(crate) fn new(values: Vec<Setting>) -> Self {
        Self { values }
    }

    /// Returns the raw value of the setting `name`, if present.
    pub fn get(&self, name: &str) -> Option<&SettingValue> {
        self.values
            .iter()
            .find(|setting| setting.name == name)
            .map(|setting| &setting.value)
    }

    /// Reads an integer setting.
    ///
    /// # Errors
    ///
    /// Fails if the setting is missing or not an integer.
    pub fn integer(&self, name: &str) -> Result<i64, Error> {
        match self.require(name)? {
            SettingValue::Integer(value) => Ok(*value),
            other => Err(kind_error(name, "an integer", other)),
        }
    }

    /// Reads an integer setting converted to `T`, such as `u32` for a pixel
    /// count or `usize` for a length.
    ///
    /// # Errors
    ///
    /// Fails if the setting is missing, not an integer, or does not fit `T`
    /// (a declared range that allows negative values for a `u32`, say).
    pub fn integer_as<T: TryFrom<i64>>(&self, name: &str) -> Result<T, Error> {
        let value = self.integer(name)?;
        T::try_from(value).map_err(|_| {
            Error::invalid_setting(
                name,
                format!(
                    "{value} does not fit `{}`; narrow the declared range",
                    std::any::type_name::<T>()
                ),
            )
        })
    }

    /// Reads a float setting.
    ///
    /// # Errors
    ///
    /// Fails if the setting is missing or not a float.
    pub fn float(&self, name: &str) -> Result<f64, Error> {
        match self.require(name)? {
            SettingValue::Float(value) => Ok(*value),
            other => Err(kind_error(name, "a float", other)),
        }
    }

    /// Reads a boolean setting.
    ///
    /// # Errors
    ///
    /// Fails if the setting is missing or not a boolean.
    pub fn boolean(&self, name: &str) -> Result<bool, Error> {
        match self.require(name)? {
            SettingValue::Boolean(value) => Ok(*value),
            other => Err(kind_error(name, "a boolean", other)),
        }
    }

    /// Reads a choice setting: one of the options its spec lists.
    ///
    /// # Errors
    ///
    /// Fails if the setting is missing or not a choice.
    pub fn choice(&self, name: &str) -> Result<&str, Error> {
        match self.require(name)? {
            SettingValue::Choice(value) => Ok(value),
            other => Err(kind_error(name, "a choice", other)),
        }
    }

    /// Reads a class setting: `Some(index)` for a class the user picked,
    /// `None` for the plugin's default (usually the top-1 class).
    ///
    /// # Errors
    ///
    /// Fails if the setting is missing or not a class.
    pub fn class(&self, name: &str) -> Result<Option<u32>, Error> {
        match self.require(name)? {
            SettingValue::Class(value) => Ok(*value),
            other => Err(kind_error(name, "a class", other)),
        }
    }

    /// Reads a tensor setting: `Some(name)` of an inspectable tensor the user
    /// picked, `None` for the plugin's own default.
    ///
    /// # Errors
    ///
    /// Fails if the setting is missing or not a tensor.
    pub fn tensor(&self, name: &str) -> Result<Option<&str>, Error> {
        match self.require(name)? {
            SettingValue::Tensor(value) => Ok(value.as_deref()),
            other => Err(kind_error(name, "a tensor", other)),
        }
    }

    fn require(&self, name: &str) -> Result<&SettingValue, Error> {
        self.get(name).ok_or_else(|| Error::MissingSetting {
            name: name.to_owned(),
        })
    }
}

fn kind_error(name: &str, expected: &'static str, found: &SettingValue) -> Error {
    let found = match found {
        SettingValue::Choice(_) => "a choice",
        SettingValue::Integer(_) => "an integer",
        SettingValue::Float(_) => "a float",
        SettingValue::Boolean(_) => "a boolean",
        SettingValue::Class(_) => "a class",
        SettingValue::Tensor(_) => "a tensor",
    };
    Error::SettingKind {
        name: name.to_owned(),
        expected,
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::from_pairs([
            ("window", SettingValue::Integer(32)),
            ("offset", SettingValue::Integer(-1)),
            ("sigma", SettingValue::Float(0.5)),
            ("absolute", SettingValue::Boolean(true)),
            ("fill", SettingValue::Choice("mean".into())),
            ("target", SettingValue::Class(Some(281))),
            ("layer", SettingValue::Tensor(None)),
        ])
    }

    #[test]
    fn accessors_read_their_kind() {
        let settings = settings();

        assert_eq!(settings.integer("window").ok(), Some(32));
        assert_eq!(settings.integer_as::<u32>("window").ok(), Some(32));
        assert_eq!(settings.float("sigma").ok(), Some(0.5));
        assert_eq!(settings.boolean("absolute").ok(), Some(true));
        assert_eq!(settings.choice("fill").ok(), Some("mean"));
        assert_eq!(settings.class("target").ok(), Some(Some(281)));
        assert_eq!(settings.tensor("layer").ok(), Some(None));
    }

    #[test]
    fn missing_setting_is_named() {
        let error = settings().integer("stride").expect_err("no `stride`");

        assert!(matches!(&error, Error::MissingSetting { name } if name == "stride"));
        assert!(error.to_string().contains("`stride`"), "{error}");
    }

    #[test]
    fn wrong_kind_names_setting_and_kinds() {
        let error = settings()
            .float("window")
            .expect_err("integer read as float");

        assert_eq!(
            error.to_string(),
            "setting `window` is an integer, expected a float"
        );
    }

    #[test]
    fn integer_that_does_not_fit_is_rejected() {
        let error = settings()
            .integer_as::<u32>("offset")
            .expect_err("-1 as u32");

        assert!(error.to_string().contains("`offset`"), "{error}");
        assert!(error.to_string().contains("-1"), "{error}");
    }
}
