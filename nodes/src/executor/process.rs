//! The local process executor: for the embedded default when no container engine answers.
//!
//! **Not a sandbox.** Each attempt gets its own working directory, a cleared environment (only
//! the job's variables, `PATH` and `HOME`), its own process group (so a cancel or timeout kills
//! every process it started), and an address-space limit from the job's memory through
//! `prlimit` when that tool is present. It runs as gantry's user, with gantry's network and
//! filesystem view. `gantry nodes` and the logs say so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use gantry_actors::executor::{Executor, Outcome, RunSpec};
use gantry_events::event::JobId;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A started process and the tasks copying its output.
type Live = (Child, Vec<tokio::task::JoinHandle<()>>);

/// Runs attempts as local processes under `root/<job>/<attempt>/`.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    root: PathBuf,
    children: Arc<Mutex<HashMap<String, Live>>>,
    prlimit: Option<PathBuf>,
}

impl ProcessExecutor {
    pub fn new(root: impl Into<PathBuf>) -> ProcessExecutor {
        let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        ProcessExecutor {
            root: root.into(),
            children: Arc::default(),
            prlimit,
        }
    }

    fn dir(&self, job: JobId, attempt: u32) -> PathBuf {
        self.root.join(job.to_string()).join(attempt.to_string())
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn kill_group(pid: i32) {
    if pid > 0 {
        // ESRCH (already gone) is fine.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Copies a pipe into the attempt log, one timestamped line at a time.
async fn pump(
    reader: impl tokio::io::AsyncRead + Unpin,
    stream: &'static str,
    out: Arc<tokio::sync::Mutex<tokio::fs::File>>,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let stamp = humantime::format_rfc3339_nanos(std::time::SystemTime::now());
        let mut out = out.lock().await;
        let _ = out
            .write_all(format!("{stamp} {stream} {line}\n").as_bytes())
            .await;
    }
}

impl Executor for ProcessExecutor {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn sandboxed(&self) -> bool {
        false
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        async { Ok(()) }.boxed()
    }

    fn start<'a>(&'a self, run: &'a RunSpec) -> BoxFuture<'a, Result<String, Outcome>> {
        async move {
            let failed = |message: String| Outcome::Failed { message };
            let mut argv: Vec<String> = run
                .spec
                .command
                .iter()
                .chain(&run.spec.args)
                .cloned()
                .collect();
            if argv.is_empty() {
                return Err(failed("the process executor needs a command".into()));
            }
            let dir = self.dir(run.job_id, run.attempt);
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| failed(format!("creating {}: {e}", dir.display())))?;
            if let Some(parent) = run.log_path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| failed(format!("creating {}: {e}", parent.display())))?;
            }
            if let Some(prlimit) = &self.prlimit {
                let mut wrapped = vec![
                    prlimit.display().to_string(),
                    format!("--as={}", run.spec.resources.memory_bytes),
                    "--".to_owned(),
                ];
                wrapped.append(&mut argv);
                argv = wrapped;
            }
            let mut command = Command::new(&argv[0]);
            command
                .args(&argv[1..])
                .current_dir(&dir)
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("HOME", &dir)
                .envs(&run.spec.env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(false);
            let mut child = command
                .spawn()
                .map_err(|e| failed(format!("starting {:?}: {e}", argv[0])))?;
            let pid = child.id().unwrap_or(0);
            let handle = pid.to_string();
            // Remembered on disk so a restarted gantry can find and stop a leftover.
            tokio::fs::write(dir.join("pid"), &handle)
                .await
                .map_err(|e| failed(format!("recording the pid: {e}")))?;
            let log = tokio::fs::File::create(&run.log_path)
                .await
                .map_err(|e| failed(format!("creating {}: {e}", run.log_path.display())))?;
            let log = Arc::new(tokio::sync::Mutex::new(log));
            let mut pumps = Vec::new();
            if let Some(stdout) = child.stdout.take() {
                pumps.push(tokio::spawn(pump(stdout, "stdout", log.clone())));
            }
            if let Some(stderr) = child.stderr.take() {
                pumps.push(tokio::spawn(pump(stderr, "stderr", log)));
            }
            self.children().insert(handle.clone(), (child, pumps));
            Ok(handle)
        }
        .boxed()
    }

    fn wait<'a>(&'a self, handle: &'a str, _run: &'a RunSpec) -> BoxFuture<'a, Outcome> {
        async move {
            let Some((mut child, pumps)) = self.children().remove(handle) else {
                return Outcome::Failed {
                    message: format!("no process {handle} to wait for"),
                };
            };
            match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    let code = status
                        .code()
                        .map(i64::from)
                        .unwrap_or_else(|| 128 + i64::from(status.signal().unwrap_or(0)));
                    // Whatever the job left running in its group goes with it.
                    if let Ok(pid) = handle.parse() {
                        kill_group(pid);
                    }
                    // All output is in the log before the end is reported.
                    for pump in pumps {
                        let _ = pump.await;
                    }
                    Outcome::Exited {
                        code,
                        oom_killed: false,
                    }
                }
                Err(e) => Outcome::Failed {
                    message: format!("waiting for process {handle}: {e}"),
                },
            }
        }
        .boxed()
    }

    fn kill<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, ()> {
        async move {
            if let Ok(pid) = handle.parse() {
                kill_group(pid);
            }
        }
        .boxed()
    }

    fn find<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, Option<String>> {
        async move {
            // A process from before a restart is not our child: it cannot be waited for, so it
            // is stopped and the attempt counts as lost with the node.
            let dir = self.dir(job_id, attempt);
            if let Some(pid) = read_pid(&dir.join("pid")).await {
                // Only if that pid is still the attempt's process (it runs in the attempt's
                // directory): after a long downtime the number may belong to something else.
                let cwd = tokio::fs::read_link(format!("/proc/{pid}/cwd")).await.ok();
                let ours = tokio::fs::canonicalize(&dir).await.ok();
                if cwd.is_some() && cwd == ours {
                    kill_group(pid);
                }
            }
            None
        }
        .boxed()
    }
}

async fn read_pid(path: &Path) -> Option<i32> {
    tokio::fs::read_to_string(path)
        .await
        .ok()?
        .trim()
        .parse()
        .ok()
}
