//! The Docker executor (any Docker-compatible engine, Podman's socket included), through
//! bollard.
//!
//! **What the sandbox enforces** (see [`DockerExecutor::config_with`]): the job runs as user
//! and group 1000:1000 with every capability dropped and `no-new-privileges`, under the
//! engine's default seccomp profile; the root filesystem is read-only with a tmpfs `/tmp`
//! (64 MiB, `nosuid,nodev`); there is no network (only loopback) unless the job asks for the
//! bridge; memory is limited to the job's request without extra swap, CPU to its request, the
//! container's process count to [`DockerOptions::pids_limit`]; open files (`nofile`) and
//! processes of uid 1000 (`nproc`) are limited by rlimits; an init (`docker-init`/tini) is PID 1,
//! forwarding signals and reaping orphans; the engine keeps at most
//! [`DockerOptions::log_max_files`] × [`DockerOptions::log_max_size`] of a container's output.
//! GPUs are passed as device requests naming the UUIDs reserved for the attempt (none when
//! none were), and `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` name the same UUIDs
//! (with none: empty and `void`, so an image that sets `NVIDIA_VISIBLE_DEVICES=all`, as CUDA
//! base images do, gets no GPU from an engine whose default runtime is NVIDIA's). They are set
//! after the job's own variables; a job's value for either is dropped.
//!
//! **Out of memory.** A container the kernel's OOM killer struck (the engine's `OOMKilled`,
//! read when the container has ended) ends as `Outcome::Exited { oom_killed: true, .. }`.
//!
//! **Lifecycle.** Containers are named `gantry-<job>-<attempt>` and labelled with job and
//! attempt. An image pull is bounded by [`DockerOptions::pull_timeout`]. Creating and starting
//! the container runs in a task of its own, so a `start` dropped half way never leaves a
//! container that [`Executor::discard`] misses: `discard` waits for that task, then removes
//! every container of the attempt. `wait` runs in a task per container, shared by every caller
//! (a second `wait` after a worker restart joins the first), so one attempt's output is copied
//! by one collector at a time; it reads an already exited container's exit code and output the
//! same way, and always removes the container at the end. `find` after a restart reports the
//! attempt's container as running or exited without removing it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, DeviceRequest, HostConfig, HostConfigLogConfig,
    ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use gantry_actors::executor::{Executor, Found, Outcome, RunSpec};
use gantry_actors::secrets::Masker;
use gantry_events::event::{JobId, Network};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Label holding the job id.
pub const LABEL_JOB: &str = "gantry.job";
/// Label holding the attempt number.
pub const LABEL_ATTEMPT: &str = "gantry.attempt";
/// The user and group every job runs as.
const JOB_USER: &str = "1000:1000";
/// How long `discard` and `find` wait for a create-and-start still in flight for the attempt
/// before removing what is there anyway. Each step is one engine call.
const SETTLE_START: Duration = Duration::from_secs(120);
/// How many finished waits are remembered, so a `wait` that arrives after the collector has
/// finished (and removed the container) gets the same outcome instead of an error.
const FINISHED_KEPT: usize = 256;

/// Settings of the Docker executor. [`Default`] gives the documented values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptions {
    /// Longest an image pull may take before `start` gives up with
    /// [`Outcome::PullTimedOut`]. Default: 10 minutes.
    pub pull_timeout: Duration,
    /// Open files per process (`RLIMIT_NOFILE`, soft = hard). Default: 1024.
    pub nofile: i64,
    /// Processes and threads of the job's user (`RLIMIT_NPROC`, soft = hard). Without a user
    /// namespace the kernel counts every process of uid 1000 on the host, in every job
    /// container together, so this is a node-wide backstop, not a per-container limit (that is
    /// `pids_limit`). Default: 8192.
    pub nproc: i64,
    /// Processes one container may hold (the pids cgroup). Default: 512.
    pub pids_limit: i64,
    /// Size of one engine log file of a container (`json-file` `max-size`). Default: `10m`.
    pub log_max_size: String,
    /// Engine log files kept per container (`json-file` `max-file`): with `log_max_size`, the
    /// most output the engine holds. A collector following the container copies it all; one
    /// that starts late (an attempt that ran while gantry was down) gets at most this much.
    /// Default: 5.
    pub log_max_files: u32,
    /// A folder of the engine's host where each attempt gets its output folder, bind-mounted
    /// at `/outputs` (`$GANTRY_OUTPUT_DIR`) and read after the container exits. The engine
    /// resolves the path on its host, so it must be the same path there as here. `None` (the
    /// default): jobs get no output folder.
    pub outputs_root: Option<PathBuf>,
}

impl Default for DockerOptions {
    fn default() -> DockerOptions {
        DockerOptions {
            pull_timeout: Duration::from_secs(600),
            nofile: 1024,
            nproc: 8192,
            pids_limit: 512,
            log_max_size: "10m".into(),
            log_max_files: 5,
            outputs_root: None,
        }
    }
}

/// Where a job's container sees its output folder, and its inputs (read-only).
const OUTPUTS_MOUNT: &str = "/outputs";
const INPUTS_MOUNT: &str = "/inputs";

/// Counters of the log collectors, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DockerStats {
    /// Collectors ever started (one per `wait` that was not joined to one in flight).
    pub collectors_started: u64,
    /// Collectors copying output now.
    pub collectors_running: u64,
    /// The most collectors that ever ran at once.
    pub collectors_peak: u64,
}

/// A wait in flight: its outcome, or why its task died without one.
type SharedWait = Shared<BoxFuture<'static, Result<Outcome, String>>>;

#[derive(Default)]
struct Waits {
    next: u64,
    /// Container id → the generation and the shared wait running for it.
    in_flight: HashMap<String, (u64, SharedWait)>,
    finished: VecDeque<(String, Outcome)>,
}

#[derive(Default)]
struct State {
    waits: Mutex<Waits>,
    /// Create-and-start tasks in flight, by attempt: `true` (or a closed channel) once done.
    starts: Mutex<HashMap<(JobId, u32), watch::Receiver<bool>>>,
    collectors_started: AtomicU64,
    collectors_running: AtomicU64,
    collectors_peak: AtomicU64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field(
                "collectors_running",
                &self.collectors_running.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs attempts as sandboxed containers. Cheap to clone; clones share their waits.
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    docker: Docker,
    options: DockerOptions,
    state: Arc<State>,
}

impl DockerExecutor {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) with the default
    /// [`DockerOptions`] and checks it answers.
    pub async fn connect() -> Result<DockerExecutor, DockerError> {
        DockerExecutor::connect_with(DockerOptions::default()).await
    }

    /// Connects to the local engine with these options and checks it answers.
    pub async fn connect_with(options: DockerOptions) -> Result<DockerExecutor, DockerError> {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        docker.ping().await?;
        Ok(DockerExecutor {
            docker,
            options,
            state: Arc::default(),
        })
    }

    pub fn options(&self) -> &DockerOptions {
        &self.options
    }

    pub fn stats(&self) -> DockerStats {
        DockerStats {
            collectors_started: self.state.collectors_started.load(Ordering::SeqCst),
            collectors_running: self.state.collectors_running.load(Ordering::SeqCst),
            collectors_peak: self.state.collectors_peak.load(Ordering::SeqCst),
        }
    }

    /// The container name of an attempt.
    pub fn container_name(job_id: JobId, attempt: u32) -> String {
        format!("gantry-{job_id}-{attempt}")
    }

    /// Makes sure the image is present, pulling it if needed.
    async fn ensure_image(&self, image: &str) -> Result<(), String> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            step.map_err(|e| format!("pulling {image}: {e}"))?;
        }
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|e| format!("{image} still missing after the pull: {e}"))
    }

    /// The container an attempt runs in, with the default options.
    pub fn config(run: &RunSpec) -> ContainerCreateBody {
        DockerExecutor::config_with(run, &DockerOptions::default())
    }

    /// The container an attempt runs in: image, command, environment and the sandbox the
    /// module doc describes.
    pub fn config_with(run: &RunSpec, options: &DockerOptions) -> ContainerCreateBody {
        let spec = &run.spec;
        let resources = &spec.resources;
        let memory = i64::try_from(resources.memory_bytes).unwrap_or(i64::MAX);
        let device_requests = (!run.gpu_uuids.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(run.gpu_uuids.clone()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        });
        let ulimit = |name: &str, limit: i64| ResourcesUlimits {
            name: Some(name.to_owned()),
            soft: Some(limit),
            hard: Some(limit),
        };
        let host_config = HostConfig {
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev,size=64m".to_owned(),
            )])),
            network_mode: Some(
                match spec.network {
                    Network::None => "none",
                    Network::Bridge => "bridge",
                }
                .into(),
            ),
            memory: Some(memory),
            // Equal to `memory`: no swap beyond the limit.
            memory_swap: Some(memory),
            nano_cpus: Some(i64::from(resources.cpu_millis) * 1_000_000),
            pids_limit: Some(options.pids_limit),
            ulimits: Some(vec![
                ulimit("nofile", options.nofile),
                ulimit("nproc", options.nproc),
            ]),
            // PID 1 forwards signals and reaps orphans, so a job's zombies cannot pile up to the
            // pids limit and a SIGTERM reaches the job.
            init: Some(true),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), options.log_max_size.clone()),
                    ("max-file".to_owned(), options.log_max_files.to_string()),
                ])),
            }),
            device_requests,
            binds: options.outputs_root.as_ref().map(|root| {
                let folder = root.join(outputs_folder(run.job_id, run.attempt));
                let mut binds = vec![format!("{}:{OUTPUTS_MOUNT}:rw", folder.display())];
                if !spec.inputs.is_empty() {
                    let inputs = root.join(inputs_folder(run.job_id, run.attempt));
                    binds.push(format!("{}:{INPUTS_MOUNT}:ro", inputs.display()));
                }
                binds
            }),
            ..Default::default()
        };
        let (entrypoint, cmd) = if spec.command.is_empty() {
            (None, (!spec.args.is_empty()).then(|| spec.args.clone()))
        } else {
            (Some(spec.command.clone()), Some(spec.args.clone()))
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint,
            cmd,
            env: Some(
                spec.env
                    .iter()
                    .filter(|(k, _)| !super::is_gpu_env(k))
                    .map(|(k, v)| format!("{k}={v}"))
                    // Last: the engine lets a later entry of a name win, and the filter above
                    // leaves no earlier one anyway.
                    .chain(
                        super::gpu_env(&run.gpu_uuids)
                            .into_iter()
                            .map(|(k, v)| format!("{k}={v}")),
                    )
                    .chain(
                        options
                            .outputs_root
                            .is_some()
                            .then(|| format!("GANTRY_OUTPUT_DIR={OUTPUTS_MOUNT}")),
                    )
                    .chain(
                        (options.outputs_root.is_some() && !spec.inputs.is_empty())
                            .then(|| format!("GANTRY_INPUT_DIR={INPUTS_MOUNT}")),
                    )
                    .collect(),
            ),
            working_dir: spec.working_dir.clone(),
            user: Some(JOB_USER.into()),
            labels: Some(HashMap::from([
                (LABEL_JOB.to_owned(), run.job_id.to_string()),
                (LABEL_ATTEMPT.to_owned(), run.attempt.to_string()),
            ])),
            network_disabled: Some(spec.network == Network::None),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Every container of the attempt, by its labels, stopped or not.
    async fn containers_of(
        &self,
        job_id: JobId,
        attempt: u32,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_JOB}={job_id}"),
                format!("{LABEL_ATTEMPT}={attempt}"),
            ],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        self.docker.list_containers(Some(options)).await
    }

    /// Waits (bounded) for a create-and-start of this attempt that is still in flight, so
    /// what it makes is there to be seen.
    async fn settle_start(&self, job_id: JobId, attempt: u32) {
        let pending = lock(&self.state.starts).get(&(job_id, attempt)).cloned();
        if let Some(mut done) = pending {
            // A closed channel (the task ended or died) counts as done.
            let settled = tokio::time::timeout(SETTLE_START, done.wait_for(|d| *d)).await;
            if settled.is_err() {
                tracing::warn!(job = %job_id, attempt, "a container start still in flight; removing what is there");
            }
        }
    }

    /// Creates and starts the container in a task of its own: dropping the caller never
    /// interrupts an engine call half way, and [`DockerExecutor::settle_start`] can wait for it.
    async fn create_and_start(&self, run: &RunSpec) -> Result<String, Outcome> {
        let key = (run.job_id, run.attempt);
        let (done_tx, done_rx) = watch::channel(false);
        lock(&self.state.starts).insert(key, done_rx.clone());
        let docker = self.docker.clone();
        let name = DockerExecutor::container_name(run.job_id, run.attempt);
        if let Some(root) = &self.options.outputs_root {
            let dir = root.join(outputs_folder(run.job_id, run.attempt));
            prepare_outputs(&dir).map_err(|e| Outcome::Failed {
                message: format!("preparing the output folder {}: {e}", dir.display()),
            })?;
        }
        let mut config = DockerExecutor::config_with(run, &self.options);
        let secrets = (!run.secrets.is_empty()).then(|| secrets_script(&run.secrets));
        if secrets.is_some() {
            let image = if config.entrypoint.is_none() {
                // The wrapper runs what the image would have run.
                let inspected = self
                    .docker
                    .inspect_image(&run.spec.image)
                    .await
                    .map_err(|e| Outcome::Failed {
                        message: format!("inspecting the image for its entrypoint: {e}"),
                    })?;
                inspected
                    .config
                    .map(|c| (c.entrypoint.unwrap_or_default(), c.cmd.unwrap_or_default()))
            } else {
                None
            };
            wrap_for_secrets(&mut config, image);
        }
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            let made = make_container(&docker, name, config, secrets).await;
            let mut starts = lock(&state.starts);
            if starts.get(&key).is_some_and(|r| r.same_channel(&done_rx)) {
                starts.remove(&key);
            }
            let _ = done_tx.send(true);
            made
        });
        task.await.unwrap_or_else(|e| {
            Err(Outcome::Failed {
                message: format!("the container start task ended: {e}"),
            })
        })
    }

    /// The shared wait for `handle`: joins the one in flight, or starts one.
    fn shared_wait(&self, handle: &str, run: &RunSpec) -> Result<(u64, SharedWait), Outcome> {
        let mut waits = lock(&self.state.waits);
        if let Some((_, outcome)) = waits.finished.iter().find(|(h, _)| h == handle) {
            return Err(outcome.clone());
        }
        if let Some((generation, wait)) = waits.in_flight.get(handle) {
            tracing::debug!(container = handle, "joining the wait in flight");
            return Ok((*generation, wait.clone()));
        }
        waits.next += 1;
        let generation = waits.next;
        let task = tokio::spawn(finish(
            self.docker.clone(),
            self.state.clone(),
            generation,
            handle.to_owned(),
            run.log_path.clone(),
            Masker::new(&run.secrets),
        ));
        let wait = async move { task.await.map_err(|e| e.to_string()) }
            .boxed()
            .shared();
        waits
            .in_flight
            .insert(handle.to_owned(), (generation, wait.clone()));
        Ok((generation, wait))
    }
}

/// Removes a container, running or not. A missing one is fine.
async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => tracing::debug!(container = id, "removed"),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => tracing::warn!(container = id, error = %e, "removing a container failed"),
    }
}

/// An attempt's output folder under the outputs root.
fn outputs_folder(job_id: JobId, attempt: u32) -> String {
    format!("{job_id}-{attempt}")
}

/// An attempt's input folder under the outputs root.
fn inputs_folder(job_id: JobId, attempt: u32) -> String {
    format!("{job_id}-{attempt}-inputs")
}

/// A fresh, empty output folder the job's user (uid 1000) may write: handed to it when gantry
/// runs as root, else open to all (inside a root only gantry's user can list).
fn prepare_outputs(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(root) = dir.parent() {
        std::fs::create_dir_all(root)?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))?;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir(dir)?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(dir, Some(1000), Some(1000))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
    }
}

/// What a container with secrets runs first: it reads `export NAME='value'` lines from its
/// stdin (which gantry writes once, then closes), then becomes the job's own command. The
/// values are never in the container's configuration (`docker inspect` shows none), its
/// labels or its filesystem.
const SECRETS_WRAPPER: &str = ". /dev/stdin; exec \"$@\"";

/// The shell lines that set each secret, single-quoted.
fn secrets_script(secrets: &gantry_actors::secrets::SecretValues) -> String {
    secrets
        .iter()
        .map(|(k, v)| format!("export {k}='{}'\n", v.0.replace('\'', "'\\''")))
        .collect()
}

/// Makes the container run [`SECRETS_WRAPPER`] with the job's command (or, `image`, the
/// image's own entrypoint and command) as its arguments, with a stdin to read once.
fn wrap_for_secrets(config: &mut ContainerCreateBody, image: Option<(Vec<String>, Vec<String>)>) {
    let argv: Vec<String> = match config.entrypoint.take() {
        Some(entrypoint) => entrypoint
            .into_iter()
            .chain(config.cmd.take().unwrap_or_default())
            .collect(),
        None => {
            let (entrypoint, image_cmd) = image.unwrap_or_default();
            let cmd = config.cmd.take().unwrap_or(image_cmd);
            entrypoint.into_iter().chain(cmd).collect()
        }
    };
    config.entrypoint = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        SECRETS_WRAPPER.into(),
        "gantry-secrets".into(),
    ]);
    config.cmd = Some(argv);
    config.open_stdin = Some(true);
    config.stdin_once = Some(true);
    config.attach_stdin = Some(true);
}

async fn make_container(
    docker: &Docker,
    name: String,
    config: ContainerCreateBody,
    secrets: Option<String>,
) -> Result<String, Outcome> {
    // A container of this attempt left by a crash: it is not ours to trust.
    remove(docker, &name).await;
    let options = CreateContainerOptions {
        name: Some(name),
        ..Default::default()
    };
    let created = docker
        .create_container(Some(options), config)
        .await
        .map_err(|e| Outcome::Failed {
            message: format!("creating the container: {e}"),
        })?;
    // Attached before the start, so the wrapper's read of stdin finds the secrets.
    let mut stdin = None;
    if secrets.is_some() {
        let options = bollard::query_parameters::AttachContainerOptions {
            stdin: true,
            stream: true,
            ..Default::default()
        };
        match docker.attach_container(&created.id, Some(options)).await {
            Ok(attached) => stdin = Some(attached.input),
            Err(e) => {
                remove(docker, &created.id).await;
                return Err(Outcome::Failed {
                    message: format!("attaching to hand over the secrets: {e}"),
                });
            }
        }
    }
    if let Err(e) = docker.start_container(&created.id, None).await {
        // A failed start leaves a created container behind.
        remove(docker, &created.id).await;
        return Err(Outcome::Failed {
            message: format!("starting the container: {e}"),
        });
    }
    if let (Some(mut input), Some(script)) = (stdin, secrets) {
        let handed = async {
            input.write_all(script.as_bytes()).await?;
            input.flush().await?;
            input.shutdown().await
        };
        if let Err(e) = handed.await {
            remove(docker, &created.id).await;
            return Err(Outcome::Failed {
                message: format!("handing over the secrets: {e}"),
            });
        }
    }
    Ok(created.id)
}

/// One wait, in its own task: copies the output, reads the exit, removes the container, then
/// records the outcome for late callers.
async fn finish(
    docker: Docker,
    state: Arc<State>,
    generation: u64,
    id: String,
    log_path: PathBuf,
    masker: Masker,
) -> Outcome {
    let outcome = collect(&docker, &state, &id, log_path, &masker).await;
    let mut waits = lock(&state.waits);
    if waits
        .in_flight
        .get(&id)
        .is_some_and(|(g, _)| *g == generation)
    {
        waits.in_flight.remove(&id);
    }
    if waits.finished.len() >= FINISHED_KEPT {
        waits.finished.pop_front();
    }
    waits.finished.push_back((id, outcome.clone()));
    outcome
}

async fn collect(
    docker: &Docker,
    state: &State,
    id: &str,
    log_path: PathBuf,
    masker: &Masker,
) -> Outcome {
    // Checked before the log file is touched: a wait on a container that is gone must not
    // truncate the output a finished collector wrote.
    match docker.inspect_container(id, None).await {
        Ok(_) => {}
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Outcome::Failed {
                message: format!("container {id} is gone"),
            };
        }
        Err(e) => {
            return Outcome::Failed {
                message: format!("inspecting container {id}: {e}"),
            };
        }
    }
    state.collectors_started.fetch_add(1, Ordering::SeqCst);
    let running = state.collectors_running.fetch_add(1, Ordering::SeqCst) + 1;
    state.collectors_peak.fetch_max(running, Ordering::SeqCst);
    let options = WaitContainerOptions {
        condition: "not-running".into(),
    };
    let waited = async {
        match docker.wait_container(id, Some(options)).next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // Non-zero exits arrive as this error.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the engine ended the wait without a status".into()),
        }
    };
    // Both in this one task: the collector never outlives the wait that owns it.
    let (code, logs) = tokio::join!(waited, copy_logs(docker, id, &log_path, masker));
    state.collectors_running.fetch_sub(1, Ordering::SeqCst);
    if let Err(error) = logs {
        tracing::warn!(container = id, path = %log_path.display(), %error, "log collection failed");
    }
    let inspected = docker
        .inspect_container(id, None)
        .await
        .ok()
        .and_then(|i| i.state);
    let oom_killed = inspected
        .as_ref()
        .and_then(|s| s.oom_killed)
        .unwrap_or(false);
    let code = code.or_else(|error| {
        // The wait broke, but the engine may still know how it ended.
        inspected
            .as_ref()
            .filter(|s| s.running == Some(false))
            .and_then(|s| s.exit_code)
            .ok_or(error)
    });
    remove(docker, id).await;
    match code {
        Ok(code) => Outcome::Exited { code, oom_killed },
        Err(message) => Outcome::Failed { message },
    }
}

/// Copies the container's output into the attempt log, stdout and stderr in order, one
/// `<timestamp> <stream> <text>` line each. Reads from the container's first line: the file is
/// written anew, so a collector that replaces one that died leaves one complete copy. The
/// attempt's secret values are masked.
async fn copy_logs(
    docker: &Docker,
    id: &str,
    path: &std::path::Path,
    masker: &Masker,
) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        timestamps: true,
        ..Default::default()
    };
    let mut logs = docker.logs(id, Some(options));
    while let Some(chunk) = logs.next().await {
        let (stream, message) = match chunk {
            Ok(bollard::container::LogOutput::StdOut { message }) => ("stdout", message),
            Ok(bollard::container::LogOutput::StdErr { message }) => ("stderr", message),
            Ok(_) => continue,
            Err(e) => return Err(e.to_string()),
        };
        for line in String::from_utf8_lossy(&message).lines() {
            // Docker puts the timestamp first: "<ts> <text>".
            let (stamp, text) = line.split_once(' ').unwrap_or((line, ""));
            let text = masker.mask(text);
            file.write_all(format!("{stamp} {stream} {text}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    file.flush().await.map_err(|e| e.to_string())
}

/// Whole seconds, rounded up: a sub-second timeout still reads as "after 1 s".
fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Executor for DockerExecutor {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn sandboxed(&self) -> bool {
        true
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            self.docker
                .ping()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn start<'a>(&'a self, run: &'a RunSpec) -> BoxFuture<'a, Result<String, Outcome>> {
        async move {
            // Dropping the pull drops its request; the engine then stops pulling for us.
            let pull = tokio::time::timeout(
                self.options.pull_timeout,
                self.ensure_image(&run.spec.image),
            );
            match pull.await {
                Err(_) => {
                    let after_secs = whole_secs(self.options.pull_timeout);
                    tracing::warn!(job = %run.job_id, attempt = run.attempt, image = %run.spec.image, after_secs, "image pull timed out");
                    return Err(Outcome::PullTimedOut { after_secs });
                }
                Ok(Err(reason)) => return Err(Outcome::ImageUnavailable { reason }),
                Ok(Ok(())) => {}
            }
            self.create_and_start(run).await
        }
        .boxed()
    }

    fn wait<'a>(&'a self, handle: &'a str, run: &'a RunSpec) -> BoxFuture<'a, Outcome> {
        async move {
            // A second try only when the first task died without an outcome (its runtime shut
            // down): by then no collector of it runs any more.
            for _ in 0..2 {
                let (generation, wait) = match self.shared_wait(handle, run) {
                    Ok(wait) => wait,
                    Err(finished) => return finished,
                };
                match wait.await {
                    Ok(outcome) => return outcome,
                    Err(error) => {
                        tracing::warn!(container = handle, %error, "a wait task died; starting another");
                        let mut waits = lock(&self.state.waits);
                        if waits
                            .in_flight
                            .get(handle)
                            .is_some_and(|(g, _)| *g == generation)
                        {
                            waits.in_flight.remove(handle);
                        }
                    }
                }
            }
            Outcome::Failed {
                message: format!("waiting for container {handle}: the wait task died twice"),
            }
        }
        .boxed()
    }

    fn resolve<'a>(&'a self, _run: &'a RunSpec, handle: &'a str) -> BoxFuture<'a, Option<String>> {
        async move {
            let inspected = self
                .docker
                .inspect_container(
                    handle,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .ok()?;
            inspected.image
        }
        .boxed()
    }

    fn outputs(&self, job_id: JobId, attempt: u32) -> Option<PathBuf> {
        self.options
            .outputs_root
            .as_ref()
            .map(|root| root.join(outputs_folder(job_id, attempt)))
    }

    fn inputs(&self, job_id: JobId, attempt: u32) -> Option<PathBuf> {
        self.options
            .outputs_root
            .as_ref()
            .map(|root| root.join(inputs_folder(job_id, attempt)))
    }

    fn discard<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, ()> {
        async move {
            self.settle_start(job_id, attempt).await;
            match self.containers_of(job_id, attempt).await {
                Ok(found) => {
                    for id in found.into_iter().filter_map(|c| c.id) {
                        remove(&self.docker, &id).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(job = %job_id, attempt, %error, "listing the attempt's containers failed")
                }
            }
            // Also by name: a container whose labels a listing missed still has it.
            remove(&self.docker, &DockerExecutor::container_name(job_id, attempt)).await;
        }
        .boxed()
    }

    fn kill<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, ()> {
        async move {
            let options = KillContainerOptions {
                signal: "KILL".into(),
            };
            if let Err(e) = self.docker.kill_container(handle, Some(options)).await {
                tracing::debug!(container = handle, error = %e, "kill");
            }
        }
        .boxed()
    }

    fn find<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, Option<Found>> {
        async move {
            self.settle_start(job_id, attempt).await;
            let found = match self.containers_of(job_id, attempt).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(job = %job_id, attempt, %error, "listing the attempt's containers failed");
                    return None;
                }
            };
            let mut running = None;
            // The newest exited one, by creation time.
            let mut exited: Option<(i64, String)> = None;
            let mut others = Vec::new();
            for c in found {
                let Some(id) = c.id else { continue };
                match c.state {
                    Some(
                        ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::PAUSED
                        | ContainerSummaryStateEnum::RESTARTING
                        | ContainerSummaryStateEnum::STOPPING,
                    ) if running.is_none() => running = Some(id),
                    Some(ContainerSummaryStateEnum::EXITED) => {
                        let created = c.created.unwrap_or(0);
                        match exited.take() {
                            Some((t, old)) if t > created => {
                                others.push(id);
                                exited = Some((t, old));
                            }
                            Some((_, old)) => {
                                others.push(old);
                                exited = Some((created, id));
                            }
                            None => exited = Some((created, id)),
                        }
                    }
                    // Created but never started (a start cut short), dead, or a duplicate.
                    _ => others.push(id),
                }
            }
            let found = match (running, exited) {
                (Some(id), exited) => {
                    others.extend(exited.map(|(_, id)| id));
                    Some(Found::Running(id))
                }
                (None, Some((_, id))) => Some(Found::Exited(id)),
                (None, None) => None,
            };
            for id in others {
                tracing::info!(job = %job_id, attempt, container = %id, "removing a stray container of the attempt");
                remove(&self.docker, &id).await;
            }
            found
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_events::event::JobSpec;

    fn run() -> RunSpec {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "t", "image": "busybox", "command": ["sh", "-c", "true"],
            "resources": { "cpu_millis": 500, "memory_bytes": 64u64 << 20 },
        }))
        .expect("spec");
        RunSpec {
            job_id: uuid::Uuid::now_v7(),
            attempt: 2,
            spec,
            gpu_uuids: vec![],
            log_path: PathBuf::from("/nonexistent/attempt-2.log"),
            started_at_ms: None,
            secrets: Default::default(),
        }
    }

    #[test]
    fn the_config_holds_the_sandbox() {
        let options = DockerOptions::default();
        let body = DockerExecutor::config_with(&run(), &options);
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.network_disabled, Some(true));
        let host = body.host_config.expect("host config");
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(512));
        assert_eq!(host.init, Some(true));
        let ulimits = host.ulimits.expect("ulimits");
        assert!(ulimits.contains(&ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(1024),
            hard: Some(1024)
        }));
        assert!(ulimits.iter().any(|u| u.name.as_deref() == Some("nproc")));
        let log = host.log_config.expect("log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let log = log.config.expect("log options");
        assert_eq!(log.get("max-size").map(String::as_str), Some("10m"));
        assert_eq!(log.get("max-file").map(String::as_str), Some("5"));
    }

    #[test]
    fn gpus_reach_the_container_by_uuid() {
        let mut run = run();
        run.gpu_uuids = vec![
            "GPU-aaaaaaaa-0000-0000-0000-000000000001".into(),
            "GPU-bbbbbbbb-0000-0000-0000-000000000002".into(),
        ];
        // A job naming GPUs of its own is overridden (the scheduler also refuses these names).
        run.spec
            .env
            .insert("CUDA_VISIBLE_DEVICES".into(), "0,1,2,3".into());
        run.spec
            .env
            .insert("NVIDIA_VISIBLE_DEVICES".into(), "all".into());
        run.spec.env.insert("KEEP".into(), "me".into());
        let body = DockerExecutor::config(&run);
        let both =
            "GPU-aaaaaaaa-0000-0000-0000-000000000001,GPU-bbbbbbbb-0000-0000-0000-000000000002";
        let env = body.env.expect("env");
        let gpu_lines: Vec<&String> = env
            .iter()
            .filter(|e| e.contains("VISIBLE_DEVICES"))
            .collect();
        assert_eq!(
            gpu_lines,
            [
                &format!("CUDA_VISIBLE_DEVICES={both}"),
                &format!("NVIDIA_VISIBLE_DEVICES={both}"),
            ]
        );
        assert!(env.contains(&"KEEP=me".to_owned()), "{env:?}");
        let requests = body
            .host_config
            .expect("host config")
            .device_requests
            .expect("device requests");
        assert_eq!(
            requests,
            [DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(run.gpu_uuids.clone()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        );
    }

    #[test]
    fn without_gpus_the_container_sees_none() {
        let mut run = run();
        run.spec
            .env
            .insert("NVIDIA_VISIBLE_DEVICES".into(), "all".into());
        let body = DockerExecutor::config(&run);
        let env = body.env.expect("env");
        let gpu_lines: Vec<&str> = env
            .iter()
            .map(String::as_str)
            .filter(|e| e.contains("VISIBLE_DEVICES"))
            .collect();
        assert_eq!(
            gpu_lines,
            ["CUDA_VISIBLE_DEVICES=", "NVIDIA_VISIBLE_DEVICES=void"]
        );
        assert_eq!(body.host_config.expect("host").device_requests, None);
    }

    #[test]
    fn sub_second_timeouts_round_up() {
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::from_secs(600)), 600);
        assert_eq!(whole_secs(Duration::ZERO), 0);
    }
}
