//! The gateway's edge settings, shared by `gantry up` embedded and fleet: whether API keys are
//! required, the server's secret key, the one-time bootstrap token, allowed origins and hosts,
//! rate and stream limits.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_events::EventLog;
use gantry_gateway::{Auth, AuthOptions, StreamSlots};
use gantry_projections::Projections;
use tokio::sync::watch;

/// Whether the gateway asks for API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// On, unless the gateway listens on a loopback address only.
    Auto,
    /// Always on.
    On,
    /// Off: anyone who reaches the gateway may do anything. Refused unless the gateway
    /// listens on loopback only.
    Off,
}

/// The edge's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeOptions {
    /// Whether requests need an API key (`gantry keys create`).
    #[arg(long, value_enum, env = "GANTRY_AUTH", default_value_t = AuthMode::Auto)]
    pub auth: AuthMode,
    /// The server's secret key (32 random bytes, hex), kept outside the data dir: API keys are
    /// recorded as HMACs under it. Created (mode 0600) when missing. Default:
    /// `$XDG_CONFIG_HOME/gantry/secret.key` (or `~/.config/gantry/secret.key`). Every control
    /// plane of a fleet needs the same one.
    #[arg(long, env = "GANTRY_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// An origin (`https://dash.example.com`) besides the gateway's own whose web pages may
    /// open the event websocket; repeatable. Without it, same origin only.
    #[arg(long = "allow-origin")]
    pub allowed_origins: Vec<String>,
    /// A host name clients use to reach the gateway (`Host` header), besides IP addresses,
    /// `localhost` and this machine's name; repeatable. Other names are refused (421), which
    /// stops DNS rebinding.
    #[arg(long = "allow-host")]
    pub allowed_hosts: Vec<String>,
    /// Requests per second each API key may make (429 with `Retry-After` past it). Requests
    /// with keys that do not check out are limited the same way per client address.
    #[arg(long, default_value_t = 50.0)]
    pub rate_limit: f64,
    /// Requests a key may make at once above its rate.
    #[arg(long, default_value_t = 100.0)]
    pub rate_burst: f64,
    /// Event websockets one key may hold open.
    #[arg(long, default_value_t = 8)]
    pub max_streams_per_key: usize,
    /// Event websockets open in all.
    #[arg(long, default_value_t = 256)]
    pub max_streams: usize,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            auth: AuthMode::Auto,
            secret_key_file: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            rate_limit: 50.0,
            rate_burst: 100.0,
            max_streams_per_key: 8,
            max_streams: 256,
        }
    }
}

/// Why the edge could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--auth off is refused when the gateway listens on {0} (not loopback only)")]
    AuthOffInTheOpen(SocketAddr),
    #[error("the secret key {path}: {reason}")]
    SecretKey { path: PathBuf, reason: String },
    #[error("the bootstrap token {path}: {source}")]
    Bootstrap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Views(#[from] gantry_projections::Error),
}

/// What the gateway is given.
#[derive(Debug)]
pub struct Edge {
    pub auth: Arc<Auth>,
    pub streams: Arc<StreamSlots>,
    pub allowed_origins: Vec<String>,
    pub bootstrap_file: Option<PathBuf>,
}

/// Where a key file lives by default: the user's config dir, never the data dir.
pub(crate) fn default_key_file(name: &str) -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc"));
    config.join("gantry").join(name)
}

/// Writes `contents` to a new file only its owner may read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Reads the secret key (hex, at least 32 bytes), creating it when missing.
pub fn secret_key(path: Option<&Path>) -> Result<Vec<u8>, Error> {
    let path = path.map_or_else(|| default_key_file("secret.key"), Path::to_path_buf);
    key_file(&path, "the server's secret key").map_err(|reason| Error::SecretKey { path, reason })
}

/// Reads a key file (hex, at least 32 bytes), creating it with 32 random bytes, readable by
/// its owner only, when missing.
pub(crate) fn key_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
            if key.len() < 32 {
                return Err(format!("{} bytes; at least 32", key.len()));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).map_err(|e| e.to_string())?;
            // Written whole beside it, then linked into place: two processes starting at once
            // never read a half-written key, and the second one uses the first one's.
            let mut tag = [0u8; 8];
            getrandom::fill(&mut tag).map_err(|e| e.to_string())?;
            let tmp = path.with_extension(format!("tmp.{}", hex::encode(tag)));
            write_private(&tmp, &(hex::encode(&key) + "\n")).map_err(|e| e.to_string())?;
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "created {what}");
                    Ok(key)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => key_file(path, what),
                Err(e) => Err(e.to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Sets up the edge of a gateway listening on `listen` with its data in `data`. With
/// authentication on and no admin key yet (once the views have caught up with the log), writes
/// a one-time bootstrap token to `data/bootstrap.token` and says how to use it.
/// `secret_key`: the server's (see [`secret_key`]).
pub async fn build(
    options: &EdgeOptions,
    secret_key: Vec<u8>,
    listen: SocketAddr,
    data: &Path,
    log: &dyn EventLog,
    views: &Projections,
    views_seq: &watch::Receiver<u64>,
) -> Result<Edge, Error> {
    let loopback = listen.ip().is_loopback();
    let required = match options.auth {
        AuthMode::On => true,
        AuthMode::Auto => !loopback,
        AuthMode::Off if loopback => false,
        AuthMode::Off => return Err(Error::AuthOffInTheOpen(listen)),
    };
    let mut bootstrap_token = None;
    let mut bootstrap_file = None;
    if required {
        // Whether an admin key exists is known once the views hold the whole log.
        if let Ok(head) = log.head().await {
            let mut seq = views_seq.clone();
            let _ = tokio::time::timeout(Duration::from_secs(30), seq.wait_for(|s| *s >= head.seq))
                .await;
        }
        let admin = views
            .keys()?
            .iter()
            .any(|k| k.role == "admin" && k.revoked_ns.is_none());
        if !admin {
            let token = Auth::new_bootstrap_token().map_err(|e| Error::SecretKey {
                path: PathBuf::new(),
                reason: e.message,
            })?;
            let path = data.join("bootstrap.token");
            write_private(&path, &(token.clone() + "\n")).map_err(|source| Error::Bootstrap {
                path: path.clone(),
                source,
            })?;
            eprintln!(
                "no admin API key yet: create the first one on this machine with\n  \
                 gantry keys create --role admin --name NAME --bootstrap-token-file {}",
                path.display()
            );
            bootstrap_token = Some(token);
            bootstrap_file = Some(path);
        }
    }
    if required {
        eprintln!("authentication: on (every request needs an API key)");
    } else {
        eprintln!(
            "authentication: off (the gateway listens on loopback only; anyone on this machine \
             may use it; --auth on to require keys)"
        );
    }
    tracing::info!(auth = required, %listen, "gateway edge");
    let auth = Auth::new(AuthOptions {
        required,
        secret_key,
        bootstrap_token,
        allowed_hosts: options.allowed_hosts.clone(),
        rate_per_sec: options.rate_limit,
        burst: options.rate_burst,
    });
    Ok(Edge {
        auth: Arc::new(auth),
        streams: Arc::new(StreamSlots::new(
            options.max_streams_per_key,
            options.max_streams,
        )),
        allowed_origins: options.allowed_origins.clone(),
        bootstrap_file,
    })
}
