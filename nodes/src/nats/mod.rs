//! gantry's traffic over NATS in fleet mode: connecting (credentials, TLS, the payload check),
//! the wire contract (`wire`, documented in `events/WIRE.md`), the control plane's services
//! (`serve`), the client the nodes and gateways use (`remote`), a node's replica of the log
//! (`replica`), the leader lease (`lease`), heartbeats (`heartbeat`) and shipped attempt
//! output (`output`).
//!
//! The event log itself lives in [`crate::jetstream`].

pub mod heartbeat;
pub mod lease;
pub mod output;
pub mod remote;
pub mod replica;
pub mod serve;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

/// How to reach and authenticate to NATS (flags or environment).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long = "nats", env = "GANTRY_NATS_URL")]
    pub url: Option<String>,
    /// User name (with --nats-password).
    #[arg(long, env = "GANTRY_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password (with --nats-user). Prefer the environment variable to the flag.
    #[arg(long, env = "GANTRY_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Token authentication.
    #[arg(long, env = "GANTRY_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    #[arg(long, env = "GANTRY_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the server's TLS certificate; turns TLS on.
    #[arg(long, env = "GANTRY_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
}

/// Why a NATS connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "the NATS server's max_payload is {server} bytes; gantry needs at least {needed} (the NATS default): raise max_payload in the server's configuration"
    )]
    PayloadTooSmall { server: usize, needed: usize },
    #[error("{0}")]
    Setup(String),
}

/// The smallest `max_payload` gantry works with: NATS's default, 1 MiB. Log entries published
/// to JetStream are capped at the server's `max_payload` less [`HEADER_ROOM`] (a larger one is
/// refused as too large, 413, before it is sent); heartbeats, reports and shipped output are
/// far smaller. Large outputs go to the artifact store, never through NATS.
pub const MIN_MAX_PAYLOAD: usize = 1 << 20;

/// Bytes kept free in a message for its headers.
pub const HEADER_ROOM: usize = 4096;

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`).
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl NatsArgs {
    /// Connects as `name` (shown in the server's connection list) and checks that gantry's
    /// largest message fits the server's `max_payload`. Reconnects on its own, without end.
    /// `inbox_prefix`: where replies to this connection go (a node's own, see
    /// [`wire::node_inbox_prefix`]).
    pub async fn connect(
        &self,
        name: &str,
        inbox_prefix: Option<String>,
    ) -> Result<async_nats::Client, Error> {
        let url = self
            .url
            .clone()
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting")
                    }
                    other => tracing::debug!(event = %other, "NATS"),
                }
            });
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
        } else if self.nats_user.is_some() || self.nats_password.is_some() {
            return Err(Error::Setup(
                "--nats-user and --nats-password go together".into(),
            ));
        }
        if let Some(prefix) = inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        if let Some(token) = &self.nats_token {
            options = options.token(token.clone());
        }
        if let Some(creds) = &self.nats_creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| Error::Setup(format!("reading {}: {e}", creds.display())))?;
        }
        if let Some(ca) = &self.nats_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client =
            tokio::time::timeout(Duration::from_secs(30), options.connect(server_list(&url)))
                .await
                .map_err(|_| Error::Connect {
                    url: url.clone(),
                    reason: "no server answered within 30 s".into(),
                })?
                .map_err(|e| Error::Connect {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        let server = client.server_info().max_payload;
        if server < MIN_MAX_PAYLOAD {
            return Err(Error::PayloadTooSmall {
                server,
                needed: MIN_MAX_PAYLOAD,
            });
        }
        Ok(client)
    }
}

/// Opens a JetStream key-value bucket of gantry's (one value per key, on file, with
/// `replicas` copies), creating it when missing.
pub async fn open_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<async_nats::jetstream::kv::Store, String> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: bucket.into(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}
