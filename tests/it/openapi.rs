//! The OpenAPI document (`src/http/openapi.json`) is true: it is valid OpenAPI 3.1 (checked by
//! `openapi-spec-validator`), it lists exactly the routes the code declares, with their
//! methods, and every one of them is answered by the running server rather than by its
//! not-found fallback.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestDb, utc};
use crate::http::{ADMIN, Server, biller_with_token};

fn document() -> Value {
    serde_json::from_str(tangazo::http::OPENAPI).unwrap()
}

/// (method, path) of every `.route("PATH", get(…).post(…))` in `src/http`.
fn declared_routes() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let open = rest.find('"').unwrap();
            let close = open + 1 + rest[open + 1..].find('"').unwrap();
            let route = rest[open + 1..close].to_owned();
            // The method routers, up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let mut end = close;
            for (i, c) in rest[close..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = close + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let methods = &rest[close..end];
            for m in ["get", "post", "patch", "put", "delete"] {
                if methods.contains(&format!("{m}(")) {
                    out.insert((m.to_owned(), route.clone()));
                }
            }
        }
    }
    out
}

fn documented_routes() -> BTreeSet<(String, String)> {
    let doc = document();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_declared_routes() {
    let declared = declared_routes();
    let documented = documented_routes();
    assert!(declared.len() > 25, "the routes were found: {declared:?}");
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&declared).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        phantom.is_empty(),
        "openapi.json lists routes the code lacks: {phantom:?}"
    );
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    assert_eq!(document()["openapi"], "3.1.0");
    let generated = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/gen_openapi.py"))
        .output()
        .expect("python3 runs");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&generated.stdout).unwrap(),
        document(),
        "src/http/openapi.json is what .ci/gen_openapi.py writes: regenerate it"
    );
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/openapi.json"),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every documented route reaches a handler: nothing answers with the fallback's 404 or 405.
#[tokio::test]
async fn every_documented_route_is_served() {
    let db = TestDb::sqlite().await;
    let (id, token) = biller_with_token(&db, 1).await;
    let server = Server::boot(&db, utc(2015, 4, 10, 6, 0)).await;
    let (status, served) = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!((status, served), (StatusCode::OK, document()));
    let secret = tangazo::http::callback_path_secret(&db.store).await.unwrap();
    let unsubscribe = tangazo::http::unsubscribe_token(&db.store, id).await.unwrap();
    for (method, path) in documented_routes() {
        let concrete = path
            .replace("{secret}", &secret)
            .replace("{token}", &unsubscribe)
            .replace("{sender}", if path.contains("twilio") { "tw" } else { "at" })
            .replace("{id}", "1");
        let auth = if path.starts_with("/v1/admin") {
            Some(ADMIN)
        } else {
            Some(token.as_str())
        };
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = server.call(method.clone(), &concrete, auth, None).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let fallback = status == StatusCode::NOT_FOUND
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("no such resource"));
        assert!(!fallback, "{method} {path} reached no handler: {body}");
        assert!(status.as_u16() < 500, "{method} {path}: {status} {body}");
    }
    server.stop().await;
    db.finish().await;
}
