//! The parts every per-class attribution plugin shares: which classes to
//! explain, and one titled heatmap per class.
//!
//! [`Targets`] declares the `target` and `top-k` settings, reads them back
//! and picks the classes: the chosen class, or the image's `top-k` most
//! likely ones. [`input_gradients`] returns the gradient of each class's
//! logit, and [`class_heatmap`] wraps one class's map in a panel titled
//! after the class and the method.

use crate::model::{self, DEFAULT_BATCH_SIZE, Seed};
use crate::{
    ClassScore, Descriptor, Error, Heatmap, HeatmapScale, Image, Panel, SettingSpec, Settings,
    Tensor,
};

/// The name of the class setting that [`Targets::declare`] adds.
pub const TARGET_SETTING: &str = "target";

/// The name of the setting for the number of top classes.
pub const TOP_K_SETTING: &str = "top-k";

/// The classes one render explains, and the image's top classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// The classes to explain, in order: the `target` class alone, or the
    /// `top-k` most likely classes, most likely first.
    pub classes: Vec<u32>,
    /// The image's `top-k` most likely classes with their scores.
    pub top: Vec<ClassScore>,
}

impl Targets {
    /// Adds the `target` class setting and the `top-k` setting (1 to 10,
    /// default 1) to `descriptor`.
    pub fn declare(descriptor: Descriptor) -> Descriptor {
        descriptor
            .setting(SettingSpec::class(
                TARGET_SETTING,
                "Class",
                "The class to explain. Unset: the image's most likely classes, as many as \
                 `top-k`.",
            ))
            .setting(SettingSpec::integer(
                TOP_K_SETTING,
                "Top classes",
                "How many of the image's most likely classes to explain when no class is \
                 set; also the length of the class list.",
                1..=10,
                1,
            ))
    }

    /// Reads the settings that [`Targets::declare`] adds and picks the
    /// classes from `logits`, the image's logits, labeled with the model's
    /// labels.
    ///
    /// # Errors
    ///
    /// Fails if a setting is missing or the `target` class is not one of
    /// the model's classes.
    pub fn read(settings: &Settings, logits: &[f32]) -> Result<Self, Error> {
        let target = settings.class(TARGET_SETTING)?;
        let k = settings.integer_as::<usize>(TOP_K_SETTING)?;
        Self::pick(target, k, logits, &model::info().labels)
    }

    /// Preprocesses `input`, runs the model on it once and picks the
    /// classes from its logits as [`Targets::read`] does. Returns the
    /// normalized input, a batch of one, with the targets.
    ///
    /// # Errors
    ///
    /// Fails as [`model::preprocess`], [`model::logits`] and
    /// [`Targets::read`] do.
    pub fn for_input(input: &Image, settings: &Settings) -> Result<(Tensor, Self), Error> {
        let batch = model::preprocess(std::slice::from_ref(input))?;
        let logits = model::logits(&batch)?;
        let row = logits
            .rows("the logits of the input")?
            .next()
            .unwrap_or_default();
        let targets = Self::read(settings, row)?;
        Ok((batch, targets))
    }

    /// Picks the classes: `target` if set, else the `k` highest of
    /// `logits`.
    ///
    /// # Errors
    ///
    /// Fails if `target` is not an index of `logits`.
    pub fn pick(
        target: Option<u32>,
        k: usize,
        logits: &[f32],
        labels: &[String],
    ) -> Result<Self, Error> {
        let top = crate::scores::class_scores(logits, labels, k);
        let classes = match target {
            Some(class) if class as usize >= logits.len() => {
                return Err(Error::invalid_setting(
                    TARGET_SETTING,
                    format!(
                        "class {class} does not exist; the model has {} classes, numbered \
                         from 0",
                        logits.len()
                    ),
                ));
            }
            Some(class) => vec![class],
            None => top.iter().map(|score| score.index).collect(),
        };
        Ok(Self { classes, top })
    }

    /// Returns one heatmap panel per class, titled "`label`: `method`", then
    /// the panel of top classes. `results` contains one result per class,
    /// in the order of [`Targets::classes`], and `map` turns a class and its
    /// result into the class's `frame`-sized map and its meaning for the
    /// color bar.
    ///
    /// # Errors
    ///
    /// Fails if `results` does not contain one result per class, and with
    /// the first error of `map` or of [`class_heatmap`].
    pub fn panels<T>(
        &self,
        method: &str,
        frame: (u32, u32),
        scale: HeatmapScale,
        results: Vec<T>,
        mut map: impl FnMut(u32, T) -> Result<(Vec<f32>, String), Error>,
    ) -> Result<Vec<Panel>, Error> {
        if results.len() != self.classes.len() {
            return Err(Error::msg(format!(
                "{method}: {} results for {} classes",
                results.len(),
                self.classes.len()
            )));
        }
        let mut panels = Vec::with_capacity(self.classes.len() + 1);
        for (&class, result) in self.classes.iter().zip(results) {
            let (values, meaning) = map(class, result)?;
            panels.push(class_heatmap(class, method, frame, values, meaning, scale)?);
        }
        panels.push(self.scores_panel());
        Ok(panels)
    }

    /// Returns a panel that lists the image's top classes.
    pub fn scores_panel(&self) -> Panel {
        let title = match self.top.len() {
            1 => "Top class".to_owned(),
            n => format!("Top {n} classes"),
        };
        Panel::scores(title, self.top.clone())
    }
}

/// Returns the gradient of each class's logit with respect to `input`, one
/// normalized input item in the model's layout, in the order of `classes`.
/// The classes run in batches of [`DEFAULT_BATCH_SIZE`], with progress.
///
/// # Errors
///
/// Fails as [`model::for_each_gradient_batch`] does.
pub fn input_gradients(input: &[f32], classes: &[u32]) -> Result<Vec<Vec<f32>>, Error> {
    let items = classes
        .iter()
        .map(|&class| (input.to_vec(), Seed::Class(class)));
    let mut gradients = Vec::with_capacity(classes.len());
    model::for_each_gradient_batch(items, None, DEFAULT_BATCH_SIZE, |batch| {
        gradients.extend(batch.input_gradients()?.map(<[f32]>::to_vec));
        Ok(())
    })?;
    Ok(gradients)
}

/// Returns the label of `class`, or "class N" for a class without one.
pub fn class_name(class: u32) -> String {
    model::label(class).map_or_else(|| format!("class {class}"), str::to_owned)
}

/// Names `class` inside a sentence: its label in quotes with its index, as
/// in `"tabby" (class 281)`, so that labels such as "0" or "a cat having a
/// striped coat" still read as names. A class without a label is "class N".
pub fn class_phrase(class: u32) -> String {
    match model::label(class) {
        Some(label) => format!("\"{label}\" (class {class})"),
        None => format!("class {class}"),
    }
}

/// Creates a panel titled "`label`: `method`" that shows a `width` x
/// `height` map explaining `class`.
///
/// # Errors
///
/// Fails as [`Heatmap::new`] does: a wrong number of values or a value that
/// is not finite.
pub fn class_heatmap(
    class: u32,
    method: &str,
    (width, height): (u32, u32),
    values: Vec<f32>,
    meaning: impl Into<String>,
    scale: HeatmapScale,
) -> Result<Panel, Error> {
    let heatmap = Heatmap::new(width, height, values, meaning, scale)?;
    Ok(Panel::heatmap(
        format!("{}: {method}", class_name(class)),
        heatmap.for_class(class),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["cat", "dog", "fox", "owl"].map(str::to_owned).to_vec()
    }

    #[test]
    fn unset_target_picks_the_top_k() {
        let targets = Targets::pick(None, 2, &[0.1, 2.0, -1.0, 1.5], &labels()).expect("valid");

        assert_eq!(targets.classes, [1, 3]);
        assert_eq!(targets.top.len(), 2);
        assert_eq!(targets.top[0].label, "dog");
    }

    #[test]
    fn set_target_is_the_only_class() {
        let targets = Targets::pick(Some(2), 3, &[0.1, 2.0, -1.0, 1.5], &labels()).expect("valid");

        assert_eq!(targets.classes, [2]);
        assert_eq!(targets.top.len(), 3);
    }

    #[test]
    fn unknown_target_is_rejected() {
        let error = Targets::pick(Some(4), 1, &[0.0; 4], &labels()).expect_err("class 4 of 4");

        assert!(error.to_string().contains("`target`"), "{error}");
        assert!(error.to_string().contains("4 classes"), "{error}");
    }

    #[test]
    fn panels_need_one_result_per_class() {
        let targets = Targets::pick(None, 2, &[0.1, 2.0, -1.0, 1.5], &labels()).expect("valid");

        let result = targets.panels("map", (1, 1), HeatmapScale::Sequential, vec![0], |_, _| {
            Ok((vec![0.0], String::new()))
        });

        let error = result.expect_err("1 result for 2 classes");
        assert!(
            error.to_string().contains("1 results for 2 classes"),
            "{error}"
        );
    }

    #[test]
    fn declared_settings_are_valid() {
        let descriptor = Targets::declare(Descriptor::new("example", "0.1.0", "Example"));

        assert_eq!(descriptor.validate(), Ok(()));
        assert_eq!(descriptor.settings.len(), 2);
    }
}
