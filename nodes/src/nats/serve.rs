//! The leading control plane's side of the wire: commands from gateways, reports and records
//! from nodes, each decoded, checked and handed to the Scheduler, and answered.
//!
//! Who sent a node message is read from its subject (`gantry.node.<node>.…`), which NATS
//! permissions tie to the node's account; a payload naming another node is refused (403).

use actix::Addr;
use futures::StreamExt;
use gantry_actors::actor::scheduler::{AttemptReport, CommandError, Scheduler};
use gantry_actors::control::{Control, Fault, Local};
use gantry_events::Event;
use gantry_events::event::NodeEvent;
use serde::Serialize;

use super::wire::{self, Answer, Command, WireEvent};

/// Serves until the returned handle is dropped or aborted.
pub async fn serve(
    client: async_nats::Client,
    scheduler: Addr<Scheduler>,
) -> Result<Vec<actix_rt::task::JoinHandle<()>>, super::Error> {
    let local = Local(scheduler);
    let subscribe = |subject: &'static str| {
        let client = client.clone();
        async move {
            client
                .subscribe(subject)
                .await
                .map_err(|e| super::Error::Setup(format!("subscribing to {subject}: {e}")))
        }
    };
    Ok(vec![
        serve_each(subscribe(wire::COMMANDS).await?, &client, &local, command),
        serve_each(
            subscribe(wire::NODE_REPORTS).await?,
            &client,
            &local,
            report,
        ),
        serve_each(
            subscribe(wire::NODE_RECORDS).await?,
            &client,
            &local,
            record,
        ),
        serve_each(
            subscribe(wire::NODE_SECRETS).await?,
            &client,
            &local,
            secrets,
        ),
    ])
}

/// Handles each message of `messages` in a task of its own, until the returned task stops.
fn serve_each<F, Fut>(
    mut messages: async_nats::Subscriber,
    client: &async_nats::Client,
    local: &Local,
    handle: F,
) -> actix_rt::task::JoinHandle<()>
where
    F: Fn(async_nats::Client, Local, async_nats::Message) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (client, local) = (client.clone(), local.clone());
    actix_rt::spawn(async move {
        while let Some(message) = messages.next().await {
            actix_rt::spawn(handle(client.clone(), local.clone(), message));
        }
    })
}

fn bad_message(error: wire::WireError) -> Fault {
    Fault::new(400, "bad_message", error.to_string(), None)
}

fn forbidden(message: String) -> Fault {
    Fault::new(403, "forbidden", message, None)
}

fn answered<T>(result: Result<T, CommandError>) -> Answer<T> {
    result.map_err(|e| e.fault())
}

async fn reply<T: Serialize>(
    client: &async_nats::Client,
    to: Option<async_nats::Subject>,
    answer: Answer<T>,
) {
    let Some(to) = to else { return };
    match wire::encode(&answer) {
        Ok(bytes) => {
            if let Err(error) = client.publish(to, bytes.into()).await {
                tracing::warn!(%error, "answer not sent");
            }
        }
        Err(error) => tracing::error!(%error, "answer not encodable"),
    }
}

/// Decodes a command, has it carried out, and answers with the type the asking side expects.
async fn command(client: async_nats::Client, local: Local, message: async_nats::Message) {
    let to = message.reply;
    // Only what was published to the command subject itself (a consumer can deliver log
    // entries to any subject it names).
    if message.subject.as_str() != wire::COMMANDS {
        return;
    }
    let command: Command = match wire::decode(&message.payload) {
        Ok(command) => command,
        Err(error) => return reply::<()>(&client, to, Err(bad_message(error))).await,
    };
    match command {
        Command::Submit {
            request,
            by,
            resolved,
        } => {
            reply(
                &client,
                to,
                answered(local.submit(*request, by, resolved).await),
            )
            .await
        }
        Command::Cancel { job_id, reason, by } => {
            reply(
                &client,
                to,
                answered(local.cancel(job_id, reason, by).await),
            )
            .await
        }
        Command::Prune { pruned } => reply(&client, to, answered(local.prune(pruned).await)).await,
        Command::Pipeline { command } => {
            reply(&client, to, answered(local.pipeline(command).await)).await
        }
        Command::ChangeAccess { change } => {
            reply(&client, to, answered(local.change_access(change).await)).await
        }
        Command::ChangeNode { change } => {
            reply(&client, to, answered(local.change_node(change).await)).await
        }
        Command::Nodes => reply(&client, to, answered(local.nodes().await)).await,
    }
}

async fn report(client: async_nats::Client, local: Local, message: async_nats::Message) {
    let answer = report_answer(&local, &message.subject, &message.payload).await;
    reply(&client, message.reply, answer).await;
}

async fn report_answer(local: &Local, subject: &str, payload: &[u8]) -> Answer<()> {
    let report: AttemptReport = wire::decode(payload).map_err(bad_message)?;
    let from = wire::node_of(subject).unwrap_or_default();
    if report.node != from {
        return Err(forbidden(format!(
            "node {from} cannot report for node {}",
            report.node
        )));
    }
    answered(local.report(report).await)
}

/// A node's request for its attempt's secrets: answered only for an attempt the log has on
/// the node the subject names.
async fn secrets(client: async_nats::Client, local: Local, message: async_nats::Message) {
    let answer = match (
        wire::node_of(&message.subject),
        wire::decode::<(gantry_events::event::JobId, u32)>(&message.payload),
    ) {
        (Some(node), Ok((job, attempt))) => answered(local.secrets(node, job, attempt).await),
        (None, _) => Err(forbidden("not a node subject".into())),
        (_, Err(error)) => Err(bad_message(error)),
    };
    reply(&client, message.reply, answer).await;
}

async fn record(client: async_nats::Client, local: Local, message: async_nats::Message) {
    let answer = record_answer(&local, &message.subject, &message.payload).await;
    reply(&client, message.reply, answer).await;
}

async fn record_answer(local: &Local, subject: &str, payload: &[u8]) -> Answer<()> {
    let event: WireEvent = wire::decode(payload).map_err(bad_message)?;
    let event = event.event().map_err(bad_message)?;
    let from = wire::node_of(subject).unwrap_or_default();
    // A node records only facts about itself: joining, its GPUs, leaving.
    let about = match &event {
        Event::Node(NodeEvent::Joined(j)) => Some(&j.node_id),
        Event::Node(NodeEvent::GpusObserved(g)) => Some(&g.node_id),
        // A node speaks for itself, never for an API key.
        Event::Node(NodeEvent::Drained(d)) if d.by.is_none() => Some(&d.node_id),
        _ => None,
    };
    match about {
        Some(node) if node == from => answered(local.record(event).await),
        Some(node) => Err(forbidden(format!(
            "node {from} cannot record facts about node {node}"
        ))),
        None => Err(forbidden(format!(
            "a node cannot record {} events",
            event.type_name()
        ))),
    }
}
