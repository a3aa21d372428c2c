//! The HTTP server: the REST API under `/api` and the web pages.
//!
//! [`serve`] binds `server.bind:server.port` and runs until the process is
//! stopped. Every request passes the [`session`] middleware, which gives it
//! the anonymous session that scopes its images and jobs. Handlers validate
//! input, hand blocking work (SQLite, files, image decoding) to
//! [`web::block`], and return [`ApiError`], the one type that maps errors to
//! status codes.
//!
//! The API routes are declared once, in the `api_routes!` table below, which
//! both registers them and lists them in [`API_ROUTES`]; a test checks that
//! list against the OpenAPI document served at `/api/openapi.json`.

mod catalog;
mod error;
mod images;
mod jobs;
mod openapi;
mod pages;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;

use crate::App;
use crate::store::Store;

pub use error::ApiError;
pub use pages::Pages;
pub use session::Session;

/// How often expired results are purged after the purge at start.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs the HTTP server for `app` until the process is stopped.
///
/// # Errors
///
/// The address cannot be bound, or the templates do not parse (a bug,
/// caught by the tests).
pub async fn serve(app: Arc<App>) -> anyhow::Result<()> {
    let bind = (app.config.server.bind.clone(), app.config.server.port);
    let pages = web::Data::new(Pages::new().context("failed to load the page templates")?);
    let app_data = web::Data::from(app.clone());
    let store = web::Data::new(app.store.clone());
    let uploads = web::Data::new(app.config.uploads.clone());

    spawn_purge(app.store.clone(), app.config.retention());

    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(app_data.clone())
            .app_data(store.clone())
            .app_data(uploads.clone())
            .app_data(pages.clone())
            .configure(configure)
    })
    .bind(&bind)
    .with_context(|| {
        format!(
            "failed to bind {}:{}; set server.bind and server.port",
            bind.0, bind.1
        )
    })?;

    tracing::info!(url = %format!("http://{}:{}/", bind.0, bind.1), "serving");
    server.run().await.context("the HTTP server failed")?;
    Ok(())
}

/// Registers every route, the middleware and the extractor settings. The
/// caller provides the shared state: [`web::Data`] of [`App`], [`Store`],
/// [`crate::config::UploadConfig`] and [`Pages`].
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("")
            .wrap(from_fn(session::middleware))
            .wrap(security_headers())
            .app_data(web::JsonConfig::default().error_handler(|error, _| {
                ApiError::BadRequest(format!("invalid JSON body: {error}")).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|error, _| {
                ApiError::BadRequest(format!("invalid path: {error}")).into()
            }))
            .configure(register_api)
            .configure(pages::register)
            .default_service(web::to(not_found)),
    );
}

/// Headers that keep browsers from running or framing anything the server
/// did not write itself: the pages load only their own script and style,
/// and user files are never sniffed into another type.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "same-origin"))
        .add((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
             script-src 'self'; object-src 'none'; base-uri 'none'; \
             frame-ancestors 'none'; form-action 'self'",
        ))
}

async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}; see /api/openapi.json for the API",
        request.method(),
        request.path()
    )))
}

/// Declares the API routes once, generating both their registration and
/// the [`API_ROUTES`] list that the OpenAPI test compares with the document.
macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:path;)*) => {
        /// Every API route as `(method, path)`, with actix path patterns.
        pub const API_ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn register_api(config: &mut web::ServiceConfig) {
            $(config.route($path, web::$method().to($handler));)*
        }
    };
}

api_routes! {
    get "/api/health" => catalog::health;
    get "/api/openapi.json" => openapi::document;
    get "/api/models" => catalog::models;
    get "/api/visualizations" => catalog::visualizations;
    post "/api/images" => images::upload;
    get "/api/images" => images::list;
    get "/api/images/{id}" => images::metadata;
    get "/api/images/{id}/file" => images::file;
    get "/api/images/{id}/thumbnail" => images::thumbnail;
    delete "/api/images/{id}" => images::delete;
    post "/api/jobs" => jobs::submit;
    get "/api/jobs" => jobs::list;
    get "/api/jobs/{id}" => jobs::get;
    post "/api/jobs/{id}/cancel" => jobs::cancel;
    delete "/api/jobs/{id}" => jobs::delete;
    get "/api/jobs/{id}/manifest" => jobs::manifest;
    get "/api/jobs/{id}/files/{path:.*}" => jobs::file;
}

/// Runs blocking work on actix's blocking pool and flattens the errors.
async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    web::block(work).await?.map_err(Into::into)
}

/// Purges expired jobs and uploads now and every [`PURGE_INTERVAL`], on the
/// blocking pool. Does nothing when results are kept forever.
fn spawn_purge(store: Store, retention: Option<Duration>) {
    let Some(retention) = retention else {
        tracing::info!("results are kept forever (results.retention_hours = 0)");
        return;
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PURGE_INTERVAL);
        loop {
            ticks.tick().await;
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.purge_expired(retention)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "failed to purge expired results"),
                Err(error) => tracing::warn!(%error, "the purge task panicked"),
            }
        }
    });
}
