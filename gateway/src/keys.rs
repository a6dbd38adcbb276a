//! `/v1/keys`: admins create, list and revoke API keys. The first admin key is created with
//! the one-time bootstrap token `gantry up` writes to its data dir while no admin key exists.

use actix_web::{HttpRequest, HttpResponse, web};
use gantry_actors::world::AccessChange;
use gantry_events::event::{KeyCreated, KeyRevoked};
use serde::Deserialize;

use crate::Gateway;
use crate::auth::{Caller, Role, bearer};
use crate::body::{parse_body, read_body};
use crate::error::ApiError;
use crate::health::views_reach;
use crate::openapi::{KeyCreatedAnswer, KeyItem, KeyList, KeyRevokedAnswer};

/// Longest key name and group name.
const MAX_NAME_BYTES: usize = 64;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    role: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// A name or group: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn check_name(value: &str, field: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        return Ok(());
    }
    Err(ApiError::new(
        400,
        "invalid_name",
        format!("1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 . _ -"),
        Some(field.into()),
    ))
}

/// Whether any live admin key exists.
fn admin_exists(gateway: &Gateway) -> Result<bool, ApiError> {
    Ok(gateway
        .views
        .keys()?
        .iter()
        .any(|k| k.role == Role::Admin.as_str() && k.revoked_ns.is_none()))
}

/// The caller of a key creation: an admin, or the bootstrap token while no admin key exists
/// (and then only for an admin key).
fn creator(gateway: &Gateway, req: &HttpRequest) -> Result<(Caller, bool), ApiError> {
    if gateway.auth.required
        && let Some(token) = bearer(req)
        && gateway.auth.is_bootstrap(token)
    {
        gateway.auth.check_host(req)?;
        if admin_exists(gateway)? {
            return Err(ApiError::new(
                401,
                "unauthorized",
                "the bootstrap token is spent: an admin key exists",
                None,
            ));
        }
        let caller = Caller {
            principal: None,
            role: Role::Admin,
        };
        return Ok((caller, true));
    }
    let caller = gateway.caller(req)?;
    caller.require(Role::Admin)?;
    Ok((caller, false))
}

#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey, responses((status = 201, description = "Created; the key is shown once", body = crate::openapi::KeyCreatedAnswer), crate::openapi::Errors))]
pub(crate) async fn create(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (caller, bootstrap) = creator(&gateway, &req)?;
    let body = read_body(&gateway, &req, payload).await?;
    let asked: CreateKey = parse_body(&body, &[""])?;
    let role = Role::parse(&asked.role).ok_or_else(|| {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::new(
            400,
            "invalid_role",
            format!("role is one of {}", roles.join(", ")),
            Some("role".into()),
        )
    })?;
    if bootstrap && role != Role::Admin {
        return Err(ApiError::new(
            403,
            "forbidden",
            "the bootstrap token creates the first admin key only",
            Some("role".into()),
        ));
    }
    let group = asked
        .group
        .unwrap_or_else(|| gantry_actors::world::DEFAULT_GROUP.to_owned());
    check_name(&group, "group")?;
    let name = asked.name.unwrap_or_else(|| role.as_str().to_owned());
    check_name(&name, "name")?;
    let new = gateway.auth.new_key()?;
    let seq = gateway
        .control
        .change_access(AccessChange::Create(KeyCreated {
            key_id: new.key_id.clone(),
            name: name.clone(),
            role: role.as_str().to_owned(),
            group: group.clone(),
            hash: new.hash,
            by: caller.key_id(),
        }))
        .await?;
    views_reach(&gateway, seq).await;
    if bootstrap {
        gateway.bootstrap_spent();
    }
    tracing::info!(key_id = %new.key_id, role = role.as_str(), %group, "API key created");
    Ok(HttpResponse::Created().json(KeyCreatedAnswer {
        key_id: new.key_id,
        key: new.key,
        name,
        role: role.as_str().to_owned(),
        group,
    }))
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", responses((status = 200, description = "Every key (never the key itself)", body = crate::openapi::KeyList), crate::openapi::Errors))]
pub(crate) async fn list(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gateway.caller(&req)?.require(Role::Admin)?;
    let keys = gateway
        .views
        .keys()?
        .into_iter()
        .map(|k| KeyItem {
            key_id: k.key_id,
            name: k.name,
            role: k.role,
            group: k.group,
            created_ns: k.created_ns,
            created_by: k.created_by,
            revoked_ns: k.revoked_ns,
        })
        .collect();
    Ok(HttpResponse::Ok().json(KeyList { keys }))
}

#[utoipa::path(post, path = "/v1/keys/{id}/revoke", tag = "keys", params(("id" = String, Path, description = "the key's id")), responses((status = 202, description = "Revoked", body = crate::openapi::KeyRevokedAnswer), crate::openapi::Errors))]
pub(crate) async fn revoke(
    gateway: web::Data<Gateway>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = gateway.caller(&req)?;
    caller.require(Role::Admin)?;
    let key_id = id.into_inner();
    let seq = gateway
        .control
        .change_access(AccessChange::Revoke(KeyRevoked {
            key_id: key_id.clone(),
            by: caller.key_id(),
        }))
        .await?;
    views_reach(&gateway, seq).await;
    tracing::info!(%key_id, "API key revoked");
    Ok(HttpResponse::Accepted().json(KeyRevokedAnswer {
        key_id,
        revoked: true,
    }))
}
