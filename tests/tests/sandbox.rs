//! The plugin sandbox under attack: hostile plugins built from
//! `tests/plugins/`, run by the real server over HTTP. Each attack must be
//! rejected at load time or stopped during its render, with an error that
//! names the limit, import or version involved, and a normal job
//! (`class-probabilities` on `mnist-cnn`) must succeed on the same server
//! right after.
//!
//! One server serves each group of cases, with deadlines of a few seconds,
//! to keep the suite short.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use picasso_tests::{Client, Server, ServerOptions, bundled_plugin, data, hostile_plugin, job};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The digit every job explains, and its label.
const DIGIT: &str = "mnist/7-1.png";
const DIGIT_LABEL: &str = "7";

/// How long a plugin folder change may take to show in the API: the
/// watcher's debounce plus compiling a component in a debug host.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Creates a plugins folder with `class-probabilities` and the given files,
/// as `(file name, source path)`.
fn plugins_folder(files: &[(&str, PathBuf)]) -> TempDir {
    let dir = tempfile::tempdir().expect("create a plugins folder");
    copy_plugin(
        &bundled_plugin("class-probabilities"),
        &dir.path().join("class-probabilities.wasm"),
    );
    for (name, source) in files {
        copy_plugin(source, &dir.path().join(name));
    }
    dir
}

fn copy_plugin(source: &Path, target: &Path) {
    std::fs::copy(source, target).unwrap_or_else(|error| {
        panic!("copy {} to {}: {error}", source.display(), target.display())
    });
}

fn start(plugins: &TempDir, sandbox: &str, jobs: &str) -> Server {
    Server::start_with(ServerOptions {
        plugins_dir: plugins.path().to_owned(),
        extra_config: format!("[sandbox]\n{sandbox}\n[jobs]\n{jobs}\n"),
        ..ServerOptions::default()
    })
}

fn upload_digit(client: &Client) -> String {
    client.upload(&data(DIGIT)).expect("upload the digit")
}

fn hostile_job(image: &str, attack: &str) -> Value {
    job(
        &[image],
        &["mnist-cnn"],
        "hostile",
        json!({ "attack": attack }),
    )
}

/// Runs a one-render job and returns its final record and the render's
/// entry of the manifest.
fn run_render(client: &Client, job: &Value) -> (Value, Value) {
    let record = client.run_job(job).expect("run the job");
    let id = record["id"].as_str().expect("job id");
    let manifest = client.manifest(id).expect("manifest");
    let render = manifest["images"][0]["models"][0]["renders"][0].clone();
    (record, render)
}

/// Runs an attack and returns the render's error text.
fn attack_error(client: &Client, image: &str, attack: &str) -> String {
    let (record, render) = run_render(client, &hostile_job(image, attack));
    assert_eq!(
        record["state"], "completed",
        "attack `{attack}` on mnist-cnn: a failed render still completes its job: {record}"
    );
    render["error"]
        .as_str()
        .unwrap_or_else(|| panic!("attack `{attack}` on mnist-cnn was not stopped: {render}"))
        .to_owned()
}

/// Runs `class-probabilities` on the digit and checks its top class.
fn assert_normal_job_succeeds(client: &Client, image: &str, after: &str) {
    let job = job(
        &[image],
        &["mnist-cnn"],
        "class-probabilities",
        json!({ "k": 3 }),
    );
    let (record, render) = run_render(client, &job);
    assert_eq!(
        record["state"], "completed",
        "class-probabilities on {DIGIT} with mnist-cnn after {after}: {record}"
    );
    assert_eq!(
        render["error"],
        Value::Null,
        "class-probabilities on {DIGIT} with mnist-cnn after {after}: {render}"
    );
    assert_eq!(
        render["panels"][0]["scores"][0]["label"], DIGIT_LABEL,
        "class-probabilities on {DIGIT} with mnist-cnn after {after}: {render}"
    );
}

fn assert_mentions(text: &str, expected: &[&str], case: &str) {
    for fragment in expected {
        assert!(
            text.contains(fragment),
            "{case}: expected `{fragment}` in the error: {text}"
        );
    }
}

#[test]
fn render_attacks_are_stopped_with_named_limit() {
    let plugins = plugins_folder(&[("hostile.wasm", hostile_plugin("hostile"))]);
    let server = start(
        &plugins,
        "deadline_seconds = 3\nmemory_mib = 64\nmodel_images = 100000000\n\
         max_wasm_stack_kib = 256\nmax_output_mib = 2\n",
        "workers = 2\n",
    );
    let client = server.client();
    let image = upload_digit(&client);

    let cases: &[(&str, &[&str])] = &[
        (
            "endless-loop",
            &["deadline of 3 s", "sandbox.deadline_seconds"],
        ),
        (
            "model-loop",
            &["deadline of 3 s", "sandbox.deadline_seconds"],
        ),
        (
            "allocate",
            &["memory limit of 64 MiB", "sandbox.memory_mib"],
        ),
        (
            "recurse",
            &["wasm stack limit of 256 KiB", "sandbox.max_wasm_stack_kib"],
        ),
        ("many-panels", &["100 panels", "64", "sandbox.max_panels"]),
        (
            "huge-heatmap",
            &["100000x100000", "sandbox.max_panel_pixels"],
        ),
        (
            "large-output",
            &["4.0 MiB", "limit is 2 MiB", "sandbox.max_output_mib"],
        ),
        (
            "aliased-output",
            &["more than 64 MiB", "sandbox.memory_mib"],
        ),
        (
            "panic",
            &[
                "crashed",
                "unreachable",
                "hostile plugin panicked on purpose",
            ],
        ),
        ("unreachable", &["crashed", "unreachable"]),
        (
            "wrong-shape",
            &["InvalidArgument", "[1, 3, 5, 5]", "[1, 1, 28, 28]"],
        ),
        ("huge-batch", &["LimitExceeded", "300", "sandbox.max_batch"]),
        ("nan-input", &["InvalidArgument", "NaN", "finite"]),
        (
            "class-out-of-range",
            &["InvalidArgument", "1000000", "out of range"],
        ),
        (
            "progress-backwards",
            &["invalid progress report 4/10 after 5/10"],
        ),
        ("progress-over-total", &["invalid progress report 11/10"]),
    ];
    for (attack, expected) in cases {
        let started = Instant::now();
        let error = attack_error(&client, &image, attack);
        assert_mentions(&error, expected, &format!("attack `{attack}`"));
        assert!(
            error.contains("hostile 0.1.0"),
            "attack `{attack}`: the error names the plugin and its version: {error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "attack `{attack}` took {:?}, far past its 3 s deadline",
            started.elapsed()
        );
        assert_normal_job_succeeds(&client, &image, &format!("attack `{attack}`"));
    }

    // A fresh instance per render: the plugin's static counter starts over,
    // so it cannot carry anything (such as another job's image) from one
    // render to the next.
    for round in 1..=2 {
        let (_, render) = run_render(&client, &hostile_job(&image, "count-renders"));
        assert_eq!(
            render["panels"][0]["title"], "value 1",
            "count-renders, round {round}: the instance has seen only this render: {render}"
        );
    }
}

#[test]
fn bad_plugins_are_listed_with_their_load_error() {
    let not_a_component = std::env::temp_dir().join(format!(
        "picasso-not-a-component-{}.wasm",
        std::process::id()
    ));
    std::fs::write(&not_a_component, b"this is text, not a component").expect("write");
    let core_module =
        std::env::temp_dir().join(format!("picasso-core-module-{}.wasm", std::process::id()));
    // The smallest valid core module: magic number and version 1.
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").expect("write");

    let plugins = plugins_folder(&[
        ("bad-schema.wasm", hostile_plugin("bad-schema")),
        ("core-module.wasm", core_module.clone()),
        ("describe-loop.wasm", hostile_plugin("describe-loop")),
        ("fs-import.wasm", hostile_plugin("fs-import")),
        ("markup-id.wasm", hostile_plugin("markup-id")),
        ("markup-labels.wasm", hostile_plugin("markup-labels")),
        (
            "<img src=x onerror=alert('file')>.wasm",
            not_a_component.clone(),
        ),
        ("socket-import.wasm", hostile_plugin("socket-import")),
        ("wit-next.wasm", hostile_plugin("wit-next")),
        // Sorts after class-probabilities.wasm, so the copy is the loser.
        ("zz-duplicate.wasm", bundled_plugin("class-probabilities")),
    ]);
    let _ = std::fs::remove_file(&not_a_component);
    let _ = std::fs::remove_file(&core_module);

    let mut server = start(&plugins, "describe_deadline_seconds = 1\n", "");
    let client = server.client();
    let image = upload_digit(&client);

    let expected: &[(&str, &[&str])] = &[
        ("bad-schema.wasm", &["setting `window`", "99", "1..=10"]),
        (
            "core-module.wasm",
            &["core WebAssembly module", "wasm32-wasip2"],
        ),
        (
            "describe-loop.wasm",
            &[
                "describe failed",
                "deadline of 1 s",
                "sandbox.describe_deadline_seconds",
            ],
        ),
        ("fs-import.wasm", &["wasi:filesystem/", "may not use"]),
        ("markup-id.wasm", &["id `<script>", "\\u{1b}", "lowercase"]),
        (
            "<img src=x onerror=alert('file')>.wasm",
            &["not a WebAssembly component"],
        ),
        ("socket-import.wasm", &["wasi:sockets/", "may not use"]),
        (
            "wit-next.wasm",
            &["picasso:plugin@0.2.0", "supports picasso:plugin@0.1.0"],
        ),
        (
            "zz-duplicate.wasm",
            &[
                "duplicate plugin id `class-probabilities`",
                "class-probabilities.wasm",
            ],
        ),
    ];
    let check_listing = |client: &Client, when: &str| {
        let listing = client
            .get("/api/visualizations")
            .expect("list plugins")
            .body;
        let loaded: Vec<&str> = listing["visualizations"]
            .as_array()
            .expect("visualizations")
            .iter()
            .filter_map(|v| v["descriptor"]["id"].as_str())
            .collect();
        assert_eq!(
            loaded,
            ["class-probabilities", "markup-labels"],
            "{when}: only the valid plugins load: {listing}"
        );
        let failed = listing["failed"].as_array().expect("failed plugins");
        for (file, fragments) in expected {
            let entry = failed
                .iter()
                .find(|f| f["file"].as_str().is_some_and(|path| path.ends_with(file)))
                .unwrap_or_else(|| panic!("{when}: `{file}` is listed as failed: {listing}"));
            let error = entry["error"].as_str().unwrap_or_default();
            assert_mentions(error, fragments, &format!("{when}: {file}"));
        }
        assert_eq!(
            failed.len(),
            expected.len(),
            "{when}: exactly the bad files fail: {listing}"
        );
    };
    check_listing(&client, "first start");

    let log = server.log();
    assert!(
        log.matches("failed to load plugin").count() >= expected.len() - 1,
        "every load failure is logged:\n{log}"
    );
    assert!(
        log.contains("duplicate plugin id"),
        "the duplicate id is logged as a warning:\n{log}"
    );
    // The log has ANSI colors of its own, so look for the plugin's
    // clear-screen sequence and bell rather than any escape character.
    assert!(
        !log.contains("\u{1b}[2J") && !log.contains('\u{7}'),
        "control characters from a plugin never reach the log raw"
    );

    let (status, html) = client.bytes("/").expect("GET /");
    assert_eq!(status, 200, "the index page is served");
    let html = String::from_utf8(html).expect("the page is UTF-8");
    for raw in ["<script>alert(", "<img src=x", "<b onmouseover", "\u{1b}"] {
        assert!(
            !html.contains(raw),
            "the index page contains the raw `{}` from a plugin",
            raw.escape_debug()
        );
    }
    for escaped in ["&lt;script&gt;alert(", "&lt;img src=x onerror=alert("] {
        assert!(
            html.contains(escaped),
            "the index page shows `{escaped}` from a plugin's texts"
        );
    }
    assert_normal_job_succeeds(&client, &image, "loading the bad plugins");

    corrupt_cache_entries(
        &server,
        &listing_hash(&client, "class-probabilities.wasm"),
        "corrupt",
    );
    corrupt_cache_entries(
        &server,
        &listing_hash(&client, "markup-labels.wasm"),
        "stale",
    );
    server.restart();
    let client = server.client();
    check_listing(&client, "restart with a damaged cache");
    let log = server.log();
    assert!(
        log.contains("corrupt compiled-plugin cache entry; recompiling"),
        "a cache entry whose checksum fails is recompiled:\n{log}"
    );
    assert!(
        log.contains("stale compiled-plugin cache entry; recompiling"),
        "a cache entry wasmtime rejects is recompiled:\n{log}"
    );
    let image = upload_digit(&client);
    assert_normal_job_succeeds(&client, &image, "recompiling a corrupt cache entry");
}

/// Returns the content hash of a loaded plugin file.
fn listing_hash(client: &Client, file: &str) -> String {
    let listing = client
        .get("/api/visualizations")
        .expect("list plugins")
        .body;
    listing["visualizations"]
        .as_array()
        .expect("visualizations")
        .iter()
        .find(|v| v["file"].as_str().is_some_and(|path| path.ends_with(file)))
        .and_then(|v| v["content_hash"].as_str())
        .unwrap_or_else(|| panic!("`{file}` is loaded: {listing}"))
        .to_owned()
}

/// Damages the compiled-plugin cache entries of a plugin file. `corrupt`
/// flips bytes, so the recorded checksum fails. `stale` replaces the entry
/// with garbage and a matching checksum, which only wasmtime can reject.
fn corrupt_cache_entries(server: &Server, content_hash: &str, how: &str) {
    let cache = server.data_dir.join("plugin-cache");
    let mut damaged = 0;
    for entry in std::fs::read_dir(&cache).expect("list the plugin cache") {
        let path = entry.expect("cache entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        if !name.starts_with(content_hash) || !name.ends_with(".cwasm") {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read the cache entry");
        if how == "corrupt" {
            let middle = bytes.len() / 2;
            for byte in &mut bytes[middle..middle + 64] {
                *byte ^= 0xff;
            }
            std::fs::write(&path, &bytes).expect("corrupt the cache entry");
        } else {
            let garbage = b"not a compiled component".repeat(100);
            let digest = sha256_hex(&garbage);
            std::fs::write(&path, &garbage).expect("replace the cache entry");
            std::fs::write(path.with_extension("cwasm.sha256"), digest).expect("write checksum");
        }
        damaged += 1;
    }
    assert!(
        damaged > 0,
        "no cache entry for {content_hash} in {}",
        cache.display()
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Polls the plugin listing until `check` passes or the reload timeout ends.
fn wait_for_listing(client: &Client, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let listing = client
            .get("/api/visualizations")
            .expect("list plugins")
            .body;
        if check(&listing) {
            return listing;
        }
        assert!(
            started.elapsed() < RELOAD_TIMEOUT,
            "{what} within {RELOAD_TIMEOUT:?}: {listing}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn listed(listing: &Value, key: &str, file: &str) -> Option<Value> {
    listing[key]
        .as_array()?
        .iter()
        .find(|v| v["file"].as_str().is_some_and(|path| path.ends_with(file)))
        .cloned()
}

#[test]
fn plugins_folder_changes_apply_while_running() {
    let plugins = plugins_folder(&[]);
    let server = start(&plugins, "deadline_seconds = 4\n", "workers = 2\n");
    let client = server.client();
    let image = upload_digit(&client);
    let file = plugins.path().join("hostile.wasm");

    // Added: a plain copy, so the watcher also gets events for the partial
    // writes.
    copy_plugin(&hostile_plugin("hostile"), &file);
    let listing = wait_for_listing(&client, "an added plugin appears", |listing| {
        listed(listing, "visualizations", "hostile.wasm").is_some()
    });
    let first_hash = listed(&listing, "visualizations", "hostile.wasm")
        .and_then(|v| v["content_hash"].as_str().map(str::to_owned))
        .expect("content hash");

    // A job running while its plugin file changes keeps the version it
    // started with.
    let reply = client
        .post("/api/jobs", &hostile_job(&image, "endless-loop"))
        .expect("submit");
    assert_eq!(reply.status, 202, "{}", reply.body);
    let running = reply.body["id"].as_str().expect("job id").to_owned();
    wait_for_state(&client, &running, "running");

    // Replaced: an atomic rename, as scripts/common.sh installs plugins.
    let temporary = plugins.path().join(".hostile.wasm.tmp");
    copy_plugin(&hostile_plugin("markup-labels"), &temporary);
    std::fs::rename(&temporary, &file).expect("replace hostile.wasm");
    let listing = wait_for_listing(&client, "a replaced plugin updates", |listing| {
        listed(listing, "visualizations", "hostile.wasm")
            .is_some_and(|v| v["descriptor"]["id"] == "markup-labels")
    });
    let second_hash = listed(&listing, "visualizations", "hostile.wasm")
        .and_then(|v| v["content_hash"].as_str().map(str::to_owned))
        .expect("content hash");
    assert_ne!(first_hash, second_hash, "the listing shows the new file");
    let rejected = client
        .post("/api/jobs", &hostile_job(&image, "count-renders"))
        .expect("submit");
    assert_eq!(
        rejected.status, 400,
        "the replaced plugin id is gone: {}",
        rejected.body
    );

    let record = client.wait_job(&running).expect("wait for the running job");
    let manifest = client.manifest(&running).expect("manifest");
    let error = manifest["images"][0]["models"][0]["renders"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_mentions(
        &error,
        &["hostile 0.1.0", "deadline of 4 s"],
        &format!("the job started before the replacement ({record})"),
    );

    // Removed.
    std::fs::remove_file(&file).expect("remove hostile.wasm");
    wait_for_listing(&client, "a removed plugin disappears", |listing| {
        listed(listing, "visualizations", "hostile.wasm").is_none()
            && listed(listing, "failed", "hostile.wasm").is_none()
    });
    assert_normal_job_succeeds(&client, &image, "adding, replacing and removing a plugin");
}

fn wait_for_state(client: &Client, id: &str, state: &str) -> Value {
    let started = Instant::now();
    loop {
        let record = client.get(&format!("/api/jobs/{id}")).expect("poll").body;
        if record["state"] == state {
            return record;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "job {id} never reached `{state}`: {record}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn full_queue_gets_503_and_cancel_says_why() {
    let plugins = plugins_folder(&[("hostile.wasm", hostile_plugin("hostile"))]);
    let server = start(
        &plugins,
        "deadline_seconds = 60\nmodel_images = 500\n",
        "workers = 1\nqueue_capacity = 1\n",
    );
    let client = server.client();
    let image = upload_digit(&client);

    let submit = |attack: &str| {
        client
            .post("/api/jobs", &hostile_job(&image, attack))
            .expect("submit")
    };
    let running = submit("endless-loop");
    assert_eq!(running.status, 202, "first job: {}", running.body);
    let running = running.body["id"].as_str().expect("job id").to_owned();
    wait_for_state(&client, &running, "running");
    let queued = submit("endless-loop");
    assert_eq!(queued.status, 202, "second job waits: {}", queued.body);
    let queued = queued.body["id"].as_str().expect("job id").to_owned();

    let full = submit("endless-loop");
    assert_eq!(
        full.status, 503,
        "third job with 1 worker busy and 1 waiting: {}",
        full.body
    );
    let retry_after = full
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|seconds| seconds > 0),
        "a 503 says when to retry in seconds: {:?}",
        full.headers
    );
    let message = full.body["error"].as_str().unwrap_or_default();
    assert!(message.contains("queue is full"), "{message}");

    // Cancelling the running job stops its wasm loop, long before the
    // 60 s deadline, and frees the worker for the queued job.
    let cancelled_at = Instant::now();
    let reply = client
        .post(&format!("/api/jobs/{running}/cancel"), &json!({}))
        .expect("cancel");
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_for_state(&client, &queued, "running");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "the cancelled render stopped after {:?}",
        cancelled_at.elapsed()
    );
    let reply = client
        .post(&format!("/api/jobs/{queued}/cancel"), &json!({}))
        .expect("cancel");
    assert_eq!(reply.status, 200, "{}", reply.body);
    for id in [&running, &queued] {
        let record = client.wait_job(id).expect("wait for the cancelled job");
        assert_eq!(record["state"], "cancelled", "{record}");
        let message = record["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("cancelled by the user"),
            "a cancelled job says why: {record}"
        );
    }

    let error = attack_error(&client, &image, "model-loop");
    assert_mentions(
        &error,
        &[
            "model budget of 500 images exceeded",
            "sandbox.model_images",
        ],
        "attack `model-loop` with a budget of 500 images",
    );
    assert_normal_job_succeeds(
        &client,
        &image,
        "a full queue, cancellations and a spent budget",
    );
}
