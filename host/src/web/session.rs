//! Anonymous sessions: whose images and jobs a request may see.
//!
//! A session is a random 128-bit id written as 32 lowercase hex digits.
//! Browsers carry it in the `picasso_session` cookie, which the server sets
//! on the first response (HttpOnly, SameSite=Lax). API clients may instead
//! send it in the `X-Picasso-Session` header, with any id of that form they
//! generate themselves; the header wins over the cookie.
//!
//! The id is the only credential. Any client that sends it sees that
//! session's uploads and results. The cookie is not marked `Secure` because the server
//! speaks plain HTTP; put a TLS proxy in front of it before exposing it
//! beyond the local machine.

use std::future::{Ready, ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use super::error::ApiError;
use crate::store::{is_valid_id, new_id};

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "picasso_session";

/// The header that API clients may use instead of the cookie.
pub const SESSION_HEADER: &str = "x-picasso-session";

/// How long a browser keeps the cookie. Longer than any sensible result
/// retention, so that a user can come back to a result page; browsers cap
/// cookie lifetimes near 400 days anyway.
const COOKIE_DAYS: i64 = 365;

/// The session of a request, as an extractor for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session(pub String);

impl Session {
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// Finds the request's session, or starts one, and sets the cookie on the
/// response when it was started here.
///
/// # Errors
///
/// A malformed `X-Picasso-Session` header gets `400`. A malformed cookie is
/// replaced, because a browser cannot be asked to fix it.
pub async fn middleware<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let (id, is_new) = match resolve(request.request()) {
        Ok(Some(id)) => (id, false),
        Ok(None) => (new_id(), true),
        Err(error) => return Ok(request.error_response(error).map_into_right_body()),
    };
    request.extensions_mut().insert(Session(id.clone()));

    let mut response = next.call(request).await?;
    if is_new {
        let cookie = Cookie::build(SESSION_COOKIE, id)
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .max_age(time::Duration::days(COOKIE_DAYS))
            .finish();
        response.response_mut().add_cookie(&cookie)?;
    }
    Ok(response.map_into_left_body())
}

fn resolve(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    if let Some(header) = request.headers().get(SESSION_HEADER) {
        let id = header.to_str().unwrap_or_default().trim();
        if !is_valid_id(id) {
            return Err(ApiError::BadRequest(format!(
                "header `X-Picasso-Session` is `{}`; send 32 lowercase hexadecimal \
                 digits (a random 128-bit id), or leave the header out to use a cookie",
                id.chars().take(64).collect::<String>()
            )));
        }
        return Ok(Some(id.to_owned()));
    }
    Ok(request
        .cookie(SESSION_COOKIE)
        .map(|cookie| cookie.value().to_owned())
        .filter(|id| is_valid_id(id)))
}

impl FromRequest for Session {
    type Error = ApiError;
    type Future = Ready<Result<Session, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let session = request.extensions().get::<Session>().cloned();
        ready(session.ok_or_else(|| {
            ApiError::Internal("the session middleware is not installed on this route".into())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test, web};

    async fn echo(session: Session) -> HttpResponse {
        HttpResponse::Ok().body(session.0)
    }

    macro_rules! service {
        () => {
            test::init_service(
                App::new()
                    .wrap(from_fn(middleware))
                    .route("/", web::get().to(echo)),
            )
            .await
        };
    }

    #[actix_web::test]
    async fn first_request_gets_a_cookie() {
        let app = service!();
        let response = test::call_service(&app, test::TestRequest::get().to_request()).await;
        assert!(response.status().is_success());
        let cookie = response
            .response()
            .cookies()
            .find(|cookie| cookie.name() == SESSION_COOKIE)
            .expect("a session cookie is set")
            .into_owned();
        assert!(is_valid_id(cookie.value()), "{}", cookie.value());
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(SameSite::Lax));
        let body = test::read_body(response).await;
        assert_eq!(
            body,
            cookie.value().as_bytes(),
            "the handler sees the new id"
        );
    }

    #[actix_web::test]
    async fn cookie_is_reused() {
        let app = service!();
        let id = "0123456789abcdef0123456789abcdef";
        let request = test::TestRequest::get()
            .cookie(Cookie::new(SESSION_COOKIE, id))
            .to_request();
        let response = test::call_service(&app, request).await;
        assert_eq!(response.response().cookies().count(), 0, "no new cookie");
        assert_eq!(test::read_body(response).await, id.as_bytes());
    }

    #[actix_web::test]
    async fn header_wins_over_cookie() {
        let app = service!();
        let header_id = "ffffffffffffffffffffffffffffffff";
        let request = test::TestRequest::get()
            .cookie(Cookie::new(
                SESSION_COOKIE,
                "0123456789abcdef0123456789abcdef",
            ))
            .insert_header((SESSION_HEADER, header_id))
            .to_request();
        let response = test::call_service(&app, request).await;
        assert_eq!(test::read_body(response).await, header_id.as_bytes());
    }

    #[actix_web::test]
    async fn malformed_header_is_rejected() {
        let app = service!();
        let request = test::TestRequest::get()
            .insert_header((SESSION_HEADER, "../../etc"))
            .to_request();
        let response = test::call_service(&app, request).await;
        assert_eq!(response.status().as_u16(), 400);
    }

    #[actix_web::test]
    async fn malformed_cookie_is_replaced() {
        let app = service!();
        let request = test::TestRequest::get()
            .cookie(Cookie::new(SESSION_COOKIE, "not-an-id"))
            .to_request();
        let response = test::call_service(&app, request).await;
        let cookie = response
            .response()
            .cookies()
            .find(|cookie| cookie.name() == SESSION_COOKIE)
            .expect("a fresh cookie");
        assert!(is_valid_id(cookie.value()));
    }
}
