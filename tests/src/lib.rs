//! A harness for end-to-end tests: starts the real `picasso` binary the way
//! `scripts/run` does (`picasso --config FILE serve`), on a free loopback
//! port with its own data folder, and talks to it over HTTP.
//!
//! [`Server`] owns the process and its folders; [`Client`] is one browser
//! session (its own cookie jar) with helpers for the API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_owned)
}

/// The `picasso` binary under test: `PICASSO_BIN`, or the debug build.
///
/// # Panics
///
/// When the binary is missing, with the command that builds it.
pub fn picasso_bin() -> PathBuf {
    let path = std::env::var_os("PICASSO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/picasso"));
    assert!(
        path.is_file(),
        "`{}` not found; build it with `cargo build -p picasso` (scripts/test does)",
        path.display()
    );
    path
}

/// A path under `tests/data/`.
pub fn data(relative: &str) -> PathBuf {
    repo_root().join("tests/data").join(relative)
}

/// A hostile test plugin built from `tests/plugins/<name>/`.
///
/// # Panics
///
/// When the component is missing, with the command that builds it.
pub fn hostile_plugin(name: &str) -> PathBuf {
    component(
        &repo_root().join("target/hostile-plugins"),
        name,
        "build_hostile_plugins",
    )
}

/// A bundled plugin built from `plugins/<name>/`.
///
/// # Panics
///
/// When the component is missing, with the command that builds it.
pub fn bundled_plugin(name: &str) -> PathBuf {
    component(&repo_root().join("plugins"), name, "build_plugins")
}

/// `<dir>/<name>.wasm`, which the function `build` of scripts/common.sh
/// writes.
fn component(dir: &Path, name: &str, build: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "`{}` not found; build it with `bash -c 'source scripts/common.sh; {build}'` \
         (scripts/test does)",
        path.display()
    );
    path
}

/// Where a test server gets its models, plugins and data.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub models_dir: PathBuf,
    pub plugins_dir: PathBuf,
    /// Extra TOML appended to the generated configuration.
    pub extra_config: String,
    /// The binary to run instead of [`picasso_bin`].
    pub binary: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            models_dir: repo_root().join("models"),
            plugins_dir: repo_root().join("plugins"),
            extra_config: String::new(),
            binary: None,
        }
    }
}

/// A running `picasso serve` process. Dropping it kills the process.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub config_file: PathBuf,
    pub data_dir: PathBuf,
    // Keeps the folder alive as long as the server.
    _dir: tempfile::TempDir,
    log_file: PathBuf,
    binary: PathBuf,
}

impl Server {
    /// Starts a server with the repository's models and plugins.
    ///
    /// # Panics
    ///
    /// When the server does not answer `/api/health` within 60 seconds.
    pub fn start() -> Server {
        Server::start_with(ServerOptions::default())
    }

    /// Starts a server with the given folders.
    ///
    /// # Panics
    ///
    /// As [`Server::start`].
    pub fn start_with(options: ServerOptions) -> Server {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let data_dir = dir.path().join("data");
        let config_file = dir.path().join("picasso.toml");
        let log_file = dir.path().join("server.log");
        let port = free_port();
        let config = format!(
            "[server]\nbind = \"127.0.0.1\"\nport = {port}\n\n[paths]\ndata_dir = {data:?}\n\
             plugins_dir = {plugins:?}\nmodels_dir = {models:?}\n\n{extra}\n",
            data = data_dir.display().to_string(),
            plugins = options.plugins_dir.display().to_string(),
            models = options.models_dir.display().to_string(),
            extra = options.extra_config,
        );
        std::fs::write(&config_file, config).expect("write the test configuration");
        let mut server = Server {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            config_file,
            data_dir,
            _dir: dir,
            log_file,
            binary: options.binary.unwrap_or_else(picasso_bin),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .expect("open the server log");
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_file)
            .arg("serve")
            .current_dir(repo_root())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start picasso serve");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let started = Instant::now();
        let http = reqwest::blocking::Client::new();
        // A debug build compiles the plugins on first start; a minute is
        // generous and only waited for when something is wrong.
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("picasso exited with {status}; log:\n{}", self.log());
            }
            let ok = http
                .get(format!("{}/api/health", self.url))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "picasso did not become healthy in 60 s; log:\n{}",
            self.log()
        );
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Checks whether the server process is still running, and returns its
    /// exit status when it is not.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Stops the process and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a job through `client` to completion and returns its id and
    /// manifest.
    ///
    /// # Panics
    ///
    /// When the job is rejected or does not complete, with its record and
    /// the server's log.
    pub fn completed_job(&self, client: &Client, spec: &Value) -> (String, Value) {
        let record = client.run_job(spec).expect("run the job");
        assert_eq!(
            record["state"],
            "completed",
            "job record: {record}\nlog:\n{}",
            self.log()
        );
        let id = record["id"].as_str().expect("job id").to_owned();
        let manifest = client.manifest(&id).expect("manifest");
        (id, manifest)
    }

    /// A new client with its own session.
    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// One browser session talking to a server.
#[derive(Debug)]
pub struct Client {
    http: reqwest::blocking::Client,
    pub base: String,
}

/// A response's status, headers and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    fn new(base: &str) -> Client {
        let http = reqwest::blocking::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(600))
            .build()
            .expect("build an HTTP client");
        let client = Client {
            http,
            base: base.to_owned(),
        };
        // The first request creates the session cookie.
        let _ = client.get("/api/health");
        client
    }

    fn reply(response: reqwest::blocking::Response) -> anyhow::Result<Reply> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text()?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// GET a JSON path.
    pub fn get(&self, path: &str) -> anyhow::Result<Reply> {
        Self::reply(self.http.get(format!("{}{path}", self.base)).send()?)
    }

    /// GET raw bytes.
    pub fn bytes(&self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let response = self.http.get(format!("{}{path}", self.base)).send()?;
        Ok((response.status().as_u16(), response.bytes()?.to_vec()))
    }

    /// POST JSON.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        Self::reply(
            self.http
                .post(format!("{}{path}", self.base))
                .json(body)
                .send()?,
        )
    }

    /// DELETE a path.
    pub fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        Self::reply(self.http.delete(format!("{}{path}", self.base)).send()?)
    }

    /// Uploads files as one multipart request of `(file name, bytes)` parts.
    pub fn upload_bytes(&self, files: &[(&str, Vec<u8>)]) -> anyhow::Result<Reply> {
        let mut form = reqwest::blocking::multipart::Form::new();
        for (name, bytes) in files {
            let part = reqwest::blocking::multipart::Part::bytes(bytes.clone())
                .file_name(name.to_string());
            form = form.part("files", part);
        }
        Self::reply(
            self.http
                .post(format!("{}/api/images", self.base))
                .multipart(form)
                .send()?,
        )
    }

    /// Uploads one file from disk and returns its image id.
    pub fn upload(&self, path: &Path) -> anyhow::Result<String> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let reply = self.upload_bytes(&[(&name, bytes)])?;
        if reply.status != 201 && reply.status != 200 {
            bail!(
                "upload of {name} failed with {}: {}",
                reply.status,
                reply.body
            );
        }
        image_id(&reply.body).with_context(|| format!("no image id in {}", reply.body))
    }

    /// Submits a job and waits for it to end; returns its final record.
    pub fn run_job(&self, job: &Value) -> anyhow::Result<Value> {
        let reply = self.post("/api/jobs", job)?;
        if reply.status != 202 {
            bail!("job rejected with {}: {}", reply.status, reply.body);
        }
        let id = reply.body["id"].as_str().context("job id")?.to_owned();
        self.wait_job(&id)
    }

    /// Polls a job until it is no longer queued or running.
    pub fn wait_job(&self, id: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let reply = self.get(&format!("/api/jobs/{id}"))?;
            let state = reply.body["state"].as_str().unwrap_or_default().to_owned();
            if state != "queued" && state != "running" {
                return Ok(reply.body);
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("job {id} still {state} after 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The manifest of a finished job.
    pub fn manifest(&self, id: &str) -> anyhow::Result<Value> {
        let reply = self.get(&format!("/api/jobs/{id}/manifest"))?;
        if reply.status != 200 {
            bail!("manifest of {id}: {} {}", reply.status, reply.body);
        }
        Ok(reply.body)
    }

    /// A file of a job, by its path in the manifest.
    pub fn job_file(&self, id: &str, path: &str) -> anyhow::Result<Vec<u8>> {
        let (status, bytes) = self.bytes(&format!("/api/jobs/{id}/files/{path}"))?;
        if status != 200 {
            bail!("file {path} of job {id}: status {status}");
        }
        Ok(bytes)
    }
}

/// The id of the first image of an upload reply.
pub fn image_id(body: &Value) -> Option<String> {
    let first = match body {
        Value::Array(items) => items.first()?,
        Value::Object(map) if map.contains_key("images") => body["images"].get(0)?,
        other => other,
    };
    first["id"].as_str().map(str::to_owned)
}

/// A job of one image, several models and one visualization.
pub fn job(images: &[&str], models: &[&str], plugin: &str, settings: Value) -> Value {
    json!({
        "images": images,
        "models": models,
        "visualizations": [{"plugin": plugin, "settings": settings}],
    })
}

/// Returns the result of `model` for one image of a job manifest.
///
/// # Panics
///
/// When the image has no result for `model`, with the image's record.
pub fn model_result<'a>(image: &'a Value, model: &str) -> &'a Value {
    image["models"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["model"] == model))
        .unwrap_or_else(|| panic!("no result for model {model} in {image}"))
}

/// Returns the render of the job's `index`-th visualization in a model
/// result.
///
/// # Panics
///
/// When there is no such render, with the model result.
pub fn render_of(model: &Value, index: u64) -> &Value {
    model["renders"]
        .as_array()
        .and_then(|renders| renders.iter().find(|r| r["visualization"] == index))
        .unwrap_or_else(|| panic!("no render of visualization {index} in {model}"))
}

/// Returns the first heatmap panel of a render.
///
/// # Panics
///
/// When the render has no heatmap panel, with the render.
pub fn heatmap_panel(render: &Value) -> &Value {
    render["panels"]
        .as_array()
        .and_then(|panels| panels.iter().find(|p| p["kind"] == "heatmap"))
        .unwrap_or_else(|| panic!("no heatmap panel in {render}"))
}
