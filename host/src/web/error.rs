//! The one place where errors become HTTP responses.
//!
//! Every handler returns [`ApiError`]. Its [`ResponseError`] implementation
//! picks the status code and writes the body `{"error": "<message>"}`, plus
//! `"stored"` for an upload that was cut short by a bad file. Server errors
//! (5xx) are logged at `error`, client errors at `debug`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::imageio::ImageError;
use crate::job::JobError;
use crate::store::{ImageRecord, StoreError};
use crate::text::truncate;

/// An error of the HTTP API, with the status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request that is malformed or asks for something invalid.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A request that is larger than the configured upload limits.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Job(#[from] JobError),
    /// An upload with bad files. `source` is the first failure, `failed`
    /// lists every one, and `stored` the files of the same request that
    /// were stored.
    #[error("{source}{}", more_failures(failed.len()))]
    Upload {
        source: Box<ApiError>,
        stored: Vec<ImageRecord>,
        failed: Vec<FailedFile>,
    },
    /// A bug or an environment failure, such as a lost blocking thread.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A file of an upload that was not stored, and why.
#[derive(Debug, Clone, Serialize)]
pub struct FailedFile {
    /// The file's name, or `None` for a failure of the body itself.
    pub file: Option<String>,
    pub error: String,
}

/// The maximum number of characters of an error message that a response or log line
/// carries. Messages quote request values (ids, names, paths), and a
/// megabyte-long id must not come back as a megabyte-long error.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Cuts `message` to [`MAX_MESSAGE_CHARS`] characters, marking the cut.
pub(super) fn capped(message: String) -> String {
    let cut = truncate(&message, MAX_MESSAGE_CHARS);
    if cut.len() == message.len() {
        message
    } else {
        format!("{cut} (message cut at {MAX_MESSAGE_CHARS} characters)")
    }
}

/// Points from the first failure of an upload to the others.
fn more_failures(failed: usize) -> String {
    match failed {
        0 | 1 => String::new(),
        2 => " (and 1 more failure, listed under `failed`)".to_owned(),
        n => format!(" (and {} more failures, listed under `failed`)", n - 1),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<&'a [ImageRecord]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<&'a [FailedFile]>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Store(error) => store_status(error),
            ApiError::Job(error) => job_status(error),
            ApiError::Upload { source, .. } => source.status_code(),
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = capped(self.to_string());
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %message, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %message, "request rejected");
        }

        let (stored, failed) = match self {
            ApiError::Upload { stored, failed, .. } => (
                Some(stored.as_slice()).filter(|s| !s.is_empty()),
                Some(failed.as_slice()),
            ),
            _ => (None, None),
        };
        let mut response = HttpResponse::build(status);
        if let Some(seconds) = self.retry_after_seconds() {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        response.json(ErrorBody {
            error: message,
            stored,
            failed,
        })
    }
}

impl ApiError {
    fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            ApiError::Job(JobError::QueueFull {
                retry_after_seconds,
                ..
            }) => Some(*retry_after_seconds),
            ApiError::Upload { source, .. } => source.retry_after_seconds(),
            _ => None,
        }
    }
}

fn store_status(error: &StoreError) -> StatusCode {
    match error {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::InvalidPath { .. } => StatusCode::BAD_REQUEST,
        StoreError::Image(image) => image_status(image),
        StoreError::Database(_) | StoreError::Io { .. } | StoreError::Corrupt(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

fn image_status(error: &ImageError) -> StatusCode {
    match error {
        ImageError::UnsupportedFormat { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ImageError::TooLarge { .. } | ImageError::TooManyPixels { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        ImageError::Corrupt { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

fn job_status(error: &JobError) -> StatusCode {
    match error {
        JobError::Invalid(_) => StatusCode::BAD_REQUEST,
        JobError::NotFound(_) => StatusCode::NOT_FOUND,
        JobError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
        JobError::Store(error) => store_status(error),
    }
}

impl From<ImageError> for ApiError {
    fn from(error: ImageError) -> ApiError {
        ApiError::Store(StoreError::Image(error))
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(error: actix_web::error::BlockingError) -> ApiError {
        ApiError::Internal(format!("a blocking task was lost: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_json(error: &ApiError) -> serde_json::Value {
        let bytes = error
            .error_response()
            .into_body()
            .try_into_bytes()
            .expect("a JSON body in one piece");
        serde_json::from_slice(&bytes).expect("the body is JSON")
    }

    #[test]
    fn statuses_follow_the_cause() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::BadRequest("x".into()), 400),
            (ApiError::Store(StoreError::NotFound("x".into())), 404),
            (
                ApiError::from(ImageError::UnsupportedFormat { name: None }),
                415,
            ),
            (
                ApiError::from(ImageError::Corrupt {
                    name: None,
                    message: "x".into(),
                }),
                422,
            ),
            (
                ApiError::from(ImageError::TooManyPixels {
                    name: None,
                    width: 9,
                    height: 9,
                    limit: 1,
                }),
                413,
            ),
            (ApiError::Store(StoreError::Corrupt("x".into())), 500),
            (ApiError::Job(JobError::Invalid("x".into())), 400),
            (ApiError::Job(JobError::NotFound("x".into())), 404),
            (
                ApiError::Job(JobError::QueueFull {
                    capacity: 4,
                    retry_after_seconds: 5,
                }),
                503,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error}");
        }
    }

    #[test]
    fn body_is_the_message() {
        let error = ApiError::Store(StoreError::NotFound("image `x` not found".into()));
        assert_eq!(
            body_json(&error),
            serde_json::json!({"error": "image `x` not found"})
        );
    }

    #[test]
    fn queue_full_sets_retry_after() {
        let response = ApiError::Job(JobError::QueueFull {
            capacity: 4,
            retry_after_seconds: 7,
        })
        .error_response();
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("7"))
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let error = ApiError::NotFound(format!("image `{}` not found", "x".repeat(100_000)));
        let body = body_json(&error);
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.chars().count() < 1100,
            "{} characters",
            message.len()
        );
        assert!(
            message.ends_with("(message cut at 1000 characters)"),
            "{message}"
        );
    }

    #[test]
    fn upload_error_lists_stored_files() {
        let stored = vec![ImageRecord {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "a.png".into(),
            width: 1,
            height: 1,
            format: "png".into(),
            bytes: 10,
            created_unix: 0,
        }];
        let error = ApiError::Upload {
            source: Box::new(ApiError::from(
                ImageError::UnsupportedFormat { name: None }.named("b.txt"),
            )),
            stored,
            failed: vec![FailedFile {
                file: Some("b.txt".into()),
                error: "not an image".into(),
            }],
        };
        assert_eq!(error.status_code().as_u16(), 415);
        let body = body_json(&error);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|message| message.starts_with("file `b.txt` is not an image")),
            "{body}"
        );
        assert_eq!(body["stored"][0]["name"], "a.png");
        assert_eq!(body["failed"][0]["file"], "b.txt");
    }
}
