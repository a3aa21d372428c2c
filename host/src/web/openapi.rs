//! The OpenAPI 3.1 document of the API, written by hand in `openapi.json`
//! and served at `/api/openapi.json`. A test keeps it in step with the
//! routes the server registers.

use actix_web::HttpResponse;
use actix_web::http::header;

/// The document, embedded so the binary serves it from any directory.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::web::API_ROUTES;

    /// Converts an actix pattern such as `/api/jobs/{id}/files/{path:.*}`
    /// to OpenAPI form, `/api/jobs/{id}/files/{path}`.
    fn openapi_path(pattern: &str) -> String {
        pattern
            .split('/')
            .map(|segment| match segment.split_once(':') {
                Some((name, _)) if segment.starts_with('{') => format!("{name}}}"),
                _ => segment.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn documented() -> BTreeSet<(String, String)> {
        let document: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().expect("a paths object");
        let mut routes = BTreeSet::new();
        for (path, item) in paths {
            let item = item.as_object().expect("a path item object");
            for method in item.keys().filter(|key| *key != "parameters") {
                routes.insert((method.clone(), path.clone()));
            }
        }
        routes
    }

    #[test]
    fn document_matches_registered_routes() {
        let registered: BTreeSet<(String, String)> = API_ROUTES
            .iter()
            .map(|(method, path)| ((*method).to_owned(), openapi_path(path)))
            .collect();
        let documented = documented();
        let missing: Vec<_> = registered.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&registered).collect();
        assert!(
            missing.is_empty(),
            "routes missing from openapi.json: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "openapi.json documents unregistered routes: {stale:?}"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let document: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        let mut stack = vec![&document];
        while let Some(value) = stack.pop() {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(reference) = map.get("$ref").and_then(|r| r.as_str()) {
                        let pointer = reference.trim_start_matches('#');
                        assert!(
                            document.pointer(pointer).is_some(),
                            "unresolved $ref {reference}"
                        );
                    }
                    stack.extend(map.values());
                }
                serde_json::Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
    }

    #[test]
    fn path_patterns_convert() {
        assert_eq!(
            openapi_path("/api/jobs/{id}/files/{path:.*}"),
            "/api/jobs/{id}/files/{path}"
        );
        assert_eq!(openapi_path("/api/images/{id}"), "/api/images/{id}");
    }
}
