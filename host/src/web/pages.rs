//! The web pages and their static assets, all embedded in the binary so it
//! runs from any working directory.
//!
//! Two pages: `/` (upload, choose, run, see results and past jobs) and
//! `/jobs/{id}` (one job's results, which works after a restart), and an
//! HTML "not found" page for other GET paths outside `/api`. Tera
//! escapes every value the server puts in them; the script builds the
//! dynamic parts with `textContent`, never with HTML strings.

use actix_web::guard::{self, GuardContext};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use tera::{Context, Tera};

use super::catalog::Visualizations;
use super::{ApiError, Session, blocking};
use crate::App;
use crate::model::{FailedModel, ModelSummary};
use crate::plugin::PluginListing;
use crate::render::{self, Scale};
use crate::store::{Store, StoreError};
use crate::text::truncate;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../../templates/base.html")),
    ("index.html", include_str!("../../../templates/index.html")),
    ("job.html", include_str!("../../../templates/job.html")),
    (
        "not_found.html",
        include_str!("../../../templates/not_found.html"),
    ),
];

/// How much of an unknown path the "not found" page repeats: enough to spot
/// a typo without echoing a huge URL back.
const DISPLAYED_PATH_CHARS: usize = 200;

/// Static assets by the name they are served under, below `/static/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../templates/static/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../templates/static/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../../templates/static/favicon.svg"),
    ),
];

/// Assets change only with the binary; an hour of caching saves requests
/// without keeping an upgraded page on an old script for long.
const ASSET_CACHE: &str = "public, max-age=3600";

/// The parsed page templates.
#[derive(Debug)]
pub struct Pages {
    tera: Tera,
}

/// The data of the index page, apart from the parts the script loads.
#[derive(Debug, Serialize)]
pub struct IndexContext {
    pub version: &'static str,
    pub models: Vec<ModelSummary>,
    pub failed_models: Vec<FailedModel>,
    pub visualizations: Vec<PluginListing>,
    pub failed_visualizations: Vec<PluginListing>,
    /// `uploads.max_bytes`, formatted for people.
    pub max_size: String,
    pub max_files: usize,
}

impl IndexContext {
    pub fn of(app: &App) -> IndexContext {
        let plugins = Visualizations::of(app);
        IndexContext {
            version: crate::HOST_VERSION,
            models: app.models.list(),
            failed_models: app.models.failed().to_vec(),
            visualizations: plugins.visualizations,
            failed_visualizations: plugins.failed,
            max_size: crate::imageio::human_size(app.config.uploads.max_bytes),
            max_files: app.config.uploads.max_files,
        }
    }
}

impl Pages {
    /// Parses the embedded templates.
    ///
    /// # Errors
    ///
    /// A template with a syntax error, which the tests catch.
    pub fn new() -> Result<Pages, tera::Error> {
        let mut tera = Tera::default();
        tera.add_raw_templates(TEMPLATES.iter().copied())?;
        Ok(Pages { tera })
    }

    /// Renders the index page.
    ///
    /// # Errors
    ///
    /// A template that does not fit the context, a bug the tests catch.
    pub fn index(&self, context: &IndexContext) -> Result<String, tera::Error> {
        self.tera
            .render("index.html", &Context::from_serialize(context)?)
    }

    /// Renders the result page of one job, or its "not found" form.
    ///
    /// # Errors
    ///
    /// A template that does not fit the context, a bug the tests catch.
    pub fn job(&self, job_id: &str, found: bool) -> Result<String, tera::Error> {
        let mut context = Context::new();
        context.insert("version", crate::HOST_VERSION);
        context.insert("job_id", job_id);
        context.insert("found", &found);
        self.tera.render("job.html", &context)
    }

    /// Renders the "not found" page for `path`, shortened to
    /// [`DISPLAYED_PATH_CHARS`] characters.
    ///
    /// # Errors
    ///
    /// A template that does not fit the context, a bug the tests catch.
    pub fn not_found(&self, path: &str) -> Result<String, tera::Error> {
        let displayed = truncate(path, DISPLAYED_PATH_CHARS);
        let mut context = Context::new();
        context.insert("version", crate::HOST_VERSION);
        context.insert("path", &displayed);
        self.tera.render("not_found.html", &context)
    }
}

pub(super) fn register(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(index))
        .route("/jobs/{id}", web::get().to(job_page))
        .route("/static/colorbar/{scale}.png", web::get().to(colorbar))
        .route("/static/{name}", web::get().to(asset))
        // Registered last, so it receives only paths that no page matched. API
        // paths and other methods skip it and keep the JSON 404 of the
        // default service, which API clients parse.
        .service(
            web::resource("/{path:.*}")
                .guard(guard::Get())
                .guard(guard::fn_guard(is_page_path))
                .to(not_found_page),
        );
}

fn is_page_path(context: &GuardContext<'_>) -> bool {
    let path = context.head().uri.path();
    path != "/api" && !path.starts_with("/api/")
}

async fn not_found_page(
    request: HttpRequest,
    pages: web::Data<Pages>,
) -> Result<HttpResponse, ApiError> {
    // The matched tail is percent-decoded, so the page shows `/café`
    // rather than `/caf%C3%A9`. Tera escapes it.
    let path = format!("/{}", request.match_info().query("path"));
    let html = pages.not_found(&path).map_err(template_error)?;
    Ok(html_response(StatusCode::NOT_FOUND, html))
}

async fn index(app: web::Data<App>, pages: web::Data<Pages>) -> Result<HttpResponse, ApiError> {
    let html = pages
        .index(&IndexContext::of(&app))
        .map_err(template_error)?;
    Ok(html_response(StatusCode::OK, html))
}

async fn job_page(
    session: Session,
    store: web::Data<Store>,
    pages: web::Data<Pages>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let lookup_id = id.clone();
    let found = match blocking(move || store.job(session.id(), &lookup_id)).await {
        Ok(_) => true,
        Err(ApiError::Store(StoreError::NotFound(_))) => false,
        Err(error) => return Err(error),
    };
    // An unknown id is shown cut short, because it comes from the request.
    let displayed_id = if found {
        id
    } else {
        truncate(&id, DISPLAYED_PATH_CHARS)
    };
    let html = pages.job(&displayed_id, found).map_err(template_error)?;
    let status = if found {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok(html_response(status, html))
}

async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(asset, ..)| *asset == *name) else {
        return Err(ApiError::NotFound(format!("no static file `{name}`")));
    };
    Ok(HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CACHE_CONTROL, ASSET_CACHE))
        .body(*body))
}

/// Serves the color bar of a scale, drawn by the same code that colors
/// heatmaps, so the legend cannot drift from the maps.
async fn colorbar(scale: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let scale = match scale.as_str() {
        "sequential" => Scale::Sequential,
        "diverging" => Scale::Diverging,
        other => {
            return Err(ApiError::NotFound(format!(
                "no color scale `{other}`; use `sequential` or `diverging`"
            )));
        }
    };
    let png = render::png(&render::colorbar(scale))
        .map_err(|error| ApiError::Internal(format!("failed to encode a color bar: {error}")))?;
    Ok(HttpResponse::Ok()
        .content_type("image/png")
        .insert_header((header::CACHE_CONTROL, ASSET_CACHE))
        .body(png))
}

fn html_response(status: StatusCode, html: String) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(ContentType::html())
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(html)
}

fn template_error(error: tera::Error) -> ApiError {
    // Tera's own message is terse; the source chain names the variable.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::Internal(format!("failed to render a page: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InputSummary;
    use crate::model::declaration::Layout;
    use crate::plugin::settings::{DescriptorJson, SettingJson, SettingKindJson};

    const HOSTILE: &str = "<script>alert('x')</script>";

    fn listing(id: &str, reference: &str, needs_gradients: bool) -> PluginListing {
        PluginListing {
            file: format!("{id}.wasm"),
            content_hash: "ab".repeat(32),
            status: "loaded",
            error: None,
            descriptor: Some(DescriptorJson {
                id: id.to_owned(),
                version: "1.0.0".to_owned(),
                title: format!("Title {HOSTILE}"),
                description: format!("Description {HOSTILE}"),
                reference: reference.to_owned(),
                needs_gradients,
                settings: vec![SettingJson {
                    name: "window".to_owned(),
                    label: "Window".to_owned(),
                    help: "Side of the occluding square, in pixels.".to_owned(),
                    kind: SettingKindJson::Integer { min: 1, max: 64 },
                    default: serde_json::json!(8),
                }],
            }),
        }
    }

    fn context() -> IndexContext {
        IndexContext {
            version: "0.1.0",
            models: vec![ModelSummary {
                id: "mnist".to_owned(),
                name: format!("MNIST {HOSTILE}"),
                content_hash: "cd".repeat(32),
                input: InputSummary {
                    layout: Layout::Nchw,
                    width: 28,
                    height: 28,
                    channels: 1,
                },
                classes: 10,
                labels: (0..10).map(|digit| digit.to_string()).collect(),
                tensors: Vec::new(),
                gradients_unavailable: Some(format!("no gradient model {HOSTILE}")),
            }],
            failed_models: vec![FailedModel {
                file: "broken.toml".to_owned(),
                error: format!("missing key {HOSTILE}"),
            }],
            visualizations: vec![
                listing("occlusion", "https://arxiv.org/abs/1311.2901", false),
                listing("saliency", "javascript:alert(1)", true),
            ],
            failed_visualizations: vec![PluginListing {
                file: "/srv/picasso/plugins/bad.wasm".to_owned(),
                content_hash: "ef".repeat(32),
                status: "failed",
                error: Some(format!("trap {HOSTILE}")),
                descriptor: None,
            }],
            max_size: "32 MiB".to_owned(),
            max_files: 32,
        }
    }

    #[test]
    fn index_escapes_everything_from_plugins_and_models() {
        let pages = Pages::new().expect("templates parse");
        let html = pages.index(&context()).expect("index renders");
        assert!(!html.contains(HOSTILE), "raw markup from data in the page");
        assert!(
            html.contains("&lt;script&gt;"),
            "data is escaped, not dropped"
        );
        assert!(html.contains("missing key"), "failed models are listed");
        assert!(html.contains("bad.wasm"), "failed plugins are listed");
        assert!(
            !html.contains("srv"),
            "by file name, without server folders"
        );
        assert!(html.contains("trap &lt;script&gt;"), "with their errors");
    }

    #[test]
    fn index_links_only_web_references() {
        let pages = Pages::new().expect("templates parse");
        let html = pages.index(&context()).expect("index renders");
        assert!(
            html.contains("href=\"https:&#x2F;&#x2F;arxiv.org"),
            "{html}"
        );
        assert!(
            !html.contains("href=\"javascript"),
            "a javascript: reference must not become a link"
        );
    }

    #[test]
    fn job_page_renders_both_forms() {
        let pages = Pages::new().expect("templates parse");
        let id = "0123456789abcdef0123456789abcdef";
        let found = pages.job(id, true).expect("job page renders");
        assert!(found.contains(id));
        let missing = pages.job(id, false).expect("missing job page renders");
        assert!(missing.contains("not found"), "{missing}");
    }

    #[actix_web::test]
    async fn assets_are_served() {
        use actix_web::{App as ActixApp, test};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let app = test::init_service(
            ActixApp::new()
                .app_data(web::Data::new(store))
                .app_data(web::Data::new(Pages::new().expect("templates parse")))
                .configure(crate::web::configure),
        )
        .await;
        for (path, content_type) in [
            ("/static/app.js", "text/javascript; charset=utf-8"),
            ("/static/style.css", "text/css; charset=utf-8"),
            ("/static/colorbar/diverging.png", "image/png"),
        ] {
            let response =
                test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
            assert_eq!(response.status().as_u16(), 200, "{path}");
            assert_eq!(
                response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.as_bytes()),
                Some(content_type.as_bytes()),
                "{path}"
            );
            assert!(
                response.headers().contains_key("content-security-policy"),
                "{path} carries the security headers"
            );
        }
        let response = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/static/../Cargo.toml")
                .to_request(),
        )
        .await;
        assert_eq!(response.status().as_u16(), 404);
    }

    #[actix_web::test]
    async fn unknown_paths_get_html_or_json_404() {
        use actix_web::{App as ActixApp, test};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let app = test::init_service(
            ActixApp::new()
                .app_data(web::Data::new(store))
                .app_data(web::Data::new(Pages::new().expect("templates parse")))
                .configure(crate::web::configure),
        )
        .await;
        let cases = [
            (test::TestRequest::get(), "/jobs/x/y", "text/html"),
            (test::TestRequest::get(), "/api/nope", "application/json"),
            (test::TestRequest::get(), "/api", "application/json"),
            (test::TestRequest::post(), "/nope", "application/json"),
        ];
        for (request, path, content_type) in cases {
            let response = test::call_service(&app, request.uri(path).to_request()).await;
            assert_eq!(response.status().as_u16(), 404, "{path}");
            let found = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(found.starts_with(content_type), "{path}: {found}");
        }

        let hostile = "/%3Cscript%3Ealert(1)%3C/script%3E";
        let response =
            test::call_service(&app, test::TestRequest::get().uri(hostile).to_request()).await;
        let body = test::read_body(response).await;
        let html = String::from_utf8_lossy(&body);
        assert!(html.contains("Page not found"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)"),
            "the path is decoded and escaped: {html}"
        );
        assert!(
            !html.contains("<script>"),
            "no markup from the path: {html}"
        );
    }
}
