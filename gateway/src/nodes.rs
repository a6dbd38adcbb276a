//! `/v1/nodes` (the fleet, with free resources and GPU telemetry), node changes by operators,
//! and `/v1/queues`.

use actix_web::{HttpRequest, HttpResponse, web};
use gantry_actors::actor::scheduler::NodeChange;
use gantry_actors::placement::NodeStatus;

use crate::Gateway;
use crate::auth::Role;
use crate::body::{read_body, reason_of};
use crate::error::ApiError;

pub(crate) async fn nodes(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.caller(&req)?;
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
    let nodes: Vec<serde_json::Value> = gateway
        .views
        .nodes()?
        .into_iter()
        .map(|node| {
            let samples = gateway.telemetry.node(&node.id);
            let heard = gateway.telemetry.last_heard(&node.id);
            let free = live.get(&node.id).map(|n| {
                serde_json::json!({
                    "cpu_millis": n.free_cpu_millis,
                    "memory_bytes": n.free_memory_bytes,
                    "gpus": n.free_gpus,
                })
            });
            let mut value = serde_json::to_value(node).unwrap_or_default();
            value["gpu_telemetry"] = serde_json::to_value(samples).unwrap_or_default();
            value["last_heartbeat_ms"] = serde_json::to_value(heard).unwrap_or_default();
            value["free"] = free.unwrap_or_default();
            value
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "nodes": nodes })))
}

/// `POST /v1/nodes/{id}/{cordon|uncordon|drain}`.
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
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": node, "status": status })))
}

/// Jobs per queue and state, over every group (counts only).
pub(crate) async fn queues(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.caller(&req)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "queues": gateway.views.queues()? })))
}
