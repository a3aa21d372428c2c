//! Builders for the plugin's descriptor and its settings schema.

use std::ops::RangeInclusive;

use crate::{FloatRange, IntegerRange, SettingKind, SettingValue};

/// What the plugin is, as shown in the user interface, and the settings it
/// accepts (WIT `descriptor`).
///
/// Build one with [`Descriptor::new`] and the chained setters, and check it
/// in a unit test with [`Descriptor::validate`].
pub use crate::__bindings::Descriptor;

/// The declaration of one setting: its name, label, help text, accepted
/// values and default (WIT `setting-spec`).
pub use crate::__bindings::SettingSpec;

impl Descriptor {
    /// Creates a descriptor with no description, reference or settings,
    /// which does not need gradients.
    ///
    /// `id` is the stable identifier used in the API (lowercase letters,
    /// digits and `-`), `version` the plugin's semver version (usually
    /// `env!("CARGO_PKG_VERSION")`) and `title` a short title for menus.
    pub fn new(id: &str, version: &str, title: &str) -> Self {
        Self {
            id: id.to_owned(),
            version: version.to_owned(),
            title: title.to_owned(),
            description: String::new(),
            reference: String::new(),
            needs_gradients: false,
            settings: Vec::new(),
        }
    }

    /// Sets the paragraph that explains what the visualization shows and how
    /// to read it.
    pub fn description(mut self, description: &str) -> Self {
        self.description = description.to_owned();
        self
    }

    /// Sets the link to the paper or page that defines the method.
    pub fn reference(mut self, url: &str) -> Self {
        self.reference = url.to_owned();
        self
    }

    /// Declares that `render` calls [`crate::model::gradients`], so the host
    /// hides the plugin for models whose gradients it cannot compute.
    pub fn needs_gradients(mut self, needs_gradients: bool) -> Self {
        self.needs_gradients = needs_gradients;
        self
    }

    /// Appends a setting to the schema.
    pub fn setting(mut self, setting: SettingSpec) -> Self {
        self.settings.push(setting);
        self
    }

    /// Checks the descriptor against the main rules the host applies when it
    /// loads the plugin: identifiers, version syntax, the reference link,
    /// unique setting names, ranges and defaults. The host also limits text
    /// lengths and characters.
    ///
    /// # Errors
    ///
    /// Returns a message naming the first value at fault.
    pub fn validate(&self) -> Result<(), String> {
        check_identifier("plugin id", &self.id)?;
        check_version(&self.version)?;
        if self.title.trim().is_empty() {
            return Err(format!("plugin `{}` has an empty title", self.id));
        }
        let reference = &self.reference;
        let is_link = reference.starts_with("https://") || reference.starts_with("http://");
        if !reference.is_empty() && !is_link {
            return Err(format!(
                "reference `{reference}` is not an http(s) link; use a URL or leave it empty"
            ));
        }

        for (position, setting) in self.settings.iter().enumerate() {
            check_identifier("setting name", &setting.name)?;
            if self.settings[..position]
                .iter()
                .any(|earlier| earlier.name == setting.name)
            {
                return Err(format!("setting `{}` is declared twice", setting.name));
            }
            setting.validate()?;
        }
        Ok(())
    }
}

impl SettingSpec {
    /// Declares a setting that takes one of `options`, shown as a menu.
    pub fn choice(name: &str, label: &str, help: &str, options: &[&str], default: &str) -> Self {
        Self::new(
            name,
            label,
            help,
            SettingKind::Choice(options.iter().map(|&option| option.to_owned()).collect()),
            SettingValue::Choice(default.to_owned()),
        )
    }

    /// Declares a whole-number setting within `range`, bounds included.
    pub fn integer(
        name: &str,
        label: &str,
        help: &str,
        range: RangeInclusive<i64>,
        default: i64,
    ) -> Self {
        let range = IntegerRange {
            min: *range.start(),
            max: *range.end(),
        };
        Self::new(
            name,
            label,
            help,
            SettingKind::Integer(range),
            SettingValue::Integer(default),
        )
    }

    /// Declares a number setting within `range`, bounds included.
    pub fn float(
        name: &str,
        label: &str,
        help: &str,
        range: RangeInclusive<f64>,
        default: f64,
    ) -> Self {
        let range = FloatRange {
            min: *range.start(),
            max: *range.end(),
        };
        Self::new(
            name,
            label,
            help,
            SettingKind::Float(range),
            SettingValue::Float(default),
        )
    }

    /// Declares an on/off setting.
    pub fn boolean(name: &str, label: &str, help: &str, default: bool) -> Self {
        Self::new(
            name,
            label,
            help,
            SettingKind::Boolean,
            SettingValue::Boolean(default),
        )
    }

    /// Declares a setting that picks one of the model's classes. Its default
    /// is `None`, which the plugin reads as its own default target, usually
    /// the top-1 class.
    pub fn class(name: &str, label: &str, help: &str) -> Self {
        Self::new(
            name,
            label,
            help,
            SettingKind::Class,
            SettingValue::Class(None),
        )
    }

    /// Declares a setting that picks one of the model's inspectable tensors.
    /// Its default is `None`, which the plugin reads as its own choice.
    pub fn tensor(name: &str, label: &str, help: &str) -> Self {
        Self::new(
            name,
            label,
            help,
            SettingKind::Tensor,
            SettingValue::Tensor(None),
        )
    }

    fn new(name: &str, label: &str, help: &str, kind: SettingKind, default: SettingValue) -> Self {
        Self {
            name: name.to_owned(),
            label: label.to_owned(),
            help: help.to_owned(),
            kind,
            default,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        match (&self.kind, &self.default) {
            (SettingKind::Choice(options), SettingValue::Choice(default)) => {
                if options.is_empty() {
                    return Err(format!("setting `{name}` has no options"));
                }
                if !options.contains(default) {
                    return Err(format!(
                        "setting `{name}` has default `{default}`, which is not one of {options:?}"
                    ));
                }
            }
            (SettingKind::Integer(range), SettingValue::Integer(default)) => {
                if !(range.min..=range.max).contains(default) {
                    return Err(format!(
                        "setting `{name}` has default {default}, outside {}..={}",
                        range.min, range.max
                    ));
                }
            }
            (SettingKind::Float(range), SettingValue::Float(default)) => {
                if !range.min.is_finite() || !range.max.is_finite() {
                    return Err(format!("setting `{name}` has a non-finite bound"));
                }
                if !(range.min..=range.max).contains(default) {
                    return Err(format!(
                        "setting `{name}` has default {default}, outside {}..={}",
                        range.min, range.max
                    ));
                }
            }
            (SettingKind::Boolean, SettingValue::Boolean(_))
            | (SettingKind::Class, SettingValue::Class(_))
            | (SettingKind::Tensor, SettingValue::Tensor(_)) => {}
            (_, default) => {
                return Err(format!(
                    "setting `{name}` has a default of the wrong kind: {default:?}"
                ));
            }
        }
        Ok(())
    }
}

fn check_identifier(what: &str, value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} `{value}` is invalid; use 1 to 64 lowercase letters, digits and `-`"
        ))
    }
}

fn check_version(version: &str) -> Result<(), String> {
    // The core `MAJOR.MINOR.PATCH` of semver; a pre-release or build suffix
    // after `-` or `+` is allowed.
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |part: &&str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    if parts.len() == 3 && parts.iter().all(numeric) {
        Ok(())
    } else {
        Err(format!(
            "plugin version `{version}` is not semver; use MAJOR.MINOR.PATCH such as `0.1.0`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Descriptor {
        Descriptor::new("occlusion", "0.1.0", "Occlusion")
            .setting(SettingSpec::integer(
                "window",
                "Window",
                "Pixels.",
                1..=512,
                32,
            ))
            .setting(SettingSpec::choice(
                "fill",
                "Fill",
                "Color.",
                &["grey", "black"],
                "grey",
            ))
            .setting(SettingSpec::class("target", "Target", "Class."))
    }

    #[test]
    fn valid_descriptor_passes() {
        assert_eq!(sample().validate(), Ok(()));
    }

    #[test]
    fn builders_fill_kind_and_default() {
        let window = SettingSpec::integer("window", "Window", "Pixels.", 1..=512, 32);

        assert_eq!(
            window.kind,
            SettingKind::Integer(IntegerRange { min: 1, max: 512 })
        );
        assert_eq!(window.default, SettingValue::Integer(32));
    }

    #[test]
    fn invalid_identifiers_are_rejected() {
        let upper = Descriptor::new("Occlusion", "0.1.0", "Occlusion");
        let setting = sample().setting(SettingSpec::boolean("use_abs", "Abs", "Abs.", false));

        assert!(upper.validate().is_err_and(|e| e.contains("`Occlusion`")));
        assert!(setting.validate().is_err_and(|e| e.contains("`use_abs`")));
    }

    #[test]
    fn reference_must_be_a_link() {
        let relative = sample().reference("arxiv.org/abs/1311.2901");

        assert!(relative.validate().is_err_and(|e| e.contains("http(s)")));
        assert_eq!(
            sample()
                .reference("https://arxiv.org/abs/1311.2901")
                .validate(),
            Ok(())
        );
    }

    #[test]
    fn duplicate_setting_is_rejected() {
        let twice = sample().setting(SettingSpec::boolean("window", "Window", "Twice.", true));

        assert!(
            twice
                .validate()
                .is_err_and(|e| e.contains("declared twice"))
        );
    }

    #[test]
    fn out_of_range_defaults_are_rejected() {
        let integer = sample().setting(SettingSpec::integer("k", "K", "Count.", 1..=20, 0));
        let float = sample().setting(SettingSpec::float("s", "S", "Sigma.", 0.0..=1.0, 2.0));
        let choice = sample().setting(SettingSpec::choice("c", "C", "Choice.", &["a"], "b"));

        assert!(
            integer
                .validate()
                .is_err_and(|e| e.contains("outside 1..=20"))
        );
        assert!(float.validate().is_err_and(|e| e.contains("outside 0..=1")));
        assert!(choice.validate().is_err_and(|e| e.contains("`b`")));
    }

    #[test]
    fn version_must_be_semver() {
        for good in ["0.1.0", "1.20.3", "0.1.0-alpha.1", "2.0.0+build5"] {
            assert_eq!(check_version(good), Ok(()), "version {good}");
        }
        for bad in ["", "0.1", "v0.1.0", "0.1.x", "0..1"] {
            assert!(check_version(bad).is_err(), "version {bad:?}");
        }
    }
}
