//! `/v1/pipelines`: submit (or check with `?dry_run=true`), list, get and cancel pipelines.
//! Each stage's job is resolved at the edge like a job submission (its own secrets and
//! inputs); the control plane checks the whole pipeline and records it, or refuses it naming
//! the stage and field at fault. Reads are scoped to the caller's group like jobs.

use actix_web::{HttpRequest, HttpResponse, web};
use gantry_actors::actor::scheduler::PipelineCommand;
use gantry_actors::pipeline::{MAX_STAGES, PipelineRequest, stage_job};
use gantry_actors::spec::Resolved;
use gantry_events::event::PipelineId;
use gantry_projections::PipelineView;
use serde::Deserialize;

use crate::auth::{Caller, Role};
use crate::body::{OBJECT_PATHS, page_limit, parse_body, parse_id, read_body, reason_of};
use crate::error::ApiError;
use crate::health::{read_after, views_reach};
use crate::openapi::{PipelineCancelAccepted, PipelineDryRun, PipelineList, PipelineSubmitted};
use crate::{Gateway, query};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SubmitQuery {
    #[serde(default)]
    dry_run: bool,
}

/// The paths of a pipeline request that must hold objects: each stage, and in each stage's
/// job the same as in a job submission.
fn object_paths() -> Vec<String> {
    let mut paths = vec![String::new(), "stages[]".into(), "stages[].job".into()];
    paths.extend(
        OBJECT_PATHS
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| format!("stages[].job.{p}")),
    );
    paths
}

/// A fault about a stage's job, named under the stage.
fn within_stage(i: usize, mut error: ApiError) -> ApiError {
    error.field = Some(match error.field {
        Some(field) => format!("stages[{i}].job.{field}"),
        None => format!("stages[{i}].job"),
    });
    error
}

#[utoipa::path(post, path = "/v1/pipelines", tag = "pipelines", params(SubmitQuery), request_body = gantry_actors::pipeline::PipelineRequest, responses((status = 202, description = "Accepted", body = crate::openapi::PipelineSubmitted), (status = 200, description = "Dry run: checked, nothing recorded", body = crate::openapi::PipelineDryRun), crate::openapi::Errors))]
pub(crate) async fn submit(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Submitter)?;
    let q: SubmitQuery = query(&req)?;
    let body = read_body(&gateway, &req, payload).await?;
    let paths = object_paths();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mut request: PipelineRequest = parse_body(&body, &paths)?;
    if request.stages.len() > MAX_STAGES {
        return Err(ApiError::new(
            400,
            "out_of_range",
            format!("1 to {MAX_STAGES} stages"),
            Some("stages".into()),
        ));
    }
    // Each stage's job, resolved as a submission is: its inputs from finished jobs, its
    // secrets (a dry run stores no values: it checks references only).
    let mut resolved = Vec::with_capacity(request.stages.len());
    let mut stored = Vec::new();
    for (i, stage) in request.stages.iter_mut().enumerate() {
        let job = stage_job(stage);
        let inputs = match crate::artifacts::resolve_inputs(&gateway, &caller, &job) {
            Ok(inputs) => inputs,
            Err(error) => {
                crate::secrets::forget(&gateway, &stored).await;
                return Err(within_stage(i, error));
            }
        };
        let mut job = job;
        if q.dry_run {
            job.secrets.clear();
        }
        let (secrets, mine) = match crate::secrets::store_for_job(&gateway, &caller, &mut job).await
        {
            Ok(done) => done,
            Err(error) => {
                crate::secrets::forget(&gateway, &stored).await;
                return Err(within_stage(i, error));
            }
        };
        stored.extend(mine);
        // The values are in the store now: the request keeps only their names.
        stage.job.secrets.clear();
        resolved.push(Resolved { secrets, inputs });
    }
    let answer = gateway
        .control
        .pipeline(PipelineCommand::Submit {
            request: Box::new(request),
            by: caller.principal,
            resolved,
            dry_run: q.dry_run,
        })
        .await;
    if answer.is_err() || q.dry_run {
        crate::secrets::forget(&gateway, &stored).await;
    }
    let reply = answer?;
    let order = reply.stages.iter().map(|s| s.name.clone()).collect();
    if q.dry_run {
        return Ok(HttpResponse::Ok().json(PipelineDryRun {
            dry_run: true,
            order,
            stages: reply.stages,
        }));
    }
    views_reach(&gateway, reply.seq).await;
    Ok(HttpResponse::Accepted().json(PipelineSubmitted {
        id: reply.pipeline_id,
        order,
        seq: reply.seq,
    }))
}

/// The pipeline `id` if the caller's group may see it; 404 otherwise.
fn visible_pipeline(
    gateway: &Gateway,
    caller: &Caller,
    id: &PipelineId,
) -> Result<PipelineView, ApiError> {
    gateway
        .views
        .pipeline_in(id, caller.scope())?
        .ok_or_else(|| ApiError::not_found(format!("no pipeline {id}")))
}

#[utoipa::path(get, path = "/v1/pipelines/{id}", tag = "pipelines", params(("id" = String, Path, description = "the pipeline's id (UUID)"), crate::jobs::MinSeq, ("Gantry-Min-Seq" = Option<u64>, Header, description = "as `min_seq`")), responses((status = 200, description = "The pipeline", body = gantry_projections::PipelineView), crate::openapi::Errors))]
pub(crate) async fn get(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: crate::jobs::MinSeq = query(&req)?;
    read_after(&gateway, &req, q.min_seq).await?;
    let id = parse_id(&id)?;
    Ok(HttpResponse::Ok().json(visible_pipeline(&gateway, &caller, &id)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
    min_seq: Option<u64>,
}

#[utoipa::path(get, path = "/v1/pipelines", tag = "pipelines", params(ListQuery, ("Gantry-Min-Seq" = Option<u64>, Header, description = "as `min_seq`")), responses((status = 200, description = "A page of pipelines", body = crate::openapi::PipelineList), crate::openapi::Errors))]
pub(crate) async fn list(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    let q: ListQuery = query(&req)?;
    let limit = page_limit(q.limit)?;
    let after = q.after.as_deref().map(parse_id).transpose()?;
    read_after(&gateway, &req, q.min_seq).await?;
    let pipelines = gateway.views.pipelines(caller.scope(), after, limit)?;
    let next = (pipelines.len() == limit)
        .then(|| pipelines.last().map(|p| p.id))
        .flatten();
    Ok(HttpResponse::Ok().json(PipelineList { pipelines, next }))
}

#[utoipa::path(post, path = "/v1/pipelines/{id}/cancel", tag = "pipelines", params(("id" = String, Path, description = "the pipeline's id (UUID)")), request_body(content = Option<crate::body::ReasonBody>, description = "optional"), responses((status = 202, description = "Cancel recorded", body = crate::openapi::PipelineCancelAccepted), crate::openapi::Errors))]
pub(crate) async fn cancel(
    gateway: web::Data<Gateway>,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Submitter)?;
    let id = parse_id(&id)?;
    let view = visible_pipeline(&gateway, &caller, &id)?;
    crate::jobs::may_cancel(&caller, view.submitted_by.as_deref(), "pipelines")?;
    let reason = reason_of(&read_body(&gateway, &req, payload).await?)?;
    let reply = gateway
        .control
        .pipeline(PipelineCommand::Cancel {
            pipeline_id: id,
            reason,
            by: caller.key_id(),
        })
        .await?;
    views_reach(&gateway, reply.seq).await;
    let view = visible_pipeline(&gateway, &caller, &id)?;
    Ok(HttpResponse::Accepted().json(PipelineCancelAccepted {
        id,
        state: view.state,
    }))
}
