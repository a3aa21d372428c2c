//! `/api/jobs`: submitting, following and fetching the results of jobs.

use std::path::Path;

use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpResponse, web};
use serde_json::json;

use super::{ApiError, Session, blocking};
use crate::App;
use crate::job::spec::JobSpec;
use crate::store::Store;

/// Result files never change once written, but a job may still be adding
/// files, so only the browser keeps them, and not for long.
const RESULT_CACHE: &str = "private, max-age=3600";

pub async fn submit(
    session: Session,
    app: web::Data<App>,
    spec: web::Json<JobSpec>,
) -> Result<HttpResponse, ApiError> {
    let app = app.into_inner();
    let spec = spec.into_inner();
    let record = blocking(move || app.jobs.submit(session.id(), spec)).await?;
    tracing::info!(job = %record.id, "queued job");
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/jobs/{}", record.id)))
        .json(record))
}

pub async fn list(session: Session, store: web::Data<Store>) -> Result<HttpResponse, ApiError> {
    let jobs = blocking(move || store.list_jobs(session.id())).await?;
    Ok(HttpResponse::Ok().json(json!({ "jobs": jobs })))
}

pub async fn get(
    session: Session,
    store: web::Data<Store>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = blocking(move || store.job(session.id(), &id)).await?;
    Ok(HttpResponse::Ok().json(job))
}

/// Cancels a queued or running job and returns its record; a finished job
/// is returned unchanged.
pub async fn cancel(
    session: Session,
    app: web::Data<App>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let app = app.into_inner();
    let job = blocking(move || -> Result<_, ApiError> {
        app.jobs.cancel(session.id(), &id)?;
        Ok(app.store.job(session.id(), &id)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(job))
}

/// Deletes a job with its files, cancelling it first when it still runs.
pub async fn delete(
    session: Session,
    app: web::Data<App>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let app = app.into_inner();
    blocking(move || -> Result<_, ApiError> {
        let job = app.store.job(session.id(), &id)?;
        if !job.state.is_final() {
            app.jobs.cancel(session.id(), &id)?;
        }
        Ok(app.store.delete_job(session.id(), &id)?)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn manifest(
    session: Session,
    store: web::Data<Store>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let found = blocking(move || -> Result<_, ApiError> {
        let manifest = store.manifest(session.id(), &id)?;
        match manifest {
            Some(manifest) => Ok(manifest),
            None => {
                let job = store.job(session.id(), &id)?;
                Err(ApiError::NotFound(format!(
                    "job `{id}` has no manifest; it is {}{}",
                    job.state.as_str(),
                    if job.state.is_final() {
                        ""
                    } else {
                        ", and writes the manifest when it completes"
                    }
                )))
            }
        }
    })
    .await?;
    Ok(HttpResponse::Ok().json(found))
}

pub async fn file(
    session: Session,
    store: web::Data<Store>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, rel_path) = path.into_inner();
    let (name, bytes) = blocking(move || -> Result<_, ApiError> {
        let path = store.job_file(session.id(), &id, &rel_path)?;
        let bytes = std::fs::read(&path).map_err(|error| {
            ApiError::Internal(format!("failed to read `{}`: {error}", path.display()))
        })?;
        Ok((rel_path, bytes))
    })
    .await?;

    let (content_type, disposition) = file_type(&name);
    let file_name = Path::new(&name)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(ContentDisposition {
            disposition,
            parameters: vec![DispositionParam::Filename(file_name)],
        })
        .insert_header((header::CACHE_CONTROL, RESULT_CACHE))
        .body(bytes))
}

/// The MIME type of a result file and whether browsers should show it or
/// download it. NumPy arrays have no registered MIME type.
fn file_type(name: &str) -> (&'static str, DispositionType) {
    let extension = Path::new(name)
        .extension()
        .map(|extension| extension.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("png") => ("image/png", DispositionType::Inline),
        Some("json") => ("application/json", DispositionType::Inline),
        _ => ("application/octet-stream", DispositionType::Attachment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::session::SESSION_HEADER;
    use actix_web::{App as ActixApp, test};

    const ALICE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BOB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn spec() -> JobSpec {
        serde_json::from_value(json!({
            "images": ["0123456789abcdef0123456789abcdef"],
            "models": ["mnist"],
            "visualizations": [{"plugin": "occlusion"}],
        }))
        .expect("valid spec")
    }

    macro_rules! service {
        ($store:expr) => {
            test::init_service(
                ActixApp::new()
                    .app_data(web::Data::new($store.clone()))
                    .configure(crate::web::configure),
            )
            .await
        };
    }

    fn get(uri: &str, session: &str) -> test::TestRequest {
        test::TestRequest::get()
            .uri(uri)
            .insert_header((SESSION_HEADER, session))
    }

    #[actix_web::test]
    async fn job_and_files_are_served_to_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let job = store.create_job(ALICE, &spec()).expect("job");
        let job_dir = store.job_dir(&job.id);
        std::fs::create_dir_all(job_dir.join("0")).expect("folder");
        std::fs::write(job_dir.join("0/overlay.png"), b"\x89PNG").expect("png");
        std::fs::write(job_dir.join("0/map.npy"), b"\x93NUMPY").expect("npy");
        let app = service!(store);

        let body: serde_json::Value = test::call_and_read_body_json(
            &app,
            get(&format!("/api/jobs/{}", job.id), ALICE).to_request(),
        )
        .await;
        assert_eq!(body["state"], "queued");
        assert!(
            body.get("session").is_none(),
            "the session is never sent: {body}"
        );

        let response = test::call_service(
            &app,
            get(&format!("/api/jobs/{}/files/0/overlay.png", job.id), ALICE).to_request(),
        )
        .await;
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"image/png"[..])
        );
        let response = test::call_service(
            &app,
            get(&format!("/api/jobs/{}/files/0/map.npy", job.id), ALICE).to_request(),
        )
        .await;
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/octet-stream"[..])
        );

        for uri in [
            format!("/api/jobs/{}", job.id),
            format!("/api/jobs/{}/files/0/overlay.png", job.id),
            format!("/api/jobs/{}/manifest", job.id),
        ] {
            let response = test::call_service(&app, get(&uri, BOB).to_request()).await;
            assert_eq!(response.status().as_u16(), 404, "{uri} for another session");
        }
        let body: serde_json::Value =
            test::call_and_read_body_json(&app, get("/api/jobs", BOB).to_request()).await;
        assert_eq!(body["jobs"], json!([]));
    }

    #[actix_web::test]
    async fn traversal_in_file_path_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let job = store.create_job(ALICE, &spec()).expect("job");
        store.job_dir(&job.id);
        let app = service!(store);
        for path in ["..%2F..%2Fpicasso.sqlite3", "%2Fetc%2Fpasswd", "a/../../x"] {
            let uri = format!("/api/jobs/{}/files/{path}", job.id);
            let response = test::call_service(&app, get(&uri, ALICE).to_request()).await;
            let status = response.status().as_u16();
            assert!(status == 400 || status == 404, "{uri} gave {status}");
            let body = test::read_body(response).await;
            assert!(!body.starts_with(b"SQLite"), "{uri} leaked the database");
        }
    }

    #[actix_web::test]
    async fn manifest_missing_says_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let job = store.create_job(ALICE, &spec()).expect("job");
        let app = service!(store);
        let response = test::call_service(
            &app,
            get(&format!("/api/jobs/{}/manifest", job.id), ALICE).to_request(),
        )
        .await;
        assert_eq!(response.status().as_u16(), 404);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("it is queued")),
            "{body}"
        );
    }

    // `test` names actix's module here, so this plain test uses actix's
    // attribute too.
    #[actix_web::test]
    async fn file_types_match_extensions() {
        assert_eq!(file_type("a/b.png").0, "image/png");
        assert_eq!(file_type("manifest.json").0, "application/json");
        assert!(matches!(file_type("m.npy").1, DispositionType::Attachment));
    }
}
