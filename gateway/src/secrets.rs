//! `/v1/secrets`: operators store, list and delete their group's secrets; a job names one as
//! an `env` value `secret://NAME`. Values go into the secret store (encrypted) and never into
//! the log, a view or an answer: the log records each secret's name and a keyed hash.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use gantry_actors::secrets::{SecretString, stored_name, valid_name};
use gantry_actors::spec::{SubmitRequest, check_secrets, secret_references};
use gantry_actors::world::{AccessChange, DEFAULT_GROUP};
use gantry_events::event::{SecretDeleted, SecretRef, SecretSet};
use serde::Deserialize;

use crate::Gateway;
use crate::auth::{Caller, Role};
use crate::body::{parse_body, read_body};
use crate::error::ApiError;
use crate::health::views_reach;
use crate::openapi::{SecretDeletedAnswer, SecretList, SecretStored};

fn store_error(e: gantry_actors::secrets::SecretError) -> ApiError {
    ApiError::unavailable(e)
}

fn group_of(caller: &Caller) -> &str {
    caller
        .principal
        .as_ref()
        .map_or(DEFAULT_GROUP, |p| p.group.as_str())
}

/// Puts a submission's inline secret values into the store (under fresh names of the caller's
/// group) and resolves its `secret://` references to the group's stored secrets. Returns the
/// references to record and the names stored here (to forget if no job is made).
pub(crate) async fn store_for_job(
    gateway: &Gateway,
    caller: &Caller,
    request: &mut SubmitRequest,
) -> Result<(BTreeMap<String, SecretRef>, Vec<String>), ApiError> {
    check_secrets(request).map_err(|i| ApiError::new(400, i.code, i.message, Some(i.field)))?;
    let group = group_of(caller);
    let mut refs = BTreeMap::new();
    for (env, name) in secret_references(request) {
        let stored = stored_name(group, name);
        let value = gateway
            .secrets
            .get(&stored)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    "secret_not_found",
                    format!("no secret {name:?} in group {group} (gantry secrets set {name})"),
                    Some(format!("env.{env}")),
                )
            })?;
        let hash = gateway.auth.secret_hash(&value.0);
        refs.insert(env.to_owned(), SecretRef { name: stored, hash });
    }
    let inline = std::mem::take(&mut request.secrets);
    let mut stored = Vec::new();
    if !inline.is_empty() {
        let batch = uuid::Uuid::now_v7().simple().to_string();
        for (env, value) in inline {
            let name = format!("{group}/job-{batch}/{env}");
            if let Err(e) = gateway.secrets.put(&name, &value).await {
                forget(gateway, &stored).await;
                return Err(store_error(e));
            }
            stored.push(name.clone());
            let hash = gateway.auth.secret_hash(&value.0);
            refs.insert(env, SecretRef { name, hash });
        }
    }
    Ok((refs, stored))
}

/// Deletes values stored for a submission that made no job (best effort: an orphan is only
/// unused space, never readable through a job).
pub(crate) async fn forget(gateway: &Gateway, names: &[String]) {
    for name in names {
        if let Err(error) = gateway.secrets.delete(name).await {
            tracing::warn!(%name, %error, "could not delete an unused secret value");
        }
    }
}

/// A secret's own name from the path: 400 naming `name` otherwise.
fn checked_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        return Ok(());
    }
    Err(ApiError::new(
        400,
        "invalid_secret_name",
        "1 to 64 of A-Z a-z 0-9 . _ -",
        Some("name".into()),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetSecret {
    value: SecretString,
}

/// Longest secret value.
const MAX_VALUE_BYTES: usize = 32 * 1024;

#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)), request_body = SetSecret, responses((status = 200, description = "Stored", body = crate::openapi::SecretStored), crate::openapi::Errors))]
pub(crate) async fn set(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Operator)?;
    let name = name.into_inner();
    checked_name(&name)?;
    let body = read_body(&gateway, &req, payload).await?;
    let SetSecret { value } = parse_body(&body, &[""])?;
    if value.0.is_empty() || value.0.len() > MAX_VALUE_BYTES || value.0.contains('\0') {
        return Err(ApiError::new(
            400,
            "invalid_secret_value",
            "1 byte to 32 KiB, no NUL",
            Some("value".into()),
        ));
    }
    let stored = stored_name(group_of(&caller), &name);
    gateway
        .secrets
        .put(&stored, &value)
        .await
        .map_err(store_error)?;
    let seq = gateway
        .control
        .change_access(AccessChange::SecretSet(SecretSet {
            name: stored.clone(),
            hash: gateway.auth.secret_hash(&value.0),
            by: caller.key_id(),
        }))
        .await?;
    views_reach(&gateway, seq).await;
    tracing::info!(secret = %stored, "secret stored");
    Ok(HttpResponse::Ok().json(SecretStored {
        name,
        stored_as: stored,
    }))
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)), responses((status = 200, description = "Deleted", body = crate::openapi::SecretDeletedAnswer), crate::openapi::Errors))]
pub(crate) async fn delete(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Operator)?;
    let name = name.into_inner();
    checked_name(&name)?;
    let stored = stored_name(group_of(&caller), &name);
    if gateway
        .secrets
        .get(&stored)
        .await
        .map_err(store_error)?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no secret {name}")));
    }
    gateway.secrets.delete(&stored).await.map_err(store_error)?;
    let seq = gateway
        .control
        .change_access(AccessChange::SecretDeleted(SecretDeleted {
            name: stored.clone(),
            by: caller.key_id(),
        }))
        .await?;
    views_reach(&gateway, seq).await;
    Ok(HttpResponse::Ok().json(SecretDeletedAnswer {
        name,
        deleted: true,
    }))
}

/// The names of the caller's group's stored secrets (never their values).
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", responses((status = 200, description = "The group's secrets' names", body = crate::openapi::SecretList), crate::openapi::Errors))]
pub(crate) async fn list(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Operator)?;
    let prefix = format!("{}/", group_of(&caller));
    let names: Vec<String> = gateway
        .secrets
        .names(&prefix)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
        // Values given with jobs are kept under job-…/ and are not the group's to name.
        .filter(|n| !n.contains('/'))
        .collect();
    Ok(HttpResponse::Ok().json(SecretList { secrets: names }))
}
