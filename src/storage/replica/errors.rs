//! Store errors as walship reports them: each names the replica, the request and what
//! went wrong in words an operator acts on (missing bucket, credentials, unreachable).

use super::*;

/// Map an object_store error to one that says what to fix.
pub fn store_error(url: &str, what: String, e: object_store::Error) -> Error {
    let text = error_chain(&e);
    let (kind, message) = match &e {
        object_store::Error::NotFound { .. } if text.contains("NoSuchBucket") => (
            StoreErrorKind::NotFound,
            format!("the bucket does not exist (NoSuchBucket): {text}"),
        ),
        object_store::Error::NotFound { .. } => (StoreErrorKind::NotFound, text),
        object_store::Error::AlreadyExists { .. } => (StoreErrorKind::AlreadyExists, text),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
            if text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("AccessDenied") =>
        {
            (
                StoreErrorKind::Unauthenticated,
                format!(
                    "the credentials were refused; check AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY: {text}"
                ),
            )
        }
        object_store::Error::PermissionDenied { .. } => (
            StoreErrorKind::PermissionDenied,
            format!("permission denied: {text}"),
        ),
        object_store::Error::Unauthenticated { .. } => (
            StoreErrorKind::Unauthenticated,
            format!("not authenticated: {text}"),
        ),
        _ if text.contains("NoSuchBucket") => (
            StoreErrorKind::NotFound,
            format!("the bucket does not exist (NoSuchBucket): {text}"),
        ),
        _ if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") => (
            StoreErrorKind::Unauthenticated,
            format!(
                "the credentials were refused; check AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY: {text}"
            ),
        ),
        _ if text.contains("credential") || text.contains("169.254.") => (
            StoreErrorKind::Unauthenticated,
            format!(
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
                 AWS_SHARED_CREDENTIALS_FILE/AWS_PROFILE, or AWS_WEB_IDENTITY_TOKEN_FILE \
                 with AWS_ROLE_ARN): {text}"
            ),
        ),
        _ if is_unreachable(&text) => (
            StoreErrorKind::Unreachable,
            format!("endpoint unreachable: {text}"),
        ),
        _ => (StoreErrorKind::Other, text),
    };
    Error::Store {
        replica: url.to_string(),
        what,
        message,
        kind,
    }
}

pub(super) fn is_unreachable(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "connection refused",
        "error sending request",
        "dns error",
        "failed to lookup",
        "timed out",
        "connection reset",
        "tcp connect",
        "connect error",
        "client error (connect)",
    ]
    .iter()
    .any(|p| t.contains(p))
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}
