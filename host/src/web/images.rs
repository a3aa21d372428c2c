//! `/api/images`: uploads of the session.
//!
//! `POST /api/images` takes a `multipart/form-data` body with one or more
//! file fields (any field name; fields without a file name are ignored).
//! Files are read and stored one at a time, in the order they arrive. A file
//! that breaks a limit or does not decode is skipped, and the rest are still
//! stored, up to `uploads.max_files` files read, good or bad. When every file was stored the response is `201` with
//! `{"images": [...]}`. Otherwise it carries the first bad file's status
//! (413, 415 or 422) and error, which names the file, with every stored file
//! under `stored` and every bad one under `failed`. A body that is not valid
//! multipart ends the request where it breaks.

use actix_multipart::{Field, Multipart};
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use serde_json::json;

use super::error::{FailedFile, capped};
use super::{ApiError, Session, blocking};
use crate::config::UploadConfig;
use crate::imageio;
use crate::store::{ImageRecord, Store, display_name};

/// Stored uploads never change under their id, so browsers may keep them;
/// `private` keeps shared caches from storing one session's photos.
const IMMUTABLE_PRIVATE: &str = "private, max-age=86400";

pub async fn upload(
    session: Session,
    store: web::Data<Store>,
    limits: web::Data<UploadConfig>,
    mut payload: Multipart,
) -> Result<HttpResponse, ApiError> {
    let mut stored = Vec::new();
    let mut failures = Failures::default();
    // Files read, good or bad, so that bad files count toward the limit too.
    let mut files = 0;
    while let Some(field) = payload.next().await {
        let field = match field {
            Ok(field) => field,
            Err(error) => {
                let error =
                    ApiError::BadRequest(format!("invalid multipart/form-data body: {error}"));
                failures.add(&session, None, error);
                break;
            }
        };
        let name = file_name(&field);
        if let Some(name) = name.as_deref().filter(|n| !n.is_empty())
            && files >= limits.max_files
        {
            // The rest of the body is not read, so a request cannot make the
            // server decode more than `max_files` files, good or bad.
            failures.add(&session, Some(name), too_many_files(name, &limits));
            break;
        }
        match receive(field, &session, &store, &limits, files).await {
            Ok(Some(record)) => {
                files += 1;
                stored.push(record);
            }
            Ok(None) => {}
            Err(error) => {
                files += 1;
                failures.add(&session, name.as_deref(), error);
            }
        }
    }

    if let Some(first) = failures.first {
        return Err(ApiError::Upload {
            source: Box::new(first),
            stored,
            failed: failures.failed,
        });
    }
    if stored.is_empty() {
        return Err(ApiError::BadRequest(
            "the upload contains no files; send each image as a file field of a \
             multipart/form-data body, as `curl -F file=@cat.jpg` does"
                .into(),
        ));
    }
    tracing::info!(
        session = session.id(),
        files = stored.len(),
        "stored uploads"
    );
    Ok(HttpResponse::Created().json(json!({ "images": stored })))
}

/// Reads one field and stores it when it is a file. Returns `None` for
/// fields without a file name and for the empty part that browsers send
/// when no file was chosen.
async fn receive(
    mut field: Field,
    session: &Session,
    store: &web::Data<Store>,
    limits: &web::Data<UploadConfig>,
    files_before: usize,
) -> Result<Option<ImageRecord>, ApiError> {
    let Some(name) = file_name(&field) else {
        drain(&mut field).await?;
        return Ok(None);
    };

    // Named files past the limit never get here; an unnamed part counts
    // only once it turns out to hold bytes.
    let too_many = files_before >= limits.max_files;
    let bytes = read_limited(&mut field, &name, limits).await?;
    if name.is_empty() && bytes.is_empty() {
        return Ok(None);
    }
    if too_many {
        return Err(too_many_files(&name, limits));
    }

    let (store, limits, session) = (store.clone(), limits.clone(), session.0.clone());
    let record = blocking(move || store.add_image(&session, &name, &bytes, &limits)).await?;
    Ok(Some(record))
}

/// The failures of one upload: the first one's error, which sets the
/// response's status, and every one as the response lists it.
#[derive(Default)]
struct Failures {
    first: Option<ApiError>,
    failed: Vec<FailedFile>,
}

impl Failures {
    /// Records that `file` (or the body itself, for `None`) failed, and logs it.
    fn add(&mut self, session: &Session, file: Option<&str>, error: ApiError) {
        let file = file.map(display_name);
        let message = capped(error.to_string());
        tracing::info!(session = session.id(), file = ?file, error = %message, "upload file rejected");
        self.failed.push(FailedFile {
            file,
            error: message,
        });
        self.first.get_or_insert(error);
    }
}

/// Returns the file name a field was sent with, plain (`filename=`) or
/// encoded (`filename*=`), or `None` for a field without one.
fn file_name(field: &Field) -> Option<String> {
    let disposition = field.content_disposition()?;
    disposition.get_filename().map(str::to_owned).or_else(|| {
        disposition
            .get_filename_ext()
            .map(|extended| String::from_utf8_lossy(&extended.value).into_owned())
    })
}

fn too_many_files(name: &str, limits: &UploadConfig) -> ApiError {
    ApiError::TooLarge(format!(
        "file `{}` is one more than the {} files one upload may contain \
         (uploads.max_files), so it and the files after it were not read; send them \
         in another request",
        display_name(name),
        limits.max_files
    ))
}

/// Reads a file field, stopping as soon as it passes `uploads.max_bytes`.
async fn read_limited(
    field: &mut Field,
    name: &str,
    limits: &UploadConfig,
) -> Result<Vec<u8>, ApiError> {
    let max_bytes = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
    let mut bytes = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::BadRequest(format!(
                "failed to read file `{}` of the upload: {error}",
                display_name(name)
            ))
        })?;
        if bytes.len() + chunk.len() > max_bytes {
            return Err(imageio::larger_than_limit(limits)
                .named(&display_name(name))
                .into());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn drain(field: &mut Field) -> Result<(), ApiError> {
    while let Some(chunk) = field.next().await {
        chunk.map_err(|error| {
            ApiError::BadRequest(format!("invalid multipart/form-data body: {error}"))
        })?;
    }
    Ok(())
}

pub async fn list(session: Session, store: web::Data<Store>) -> Result<HttpResponse, ApiError> {
    let images = blocking(move || store.list_images(session.id())).await?;
    Ok(HttpResponse::Ok().json(json!({ "images": images })))
}

pub async fn metadata(
    session: Session,
    store: web::Data<Store>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let image = blocking(move || store.image(session.id(), &id)).await?;
    Ok(HttpResponse::Ok().json(image))
}

pub async fn file(
    session: Session,
    store: web::Data<Store>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (image, bytes) = blocking(move || store.image_bytes(session.id(), &id)).await?;
    let disposition = ContentDisposition {
        disposition: DispositionType::Inline,
        parameters: vec![DispositionParam::Filename(image.name.clone())],
    };
    Ok(HttpResponse::Ok()
        .content_type(image.content_type())
        .insert_header(disposition)
        .insert_header((header::CACHE_CONTROL, IMMUTABLE_PRIVATE))
        .body(bytes))
}

pub async fn thumbnail(
    session: Session,
    store: web::Data<Store>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let png = blocking(move || store.thumbnail(session.id(), &id)).await?;
    Ok(HttpResponse::Ok()
        .content_type("image/png")
        .insert_header((header::CACHE_CONTROL, IMMUTABLE_PRIVATE))
        .body(png))
}

pub async fn delete(
    session: Session,
    store: web::Data<Store>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    blocking(move || store.delete_image(session.id(), &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::session::SESSION_HEADER;
    use actix_web::{App, test};
    use std::io::Cursor;

    const ALICE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BOB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const BOUNDARY: &str = "picasso-test-boundary";

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image::DynamicImage::new_rgb8(width, height)
            .write_to(&mut bytes, image::ImageFormat::Png)
            .expect("encode PNG");
        bytes.into_inner()
    }

    fn multipart(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, bytes) in files {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
                     filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }

    fn upload_request(session: &str, files: &[(&str, &[u8])]) -> test::TestRequest {
        test::TestRequest::post()
            .uri("/api/images")
            .insert_header((SESSION_HEADER, session))
            .insert_header((
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            ))
            .set_payload(multipart(files))
    }

    macro_rules! service {
        ($store:expr, $limits:expr) => {
            test::init_service(
                App::new()
                    .app_data(web::Data::new($store.clone()))
                    .app_data(web::Data::new($limits))
                    .configure(crate::web::configure),
            )
            .await
        };
    }

    #[actix_web::test]
    async fn upload_list_fetch_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let app = service!(store, UploadConfig::default());

        let first = png(20, 10);
        let request = upload_request(ALICE, &[("a.png", &first), ("b.png", &png(3, 3))]);
        let response = test::call_service(&app, request.to_request()).await;
        assert_eq!(response.status().as_u16(), 201);
        let body: serde_json::Value = test::read_body_json(response).await;
        let images = body["images"].as_array().expect("images array");
        assert_eq!(images.len(), 2);
        assert_eq!(images[0]["name"], "a.png");
        assert_eq!(images[0]["width"], 20);
        let id = images[0]["id"].as_str().expect("id").to_owned();

        let list = test::TestRequest::get()
            .uri("/api/images")
            .insert_header((SESSION_HEADER, ALICE));
        let body: serde_json::Value = test::call_and_read_body_json(&app, list.to_request()).await;
        assert_eq!(body["images"].as_array().map(Vec::len), Some(2));

        let fetch = test::TestRequest::get()
            .uri(&format!("/api/images/{id}/file"))
            .insert_header((SESSION_HEADER, ALICE));
        let response = test::call_service(&app, fetch.to_request()).await;
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"image/png"[..])
        );
        assert_eq!(test::read_body(response).await, first);

        let other = test::TestRequest::get()
            .uri(&format!("/api/images/{id}/file"))
            .insert_header((SESSION_HEADER, BOB));
        let response = test::call_service(&app, other.to_request()).await;
        assert_eq!(response.status().as_u16(), 404, "another session");

        let delete = test::TestRequest::delete()
            .uri(&format!("/api/images/{id}"))
            .insert_header((SESSION_HEADER, ALICE));
        let response = test::call_service(&app, delete.to_request()).await;
        assert_eq!(response.status().as_u16(), 204);
        let again = test::TestRequest::get()
            .uri(&format!("/api/images/{id}"))
            .insert_header((SESSION_HEADER, ALICE));
        let response = test::call_service(&app, again.to_request()).await;
        assert_eq!(response.status().as_u16(), 404);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(&id)),
            "{body}"
        );
    }

    #[actix_web::test]
    async fn unusual_file_name_is_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let app = service!(store, UploadConfig::default());
        let name = "caf\u{e9} \\\"quoted\\\".png";
        let bytes = png(2, 2);
        let files: [(&str, &[u8]); 1] = [(name, &bytes)];
        let response = test::call_service(&app, upload_request(ALICE, &files).to_request()).await;
        assert_eq!(response.status().as_u16(), 201);
        let body: serde_json::Value = test::read_body_json(response).await;
        let id = body["images"][0]["id"].as_str().expect("id").to_owned();

        let fetch = test::TestRequest::get()
            .uri(&format!("/api/images/{id}/file"))
            .insert_header((SESSION_HEADER, ALICE));
        let response = test::call_service(&app, fetch.to_request()).await;
        assert_eq!(
            response.status().as_u16(),
            200,
            "name {:?}",
            body["images"][0]["name"]
        );
        assert!(response.headers().contains_key(header::CONTENT_DISPOSITION));
    }

    #[actix_web::test]
    async fn bad_file_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let app = service!(store, UploadConfig::default());

        let good = png(4, 4);
        let files: [(&str, &[u8]); 3] = [
            ("good.png", &good),
            ("notes.txt", b"not an image"),
            ("after.png", &good),
        ];
        let response = test::call_service(&app, upload_request(ALICE, &files).to_request()).await;
        assert_eq!(response.status().as_u16(), 415);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(
            body["error"],
            "file `notes.txt` is not an image in a supported format \
             (PNG, JPEG, WebP, GIF, BMP, TIFF)"
        );
        assert_eq!(body["stored"][0]["name"], "good.png");
        assert_eq!(body["stored"][1]["name"], "after.png");
        assert_eq!(body["failed"][0]["file"], "notes.txt");
        assert_eq!(body["failed"].as_array().map(Vec::len), Some(1));
        let names: Vec<_> = store
            .list_images(ALICE)
            .expect("list")
            .into_iter()
            .map(|image| image.name)
            .collect();
        assert_eq!(names.len(), 2, "both good files are stored: {names:?}");
    }

    #[actix_web::test]
    async fn oversized_file_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let big = png(64, 64);
        let small = png(2, 2);
        let limits = UploadConfig {
            max_bytes: (big.len() - 1) as u64,
            ..UploadConfig::default()
        };
        let app = service!(store, limits);
        let files: [(&str, &[u8]); 3] = [("big.png", &big), ("small.png", &small), ("x.txt", b"x")];
        let response = test::call_service(&app, upload_request(ALICE, &files).to_request()).await;
        assert_eq!(
            response.status().as_u16(),
            413,
            "the first failure's status"
        );
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["stored"][0]["name"], "small.png", "{body}");
        let failed = failed_files(&body);
        assert_eq!(failed, ["big.png", "x.txt"], "{body}");
    }

    /// Lists the file names under `failed` in an upload's error body.
    fn failed_files(body: &serde_json::Value) -> Vec<&str> {
        body["failed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["file"].as_str())
            .collect()
    }

    #[actix_web::test]
    async fn bad_files_count_toward_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let limits = UploadConfig {
            max_files: 2,
            ..UploadConfig::default()
        };
        let app = service!(store, limits);
        let good = png(2, 2);
        let files: [(&str, &[u8]); 4] = [
            ("a.txt", b"bad"),
            ("b.txt", b"bad"),
            ("c.png", &good),
            ("d.png", &good),
        ];
        let response = test::call_service(&app, upload_request(ALICE, &files).to_request()).await;
        let body: serde_json::Value = test::read_body_json(response).await;
        let failed = failed_files(&body);
        assert_eq!(failed, ["a.txt", "b.txt", "c.png"], "{body}");
        assert!(
            body["failed"][2]["error"]
                .as_str()
                .is_some_and(|e| e.contains("uploads.max_files")),
            "{body}"
        );
        assert!(body.get("stored").is_none(), "{body}");
        assert!(store.list_images(ALICE).expect("list").is_empty());
    }

    #[actix_web::test]
    async fn oversized_file_is_rejected_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let big = png(64, 64);
        let limits = UploadConfig {
            max_bytes: (big.len() - 1) as u64,
            ..UploadConfig::default()
        };
        let app = service!(store, limits);
        let files: [(&str, &[u8]); 1] = [("big.png", &big)];
        let response = test::call_service(&app, upload_request(ALICE, &files).to_request()).await;
        assert_eq!(response.status().as_u16(), 413);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("file `big.png` is larger than the limit")),
            "{body}"
        );
        assert!(body.get("stored").is_none(), "nothing was stored: {body}");
        assert!(store.list_images(ALICE).expect("list").is_empty());
    }

    #[actix_web::test]
    async fn too_many_files_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let limits = UploadConfig {
            max_files: 1,
            ..UploadConfig::default()
        };
        let app = service!(store, limits);
        let image = png(2, 2);
        let files: [(&str, &[u8]); 2] = [("one.png", &image), ("two.png", &image)];
        let response = test::call_service(&app, upload_request(ALICE, &files).to_request()).await;
        assert_eq!(response.status().as_u16(), 413);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("uploads.max_files")),
            "{body}"
        );
        assert_eq!(store.list_images(ALICE).expect("list").len(), 1);
    }

    #[actix_web::test]
    async fn empty_or_wrong_body_is_bad_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let app = service!(store, UploadConfig::default());

        let response = test::call_service(&app, upload_request(ALICE, &[]).to_request()).await;
        assert_eq!(response.status().as_u16(), 400, "no files");

        let json = test::TestRequest::post()
            .uri("/api/images")
            .insert_header((SESSION_HEADER, ALICE))
            .set_json(json!({"image": "cat.png"}));
        let response = test::call_service(&app, json.to_request()).await;
        assert_eq!(response.status().as_u16(), 400, "not multipart");
        let body: serde_json::Value = test::read_body_json(response).await;
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("multipart")),
            "{body}"
        );
    }
}
