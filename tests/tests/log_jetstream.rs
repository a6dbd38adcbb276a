//! The conformance suite against the JetStream log on a real `nats-server -js`.

use std::sync::Arc;

use gantry_nodes::jetstream::{JetStreamLog, JetStreamOptions};
use gantry_tests::conformance::Harness;
use gantry_tests::conformance_tests;
use gantry_tests::services::NatsServer;

struct JetStream {
    server: NatsServer,
}

async fn harness() -> Option<JetStream> {
    Some(JetStream {
        server: NatsServer::start()?,
    })
}

impl Harness for JetStream {
    type Log = JetStreamLog;

    async fn open(&mut self) -> Arc<JetStreamLog> {
        let options = JetStreamOptions {
            url: self.server.url(),
            ..JetStreamOptions::default()
        };
        match JetStreamLog::connect(options).await {
            Ok(log) => Arc::new(log),
            Err(e) => panic!("connect: {e}\n{}", self.server.log_tail()),
        }
    }

    async fn restart(&mut self) {
        self.server.restart();
    }

    async fn damage(&mut self) -> u64 {
        // Something that is not gantry publishes straight into the stream.
        let client = async_nats::connect(self.server.url())
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        let ack = js
            .publish("gantry.events.job.submitted", "not a gantry record".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        ack.sequence
    }
}

conformance_tests!(harness());
