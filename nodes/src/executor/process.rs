//! The local process executor: for the embedded default when no container engine answers.
//!
//! **Not a sandbox.** A job sees the host's filesystem, network, processes and devices as an
//! ordinary user would. What it does enforce:
//!
//! - Each attempt runs in its own process group (a cancel or timeout kills every process the
//!   job started in it) with a cleared environment (the job's variables, `PATH`, and `HOME`
//!   set to the attempt's directory) and stdin from `/dev/null`.
//! - Memory, CPU and process limits through a cgroup of the attempt's own (see
//!   [`super::cgroup`] for the files and both cgroup versions): memory is the job's
//!   `memory_bytes` with no swap beyond it, CPU time its `cpu_millis` (a CFS quota per
//!   100 ms period), processes and threads of the attempt together at most
//!   [`ProcessOptions::pids_limit`]. The process enters the cgroup before the job's program
//!   runs, so everything the job starts is in it (see "Entering the cgroup" below). A job the
//!   kernel's OOM killer struck ends as `Outcome::Exited { oom_killed: true, .. }`. When the
//!   attempt ends, whatever is left in the cgroup is killed and the cgroup removed. When no
//!   cgroup can be made (not root, no cgroup filesystem, a read-only one, no delegation), the
//!   executor warns once when built, [`Executor::limits_enforced`] is false (every attempt's
//!   start records that), and jobs run without these limits; when the host offers only some
//!   of the three controllers, those are applied and `limits_enforced` is false too.
//!   There is no address-space limit (`RLIMIT_AS`): CUDA reserves far more virtual memory
//!   than it uses, so one would break GPU jobs.
//! - Rlimits through `prlimit` (util-linux), when it is installed: open files (`--nofile`,
//!   [`ProcessOptions::nofile`], at most gantry's own hard limit) and, when the attempt has a
//!   uid of its own, processes of that uid (`--nproc`, [`ProcessOptions::nproc`]; the kernel
//!   counts them per uid, so with a shared uid the limit would count gantry's own threads too
//!   and is not applied).
//! - GPUs: `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` name the UUIDs of the GPUs
//!   assigned to the attempt (with none: empty and `void`), set after the job's own variables
//!   so a job cannot choose other GPUs. Only CUDA's and the toolkit's cooperation makes this
//!   hold: a local process can still open every `/dev/nvidia*` device its user may.
//! - A job starts with no descriptor of gantry's but 0, 1 and 2: everything gantry opens is
//!   close-on-exec (Rust's standard library and tokio open files, pipes and sockets that way),
//!   and descriptors gantry itself inherited without it (from the shell or supervisor that
//!   started it) are closed when the executor is built.
//! - Setup before the spawn: the attempt's directory, its log file, its pid file and its
//!   cgroup are all made before the process starts; if one cannot be, the attempt fails with
//!   [`Outcome::Failed`] naming it and nothing is started (an executor that has cgroups never
//!   runs an attempt without one). Should the process not enter its cgroup or its pid not be
//!   recorded after the spawn, the job never runs: the gate is killed and reaped, and its
//!   cgroup removed, before `start` fails.
//!
//! **Running as root** with [`ProcessExecutor::open`] (what `gantry up` uses) adds isolation
//! between jobs and from gantry:
//!
//! - Every attempt runs as a uid of its own from [`ProcessOptions::job_uids`] (gid = the same
//!   number, no supplementary groups: the standard library calls `setgroups(0)` before
//!   `setuid`). No two live attempts share a uid; the range must be reserved for gantry.
//! - The attempt's directory `<data>/work/<job>/<attempt>` is mode 0700 and owned by that uid;
//!   `<data>`, `<data>/work` and `<data>/work/<job>` are mode 0711 (searchable, not listable);
//!   every other entry of `<data>` (the log, `views/`, `logs/`, the node id) is stripped of
//!   group and other permissions when the executor opens and again before every start. So a
//!   job reaches its own directory and nothing else of gantry's, nor another attempt's.
//! - When the attempt ends (or is discarded or found after a restart), every process of its
//!   uid is killed, including ones that left the process group, and its directory is handed
//!   back to gantry (owner root, mode 0700), so a later job given the same uid cannot read it.
//!   Files the job left elsewhere (`/tmp`) stay owned by its uid.
//! - Every directory above `<data>` must be searchable by other users (`o+x`), or no job
//!   could reach its directory: [`ProcessExecutor::open`] refuses otherwise. It also refuses a
//!   `<data>` that is `/`, world-writable or sticky (a shared directory, not gantry's own).
//!
//! Without root (or with [`ProcessExecutor::new`]) jobs run as gantry's own user and can read
//! and write everything gantry can, its data dir included. `gantry nodes` and the logs say
//! the executor is not sandboxed.
//!
//! **Working directory.** The job's `working_dir`, when relative, is a directory under the
//! attempt's directory (made, and owned by the job's uid); it may not leave it (`..`). An
//! absolute one is used as it is: it must exist and be accessible to the job's user; it is
//! not created.
//!
//! **Entering the cgroup.** gantry cannot run code of its own in the child between `fork` and
//! `exec` (that needs `unsafe` `pre_exec`, which the workspace forbids), and moving the job
//! after it started would let it fork first. So the child first execs a gate,
//! `/bin/sh -p -c 'read -r go || exit 125; exec "$@" </dev/null' gantry-gate [prlimit …] JOB…`,
//! with a pipe from gantry as its stdin. The shell blocks in `read` while gantry writes its
//! pid into the attempt's `cgroup.procs` (in every hierarchy) and records it, and only then
//! writes `go` to the pipe; the shell then execs the job in place (same pid, same process
//! group), its stdin `/dev/null`. Nothing of the job runs before it is in the cgroup, and every
//! process it starts is forked inside. gantry does the move rather than the job
//! (`echo $$ > cgroup.procs`) because cgroup v2 lets a process of another uid move only with
//! write access to the common ancestor's `cgroup.procs`, and because the cgroup's files then
//! stay gantry's: a job running as a uid of its own can neither loosen its limits nor move
//! itself out. `-p` keeps bash (when it is `/bin/sh`) from taking `BASH_ENV`, `SHELLOPTS` or
//! functions from the job's environment before the gate opens; a shell that does not know `-p`
//! (busybox) reads none of those anyway and is run without it. If gantry gives up or dies
//! before writing `go`, the pipe closes and the shell exits (125) without running the job.
//!
//! **Restarts.** The pid file `<root>/<job>/<attempt>.pid` (outside the job's reach) records
//! the process's pid, its start time and its uid. A process from before a restart is not
//! gantry's child and cannot be waited for: `find` stops it (its group, only if that pid still
//! has the recorded start time; every process of its uid; and everything in its cgroup, which is
//! then removed) and reports it gone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use gantry_actors::executor::{Executor, Found, Outcome, RunSpec};
use gantry_actors::secrets::Masker;
use gantry_events::event::JobId;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::cgroup::{CgroupOptions, Cgroups, Controller, Limits, Oom};

/// A block of uids (and gids of the same numbers) reserved for jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

impl UidRange {
    /// 2 147 000 000 – 2 147 399 999: far above login users and the usual subordinate-uid
    /// ranges (`/etc/subuid` starts at 100 000, 65 536 per user), below 2^31 so tools that
    /// treat a uid as a signed 32-bit number still show it right.
    pub const DEFAULT: UidRange = UidRange {
        first: 2_147_000_000,
        count: 400_000,
    };

    fn contains(&self, uid: u32) -> bool {
        uid >= self.first && uid - self.first < self.count
    }
}

/// Settings of the process executor. [`Default`] gives the documented values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Uids jobs run as, one per live attempt, when gantry runs as root. `None`: jobs run as
    /// gantry's own user. Default: [`UidRange::DEFAULT`].
    pub job_uids: Option<UidRange>,
    /// Open files per process (`RLIMIT_NOFILE`, soft = hard). Default: 1024.
    pub nofile: u64,
    /// Processes and threads of the attempt's uid (`RLIMIT_NPROC`), applied only when the
    /// attempt has a uid of its own. Default: 512.
    pub nproc: u64,
    /// Processes and threads in one attempt's cgroup (`pids.max`), whatever their uid.
    /// Default: 512.
    pub pids_limit: u64,
    /// Where the attempts' cgroups are made. Default: [`CgroupOptions::default`].
    pub cgroups: CgroupOptions,
}

impl Default for ProcessOptions {
    fn default() -> ProcessOptions {
        ProcessOptions {
            job_uids: Some(UidRange::DEFAULT),
            nofile: 1024,
            nproc: 512,
            pids_limit: 512,
            cgroups: CgroupOptions::default(),
        }
    }
}

/// Uids of live attempts.
#[derive(Debug)]
struct Uids {
    range: UidRange,
    in_use: HashSet<u32>,
    next: u64,
}

/// A uid held by one attempt, given back when dropped.
#[derive(Debug)]
struct Lease {
    uid: u32,
    uids: Arc<Mutex<Uids>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        lock(&self.uids).in_use.remove(&self.uid);
    }
}

/// A started attempt not yet waited for.
#[derive(Debug)]
struct Live {
    job_id: JobId,
    attempt: u32,
    child: Child,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    lease: Option<Lease>,
    /// The attempt's cgroup, when the executor has cgroups.
    cgroup: Option<String>,
}

type SharedWait = Shared<BoxFuture<'static, Result<Outcome, String>>>;

/// A wait in flight, by handle: a second `wait` joins the first.
struct InFlight {
    job_id: JobId,
    attempt: u32,
    wait: SharedWait,
}

#[derive(Default)]
struct State {
    live: HashMap<String, Live>,
    waits: HashMap<String, InFlight>,
    /// Recent outcomes, for a `wait` that comes after the end was collected.
    finished: VecDeque<(String, Outcome)>,
}

/// How many finished outcomes are remembered.
const FINISHED_KEPT: usize = 256;

/// Runs attempts as local processes under `root/<job>/<attempt>/`.
#[derive(Clone)]
pub struct ProcessExecutor {
    root: PathBuf,
    /// gantry's data dir, sealed before every start (isolated executors only).
    data: Option<PathBuf>,
    options: ProcessOptions,
    /// `Some` when attempts run as uids of their own.
    uids: Option<Arc<Mutex<Uids>>>,
    state: Arc<Mutex<State>>,
    prlimit: Option<PathBuf>,
    /// gantry's own hard `RLIMIT_NOFILE`: a job's user cannot raise its limit above it.
    nofile_hard: Option<u64>,
    /// The cgroups attempts run in; `None` when none can be made (no limits).
    cgroups: Option<Arc<Cgroups>>,
    /// The flags the gate shell runs with (`-p` where `/bin/sh` knows it).
    gate_flags: &'static [&'static str],
}

impl std::fmt::Debug for ProcessExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessExecutor")
            .field("root", &self.root)
            .field("data", &self.data)
            .field("options", &self.options)
            .field("isolated", &self.uids.is_some())
            .field("prlimit", &self.prlimit)
            .field("cgroups", &self.cgroups)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProcessExecutor {
    /// Attempts under `root`, run as gantry's own user, whoever that is, and nothing of the
    /// data dir touched: for tests and embedders. `gantry up` uses [`ProcessExecutor::open`].
    pub fn new(root: impl Into<PathBuf>) -> ProcessExecutor {
        ProcessExecutor::build(
            root.into(),
            None,
            ProcessOptions {
                job_uids: None,
                ..ProcessOptions::default()
            },
        )
    }

    /// The executor of gantry's data dir: attempts under `<data>/work`. As root (and with
    /// `options.job_uids`), seals `<data>` and runs every attempt as a uid of its own, as the
    /// module doc describes; fails when the directories above `<data>` are not searchable by
    /// other users.
    pub fn open(data: &Path, options: ProcessOptions) -> std::io::Result<ProcessExecutor> {
        let root = data.join("work");
        std::fs::create_dir_all(&root)?;
        let isolate = options.job_uids.is_some() && nix::unistd::geteuid().is_root();
        if !isolate {
            let options = ProcessOptions {
                job_uids: None,
                ..options
            };
            return Ok(ProcessExecutor::build(root, None, options));
        }
        let data = std::fs::canonicalize(data)?;
        if let Some(blocked) = data
            .ancestors()
            .skip(1)
            .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 == 0))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "jobs run as their own users and could not reach {}: {} is not searchable by \
                     other users; allow it (chmod o+x) or put the data dir elsewhere \
                     (e.g. /var/lib/gantry)",
                    root.display(),
                    blocked.display()
                ),
            ));
        }
        // The data dir is gantry's alone: its entries lose group and other permissions. Never
        // do that to a shared directory (`/`, `/tmp`, a world-writable one).
        let mode = std::fs::metadata(&data)?.mode();
        if data.parent().is_none() || mode & 0o1002 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} is a shared directory (mode {:o}), not a data dir of gantry's own",
                    data.display(),
                    mode & 0o7777
                ),
            ));
        }
        let root = data.join("work");
        set_mode(&data, 0o711)?;
        set_mode(&root, 0o711)?;
        seal_entries(&data)?;
        Ok(ProcessExecutor::build(root, Some(data), options))
    }

    fn build(root: PathBuf, data: Option<PathBuf>, options: ProcessOptions) -> ProcessExecutor {
        let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let uids = options.job_uids.map(|range| {
            // A different place in the range on every start of gantry, so a restart does not
            // hand the first uids out again at once.
            let offset = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            Arc::new(Mutex::new(Uids {
                range,
                in_use: HashSet::new(),
                next: offset,
            }))
        });
        let nofile_hard =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(_, hard)| hard);
        close_inherited_descriptors();
        if prlimit.is_none() {
            tracing::warn!(
                "prlimit not found: local jobs run without open-file or per-uid process limits"
            );
        }
        let (cgroups, gate_flags) = match Cgroups::detect(&options.cgroups) {
            Ok(cgroups) => match gate_flags() {
                Some(flags) => {
                    let missing: Vec<&str> = Controller::ALL
                        .into_iter()
                        .filter(|c| !cgroups.controllers().contains(c))
                        .map(|c| c.name())
                        .collect();
                    if missing.is_empty() {
                        tracing::info!(version = ?cgroups.version(), parent = %options.cgroups.parent.display(), "local jobs run in cgroups of their own");
                    } else {
                        tracing::warn!(version = ?cgroups.version(), missing = ?missing, "the host's cgroups lack some controllers: local jobs run without those limits");
                    }
                    (Some(Arc::new(cgroups)), flags)
                }
                None => {
                    tracing::warn!(
                        "/bin/sh does not run: local jobs cannot enter cgroups and run without memory, CPU or pids limits"
                    );
                    (None, NO_FLAGS)
                }
            },
            Err(error) => {
                tracing::warn!(root = %options.cgroups.root.display(), %error, "no writable cgroups: local jobs run without memory, CPU or pids limits");
                (None, NO_FLAGS)
            }
        };
        ProcessExecutor {
            root,
            data,
            options,
            uids,
            state: Arc::default(),
            prlimit,
            nofile_hard,
            cgroups,
            gate_flags,
        }
    }

    /// The cgroup directories of an attempt (one per hierarchy; none without cgroups). They
    /// exist from just before its process starts until it has ended.
    pub fn attempt_cgroups(&self, job: JobId, attempt: u32) -> Vec<PathBuf> {
        self.cgroups
            .as_ref()
            .map(|c| c.dirs(&cgroup_name(job, attempt)))
            .unwrap_or_default()
    }

    /// Whether attempts run as uids of their own (root, with [`ProcessExecutor::open`]).
    pub fn isolated(&self) -> bool {
        self.uids.is_some()
    }

    /// Where an attempt runs.
    /// Where an attempt's inputs are put before it starts: beside its directory (which a
    /// start clears), readable by the job's user, writable by none.
    pub fn inputs_dir(&self, job: JobId, attempt: u32) -> PathBuf {
        self.root
            .join(job.to_string())
            .join(format!("inputs-{attempt}"))
    }

    pub fn attempt_dir(&self, job: JobId, attempt: u32) -> PathBuf {
        self.root.join(job.to_string()).join(attempt.to_string())
    }

    fn pid_file(&self, job: JobId, attempt: u32) -> PathBuf {
        self.root
            .join(job.to_string())
            .join(format!("{attempt}.pid"))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn lease(&self) -> Result<Option<Lease>, String> {
        let Some(uids) = &self.uids else {
            return Ok(None);
        };
        let mut state = lock(uids);
        let range = state.range;
        for _ in 0..range.count {
            let uid = range.first + (state.next % u64::from(range.count)) as u32;
            state.next = state.next.wrapping_add(1);
            if state.in_use.insert(uid) {
                return Ok(Some(Lease {
                    uid,
                    uids: uids.clone(),
                }));
            }
        }
        Err(format!("all {} job uids are in use", range.count))
    }

    fn uid_in_use(&self, uid: u32) -> bool {
        self.uids
            .as_ref()
            .is_some_and(|u| lock(u).in_use.contains(&uid))
    }

    /// Everything up to the spawn, in order, each failure named: the attempt's directory (and
    /// working directory), the log file, the pid file.
    fn prepare(&self, run: &RunSpec, uid: Option<u32>) -> Result<Prepared, String> {
        let dir = self.attempt_dir(run.job_id, run.attempt);
        let job_dir = self.root.join(run.job_id.to_string());
        std::fs::create_dir_all(&job_dir)
            .map_err(|e| format!("creating {}: {e}", job_dir.display()))?;
        if uid.is_some() {
            set_mode(&job_dir, 0o711)
                .map_err(|e| format!("securing {}: {e}", job_dir.display()))?;
        }
        // A directory left by an earlier start of this same attempt: start clean.
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("clearing {}: {e}", dir.display())),
        }
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if let Some(uid) = uid {
            set_mode(&dir, 0o700)
                .and_then(|()| std::os::unix::fs::chown(&dir, Some(uid), Some(uid)))
                .map_err(|e| format!("handing {} to uid {uid}: {e}", dir.display()))?;
        }
        let outputs = dir.join(OUTPUTS);
        std::fs::create_dir(&outputs)
            .map_err(|e| format!("creating {}: {e}", outputs.display()))?;
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&outputs, Some(uid), Some(uid))
                .map_err(|e| format!("handing {} to uid {uid}: {e}", outputs.display()))?;
        }
        let cwd = working_dir(&dir, run.spec.working_dir.as_deref(), uid)?;
        if let Some(parent) = run.log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating the log directory {}: {e}", parent.display()))?;
        }
        let log = std::fs::File::create(&run.log_path)
            .map_err(|e| format!("creating the log file {}: {e}", run.log_path.display()))?;
        let pid_path = self.pid_file(run.job_id, run.attempt);
        let pid_file = std::fs::File::create(&pid_path)
            .map_err(|e| format!("creating the pid file {}: {e}", pid_path.display()))?;
        if let Some(data) = &self.data {
            // Entries made since the last start (the first attempt log's directory, say).
            seal_entries(data).map_err(|e| format!("securing {}: {e}", data.display()))?;
        }
        let mut gate = None;
        let mut cgroup = None;
        if let Some(cgroups) = &self.cgroups {
            // Both close-on-exec: the reader becomes the gate's stdin, the writer stays ours.
            gate = Some(std::io::pipe().map_err(|e| format!("making the start gate: {e}"))?);
            // Last, so no later step of the setup can fail and leave it behind.
            let name = cgroup_name(run.job_id, run.attempt);
            let limits = Limits {
                memory_bytes: run.spec.resources.memory_bytes,
                pids: self.options.pids_limit,
                cpu_millis: run.spec.resources.cpu_millis,
            };
            cgroups
                .create(&name, &limits)
                .map_err(|e| format!("creating the attempt's cgroup: {e}"))?;
            cgroup = Some(name);
        }
        let (gate_reader, gate_writer) = gate.unzip();
        Ok(Prepared {
            dir,
            cwd,
            log,
            pid_file,
            cgroup,
            gate_reader,
            gate_writer,
        })
    }

    fn command(&self, run: &RunSpec, prepared: &mut Prepared, uid: Option<u32>) -> Command {
        let mut argv: Vec<String> = Vec::new();
        let gate = prepared.gate_reader.take();
        if gate.is_some() {
            // See "Entering the cgroup" in the module doc.
            argv.push(SHELL.to_owned());
            argv.extend(self.gate_flags.iter().map(|f| (*f).to_owned()));
            argv.extend(["-c".to_owned(), GATE.to_owned(), "gantry-gate".to_owned()]);
        }
        if let Some(prlimit) = &self.prlimit {
            argv.push(prlimit.display().to_string());
            let nofile = self
                .nofile_hard
                .map_or(self.options.nofile, |hard| self.options.nofile.min(hard));
            argv.push(format!("--nofile={nofile}:{nofile}"));
            if uid.is_some() {
                argv.push(format!(
                    "--nproc={}:{}",
                    self.options.nproc, self.options.nproc
                ));
            }
            argv.push("--".to_owned());
        }
        argv.extend(run.spec.command.iter().chain(&run.spec.args).cloned());
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(&prepared.cwd)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &prepared.dir)
            .env("GANTRY_OUTPUT_DIR", prepared.dir.join(OUTPUTS))
            .envs(
                (!run.spec.inputs.is_empty())
                    .then(|| ("GANTRY_INPUT_DIR", self.inputs_dir(run.job_id, run.attempt))),
            )
            .envs(&run.spec.env)
            .envs(run.secrets.iter().map(|(k, v)| (k, &v.0)))
            // After the job's own: the same name set again replaces its value, so a job
            // cannot choose GPUs it was not given.
            .envs(super::gpu_env(&run.gpu_uuids))
            .stdin(gate.map_or_else(Stdio::null, Stdio::from))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(uid) = uid {
            // The standard library sets the gid, clears supplementary groups, then the uid.
            command.uid(uid).gid(uid);
        }
        command
    }

    /// Stops a spawned process whose job must not run (its gate still closed, or its pid not
    /// recorded): its group, its uid's processes, its cgroup; then reaps it.
    async fn abort(&self, child: &mut Child, pid: i32, uid: Option<u32>, cgroup: Option<&str>) {
        kill_group(pid);
        if let Some(uid) = uid {
            kill_uid(uid).await;
        }
        let _ = child.wait().await;
        self.remove_cgroup(cgroup).await;
    }

    /// Kills what is in an attempt's cgroup and removes it; a failure is logged (a leftover
    /// cgroup is cleared by the next start of the same attempt).
    async fn remove_cgroup(&self, name: Option<&str>) {
        let (Some(cgroups), Some(name)) = (&self.cgroups, name) else {
            return;
        };
        if let Err(error) = cgroups.remove(name).await {
            tracing::warn!(cgroup = name, %error, "could not remove an attempt's cgroup");
        }
    }

    /// The handle of the attempt's process, if this executor started it and it has not been
    /// collected yet.
    fn handle_of(&self, job_id: JobId, attempt: u32) -> Option<String> {
        let state = self.state();
        let live = state
            .live
            .iter()
            .find(|(_, l)| l.job_id == job_id && l.attempt == attempt)
            .map(|(h, _)| h.clone());
        live.or_else(|| {
            state
                .waits
                .iter()
                .find(|(_, w)| w.job_id == job_id && w.attempt == attempt)
                .map(|(h, _)| h.clone())
        })
    }

    /// The wait of `handle`: the one in flight, a new one for a live process, or the outcome
    /// already collected.
    fn shared_wait(&self, handle: &str) -> Result<SharedWait, Option<Outcome>> {
        let mut state = self.state();
        if let Some(in_flight) = state.waits.get(handle) {
            return Ok(in_flight.wait.clone());
        }
        let Some(live) = state.live.remove(handle) else {
            let finished = state.finished.iter().find(|(h, _)| h == handle);
            return Err(finished.map(|(_, outcome)| outcome.clone()));
        };
        let (job_id, attempt) = (live.job_id, live.attempt);
        let task = tokio::spawn(finish(self.clone(), handle.to_owned(), live));
        let wait = async move { task.await.map_err(|e| e.to_string()) }
            .boxed()
            .shared();
        state.waits.insert(
            handle.to_owned(),
            InFlight {
                job_id,
                attempt,
                wait: wait.clone(),
            },
        );
        Ok(wait)
    }

    /// Stops what is left of an attempt this executor does not hold as a child (after a
    /// restart): its group when the recorded pid is still that process, every process of its
    /// uid, then hands its directory back to gantry.
    async fn stop_leftover(&self, job_id: JobId, attempt: u32) {
        let dir = self.attempt_dir(job_id, attempt);
        let pid_path = self.pid_file(job_id, attempt);
        if let Some(record) = read_record(&pid_path).await {
            if start_time(record.pid).await == Some(record.start_time) {
                tracing::info!(job = %job_id, attempt, pid = record.pid, "stopping a leftover process group");
                kill_group(record.pid);
            }
            if let Some(uid) = record.uid {
                let ours = self
                    .uids
                    .as_ref()
                    .is_some_and(|u| lock(u).range.contains(uid));
                // A uid handed to a live attempt again belongs to that attempt now.
                if ours && !self.uid_in_use(uid) {
                    kill_uid(uid).await;
                }
            }
            let _ = tokio::fs::remove_file(&pid_path).await;
        } else if let Some(pid) = read_old_pid(&dir.join("pid")).await {
            // A pid file of an older gantry: only a pid, checked by the directory it runs in.
            let cwd = tokio::fs::read_link(format!("/proc/{pid}/cwd")).await.ok();
            let ours = tokio::fs::canonicalize(&dir).await.ok();
            if cwd.is_some() && cwd == ours {
                kill_group(pid);
            }
        }
        // Everything the attempt started is in its cgroup, whatever its group or uid.
        let name = cgroup_name(job_id, attempt);
        self.remove_cgroup(Some(&name)).await;
        if self.isolated() {
            seal_dir(&dir);
        }
    }
}

/// What `prepare` made.
struct Prepared {
    dir: PathBuf,
    cwd: PathBuf,
    log: std::fs::File,
    pid_file: std::fs::File,
    /// The attempt's cgroup (made, empty), when the executor has cgroups.
    cgroup: Option<String>,
    /// The gate's stdin (until the command takes it) and gantry's end, which opens the gate.
    gate_reader: Option<std::io::PipeReader>,
    gate_writer: Option<std::io::PipeWriter>,
}

/// The shell the gate runs in.
const SHELL: &str = "/bin/sh";
/// The gate (see "Entering the cgroup" in the module doc): waits for gantry's `go`, then
/// becomes the job. At EOF without it (gantry gave up or died) the job never runs.
const GATE: &str = "read -r go || exit 125; exec \"$@\" </dev/null";
const PRIVILEGED: &[&str] = &["-p"];
const NO_FLAGS: &[&str] = &[];

/// The flags `/bin/sh` runs the gate with: `-p` where it knows it (bash and dash do, busybox
/// does not); `None` when it does not run at all.
fn gate_flags() -> Option<&'static [&'static str]> {
    let runs = |flags: &[&str]| {
        std::process::Command::new(SHELL)
            .args(flags)
            .args(["-c", "exit 0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    [PRIVILEGED, NO_FLAGS].into_iter().find(|flags| runs(flags))
}

/// The name of an attempt's cgroup under the parent.
fn cgroup_name(job: JobId, attempt: u32) -> String {
    format!("{job}-{attempt}")
}

/// The job's working directory (see the module doc).
fn working_dir(dir: &Path, asked: Option<&str>, uid: Option<u32>) -> Result<PathBuf, String> {
    let Some(asked) = asked.filter(|a| !a.is_empty()) else {
        return Ok(dir.to_owned());
    };
    let asked = Path::new(asked);
    if asked.is_absolute() {
        return match std::fs::metadata(asked) {
            Ok(m) if m.is_dir() => Ok(asked.to_owned()),
            Ok(_) => Err(format!(
                "working_dir {} is not a directory",
                asked.display()
            )),
            Err(e) => Err(format!("working_dir {}: {e}", asked.display())),
        };
    }
    let mut cwd = dir.to_owned();
    for part in asked.components() {
        match part {
            Component::Normal(name) => cwd.push(name),
            Component::CurDir => continue,
            _ => {
                return Err(format!(
                    "working_dir {} leaves the attempt's directory",
                    asked.display()
                ));
            }
        }
        match std::fs::create_dir(&cwd) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("creating {}: {e}", cwd.display())),
        }
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&cwd, Some(uid), Some(uid))
                .map_err(|e| format!("handing {} to uid {uid}: {e}", cwd.display()))?;
        }
    }
    Ok(cwd)
}

/// Closes every descriptor above 2 that gantry's process holds without close-on-exec. gantry
/// opens none such (the standard library and tokio open everything close-on-exec); these were
/// inherited from whatever started gantry (a shell, a supervisor) and would otherwise pass on
/// to every job. Nobody in gantry owns them, so closing them cannot pull a descriptor from
/// under its owner.
fn close_inherited_descriptors() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i32::from_str_radix(f.trim(), 8).ok());
        if flags.is_none_or(|f| f & nix::libc::O_CLOEXEC != 0) {
            continue;
        }
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
        match nix::unistd::close(fd) {
            Ok(()) => {
                tracing::warn!(fd, target = %target.display(), "closed a descriptor gantry inherited without close-on-exec, so no job inherits it")
            }
            Err(error) => tracing::warn!(fd, %error, "could not close an inherited descriptor"),
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Strips group and other permissions from every entry of the data dir except `work`. Not
/// recursive: a sealed directory keeps everything below it out of reach. Symlinks are left
/// alone (a chmod would follow them).
fn seal_entries(data: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(data)? {
        let entry = entry?;
        if entry.file_name() == "work" {
            continue;
        }
        let meta = match entry.path().symlink_metadata() {
            Ok(meta) => meta,
            // Removed since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() || mode & 0o077 == 0 {
            continue;
        }
        set_mode(&entry.path(), mode & !0o077)?;
    }
    Ok(())
}

/// Hands a finished attempt's directory back to gantry: owned by gantry's user, mode 0700.
fn seal_dir(dir: &Path) {
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    let sealed = std::os::unix::fs::chown(dir, Some(uid.as_raw()), Some(gid.as_raw()))
        .and_then(|()| set_mode(dir, 0o700));
    match sealed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "could not hand the attempt's directory back")
        }
    }
}

fn kill_group(pid: i32) {
    if pid > 0 {
        // ESRCH (already gone) is fine.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills every live process whose real or effective uid is `uid`, until none is left (bounded:
/// a job forking as fast as it is killed runs into its nproc limit first).
async fn kill_uid(uid: u32) {
    for _ in 0..20 {
        let pids = processes_of(uid).await;
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(uid, "processes of a job's uid survived repeated kills");
}

/// Pids whose real or effective uid is `uid`, from `/proc/<pid>/status`.
async fn processes_of(uid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir("/proc").await else {
        return pids;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(status) = tokio::fs::read_to_string(entry.path().join("status")).await else {
            continue;
        };
        // A zombie cannot be killed; its parent reaps it.
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
        {
            continue;
        }
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|l| {
                l.split_whitespace()
                    .take(2)
                    .filter_map(|u| u.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if uids.contains(&uid) {
            pids.push(pid);
        }
    }
    pids
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`): with the
/// pid, it names one process even after the pid number is reused.
async fn start_time(pid: i32) -> Option<u64> {
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn start_time_now(pid: i32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// What a pid file records: `<pid> <start time> <uid or ->`.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    pid: i32,
    start_time: u64,
    uid: Option<u32>,
}

impl Record {
    fn parse(text: &str) -> Option<Record> {
        let mut parts = text.split_whitespace();
        let pid = parts.next()?.parse().ok()?;
        let start_time = parts.next()?.parse().ok()?;
        let uid = parts.next()?.parse().ok();
        Some(Record {
            pid,
            start_time,
            uid,
        })
    }

    fn to_line(&self) -> String {
        let uid = self.uid.map_or_else(|| "-".to_owned(), |u| u.to_string());
        format!("{} {} {uid}\n", self.pid, self.start_time)
    }
}

async fn read_record(path: &Path) -> Option<Record> {
    Record::parse(&tokio::fs::read_to_string(path).await.ok()?)
}

async fn read_old_pid(path: &Path) -> Option<i32> {
    tokio::fs::read_to_string(path)
        .await
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `path@sha256:<hex>` of the executable a job's `program` names (searched in the jobs' PATH
/// when it has no `/`), for the record of what ran.
fn executable_identity(program: &str) -> Option<String> {
    use sha2::Digest;
    use std::io::Read;
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        ["/usr/local/bin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|p| p.is_file())?
    };
    let path = std::fs::canonicalize(&path).ok()?;
    let mut file = std::fs::File::open(&path).ok()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(format!(
        "{}@sha256:{}",
        path.display(),
        hex::encode(hasher.finalize())
    ))
}

/// The folder in an attempt's directory the job leaves its outputs in (`$GANTRY_OUTPUT_DIR`).
const OUTPUTS: &str = "outputs";

/// Copies a pipe into the attempt log, one timestamped line at a time.
async fn pump(
    reader: impl tokio::io::AsyncRead + Unpin,
    stream: &'static str,
    out: Arc<tokio::sync::Mutex<tokio::fs::File>>,
    masker: Masker,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = masker.mask(&line);
        let stamp = humantime::format_rfc3339_nanos(std::time::SystemTime::now());
        let mut out = out.lock().await;
        let _ = out
            .write_all(format!("{stamp} {stream} {line}\n").as_bytes())
            .await;
    }
}

/// How long output may keep flowing after the job's group is gone (a process outside the
/// group holding the pipe open): then the copy stops.
const DRAIN: Duration = Duration::from_secs(5);

/// One wait, in its own task: reaps the process, stops what it left, lets the output drain,
/// hands the directory back and gives the uid back.
async fn finish(executor: ProcessExecutor, handle: String, live: Live) -> Outcome {
    let Live {
        job_id,
        attempt,
        mut child,
        pumps,
        lease,
        cgroup,
    } = live;
    let waited = child.wait().await;
    // Whatever the job left running in its group, under its uid, or anywhere in its cgroup,
    // goes with it.
    if let Ok(pid) = handle.parse() {
        kill_group(pid);
    }
    if let Some(lease) = &lease {
        kill_uid(lease.uid).await;
    }
    let cgroups = executor.cgroups.as_ref().zip(cgroup.as_deref());
    if let Some((cgroups, name)) = cgroups
        && let Err(error) = cgroups.kill(name).await
    {
        tracing::warn!(job = %job_id, attempt, cgroup = name, %error, "could not kill what is left in the attempt's cgroup");
    }
    for mut pump in pumps {
        if tokio::time::timeout(DRAIN, &mut pump).await.is_err() {
            tracing::warn!(job = %job_id, attempt, "output still open after the job ended; stopped copying");
            pump.abort();
        }
    }
    // Read before the cgroup, and its counters, are gone.
    let oom = cgroups.map(|(cgroups, name)| cgroups.oom(name));
    executor.remove_cgroup(cgroup.as_deref()).await;
    if lease.is_some() {
        seal_dir(&executor.attempt_dir(job_id, attempt));
    }
    let _ = tokio::fs::remove_file(executor.pid_file(job_id, attempt)).await;
    drop(lease);
    let outcome = match waited {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal();
            let code = status
                .code()
                .map(i64::from)
                .unwrap_or_else(|| 128 + i64::from(signal.unwrap_or(0)));
            let oom_killed = match oom {
                Some(Oom::Killed) => true,
                // No count (an old v1 kernel): the limit was hit and the job died of
                // SIGKILL, the OOM killer's signal.
                Some(Oom::Unknown { limit_hit }) => {
                    limit_hit && signal == Some(Signal::SIGKILL as i32)
                }
                Some(Oom::NotKilled) | None => false,
            };
            if oom_killed {
                tracing::info!(job = %job_id, attempt, code, "the OOM killer struck the attempt");
            }
            Outcome::Exited { code, oom_killed }
        }
        Err(e) => Outcome::Failed {
            message: format!("waiting for process {handle}: {e}"),
        },
    };
    let mut state = executor.state();
    state.waits.remove(&handle);
    if state.finished.len() >= FINISHED_KEPT {
        state.finished.pop_front();
    }
    state.finished.push_back((handle, outcome.clone()));
    outcome
}

impl Executor for ProcessExecutor {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn sandboxed(&self) -> bool {
        false
    }

    fn limits_enforced(&self) -> bool {
        self.cgroups.as_ref().is_some_and(|c| c.enforced())
    }

    fn resolve<'a>(&'a self, run: &'a RunSpec, _handle: &'a str) -> BoxFuture<'a, Option<String>> {
        let program = run
            .spec
            .command
            .iter()
            .chain(&run.spec.args)
            .next()
            .cloned();
        async move {
            let program = program?;
            tokio::task::spawn_blocking(move || executable_identity(&program))
                .await
                .ok()
                .flatten()
        }
        .boxed()
    }

    fn outputs(&self, job_id: JobId, attempt: u32) -> Option<PathBuf> {
        Some(self.attempt_dir(job_id, attempt).join(OUTPUTS))
    }

    fn inputs(&self, job_id: JobId, attempt: u32) -> Option<PathBuf> {
        Some(self.inputs_dir(job_id, attempt))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        async { Ok(()) }.boxed()
    }

    fn start<'a>(&'a self, run: &'a RunSpec) -> BoxFuture<'a, Result<String, Outcome>> {
        async move {
            let failed = |message: String| {
                tracing::warn!(job = %run.job_id, attempt = run.attempt, %message, "attempt not started");
                Outcome::Failed { message }
            };
            if run.spec.command.is_empty() && run.spec.args.is_empty() {
                return Err(failed("the process executor needs a command".into()));
            }
            if let Some(cgroups) = &self.cgroups {
                // A cgroup of this attempt left by an earlier start (a gantry killed half way):
                // what still runs in it goes, so the new one starts empty.
                let name = cgroup_name(run.job_id, run.attempt);
                if let Err(e) = cgroups.remove(&name).await {
                    return Err(failed(format!("clearing the attempt's old cgroup: {e}")));
                }
            }
            // From here to the registration below nothing awaits but the failure path, which
            // has killed what it started: a dropped `start` either started nothing or left a
            // registered child that `discard` finds (or, dropped during the failure path, a
            // gate that never opened and a cgroup that `discard` removes).
            let lease = self.lease().map_err(failed)?;
            let uid = lease.as_ref().map(|l| l.uid);
            let mut prepared = self.prepare(run, uid).map_err(failed)?;
            let mut command = self.command(run, &mut prepared, uid);
            let spawned = command.spawn();
            // Our copy of the gate's stdin: only the child may hold it, so the gate sees EOF
            // when gantry's end closes.
            drop(command);
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    let _ = std::fs::remove_file(self.pid_file(run.job_id, run.attempt));
                    if uid.is_some() {
                        seal_dir(&prepared.dir);
                    }
                    self.remove_cgroup(prepared.cgroup.as_deref()).await;
                    return Err(failed(format!(
                        "starting {:?} in {}: {e}",
                        run.spec.command.first().or(run.spec.args.first()),
                        prepared.cwd.display()
                    )));
                }
            };
            let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
                self.remove_cgroup(prepared.cgroup.as_deref()).await;
                return Err(failed("the process ended before its pid was read".into()));
            };
            // The gate holds the job back until this is done (see the module doc).
            if let (Some(cgroups), Some(name)) = (&self.cgroups, &prepared.cgroup)
                && let Err(e) = cgroups.place(name, pid.unsigned_abs())
            {
                let _ = std::fs::remove_file(self.pid_file(run.job_id, run.attempt));
                self.abort(&mut child, pid, uid, prepared.cgroup.as_deref())
                    .await;
                return Err(failed(format!("moving the process into its cgroup: {e}")));
            }
            let record = Record {
                pid,
                start_time: start_time_now(pid).unwrap_or(0),
                uid,
            };
            let recorded = prepared
                .pid_file
                .write_all(record.to_line().as_bytes())
                .and_then(|()| prepared.pid_file.sync_all());
            if let Err(e) = recorded {
                // No record, no way to find it after a restart: it must not run.
                self.abort(&mut child, pid, uid, prepared.cgroup.as_deref())
                    .await;
                return Err(failed(format!("recording the pid: {e}")));
            }
            if let Some(mut gate) = prepared.gate_writer.take() {
                // A fresh pipe takes three bytes without blocking; an error means the gate
                // is gone (killed): nothing of the job ran.
                if let Err(e) = gate.write_all(b"go\n") {
                    self.abort(&mut child, pid, uid, prepared.cgroup.as_deref())
                        .await;
                    return Err(failed(format!("opening the start gate: {e}")));
                }
            }
            let handle = pid.to_string();
            let log = Arc::new(tokio::sync::Mutex::new(tokio::fs::File::from_std(
                prepared.log,
            )));
            let mut pumps = Vec::new();
            let masker = Masker::new(&run.secrets);
            if let Some(stdout) = child.stdout.take() {
                pumps.push(tokio::spawn(pump(stdout, "stdout", log.clone(), masker.clone())));
            }
            if let Some(stderr) = child.stderr.take() {
                pumps.push(tokio::spawn(pump(stderr, "stderr", log, masker)));
            }
            tracing::debug!(job = %run.job_id, attempt = run.attempt, pid, uid, "process started");
            self.state().live.insert(
                handle.clone(),
                Live {
                    job_id: run.job_id,
                    attempt: run.attempt,
                    child,
                    pumps,
                    lease,
                    cgroup: prepared.cgroup,
                },
            );
            Ok(handle)
        }
        .boxed()
    }

    fn wait<'a>(&'a self, handle: &'a str, _run: &'a RunSpec) -> BoxFuture<'a, Outcome> {
        async move {
            match self.shared_wait(handle) {
                Ok(wait) => wait.await.unwrap_or_else(|error| Outcome::Failed {
                    message: format!("waiting for process {handle}: {error}"),
                }),
                Err(Some(finished)) => finished,
                Err(None) => Outcome::Failed {
                    message: format!("no process {handle} to wait for"),
                },
            }
        }
        .boxed()
    }

    fn discard<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, ()> {
        async move {
            let Some(handle) = self.handle_of(job_id, attempt) else {
                self.stop_leftover(job_id, attempt).await;
                return;
            };
            // Our own child: kill it and let the usual end run (reap, stop what is left under
            // its uid, hand the directory back).
            if let Ok(pid) = handle.parse() {
                kill_group(pid);
            }
            if let Ok(wait) = self.shared_wait(&handle) {
                let _ = wait.await;
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

    fn find<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, Option<Found>> {
        async move {
            // A process from before a restart is not our child: it cannot be waited for, so it
            // is stopped and the attempt counts as lost with the node.
            self.discard(job_id, attempt).await;
            None
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 100";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn records_round_trip() {
        for uid in [Some(2_147_000_001), None] {
            let record = Record {
                pid: 42,
                start_time: 7,
                uid,
            };
            assert_eq!(Record::parse(&record.to_line()), Some(record));
        }
    }

    #[test]
    fn working_dirs_stay_inside_the_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let attempt = dir.path();
        assert_eq!(working_dir(attempt, None, None), Ok(attempt.to_owned()));
        assert_eq!(
            working_dir(attempt, Some("a/./b"), None),
            Ok(attempt.join("a/b"))
        );
        assert!(attempt.join("a/b").is_dir());
        assert!(working_dir(attempt, Some("../x"), None).is_err());
        assert!(working_dir(attempt, Some("a/../../x"), None).is_err());
        assert_eq!(
            working_dir(attempt, Some("/"), None),
            Ok(PathBuf::from("/"))
        );
        assert!(working_dir(attempt, Some("/nonexistent/dir"), None).is_err());
    }

    #[test]
    fn uids_are_not_shared_while_held() {
        let executor = ProcessExecutor::build(
            PathBuf::from("/nonexistent"),
            None,
            ProcessOptions {
                job_uids: Some(UidRange {
                    first: 5000,
                    count: 2,
                }),
                // No cgroups: a unit test leaves the host's alone.
                cgroups: CgroupOptions {
                    root: PathBuf::from("/nonexistent"),
                    ..CgroupOptions::default()
                },
                ..ProcessOptions::default()
            },
        );
        let a = executor.lease().expect("a").expect("uid");
        let b = executor.lease().expect("b").expect("uid");
        assert_ne!(a.uid, b.uid);
        assert!(executor.lease().is_err(), "the range is exhausted");
        let freed = a.uid;
        drop(a);
        assert_eq!(executor.lease().expect("c").map(|l| l.uid), Some(freed));
    }
}
