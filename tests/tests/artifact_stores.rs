//! One conformance suite for every artifact store: the local folder and S3 (a real `s3s-fs`
//! server started here). Both keep a file once by content, give its bytes back whole and by
//! range, and refuse locations they did not make.

use std::path::Path;

use futures::StreamExt;
use gantry_actors::artifacts::{ArtifactError, ArtifactStore};
use gantry_events::Hash;
use gantry_nodes::artifacts::LocalArtifactStore;
use gantry_nodes::s3::{S3ArtifactStore, S3Options};
use gantry_tests::services::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};

async fn read(store: &dyn ArtifactStore, location: &str, start: u64, end: u64) -> Vec<u8> {
    let mut stream = store.read(location, start, end).await.expect("read");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

/// Varied bytes, so a misplaced range cannot pass by chance.
fn body(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn conformance(store: &dyn ArtifactStore, dir: &Path) {
    // Small, empty, and larger than one S3 part (a multipart upload).
    for (len, seed) in [(1000, 1), (0, 2), (40 << 20, 3)] {
        let bytes = body(len, seed);
        let path = dir.join(format!("file-{seed}"));
        std::fs::write(&path, &bytes).expect("write");
        let stored = store.put_file(&path).await.expect("put");
        assert_eq!(stored.sha256, Hash::of(&bytes), "{}", store.kind());
        assert_eq!(stored.size_bytes, len as u64);
        assert_eq!(
            stored.location,
            format!("sha256/{}", stored.sha256.to_hex())
        );
        let again = dir.join(format!("copy-{seed}"));
        std::fs::write(&again, &bytes).expect("write");
        assert_eq!(
            store.put_file(&again).await.expect("put"),
            stored,
            "kept once"
        );
        let whole = read(store, &stored.location, 0, len as u64).await;
        assert!(whole == bytes, "{}: {len} bytes back", store.kind());
        if len > 100 {
            assert_eq!(read(store, &stored.location, 17, 99).await, bytes[17..99]);
            let tail = len as u64 - 5;
            assert_eq!(
                read(store, &stored.location, tail, len as u64).await,
                bytes[len - 5..]
            );
        }
    }
    let missing = format!("sha256/{}", Hash::of(b"never stored").to_hex());
    assert!(matches!(
        store.read(&missing, 0, 1).await.err(),
        Some(ArtifactError::NotFound(_))
    ));
    // Deleted (retention): gone, and deleting again or deleting what never was is fine.
    let path = dir.join("to-delete");
    std::fs::write(&path, b"short-lived").expect("write");
    let stored = store.put_file(&path).await.expect("put");
    store.delete(&stored.location).await.expect("delete");
    assert!(matches!(
        store.read(&stored.location, 0, 1).await.err(),
        Some(ArtifactError::NotFound(_))
    ));
    store.delete(&stored.location).await.expect("delete twice");
    store.delete(&missing).await.expect("delete the missing");
    assert!(
        store.delete("../../etc/passwd").await.is_err(),
        "only locations the store made"
    );
    for bad in ["../../etc/passwd", "sha256/../x", "sha256/00"] {
        assert!(
            matches!(
                store.read(bad, 0, 1).await.err(),
                Some(ArtifactError::NotFound(_))
            ),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn the_local_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalArtifactStore::open(&dir.path().join("artifacts")).expect("open");
    conformance(&store, dir.path()).await;
}

#[tokio::test]
async fn the_s3_store_conforms_against_a_real_s3_server() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let options = S3Options {
        s3_bucket: Some("gantry-artifacts".into()),
        s3_endpoint: Some(server.endpoint()),
        s3_region: Some("us-east-1".into()),
        s3_path_style: true,
        s3_prefix: "runs/".into(),
    };
    // A wrong secret is refused: the server checks signatures.
    let wrong = S3ArtifactStore::connect_with(&options, Some((S3_ACCESS_KEY, "not-the-secret")))
        .await
        .expect("connect");
    assert!(wrong.ensure_bucket().await.is_err());
    let store = S3ArtifactStore::connect_with(&options, Some((S3_ACCESS_KEY, S3_SECRET_KEY)))
        .await
        .expect("connect");
    store.ensure_bucket().await.expect("bucket");
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&store, dir.path()).await;
    // The same with every file past 16 MiB in parts (the path of files over 4 GiB), under
    // another prefix so nothing is found already stored.
    let parts = S3ArtifactStore::connect_with(
        &S3Options {
            s3_prefix: "parts/".into(),
            ..options
        },
        Some((S3_ACCESS_KEY, S3_SECRET_KEY)),
    )
    .await
    .expect("connect")
    .single_put_max(16 << 20);
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&parts, dir.path()).await;
}
