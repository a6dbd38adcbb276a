//! Reading requests: bodies (bounded, JSON only, parsed with the offending field's path),
//! job ids, page sizes and reasons.

use actix_web::web;
use gantry_events::event::JobId;
use serde::Deserialize;

use crate::Gateway;
use crate::error::ApiError;

/// Paths in a job request that must hold JSON objects (serde would take an array for a
/// struct, filling fields by position).
pub(crate) const OBJECT_PATHS: &[&str] =
    &["", "resources", "resources.gpus", "retry", "env", "labels"];

/// The values at `path` (keys joined by `.`; `key[]` steps into every element of an array),
/// with their JSON paths.
fn values_at<'v>(
    value: &'v serde_json::Value,
    path: &[&str],
    at: String,
    out: &mut Vec<(String, &'v serde_json::Value)>,
) {
    let Some((key, rest)) = path.split_first() else {
        out.push((at, value));
        return;
    };
    let join = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    if let Some(key) = key.strip_suffix("[]") {
        if let Some(items) = value.get(key).and_then(serde_json::Value::as_array) {
            for (i, item) in items.iter().enumerate() {
                values_at(item, rest, format!("{}[{i}]", join(key)), out);
            }
        }
    } else if let Some(next) = value.get(*key) {
        values_at(next, rest, join(key), out);
    }
}

/// Parses a JSON request body into `T`: invalid JSON, an array where an object belongs, an
/// unknown or mistyped field are all 400 with the JSON path of the field at fault. `objects`
/// names the paths that must hold objects (`key[]` for each element of an array).
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    objects: &[&str],
) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "invalid_json", format!("not JSON: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::new(
            400,
            "invalid_type",
            "expected a JSON object",
            Some("$".into()),
        ));
    }
    for path in objects {
        let keys: Vec<&str> = path.split('.').filter(|k| !k.is_empty()).collect();
        let mut found = Vec::new();
        values_at(&value, &keys, String::new(), &mut found);
        // An optional part may be null.
        if let Some((at, _)) = found.iter().find(|(_, v)| !v.is_object() && !v.is_null()) {
            return Err(ApiError::new(
                400,
                "invalid_type",
                "expected a JSON object",
                Some(at.clone()),
            ));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        ApiError::new(400, "invalid_json", e.inner().to_string(), field)
    })
}

/// Reads a request body of at most the gateway's limit (413 past it). `json`: a non-empty
/// body must be declared `application/json` (415 otherwise).
pub(crate) async fn read_body(
    gateway: &Gateway,
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    use futures::StreamExt;
    let limit = gateway.max_body_bytes;
    let too_large = || ApiError::new(413, "too_large", format!("at most {limit} bytes"), None);
    if req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|len| len > limit)
    {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(400, "invalid_body", e.to_string(), None))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let declared_json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !body.iter().all(u8::is_ascii_whitespace) && !declared_json {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send application/json",
            None,
        ));
    }
    Ok(body.freeze())
}

/// A header holding a log sequence (`Last-Event-ID`, `Gantry-Min-Seq`): absent, or 400 with
/// `code` and `message` naming the header when it is not a number.
pub(crate) fn sequence_header(
    req: &actix_web::HttpRequest,
    name: &str,
    code: &str,
    message: &str,
) -> Result<Option<u64>, ApiError> {
    req.headers()
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::new(400, code, message, Some(name.into())))
        })
        .transpose()
}

/// A page size: 100 by default, 1 to 1000.
pub(crate) fn page_limit(asked: Option<usize>) -> Result<usize, ApiError> {
    let limit = asked.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            400,
            "out_of_range",
            "limit is 1 to 1000",
            Some("limit".into()),
        ));
    }
    Ok(limit)
}

pub(crate) fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            400,
            "invalid_id",
            format!("{raw:?} is not a job id"),
            Some("id".into()),
        )
    })
}

/// An optional reason, for cancels and node changes (at most 1 KiB, printable).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonBody {
    reason: Option<String>,
}

/// Longest reason a cancel or node change may give.
const MAX_REASON_BYTES: usize = 1024;

/// An optional `{"reason": …}` body: empty is no reason; anything else must parse, and the
/// reason is bounded and printable.
pub(crate) fn reason_of(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let ReasonBody { reason } = parse_body(body, &[""])?;
    if let Some(reason) = &reason
        && (reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control))
    {
        return Err(ApiError::new(
            400,
            "invalid_reason",
            format!("at most {MAX_REASON_BYTES} bytes, no control characters"),
            Some("reason".into()),
        ));
    }
    Ok(reason)
}
