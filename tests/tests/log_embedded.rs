//! The conformance suite against the embedded, file-backed log.

use std::sync::Arc;

use gantry_events::EmbeddedLog;
use gantry_events::file::{FRAME_OVERHEAD, FrameReader, HEADER_LEN};
use gantry_tests::conformance::Harness;
use gantry_tests::conformance_tests;

struct Embedded {
    dir: tempfile::TempDir,
    log: Option<Arc<EmbeddedLog>>,
}

async fn harness() -> Option<Embedded> {
    Some(Embedded {
        dir: tempfile::tempdir().expect("tempdir"),
        log: None,
    })
}

impl Harness for Embedded {
    type Log = EmbeddedLog;

    async fn open(&mut self) -> Arc<EmbeddedLog> {
        if self.log.is_none() {
            let log = EmbeddedLog::open(self.dir.path()).await.expect("open");
            self.log = Some(Arc::new(log));
        }
        self.log.clone().expect("open log")
    }

    async fn restart(&mut self) {
        if let Some(log) = self.log.take() {
            let log = Arc::into_inner(log).expect("callers dropped their handles");
            log.close().await.expect("close");
        }
    }

    async fn damage(&mut self) -> u64 {
        // Closed first, as a store is when a disk goes bad under it between runs: the store
        // checks its frames when it opens, so the next `open` finds the damage. (A running
        // store trusts what it wrote; `verify` and the Auditor catch damage under it.)
        self.restart().await;
        // Flip one byte inside the record of entry 50, as a bad disk would: its frame's
        // checksum fails in the middle of the file, so the store opens damaged.
        const TARGET: u64 = 50;
        let path = self.dir.path().join(gantry_events::embedded::LOG_FILE);
        let mut bytes = std::fs::read(&path).expect("read log file");
        let mut frames = FrameReader::new(&bytes[HEADER_LEN..], HEADER_LEN as u64);
        let mut seq = 0;
        let frame = loop {
            let frame = frames.next_frame().expect("io").expect("frame");
            seq += 1;
            if seq == TARGET {
                break frame;
            }
        };
        let at = frame.offset as usize + FRAME_OVERHEAD + frame.entry.len() / 2;
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).expect("write log file");
        TARGET
    }
}

conformance_tests!(harness());
