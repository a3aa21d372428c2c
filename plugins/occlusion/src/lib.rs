//! A Picasso plugin that maps how much each region of the image matters to
//! the model by hiding it: occlusion sensitivity (Zeiler and Fergus,
//! "Visualizing and Understanding Convolutional Networks", 2014,
//! <https://arxiv.org/abs/1311.2901>).
//!
//! The input image is the model's input frame, W x H pixels. A square
//! window of `window` pixels slides over it. A `window` of 0 picks one
//! seventh of the frame's shorter side, rounded, at least 1 pixel: 32 on a
//! 224 x 224 frame, 4 on 28 x 28. A `stride` of 0 picks half the window,
//! rounded down, at least 1. Its positions along x are
//! 0, stride, 2 * stride, ... while `position + window <= W`, plus a final
//! position `W - window` when the last one does not reach the right edge,
//! and likewise along y. When `window >= W`, the only position along x is
//! 0 and the window is clipped to the image (likewise for H).
//!
//! For each position, a copy of the image gets the window's pixels set to
//! the fill color (red, green and blue; alpha is kept). The copies go
//! through the model's preprocessing and logits in batches of 16, and a
//! softmax gives each copy's class probabilities. For each target class,
//! the heatmap is a W x H grid in which each pixel holds the mean, over all
//! window positions whose window covers that pixel, of the class's
//! probability for that occluded copy. Low values mark regions the model
//! needs to recognize the class.
//!
//! The targets are the class of the `target` setting, or when it is unset,
//! the `top-k` most likely classes of the unoccluded image.

use picasso_plugin_sdk::model::{self, DEFAULT_BATCH_SIZE};
use picasso_plugin_sdk::window::{CoverageMean, SlidingWindows};
use picasso_plugin_sdk::{
    ClassScore, Descriptor, Error, Heatmap, HeatmapScale, Image, Panel, SettingSpec, Settings,
    Visualization,
};

/// The `occlusion` visualization.
#[derive(Debug)]
pub struct Occlusion;

/// The fill colors the `fill` setting offers, besides `mean`.
const GREY: [u8; 3] = [128, 128, 128];
const BLACK: [u8; 3] = [0, 0, 0];
const WHITE: [u8; 3] = [255, 255, 255];

impl Visualization for Occlusion {
    fn describe() -> Descriptor {
        Descriptor::new("occlusion", env!("CARGO_PKG_VERSION"), "Occlusion")
            .description(DESCRIPTION)
            .reference("https://arxiv.org/abs/1311.2901")
            .setting(SettingSpec::integer(
                "window",
                "Window",
                "Side of the square patch that hides part of the image, in pixels of the \
                 model's input frame. At most the frame's larger side. 0: automatic, one \
                 seventh of the frame's shorter side.",
                0..=512,
                0,
            ))
            .setting(SettingSpec::integer(
                "stride",
                "Stride",
                "Step between patch positions, in pixels. At most the window, so that every \
                 pixel is hidden at least once; smaller steps give smoother maps and more \
                 model runs. 0: automatic, half the window.",
                0..=512,
                0,
            ))
            .setting(SettingSpec::choice(
                "fill",
                "Fill",
                "Color of the patch: grey (128), black, white, or the model's mean pixel.",
                &["grey", "black", "white", "mean"],
                "grey",
            ))
            .setting(SettingSpec::class(
                "target",
                "Class",
                "The class to map. Unset: the most likely classes of the image, as many as \
                 `top-k`.",
            ))
            .setting(SettingSpec::integer(
                "top-k",
                "Top classes",
                "How many of the image's most likely classes to map when no class is set; \
                 also the length of the class list.",
                1..=10,
                1,
            ))
    }

    fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error> {
        let options = Options::read(input, settings)?;
        let info = model::info();

        let logits = model::logits(&model::preprocess(std::slice::from_ref(input))?)?;
        let mut rows = logits.rows("the logits of the unoccluded image")?;
        let unoccluded = rows.next().unwrap_or_default();
        let top = model::top_k(unoccluded, options.top_k);
        let targets: Vec<u32> = match options.target {
            Some(class) => vec![class],
            None => top.iter().map(|score| score.index).collect(),
        };

        let fill = fill_color(&options.fill, &info.mean_pixel)?;
        let maps = occlusion_maps(input, &options.windows, fill, &targets)?;

        let mut panels = Vec::with_capacity(targets.len() + 1);
        for (&class, values) in targets.iter().zip(maps) {
            panels.push(heatmap_panel(input, class, values)?);
        }
        panels.push(scores_panel(top, options.top_k));
        Ok(panels)
    }
}

picasso_plugin_sdk::export_visualization!(Occlusion);

const DESCRIPTION: &str = "Hides one square region of the image at a time with a patch of \
    the fill color and records how the model's probability for a class changes. The window \
    slides in steps of `stride` pixels from the top-left corner, with one last position \
    flush with the right and bottom edges. By default (0) the window is a seventh of the \
    frame's shorter side and the stride half the window, which suits any input size. Each pixel of the map is the mean probability of \
    the class over all the occluded copies whose patch covers that pixel, so low values \
    mark the regions the model needs to recognize the class. The class is the chosen one, or each \
    of the image's `top-k` most likely classes. The list next to the maps shows the top \
    classes of the unoccluded image.";

/// The settings of one render, checked against the input frame and model.
#[derive(Debug)]
struct Options {
    windows: SlidingWindows,
    fill: String,
    target: Option<u32>,
    top_k: usize,
}

impl Options {
    fn read(input: &Image, settings: &Settings) -> Result<Self, Error> {
        let (window, stride) = resolve_window(
            settings.integer_as::<u32>("window")?,
            settings.integer_as::<u32>("stride")?,
            input.width,
            input.height,
        );
        check_window(window, stride, input.width, input.height)?;

        let target = settings.class("target")?;
        if let Some(class) = target {
            let classes = model::info().labels.len();
            if class as usize >= classes {
                return Err(Error::invalid_setting(
                    "target",
                    format!(
                        "class {class} does not exist; the model has {classes} classes, \
                         numbered from 0"
                    ),
                ));
            }
        }

        Ok(Self {
            windows: SlidingWindows::new(input.width, input.height, window, stride)?,
            fill: settings.choice("fill")?.to_owned(),
            target,
            top_k: settings.integer_as::<usize>("top-k")?,
        })
    }
}

/// The share of the frame's shorter side that an automatic window covers:
/// on a 224-pixel ImageNet frame, 32 pixels, about the size of an eye or a
/// wheel, and 49 windows at half-window strides.
const AUTO_WINDOW_DIVISOR: f64 = 7.0;

/// Replaces a `window` or `stride` of 0 with its automatic value for a
/// `width` x `height` frame; other values are kept.
fn resolve_window(window: u32, stride: u32, width: u32, height: u32) -> (u32, u32) {
    let window = if window == 0 {
        let side = f64::from(width.min(height));
        ((side / AUTO_WINDOW_DIVISOR).round() as u32).max(1)
    } else {
        window
    };
    let stride = if stride == 0 {
        (window / 2).max(1)
    } else {
        stride
    };
    (window, stride)
}

/// Checks the window against the `width` x `height` frame, whose size the
/// static setting ranges cannot know.
fn check_window(window: u32, stride: u32, width: u32, height: u32) -> Result<(), Error> {
    let largest = width.max(height);
    if window > largest {
        return Err(Error::invalid_setting(
            "window",
            format!(
                "{window} pixels is larger than the model's {width} x {height} input frame; \
                 choose at most {largest}"
            ),
        ));
    }
    if stride > window {
        return Err(Error::invalid_setting(
            "stride",
            format!(
                "{stride} pixels is larger than the {window}-pixel window, which would leave \
                 pixels that are never hidden; choose at most {window}"
            ),
        ));
    }
    Ok(())
}

/// Returns the RGB of the `fill` choice. `mean` is the model's mean pixel,
/// rounded, with a single gray value repeated for one-channel models.
fn fill_color(fill: &str, mean_pixel: &[f32]) -> Result<[u8; 3], Error> {
    match fill {
        "grey" => Ok(GREY),
        "black" => Ok(BLACK),
        "white" => Ok(WHITE),
        "mean" => {
            let byte = |value: f32| value.round().clamp(0.0, 255.0) as u8;
            match *mean_pixel {
                [gray] => Ok([byte(gray); 3]),
                [red, green, blue] => Ok([byte(red), byte(green), byte(blue)]),
                _ => Err(Error::msg(format!(
                    "the model declares {} mean-pixel values, expected 1 or 3; \
                     choose another `fill`",
                    mean_pixel.len()
                ))),
            }
        }
        other => Err(Error::invalid_setting(
            "fill",
            format!("`{other}` is not one of grey, black, white or mean"),
        )),
    }
}

/// Runs every occluded copy through the model and returns one map per
/// target class, each `width * height` row-major means.
fn occlusion_maps(
    input: &Image,
    windows: &SlidingWindows,
    fill: [u8; 3],
    targets: &[u32],
) -> Result<Vec<Vec<f32>>, Error> {
    let copies = windows
        .iter()
        .map(|rect| input.with_rect_filled(rect, fill));
    let mut coverage = CoverageMean::new(input.width, input.height, targets.len());

    model::for_each_batch(copies, DEFAULT_BATCH_SIZE, |batch| {
        for (offset, probabilities) in batch.probabilities().enumerate() {
            add_copy(
                &mut coverage,
                windows,
                batch.first + offset,
                &probabilities,
                targets,
            )?;
        }
        Ok(())
    })?;

    Ok(coverage.finish())
}

/// Adds the target probabilities of occluded copy `index` over its window.
fn add_copy(
    coverage: &mut CoverageMean,
    windows: &SlidingWindows,
    index: usize,
    probabilities: &[f32],
    targets: &[u32],
) -> Result<(), Error> {
    let rect = windows.get(index).ok_or_else(|| {
        Error::msg(format!(
            "the model returned more than {} rows",
            windows.len()
        ))
    })?;
    let mut scores = Vec::with_capacity(targets.len());
    for &class in targets {
        let probability = probabilities.get(class as usize).ok_or_else(|| {
            Error::msg(format!(
                "the model returned {} probabilities, too few for class {class}",
                probabilities.len()
            ))
        })?;
        scores.push(*probability);
    }
    coverage.add(rect, &scores);
    Ok(())
}

fn heatmap_panel(input: &Image, class: u32, values: Vec<f32>) -> Result<Panel, Error> {
    let label = model::label(class).map_or_else(|| format!("class {class}"), str::to_owned);
    let heatmap = Heatmap::new(
        input.width,
        input.height,
        values,
        format!("probability of {label} with this region occluded"),
        HeatmapScale::Sequential,
    )?;
    Ok(Panel::heatmap(
        format!("{label}: occlusion"),
        heatmap.for_class(class),
    ))
}

fn scores_panel(top: Vec<ClassScore>, k: usize) -> Panel {
    Panel::scores(format!("Top {k} classes, unoccluded"), top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use picasso_plugin_sdk::Rect;

    #[test]
    fn descriptor_is_valid() {
        assert_eq!(Occlusion::describe().validate(), Ok(()));
    }

    #[test]
    fn window_must_fit_the_frame() {
        assert!(check_window(224, 16, 224, 224).is_ok());
        assert!(check_window(200, 16, 160, 224).is_ok());

        let error = check_window(32, 4, 28, 28).expect_err("32 > 28");

        assert!(error.to_string().contains("`window`"), "{error}");
        assert!(error.to_string().contains("at most 28"), "{error}");
    }

    #[test]
    fn zero_window_and_stride_are_automatic() {
        assert_eq!(resolve_window(0, 0, 224, 224), (32, 16));
        assert_eq!(resolve_window(0, 0, 28, 28), (4, 2));
        assert_eq!(resolve_window(0, 0, 640, 480), (69, 34));
        assert_eq!(resolve_window(0, 0, 3, 5), (1, 1));
        assert_eq!(resolve_window(0, 8, 224, 224), (32, 8));
        assert_eq!(resolve_window(20, 0, 224, 224), (20, 10));
        assert_eq!(
            resolve_window(32, 16, 28, 28),
            (32, 16),
            "explicit values are kept"
        );
    }

    #[test]
    fn stride_must_not_exceed_window() {
        assert!(check_window(16, 16, 224, 224).is_ok());

        let error = check_window(16, 17, 224, 224).expect_err("17 > 16");

        assert!(error.to_string().contains("`stride`"), "{error}");
    }

    #[test]
    fn fill_colors() {
        assert_eq!(fill_color("grey", &[]).ok(), Some(GREY));
        assert_eq!(fill_color("black", &[]).ok(), Some(BLACK));
        assert_eq!(fill_color("white", &[]).ok(), Some(WHITE));
        assert_eq!(
            fill_color("mean", &[123.675, 116.28, 103.53]).ok(),
            Some([124, 116, 104])
        );
        assert_eq!(fill_color("mean", &[33.3]).ok(), Some([33, 33, 33]));
        assert!(fill_color("mean", &[1.0, 2.0]).is_err());
        assert!(fill_color("pink", &[]).is_err());
    }

    /// Computes the heatmap the slow way, straight from the definition in
    /// the crate docs, with `score` standing in for a class probability.
    fn definition(
        input: &Image,
        window: u32,
        stride: u32,
        fill: [u8; 3],
        score: impl Fn(&Image) -> f32,
    ) -> Vec<f32> {
        let positions = |extent: u32| {
            let mut starts: Vec<u32> = (0..)
                .map(|step| step * stride)
                .take_while(|start| start + window <= extent)
                .collect();
            if window >= extent {
                starts = vec![0];
            } else if starts.last().is_some_and(|last| last + window < extent) {
                starts.push(extent - window);
            }
            starts
        };
        let mut copies = Vec::new();
        for y in positions(input.height) {
            for x in positions(input.width) {
                let rect = Rect::new(x, y, window, window);
                copies.push((rect, score(&input.with_rect_filled(rect, fill))));
            }
        }

        let mut map = Vec::new();
        for y in 0..input.height {
            for x in 0..input.width {
                let covering: Vec<f32> = copies
                    .iter()
                    .filter(|(rect, _)| rect.clip(input.width, input.height).contains(x, y))
                    .map(|&(_, value)| value)
                    .collect();
                map.push(covering.iter().sum::<f32>() / covering.len() as f32);
            }
        }
        map
    }

    #[test]
    fn maps_match_the_definition() {
        // A 13 x 9 image with a bright 3 x 2 spot; the "probability" is the
        // share of the spot's pixels left visible.
        let mut input = Image::filled(13, 9, [10, 20, 30, 255]);
        input.fill_rect(Rect::new(6, 4, 3, 2), [250, 250, 250]);
        let score = |image: &Image| {
            let visible = (6..9)
                .flat_map(|x| (4..6).map(move |y| (x, y)))
                .filter(|&(x, y)| image.pixel(x, y) == Some([250, 250, 250, 255]))
                .count();
            visible as f32 / 6.0
        };

        for (window, stride) in [(4, 3), (5, 5), (9, 2), (13, 4), (1, 1)] {
            let windows = SlidingWindows::new(13, 9, window, stride).expect("13 x 9 frame");
            let mut coverage = CoverageMean::new(13, 9, 1);
            for (index, rect) in windows.iter().enumerate() {
                let probability = score(&input.with_rect_filled(rect, GREY));
                add_copy(&mut coverage, &windows, index, &[0.0, probability], &[1])
                    .expect("one row per window");
            }

            let map = coverage.finish().remove(0);

            let expected = definition(&input, window, stride, GREY, score);
            for (pixel, (got, want)) in map.iter().zip(&expected).enumerate() {
                assert!(
                    (got - want).abs() < 1e-5,
                    "window {window}, stride {stride}, pixel {pixel}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn extra_rows_are_rejected() {
        let windows = SlidingWindows::new(4, 4, 4, 4).expect("one window");
        let mut coverage = CoverageMean::new(4, 4, 1);

        assert!(add_copy(&mut coverage, &windows, 1, &[0.5], &[0]).is_err());
        assert!(add_copy(&mut coverage, &windows, 0, &[0.5], &[3]).is_err());
    }
}
