//! Who is asking, and what they may do: API keys, roles, groups, the Host check and the
//! per-key rate limit.
//!
//! A key is `gantry_<id>_<secret>`: 8 random bytes of id and 32 of secret, in hex. Only the id
//! and an HMAC-SHA256 of the whole key (under a key derived from the server's secret key) are
//! ever recorded; a request's key is hashed the same way and compared in constant time. The
//! key itself is shown once, when it is created, and never logged.
//!
//! Roles nest: a viewer reads; a submitter also submits and cancels its own jobs; an operator
//! also cancels any job of its group and changes nodes; an admin also manages keys and sees
//! every group. Every other key sees and touches only its own group's jobs: a job of another
//! group answers 404, as if it did not exist.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use actix_web::HttpRequest;
use gantry_actors::world::Principal;
use gantry_events::Hash;
use gantry_projections::{KeyView, Projections};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// What a key may do; each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Submitter,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Submitter, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// The caller of one request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key (its id and group); `None` when authentication is off.
    pub principal: Option<Principal>,
    pub role: Role,
}

impl Caller {
    /// The group whose jobs this caller sees: `None` for every group (admins, and everyone
    /// when authentication is off).
    pub fn scope(&self) -> Option<&str> {
        match (&self.principal, self.role) {
            (Some(p), role) if role < Role::Admin => Some(p.group.as_str()),
            _ => None,
        }
    }

    /// The key's id, recorded in the events this caller's requests cause.
    pub fn key_id(&self) -> Option<String> {
        self.principal.as_ref().map(|p| p.key_id.clone())
    }

    /// Refuses (403) a caller whose role is below `need`.
    pub fn require(&self, need: Role) -> Result<(), ApiError> {
        if self.role >= need {
            return Ok(());
        }
        Err(ApiError::new(
            403,
            "forbidden",
            format!(
                "this needs the {} role; the key is {}",
                need.as_str(),
                self.role.as_str()
            ),
            None,
        ))
    }
}

/// Bytes of a key's id and of its secret.
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const PREFIX: &str = "gantry_";
const BOOTSTRAP_PREFIX: &str = "gantry_bootstrap_";

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Compares in time that depends only on the length, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| ApiError::unavailable(format!("no randomness for a key: {e}")))?;
    Ok(hex::encode(buf))
}

/// A key just made: its id, the key itself (shown once) and the hash to record.
#[derive(Debug)]
pub struct NewKey {
    pub key_id: String,
    pub key: String,
    pub hash: Hash,
}

/// How the gateway authenticates.
pub struct Auth {
    /// Whether requests need a key. Off only when the gateway listens on loopback alone.
    pub required: bool,
    /// HMAC key for API key hashes, derived from the server's secret key.
    hash_key: [u8; 32],
    /// HMAC key for the hashes of secret values the log records.
    secret_hash_key: [u8; 32],
    /// The hash of the one-time token that may create the first admin key.
    bootstrap: Option<Hash>,
    /// Host names (besides IP literals, `localhost` and this machine's name) requests may name.
    allowed_hosts: Vec<String>,
    limiter: RateLimiter,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Auth")
            .field("required", &self.required)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

/// Settings of [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub required: bool,
    /// The server's secret key (32 bytes or more), kept outside the data dir.
    pub secret_key: Vec<u8>,
    /// The one-time token that may create the first admin key (while no admin key exists).
    pub bootstrap_token: Option<String>,
    pub allowed_hosts: Vec<String>,
    /// Requests per second each key may make (and each client address with keys that do not
    /// check out), and the burst above it.
    pub rate_per_sec: f64,
    pub burst: f64,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            required: false,
            secret_key: Vec::new(),
            bootstrap_token: None,
            allowed_hosts: Vec::new(),
            rate_per_sec: 50.0,
            burst: 100.0,
        }
    }
}

impl Auth {
    pub fn new(options: AuthOptions) -> Auth {
        let hash_key = hmac_sha256(&options.secret_key, b"gantry api key hash v1");
        let secret_hash_key = hmac_sha256(&options.secret_key, b"gantry secret value hash v1");
        let bootstrap = options
            .bootstrap_token
            .as_deref()
            .map(|t| Hash(hmac_sha256(&hash_key, t.as_bytes())));
        Auth {
            required: options.required,
            hash_key,
            secret_hash_key,
            bootstrap,
            allowed_hosts: options.allowed_hosts,
            limiter: RateLimiter::new(options.rate_per_sec, options.burst),
        }
    }

    /// The keyed hash of a key as recorded.
    pub fn hash(&self, key: &str) -> Hash {
        Hash(hmac_sha256(&self.hash_key, key.as_bytes()))
    }

    /// The keyed hash of a secret value, as the log records it.
    pub fn secret_hash(&self, value: &str) -> Hash {
        Hash(hmac_sha256(&self.secret_hash_key, value.as_bytes()))
    }

    /// Makes a new key.
    pub fn new_key(&self) -> Result<NewKey, ApiError> {
        let key_id = random_hex(ID_BYTES)?;
        let key = format!("{PREFIX}{key_id}_{}", random_hex(SECRET_BYTES)?);
        let hash = self.hash(&key);
        Ok(NewKey { key_id, key, hash })
    }

    /// Makes a one-time bootstrap token.
    pub fn new_bootstrap_token() -> Result<String, ApiError> {
        Ok(format!("{BOOTSTRAP_PREFIX}{}", random_hex(SECRET_BYTES)?))
    }

    /// Whether `token` is the bootstrap token.
    pub fn is_bootstrap(&self, token: &str) -> bool {
        self.bootstrap
            .is_some_and(|h| constant_time_eq(&h.0, &self.hash(token).0))
    }

    /// Who sent `token`: a live key of the views, or 401.
    pub fn check_token(&self, views: &Projections, token: &str) -> Result<Caller, ApiError> {
        let unknown = || ApiError::new(401, "unauthorized", "unknown or revoked API key", None);
        let key_id = token
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(unknown)?;
        let key: KeyView = views.key(key_id)?.ok_or_else(unknown)?;
        // The hash is compared even for a revoked key, so timing tells nothing either way.
        let matches = constant_time_eq(&key.hash.0, &self.hash(token).0);
        if !matches || key.revoked_ns.is_some() {
            return Err(unknown());
        }
        let role = Role::parse(&key.role).ok_or_else(unknown)?;
        Ok(Caller {
            principal: Some(Principal {
                key_id: key.key_id,
                group: key.group,
            }),
            role,
        })
    }

    /// Who is asking: with authentication off, everyone is an admin of every group; on, the
    /// `Authorization: Bearer` key must be live (401 otherwise) and within its request rate
    /// (429). Checks the Host header first.
    pub fn caller(&self, views: &Projections, req: &HttpRequest) -> Result<Caller, ApiError> {
        self.check_host(req)?;
        if !self.required {
            // No keys, nothing to limit per key: the gateway listens on loopback only.
            return Ok(Caller {
                principal: None,
                role: Role::Admin,
            });
        }
        let token = bearer(req).ok_or_else(|| {
            ApiError::new(
                401,
                "unauthorized",
                "send an API key as `Authorization: Bearer KEY` (see `gantry keys create`)",
                None,
            )
        })?;
        let caller = match self.check_token(views, token) {
            Ok(caller) => caller,
            Err(e) => {
                // Guessing keys is rate-limited per address.
                self.limit(&client_address(req))?;
                return Err(e);
            }
        };
        self.limit(&caller.key_id().unwrap_or_default())?;
        Ok(caller)
    }

    /// 429 with `Retry-After` once `who` is past its rate.
    pub fn limit(&self, who: &str) -> Result<(), ApiError> {
        match self.limiter.take(who) {
            Ok(()) => Ok(()),
            Err(wait_secs) => Err(ApiError::new(
                429,
                "rate_limited",
                format!("too many requests; retry in {wait_secs} s"),
                None,
            )
            .retry_after(wait_secs)),
        }
    }

    /// Refuses (421) a request whose `Host` is a DNS name this gateway does not serve: a web
    /// page whose name an attacker points at this address (DNS rebinding) would otherwise
    /// reach it from the victim's browser. IP literals, `localhost` and this machine's name
    /// always pass; `--allow-host` adds names.
    pub fn check_host(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(host) = req.headers().get(actix_web::http::header::HOST) else {
            return Ok(());
        };
        let host = host.to_str().unwrap_or_default();
        let name = host_name(host);
        if host_allowed(name, &self.allowed_hosts) {
            return Ok(());
        }
        Err(ApiError::new(
            421,
            "unknown_host",
            format!("this gateway does not serve {name:?} (see --allow-host)"),
            Some("Host".into()),
        ))
    }
}

/// The name part of a `Host` header: without the port, without IPv6 brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    })
}

fn host_allowed(name: &str, allowed: &[String]) -> bool {
    let name = name.trim_end_matches('.');
    if name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
        return true;
    }
    machine_name().is_some_and(|m| m.eq_ignore_ascii_case(name))
}

/// This machine's name, read once.
fn machine_name() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub(crate) fn client_address(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

/// Token buckets, one per key (or client address): `rate` tokens a second up to `burst`.
/// Buckets idle long enough to be full again are dropped, so the map stays bounded by the
/// number of recent callers.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Most buckets kept before idle ones are swept.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate: rate.max(0.001),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token, or says how many whole seconds until one is there.
    fn take(&self, who: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            let full_after = self.burst / self.rate;
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < full_after);
        }
        let (tokens, at) = buckets.entry(who.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn keys_hash_under_the_server_key_and_parse_back() {
        let auth = Auth::new(AuthOptions {
            secret_key: vec![7; 32],
            ..AuthOptions::default()
        });
        let other = Auth::new(AuthOptions {
            secret_key: vec![8; 32],
            ..AuthOptions::default()
        });
        let key = auth.new_key().expect("key");
        assert!(key.key.starts_with(&format!("gantry_{}_", key.key_id)));
        assert_eq!(key.key.len(), 7 + 16 + 1 + 64);
        assert_eq!(auth.hash(&key.key), key.hash);
        assert_ne!(other.hash(&key.key), key.hash, "the hash is keyed");
        assert_ne!(auth.new_key().expect("key").key, key.key);
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_allowed_names() {
        let allowed = vec!["gantry.example.com".to_owned()];
        for ok in [
            "127.0.0.1:7700",
            "[::1]:7700",
            "10.0.0.5",
            "localhost:7700",
            "gantry.example.com:443",
            "GANTRY.example.com.",
        ] {
            assert!(host_allowed(host_name(ok), &allowed), "{ok}");
        }
        for refused in ["evil.example:7700", "rebind.attacker.test", "example.com"] {
            assert!(!host_allowed(host_name(refused), &allowed), "{refused}");
        }
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_asks_to_wait() {
        let limiter = RateLimiter::new(1.0, 3.0);
        for _ in 0..3 {
            assert_eq!(limiter.take("k"), Ok(()));
        }
        assert_eq!(limiter.take("k"), Err(1));
        assert_eq!(limiter.take("other"), Ok(()), "buckets are per caller");
    }

    #[test]
    fn roles_nest_and_scope_to_the_group_below_admin() {
        let caller = |role| Caller {
            principal: Some(Principal {
                key_id: "k".into(),
                group: "vision".into(),
            }),
            role,
        };
        assert!(caller(Role::Viewer).require(Role::Submitter).is_err());
        assert!(caller(Role::Operator).require(Role::Submitter).is_ok());
        assert!(caller(Role::Operator).require(Role::Admin).is_err());
        assert_eq!(caller(Role::Submitter).scope(), Some("vision"));
        assert_eq!(caller(Role::Admin).scope(), None);
    }
}
