//! Artifact store benchmarks. Every figure is printed beside a baseline measured in the same
//! run on the same files:
//!
//! 1. S3 (a real `s3s-fs` on loopback): gantry's `put_file` (hash pass, HEAD, one PUT streamed
//!    from the file with its SHA-256 for the server to check) and
//!    ranged `read` against raw aws-sdk-s3 `put_object` from the file and `get_object` of the
//!    same object, through the same client settings;
//! 2. the local store's `put_file` (hash while copying, fsync, rename) against `cp`, and
//!    against `cp` followed by an fsync.
//!
//! Each upload is of new bytes (the first 8 bytes carry a counter), so gantry's skip of content
//! it already holds does not flatter it. Run: `cargo bench -p gantry-tests --bench artifacts`
//! (needs `s3s-fs`; `scripts/test` installs it). `GANTRY_BENCH_MIB` sets the file size (64).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use gantry_actors::artifacts::ArtifactStore;
use gantry_nodes::artifacts::LocalArtifactStore;
use gantry_nodes::s3::{S3ArtifactStore, S3Options};
use gantry_tests::services::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};

const RUNS: usize = 5;

fn write_file(path: &Path, mib: usize, counter: u64) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ counter;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    file.write_all(&counter.to_be_bytes()).expect("write");
    let mut block = vec![0u8; 1 << 20];
    for m in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let take = if m == 0 { block.len() - 8 } else { block.len() };
        file.write_all(&block[..take]).expect("write");
    }
    file.flush().expect("flush");
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mib_per_s(mib: usize, d: Duration) -> f64 {
    mib as f64 / d.as_secs_f64()
}

fn row(name: &str, mib: usize, d: Duration, baseline: Option<Duration>) {
    let ratio = baseline
        .map(|b| format!("{:>6.2}x baseline", b.as_secs_f64() / d.as_secs_f64()))
        .unwrap_or_default();
    println!(
        "  {name:<46} {:>8.1} ms {:>8.1} MiB/s  {ratio}",
        d.as_secs_f64() * 1000.0,
        mib_per_s(mib, d)
    );
}

async fn drain(
    mut stream: futures::stream::BoxStream<
        'static,
        Result<bytes::Bytes, gantry_actors::artifacts::ArtifactError>,
    >,
) -> usize {
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += chunk.expect("chunk").len();
    }
    n
}

#[tokio::main]
async fn main() {
    let mib: usize = std::env::var("GANTRY_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("artifact.bin");
    println!("artifact stores, {mib} MiB files, median of {RUNS} runs");

    match S3Server::start() {
        None => println!("  S3: skipped (no s3s-fs)"),
        Some(server) => {
            let options = S3Options {
                s3_bucket: Some("bench".into()),
                s3_endpoint: Some(server.endpoint()),
                s3_region: Some("us-east-1".into()),
                s3_path_style: true,
                s3_prefix: String::new(),
            };
            let store =
                S3ArtifactStore::connect_with(&options, Some((S3_ACCESS_KEY, S3_SECRET_KEY)))
                    .await
                    .expect("connect");
            store.ensure_bucket().await.expect("bucket");
            // The same client settings, used directly.
            let raw = {
                use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                    .build_https();
                let conf = aws_sdk_s3::config::Builder::new()
                    .http_client(http)
                    .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                    .region(aws_sdk_s3::config::Region::new("us-east-1"))
                    .endpoint_url(server.endpoint())
                    .force_path_style(true)
                    .credentials_provider(aws_sdk_s3::config::Credentials::new(
                        S3_ACCESS_KEY,
                        S3_SECRET_KEY,
                        None,
                        None,
                        "bench",
                    ))
                    .build();
                aws_sdk_s3::Client::from_conf(conf)
            };
            let (mut put_raw, mut put_gantry, mut get_raw, mut get_gantry) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for run in 0..RUNS as u64 {
                write_file(&file, mib, run * 2);
                let at = Instant::now();
                raw.put_object()
                    .bucket("bench")
                    .key(format!("raw/{run}"))
                    .body(ByteStream::from_path(&file).await.expect("body"))
                    .send()
                    .await
                    .expect("raw put");
                put_raw.push(at.elapsed());
                let at = Instant::now();
                let got = raw
                    .get_object()
                    .bucket("bench")
                    .key(format!("raw/{run}"))
                    .send()
                    .await
                    .expect("raw get");
                let mut body = got.body;
                let mut n = 0;
                while let Some(chunk) = body.next().await {
                    n += chunk.expect("chunk").len();
                }
                get_raw.push(at.elapsed());
                assert_eq!(n, mib << 20);

                write_file(&file, mib, run * 2 + 1);
                let at = Instant::now();
                let stored = store.put_file(&file).await.expect("gantry put");
                put_gantry.push(at.elapsed());
                let at = Instant::now();
                let stream = store
                    .read(&stored.location, 0, stored.size_bytes)
                    .await
                    .expect("gantry read");
                assert_eq!(drain(stream).await, mib << 20);
                get_gantry.push(at.elapsed());
            }
            let (put_raw, get_raw) = (median(put_raw), median(get_raw));
            row("S3 raw put_object (from the file)", mib, put_raw, None);
            row(
                "S3 gantry put_file (hash, HEAD, checked PUT)",
                mib,
                median(put_gantry),
                Some(put_raw),
            );
            row("S3 raw get_object", mib, get_raw, None);
            row("S3 gantry read", mib, median(get_gantry), Some(get_raw));
        }
    }

    let store = LocalArtifactStore::open(&dir.path().join("store")).expect("open");
    let (mut cp, mut cp_sync, mut local) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS as u64 {
        write_file(&file, mib, 100 + run);
        let target = dir.path().join(format!("cp-{run}"));
        let at = Instant::now();
        std::fs::copy(&file, &target).expect("cp");
        cp.push(at.elapsed());
        let target = dir.path().join(format!("cp-sync-{run}"));
        let at = Instant::now();
        std::fs::copy(&file, &target).expect("cp");
        std::fs::File::open(&target)
            .and_then(|f| f.sync_all())
            .expect("fsync");
        cp_sync.push(at.elapsed());
        let at = Instant::now();
        store.put_file(&file).await.expect("local put");
        local.push(at.elapsed());
    }
    let (cp, cp_sync) = (median(cp), median(cp_sync));
    row("local cp", mib, cp, None);
    row("local cp + fsync", mib, cp_sync, None);
    row(
        "local gantry put_file (hash, fsync) vs cp + fsync",
        mib,
        median(local),
        Some(cp_sync),
    );
}
