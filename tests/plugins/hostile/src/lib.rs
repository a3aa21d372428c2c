//! A plugin whose `render` misbehaves in the way its `attack` setting names.
//! One component covers every attack that happens during a render, so the
//! tests build and load one plugin instead of one per attack.
//!
//! Attacks that the host rejects with a model error make the render fail
//! with that error's text, so a test can check the host's message.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

use picasso::plugin::host;
use picasso::plugin::model::{self, ModelError, Seed};
use picasso::plugin::types::Tensor;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "visualization",
});

/// Every attack, in the order the setting lists them.
const ATTACKS: &[&str] = &[
    "endless-loop",
    "model-loop",
    "allocate",
    "recurse",
    "many-panels",
    "huge-heatmap",
    "large-output",
    "aliased-output",
    "panic",
    "unreachable",
    "wrong-shape",
    "huge-batch",
    "nan-input",
    "class-out-of-range",
    "progress-backwards",
    "progress-over-total",
    "count-renders",
];

/// Renders seen by this instance. The host instantiates the plugin afresh
/// for every render, so `count-renders` must always see 1.
static RENDERS: AtomicU32 = AtomicU32::new(0);

struct Hostile;

impl Guest for Hostile {
    fn describe() -> Descriptor {
        Descriptor {
            id: "hostile".to_owned(),
            version: "0.1.0".to_owned(),
            title: "Hostile".to_owned(),
            description: "Misbehaves on purpose, to test the sandbox.".to_owned(),
            reference: String::new(),
            needs_gradients: false,
            settings: vec![SettingSpec {
                name: "attack".to_owned(),
                label: "Attack".to_owned(),
                help: "How the render misbehaves.".to_owned(),
                kind: SettingKind::Choice(ATTACKS.iter().map(|a| (*a).to_owned()).collect()),
                default: SettingValue::Choice("count-renders".to_owned()),
            }],
        }
    }

    fn render(_input: Image, settings: Vec<Setting>) -> Result<Vec<Panel>, String> {
        let attack = settings
            .iter()
            .find_map(|s| match (&s.name[..], &s.value) {
                ("attack", SettingValue::Choice(attack)) => Some(attack.clone()),
                _ => None,
            })
            .ok_or("no `attack` setting")?;
        match attack.as_str() {
            "endless-loop" => endless_loop(),
            "model-loop" => model_loop(),
            "allocate" => allocate(),
            "recurse" => Ok(vec![scores_panel(recurse(black_box(u64::MAX)) as f32)]),
            "many-panels" => Ok((0..100).map(|i| scores_panel(i as f32)).collect()),
            "huge-heatmap" => Ok(vec![huge_heatmap()]),
            "large-output" => Ok(vec![large_heatmap()]),
            "aliased-output" => Ok(aliased_heatmaps()),
            "panic" => panic!("hostile plugin panicked on purpose"),
            "unreachable" => core::arch::wasm32::unreachable(),
            "wrong-shape" => model_error(model::logits(&Tensor {
                shape: vec![1, 3, 5, 5],
                data: vec![0.0; 75],
            })),
            "huge-batch" => model_error(model::logits(&mnist_batch(300, 0.0))),
            "nan-input" => model_error(model::logits(&mnist_batch(1, f32::NAN))),
            "class-out-of-range" => model_error(
                model::gradients(&mnist_batch(1, 0.0), &[Seed::Class(1_000_000)], None)
                    .map(|result| result.logits),
            ),
            "progress-backwards" => {
                host::progress(5, 10);
                host::progress(4, 10);
                Err("progress went backwards without being stopped".to_owned())
            }
            "progress-over-total" => {
                host::progress(11, 10);
                Err("progress past its total was not stopped".to_owned())
            }
            "count-renders" => {
                let seen = RENDERS.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(vec![scores_panel(seen as f32)])
            }
            other => Err(format!("unknown attack `{other}`")),
        }
    }
}

// An endless loop is the point of these attacks; the host must stop them.
#[allow(clippy::empty_loop)]
fn endless_loop() -> Result<Vec<Panel>, String> {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Keeps the model busy: most of the time is spent inside host calls, where
/// epoch interruption cannot reach.
fn model_loop() -> Result<Vec<Panel>, String> {
    let batch = mnist_batch(64, 0.5);
    loop {
        if let Err(error) = model::logits(&batch) {
            return Err(format!("model error: {error:?}"));
        }
    }
}

fn allocate() -> Result<Vec<Panel>, String> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        // Writing each block makes sure the allocation is not optimized out.
        blocks.push(black_box(vec![1u8; 1 << 20]));
    }
}

/// Recurses `depth` times without a tail call, so each level keeps a frame.
fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    let frame = black_box([depth; 8]);
    recurse(depth - 1).wrapping_add(frame[3])
}

/// Builds a heatmap that claims far more pixels than any input frame has,
/// without the memory to back it.
fn huge_heatmap() -> Panel {
    heatmap_panel("huge", 100_000, 100_000, vec![0.0; 16])
}

/// Builds a valid 1024 x 1024 heatmap: 4 MiB of values, for a server whose
/// output limit is smaller.
fn large_heatmap() -> Panel {
    heatmap_panel("large", 1024, 1024, vec![0.25; 1024 * 1024])
}

/// Builds 64 heatmaps of 2048 x 2048 values that all list the same 16 MiB
/// of memory, so the result claims 1 GiB while the plugin holds 16 MiB.
///
/// The vectors alias one buffer, which is undefined behavior in Rust once
/// they are dropped or freed. That is the attack: the host copies the
/// result before the plugin's post-return would free anything, so only the
/// host's copy limit stands between this and 1 GiB of host memory.
fn aliased_heatmaps() -> Vec<Panel> {
    const SIDE: u32 = 2048;
    let len = (SIDE * SIDE) as usize;
    let mut buffer = std::mem::ManuallyDrop::new(vec![0.5f32; len]);
    let pointer = buffer.as_mut_ptr();
    (0..64)
        .map(|index| {
            // SAFETY: none; see above.
            let values = unsafe { Vec::from_raw_parts(pointer, len, len) };
            heatmap_panel(&format!("alias {index}"), SIDE, SIDE, values)
        })
        .collect()
}

fn heatmap_panel(title: &str, width: u32, height: u32, values: Vec<f32>) -> Panel {
    Panel {
        title: title.to_owned(),
        content: PanelContent::Heatmap(Heatmap {
            width,
            height,
            values,
            class_index: None,
            meaning: "nothing".to_owned(),
            scale: HeatmapScale::Sequential,
        }),
    }
}

fn scores_panel(value: f32) -> Panel {
    Panel {
        title: format!("value {value}"),
        content: PanelContent::Scores(vec![ClassScore {
            index: 0,
            label: "0".to_owned(),
            logit: value,
            probability: 1.0,
        }]),
    }
}

/// Builds a batch of MNIST-shaped inputs (`[n, 1, 28, 28]`) filled with `value`.
fn mnist_batch(items: u32, value: f32) -> Tensor {
    Tensor {
        shape: vec![items, 1, 28, 28],
        data: vec![value; items as usize * 28 * 28],
    }
}

/// Fails the render with the text of the model error, or with a message
/// that the host accepted a call it should have rejected.
fn model_error<T>(result: Result<T, ModelError>) -> Result<Vec<Panel>, String> {
    match result {
        Err(error) => Err(format!("model error: {error:?}")),
        Ok(_) => Err("the host accepted an invalid model call".to_owned()),
    }
}

export!(Hostile);
