//! A small client of gantry's REST gateway, for the CLI (`submit`, `jobs`, `logs`, …).

use std::time::Duration;

use serde_json::Value;

/// A gateway that answered with an error, or could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway refused: its error code, message and field.
    #[error("{status} {code}: {message}{}", field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    /// No answer (is `gantry up` running?).
    #[error("gateway at {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Talks to one gateway.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// The API key sent as `Authorization: Bearer`.
    key: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Client {
    pub fn new(base: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            agent,
            key: None,
        }
    }

    /// The gateway's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `key` with every request.
    pub fn with_key(mut self, key: Option<String>) -> Client {
        self.key = key;
        self
    }

    fn authorization(&self) -> Option<String> {
        self.key.as_ref().map(|k| format!("Bearer {k}"))
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    fn finish(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut response = response.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        if status >= 400 {
            let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let e = &error["error"];
            return Err(ClientError::Api {
                status,
                code: e["code"].as_str().unwrap_or("error").to_owned(),
                message: e["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).to_string()),
                field: e["field"].as_str().map(str::to_owned),
            });
        }
        Ok(body)
    }

    /// GET, returning the raw body.
    pub fn get_raw(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", value);
        }
        self.finish(request.call())
    }

    /// GET `path`, streaming the body into `out` in chunks (bounded memory); `progress` is
    /// told the total size, if the gateway says it, and each chunk's length. A large body may
    /// take as long as it takes: only connecting and the response's head are timed.
    pub fn download(
        &self,
        path: &str,
        out: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(Option<u64>, u64),
    ) -> Result<u64, ClientError> {
        let mut request = self
            .agent
            .get(format!("{}{path}", self.base))
            .config()
            .timeout_global(None)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .build();
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", value);
        }
        let mut response = request.call().map_err(|e| self.unreachable(e))?;
        if response.status().as_u16() >= 400 {
            return self.finish(Ok(response)).map(|_| 0);
        }
        let total = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        progress(total, 0);
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 256 << 10];
        let mut written = 0u64;
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| self.unreachable(e))?;
            if n == 0 {
                return Ok(written);
            }
            out.write_all(&buf[..n]).map_err(|e| self.unreachable(e))?;
            written += n as u64;
            progress(total, n as u64);
        }
    }

    /// Opens a websocket at `path` (plain `http://` gateways; the key goes as
    /// `Authorization: Bearer`).
    pub fn websocket(
        &self,
        path: &str,
    ) -> Result<tungstenite::WebSocket<std::net::TcpStream>, ClientError> {
        let rest = self
            .base
            .strip_prefix("http://")
            .ok_or_else(|| self.unreachable("live streams need an http:// gateway address"))?;
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let stream = std::net::TcpStream::connect(&host).map_err(|e| self.unreachable(e))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| self.unreachable(e))?;
        let mut request = tungstenite::http::Request::builder()
            .uri(format!("ws://{host}{path}"))
            .header("Host", &host)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header(
                "Sec-WebSocket-Key",
                tungstenite::handshake::client::generate_key(),
            );
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", value);
        }
        let request = request.body(()).map_err(|e| self.unreachable(e))?;
        match tungstenite::client(request, stream) {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let body: Value = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(ClientError::Api {
                    status,
                    code: body["error"]["code"]
                        .as_str()
                        .unwrap_or("refused")
                        .to_owned(),
                    message: body["error"]["message"].as_str().unwrap_or("").to_owned(),
                    field: body["error"]["field"].as_str().map(str::to_owned),
                })
            }
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// GET, returning JSON.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let body = self.get_raw(path)?;
        serde_json::from_slice(&body).map_err(|e| self.unreachable(e))
    }

    /// PUT a JSON body, returning JSON.
    pub fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let mut request = self.agent.put(format!("{}{path}", self.base));
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", value);
        }
        let body = self.finish(request.send_json(body))?;
        serde_json::from_slice(&body).map_err(|e| self.unreachable(e))
    }

    /// DELETE, returning JSON.
    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        let mut request = self.agent.delete(format!("{}{path}", self.base));
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", value);
        }
        let body = self.finish(request.call())?;
        serde_json::from_slice(&body).map_err(|e| self.unreachable(e))
    }

    /// POST a JSON body, returning JSON.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", value);
        }
        let response = request.send_json(body);
        let body = self.finish(response)?;
        serde_json::from_slice(&body).map_err(|e| self.unreachable(e))
    }
}

/// Runs a blocking client call off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Unreachable {
            url: String::new(),
            reason: e.to_string(),
        })?
}
