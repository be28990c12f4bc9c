//! Request bodies: JSON parsed straight into typed requests that refuse unknown fields, with
//! the field at fault named. Malformed JSON is 400; well-formed JSON with a wrong type, an
//! unknown or missing field is 422; a body over `http.body_limit` is 413; anything but
//! `application/json` is 415.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// A JSON body of type `T`, with the raw bytes kept (for the idempotency hash).
#[derive(Debug)]
pub struct Json<T> {
    pub value: T,
    pub raw: Bytes,
}

/// Parses `bytes` as `T` (every request body is a JSON object), naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // serde reads a struct from an array too (`["https://…"]`): a body must be an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Problem::invalid("", "the body must be a JSON object"),
            Err(e) => Problem::bad_request(format!("the body is not valid JSON: {e}")),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let pointer: String = e
            .path()
            .iter()
            .map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => format!("/{index}"),
                serde_path_to_error::Segment::Map { key } => format!("/{}", key.replace('~', "~0").replace('/', "~1")),
                serde_path_to_error::Segment::Enum { variant } => format!("/{variant}"),
                serde_path_to_error::Segment::Unknown => String::new(),
            })
            .collect();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::bad_request(format!("the body is not valid JSON: {inner}"))
        } else if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            // A bad field early in a body that is not JSON at all: the syntax is the problem.
            Problem::bad_request(format!("the body is not valid JSON: {syntax}"))
        } else {
            Problem::invalid(pointer, strip_position(&inner.to_string()))
        }
    })?;
    de.end()
        .map_err(|e| Problem::bad_request(format!("the body has more after its JSON value: {e}")))?;
    Ok(value)
}

/// serde_json's messages end with " at line L column C": the pointer says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Json<T>, Problem> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || m.ends_with("+json")
            });
        if !json {
            return Err(Problem::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        let raw = Bytes::from_request(req, state)
            .await
            .map_err(|e| Problem::status(e.status(), e.body_text()))?;
        Ok(Json {
            value: parse(&raw)?,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sub {
        url: String,
        events: Option<Vec<String>>,
    }

    #[test]
    fn problems_name_the_field() {
        assert_eq!(parse::<Sub>(b"{").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse::<Sub>(b"{} x").unwrap_err().status, StatusCode::BAD_REQUEST);
        let p = parse::<Sub>(br#"{"url": 5}"#).unwrap_err();
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p.errors[0].pointer, "/url");
        let p = parse::<Sub>(br#"{"url": "x", "events": ["a", 3]}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/events/1");
        let p = parse::<Sub>(br#"{"url": "x", "secret": "y"}"#).unwrap_err();
        assert!(p.detail.contains("unknown field `secret`"), "{}", p.detail);
        let p = parse::<Sub>(br#"["x"]"#).unwrap_err();
        assert_eq!(
            (p.status, p.errors[0].pointer.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "")
        );
        assert_eq!(parse::<Sub>(b"").unwrap_err().status, StatusCode::BAD_REQUEST);
        let p = parse::<Sub>(br#"{}"#).unwrap_err();
        assert!(p.detail.contains("missing field `url`"), "{}", p.detail);
    }
}
