//! What the server offers: models, visualizations, and its health.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::json;

use crate::App;
use crate::plugin::PluginListing;

/// Loaded plugins and the ones that failed, as `/api/visualizations` and
/// the index page show them.
#[derive(Debug, Serialize)]
pub struct Visualizations {
    pub visualizations: Vec<PluginListing>,
    pub failed: Vec<PluginListing>,
}

impl Visualizations {
    pub fn of(app: &App) -> Visualizations {
        let (visualizations, failed) = app
            .plugins
            .list()
            .into_iter()
            .partition(|listing| listing.descriptor.is_some() && listing.error.is_none());
        Visualizations {
            visualizations,
            failed,
        }
    }
}

pub async fn models(app: web::Data<App>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "models": app.models.list(),
        "failed": app.models.failed(),
    }))
}

pub async fn visualizations(app: web::Data<App>) -> HttpResponse {
    HttpResponse::Ok().json(Visualizations::of(&app))
}

pub async fn health(app: web::Data<App>) -> HttpResponse {
    let plugins = Visualizations::of(&app);
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "version": crate::HOST_VERSION,
        "models": app.models.models().len(),
        "visualizations": plugins.visualizations.len(),
        "failed_visualizations": plugins.failed.len(),
    }))
}
