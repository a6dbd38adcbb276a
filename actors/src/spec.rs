//! What users send to submit a job, and its validation at the edge.
//!
//! [`SubmitRequest`] is the public shape (REST JSON, CLI spec files): unknown fields are
//! rejected. [`validate`] turns it into the [`JobSpec`] recorded in the log, or names the first
//! field at fault with a stable error code. A recorded spec is always valid.

use std::collections::BTreeMap;

use gantry_events::event::{
    GpuRequest, InputRef, JobId, JobSpec, Network, Resources, RetryPolicy, SecretRef,
};

use crate::secrets::{SECRET_SCHEME, SecretString, valid_name};
use serde::{Deserialize, Serialize};

/// A job submission as users write it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Required for a job; a pipeline stage's job defaults to the stage's name.
    #[serde(default)]
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Plain environment. A value `secret://NAME` names a stored secret of the submitter's
    /// group instead (kept out of the log).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret environment values given with the job: kept encrypted in the secret store, never
    /// in the log, the views or any API answer.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretString>,
    /// Artifacts of earlier jobs (of the same group) to read, under `$GANTRY_INPUT_DIR`.
    #[serde(default)]
    pub inputs: Vec<InputRequest>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub resources: ResourceRequest,
    /// A named resource profile of the server's (`--profiles`), e.g. `h100`: its CPUs, memory
    /// and GPUs, each unless `resources` sets it.
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// How long the job's outputs are kept after it ends, in seconds (default: the queue's
    /// retention of the server, else kept).
    #[serde(default)]
    pub artifact_ttl_secs: Option<u64>,
    #[serde(default)]
    pub retry: Option<RetryRequest>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<Network>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Refuse the job at once (422 with the reason) when no node that has ever joined could
    /// run it, instead of queueing it with a pending reason.
    #[serde(default)]
    pub reject_unschedulable: bool,
}

/// What the gateway resolved for a submission, which only it can: the secret variables' names
/// in the store (values it stored) and the inputs' stored artifacts (read from the views).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Resolved {
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    #[serde(default)]
    pub inputs: Vec<InputRef>,
}

/// An earlier job's artifact a job asks for.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    #[schema(value_type = String, format = Uuid)]
    pub from: JobId,
    pub artifact: String,
    /// Where the job finds it under `$GANTRY_INPUT_DIR` (default: the artifact's name).
    #[serde(default)]
    pub path: Option<String>,
}

/// Most inputs one job may read.
pub const MAX_INPUTS: usize = 64;

/// Resources as users write them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequest {
    /// CPU cores, fractions allowed (`0.5`).
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub gpus: Option<GpuAsk>,
}

/// GPUs as users ask for them (unknown fields refused: a typo must not mean "any GPU").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuAsk {
    #[serde(default)]
    pub count: u32,
    /// Part of the GPU's product name, e.g. `A100`.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub min_memory_bytes: Option<u64>,
}

impl From<GpuAsk> for GpuRequest {
    fn from(ask: GpuAsk) -> GpuRequest {
        GpuRequest {
            count: ask.count,
            model: ask.model,
            min_memory_bytes: ask.min_memory_bytes,
        }
    }
}

/// Retry policy as users write it; missing fields take the defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff_initial_ms: Option<u64>,
    #[serde(default)]
    pub backoff_max_ms: Option<u64>,
    #[serde(default)]
    pub retry_user_failures: Option<bool>,
}

/// A rejected field. `code` is stable; clients may match on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl Invalid {
    /// The same fault, its field named under `prefix` (e.g. `stages[1].job`).
    pub fn within(mut self, prefix: &str) -> Invalid {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

pub(crate) fn invalid(
    code: &'static str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> Invalid {
    Invalid {
        code,
        field: field.into(),
        message: message.into(),
    }
}

/// Bounds a submission must stay within, and the scheduler's own retry and lease settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_cpus: f64,
    pub max_memory_bytes: u64,
    pub max_gpus: u32,
    pub max_timeout_secs: u64,
    pub max_attempts: u32,
    pub default_memory_bytes: u64,
    pub default_cpus: f64,
    /// How long a placed attempt may wait for its worker to start it (image pull included)
    /// before it is taken back and the job queued again. Longer than a worker's image pull
    /// timeout, so a slow pull fails as a pull, not as a lost placement.
    pub placement_lease_secs: u64,
    /// Attempts a job may lose to infrastructure (node lost, gantry restarted under a local
    /// process, placement lease expired) before it is dead-lettered; they never count toward
    /// the job's own `max_attempts`.
    pub max_infra_losses: u32,
    /// Named resource profiles a submission may use (`profile`), from the server's config.
    pub profiles: BTreeMap<String, ResourceRequest>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_cpus: 1024.0,
            max_memory_bytes: 16 << 40,
            max_gpus: 64,
            max_timeout_secs: 30 * 24 * 3600,
            max_attempts: 100,
            default_memory_bytes: 512 << 20,
            default_cpus: 1.0,
            placement_lease_secs: 15 * 60,
            max_infra_losses: 20,
            profiles: BTreeMap::new(),
        }
    }
}

impl Limits {
    pub fn retry_budget(&self) -> crate::job::RetryBudget {
        crate::job::RetryBudget {
            max_infra_losses: self.max_infra_losses,
        }
    }
}

const MAX_ARGS: usize = 256;
/// Longest artifact retention a job may ask for: ten years.
pub const MAX_ARTIFACT_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
const MAX_ARG_BYTES: usize = 8192;
const MAX_ENV: usize = 256;
const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Environment variables the node sets for every attempt; a job cannot set them.
pub const RESERVED_ENV: &[&str] = &["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];
const MAX_LABELS: usize = 64;
/// Most secret variables (inline and `secret://` references together) one job may have.
const MAX_SECRETS: usize = 64;
const MAX_DAY_MS: u64 = 24 * 3600 * 1000;

/// Checks a submission and produces the spec to record.
pub fn validate(req: &SubmitRequest, limits: &Limits) -> Result<JobSpec, Invalid> {
    check_name("name", &req.name, 128)?;
    check_image(&req.image)?;
    check_strings("command", &req.command)?;
    check_strings("args", &req.args)?;
    if req.env.len() > MAX_ENV {
        return Err(invalid(
            "too_many",
            "env",
            format!("at most {MAX_ENV} variables"),
        ));
    }
    for (key, value) in &req.env {
        let field = format!("env.{key}");
        check_env_key(&field, key)?;
        if value.len() > MAX_ENV_VALUE_BYTES || value.contains('\0') {
            return Err(invalid(
                "invalid_env_value",
                field,
                "at most 32 KiB, no NUL",
            ));
        }
    }
    check_secrets(req)?;
    if let Some(dir) = &req.working_dir
        && (!dir.starts_with('/') || dir.len() > 4096 || dir.contains('\0'))
    {
        return Err(invalid(
            "invalid_path",
            "working_dir",
            "must be an absolute path",
        ));
    }

    let resources = with_profile(req, limits)?;
    let cpus = resources.cpus.unwrap_or(limits.default_cpus);
    if !cpus.is_finite() || cpus <= 0.0 || cpus > limits.max_cpus {
        return Err(invalid(
            "out_of_range",
            "resources.cpus",
            format!("between 0.001 and {}", limits.max_cpus),
        ));
    }
    let cpu_millis = (cpus * 1000.0).round() as u32;
    if cpu_millis == 0 {
        return Err(invalid("out_of_range", "resources.cpus", "at least 0.001"));
    }
    let memory_bytes = resources
        .memory_bytes
        .unwrap_or(limits.default_memory_bytes);
    if memory_bytes < (4 << 20) || memory_bytes > limits.max_memory_bytes {
        return Err(invalid(
            "out_of_range",
            "resources.memory_bytes",
            format!("between 4 MiB and {} bytes", limits.max_memory_bytes),
        ));
    }
    let gpus: GpuRequest = resources.gpus.map(Into::into).unwrap_or_default();
    if gpus.count > limits.max_gpus {
        return Err(invalid(
            "out_of_range",
            "resources.gpus.count",
            format!("at most {}", limits.max_gpus),
        ));
    }
    if gpus.count == 0 && (gpus.model.is_some() || gpus.min_memory_bytes.is_some()) {
        return Err(invalid(
            "inconsistent",
            "resources.gpus.count",
            "a GPU model or memory needs a count of at least 1",
        ));
    }
    if let Some(model) = &gpus.model
        && (model.is_empty() || model.len() > 128)
    {
        return Err(invalid(
            "invalid_value",
            "resources.gpus.model",
            "1 to 128 characters",
        ));
    }

    if let Some(t) = req.artifact_ttl_secs
        && (t == 0 || t > MAX_ARTIFACT_TTL_SECS)
    {
        return Err(invalid(
            "out_of_range",
            "artifact_ttl_secs",
            format!("between 1 and {MAX_ARTIFACT_TTL_SECS} (ten years)"),
        ));
    }
    if let Some(t) = req.timeout_secs
        && (t == 0 || t > limits.max_timeout_secs)
    {
        return Err(invalid(
            "out_of_range",
            "timeout_secs",
            format!("between 1 and {}", limits.max_timeout_secs),
        ));
    }

    let defaults = RetryPolicy::default();
    let r = req.retry.clone().unwrap_or_default();
    let retry = RetryPolicy {
        max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts),
        backoff_initial_ms: r.backoff_initial_ms.unwrap_or(defaults.backoff_initial_ms),
        backoff_max_ms: r.backoff_max_ms.unwrap_or(defaults.backoff_max_ms),
        retry_user_failures: r.retry_user_failures.unwrap_or(false),
    };
    if retry.max_attempts == 0 || retry.max_attempts > limits.max_attempts {
        return Err(invalid(
            "out_of_range",
            "retry.max_attempts",
            format!("between 1 and {}", limits.max_attempts),
        ));
    }
    if retry.backoff_max_ms > MAX_DAY_MS {
        return Err(invalid(
            "out_of_range",
            "retry.backoff_max_ms",
            "at most one day",
        ));
    }
    if retry.backoff_initial_ms > retry.backoff_max_ms {
        return Err(invalid(
            "out_of_range",
            "retry.backoff_initial_ms",
            "at most retry.backoff_max_ms",
        ));
    }
    if !(-1000..=1000).contains(&req.priority) {
        return Err(invalid(
            "out_of_range",
            "priority",
            "between -1000 and 1000",
        ));
    }
    let queue = req.queue.clone().unwrap_or_else(|| "default".into());
    check_name("queue", &queue, 64)?;
    if req.labels.len() > MAX_LABELS {
        return Err(invalid(
            "too_many",
            "labels",
            format!("at most {MAX_LABELS}"),
        ));
    }
    for (key, value) in &req.labels {
        let field = format!("labels.{key}");
        if key.is_empty()
            || key.len() > 63
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        {
            return Err(invalid(
                "invalid_label",
                field,
                "keys: 1–63 of [A-Za-z0-9._-/]",
            ));
        }
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(invalid(
                "invalid_label",
                field,
                "values: up to 256 printable characters",
            ));
        }
    }
    if let Some(key) = &req.idempotency_key
        && (key.is_empty() || key.len() > 256 || key.chars().any(char::is_control))
    {
        return Err(invalid(
            "invalid_value",
            "idempotency_key",
            "1 to 256 printable characters",
        ));
    }

    Ok(JobSpec {
        name: req.name.clone(),
        image: req.image.clone(),
        command: req.command.clone(),
        args: req.args.clone(),
        // `secret://` references are secrets, recorded (by name) in `secrets`.
        env: req
            .env
            .iter()
            .filter(|(_, v)| !v.starts_with(SECRET_SCHEME))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        secrets: BTreeMap::new(),
        inputs: Vec::new(),
        artifact_ttl_secs: req.artifact_ttl_secs,
        working_dir: req.working_dir.clone(),
        resources: Resources {
            cpu_millis,
            memory_bytes,
            gpus,
        },
        timeout_secs: req.timeout_secs,
        retry,
        priority: req.priority,
        queue,
        labels: req.labels.clone(),
        network: req.network.unwrap_or_default(),
        idempotency_key: req.idempotency_key.clone(),
    })
}

fn check_env_key(field: &str, key: &str) -> Result<(), Invalid> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || key.len() > 256 {
        return Err(invalid(
            "invalid_env_key",
            field,
            "keys are a letter or _ followed by letters, digits or _",
        ));
    }
    if RESERVED_ENV.contains(&key) {
        // The node sets these to the GPUs it assigned; a job naming its own would see
        // (and use) GPUs another job holds.
        return Err(invalid(
            "reserved_env_key",
            field,
            "set by the node to the job's assigned GPUs; ask for GPUs with resources.gpus",
        ));
    }
    Ok(())
}

/// The `env` variables that name stored secrets, with the secret's own name.
pub fn secret_references(req: &SubmitRequest) -> impl Iterator<Item = (&str, &str)> {
    req.env
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.strip_prefix(SECRET_SCHEME)?)))
}

/// Checks the secret part of a request: inline values (keys like `env`'s, values up to 32 KiB
/// without NUL, no key also in `env`) and `secret://NAME` references (a valid name); at most
/// 64 in all.
pub fn check_secrets(req: &SubmitRequest) -> Result<(), Invalid> {
    let references = secret_references(req).count();
    if req.secrets.len() + references > MAX_SECRETS {
        return Err(invalid(
            "too_many",
            "secrets",
            format!("at most {MAX_SECRETS} secret variables (inline and secret:// together)"),
        ));
    }
    for (key, value) in &req.secrets {
        let field = format!("secrets.{key}");
        check_env_key(&field, key)?;
        if req.env.contains_key(key) {
            return Err(invalid(
                "duplicate_env_key",
                field,
                "set in both env and secrets",
            ));
        }
        if value.0.is_empty() || value.0.len() > MAX_ENV_VALUE_BYTES || value.0.contains('\0') {
            return Err(invalid(
                "invalid_secret_value",
                field,
                "1 byte to 32 KiB, no NUL",
            ));
        }
    }
    for (key, name) in secret_references(req) {
        if !valid_name(name) {
            return Err(invalid(
                "invalid_secret_name",
                format!("env.{key}"),
                "secret://NAME with NAME 1 to 64 of A-Z a-z 0-9 . _ -",
            ));
        }
    }
    Ok(())
}

/// Checks a request's inputs: at most 64, each a valid artifact name and a valid path (the
/// artifact's name by default), no two at one path.
pub fn check_inputs(req: &SubmitRequest) -> Result<(), Invalid> {
    use crate::artifacts::valid_name as valid_artifact;
    if req.inputs.len() > MAX_INPUTS {
        return Err(invalid(
            "too_many",
            "inputs",
            format!("at most {MAX_INPUTS} inputs"),
        ));
    }
    let mut paths = std::collections::BTreeSet::new();
    for (i, input) in req.inputs.iter().enumerate() {
        if !valid_artifact(&input.artifact) {
            return Err(invalid(
                "invalid_name",
                format!("inputs[{i}].artifact"),
                "a relative path of at most 512 bytes, without . or .. parts",
            ));
        }
        let path = input.path.as_deref().unwrap_or(&input.artifact);
        if !valid_artifact(path) {
            return Err(invalid(
                "invalid_path",
                format!("inputs[{i}].path"),
                "a relative path of at most 512 bytes, without . or .. parts",
            ));
        }
        if !paths.insert(path) {
            return Err(invalid(
                "duplicate_path",
                format!("inputs[{i}].path"),
                "two inputs at one path",
            ));
        }
    }
    Ok(())
}

/// Checks the inputs a gateway resolved for a request (one per requested input, in order, at
/// the paths asked) and puts them in `spec`.
pub fn attach_inputs(
    spec: &mut JobSpec,
    req: &SubmitRequest,
    resolved: &[InputRef],
) -> Result<(), Invalid> {
    check_inputs(req)?;
    let matches = resolved.len() == req.inputs.len()
        && req.inputs.iter().zip(resolved).all(|(asked, got)| {
            asked.from == got.from
                && asked.artifact == got.artifact
                && asked.path.as_deref().unwrap_or(&asked.artifact) == got.path
        });
    if !matches {
        return Err(invalid(
            "input_not_resolved",
            "inputs",
            "the inputs were not resolved to stored artifacts",
        ));
    }
    spec.inputs = resolved.to_vec();
    Ok(())
}

/// Checks the secret references a gateway stored for a request of `group` and puts them in
/// `spec`: one for each `secret://` variable, the others for inline values (which the gateway
/// took out of the request), each a name of the group's own in the store.
pub fn attach_secrets(
    spec: &mut JobSpec,
    req: &SubmitRequest,
    refs: &BTreeMap<String, SecretRef>,
    group: &str,
) -> Result<(), Invalid> {
    if !req.secrets.is_empty() {
        // Values reach the scheduler only as names in the store: never record them.
        return Err(invalid(
            "secret_not_stored",
            "secrets",
            "inline secret values must be stored by the gateway first",
        ));
    }
    for (key, _) in secret_references(req) {
        if !refs.contains_key(key) {
            return Err(invalid(
                "secret_not_stored",
                format!("env.{key}"),
                "the secret reference was not resolved",
            ));
        }
    }
    if refs.len() > MAX_SECRETS {
        return Err(invalid(
            "too_many",
            "secrets",
            format!("at most {MAX_SECRETS} secret variables"),
        ));
    }
    let prefix = format!("{group}/");
    for (key, secret) in refs {
        let field = format!("secrets.{key}");
        check_env_key(&field, key)?;
        if spec.env.contains_key(key) {
            return Err(invalid(
                "duplicate_env_key",
                field,
                "set in both env and secrets",
            ));
        }
        if !secret.name.starts_with(&prefix) {
            return Err(invalid(
                "secret_not_found",
                field,
                "a job reaches only its own group's secrets",
            ));
        }
    }
    spec.secrets = refs.clone();
    Ok(())
}

/// The resources a request asks for: its profile's, each field overridden by the request's own.
fn with_profile(req: &SubmitRequest, limits: &Limits) -> Result<ResourceRequest, Invalid> {
    let Some(name) = &req.profile else {
        return Ok(req.resources.clone());
    };
    let Some(profile) = limits.profiles.get(name) else {
        let known: Vec<&str> = limits.profiles.keys().map(String::as_str).collect();
        return Err(invalid(
            "unknown_profile",
            "profile",
            if known.is_empty() {
                format!("no profile {name:?}: the server defines none")
            } else {
                format!("no profile {name:?}; the server has {}", known.join(", "))
            },
        ));
    };
    Ok(ResourceRequest {
        cpus: req.resources.cpus.or(profile.cpus),
        memory_bytes: req.resources.memory_bytes.or(profile.memory_bytes),
        gpus: req.resources.gpus.clone().or_else(|| profile.gpus.clone()),
    })
}

/// Checks a name of letters, digits, `.`, `_` and `-` (job, pipeline, stage and profile names).
pub fn check_name(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(
            "invalid_name",
            field,
            format!("1 to {max} characters"),
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid(
            "invalid_name",
            field,
            "only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

fn check_strings(field: &str, values: &[String]) -> Result<(), Invalid> {
    if values.len() > MAX_ARGS {
        return Err(invalid(
            "too_many",
            field,
            format!("at most {MAX_ARGS} entries"),
        ));
    }
    for (i, v) in values.iter().enumerate() {
        if v.len() > MAX_ARG_BYTES || v.contains('\0') {
            return Err(invalid(
                "invalid_value",
                format!("{field}[{i}]"),
                "at most 8 KiB, no NUL",
            ));
        }
    }
    Ok(())
}

/// Docker's image reference grammar: `[host[:port]/]path[:tag][@digest]`, path components
/// lowercase alphanumerics joined by `.`, `_`, `__` or `-`.
pub fn check_image(image: &str) -> Result<(), Invalid> {
    let bad = |why: &str| {
        Err(invalid(
            "invalid_image",
            "image",
            format!("{why}: {image:?}"),
        ))
    };
    if image.is_empty() || image.len() > 512 {
        return bad("1 to 512 characters");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let Some((algo, hex)) = digest.split_once(':') else {
            return bad("digest must be algorithm:hex");
        };
        if algo.is_empty()
            || !algo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
            || hex.len() < 32
            || !hex.chars().all(|c| c.is_ascii_hexdigit())
        {
            return bad("malformed digest");
        }
    }
    // A tag follows the last ':' after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let mut chars = tag.chars();
        let first = chars.next();
        if tag.len() > 128
            || !first.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return bad("malformed tag");
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part is a registry host if it has a '.' or ':' or is "localhost".
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (hostname, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if !hostname.split('.').all(label_ok)
            || port.is_some_and(|p| !p.parse::<u16>().is_ok_and(|p| p > 0))
        {
            return bad("malformed registry host");
        }
    }
    if parts.is_empty() {
        return bad("missing repository");
    }
    for part in parts {
        if !path_component_ok(part) {
            return bad(
                "repository components are lowercase letters and digits joined by . _ __ or -",
            );
        }
    }
    Ok(())
}

fn path_component_ok(part: &str) -> bool {
    let bytes = part.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // Separators: '.', '_', '__', or one or more '-'.
        let run = bytes[i..].iter().take_while(|&&c| c == b).count();
        let ok = match b {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
        i += run;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SubmitRequest {
        SubmitRequest {
            name: "hello".into(),
            image: "busybox".into(),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            ..SubmitRequest::default()
        }
    }

    fn rejects(mutate: impl FnOnce(&mut SubmitRequest), code: &str, field: &str) {
        let mut r = req();
        mutate(&mut r);
        let err = validate(&r, &Limits::default()).expect_err("must be rejected");
        assert_eq!((err.code, err.field.as_str()), (code, field), "{err}");
    }

    #[test]
    fn a_plain_request_gets_defaults() {
        let spec = validate(&req(), &Limits::default()).expect("valid");
        assert_eq!(spec.queue, "default");
        assert_eq!(spec.resources.cpu_millis, 1000);
        assert_eq!(spec.retry, RetryPolicy::default());
        assert_eq!(spec.network, Network::None);
    }

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "library/busybox:1.36",
            "registry.example.com:5000/ml/train:v1.4-rc_1",
            "localhost/gantry-test/busybox:latest",
            "ghcr.io/a__b/c-d.e@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(check_image(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Busybox",
            "bad image",
            "a//b",
            "x:",
            "x:-tag",
            "-a",
            "a.",
            "a..b",
            "a___b",
            "host:port/x",
            "x@sha256:12",
            "../etc/passwd",
            "./x",
            "localhost:99999999999/x",
            "localhost:0/x",
            "-bad.example.com/x",
            "a..b.example.com/x",
        ] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_field_is_named() {
        rejects(|r| r.name = String::new(), "invalid_name", "name");
        rejects(|r| r.image = "UPPER".into(), "invalid_image", "image");
        rejects(
            |r| {
                r.env.insert("1BAD".into(), "x".into());
            },
            "invalid_env_key",
            "env.1BAD",
        );
        rejects(
            |r| {
                r.env.insert("CUDA_VISIBLE_DEVICES".into(), "0,1".into());
            },
            "reserved_env_key",
            "env.CUDA_VISIBLE_DEVICES",
        );
        rejects(
            |r| r.resources.cpus = Some(-1.0),
            "out_of_range",
            "resources.cpus",
        );
        rejects(
            |r| r.resources.cpus = Some(f64::NAN),
            "out_of_range",
            "resources.cpus",
        );
        rejects(
            |r| r.resources.memory_bytes = Some(u64::MAX),
            "out_of_range",
            "resources.memory_bytes",
        );
        rejects(
            |r| {
                r.resources.gpus = Some(GpuAsk {
                    count: 1000,
                    ..Default::default()
                })
            },
            "out_of_range",
            "resources.gpus.count",
        );
        rejects(|r| r.timeout_secs = Some(0), "out_of_range", "timeout_secs");
        rejects(
            |r| {
                r.retry = Some(RetryRequest {
                    max_attempts: Some(0),
                    ..Default::default()
                })
            },
            "out_of_range",
            "retry.max_attempts",
        );
        rejects(|r| r.priority = 5000, "out_of_range", "priority");
        rejects(
            |r| r.queue = Some("no spaces".into()),
            "invalid_name",
            "queue",
        );
        rejects(
            |r| r.working_dir = Some("relative".into()),
            "invalid_path",
            "working_dir",
        );
        rejects(|r| r.args = vec!["a\0b".into()], "invalid_value", "args[0]");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<SubmitRequest>(r#"{"name":"a","image":"b","imagee":"c"}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("imagee"), "{err}");
    }
}
