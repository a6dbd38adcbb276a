//! `/v1/jobs/{id}/artifacts`: a job's stored outputs, listed and downloaded (streamed, with
//! `Range` and an `ETag` that is the SHA-256), scoped to the caller's group like the job.
//! `?inline=true` puts small artifacts' bytes in the listing.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;

use gantry_actors::artifacts::ArtifactStore;
use gantry_actors::spec::{SubmitRequest, check_inputs};
use gantry_events::event::InputRef;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::jobs::readable_job;
use crate::openapi::{ArtifactItem, ArtifactList};
use crate::{Gateway, query};

/// Resolves a request's inputs to the stored artifacts they name, of jobs the caller's group
/// may see: 400 naming `inputs[i].from` or `inputs[i].artifact` when one is not there.
pub(crate) fn resolve_inputs(
    gateway: &Gateway,
    caller: &Caller,
    request: &SubmitRequest,
) -> Result<Vec<InputRef>, ApiError> {
    check_inputs(request).map_err(|i| ApiError::new(400, i.code, i.message, Some(i.field)))?;
    request
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let missing = |field: &str, message: String| {
                ApiError::new(
                    400,
                    "input_not_found",
                    message,
                    Some(format!("inputs[{i}].{field}")),
                )
            };
            gateway
                .views
                .job_in(&input.from, caller.scope())?
                .ok_or_else(|| missing("from", format!("no job {}", input.from)))?;
            let artifact = gateway
                .views
                .artifact(&input.from, &input.artifact)?
                .ok_or_else(|| {
                    missing(
                        "artifact",
                        format!("job {} has no artifact {:?}", input.from, input.artifact),
                    )
                })?;
            if artifact.pruned_ns.is_some() {
                return Err(ApiError::new(
                    400,
                    "input_pruned",
                    format!(
                        "retention deleted the bytes of {:?} of job {}",
                        input.artifact, input.from
                    ),
                    Some(format!("inputs[{i}].artifact")),
                ));
            }
            Ok(InputRef {
                from: input.from,
                artifact: input.artifact.clone(),
                path: input.path.clone().unwrap_or_else(|| input.artifact.clone()),
                sha256: artifact.sha256,
                size_bytes: artifact.size_bytes,
                location: artifact.location,
            })
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts", tag = "artifacts", params(("id" = String, Path, description = "the job's id (UUID)"), ListQuery, ("Gantry-Min-Seq" = Option<u64>, Header, description = "as `min_seq`")), responses((status = 200, description = "The job's outputs", body = crate::openapi::ArtifactList), crate::openapi::Errors))]
pub(crate) async fn list(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: ListQuery = query(&req)?;
    crate::health::read_after(&gateway, &req, q.min_seq).await?;
    let id = crate::body::parse_id(&id)?;
    crate::jobs::visible_job(&gateway, &caller, &id)?;
    let mut budget = INLINE_TOTAL_BYTES;
    let mut artifacts = Vec::new();
    for a in gateway.views.artifacts(&id)? {
        let content = match &gateway.artifacts {
            Some(store)
                if q.inline
                    && a.pruned_ns.is_none()
                    && a.size_bytes <= INLINE_MAX_BYTES
                    && a.size_bytes <= budget =>
            {
                budget -= a.size_bytes;
                Some(inline(store.as_ref(), &a.location, a.size_bytes).await?)
            }
            _ => None,
        };
        let (content_encoding, content) = content.map_or((None, None), |(encoding, text)| {
            (Some(encoding.to_owned()), Some(text))
        });
        artifacts.push(ArtifactItem {
            name: a.name,
            attempt: a.attempt,
            size_bytes: a.size_bytes,
            sha256: a.sha256,
            content_type: a.content_type,
            stored_ns: a.stored_ns,
            pruned_ns: a.pruned_ns,
            pruned_reason: a.pruned_reason,
            content_encoding,
            content,
        });
    }
    Ok(HttpResponse::Ok().json(ArtifactList { artifacts }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Put small artifacts' bytes in the answer.
    #[serde(default)]
    inline: bool,
    min_seq: Option<u64>,
}

/// Largest artifact `?inline=true` puts in a listing.
const INLINE_MAX_BYTES: u64 = 256 << 10;
/// Most bytes one listing inlines in all (the others are listed without their content).
const INLINE_TOTAL_BYTES: u64 = 4 << 20;

/// An artifact's bytes for a listing: `utf-8` text when they are, else `base64`.
async fn inline(
    store: &dyn ArtifactStore,
    location: &str,
    size: u64,
) -> Result<(&'static str, String), ApiError> {
    use base64::Engine;
    let mut stream = store
        .read(location, 0, size)
        .await
        .map_err(ApiError::unavailable)?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.map_err(ApiError::unavailable)?);
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => ("utf-8", text),
        Err(e) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
        ),
    })
}

/// A `Range: bytes=…` header against a body of `size` bytes: `None` for the whole body,
/// `Some((start, end))` (end exclusive) for one satisfiable range, 416 otherwise. Only single
/// ranges are served.
fn range(req: &HttpRequest, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = req.headers().get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || {
        ApiError::new(
            416,
            "range_not_satisfiable",
            format!("one range of bytes within 0-{}", size.saturating_sub(1)),
            Some("Range".into()),
        )
    };
    let spec = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .filter(|s| !s.contains(','))
        .ok_or_else(unsatisfiable)?;
    let (first, last) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| unsatisfiable());
    let (start, end) = match (first.trim(), last.trim()) {
        ("", "") => return Err(unsatisfiable()),
        // The last n bytes.
        ("", n) => (size.saturating_sub(parse(n)?), size),
        (a, "") => (parse(a)?, size),
        (a, b) => (parse(a)?, parse(b)?.saturating_add(1).min(size)),
    };
    if start >= end || start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts/{name}", tag = "artifacts", params(("id" = String, Path, description = "the job's id (UUID)"), ("name" = String, Path, description = "the output's name (may contain `/`)"), ("Range" = Option<String>, Header, description = "one `bytes=A-B` range"), ("If-None-Match" = Option<String>, Header, description = "the ETag (the SHA-256)")), responses((status = 200, description = "The bytes, with the content type recorded for the output", content_type = "*/*", body = String), (status = 206, description = "The range asked for", content_type = "*/*", body = String), (status = 304, description = "Not modified"), (status = 410, description = "Retention deleted the bytes (`artifact_pruned`)", body = crate::openapi::ErrorBody), (status = 416, description = "Range not satisfiable", body = crate::openapi::ErrorBody), crate::openapi::Errors))]
pub(crate) async fn download(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    let (id, _) = readable_job(&gateway, &req, &id)?;
    let missing = || ApiError::not_found(format!("job {id} has no artifact {name:?}"));
    if !gantry_actors::artifacts::valid_name(&name) {
        return Err(missing());
    }
    let artifact = gateway.views.artifact(&id, &name)?.ok_or_else(missing)?;
    if artifact.pruned_ns.is_some() {
        return Err(ApiError::new(
            410,
            "artifact_pruned",
            format!(
                "retention deleted the bytes of {name:?} ({}); the log keeps its SHA-256",
                artifact.pruned_reason.as_deref().unwrap_or("ttl")
            ),
            None,
        ));
    }
    let store = gateway
        .artifacts
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this gateway cannot reach the artifact store"))?;
    let etag = format!("\"{}\"", artifact.sha256.to_hex());
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    let size = artifact.size_bytes;
    let wanted = range(&req, size)?;
    let (start, end) = wanted.unwrap_or((0, size));
    let stream = store
        .read(&artifact.location, start, end)
        .await
        .map_err(|e| match e {
            gantry_actors::artifacts::ArtifactError::NotFound(_) => ApiError::new(
                410,
                "artifact_gone",
                format!("the bytes of {name:?} are no longer in the store"),
                None,
            ),
            other => ApiError::unavailable(other),
        })?
        .map(|chunk| chunk.map_err(|e| actix_web::error::ErrorServiceUnavailable(e.to_string())));
    let mut response = match wanted {
        Some(_) => {
            let mut r = HttpResponse::PartialContent();
            r.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            ));
            r
        }
        None => HttpResponse::Ok(),
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header(("Gantry-Attempt", artifact.attempt.to_string()))
        .content_type(
            artifact
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
        )
        .no_chunking(end - start);
    Ok(response.streaming(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(range_header: &str) -> HttpRequest {
        actix_web::test::TestRequest::default()
            .insert_header(("Range", range_header))
            .to_http_request()
    }

    #[test]
    fn ranges_are_single_and_within_the_body() {
        assert_eq!(range(&with("bytes=0-9"), 100).ok(), Some(Some((0, 10))));
        assert_eq!(range(&with("bytes=90-"), 100).ok(), Some(Some((90, 100))));
        assert_eq!(range(&with("bytes=-5"), 100).ok(), Some(Some((95, 100))));
        assert_eq!(
            range(&with("bytes=95-500"), 100).ok(),
            Some(Some((95, 100)))
        );
        for bad in [
            "bytes=100-",
            "bytes=5-2",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=-",
            "bytes=x-",
        ] {
            assert_eq!(
                range(&with(bad), 100).err().map(|e| e.status),
                Some(416),
                "{bad}"
            );
        }
    }
}
