//! The wire contract between control planes, gateways and nodes: subjects, and the typed
//! messages on them (MessagePack with field names, via rmp-serde), each wrapped in a
//! versioned [`Envelope`]. `events/WIRE.md` is its public description; change both together.

use gantry_actors::actor::scheduler::{NodeChange, PipelineCommand, Prune};
use gantry_actors::control::Fault;
use gantry_actors::spec::{Resolved, SubmitRequest};
use gantry_actors::telemetry::GpuSample;
use gantry_actors::world::{AccessChange, Principal};
use gantry_events::Event;
use gantry_events::event::JobId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version of every message below. A receiver refuses a message of a version it does
/// not know, with a clear error, rather than misreading it.
pub const VERSION: u16 = 1;

/// Commands for the leading control plane (request/reply).
pub const COMMANDS: &str = "gantry.cp.command";

/// A node's report about an attempt (request/reply, to the leader).
pub fn report_subject(node: &str) -> String {
    format!("gantry.node.{node}.report")
}

/// A node asks for the secret values of an attempt placed on it (request/reply). The answer
/// goes to the node's own inbox (`_INBOX_<node>.`), which only its account may read.
pub fn secrets_subject(node: &str) -> String {
    format!("gantry.node.{node}.secrets")
}

/// The inbox prefix of a node's connection: replies to it (secrets among them) go where only
/// that node's account may subscribe.
pub fn node_inbox_prefix(node: &str) -> String {
    format!("_INBOX_{node}")
}

/// A fact a node records about itself: joined, GPUs changed, draining (request/reply).
pub fn record_subject(node: &str) -> String {
    format!("gantry.node.{node}.record")
}

/// A node's heartbeat (plain publish, about once a second; not events).
pub fn heartbeat_subject(node: &str) -> String {
    format!("gantry.node.{node}.heartbeat")
}

/// What the control plane subscribes to for every node's reports, records and heartbeats.
pub const NODE_REPORTS: &str = "gantry.node.*.report";
pub const NODE_RECORDS: &str = "gantry.node.*.record";
pub const NODE_SECRETS: &str = "gantry.node.*.secrets";
pub const NODE_HEARTBEATS: &str = "gantry.node.*.heartbeat";

/// The node a `gantry.node.<node>.…` subject names. NATS permissions let a node publish only
/// under its own name, so the subject, not the payload, says who sent it.
pub fn node_of(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("gantry"), Some("node"), Some(node)) if !node.is_empty() => Some(node),
        _ => None,
    }
}

/// Whether `name` can be a node name: it becomes a subject token, so no dots, wildcards or
/// spaces.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Every message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u16,
    pub body: T,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message version {0} is not {VERSION}: upgrade the older gantry")]
    Version(u16),
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("unencodable message: {0}")]
    Encode(String),
}

pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec_named(&Envelope { v: VERSION, body })
        .map_err(|e| WireError::Encode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    #[derive(Deserialize)]
    struct Version {
        v: u16,
    }
    let version: Version =
        rmp_serde::from_slice(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    if version.v != VERSION {
        return Err(WireError::Version(version.v));
    }
    let envelope: Envelope<T> =
        rmp_serde::from_slice(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    Ok(envelope.body)
}

/// A command for the leader, from a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    Submit {
        request: Box<SubmitRequest>,
        /// Who submits (the gateway authenticated them); absent without authentication.
        #[serde(default)]
        by: Option<Principal>,
        /// What the gateway resolved: secret variables as names in the store (never values),
        /// and inputs.
        #[serde(default)]
        resolved: Resolved,
    },
    Cancel {
        job_id: JobId,
        reason: Option<String>,
        #[serde(default)]
        by: Option<String>,
    },
    ChangeNode {
        change: NodeChange,
    },
    ChangeAccess {
        change: AccessChange,
    },
    Pipeline {
        command: PipelineCommand,
    },
    Prune {
        pruned: Prune,
    },
    Nodes,
}

/// The answer to any request: the result, or a refusal or failure as clients see it.
pub type Answer<T> = Result<T, Fault>;

/// An event as it crosses the wire: its stable type name, version and MessagePack payload
/// (the same payload bytes the log stores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    pub type_name: String,
    pub version: u32,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl WireEvent {
    pub fn of(event: &Event) -> Result<WireEvent, WireError> {
        let mut payload = Vec::new();
        event
            .encode_payload_into(&mut payload)
            .map_err(|e| WireError::Encode(e.to_string()))?;
        Ok(WireEvent {
            type_name: event.type_name().to_owned(),
            version: event.version(),
            payload,
        })
    }

    pub fn event(&self) -> Result<Event, WireError> {
        gantry_events::event::decode(&self.type_name, self.version, &self.payload)
            .map_err(|e| WireError::Decode(e.to_string()))
    }
}

/// A node's heartbeat: alive, what runs there, and its GPUs' latest samples (telemetry, never
/// logged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Unix ms at the node when sent.
    pub sent_ms: u64,
    /// Attempts running on the node.
    pub running: u32,
    #[serde(default)]
    pub gpus: Vec<GpuSample>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_carry_their_version() {
        let command = Command::Cancel {
            job_id: uuid::Uuid::now_v7(),
            reason: Some("done".into()),
            by: Some("k1".into()),
        };
        let bytes = encode(&command).expect("encode");
        assert_eq!(decode::<Command>(&bytes).expect("decode"), command);

        let newer = rmp_serde::to_vec_named(&Envelope {
            v: VERSION + 1,
            body: &command,
        })
        .expect("encode");
        assert!(matches!(
            decode::<Command>(&newer),
            Err(WireError::Version(v)) if v == VERSION + 1
        ));
        assert!(matches!(
            decode::<Command>(b"\xc1junk"),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn subjects_name_their_node() {
        assert_eq!(node_of(&report_subject("gpu-1")), Some("gpu-1"));
        assert_eq!(node_of("gantry.cp.command"), None);
        assert!(valid_node_name("gpu_1-a"));
        assert!(!valid_node_name("a.b"));
        assert!(!valid_node_name("a*"));
        assert!(!valid_node_name(""));
    }

    #[test]
    fn events_cross_the_wire_unchanged() {
        let event: Event = gantry_events::event::NodeDrained {
            node_id: "n".into(),
            reason: "r".into(),
            by: None,
        }
        .into();
        let wire = WireEvent::of(&event).expect("encode");
        let bytes = encode(&wire).expect("encode");
        let back: WireEvent = decode(&bytes).expect("decode");
        assert_eq!(back.event().expect("event"), event);
    }
}
