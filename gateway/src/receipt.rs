//! `GET /v1/jobs/{id}/receipt`: how a job's results were made, each fact with the sequence and
//! hash of the event that records it, so anyone can check the facts against the log
//! (`gantry receipt ID --verify` does, and re-hashes the stored outputs). Each fact carries its
//! whole stored entry and, once the Auditor has signed a checkpoint covering it, the entry's
//! inclusion proof against that checkpoint, which the receipt carries too: with the Auditor's
//! public key alone, `gantry receipt --verify --offline` checks every fact without the server.

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use gantry_events::event::{ArtifactEvent, JobEvent};
use gantry_events::{Event, Hash};
use serde_json::{Value, json};

use crate::Gateway;
use crate::error::ApiError;
use crate::jobs::readable_job;
use crate::openapi::{Receipt, ReceiptFact, ReceiptGpus};

/// The fact an event states about its job, as the receipt shows it (`gantry receipt --verify
/// --offline` derives it again from the event to check it).
pub fn receipt_fact(event: &Event) -> Value {
    match event {
        Event::Job(JobEvent::Submitted(s)) => json!({
            // The spec as JSON, fields in their declared order.
            "spec_sha256": Hash::of(&serde_json::to_vec(&s.spec).unwrap_or_default()),
            "image": s.spec.image,
            "inputs": s.spec.inputs.iter().map(|i| json!({
                "from": i.from, "artifact": i.artifact, "path": i.path,
                "sha256": i.sha256, "size_bytes": i.size_bytes,
            })).collect::<Vec<_>>(),
            "submitted_by": s.by,
        }),
        Event::Job(JobEvent::Placed(p)) => json!({
            "attempt": p.attempt, "node": p.node_id, "gpu_uuids": p.gpu_uuids,
        }),
        Event::Job(JobEvent::Started(s)) => json!({
            "attempt": s.attempt, "ran": s.image, "limits_enforced": s.limits_enforced,
        }),
        Event::Job(JobEvent::Succeeded(s)) => json!({
            "attempt": s.attempt, "exit_code": 0, "duration_ms": s.duration_ms,
        }),
        Event::Job(JobEvent::Failed(f)) => json!({
            "attempt": f.attempt, "cause": f.cause, "duration_ms": f.duration_ms,
        }),
        Event::Artifact(ArtifactEvent::Stored(a)) => json!({
            "attempt": a.attempt, "output": a.name, "sha256": a.sha256,
            "size_bytes": a.size_bytes,
        }),
        Event::Artifact(ArtifactEvent::Pruned(p)) => json!({
            "attempt": p.attempt, "output": p.name, "sha256": p.sha256, "reason": p.reason,
        }),
        _ => json!({}),
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}/receipt", tag = "jobs", params(("id" = String, Path, description = "the job's id (UUID)")), responses((status = 200, description = "Each fact with the event that records it", body = crate::openapi::Receipt), crate::openapi::Errors))]
pub(crate) async fn receipt(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (id, view) = readable_job(&gateway, &req, &id)?;
    let mut facts = Vec::new();
    for at in gateway.views.job_history(&id)? {
        let entries = gateway
            .log
            .read(at.seq, 1)
            .await
            .map_err(ApiError::unavailable)?;
        let envelope = entries
            .first()
            .ok_or_else(|| ApiError::unavailable(format!("the log has no entry {}", at.seq)))?
            .open()
            .map_err(ApiError::unavailable)?;
        // Pair check: the views and the log agree on what this entry is.
        if envelope.hash != at.hash {
            return Err(ApiError::unavailable(format!(
                "the views and the log disagree about entry {} (rebuild the views)",
                at.seq
            )));
        }
        facts.push(ReceiptFact {
            seq: envelope.seq,
            hash: envelope.hash,
            fact: receipt_fact(&envelope.event),
            entry: base64::engine::general_purpose::STANDARD.encode(&entries[0].bytes),
            proof: None,
            type_name: envelope.type_name,
            time_ns: envelope.time_ns,
        });
    }
    // The GPUs each attempt held, as their nodes described them (`node.joined`,
    // `node.gpus_observed`) when the attempt was placed.
    let gpus = view
        .attempts
        .into_iter()
        .map(|a| ReceiptGpus {
            attempt: a.attempt,
            node: a.node,
            gpus: a.gpus,
        })
        .collect();
    // Proofs against the latest signed checkpoint, when it covers every fact.
    let last = facts.iter().map(|f| f.seq).max().unwrap_or(0);
    let signed = gateway
        .views
        .signed_checkpoints(64)?
        .into_iter()
        .next()
        .filter(|c| c.size >= last);
    if let Some(signed) = &signed {
        for f in &mut facts {
            let (proof, _) = gateway
                .views
                .inclusion_proof(&*gateway.log, f.seq, signed.size)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            f.proof = Some(proof);
        }
    }
    Ok(HttpResponse::Ok().json(Receipt {
        job: id,
        state: view.state,
        facts,
        gpus,
        checkpoint: signed.and_then(|c| c.note),
    }))
}
