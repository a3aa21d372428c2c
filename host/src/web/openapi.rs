//! The OpenAPI 3.1 document of the API, written by hand in `openapi.json`
//! and served at `/api/openapi.json`. Tests keep it in step with the
//! routes the server registers and with the fields of the job manifest.

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

    /// Returns a manifest with one image, one model and one panel of each kind.
    fn sample_manifest() -> serde_json::Value {
        use crate::job::spec::{
            ClassScore, CropRect, HeatmapRecord, ImageResult, Manifest, ModelResult, ModelStamp,
            OwnScale, PanelRecord, PluginStamp, RenderResult,
        };
        let score = ClassScore {
            index: 281,
            label: "tabby".into(),
            logit: 9.5,
            probability: 0.4,
        };
        let heatmap = HeatmapRecord {
            class_index: Some(281),
            class_label: Some("tabby".into()),
            meaning: "max over channels of |gradient|".into(),
            scale: "sequential".into(),
            width: 224,
            height: 224,
            min: 0.0,
            max: 1.0,
            color_min: 0.0,
            color_max: 0.9,
            npy: "a.npy".into(),
            overlay: "a.png".into(),
            colored: "b.png".into(),
            colorbar: "c.png".into(),
            own: OwnScale {
                color_min: 0.0,
                color_max: 1.0,
                overlay: "d.png".into(),
                colored: "e.png".into(),
            },
        };
        let manifest = Manifest {
            job: "j".into(),
            host_version: "0.1.0".into(),
            wit_package: "picasso:plugin@0.1.0".into(),
            seed: 7,
            started_unix: 1,
            models: vec![ModelStamp {
                id: "m".into(),
                name: "M".into(),
                content_hash: "00".into(),
            }],
            plugins: vec![PluginStamp {
                id: "p".into(),
                version: "0.1.0".into(),
                title: "P".into(),
                content_hash: "00".into(),
                settings: Default::default(),
            }],
            images: vec![ImageResult {
                image: "i".into(),
                name: "cat.png".into(),
                width: 10,
                height: 10,
                photo: Some("photo.png".into()),
                error: None,
                models: vec![ModelResult {
                    model: "m".into(),
                    crop: CropRect {
                        x: 0.0,
                        y: 0.0,
                        width: 10.0,
                        height: 10.0,
                    },
                    frame: Some("frame.png".into()),
                    top_classes: vec![score.clone()],
                    error: None,
                    renders: vec![RenderResult {
                        plugin: "p".into(),
                        visualization: 0,
                        error: None,
                        duration_ms: 3,
                        panels: vec![
                            PanelRecord::Heatmap {
                                title: "t".into(),
                                heatmap: Box::new(heatmap),
                            },
                            PanelRecord::Image {
                                title: "t".into(),
                                png: "f.png".into(),
                            },
                            PanelRecord::Scores {
                                title: "t".into(),
                                scores: vec![score],
                            },
                        ],
                    }],
                }],
            }],
        };
        serde_json::to_value(&manifest).expect("the manifest serializes")
    }

    /// Checks that `value` has every property `schema` requires and none it
    /// leaves out, through nested objects, arrays and `kind`-tagged `oneOf`s.
    fn check_fields(schema: &serde_json::Value, value: &serde_json::Value, at: &str) {
        if let Some(variants) = schema["oneOf"].as_array() {
            let kind = &value["kind"];
            let variant = variants
                .iter()
                .find(|v| &v["properties"]["kind"]["const"] == kind)
                .unwrap_or_else(|| panic!("{at}: no oneOf variant for kind {kind}"));
            return check_fields(variant, value, at);
        }
        if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
            for (i, item) in values.iter().enumerate() {
                check_fields(items, item, &format!("{at}[{i}]"));
            }
            return;
        }
        let (Some(properties), Some(object)) =
            (schema["properties"].as_object(), value.as_object())
        else {
            return;
        };
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            assert!(
                object.contains_key(name),
                "{at}: required `{name}` is missing"
            );
        }
        for (name, field) in object {
            let documented = properties
                .get(name)
                .unwrap_or_else(|| panic!("{at}: field `{name}` is not documented"));
            check_fields(documented, field, &format!("{at}.{name}"));
        }
    }

    #[test]
    fn manifest_schema_matches_the_manifest() {
        let document: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        check_fields(
            &document["components"]["schemas"]["Manifest"],
            &sample_manifest(),
            "manifest",
        );
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
