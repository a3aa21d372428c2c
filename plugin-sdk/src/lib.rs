//! Write Picasso visualization plugins in plain Rust.
//!
//! A Picasso plugin is a WebAssembly component that explains an image
//! classifier's decision on one image. The host loads it, calls
//! [`Visualization::describe`] once to learn its settings, and then calls
//! [`Visualization::render`] once per image, model and set of settings, each
//! time in a fresh instance. During `render` the plugin asks the host for
//! everything it needs through the [`model`] module (preprocessing, logits,
//! gradients) and the [`host`] module (logging, progress, seeded random
//! numbers), and returns [`Panel`]s: heatmaps, images and ranked class scores.
//!
//! The key pieces:
//!
//! - [`Visualization`], the one trait a plugin implements, and
//!   [`export_visualization!`], the one macro that turns the implementing type
//!   into the component's exports.
//! - [`Descriptor`] and [`SettingSpec`], which declare what the plugin is and
//!   which settings it accepts; [`Settings`] reads their values back, typed.
//! - [`model`], the classifier being explained, with batching helpers such as
//!   [`model::for_each_batch`].
//! - [`Error`], which carries a message for the user out of `render`.
//!
//! Pure helpers for the usual chores live next to them and run anywhere,
//! including in native unit tests: [`scores`] (softmax, top-k), [`Image`]
//! editing ([`Rect`], [`Image::fill_rect`], [`Image::crop`],
//! [`Image::paste`], [`Image::blurred`]), [`grid`] (bilinear resizing of
//! float grids), [`window`] (sliding-window positions and per-pixel coverage
//! means), [`channels`] (per-pixel reductions of an input-shaped tensor in
//! either layout) and [`attribution`] (the target classes and per-class
//! heatmap panels of gradient-based maps).
//!
//! ```no_run
//! use picasso_plugin_sdk::{
//!     Descriptor, Error, Image, Panel, SettingSpec, Settings, Visualization, model,
//! };
//!
//! struct TopClasses;
//!
//! impl Visualization for TopClasses {
//!     fn describe() -> Descriptor {
//!         Descriptor::new("top-classes", env!("CARGO_PKG_VERSION"), "Top classes")
//!             .description("The classes the model finds most likely.")
//!             .setting(SettingSpec::integer("k", "Classes", "How many classes to list.", 1..=20, 5))
//!     }
//!
//!     fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error> {
//!         let k = settings.integer_as::<usize>("k")?;
//!         let scores = model::classify(std::slice::from_ref(input), k)?;
//!         Ok(scores.into_iter().map(|top| Panel::scores("Top classes", top)).collect())
//!     }
//! }
//!
//! picasso_plugin_sdk::export_visualization!(TopClasses);
//! ```
//!
//! Build plugins with `cargo build --target wasm32-wasip2 --release`. Off
//! wasm32 the crate still compiles, so plugin code can be unit-tested
//! natively, but every call into the host (the [`model`] and [`host`]
//! functions) panics there.
//!
//! This SDK version targets the WIT package `picasso:plugin@0.1.0`
//! ([`WIT_PACKAGE`]).
#![deny(missing_docs)]

// The generated export macro names types by absolute path, starting from
// this crate's name, which must therefore also resolve inside the crate.
extern crate self as picasso_plugin_sdk;

pub mod attribution;
mod blur;
pub mod channels;
mod descriptor;
mod error;
pub mod grid;
pub mod host;
mod image;
pub mod model;
mod panel;
pub mod scores;
mod settings;
mod tensor;
#[cfg(test)]
mod testing;
pub mod window;

pub use descriptor::{Descriptor, SettingSpec};
pub use error::Error;
pub use image::Rect;
pub use settings::Settings;

// The types a plugin builds or reads. They are the WIT contract's own types,
// so they cross the component boundary without conversion; the SDK adds
// constructors and helpers to them.

/// A model's score for one class: index, label, logit and probability.
pub use crate::__bindings::picasso::plugin::types::ClassScore;
/// An 8-bit RGBA image in row-major order (WIT `image`).
pub use crate::__bindings::picasso::plugin::types::Image;
/// A setting's value as the host passes it to `render`.
pub use crate::__bindings::picasso::plugin::types::SettingValue;
/// A dense `f32` tensor in row-major order (WIT `tensor`).
pub use crate::__bindings::picasso::plugin::types::Tensor;
/// The accepted values of a setting, which also pick its form control.
pub use crate::__bindings::{FloatRange, IntegerRange, SettingKind};
/// A grid of values over the input frame and how the host colors it.
pub use crate::__bindings::{Heatmap, HeatmapScale};
/// One titled part of a render's result and what it contains.
pub use crate::__bindings::{Panel, PanelContent};

/// The WIT package, with its version, that this SDK's bindings implement.
/// A host accepts plugins built against the same minor version.
pub const WIT_PACKAGE: &str = "picasso:plugin@0.1.0";

/// A visualization: what it is, and how it renders one image.
///
/// Implement it on a type of your own (usually a unit struct) and export
/// that type with [`export_visualization!`]. Both functions are associated
/// functions because the host creates a fresh instance for every call, so a
/// plugin keeps no state between renders.
pub trait Visualization {
    /// Returns the plugin's identity and settings schema.
    ///
    /// The host calls it once when it loads the plugin. It must not call the
    /// [`model`] functions, because no model is chosen at that point.
    fn describe() -> Descriptor;

    /// Explains the model's decision on `input`.
    ///
    /// `input` is already resized and cropped to the model's input frame
    /// ([`model::info`] gives its size), and `settings` contains a value for
    /// every setting that [`Visualization::describe`] declares, already
    /// checked against its kind and range.
    ///
    /// # Errors
    ///
    /// An [`Error`] ends the render; the host shows its message to the user,
    /// so it should say what was wrong and how to fix it.
    fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error>;
}

/// Exports a [`Visualization`] as the component's `describe` and `render`
/// functions.
///
/// Call it once, at the top level of the plugin crate, with the type that
/// implements [`Visualization`]:
///
/// ```no_run
/// # use picasso_plugin_sdk::{Descriptor, Error, Image, Panel, Settings, Visualization};
/// struct Occlusion;
///
/// impl Visualization for Occlusion {
///     // ...
/// #   fn describe() -> Descriptor {
/// #       Descriptor::new("occlusion", "0.1.0", "Occlusion")
/// #   }
/// #   fn render(_: &Image, _: &Settings) -> Result<Vec<Panel>, Error> {
/// #       Ok(Vec::new())
/// #   }
/// }
///
/// picasso_plugin_sdk::export_visualization!(Occlusion);
/// ```
#[macro_export]
macro_rules! export_visualization {
    ($visualization:ty) => {
        const _: () = {
            // wit-bindgen's export macro takes a plain identifier.
            type PicassoExport = $crate::__private::Export<$visualization>;
            $crate::__bindings::__export_visualization!(
                PicassoExport with_types_in $crate::__bindings
            );
        };
    };
}

/// The glue between [`Visualization`] and the generated bindings; used by
/// [`export_visualization!`] and not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    use crate::{__bindings, Descriptor, Image, Panel};
    use crate::{Settings, Visualization};

    /// Implements the generated `Guest` trait for any [`Visualization`].
    pub struct Export<V>(PhantomData<V>);

    impl<V> std::fmt::Debug for Export<V> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Export")
        }
    }

    impl<V: Visualization> __bindings::Guest for Export<V> {
        fn describe() -> Descriptor {
            log_panics();
            V::describe()
        }

        fn render(input: Image, settings: Vec<__bindings::Setting>) -> Result<Vec<Panel>, String> {
            log_panics();
            render::<V>(input, settings).map_err(|error| error.to_string())
        }
    }

    /// Sends panic messages to the host's log. A panic still traps, but the
    /// trap alone carries no message, and the host does not show the
    /// guest's stderr.
    fn log_panics() {
        // Off wasm32 the host imports are stubs that panic, so a hook that
        // calls them would abort native tests.
        #[cfg(target_arch = "wasm32")]
        {
            static HOOK: std::sync::Once = std::sync::Once::new();
            HOOK.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    crate::host::log(crate::host::LogLevel::Error, &format!("plugin {info}"));
                }));
            });
        }
    }

    pub(crate) fn render<V: Visualization>(
        input: Image,
        settings: Vec<__bindings::Setting>,
    ) -> Result<Vec<Panel>, crate::Error> {
        // Helpers index pixels directly, so a malformed buffer is rejected
        // here, once, instead of panicking somewhere inside the plugin.
        input.check("input")?;
        V::render(&input, &Settings::new(settings))
    }
}

/// The bindings that wit-bindgen generates from the WIT contract. Plugin
/// code uses the re-exports and wrappers above instead.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, reason = "generated ABI glue")]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "visualization",
        pub_export_macro: true,
        export_macro_name: "__export_visualization",
        default_bindings_module: "picasso_plugin_sdk::__bindings",
        runtime_path: "picasso_plugin_sdk::__bindings::__wit_bindgen::rt",
        additional_derives: [PartialEq],
    });

    pub use wit_bindgen as __wit_bindgen;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::__bindings::{Guest, Setting};

    /// A visualization that shows the input under a title made of the
    /// `label` setting and the input's size, without calling the host.
    struct Echo;

    impl Visualization for Echo {
        fn describe() -> Descriptor {
            Descriptor::new("echo", "0.1.0", "Echo").setting(SettingSpec::choice(
                "label",
                "Label",
                "Title.",
                &["a", "b"],
                "a",
            ))
        }

        fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error> {
            let title = format!(
                "{} {}x{}",
                settings.choice("label")?,
                input.width,
                input.height
            );
            Ok(vec![Panel::image(title, input.clone())])
        }
    }

    fn label(value: &str) -> Vec<Setting> {
        vec![Setting {
            name: "label".into(),
            value: SettingValue::Choice(value.into()),
        }]
    }

    #[test]
    fn export_forwards_describe_and_render() {
        let input = Image::filled(3, 2, [1, 2, 3, 255]);

        let panels = __private::Export::<Echo>::render(input.clone(), label("b"));

        assert_eq!(__private::Export::<Echo>::describe(), Echo::describe());
        assert_eq!(panels, Ok(vec![Panel::image("b 3x2", input)]));
    }

    #[test]
    fn export_rejects_malformed_input_before_render() {
        let mut input = Image::filled(3, 2, [1, 2, 3, 255]);
        input.pixels.truncate(5);

        let result = __private::Export::<Echo>::render(input, label("a"));

        let message = result.expect_err("5 bytes for 3 x 2 pixels");
        assert!(message.contains("contains 5 bytes"), "{message}");
    }

    #[test]
    fn export_turns_errors_into_messages() {
        let result = __private::Export::<Echo>::render(Image::filled(1, 1, [0; 4]), Vec::new());

        assert_eq!(
            result,
            Err("setting `label` is missing; declare it in `describe`".to_owned())
        );
    }
}
