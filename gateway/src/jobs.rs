//! `/v1/jobs`: submit, list, get, cancel, and an attempt's output. Every read is scoped to the
//! caller's group in the projections' query; a job of another group answers 404.

use actix_web::{HttpRequest, HttpResponse, web};
use gantry_actors::job::JobState;
use gantry_actors::spec::{Resolved, SubmitRequest};
use gantry_events::event::JobId;
use gantry_projections::{JobFilter, JobView};
use serde::Deserialize;

use crate::auth::{Caller, Role};
use crate::body::{OBJECT_PATHS, page_limit, parse_body, parse_id, read_body, reason_of};
use crate::error::ApiError;
use crate::health::{read_after, views_reach};
use crate::openapi::{CancelAccepted, JobDetail, JobList, Submitted};
use crate::{Gateway, query};

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = gantry_actors::spec::SubmitRequest, responses((status = 202, description = "Accepted (durable in the log)", body = crate::openapi::Submitted), crate::openapi::Errors))]
pub(crate) async fn submit(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Submitter)?;
    let body = read_body(&gateway, &req, payload).await?;
    let mut request: SubmitRequest = parse_body(&body, OBJECT_PATHS)?;
    let inputs = crate::artifacts::resolve_inputs(&gateway, &caller, &request)?;
    let (secrets, stored) = crate::secrets::store_for_job(&gateway, &caller, &mut request).await?;
    let resolved = Resolved { secrets, inputs };
    let submitted = gateway
        .control
        .submit(request, caller.principal, resolved)
        .await;
    // Values stored for a submission that made no new job are not needed.
    if submitted.as_ref().map_or(true, |reply| reply.existing) {
        crate::secrets::forget(&gateway, &stored).await;
    }
    let reply = submitted?;
    views_reach(&gateway, reply.seq).await;
    Ok(HttpResponse::Accepted().json(Submitted {
        id: reply.job_id,
        existing: reply.existing,
        // Read-your-writes: a GET with `?min_seq=` this answers once the views include it.
        seq: reply.seq,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only jobs in this state.
    state: Option<String>,
    /// Only jobs of this queue.
    queue: Option<String>,
    /// Only jobs with this label, `key=value`.
    label: Option<String>,
    /// Only jobs with an attempt placed on this node.
    node: Option<String>,
    /// The `next` of the page before.
    after: Option<String>,
    limit: Option<usize>,
    min_seq: Option<u64>,
}

/// A read that takes only `min_seq` (see [`read_after`]).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct MinSeq {
    /// Answer once the views include this sequence (waits up to 5 s, then 503 `views_behind`).
    pub min_seq: Option<u64>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery, ("Gantry-Min-Seq" = Option<u64>, Header, description = "as `min_seq`")), responses((status = 200, description = "A page of the caller's group's jobs, oldest first", body = crate::openapi::JobList), crate::openapi::Errors))]
pub(crate) async fn list_jobs(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: ListQuery = query(&req)?;
    let limit = page_limit(q.limit)?;
    let after = q.after.as_deref().map(parse_id).transpose()?;
    read_after(&gateway, &req, q.min_seq).await?;
    if let Some(state) = &q.state
        && !JobState::ALL.iter().any(|s| s.as_str() == state)
    {
        let states: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::new(
            400,
            "invalid_state",
            format!("state is one of {}", states.join(", ")),
            Some("state".into()),
        ));
    }
    let filter = JobFilter {
        group: caller.scope().map(str::to_owned),
        state: q.state,
        queue: q.queue,
        label: q.label,
        node: q.node,
    };
    let jobs = gateway.views.jobs(&filter, after, limit)?;
    let next = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    Ok(HttpResponse::Ok().json(JobList { jobs, next }))
}

/// The job `id` if the caller's group may see it; 404 otherwise (the same answer as for a job
/// that does not exist, so other groups' job ids are not revealed).
pub(crate) fn visible_job(
    gateway: &Gateway,
    caller: &Caller,
    id: &JobId,
) -> Result<JobView, ApiError> {
    gateway
        .views
        .job_in(id, caller.scope())?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

/// The job a read-only request names, once its caller may see it: the id (400 when it is not
/// one) and its view (404 for another group's).
pub(crate) fn readable_job(
    gateway: &Gateway,
    req: &HttpRequest,
    raw_id: &str,
) -> Result<(JobId, JobView), ApiError> {
    let caller = gateway.caller(req)?;
    let id = parse_id(raw_id)?;
    let view = visible_job(gateway, &caller, &id)?;
    Ok((id, view))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "the job's id (UUID)"), MinSeq, ("Gantry-Min-Seq" = Option<u64>, Header, description = "as `min_seq`")), responses((status = 200, description = "The job", body = crate::openapi::JobDetail), crate::openapi::Errors))]
pub(crate) async fn get_job(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: MinSeq = query(&req)?;
    read_after(&gateway, &req, q.min_seq).await?;
    let view = visible_job(&gateway, &caller, &parse_id(&id)?)?;
    // While it runs, how busy its GPUs are now (telemetry, not history).
    let samples = if view.state == "running" {
        gateway.telemetry.gpus(&view.gpu_uuids)
    } else {
        Vec::new()
    };
    Ok(HttpResponse::Ok().json(JobDetail {
        job: view,
        gpu_telemetry: samples,
    }))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "the job's id (UUID)")), request_body(content = Option<crate::body::ReasonBody>, description = "optional"), responses((status = 202, description = "Cancel recorded", body = crate::openapi::CancelAccepted), crate::openapi::Errors))]
pub(crate) async fn cancel(
    gateway: web::Data<Gateway>,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Submitter)?;
    let id = parse_id(&id)?;
    let view = visible_job(&gateway, &caller, &id)?;
    may_cancel(&caller, view.submitted_by.as_deref(), "jobs")?;
    let reason = reason_of(&read_body(&gateway, &req, payload).await?)?;
    let reply = gateway.control.cancel(id, reason, caller.key_id()).await?;
    views_reach(&gateway, reply.seq).await;
    Ok(HttpResponse::Accepted().json(CancelAccepted {
        id,
        state: reply.state,
        seq: reply.seq,
    }))
}

/// A submitter cancels only what it submitted (`what`: `jobs`, `pipelines`); an operator
/// anything of its group.
pub(crate) fn may_cancel(
    caller: &Caller,
    submitted_by: Option<&str>,
    what: &str,
) -> Result<(), ApiError> {
    if caller.role < Role::Operator && submitted_by != caller.key_id().as_deref() {
        return Err(ApiError::new(
            403,
            "forbidden",
            format!(
                "a submitter cancels only its own {what} (an operator may cancel any of its group)"
            ),
            None,
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    attempt: Option<u32>,
    min_seq: Option<u64>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "jobs", params(("id" = String, Path, description = "the job's id (UUID)"), LogsQuery, ("Gantry-Min-Seq" = Option<u64>, Header, description = "as `min_seq`")), responses((status = 200, description = "An attempt's output so far (header `Gantry-Attempt`)", content_type = "text/plain", body = String), crate::openapi::Errors))]
pub(crate) async fn logs(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: LogsQuery = query(&req)?;
    read_after(&gateway, &req, q.min_seq).await?;
    let id = parse_id(&id)?;
    let view = visible_job(&gateway, &caller, &id)?;
    let attempt = q.attempt.unwrap_or(view.attempt);
    let text = gateway
        .output
        .read(id, attempt)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("Gantry-Attempt", attempt.to_string()))
        .body(text))
}
