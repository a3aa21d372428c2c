//! A soak test of the server and its sandbox: several hundred good and
//! hostile jobs on the MNIST model, several at once, against one server
//! with short deadlines. Run it through `scripts/soak`, which builds the
//! release server and the plugins first.
//!
//! A job is lost when it ends in another state, or with another error,
//! than its kind expects. A crash is the server process exiting. The
//! server's resident memory is read after the first 20 jobs and at the end. It prints a Markdown section for `BENCHMARKS.md`.
//!
//! Usage: `soak [JOBS] [CLIENTS]`, by default 400 jobs from 8 clients.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use picasso_tests::{Client, Server, ServerOptions, bundled_plugin, data, hostile_plugin, job};
use serde_json::{Value, json};

/// The server's configuration. Deadlines are short, so endless loops cost
/// little, and there are two workers whatever the machine, so runs compare.
/// The model budget is out of reach of a 2 s render. The wasm stack is the
/// one of the sandbox tests, which a recursing Rust guest passes before it
/// overflows its own stack in linear memory. The queue is shorter than the
/// number of clients, so some submissions get `503` and retry.
const CONFIG: &str = "[sandbox]\ndeadline_seconds = 2\nmemory_mib = 64\nmodel_images = 1000000\n\
                      max_wasm_stack_kib = 256\n\n[jobs]\nworkers = 2\nqueue_capacity = 4\n";

/// One kind of job in the mix, and what its render must end with.
struct Kind {
    name: &'static str,
    plugin: &'static str,
    /// The settings as JSON text; hostile jobs get `{"attack": name}`.
    settings: &'static str,
    expected: Expected,
}

enum Expected {
    /// A completed render whose first panel has this title prefix.
    Panels(&'static str),
    /// A render that failed with an error containing this text.
    Error(&'static str),
    /// A job cancelled 300 ms after it was submitted.
    Cancelled,
}

/// The mix, repeated in order: 8 good jobs and 12 hostile ones in 20.
const KINDS: &[Kind] = &[
    good("class-probabilities", r#"{"k": 3}"#, "Top 3"),
    hostile("endless-loop", Expected::Error("sandbox.deadline_seconds")),
    good("occlusion", r#"{"window": 7, "stride": 3}"#, ""),
    hostile("allocate", Expected::Error("sandbox.memory_mib")),
    good("class-probabilities", r#"{"k": 1}"#, "Top 1"),
    hostile("recurse", Expected::Error("sandbox.max_wasm_stack_kib")),
    hostile("panic", Expected::Error("panicked on purpose")),
    good("occlusion", r#"{"window": 4, "stride": 4}"#, ""),
    hostile("model-loop", Expected::Error("sandbox.deadline_seconds")),
    hostile("aliased-output", Expected::Error("sandbox.memory_mib")),
    good("class-probabilities", r#"{"k": 10}"#, "Top 10"),
    hostile("wrong-shape", Expected::Error("InvalidArgument")),
    hostile("many-panels", Expected::Error("sandbox.max_panels")),
    good("class-probabilities", r#"{"k": 5}"#, "Top 5"),
    hostile("unreachable", Expected::Error("unreachable")),
    hostile("nan-input", Expected::Error("finite")),
    good("occlusion", r#"{"window": 14, "stride": 7}"#, ""),
    hostile(
        "progress-backwards",
        Expected::Error("invalid progress report"),
    ),
    hostile("endless-loop", Expected::Cancelled),
    good("class-probabilities", r#"{"k": 2}"#, "Top 2"),
];

const fn good(plugin: &'static str, settings: &'static str, title: &'static str) -> Kind {
    Kind {
        name: plugin,
        plugin,
        settings,
        expected: Expected::Panels(title),
    }
}

const fn hostile(attack: &'static str, expected: Expected) -> Kind {
    Kind {
        name: attack,
        plugin: "hostile",
        settings: "",
        expected,
    }
}

fn settings_of(kind: &Kind) -> Value {
    if kind.plugin == "hostile" {
        json!({ "attack": kind.name })
    } else {
        serde_json::from_str(kind.settings).unwrap_or(Value::Null)
    }
}

/// What the run counted.
#[derive(Default)]
struct Tally {
    finished: AtomicUsize,
    lost: Mutex<Vec<String>>,
    retries_503: AtomicUsize,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(Ok(400), |a| a.parse())?;
    let clients: usize = args.next().map_or(Ok(8), |a| a.parse())?;

    let plugins = tempfile::tempdir()?;
    for (name, path) in [
        ("class-probabilities", bundled_plugin("class-probabilities")),
        ("occlusion", bundled_plugin("occlusion")),
        ("hostile", hostile_plugin("hostile")),
    ] {
        std::fs::copy(&path, plugins.path().join(format!("{name}.wasm")))?;
    }
    let mut server = Server::start_with(ServerOptions {
        plugins_dir: plugins.path().to_owned(),
        extra_config: CONFIG.to_owned(),
        ..ServerOptions::default()
    });
    let pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the server has no process"))?;
    let started_rss = rss_kib(pid);

    let tally = Tally::default();
    let samples = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                let client = server.client();
                let image = match client.upload(&data("mnist/7-1.png")) {
                    Ok(image) => image,
                    Err(error) => {
                        lose(&tally, format!("upload failed: {error:#}"));
                        return;
                    }
                };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= jobs {
                        return;
                    }
                    run_one(&client, &image, index, &tally);
                    // After 20 jobs every kind has run once; every 100 jobs
                    // after that shows the trend.
                    let finished = tally.finished.fetch_add(1, Ordering::Relaxed) + 1;
                    if finished == 20 || finished % 100 == 0 {
                        let rss = rss_kib(pid);
                        samples.lock().expect("lock").push((finished, rss));
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let end_rss = rss_kib(pid);
    let peak_rss = status_kib(pid, "VmHWM:");
    let crashed = server.exit_status();
    let lost = tally.lost.into_inner().expect("lock");
    let samples = samples.into_inner().expect("lock");
    let early_rss = samples.first().and_then(|(_, rss)| *rss);

    for message in &lost {
        eprintln!("lost: {message}");
    }
    println!(
        "{}",
        report(&Report {
            jobs,
            clients,
            elapsed,
            lost: lost.len(),
            crashed: crashed.map(|status| status.to_string()),
            retries_503: tally.retries_503.into_inner(),
            started_rss,
            early_rss,
            end_rss,
            peak_rss,
            samples,
        })
    );
    if !lost.is_empty() || crashed.is_some() {
        anyhow::bail!("{} jobs lost, server exit: {crashed:?}", lost.len());
    }
    Ok(())
}

/// Submits job `index` of the mix, retrying while the queue is full, and
/// checks how it ended.
fn run_one(client: &Client, image: &str, index: usize, tally: &Tally) {
    let kind = &KINDS[index % KINDS.len()];
    let spec = job(&[image], &["mnist-cnn"], kind.plugin, settings_of(kind));
    let label = format!("job {index} ({})", kind.name);
    let id = loop {
        match client.post("/api/jobs", &spec) {
            Ok(reply) if reply.status == 202 => match reply.body["id"].as_str() {
                Some(id) => break id.to_owned(),
                None => return lose(tally, format!("{label}: no id in {}", reply.body)),
            },
            Ok(reply) if reply.status == 503 => {
                tally.retries_503.fetch_add(1, Ordering::Relaxed);
                // Shorter than the Retry-After the server sends, so the
                // queue stays full and the 503 path keeps being exercised.
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(reply) => {
                return lose(
                    tally,
                    format!("{label}: status {} {}", reply.status, reply.body),
                );
            }
            Err(error) => return lose(tally, format!("{label}: submit failed: {error:#}")),
        }
    };
    if matches!(kind.expected, Expected::Cancelled) {
        std::thread::sleep(Duration::from_millis(300));
        if let Err(error) = client.post(&format!("/api/jobs/{id}/cancel"), &json!({})) {
            return lose(tally, format!("{label}: cancel failed: {error:#}"));
        }
    }
    let record = match client.wait_job(&id) {
        Ok(record) => record,
        Err(error) => return lose(tally, format!("{label}: {error:#}")),
    };
    if let Err(problem) = check(client, kind, &id, &record) {
        lose(tally, format!("{label} {id}: {problem}"));
    }
}

fn check(client: &Client, kind: &Kind, id: &str, record: &Value) -> Result<(), String> {
    let state = record["state"].as_str().unwrap_or_default();
    if let Expected::Cancelled = kind.expected {
        return match state {
            "cancelled" => Ok(()),
            other => Err(format!("state `{other}`, expected cancelled: {record}")),
        };
    }
    if state != "completed" {
        return Err(format!("state `{state}`: {record}"));
    }
    let manifest = client.manifest(id).map_err(|error| format!("{error:#}"))?;
    let render = &manifest["images"][0]["models"][0]["renders"][0];
    let error = render["error"].as_str();
    match (&kind.expected, error) {
        (Expected::Panels(title), None) => {
            let first = render["panels"][0]["title"].as_str().unwrap_or_default();
            if first.starts_with(title) {
                Ok(())
            } else {
                Err(format!("first panel `{first}`, expected `{title}…`"))
            }
        }
        (Expected::Error(fragment), Some(error)) if error.contains(fragment) => Ok(()),
        (_, error) => Err(format!("unexpected render outcome: {error:?}")),
    }
}

fn lose(tally: &Tally, message: String) {
    tally.lost.lock().expect("lock").push(message);
}

/// Reads the resident set size of a process, in KiB, from
/// `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Reads a field in KiB, such as `VmHWM:` (the peak resident set size), from
/// `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Report {
    jobs: usize,
    clients: usize,
    elapsed: Duration,
    lost: usize,
    crashed: Option<String>,
    retries_503: usize,
    started_rss: Option<u64>,
    early_rss: Option<u64>,
    end_rss: Option<u64>,
    peak_rss: Option<u64>,
    /// Resident set size after so many jobs had finished.
    samples: Vec<(usize, Option<u64>)>,
}

fn report(report: &Report) -> String {
    let mib = |kib: Option<u64>| {
        kib.map_or("unknown".to_owned(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    let change = match (report.early_rss, report.end_rss) {
        (Some(early), Some(end)) if early > 0 => {
            let percent = (end as f64 - early as f64) / early as f64 * 100.0;
            format!("{percent:+.1}% from after 20 jobs")
        }
        _ => "no value after 20 jobs".to_owned(),
    };
    let crashes = match &report.crashed {
        Some(status) => format!("1 ({status})"),
        None => "0".to_owned(),
    };

    let mut rows = vec![
        (
            "jobs run".to_owned(),
            format!(
                "{} ({} kinds in turn, {} clients at once)",
                report.jobs,
                KINDS.len(),
                report.clients
            ),
        ),
        (
            "wall time".to_owned(),
            format!("{:.0} s", report.elapsed.as_secs_f64()),
        ),
        ("jobs lost".to_owned(), report.lost.to_string()),
        ("server crashes".to_owned(), crashes),
        (
            "submissions answered 503 and retried".to_owned(),
            report.retries_503.to_string(),
        ),
        ("server RSS at start".to_owned(), mib(report.started_rss)),
    ];
    for (finished, rss) in &report.samples {
        rows.push((format!("server RSS after {finished} jobs"), mib(*rss)));
    }
    rows.push((
        "server RSS at the end".to_owned(),
        format!("{} ({change})", mib(report.end_rss)),
    ));
    rows.push(("server peak RSS (VmHWM)".to_owned(), mib(report.peak_rss)));

    let mut text = "| measure | value |\n| --- | --- |\n".to_owned();
    for (measure, value) in rows {
        let _ = writeln!(text, "| {measure} | {value} |");
    }
    text
}
