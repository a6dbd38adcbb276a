//! The Docker executor (any Docker-compatible engine, Podman's socket included), through
//! bollard. Sandboxed by default: user 1000:1000, every capability dropped,
//! `no-new-privileges`, read-only root filesystem with a tmpfs `/tmp`, no network unless the
//! job asks, memory (without swap), CPU and pids limits. GPUs are passed as device requests
//! naming the UUIDs reserved for the attempt. Containers are labelled with job and attempt and
//! always removed.

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use gantry_actors::executor::{Executor, Outcome, RunSpec};
use gantry_events::event::{JobId, Network};
use tokio::io::AsyncWriteExt;

/// Label holding the job id.
pub const LABEL_JOB: &str = "gantry.job";
/// Label holding the attempt number.
pub const LABEL_ATTEMPT: &str = "gantry.attempt";
/// Processes one container may start.
const PIDS_LIMIT: i64 = 512;

/// Runs attempts as sandboxed containers.
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    docker: Docker,
}

impl DockerExecutor {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and checks it answers.
    pub async fn connect() -> Result<DockerExecutor, DockerError> {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        docker.ping().await?;
        Ok(DockerExecutor { docker })
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

    /// The container an attempt runs in: image, command, environment and the sandbox.
    pub fn config(run: &RunSpec) -> ContainerCreateBody {
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
            memory_swap: Some(memory),
            nano_cpus: Some(i64::from(resources.cpu_millis) * 1_000_000),
            pids_limit: Some(PIDS_LIMIT),
            device_requests,
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
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            user: Some("1000:1000".into()),
            labels: Some(HashMap::from([
                (LABEL_JOB.to_owned(), run.job_id.to_string()),
                (LABEL_ATTEMPT.to_owned(), run.attempt.to_string()),
            ])),
            network_disabled: Some(spec.network == Network::None),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    async fn remove(&self, id: &str) {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = self.docker.remove_container(id, Some(options)).await {
            tracing::debug!(container = id, error = %e, "remove");
        }
    }

    /// Copies the container's output into the attempt log, stdout and stderr in order.
    async fn collect_logs(
        docker: Docker,
        id: String,
        path: std::path::PathBuf,
    ) -> Result<(), String> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| e.to_string())?;
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            ..Default::default()
        };
        let mut logs = docker.logs(&id, Some(options));
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
                file.write_all(format!("{stamp} {stream} {text}\n").as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        file.flush().await.map_err(|e| e.to_string())
    }
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
            self.ensure_image(&run.spec.image)
                .await
                .map_err(|reason| Outcome::ImageUnavailable { reason })?;
            let name = format!("gantry-{}-{}", run.job_id, run.attempt);
            // A container of this attempt left by a crash: it is not ours to trust.
            self.remove(&name).await;
            let options = CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            };
            let created = self
                .docker
                .create_container(Some(options), Self::config(run))
                .await
                .map_err(|e| Outcome::Failed {
                    message: format!("creating the container: {e}"),
                })?;
            if let Err(e) = self.docker.start_container(&created.id, None).await {
                // A failed start leaves a created container behind.
                self.remove(&created.id).await;
                return Err(Outcome::Failed {
                    message: format!("starting the container: {e}"),
                });
            }
            Ok(created.id)
        }
        .boxed()
    }

    fn wait<'a>(&'a self, handle: &'a str, run: &'a RunSpec) -> BoxFuture<'a, Outcome> {
        async move {
            let logs = tokio::spawn(Self::collect_logs(
                self.docker.clone(),
                handle.to_owned(),
                run.log_path.clone(),
            ));
            let options = WaitContainerOptions {
                condition: "not-running".into(),
            };
            let waited = self
                .docker
                .wait_container(handle, Some(options))
                .next()
                .await;
            let code = match waited {
                Some(Ok(response)) => Ok(response.status_code),
                // Non-zero exits arrive as this error.
                Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the engine ended the wait without a status".into()),
            };
            match logs.await {
                Ok(Err(e)) => {
                    tracing::warn!(container = handle, error = %e, "log collection failed")
                }
                Err(e) => tracing::warn!(container = handle, error = %e, "log task failed"),
                Ok(Ok(())) => {}
            }
            let oom_killed = self
                .docker
                .inspect_container(handle, None)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.oom_killed)
                .unwrap_or(false);
            self.remove(handle).await;
            match code {
                Ok(code) => Outcome::Exited { code, oom_killed },
                Err(message) => Outcome::Failed { message },
            }
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

    fn find<'a>(&'a self, job_id: JobId, attempt: u32) -> BoxFuture<'a, Option<String>> {
        async move {
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
            let found = self.docker.list_containers(Some(options)).await.ok()?;
            let mut running = None;
            for c in found {
                let Some(id) = c.id else { continue };
                let is_running = c
                    .state
                    .map(|s| s.to_string().eq_ignore_ascii_case("running"))
                    .unwrap_or(false);
                if is_running && running.is_none() {
                    running = Some(id);
                } else {
                    self.remove(&id).await;
                }
            }
            running
        }
        .boxed()
    }
}
