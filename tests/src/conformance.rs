//! The `EventLog` conformance suite: the same checks, run against every backend.
//!
//! A backend provides a [`Harness`]; `conformance_tests!` expands to one `#[tokio::test]` per
//! check, each with a fresh harness (a fresh directory, a fresh server).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gantry_events::event::{NodeDrained, NodeLost};
use gantry_events::log::{MAX_BATCH, MAX_ENTRY_BYTES};
use gantry_events::{
    Appended, Entry, Error, EventLog, Fault, Hash, Head, NewEvent, Source, Verifier, verify_log,
};

/// What the suite needs from a backend.
pub trait Harness: Send {
    type Log: EventLog;

    /// A handle to the log. Networked backends open a new connection each time, as separate
    /// processes would; the embedded one hands out the one open store.
    fn open(&mut self) -> impl Future<Output = Arc<Self::Log>> + Send;

    /// Closes the log and brings it back: reopen the store, or kill and restart the server.
    /// Callers drop their handles first.
    fn restart(&mut self) -> impl Future<Output = ()> + Send;

    /// Damages the stored chain the way this backend can be damaged (a flipped byte on disk,
    /// a message published around the chain) and returns the sequence `verify` must name.
    fn damage(&mut self) -> impl Future<Output = u64> + Send;
}

/// An event that says which writer appended it and its index there.
pub fn event(writer: usize, index: usize) -> NewEvent {
    NewEvent::new(
        Source::new(format!("writer-{writer}"), "conformance"),
        NodeLost {
            node_id: format!("{writer}:{index}"),
            reason: "conformance".into(),
        },
    )
}

fn writer_and_index(entry: &Entry) -> (usize, usize) {
    let envelope = entry.open().expect("entry decodes");
    match envelope.event {
        gantry_events::Event::Node(gantry_events::event::NodeEvent::Lost(lost)) => {
            let (w, i) = lost.node_id.split_once(':').expect("writer:index");
            (w.parse().expect("writer"), i.parse().expect("index"))
        }
        other => panic!("unexpected event {other:?}"),
    }
}

async fn read_all<L: EventLog + ?Sized>(log: &L) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let chunk = log.read(next, 5000).await.expect("read");
        let Some(last) = chunk.last() else { break };
        next = last.seq + 1;
        out.extend(chunk);
    }
    out
}

/// Entries readable from sequence 1, reading until a read comes back empty or fails: a damaged
/// log may answer a read past its last entry with the damage rather than with nothing.
async fn count_readable<L: EventLog + ?Sized>(log: &L) -> u64 {
    let mut next = 1;
    while let Ok(chunk) = log.read(next, 5000).await {
        let Some(last) = chunk.last() else { break };
        next = last.seq + 1;
    }
    next - 1
}

async fn assert_sound<L: EventLog>(log: &L, expected: u64) -> Hash {
    let verified = verify_log(log, 1, None)
        .await
        .expect("log answers")
        .unwrap_or_else(|broken| panic!("chain must hold: {broken}"));
    assert_eq!(verified.count, expected, "events in the log");
    let head = log.head().await.expect("head");
    assert_eq!(
        head,
        Head {
            seq: expected,
            hash: verified.head
        }
    );
    verified.head
}

/// Appends land in order, get consecutive sequences, and come back byte for byte.
pub async fn appends_in_order<H: Harness>(h: &mut H) {
    let log = h.open().await;
    assert_eq!(log.head().await.expect("head"), Head::EMPTY);
    let mut sent = Vec::new();
    let mut appended: Vec<Appended> = Vec::new();
    for size in [1usize, 5, 1, 50, 3] {
        let batch: Vec<_> = (0..size).map(|i| event(0, sent.len() + i)).collect();
        sent.extend(batch.iter().map(|e| e.id));
        let got = log.append(batch).await.expect("append");
        assert_eq!(got.len(), size);
        appended.extend(got);
    }
    assert!(
        log.append(Vec::new())
            .await
            .expect("empty batch")
            .is_empty()
    );
    let seqs: Vec<u64> = appended.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    assert_eq!(appended.iter().map(|a| a.id).collect::<Vec<_>>(), sent);

    let entries = read_all(&*log).await;
    for (entry, a) in entries.iter().zip(&appended) {
        assert_eq!(entry.seq, a.seq);
        assert_eq!(entry.stored_hash().expect("hash"), a.hash);
        assert_eq!(entry.open().expect("open").id, a.id);
    }
    assert_eq!(assert_sound(&*log, 60).await, appended[59].hash);

    // Partial reads.
    let middle = log.read(10, 5).await.expect("read");
    assert_eq!(
        middle.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![10, 11, 12, 13, 14]
    );
    assert!(log.read(61, 10).await.expect("past the end").is_empty());
    assert!(matches!(
        log.read(0, 1).await,
        Err(Error::InvalidSequence(0))
    ));
}

/// A batch that cannot be stored as a whole stores nothing.
pub async fn batches_are_all_or_nothing<H: Harness>(h: &mut H) {
    let log = h.open().await;
    log.append(vec![event(0, 0)]).await.expect("append");
    let before = log.head().await.expect("head");

    let mut batch: Vec<_> = (1..4).map(|i| event(0, i)).collect();
    batch.push(NewEvent::new(
        Source::new("writer-0", "conformance"),
        NodeDrained {
            node_id: "too big".into(),
            reason: "x".repeat(MAX_ENTRY_BYTES),
            by: None,
        },
    ));
    batch.push(event(0, 5));
    let err = log.append(batch).await.expect_err("oversized event");
    assert!(matches!(err, Error::EntryTooLarge { .. }), "{err}");
    assert_eq!(log.head().await.expect("head"), before, "nothing appended");

    let too_many: Vec<_> = (0..=MAX_BATCH).map(|i| event(1, i)).collect();
    assert!(matches!(
        log.append(too_many).await,
        Err(Error::BatchTooLarge { .. })
    ));
    assert_eq!(log.head().await.expect("head"), before, "nothing appended");
    assert_sound(&*log, 1).await;
}

/// What was acknowledged is there after the log (or its server) restarts, and the chain
/// goes on from it.
pub async fn survives_restart<H: Harness>(h: &mut H) {
    let log = h.open().await;
    for i in 0..10 {
        log.append((0..10).map(|j| event(0, i * 10 + j)).collect())
            .await
            .expect("append");
    }
    let head = log.head().await.expect("head");
    let before = read_all(&*log).await;
    drop(log);
    h.restart().await;

    let log = h.open().await;
    assert_eq!(log.head().await.expect("head after restart"), head);
    assert_eq!(read_all(&*log).await, before, "same bytes after restart");
    let more = log
        .append(vec![event(0, 100)])
        .await
        .expect("append after restart");
    assert_eq!(more[0].seq, 101);
    assert_sound(&*log, 101).await;
}

/// Three writers appending at once make one chain: no fork, no gap, no duplicate, and each
/// writer's events in its own order.
pub async fn concurrent_writers_make_one_chain<H: Harness>(h: &mut H) {
    const WRITERS: usize = 3;
    const PER_WRITER: usize = 10_000;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let log = h.open().await;
        tasks.push(tokio::spawn(async move {
            let mut appended = Vec::new();
            let mut index = 0;
            let mut size = 1;
            while index < PER_WRITER {
                let n = size.min(PER_WRITER - index);
                let batch = (index..index + n).map(|i| event(writer, i)).collect();
                appended.extend(log.append(batch).await.expect("append"));
                index += n;
                size = size % 97 + 7;
            }
            appended
        }));
    }
    let mut acknowledged = BTreeMap::new();
    for task in tasks {
        for a in task.await.expect("writer") {
            assert!(
                acknowledged.insert(a.seq, a).is_none(),
                "sequence given twice"
            );
        }
    }
    let total = (WRITERS * PER_WRITER) as u64;
    let log = h.open().await;
    assert_sound(&*log, total).await;

    let entries = read_all(&*log).await;
    let mut next_index = [0usize; WRITERS];
    for entry in &entries {
        let (writer, index) = writer_and_index(entry);
        assert_eq!(
            index, next_index[writer],
            "writer {writer} out of order at seq {}",
            entry.seq
        );
        next_index[writer] += 1;
        let a = &acknowledged[&entry.seq];
        assert_eq!(
            entry.stored_hash().expect("hash"),
            a.hash,
            "ack matches the log"
        );
    }
    assert_eq!(next_index, [PER_WRITER; WRITERS]);
}

/// A subscriber starting in the middle while writers run sees every later event exactly once,
/// in order, and they chain.
pub async fn subscribe_from_the_middle_while_writing<H: Harness>(h: &mut H) {
    const WRITERS: usize = 3;
    const PER_WRITER: usize = 2_000;
    const BEFORE: usize = 500;
    const FROM: u64 = 250;
    let log = h.open().await;
    for chunk in 0..BEFORE / 100 {
        log.append((0..100).map(|i| event(9, chunk * 100 + i)).collect())
            .await
            .expect("append");
    }
    let anchor = log.read(FROM - 1, 1).await.expect("read")[0]
        .stored_hash()
        .expect("hash");
    let mut subscription = log.subscribe(FROM).await.expect("subscribe");

    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let log = h.open().await;
        tasks.push(tokio::spawn(async move {
            for start in (0..PER_WRITER).step_by(20) {
                log.append((start..start + 20).map(|i| event(writer, i)).collect())
                    .await
                    .expect("append");
            }
        }));
    }

    let last = (BEFORE + WRITERS * PER_WRITER) as u64;
    let mut verifier = Verifier::anchored(FROM, anchor);
    let mut expected = FROM;
    while expected <= last {
        let entry = tokio::time::timeout(Duration::from_secs(60), subscription.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .expect("entry");
        assert_eq!(entry.seq, expected, "every event once, in order");
        verifier
            .push(&entry)
            .unwrap_or_else(|b| panic!("subscribed entries chain: {b}"));
        expected += 1;
    }
    for task in tasks {
        task.await.expect("writer");
    }
    // Nothing more arrives after the last append.
    let extra = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(extra.is_err(), "no event after the head: {extra:?}");
    // And a new append is followed live.
    let appended = log.append(vec![event(8, 0)]).await.expect("append");
    let live = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("live event")
        .expect("stream open")
        .expect("entry");
    assert_eq!(live.seq, appended[0].seq);
}

/// `verify` names the damaged sequence, and a damaged log refuses appends.
pub async fn verify_finds_damage<H: Harness>(h: &mut H) {
    let log = h.open().await;
    for i in 0..4 {
        log.append((0..25).map(|j| event(0, i * 25 + j)).collect())
            .await
            .expect("append");
    }
    assert_sound(&*log, 100).await;
    drop(log);
    let bad = h.damage().await;

    let log = h.open().await;
    let broken = verify_log(&*log, 1, None)
        .await
        .expect("log answers")
        .expect_err("damage must be found");
    assert_eq!(
        broken.seq, bad,
        "verify names the damaged sequence: {broken}"
    );
    assert!(
        matches!(
            broken.fault,
            Fault::HashMismatch { .. } | Fault::Undecodable { .. } | Fault::BrokenLink { .. }
        ),
        "{broken}"
    );
    // Verifying only what comes before the damage still passes.
    let before = verify_log(&*log, 1, Some(bad - 1))
        .await
        .expect("log answers")
        .expect("chain before the damage holds");
    assert_eq!(before.last_seq, bad - 1);

    // And no append goes through: `Ok` from an append means "in the verified chain", and
    // nothing after the damage can be. Both backends refuse, naming the damaged sequence: the
    // embedded store found the damage when it opened and refuses every append after it;
    // JetStream checks the entry it would seal after, which is the harness's foreign message.
    // (JetStream does not scan a whole stream per connection, so damage deeper in a stream is
    // left to `verify` and the Auditor; this check holds for both because both harnesses
    // damage what an append must build on.)
    let stored = count_readable(&*log).await;
    for attempt in 0..2 {
        match log.append(vec![event(1, attempt)]).await {
            Err(Error::Broken { seq, .. }) => {
                assert_eq!(seq, bad, "the refusal names the damaged sequence")
            }
            other => panic!("an append after damage must be refused: {other:?}"),
        }
    }
    assert_eq!(count_readable(&*log).await, stored, "nothing was appended");
    if let Some(fault) = log.fault() {
        assert!(fault.contains(&format!("sequence {bad}")), "{fault}");
    }
}

/// Expands to one test per conformance check; `$harness` is an async expression giving a fresh
/// `Option<impl Harness>` (`None` when its service is unavailable and may be skipped).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            appends_in_order,
            batches_are_all_or_nothing,
            survives_restart,
            concurrent_writers_make_one_chain,
            subscribe_from_the_middle_while_writing,
            verify_finds_damage,
        );
    };
    (@each $harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let Some(mut harness) = $harness.await else { return };
                $crate::conformance::$check(&mut harness).await;
            }
        )*
    };
}
