//! Constructors for the panels a render returns.

use crate::{ClassScore, Error, Heatmap, HeatmapScale, Image, Panel, PanelContent};

impl Panel {
    /// Creates a panel that shows `heatmap` over the photo.
    pub fn heatmap(title: impl Into<String>, heatmap: Heatmap) -> Self {
        Self {
            title: title.into(),
            content: PanelContent::Heatmap(heatmap),
        }
    }

    /// Creates a panel that shows `image`, in the model's input frame, as it
    /// is.
    pub fn image(title: impl Into<String>, image: Image) -> Self {
        Self {
            title: title.into(),
            content: PanelContent::Image(image),
        }
    }

    /// Creates a panel that lists `scores` in the given order.
    pub fn scores(title: impl Into<String>, scores: Vec<ClassScore>) -> Self {
        Self {
            title: title.into(),
            content: PanelContent::Scores(scores),
        }
    }
}

impl Heatmap {
    /// Creates a heatmap from a `width` x `height` grid of row-major
    /// `values`, explaining no particular class. `meaning` is a short
    /// phrase for the color bar, such as "probability of tabby with this
    /// region occluded".
    ///
    /// # Errors
    ///
    /// Fails if `values` does not hold `width * height` values, or holds a
    /// NaN or infinite value, which no colormap can show.
    pub fn new(
        width: u32,
        height: u32,
        values: Vec<f32>,
        meaning: impl Into<String>,
        scale: HeatmapScale,
    ) -> Result<Self, Error> {
        if values.len() as u64 != u64::from(width) * u64::from(height) {
            return Err(Error::msg(format!(
                "a {width} x {height} heatmap needs {} values, got {}",
                u64::from(width) * u64::from(height),
                values.len()
            )));
        }
        if let Some(index) = values.iter().position(|value| !value.is_finite()) {
            return Err(Error::msg(format!(
                "heatmap value {} at pixel ({}, {}) is not finite",
                values[index],
                index % width as usize,
                index / width as usize
            )));
        }
        Ok(Self {
            width,
            height,
            values,
            class_index: None,
            meaning: meaning.into(),
            scale,
        })
    }

    /// Sets the class that the heatmap explains.
    pub fn for_class(mut self, class_index: u32) -> Self {
        self.class_index = Some(class_index);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_checks_size_and_values() {
        let good = Heatmap::new(
            2,
            1,
            vec![0.5, 1.0],
            "probability",
            HeatmapScale::Sequential,
        );
        let short = Heatmap::new(2, 2, vec![0.5], "probability", HeatmapScale::Sequential);
        let nan = Heatmap::new(2, 1, vec![0.5, f32::NAN], "p", HeatmapScale::Diverging);

        assert_eq!(
            good.expect("2 x 1 values").for_class(7).class_index,
            Some(7)
        );
        assert!(short.is_err());
        let error = nan.expect_err("NaN value");
        assert!(error.to_string().contains("(1, 0)"), "{error}");
    }

    #[test]
    fn panels_wrap_their_content() {
        let panel = Panel::scores("Top classes", Vec::new());

        assert_eq!(panel.title, "Top classes");
        assert_eq!(panel.content, PanelContent::Scores(Vec::new()));
    }
}
