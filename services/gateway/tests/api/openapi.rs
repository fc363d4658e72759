//! `/openapi.json` and `/docs`, served without a token.

use std::collections::BTreeSet;

use roombook_gateway::Config;
use serde_json::Value;

use crate::{
    helpers::{spawn_app, TestApp, SECRET},
    matrix::API_ROUTES,
};

/// The OpenAPI 3.1 schema published by the OpenAPI Initiative (schema/2022-10-07, Apache-2.0),
/// as shipped by the `openapi-spec-validator` package.
const OPENAPI_31_SCHEMA: &str = include_str!("../data/openapi-3.1-schema.json");

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                found.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    found
}

fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => found.push(target.clone()),
                    _ => references(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

#[test]
fn the_served_openapi_document_is_the_one_the_code_generates() {
    let generated = roombook_gateway::docs::assemble([
        booking::openapi(),
        confirm::openapi(),
        orchestrator::openapi(),
        notification::openapi(),
        bookinglist::openapi(),
    ]);
    let generated = serde_json::to_value(&generated).unwrap();
    let served: Value = serde_json::from_str(roombook_gateway::docs::DOCUMENT).unwrap();
    if generated == served {
        return;
    }
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("ROOMBOOK_UPDATE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(file, text).unwrap();
        eprintln!("rewrote {file}: review the diff, and build again to serve it");
        return;
    }
    panic!(
        "{file} differs from what the code's annotations generate: run \
         `ROOMBOOK_UPDATE_OPENAPI=1 cargo test -p roombook-gateway --test api openapi` and review the diff"
    );
}

#[tokio::test]
async fn the_openapi_document_is_valid_openapi_3_1_with_every_reference_resolved() {
    let app = spawn_app(Config::for_test(SECRET)).await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));

    let schema: Value = serde_json::from_str(OPENAPI_31_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let mut refs = Vec::new();
    references(&doc, &mut refs);
    assert!(!refs.is_empty());
    for target in refs {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {target}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{target} is not defined"
        );
    }

    let ids: Vec<&str> = operations(&doc)
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "operation ids are unique: {ids:?}");
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_the_gateway_serves_and_no_other() {
    let app = spawn_app(Config::for_test(SECRET)).await;
    let doc = document(&app).await;
    let listed: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let served: BTreeSet<(String, String)> = API_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed, served);
}

#[tokio::test]
async fn api_operations_require_a_bearer_token_and_document_the_gateways_own_answers() {
    let app = spawn_app(Config::for_test(SECRET)).await;
    let doc = document(&app).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path, operation) in operations(&doc) {
        let open =
            ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs/"].contains(&path.as_str());
        let security = &operation["security"];
        let responses = &operation["responses"];
        if open {
            assert_eq!(security, &serde_json::json!([{}]), "{method} {path}");
            continue;
        }
        assert_eq!(
            security,
            &serde_json::json!([{"bearer": []}]),
            "{method} {path}"
        );
        assert!(responses.get("401").is_some(), "{method} {path}");
        assert!(
            responses["503"]["headers"].get("Retry-After").is_some(),
            "{method} {path}"
        );
        for (status, response) in responses.as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    response["content"]
                        .get("application/problem+json")
                        .is_some(),
                    "{method} {path} {status}"
                );
            }
        }
    }
}

#[tokio::test]
async fn swagger_ui_is_served_at_docs_without_a_token() {
    let app = spawn_app(Config::for_test(SECRET)).await;
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.url().path(), "/docs/");
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    assert!(init.text().await.unwrap().contains("/openapi.json"));
}
