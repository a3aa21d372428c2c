//! The `picasso` command: the server and its headless tools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use picasso::config::Config;
use picasso::job::runner::{self, JobImage};
use picasso::job::spec::VisualizationRequest;

// glibc's allocator made the large per-call vectors of renders several times
// slower than mimalloc in this host.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Shows why an image classifier decides what it decides.
#[derive(Debug, Parser)]
#[command(name = "picasso", version)]
struct Cli {
    /// The configuration file; `picasso.toml` in the working directory when
    /// it exists.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the web UI and the REST API (the default).
    Serve,
    /// Explains images without the server and writes PNGs, `.npy` heatmaps
    /// and a JSON manifest.
    Explain(ExplainArgs),
    /// Lists the configured models and the ones that failed to load.
    Models,
    /// Lists the plugins and the ones that failed to load, with errors.
    Plugins,
    /// Writes the gradient model derived from an ONNX classifier, for
    /// inspection with standard ONNX tools.
    GradientModel(GradientModelArgs),
}

#[derive(Debug, clap::Args)]
struct GradientModelArgs {
    /// The ONNX classifier.
    model: PathBuf,
    /// Where to write the gradient model.
    #[arg(long, short = 'o', required_unless_present = "list_tensors")]
    out: Option<PathBuf>,
    /// Lists the tensors that `--tensor` accepts, with their operator and
    /// shape, instead of writing a model.
    #[arg(long, conflicts_with_all = ["out", "tensors", "output"])]
    list_tensors: bool,
    /// An intermediate tensor whose activations and gradient are added as
    /// outputs; repeat for several.
    #[arg(long = "tensor")]
    tensors: Vec<String>,
    /// The tensor to differentiate; by default the graph's output, or the
    /// input of a final Softmax or LogSoftmax.
    #[arg(long)]
    output: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// A model id; repeat for several models.
    #[arg(long = "model", short = 'm', required = true)]
    models: Vec<String>,
    /// A plugin id, or the path of a `.wasm` file to try without installing.
    #[arg(long, short = 'v')]
    visualization: String,
    /// A setting as `name=value`; the value is read as JSON when it parses
    /// (numbers, true, false, null) and as text otherwise.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,
    /// The seed of the random source, for reproducible stochastic methods.
    #[arg(long)]
    seed: Option<u64>,
    /// The folder the results are written to.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// The images to explain.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            // The message goes to stderr once: a second copy as an ERROR log
            // line would only repeat it. RUST_LOG=debug shows it in the log too.
            tracing::debug!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,ort=warn,wasmtime=warn,cranelift=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Explain(args) => explain(config, args),
        Command::Models => list_models(&config),
        Command::Plugins => list_plugins(&config),
        Command::GradientModel(args) => gradient_model(args),
    }
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let app = Arc::new(picasso::App::start(config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(picasso::web::serve(app))?;
    Ok(ExitCode::SUCCESS)
}

fn list_models(config: &Config) -> anyhow::Result<ExitCode> {
    let catalog = picasso::app::load_models(config)?;
    for model in catalog.models() {
        let input = &model.declaration.input;
        println!(
            "{}\t{}\t{} classes\t{}x{} {} {}\tgradients: {}\tsha256:{}",
            model.id(),
            model.declaration.name,
            model.classes(),
            input.width,
            input.height,
            serde_name(&input.color),
            serde_name(&input.layout),
            model
                .summary()
                .gradients_unavailable
                .as_deref()
                .unwrap_or("available"),
            &model.content_hash[..12]
        );
    }
    for failed in catalog.failed() {
        println!("FAILED\t{}\t{}", failed.file, failed.error);
    }
    Ok(if catalog.failed().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The name a value has in declarations, such as `RGB` or `NCHW`.
fn serde_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

fn list_plugins(config: &Config) -> anyhow::Result<ExitCode> {
    let registry = picasso::app::load_plugins(config)?;
    let listings = registry.list();
    for listing in &listings {
        match &listing.descriptor {
            Some(d) => println!("{}\t{}\t{}\t{}", d.id, d.version, d.title, listing.file),
            None => println!(
                "FAILED\t{}\t{}",
                listing.file,
                listing.error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
    let failed = listings.iter().any(|l| l.error.is_some());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn explain(config: Config, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let models = picasso::app::load_models(&config)?;
    let registry = picasso::app::load_plugins(&config)?;

    let plugin = if looks_like_path(&args.visualization) {
        let path = Path::new(&args.visualization);
        let plugin = registry
            .load_file(path)
            .map_err(|error| anyhow::anyhow!("plugin `{}`: {error}", path.display()))?;
        Arc::new(plugin)
    } else {
        match registry.get(&args.visualization) {
            Some(plugin) => plugin,
            None => {
                let known: Vec<String> = registry
                    .plugins()
                    .iter()
                    .map(|p| p.id().to_owned())
                    .collect();
                bail!(
                    "unknown visualization `{}`; installed: {} (or give the path of a .wasm file)",
                    args.visualization,
                    known.join(", ")
                );
            }
        }
    };

    let request = VisualizationRequest {
        plugin: plugin.id().to_owned(),
        settings: parse_settings(&args.settings)?,
    };
    let mut chosen = Vec::new();
    for id in &args.models {
        let model = models.get(id).with_context(|| {
            let known: Vec<&str> = models.models().iter().map(|m| m.id()).collect();
            format!("unknown model `{id}`; configured: {}", known.join(", "))
        })?;
        chosen.push(model.clone());
    }
    let refs: Vec<&picasso::model::Model> = chosen.iter().map(Arc::as_ref).collect();
    let visualization =
        runner::plan_visualization(plugin, &request, &refs).map_err(anyhow::Error::msg)?;
    let plan = runner::Plan {
        job: "explain".to_owned(),
        seed: args.seed.unwrap_or_else(rand::random),
        models: chosen,
        visualizations: vec![visualization],
    };

    let upload = config.uploads.clone();
    let images = args
        .images
        .iter()
        .map(|path| {
            let path = path.clone();
            let upload = upload.clone();
            JobImage {
                id: path.display().to_string(),
                name: path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                load: Box::new(move || {
                    let bytes = std::fs::read(&path)
                        .map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
                    picasso::imageio::decode(&bytes, &upload)
                        .map(|decoded| decoded.rgba)
                        .map_err(|error| format!("`{}`: {error}", path.display()))
                }),
            }
        })
        .collect();

    ensure_empty_folder(&args.out)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let progress: runner::Progress = Arc::new(|_, _| {});
    let manifest = runner::run(
        &plan,
        registry.sandbox(),
        images,
        &args.out,
        progress,
        &cancel,
    )?;

    let mut failures = 0;
    for image in &manifest.images {
        if let Some(error) = &image.error {
            failures += 1;
            println!("{}\tFAILED\t{error}", image.name);
            continue;
        }
        for model in &image.models {
            let top = model.top_classes.first().map_or_else(String::new, |c| {
                format!("{} ({:.3})", c.label, c.probability)
            });
            println!("{}\t{}\t{top}", image.name, model.model);
            for render in &model.renders {
                if let Some(error) = &render.error {
                    failures += 1;
                    println!("\t{}\tFAILED\t{error}", render.plugin);
                }
            }
        }
    }
    println!("wrote {}", args.out.join("manifest.json").display());
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn gradient_model(args: GradientModelArgs) -> anyhow::Result<ExitCode> {
    use onnx_protobuf::Message;

    let bytes = std::fs::read(&args.model)
        .with_context(|| format!("cannot read `{}`", args.model.display()))?;
    let model = onnx_protobuf::ModelProto::parse_from_bytes(&bytes)
        .with_context(|| format!("`{}` is not an ONNX model", args.model.display()))?;
    if args.list_tensors {
        let tensors = picasso_gradient::inspectable_tensors(&model);
        if tensors.is_empty() {
            bail!(
                "`{}` has no tensors to inspect: it has no graph, uses an unsupported opset, or \
                 has no float32 tensor between its input and output",
                args.model.display()
            );
        }
        for tensor in tensors {
            let shape: Vec<String> = tensor.shape.iter().map(i64::to_string).collect();
            println!(
                "{}\t{}\t[{}]",
                tensor.name,
                tensor.op_type,
                shape.join(", ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(out) = args.out else {
        bail!("give --out PATH for the gradient model, or --list-tensors");
    };
    if out.is_dir() {
        bail!(
            "--out `{}` is a folder; give the path of the file to write, such as {}",
            out.display(),
            out.join("model.gradient.onnx").display()
        );
    }
    let same_file = std::fs::canonicalize(&out)
        .ok()
        .zip(std::fs::canonicalize(&args.model).ok())
        .is_some_and(|(a, b)| a == b);
    if same_file {
        bail!(
            "--out `{}` is the classifier itself; give another path so the model is kept",
            out.display()
        );
    }
    let request = picasso_gradient::Request {
        output: args.output,
        input: None,
        intermediates: args.tensors,
    };
    let derived = picasso_gradient::derive(&model, &request).map_err(|error| {
        let hint = match error {
            picasso_gradient::GradientError::UnknownTensor { .. } => format!(
                " (`picasso gradient-model --list-tensors {}` lists them all)",
                args.model.display()
            ),
            _ => String::new(),
        };
        anyhow::anyhow!(
            "cannot differentiate `{}`: {error}{hint}",
            args.model.display()
        )
    })?;
    picasso::fsutil::write_atomic(&out, &derived.to_bytes())
        .with_context(|| format!("cannot write `{}`", out.display()))?;
    // The temporary file behind the atomic write is private; a model written
    // for inspection is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot make `{}` readable", out.display()))?;
    }
    println!("wrote {}", out.display());
    println!(
        "inputs: {} (the model input), {} (seed: float weights shaped like {})",
        derived.input, derived.seed, derived.logits
    );
    println!(
        "outputs: {} (the differentiated tensor), {} (its gradient with respect to {})",
        derived.logits, derived.input_gradient, derived.input
    );
    for outputs in &derived.intermediates {
        println!(
            "         {} (activation of {}), {} (its gradient)",
            outputs.activation, outputs.tensor, outputs.gradient
        );
    }
    if model_has_external_data(&model) && out.parent() != args.model.parent() {
        println!(
            "note: the weights stay in the external data files next to `{}`; keep the \
             gradient model in that folder, or ONNX Runtime will not find them",
            args.model.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Tells whether any initializer keeps its values in an external file.
fn model_has_external_data(model: &onnx_protobuf::ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|graph| {
        graph
            .initializer
            .iter()
            .any(|tensor| !tensor.external_data.is_empty())
    })
}

/// Creates `out`, or checks that it is empty, so that maps of an earlier run
/// never sit next to a new manifest that does not list them.
fn ensure_empty_folder(out: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "`{}` is not empty; give --out a new or empty folder, or delete this one \
                     first, so that earlier results do not mix with new ones",
                    out.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create `{}`", out.display())),
        Err(error) => Err(error).with_context(|| format!("cannot read `{}`", out.display())),
    }
}

fn looks_like_path(value: &str) -> bool {
    value.ends_with(".wasm") || value.contains('/') || value.contains(std::path::MAIN_SEPARATOR)
}

fn parse_settings(pairs: &[String]) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let mut settings = BTreeMap::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("invalid --set `{pair}`; write it as NAME=VALUE, such as --set window=32");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::from(value));
        settings.insert(name.trim().to_owned(), value);
    }
    Ok(settings)
}
