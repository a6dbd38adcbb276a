//! [`Control`] over NATS: how worker nodes and gateways reach the leading control plane.
//! Every request is a typed, versioned message ([`super::wire`]); "no responders" and time-outs
//! mean no control plane leads right now (503, retried by the callers that must not give up:
//! a worker's reports and its join).

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_actors::actor::scheduler::{
    AttemptReport, CommandError, NodeChange, PipelineCommand, PipelineReply, Prune, SubmitReply,
};
use gantry_actors::control::{CancelReply, Control};
use gantry_actors::job::Job;
use gantry_actors::placement::Node;
use gantry_actors::secrets::SecretValues;
use gantry_actors::spec::{Resolved, SubmitRequest};
use gantry_actors::world::{AccessChange, Principal};
use gantry_events::Event;
use gantry_events::event::JobId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::replica::Replica;
use super::wire::{self, Answer, Command, WireEvent};

/// The control plane across NATS. On a worker node it also holds the node's name (its
/// reports go out under it) and its replica of the log.
#[derive(Debug, Clone)]
pub struct Remote {
    client: async_nats::Client,
    node: Option<String>,
    replica: Option<Replica>,
    timeout: Duration,
}

impl Remote {
    /// For a gateway: commands only.
    pub fn gateway(client: async_nats::Client) -> Remote {
        Remote {
            client,
            node: None,
            replica: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// For worker node `node`, reading jobs from `replica`.
    pub fn node(client: async_nats::Client, node: String, replica: Replica) -> Remote {
        Remote {
            client,
            node: Some(node),
            replica: Some(replica),
            timeout: Duration::from_secs(10),
        }
    }

    async fn ask<Q: Serialize, A: DeserializeOwned>(
        &self,
        subject: String,
        question: &Q,
    ) -> Result<A, CommandError> {
        let payload =
            wire::encode(question).map_err(|e| CommandError::Unavailable(e.to_string()))?;
        let reply =
            tokio::time::timeout(self.timeout, self.client.request(subject, payload.into()))
                .await
                .map_err(|_| {
                    CommandError::Unavailable("no answer from the control plane in time".into())
                })?
                .map_err(|e| match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        CommandError::Unavailable("no control plane leads right now".into())
                    }
                    _ => CommandError::Unavailable(format!("NATS: {e}")),
                })?;
        let answer: Answer<A> = wire::decode(&reply.payload)
            .map_err(|e| CommandError::Unavailable(format!("control plane answer: {e}")))?;
        answer.map_err(CommandError::Remote)
    }

    fn node_name(&self) -> Result<&str, CommandError> {
        self.node
            .as_deref()
            .ok_or_else(|| CommandError::Unavailable("not a worker node".into()))
    }

    fn replica(&self) -> Result<&Replica, CommandError> {
        self.replica
            .as_ref()
            .ok_or_else(|| CommandError::Unavailable("no replica of the log here".into()))
    }
}

impl Control for Remote {
    fn submit(
        &self,
        request: SubmitRequest,
        by: Option<Principal>,
        resolved: Resolved,
    ) -> BoxFuture<'_, Result<SubmitReply, CommandError>> {
        async move {
            self.ask(
                wire::COMMANDS.into(),
                &Command::Submit {
                    request: Box::new(request),
                    by,
                    resolved,
                },
            )
            .await
        }
        .boxed()
    }

    fn secrets(
        &self,
        node: &str,
        job: JobId,
        attempt: u32,
    ) -> BoxFuture<'_, Result<SecretValues, CommandError>> {
        let node = node.to_owned();
        async move {
            let mine = self.node_name()?;
            if mine != node {
                return Err(CommandError::Unavailable(format!(
                    "this connection speaks for node {mine}, not {node}"
                )));
            }
            self.ask(wire::secrets_subject(mine), &(job, attempt)).await
        }
        .boxed()
    }

    fn cancel(
        &self,
        job: JobId,
        reason: Option<String>,
        by: Option<String>,
    ) -> BoxFuture<'_, Result<CancelReply, CommandError>> {
        async move {
            self.ask(
                wire::COMMANDS.into(),
                &Command::Cancel {
                    job_id: job,
                    reason,
                    by,
                },
            )
            .await
        }
        .boxed()
    }

    fn change_access(&self, change: AccessChange) -> BoxFuture<'_, Result<u64, CommandError>> {
        async move {
            self.ask(wire::COMMANDS.into(), &Command::ChangeAccess { change })
                .await
        }
        .boxed()
    }

    fn prune(&self, pruned: Prune) -> BoxFuture<'_, Result<u64, CommandError>> {
        async move {
            self.ask(wire::COMMANDS.into(), &Command::Prune { pruned })
                .await
        }
        .boxed()
    }

    fn pipeline(
        &self,
        command: PipelineCommand,
    ) -> BoxFuture<'_, Result<PipelineReply, CommandError>> {
        async move {
            self.ask(wire::COMMANDS.into(), &Command::Pipeline { command })
                .await
        }
        .boxed()
    }

    fn report(&self, report: AttemptReport) -> BoxFuture<'_, Result<(), CommandError>> {
        async move {
            let node = self.node_name()?;
            self.ask(wire::report_subject(node), &report).await
        }
        .boxed()
    }

    fn record(&self, event: Event) -> BoxFuture<'_, Result<(), CommandError>> {
        async move {
            let node = self.node_name()?;
            let event =
                WireEvent::of(&event).map_err(|e| CommandError::Unavailable(e.to_string()))?;
            self.ask(wire::record_subject(node), &event).await
        }
        .boxed()
    }

    fn job(&self, id: JobId, at_seq: u64) -> BoxFuture<'_, Result<Option<Job>, CommandError>> {
        async move { self.replica()?.job(id, at_seq).await }.boxed()
    }

    fn live_on(&self, node: &str) -> BoxFuture<'_, Result<Vec<Job>, CommandError>> {
        let node = node.to_owned();
        async move { self.replica()?.live_on(&node).await }.boxed()
    }

    fn change_node(&self, change: NodeChange) -> BoxFuture<'_, Result<(), CommandError>> {
        async move {
            self.ask(wire::COMMANDS.into(), &Command::ChangeNode { change })
                .await
        }
        .boxed()
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Node>, CommandError>> {
        async move { self.ask(wire::COMMANDS.into(), &Command::Nodes).await }.boxed()
    }
}
