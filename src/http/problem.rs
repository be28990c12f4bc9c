//! Errors as RFC 9457 problem documents (`application/problem+json`): a status, a title, what
//! was wrong in `detail`, and for bad input the field at fault in `errors`. Bad input is 4xx,
//! always; a 500 says only that the fault is ours and logs the cause.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::storage::StoreError;

/// One field at fault: a JSON pointer (`/url`, `/events/1`) and what is wrong with it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    #[serde(serialize_with = "as_u16")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds to wait (429, 503): also sent as `Retry-After`.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// The scheme a 401 asks for.
    #[serde(skip)]
    pub challenge: bool,
}

fn as_u16<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank",
            title,
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            challenge: false,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    /// A body that parsed but holds a bad value: 422 naming the field.
    pub fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> Problem {
        let pointer = pointer.into();
        let detail = detail.into();
        Problem {
            errors: vec![FieldError {
                pointer: pointer.clone(),
                detail: detail.clone(),
            }],
            ..Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unprocessable Content",
                format!("{pointer}: {detail}"),
            )
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem {
            challenge: true,
            ..Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
        }
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "Not Found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    pub fn too_many(retry_after: u64) -> Problem {
        Problem {
            retry_after: Some(retry_after),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                format!("too many requests for this token; retry in {retry_after} s"),
            )
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem {
            retry_after: Some(5),
            ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", detail)
        }
    }

    /// Our fault: logged with its causes, answered without them.
    pub fn internal(e: &dyn std::error::Error) -> Problem {
        tracing::error!(error = %crate::domain::error_chain(e), "request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "the server failed; it is logged, and nothing was changed by this request unless the answer says so",
        )
    }

    /// Any status, for the rejections of axum's extractors and middleware.
    pub fn status(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem::new(status, status.canonical_reason().unwrap_or("Error"), detail)
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        match e {
            StoreError::NoSuchWindow(id) => Problem::not_found(format!("window {id} does not exist")),
            e @ StoreError::Conflict { .. } => Problem::conflict(e.to_string()),
            e @ (StoreError::Connect { .. } | StoreError::NoAnswer { .. }) => {
                tracing::warn!(error = %crate::domain::error_chain(&e), "database unavailable");
                Problem::unavailable("the database is unavailable; retry shortly")
            }
            e => Problem::internal(&e),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What a handler returns: its answer or a problem.
pub type Answer<T> = Result<T, Problem>;
