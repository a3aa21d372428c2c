//! Settings schemas: their JSON form for the API, their validation when a
//! plugin loads, and the validation of user values before a render.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::bindings::{Descriptor, SettingKind, SettingSpec, SettingValue};
use crate::model::Model;
use crate::text::truncate;

/// A plugin's description as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DescriptorJson {
    pub id: String,
    pub version: String,
    pub title: String,
    pub description: String,
    pub reference: String,
    pub needs_gradients: bool,
    pub settings: Vec<SettingJson>,
}

/// One setting of a schema, as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SettingJson {
    pub name: String,
    pub label: String,
    pub help: String,
    pub kind: SettingKindJson,
    pub default: Value,
}

/// The accepted values of a setting, as the API lists them.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SettingKindJson {
    Choice { options: Vec<String> },
    Integer { min: i64, max: i64 },
    Float { min: f64, max: f64 },
    Boolean,
    Class,
    Tensor,
}

impl DescriptorJson {
    /// Converts a descriptor returned by a plugin.
    pub fn from_descriptor(descriptor: &Descriptor) -> DescriptorJson {
        DescriptorJson {
            id: descriptor.id.clone(),
            version: descriptor.version.clone(),
            title: descriptor.title.clone(),
            description: descriptor.description.clone(),
            reference: descriptor.reference.clone(),
            needs_gradients: descriptor.needs_gradients,
            settings: descriptor
                .settings
                .iter()
                .map(|spec| SettingJson {
                    name: spec.name.clone(),
                    label: spec.label.clone(),
                    help: spec.help.clone(),
                    kind: kind_json(&spec.kind),
                    default: value_json(&spec.default),
                })
                .collect(),
        }
    }
}

fn kind_json(kind: &SettingKind) -> SettingKindJson {
    match kind {
        SettingKind::Choice(options) => SettingKindJson::Choice {
            options: options.clone(),
        },
        SettingKind::Integer(range) => SettingKindJson::Integer {
            min: range.min,
            max: range.max,
        },
        SettingKind::Float(range) => SettingKindJson::Float {
            min: range.min,
            max: range.max,
        },
        SettingKind::Boolean => SettingKindJson::Boolean,
        SettingKind::Class => SettingKindJson::Class,
        SettingKind::Tensor => SettingKindJson::Tensor,
    }
}

/// The JSON form of a setting value.
pub fn value_json(value: &SettingValue) -> Value {
    match value {
        SettingValue::Choice(text) => Value::from(text.clone()),
        SettingValue::Integer(n) => Value::from(*n),
        SettingValue::Float(x) => Value::from(*x),
        SettingValue::Boolean(b) => Value::from(*b),
        SettingValue::Class(index) => index.map_or(Value::Null, Value::from),
        SettingValue::Tensor(name) => name.clone().map_or(Value::Null, Value::from),
    }
}

const MAX_TEXT: usize = 4000;

/// Checks a descriptor when its plugin loads, so that a broken schema is a
/// load error and not a failure of every render.
///
/// # Errors
///
/// A message naming the field or setting and what is wrong with it.
pub fn check_descriptor(descriptor: &Descriptor) -> Result<(), String> {
    check_identifier("id", &descriptor.id)?;
    let version = &descriptor.version;
    if version.is_empty() || version.len() > 64 || version.chars().any(char::is_control) {
        return Err(format!(
            "version `{}` must be 1 to 64 characters without control characters, such as \
             `1.0.0`",
            version.escape_debug()
        ));
    }
    for (field, text, max) in [
        ("title", &descriptor.title, 200),
        ("description", &descriptor.description, MAX_TEXT),
        ("reference", &descriptor.reference, 2000),
    ] {
        if text.chars().count() > max {
            return Err(format!("{field} is longer than {max} characters"));
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(format!("{field} contains control characters"));
        }
    }
    if descriptor.title.trim().is_empty() {
        return Err("title is empty".to_owned());
    }
    let reference = &descriptor.reference;
    let is_link = reference.starts_with("https://") || reference.starts_with("http://");
    if !(reference.is_empty() || is_link) {
        return Err(format!(
            "reference `{}` must be an http(s) link or empty",
            reference.escape_debug()
        ));
    }
    if descriptor.settings.len() > 64 {
        return Err(format!(
            "{} settings declared; the limit is 64",
            descriptor.settings.len()
        ));
    }
    let mut names = std::collections::HashSet::new();
    for spec in &descriptor.settings {
        check_spec(spec)
            .map_err(|error| format!("setting `{}`: {error}", spec.name.escape_debug()))?;
        if !names.insert(spec.name.as_str()) {
            return Err(format!("setting `{}` is declared twice", spec.name));
        }
    }
    Ok(())
}

fn check_identifier(field: &str, value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{field} `{}` must be 1 to 64 lowercase letters, digits or `-`",
            value.escape_debug()
        ))
    }
}

fn check_spec(spec: &SettingSpec) -> Result<(), String> {
    check_identifier("name", &spec.name)?;
    for (field, text, max) in [("label", &spec.label, 200), ("help", &spec.help, MAX_TEXT)] {
        if text.chars().count() > max {
            return Err(format!("{field} is longer than {max} characters"));
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(format!("{field} contains control characters"));
        }
    }
    match (&spec.kind, &spec.default) {
        (SettingKind::Choice(options), SettingValue::Choice(default)) => {
            if options.is_empty() || options.len() > 256 {
                return Err("a choice needs 1 to 256 options".to_owned());
            }
            // Options travel in URLs, forms and logs, where control
            // characters either break or spoof the output.
            if let Some(option) = options.iter().find(|o| {
                o.is_empty() || o.chars().count() > 200 || o.chars().any(char::is_control)
            }) {
                return Err(format!(
                    "option `{}` must be 1 to 200 characters without control characters",
                    option.escape_debug()
                ));
            }
            if !options.contains(default) {
                return Err(format!("default `{default}` is not one of the options"));
            }
            Ok(())
        }
        (SettingKind::Integer(range), SettingValue::Integer(default)) => {
            if range.min > range.max || *default < range.min || *default > range.max {
                return Err(format!(
                    "default {default} is outside the range {}..={}",
                    range.min, range.max
                ));
            }
            Ok(())
        }
        (SettingKind::Float(range), SettingValue::Float(default)) => {
            let finite = range.min.is_finite() && range.max.is_finite() && default.is_finite();
            if !finite || range.min > range.max || *default < range.min || *default > range.max {
                return Err(format!(
                    "default {default} is outside the range {}..={} or not finite",
                    range.min, range.max
                ));
            }
            Ok(())
        }
        (SettingKind::Boolean, SettingValue::Boolean(_))
        | (SettingKind::Class, SettingValue::Class(None))
        | (SettingKind::Tensor, SettingValue::Tensor(None)) => Ok(()),
        (SettingKind::Class, SettingValue::Class(Some(_))) => {
            Err("a class default must be none (the top-1 class)".to_owned())
        }
        (SettingKind::Tensor, SettingValue::Tensor(Some(_))) => {
            Err("a tensor default must be none (the plugin's choice)".to_owned())
        }
        _ => Err("the default value's kind does not match the setting's kind".to_owned()),
    }
}

/// Settings resolved for a render: the values for the plugin in schema
/// order, and their JSON form for the manifest.
pub type Resolved = (Vec<(String, SettingValue)>, BTreeMap<String, Value>);

/// Resolves user settings against a schema for the given models: fills in
/// defaults, rejects unknown names and values that do not fit.
///
/// Returns the values for the plugin and their JSON form for the manifest.
///
/// # Errors
///
/// A message naming the setting, the value and what is accepted.
pub fn resolve(
    plugin: &str,
    specs: &[SettingSpec],
    values: &BTreeMap<String, Value>,
    models: &[&Model],
) -> Result<Resolved, String> {
    if let Some(unknown) = values.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
        let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "unknown setting `{}` for plugin `{plugin}`; its settings are: {}",
            shorten(unknown),
            known.join(", ")
        ));
    }
    let mut resolved = Vec::with_capacity(specs.len());
    let mut json = BTreeMap::new();
    for spec in specs {
        let value = match values.get(&spec.name) {
            None => spec.default.clone(),
            Some(given) => parse_value(spec, given, models).map_err(|error| {
                format!(
                    "invalid value {} for setting `{}` of plugin `{plugin}`: {error}",
                    shorten(&given.to_string()),
                    spec.name
                )
            })?,
        };
        json.insert(spec.name.clone(), value_json(&value));
        resolved.push((spec.name.clone(), value));
    }
    Ok((resolved, json))
}

fn parse_value(
    spec: &SettingSpec,
    given: &Value,
    models: &[&Model],
) -> Result<SettingValue, String> {
    match &spec.kind {
        SettingKind::Choice(options) => match given.as_str() {
            Some(text) if options.iter().any(|o| o == text) => {
                Ok(SettingValue::Choice(text.to_owned()))
            }
            _ => Err(format!("expected one of: {}", options.join(", "))),
        },
        SettingKind::Integer(range) => match given.as_i64() {
            Some(n) if n >= range.min && n <= range.max => Ok(SettingValue::Integer(n)),
            _ => Err(format!(
                "expected a whole number from {} to {}",
                range.min, range.max
            )),
        },
        SettingKind::Float(range) => match given.as_f64() {
            Some(x) if x.is_finite() && x >= range.min && x <= range.max => {
                Ok(SettingValue::Float(x))
            }
            _ => Err(format!(
                "expected a number from {} to {}",
                range.min, range.max
            )),
        },
        SettingKind::Boolean => given
            .as_bool()
            .map(SettingValue::Boolean)
            .ok_or_else(|| "expected true or false".to_owned()),
        SettingKind::Class => parse_class(given, models),
        SettingKind::Tensor => parse_tensor(given, models),
    }
}

fn parse_class(given: &Value, models: &[&Model]) -> Result<SettingValue, String> {
    let labels: Vec<(&str, &[String])> = models
        .iter()
        .map(|model| (model.id(), model.labels.as_slice()))
        .collect();
    class_value(given, &labels).map(SettingValue::Class)
}

/// Reads a class setting against the labels of each chosen model (id and
/// labels): `null`, a class index valid for every model, or a label that
/// names the same index in every model.
fn class_value(given: &Value, models: &[(&str, &[String])]) -> Result<Option<u32>, String> {
    let index = match given {
        Value::Null => return Ok(None),
        Value::String(label) => class_of_label(label, models)?,
        // JSON clients may write a whole number as 7.0.
        _ => whole_number(given).ok_or_else(|| {
            "expected a class index, a class label, or null for the plugin's default \
             classes (its top-k); the indices and labels are under `labels` in GET /api/models"
                .to_owned()
        })?,
    };
    for (id, labels) in models {
        if index >= labels.len() as u64 {
            return Err(format!(
                "model `{id}` has classes 0 to {}",
                labels.len().saturating_sub(1)
            ));
        }
    }
    u32::try_from(index)
        .map(Some)
        .map_err(|_| "class index too large".to_owned())
}

/// Finds the index of `label` in every model's labels, and checks that it is
/// the same in all of them. Surrounding spaces are ignored. A label that
/// matches one class exactly wins. Otherwise case is ignored, and a label
/// that then matches several classes is an error rather than a guess.
fn class_of_label(label: &str, models: &[(&str, &[String])]) -> Result<u64, String> {
    let label = label.trim();
    let short_label = shorten(label);
    if label.is_empty() {
        return Err("expected a class index or a non-empty class label".to_owned());
    }
    let mut found: Option<(u64, &str)> = None;
    for (id, labels) in models {
        let index = label_index(label, labels).map_err(|matches| match matches.as_slice() {
            [] => format!(
                "model `{id}` has no class labeled `{short_label}`; give a label from `labels` in \
                 GET /api/models or the model's labels file, or a class index"
            ),
            _ => format!(
                "`{short_label}` matches classes {} of model `{id}`, ignoring case; give the \
                 class index",
                matches
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })? as u64;
        match found {
            Some((first, first_id)) if first != index => {
                return Err(format!(
                    "`{short_label}` is class {first} of model `{first_id}` but class {index} of \
                     model `{id}`; give a class index, or choose the models one at a time"
                ));
            }
            Some(_) => {}
            None => found = Some((index, id)),
        }
    }
    found
        .map(|(index, _)| index)
        .ok_or_else(|| "no model is chosen".to_owned())
}

/// Returns the index of the one label equal to `label`, or else of the one
/// equal to it ignoring case. When there is no such single label, the error
/// lists every index that matched ignoring case.
fn label_index(label: &str, labels: &[String]) -> Result<usize, Vec<usize>> {
    let exact: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i].trim() == label)
        .collect();
    if let [index] = exact.as_slice() {
        return Ok(*index);
    }
    let lower = label.to_lowercase();
    let folded: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i].trim().to_lowercase() == lower)
        .collect();
    match folded.as_slice() {
        [index] => Ok(*index),
        _ => Err(folded),
    }
}

/// Reads a non-negative whole number, written as an integer or as a float
/// without a fraction.
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 2f64.powi(53))
            .map(|x| x as u64)
    })
}

/// The maximum number of characters of a request value that a settings
/// error repeats, so that a huge value does not come back as a huge error.
const SHOWN_CHARS: usize = 80;

/// Cuts a request value to [`SHOWN_CHARS`] characters for an error message.
fn shorten(text: &str) -> String {
    truncate(text, SHOWN_CHARS)
}

fn parse_tensor(given: &Value, models: &[&Model]) -> Result<SettingValue, String> {
    if given.is_null() {
        return Ok(SettingValue::Tensor(None));
    }
    let Some(name) = given.as_str() else {
        return Err("expected a tensor name or null for the plugin's default".to_owned());
    };
    for model in models {
        if !model.has_tensor(name) {
            return Err(format!(
                "model `{}` has no inspectable tensor `{}`; GET /api/models lists them",
                model.id(),
                shorten(name)
            ));
        }
    }
    Ok(SettingValue::Tensor(Some(name.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    #[test]
    fn class_from_index_label_or_null() {
        let digits = labels(&["0", "1", "2"]);
        let models = [("digits", digits.as_slice())];
        assert_eq!(class_value(&Value::Null, &models), Ok(None));
        assert_eq!(class_value(&json!(2), &models), Ok(Some(2)));
        assert_eq!(class_value(&json!("1"), &models), Ok(Some(1)));
        assert_eq!(class_value(&json!(" 2 "), &models), Ok(Some(2)));
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let digits = labels(&["0", "1"]);
        let models = [("digits", digits.as_slice())];
        let long = "x".repeat(10_000);
        let error = class_value(&json!(long), &models).expect_err("unknown label");
        assert!(error.len() < 400, "{} characters: {error}", error.len());
        assert!(error.contains('…'), "{error}");
    }

    #[test]
    fn class_label_exact_or_ambiguous() {
        let odd = labels(&["Café", "café", "cat", "cat", "ÉCLAIR", ""]);
        let models = [("odd", odd.as_slice())];
        assert_eq!(class_value(&json!("café"), &models), Ok(Some(1)));
        assert_eq!(class_value(&json!("éclair"), &models), Ok(Some(4)));
        let ambiguous = class_value(&json!("CAFÉ"), &models).expect_err("two matches");
        assert!(ambiguous.contains("classes 0, 1"), "{ambiguous}");
        let duplicate = class_value(&json!("cat"), &models).expect_err("two equal labels");
        assert!(duplicate.contains("classes 2, 3"), "{duplicate}");
        let empty = class_value(&json!("  "), &models).expect_err("empty label");
        assert!(empty.contains("non-empty"), "{empty}");
        assert_eq!(class_value(&json!(2.0), &models), Ok(Some(2)));
        assert!(class_value(&json!(2.5), &models).is_err());
    }

    #[test]
    fn class_label_ignores_case() {
        let animals = labels(&["tabby", "Egyptian Mau"]);
        let models = [("animals", animals.as_slice())];
        assert_eq!(class_value(&json!("egyptian mau"), &models), Ok(Some(1)));
    }

    #[test]
    fn class_errors_name_the_value() {
        let digits = labels(&["0", "1", "2"]);
        let shifted = labels(&["x", "0", "1", "2"]);
        let one = [("digits", digits.as_slice())];
        let two = [
            ("digits", digits.as_slice()),
            ("shifted", shifted.as_slice()),
        ];

        let out_of_range = class_value(&json!(3), &one).expect_err("rejected");
        assert!(out_of_range.contains("classes 0 to 2"), "{out_of_range}");
        let unknown = class_value(&json!("seven"), &one).expect_err("rejected");
        assert!(unknown.contains("`seven`"), "{unknown}");
        let ambiguous = class_value(&json!("1"), &two).expect_err("rejected");
        assert!(
            ambiguous.contains("class 1 of model `digits`"),
            "{ambiguous}"
        );
        assert!(
            ambiguous.contains("class 2 of model `shifted`"),
            "{ambiguous}"
        );
        let wrong_type = class_value(&json!(true), &one).expect_err("rejected");
        assert!(wrong_type.contains("GET /api/models"), "{wrong_type}");
    }
}
