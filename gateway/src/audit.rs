//! The log's provable history: the latest checkpoint the Auditor signed
//! (`GET /v1/audit/checkpoint`, the signed note as text), and Merkle proofs against the
//! checkpoints — that an entry is in the log (`/v1/audit/proof/inclusion`) and that a log of
//! one size is a prefix of a log of another (`/v1/audit/proof/consistency`). Each proof comes
//! with the signed checkpoint of its size when there is one, so a client checks it offline
//! with the Auditor's public key alone (`gantry audit verify-proof`).

use actix_web::{HttpRequest, HttpResponse, web};
use gantry_events::Hash;
use gantry_projections::{CheckpointView, ProofError};
use serde::{Deserialize, Serialize};

use crate::Gateway;
use crate::error::ApiError;
use crate::query;

/// How many recorded checkpoints back the latest signed one is looked for.
const SIGNED_LOOKBACK: usize = 64;

fn proof_error(error: ProofError) -> ApiError {
    match error {
        ProofError::OutOfRange { field, message } => {
            ApiError::new(400, "out_of_range", message, Some(field.into()))
        }
        ProofError::Views(error) => error.into(),
    }
}

/// The latest checkpoint the Auditor signed, as the views hold it.
fn latest_signed(gateway: &Gateway) -> Result<Option<CheckpointView>, ApiError> {
    Ok(gateway
        .views
        .signed_checkpoints(SIGNED_LOOKBACK)?
        .into_iter()
        .next())
}

/// The size a proof is about: the one asked, or the latest signed checkpoint's.
fn size_or_latest(gateway: &Gateway, size: Option<u64>, field: &str) -> Result<u64, ApiError> {
    match size {
        Some(size) => Ok(size),
        None => latest_signed(gateway)?.map(|c| c.size).ok_or_else(|| {
            ApiError::new(
                404,
                "no_checkpoint",
                format!(
                    "no signed checkpoint yet: name `{field}`, or wait for the Auditor's first"
                ),
                Some(field.into()),
            )
        }),
    }
}

/// The signed note for exactly `size` entries, when the Auditor signed one.
fn note_at(gateway: &Gateway, size: u64) -> Result<Option<String>, ApiError> {
    Ok(gateway
        .views
        .audit_checkpoint(Some(size))?
        .and_then(|c| c.note))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointQuery {
    /// The checkpoint of exactly this many entries (default: the latest).
    pub size: Option<u64>,
}

#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit", params(CheckpointQuery), responses((status = 200, description = "The checkpoint as a note signed by the Auditor's key (`text/plain`; C2SP signed-note, see events/FORMAT.md §6)", body = String, content_type = "text/plain"), crate::openapi::Errors))]
pub(crate) async fn checkpoint(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.caller(&req)?;
    let q: CheckpointQuery = query(&req)?;
    let note = match q.size {
        Some(size) => note_at(&gateway, size)?,
        None => latest_signed(&gateway)?.and_then(|c| c.note),
    };
    let note = note.ok_or_else(|| {
        ApiError::new(
            404,
            "no_checkpoint",
            match q.size {
                Some(size) => format!("the Auditor signed no checkpoint of {size} entries"),
                None => "the Auditor has signed no checkpoint yet".to_owned(),
            },
            q.size.map(|_| "size".into()),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(note))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct InclusionQuery {
    /// The entry.
    pub seq: u64,
    /// The size of the log it is shown in (default: the latest signed checkpoint's).
    pub size: Option<u64>,
}

/// That entry `seq` is in the log of `size` entries whose Merkle root is `root`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InclusionProof {
    pub seq: u64,
    pub size: u64,
    /// The entry's hash (its leaf is `SHA-256(0x00 ‖ entry hash)`).
    #[schema(value_type = String)]
    pub entry_hash: Hash,
    #[schema(value_type = String)]
    pub root: Hash,
    /// The audit path, nearest the leaf first (RFC 9162 §2.1.3), hex.
    #[schema(value_type = Vec<String>)]
    pub proof: Vec<Hash>,
    /// The checkpoint of `size` entries signed by the Auditor, when it signed one.
    pub checkpoint: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit", params(InclusionQuery), responses((status = 200, description = "The inclusion proof", body = InclusionProof), crate::openapi::Errors))]
pub(crate) async fn inclusion(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.caller(&req)?;
    let q: InclusionQuery = query(&req)?;
    let size = size_or_latest(&gateway, q.size, "size")?;
    let (proof, root) = gateway
        .views
        .inclusion_proof(&*gateway.log, q.seq, size)
        .await
        .map_err(proof_error)?;
    let entry_hash = gateway
        .log
        .read(q.seq, 1)
        .await
        .map_err(ApiError::unavailable)?
        .first()
        .and_then(|e| e.stored_hash().ok())
        .ok_or_else(|| ApiError::unavailable(format!("the log has no entry {}", q.seq)))?;
    Ok(HttpResponse::Ok().json(InclusionProof {
        seq: q.seq,
        size,
        entry_hash,
        root,
        proof,
        checkpoint: note_at(&gateway, size)?,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsistencyQuery {
    /// The smaller log's size.
    pub from: u64,
    /// The larger log's size (default: the latest signed checkpoint's).
    pub to: Option<u64>,
}

/// That the log of `from` entries (root `from_root`) is a prefix of the log of `to` entries
/// (root `to_root`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    #[schema(value_type = String)]
    pub from_root: Hash,
    #[schema(value_type = String)]
    pub to_root: Hash,
    /// RFC 9162 §2.1.4, hex.
    #[schema(value_type = Vec<String>)]
    pub proof: Vec<Hash>,
    /// The checkpoints of `from` and `to` entries signed by the Auditor, when it signed them.
    pub from_checkpoint: Option<String>,
    pub to_checkpoint: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit", params(ConsistencyQuery), responses((status = 200, description = "The consistency proof", body = ConsistencyProof), crate::openapi::Errors))]
pub(crate) async fn consistency(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.caller(&req)?;
    let q: ConsistencyQuery = query(&req)?;
    let to = size_or_latest(&gateway, q.to, "to")?;
    let (proof, from_root, to_root) = gateway
        .views
        .consistency_proof(&*gateway.log, q.from, to)
        .await
        .map_err(proof_error)?;
    Ok(HttpResponse::Ok().json(ConsistencyProof {
        from: q.from,
        to,
        from_root,
        to_root,
        proof,
        from_checkpoint: note_at(&gateway, q.from)?,
        to_checkpoint: note_at(&gateway, to)?,
    }))
}
