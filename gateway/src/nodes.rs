//! `/v1/nodes` (the fleet, with free resources and GPU telemetry), node changes by operators,
//! and `/v1/queues`.

use actix_web::{HttpRequest, HttpResponse, web};
use gantry_actors::actor::scheduler::NodeChange;
use gantry_actors::placement::NodeStatus;

use crate::auth::Role;
use crate::body::{read_body, reason_of};
use crate::error::ApiError;
use crate::health::read_after;
use crate::jobs::MinSeq;
use crate::openapi::{Free, NodeChanged, NodeDetail, NodeList, QueueList};
use crate::{Gateway, query};

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(MinSeq, ("Gantry-Min-Seq" = Option<u64>, Header, description = "as `min_seq`")), responses((status = 200, description = "The fleet", body = crate::openapi::NodeList), crate::openapi::Errors))]
pub(crate) async fn nodes(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.caller(&req)?;
    let q: MinSeq = query(&req)?;
    read_after(&gateway, &req, q.min_seq).await?;
    // Free resources come from the scheduler (the leading control plane in a fleet); without
    // one the views still answer, without them.
    let live: std::collections::HashMap<String, gantry_actors::placement::Node> =
        match gateway.control.nodes().await {
            Ok(nodes) => nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            Err(error) => {
                tracing::warn!(%error, "free resources unavailable");
                Default::default()
            }
        };
    let nodes = gateway
        .views
        .nodes()?
        .into_iter()
        .map(|node| NodeDetail {
            gpu_telemetry: gateway.telemetry.node(&node.id),
            last_heartbeat_ms: gateway.telemetry.last_heard(&node.id),
            free: live.get(&node.id).map(|n| Free {
                cpu_millis: n.free_cpu_millis,
                memory_bytes: n.free_memory_bytes,
                gpus: n.free_gpus.iter().cloned().collect(),
            }),
            node,
        })
        .collect();
    Ok(HttpResponse::Ok().json(NodeList { nodes }))
}

/// `POST /v1/nodes/{id}/{cordon|uncordon|drain}`.
#[utoipa::path(post, path = "/v1/nodes/{id}/{action}", tag = "nodes", params(("id" = String, Path), ("action" = String, Path, description = "`cordon`, `uncordon` or `drain`")), request_body(content = Option<crate::body::ReasonBody>, description = "optional"), responses((status = 202, description = "Recorded", body = crate::openapi::NodeChanged), crate::openapi::Errors))]
pub(crate) async fn change_node(
    gateway: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Operator)?;
    let (node, action) = path.into_inner();
    let status = match action.as_str() {
        "cordon" => NodeStatus::Cordoned,
        "uncordon" => NodeStatus::Ready,
        "drain" => NodeStatus::Draining,
        _ => {
            return Err(ApiError::new(
                404,
                "not_found",
                format!("no node action {action:?} (cordon, uncordon, drain)"),
                Some("action".into()),
            ));
        }
    };
    let reason = reason_of(&read_body(&gateway, &req, payload).await?)?
        .unwrap_or_else(|| format!("{action} by an operator"));
    gateway
        .control
        .change_node(NodeChange {
            node: node.clone(),
            status,
            reason,
            by: caller.key_id(),
        })
        .await?;
    Ok(HttpResponse::Accepted().json(NodeChanged { id: node, status }))
}

/// Jobs per queue and state, over every group (counts only).
#[utoipa::path(get, path = "/v1/queues", tag = "nodes", params(MinSeq, ("Gantry-Min-Seq" = Option<u64>, Header, description = "as `min_seq`")), responses((status = 200, description = "Jobs per queue and state", body = crate::openapi::QueueList), crate::openapi::Errors))]
pub(crate) async fn queues(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.caller(&req)?;
    let q: MinSeq = query(&req)?;
    read_after(&gateway, &req, q.min_seq).await?;
    Ok(HttpResponse::Ok().json(QueueList {
        queues: gateway.views.queues()?,
    }))
}
