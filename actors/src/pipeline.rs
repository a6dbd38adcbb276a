//! Pipelines: named stages, each a job, run in dependency order; a stage reads outputs of the
//! stages it depends on as inputs.
//!
//! [`PipelineRequest`] is the public shape. [`validate_pipeline`] checks it whole at the edge
//! (unique stage names, every reference known, no cycle, every stage's job valid) and names the
//! stage and field at fault. The Scheduler records `pipeline.submitted`; from then on
//! [`Pipelines`] (folded from the log like every other state) decides, as dependencies end,
//! which stages start (`job.submitted` carrying the stage) and which are skipped
//! (`pipeline.stage_skipped`). A pipeline's own state is never recorded: it follows from its
//! stages'.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gantry_events::Event;
use gantry_events::event::{
    ArtifactStored, InputRef, JobId, JobSubmitted, PipelineCancelled, PipelineId, PipelineStage,
    PipelineStageSkipped, PipelineSubmitted, RunIf, StageInput, StageOf,
};
use serde::{Deserialize, Serialize};

use crate::job::{JobState, Jobs};
use crate::spec::{
    Invalid, Limits, MAX_INPUTS, Resolved, SubmitRequest, attach_inputs, attach_secrets,
    check_name, invalid, validate,
};

/// Most stages in one pipeline.
pub const MAX_STAGES: usize = 64;

/// A pipeline as users write it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineRequest {
    pub name: String,
    pub stages: Vec<StageRequest>,
}

/// One stage as users write it: a job, what it waits for and what it reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    pub name: String,
    /// Stages that must end before this one starts.
    #[serde(default)]
    pub after: Vec<String>,
    /// `on_success` (the default: skipped when a dependency did not succeed) or `always`.
    #[serde(default)]
    pub run_if: RunIf,
    /// Outputs of earlier stages to read; a stage named here is waited for like `after`.
    #[serde(default)]
    pub inputs: Vec<StageInputRequest>,
    /// The job (its `name` defaults to the stage's).
    pub job: SubmitRequest,
}

/// An earlier stage's output a stage reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageInputRequest {
    pub stage: String,
    pub artifact: String,
    /// Where the job finds it under `$GANTRY_INPUT_DIR` (default: the artifact's name).
    #[serde(default)]
    pub path: Option<String>,
}

/// A checked pipeline: its name and its stages, each after its dependencies.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPipeline {
    pub name: String,
    pub stages: Vec<PipelineStage>,
}

/// The job a stage runs, as it is validated: its name defaults to the stage's.
pub fn stage_job(stage: &StageRequest) -> SubmitRequest {
    let mut job = stage.job.clone();
    if job.name.is_empty() {
        job.name.clone_from(&stage.name);
    }
    job
}

/// Checks a whole pipeline, with what the gateway resolved for each stage's job (`resolved`,
/// one per stage, in order). Stages come back ordered so that each follows its dependencies
/// (ties keep the order they were written in).
pub fn validate_pipeline(
    req: &PipelineRequest,
    resolved: &[Resolved],
    group: &str,
    limits: &Limits,
) -> Result<ValidPipeline, Invalid> {
    check_name("name", &req.name, 128)?;
    if req.stages.is_empty() || req.stages.len() > MAX_STAGES {
        return Err(invalid(
            "out_of_range",
            "stages",
            format!("1 to {MAX_STAGES} stages"),
        ));
    }
    if resolved.len() != req.stages.len() {
        return Err(invalid(
            "input_not_resolved",
            "stages",
            "the stages' secrets and inputs were not resolved",
        ));
    }
    let mut index = BTreeMap::new();
    for (i, stage) in req.stages.iter().enumerate() {
        check_name(&format!("stages[{i}].name"), &stage.name, 64)?;
        if index.insert(stage.name.as_str(), i).is_some() {
            return Err(invalid(
                "duplicate_name",
                format!("stages[{i}].name"),
                format!("two stages are named {:?}", stage.name),
            ));
        }
    }
    let mut stages = Vec::with_capacity(req.stages.len());
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(req.stages.len());
    for (i, (stage, resolved)) in req.stages.iter().zip(resolved).enumerate() {
        let at = format!("stages[{i}]");
        let (spec, mine) = stage_spec(stage, resolved, group, limits, &at, &index)?;
        stages.push(spec);
        deps.push(mine);
    }
    let order = topological(&deps).map_err(|cycle| {
        let names: Vec<&str> = cycle.iter().map(|&i| req.stages[i].name.as_str()).collect();
        invalid(
            "cycle",
            format!("stages[{}].after", cycle[0]),
            format!("the stages {} wait for each other", names.join(", ")),
        )
    })?;
    let mut slots: Vec<Option<PipelineStage>> = stages.into_iter().map(Some).collect();
    Ok(ValidPipeline {
        name: req.name.clone(),
        stages: order.into_iter().filter_map(|i| slots[i].take()).collect(),
    })
}

/// One stage checked: its recorded form and the indices of the stages it waits for.
fn stage_spec(
    stage: &StageRequest,
    resolved: &Resolved,
    group: &str,
    limits: &Limits,
    at: &str,
    index: &BTreeMap<&str, usize>,
) -> Result<(PipelineStage, Vec<usize>), Invalid> {
    let job = stage_job(stage);
    let within = format!("{at}.job");
    for (field, set) in [
        ("idempotency_key", job.idempotency_key.is_some()),
        ("reject_unschedulable", job.reject_unschedulable),
    ] {
        if set {
            return Err(invalid(
                "not_in_pipeline",
                format!("{within}.{field}"),
                "not taken for a pipeline's stage",
            ));
        }
    }
    let mut spec = validate(&job, limits).map_err(|e| e.within(&within))?;
    attach_secrets(&mut spec, &job, &resolved.secrets, group).map_err(|e| e.within(&within))?;
    attach_inputs(&mut spec, &job, &resolved.inputs).map_err(|e| e.within(&within))?;

    let known = |field: String, name: &str| -> Result<usize, Invalid> {
        match index.get(name) {
            Some(_) if name == stage.name => Err(invalid(
                "self_dependency",
                field,
                "a stage cannot wait for itself",
            )),
            Some(&i) => Ok(i),
            None => Err(invalid(
                "unknown_stage",
                field,
                format!("no stage named {name:?}"),
            )),
        }
    };
    let mut mine = Vec::new();
    let mut after = Vec::new();
    for (j, name) in stage.after.iter().enumerate() {
        let i = known(format!("{at}.after[{j}]"), name)?;
        if mine.contains(&i) {
            return Err(invalid(
                "duplicate_name",
                format!("{at}.after[{j}]"),
                format!("{name:?} is listed twice"),
            ));
        }
        mine.push(i);
        after.push(name.clone());
    }
    if spec.inputs.len() + stage.inputs.len() > MAX_INPUTS {
        return Err(invalid(
            "too_many",
            format!("{at}.inputs"),
            format!("at most {MAX_INPUTS} inputs, the job's own included"),
        ));
    }
    let mut paths: BTreeSet<String> = spec.inputs.iter().map(|i| i.path.clone()).collect();
    let mut inputs = Vec::new();
    for (j, input) in stage.inputs.iter().enumerate() {
        let field = format!("{at}.inputs[{j}]");
        let i = known(format!("{field}.stage"), &input.stage)?;
        if !crate::artifacts::valid_name(&input.artifact) {
            return Err(invalid(
                "invalid_name",
                format!("{field}.artifact"),
                "a relative path of at most 512 bytes, without . or .. parts",
            ));
        }
        let path = input.path.clone().unwrap_or_else(|| input.artifact.clone());
        if !crate::artifacts::valid_name(&path) {
            return Err(invalid(
                "invalid_path",
                format!("{field}.path"),
                "a relative path of at most 512 bytes, without . or .. parts",
            ));
        }
        if !paths.insert(path.clone()) {
            return Err(invalid(
                "duplicate_path",
                format!("{field}.path"),
                "two inputs at one path",
            ));
        }
        if !mine.contains(&i) {
            mine.push(i);
            after.push(input.stage.clone());
        }
        inputs.push(StageInput {
            stage: input.stage.clone(),
            artifact: input.artifact.clone(),
            path,
        });
    }
    Ok((
        PipelineStage {
            name: stage.name.clone(),
            after,
            run_if: stage.run_if,
            inputs,
            spec: Box::new(spec),
        },
        mine,
    ))
}

/// Kahn's algorithm, taking the lowest ready index first: an order where every node follows
/// its dependencies, or the nodes left in (or behind) a cycle.
fn topological(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); deps.len()];
    for (i, mine) in deps.iter().enumerate() {
        for &d in mine {
            dependents[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..deps.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &n in &dependents[i] {
            waiting[n] -= 1;
            if waiting[n] == 0 {
                ready.insert(n);
            }
        }
    }
    if order.len() == deps.len() {
        return Ok(order);
    }
    Err((0..deps.len()).filter(|&i| waiting[i] > 0).collect())
}

/// Where a live pipeline's stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    /// Its dependencies have not all ended.
    Waiting,
    /// Its job was submitted.
    Started(JobId),
    Skipped,
}

#[derive(Debug, Serialize, Deserialize)]
struct LiveStage {
    stage: PipelineStage,
    deps: Vec<usize>,
    status: Status,
}

#[derive(Debug, Serialize, Deserialize)]
struct Live {
    by: Option<String>,
    group: Option<String>,
    cancelled: bool,
    stages: Vec<LiveStage>,
}

/// The pipelines with stages still to run or running, folded from the log. A pipeline is
/// forgotten once every stage has ended (its view keeps it), so memory follows live pipelines,
/// not history.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Pipelines {
    live: HashMap<PipelineId, Live>,
    /// The stage each live pipeline's job runs.
    of_job: HashMap<JobId, (PipelineId, usize)>,
    /// Outputs of live pipelines' jobs, by name (the latest attempt's).
    outputs: HashMap<JobId, HashMap<String, ArtifactStored>>,
    /// Pipelines that may have a stage to start or skip (a cache: rebuilt from the log, it
    /// holds every live pipeline, which costs one look each).
    dirty: BTreeSet<PipelineId>,
}

impl Pipelines {
    pub fn apply_submitted(&mut self, p: &PipelineSubmitted) {
        let index: HashMap<&str, usize> = p
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let stages = p
            .stages
            .iter()
            .map(|stage| LiveStage {
                deps: stage
                    .after
                    .iter()
                    .filter_map(|name| index.get(name.as_str()).copied())
                    .collect(),
                stage: stage.clone(),
                status: Status::Waiting,
            })
            .collect();
        self.live.insert(
            p.pipeline_id,
            Live {
                by: p.by.clone(),
                group: p.group.clone(),
                cancelled: false,
                stages,
            },
        );
        self.dirty.insert(p.pipeline_id);
    }

    /// A stage's job was submitted.
    pub fn apply_job_submitted(&mut self, s: &JobSubmitted) {
        let Some(of) = &s.pipeline else { return };
        let Some(live) = self.live.get_mut(&of.pipeline_id) else {
            return;
        };
        if let Some(i) = live.stages.iter().position(|st| st.stage.name == of.stage) {
            live.stages[i].status = Status::Started(s.job_id);
            self.of_job.insert(s.job_id, (of.pipeline_id, i));
        }
    }

    pub fn apply_skipped(&mut self, s: &PipelineStageSkipped, jobs: &Jobs) {
        if let Some(live) = self.live.get_mut(&s.pipeline_id)
            && let Some(stage) = live.stages.iter_mut().find(|st| st.stage.name == s.stage)
        {
            stage.status = Status::Skipped;
        }
        self.changed(s.pipeline_id, jobs);
    }

    pub fn apply_cancelled(&mut self, c: &PipelineCancelled, jobs: &Jobs) {
        if let Some(live) = self.live.get_mut(&c.pipeline_id) {
            live.cancelled = true;
        }
        self.changed(c.pipeline_id, jobs);
    }

    /// An output of a job was stored: kept while its pipeline is live, for later stages.
    pub fn apply_stored(&mut self, a: &ArtifactStored) {
        if !self.of_job.contains_key(&a.job_id) {
            return;
        }
        let outputs = self.outputs.entry(a.job_id).or_default();
        if outputs.get(&a.name).is_none_or(|o| o.attempt <= a.attempt) {
            outputs.insert(a.name.clone(), a.clone());
        }
    }

    /// A job reached a terminal state.
    pub fn job_ended(&mut self, id: JobId, jobs: &Jobs) {
        if let Some(&(pipeline, _)) = self.of_job.get(&id) {
            self.changed(pipeline, jobs);
        }
    }

    /// Marks a pipeline for a look, or forgets it when every stage has ended.
    fn changed(&mut self, id: PipelineId, jobs: &Jobs) {
        let Some(live) = self.live.get(&id) else {
            return;
        };
        let ended = live.stages.iter().all(|st| match st.status {
            Status::Waiting => false,
            Status::Skipped => true,
            Status::Started(job) => ended(jobs, job).is_some(),
        });
        if !ended {
            self.dirty.insert(id);
            return;
        }
        if let Some(live) = self.live.remove(&id) {
            for stage in live.stages {
                if let Status::Started(job) = stage.status {
                    self.of_job.remove(&job);
                    self.outputs.remove(&job);
                }
            }
        }
        self.dirty.remove(&id);
    }

    /// Live pipelines.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The stages that can be decided now: started (their dependencies ended and allow it,
    /// and every input they read was stored) or skipped. Pipelines with nothing to decide are
    /// not looked at again until something about them is applied.
    pub fn decide(&mut self, jobs: &Jobs) -> Vec<Event> {
        let mut events = Vec::new();
        let mut idle = Vec::new();
        for &id in &self.dirty {
            let Some(live) = self.live.get(&id) else {
                idle.push(id);
                continue;
            };
            let before = events.len();
            for stage in &live.stages {
                if stage.status != Status::Waiting || live.cancelled {
                    continue;
                }
                if let Some(event) = self.decide_stage(id, live, stage, jobs) {
                    events.push(event);
                }
            }
            if events.len() == before {
                idle.push(id);
            }
        }
        for id in idle {
            self.dirty.remove(&id);
        }
        events
    }

    fn decide_stage(
        &self,
        id: PipelineId,
        live: &Live,
        stage: &LiveStage,
        jobs: &Jobs,
    ) -> Option<Event> {
        let skip = |reason: String| {
            Some(Event::from(PipelineStageSkipped {
                pipeline_id: id,
                stage: stage.stage.name.clone(),
                reason,
            }))
        };
        let mut failed = None;
        for &d in &stage.deps {
            let dep = &live.stages[d];
            let outcome = match dep.status {
                Status::Waiting => return None,
                Status::Skipped => "skipped",
                Status::Started(job) => ended(jobs, job)?.as_str(),
            };
            if outcome != JobState::Succeeded.as_str() && failed.is_none() {
                failed = Some((dep.stage.name.as_str(), outcome));
            }
        }
        if let Some((name, outcome)) = failed
            && stage.stage.run_if == RunIf::OnSuccess
        {
            return skip(format!("dependency {name} did not succeed ({outcome})"));
        }
        let mut spec = (*stage.stage.spec).clone();
        for input in &stage.stage.inputs {
            let from = live
                .stages
                .iter()
                .find(|st| st.stage.name == input.stage)
                .map(|st| st.status);
            let Some(Status::Started(job)) = from else {
                return skip(format!("input stage {} did not run", input.stage));
            };
            let Some(stored) = self.outputs.get(&job).and_then(|o| o.get(&input.artifact)) else {
                return skip(format!(
                    "stage {} stored no artifact {:?}",
                    input.stage, input.artifact
                ));
            };
            spec.inputs.push(InputRef {
                from: job,
                artifact: input.artifact.clone(),
                path: input.path.clone(),
                sha256: stored.sha256,
                size_bytes: stored.size_bytes,
                location: stored.location.clone(),
            });
        }
        Some(
            JobSubmitted {
                job_id: uuid::Uuid::now_v7(),
                spec: Box::new(spec),
                by: live.by.clone(),
                group: live.group.clone(),
                pipeline: Some(StageOf {
                    pipeline_id: id,
                    stage: stage.stage.name.clone(),
                }),
            }
            .into(),
        )
    }

    /// Cancelling a pipeline: recorded, its waiting stages skipped and its jobs' cancels asked
    /// for, all in one batch. Asking twice records nothing new.
    pub fn decide_cancel(
        &self,
        id: PipelineId,
        reason: Option<String>,
        by: Option<String>,
        jobs: &Jobs,
    ) -> Option<Vec<Event>> {
        let live = self.live.get(&id)?;
        if live.cancelled {
            return Some(Vec::new());
        }
        let mut events: Vec<Event> = vec![
            PipelineCancelled {
                pipeline_id: id,
                reason: reason.clone(),
                by: by.clone(),
            }
            .into(),
        ];
        for stage in &live.stages {
            match stage.status {
                Status::Waiting => events.push(
                    PipelineStageSkipped {
                        pipeline_id: id,
                        stage: stage.stage.name.clone(),
                        reason: "pipeline cancelled".into(),
                    }
                    .into(),
                ),
                Status::Started(job) => {
                    if let Some(job) = jobs.get(&job)
                        && let Ok(cancel) = job.cancel(reason.clone(), by.clone())
                    {
                        events.extend(cancel);
                    }
                }
                Status::Skipped => {}
            }
        }
        Some(events)
    }
}

/// The job's terminal state, once it has one.
fn ended(jobs: &Jobs, id: JobId) -> Option<JobState> {
    jobs.state(&id).filter(|s| s.is_terminal())
}

#[cfg(test)]
mod tests {
    use gantry_events::event::{
        FailureCause, JobDeadLettered, JobFailed, JobPlaced, JobStarted, JobSucceeded, NodeJoined,
    };
    use gantry_events::{Hash, event::JobEvent};

    use super::*;
    use crate::world::World;

    fn stage(name: &str, after: &[&str]) -> StageRequest {
        StageRequest {
            name: name.into(),
            after: after.iter().map(|s| (*s).to_owned()).collect(),
            job: SubmitRequest {
                image: "busybox".into(),
                command: vec!["true".into()],
                ..SubmitRequest::default()
            },
            ..StageRequest::default()
        }
    }

    fn pipeline(stages: Vec<StageRequest>) -> PipelineRequest {
        PipelineRequest {
            name: "p".into(),
            stages,
        }
    }

    fn check(req: &PipelineRequest) -> Result<ValidPipeline, Invalid> {
        let resolved = vec![Resolved::default(); req.stages.len()];
        validate_pipeline(req, &resolved, "default", &Limits::default())
    }

    fn names(valid: &ValidPipeline) -> Vec<&str> {
        valid.stages.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn stages_come_back_after_their_dependencies_and_inputs_wait_like_after() {
        let mut report = stage("report", &["train"]);
        report.run_if = RunIf::Always;
        let mut train = stage("train", &[]);
        train.inputs = vec![StageInputRequest {
            stage: "prepare".into(),
            artifact: "data.csv".into(),
            path: None,
        }];
        let valid = check(&pipeline(vec![report, train, stage("prepare", &[])])).expect("valid");
        assert_eq!(names(&valid), ["prepare", "train", "report"]);
        let train = &valid.stages[1];
        assert_eq!(train.after, ["prepare"], "an input's stage is waited for");
        assert_eq!(
            train.inputs[0].path, "data.csv",
            "the path defaults to the name"
        );
        assert_eq!(train.spec.name, "train", "a stage's job is named after it");
    }

    #[test]
    fn a_bad_pipeline_is_refused_naming_the_stage_and_field() {
        let cases: Vec<(PipelineRequest, &str, &str)> = vec![
            (pipeline(vec![]), "out_of_range", "stages"),
            (
                pipeline(vec![stage("a", &[]), stage("a", &[])]),
                "duplicate_name",
                "stages[1].name",
            ),
            (
                pipeline(vec![stage("a", &[]), stage("b", &["c"])]),
                "unknown_stage",
                "stages[1].after[0]",
            ),
            (
                pipeline(vec![stage("a", &["a"])]),
                "self_dependency",
                "stages[0].after[0]",
            ),
            (
                pipeline(vec![
                    stage("x", &[]),
                    stage("a", &["b"]),
                    stage("b", &["a"]),
                ]),
                "cycle",
                "stages[1].after",
            ),
            (
                pipeline(vec![stage("bad name", &[])]),
                "invalid_name",
                "stages[0].name",
            ),
            (
                pipeline(vec![StageRequest {
                    job: SubmitRequest {
                        image: String::new(),
                        ..SubmitRequest::default()
                    },
                    ..stage("a", &[])
                }]),
                "invalid_image",
                "stages[0].job.image",
            ),
            (
                pipeline(vec![StageRequest {
                    job: SubmitRequest {
                        profile: Some("h100".into()),
                        ..stage("a", &[]).job
                    },
                    ..stage("a", &[])
                }]),
                "unknown_profile",
                "stages[0].job.profile",
            ),
            (
                pipeline(vec![
                    stage("a", &[]),
                    StageRequest {
                        inputs: vec![StageInputRequest {
                            stage: "a".into(),
                            artifact: "../etc/passwd".into(),
                            path: None,
                        }],
                        ..stage("b", &[])
                    },
                ]),
                "invalid_name",
                "stages[1].inputs[0].artifact",
            ),
            (
                pipeline(vec![StageRequest {
                    job: SubmitRequest {
                        idempotency_key: Some("k".into()),
                        ..stage("a", &[]).job
                    },
                    ..stage("a", &[])
                }]),
                "not_in_pipeline",
                "stages[0].job.idempotency_key",
            ),
        ];
        for (req, code, field) in cases {
            let err = check(&req).expect_err(field);
            assert_eq!((err.code, err.field.as_str()), (code, field), "{err}");
        }
    }

    #[test]
    fn a_profile_gives_resources_the_request_does_not_set() {
        let limits = Limits {
            profiles: BTreeMap::from([(
                "h100".to_owned(),
                crate::spec::ResourceRequest {
                    cpus: Some(8.0),
                    memory_bytes: Some(64 << 30),
                    gpus: Some(crate::spec::GpuAsk {
                        count: 1,
                        model: Some("H100".into()),
                        min_memory_bytes: None,
                    }),
                },
            )]),
            ..Limits::default()
        };
        let mut req = stage("a", &[]).job;
        req.name = "a".into();
        req.profile = Some("h100".into());
        req.resources.memory_bytes = Some(1 << 30);
        let spec = validate(&req, &limits).expect("valid");
        assert_eq!(spec.resources.cpu_millis, 8000);
        assert_eq!(
            spec.resources.memory_bytes,
            1 << 30,
            "the request's own wins"
        );
        assert_eq!(spec.resources.gpus.count, 1);
        assert_eq!(spec.resources.gpus.model.as_deref(), Some("H100"));
    }

    /// A world with one node, and a log to commit to.
    struct Fixture {
        world: World,
        seq: u64,
    }

    impl Fixture {
        fn new() -> Fixture {
            let mut f = Fixture {
                world: World::default(),
                seq: 0,
            };
            f.commit(vec![
                NodeJoined {
                    node_id: "n1".into(),
                    hostname: "n1".into(),
                    cpu_millis: 64_000,
                    memory_bytes: 64 << 30,
                    gpus: vec![],
                    executor: "process".into(),
                    labels: Default::default(),
                }
                .into(),
            ]);
            f
        }

        fn commit(&mut self, events: Vec<Event>) {
            for e in events {
                self.seq += 1;
                self.world.apply(self.seq, 0, &e);
            }
        }

        /// Decides pipeline steps and commits them; returns them.
        fn step(&mut self) -> Vec<Event> {
            let events = self.world.decide_pipelines();
            self.commit(events.clone());
            events
        }

        /// Runs a submitted job to its end: placed, started, its outputs stored, then
        /// succeeded (`ok`) or dead-lettered.
        fn run(&mut self, job: JobId, outputs: &[&str], ok: bool) {
            self.commit(vec![
                JobPlaced {
                    job_id: job,
                    attempt: 1,
                    node_id: "n1".into(),
                    gpu_uuids: vec![],
                }
                .into(),
                JobStarted {
                    job_id: job,
                    attempt: 1,
                    node_id: "n1".into(),
                    handle: None,
                    limits_enforced: None,
                    image: None,
                }
                .into(),
            ]);
            for name in outputs {
                let sha256 = Hash::of(name.as_bytes());
                self.commit(vec![
                    ArtifactStored {
                        job_id: job,
                        attempt: 1,
                        name: (*name).to_owned(),
                        location: format!("sha256/{}", sha256.to_hex()),
                        sha256,
                        size_bytes: name.len() as u64,
                        content_type: None,
                    }
                    .into(),
                ]);
            }
            let end: Vec<Event> = if ok {
                vec![
                    JobSucceeded {
                        job_id: job,
                        attempt: 1,
                        duration_ms: 1,
                    }
                    .into(),
                ]
            } else {
                vec![
                    JobFailed {
                        job_id: job,
                        attempt: 1,
                        cause: FailureCause::NonZeroExit { code: 1 },
                        duration_ms: None,
                    }
                    .into(),
                    JobDeadLettered {
                        job_id: job,
                        attempts: 1,
                        last_cause: FailureCause::NonZeroExit { code: 1 },
                    }
                    .into(),
                ]
            };
            self.commit(end);
        }

        fn submit(&mut self, req: &PipelineRequest) -> PipelineId {
            let resolved = vec![Resolved::default(); req.stages.len()];
            let (id, _, events) = self
                .world
                .decide_pipeline(req, None, &resolved, false)
                .expect("valid");
            self.commit(events);
            id
        }
    }

    /// The stage names and jobs of `job.submitted` events, and the skipped stages.
    fn started(events: &[Event]) -> Vec<(String, JobSubmitted)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Job(JobEvent::Submitted(s)) => {
                    Some((s.pipeline.clone().expect("a stage").stage, s.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn skipped(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Pipeline(gantry_events::event::PipelineEvent::StageSkipped(s)) => {
                    Some(s.stage.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn two_stages_and_a_report() -> PipelineRequest {
        let mut train = stage("train", &[]);
        train.inputs = vec![StageInputRequest {
            stage: "prepare".into(),
            artifact: "data.csv".into(),
            path: Some("in/data.csv".into()),
        }];
        let mut report = stage("report", &["train"]);
        report.run_if = RunIf::Always;
        pipeline(vec![stage("prepare", &[]), train, report])
    }

    #[test]
    fn stages_start_as_dependencies_succeed_with_their_outputs_as_inputs() {
        let mut f = Fixture::new();
        f.submit(&two_stages_and_a_report());
        let first = started(&f.step());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, "prepare");
        assert!(f.step().is_empty(), "nothing more until prepare ends");
        f.run(first[0].1.job_id, &["data.csv"], true);
        let second = started(&f.step());
        assert_eq!(second.len(), 1);
        let (name, train) = &second[0];
        assert_eq!(name, "train");
        let input = &train.spec.inputs[0];
        assert_eq!(input.from, first[0].1.job_id);
        assert_eq!(input.path, "in/data.csv");
        assert_eq!(input.sha256, Hash::of(b"data.csv"));
        f.run(train.job_id, &[], true);
        let third = started(&f.step());
        assert_eq!(third[0].0, "report");
        f.run(third[0].1.job_id, &[], true);
        assert!(f.world.decide_pipelines().is_empty());
        assert_eq!(
            f.world.pipelines_live(),
            0,
            "an ended pipeline is forgotten"
        );
    }

    #[test]
    fn a_failed_dependency_skips_its_dependents_unless_they_run_always() {
        let mut f = Fixture::new();
        f.submit(&two_stages_and_a_report());
        let first = started(&f.step());
        f.run(first[0].1.job_id, &[], false);
        let events = f.step();
        assert_eq!(skipped(&events), ["train"]);
        // The report runs always, once train (skipped) has ended.
        let events = f.step();
        assert_eq!(started(&events)[0].0, "report");
    }

    #[test]
    fn a_missing_input_skips_the_stage_that_reads_it() {
        let mut f = Fixture::new();
        f.submit(&two_stages_and_a_report());
        let first = started(&f.step());
        f.run(first[0].1.job_id, &["other.csv"], true);
        let events = f.step();
        assert_eq!(skipped(&events), ["train"]);
        let Event::Pipeline(gantry_events::event::PipelineEvent::StageSkipped(s)) = &events[0]
        else {
            panic!("a skip")
        };
        assert!(s.reason.contains("data.csv"), "{}", s.reason);
    }

    #[test]
    fn cancelling_skips_waiting_stages_and_cancels_running_ones_once() {
        let mut f = Fixture::new();
        let id = f.submit(&two_stages_and_a_report());
        let first = started(&f.step());
        let cancel = f
            .world
            .decide_cancel_pipeline(id, Some("stop".into()), None)
            .expect("live");
        let types: Vec<&str> = cancel.iter().map(Event::type_name).collect();
        assert_eq!(
            types,
            [
                "pipeline.cancelled",
                "job.cancel_requested",
                "job.cancelled",
                "pipeline.stage_skipped",
                "pipeline.stage_skipped"
            ]
        );
        f.commit(cancel);
        assert!(f.step().is_empty(), "a cancelled pipeline starts nothing");
        assert_eq!(
            f.world.state_of(&first[0].1.job_id),
            Some(JobState::Cancelled)
        );
        assert!(matches!(
            f.world.decide_cancel_pipeline(id, None, None),
            Err(crate::world::Refusal::PipelineEnded(_))
        ));
    }

    #[test]
    fn replaying_the_log_gives_the_same_pipeline_decisions() {
        let mut f = Fixture::new();
        let mut log: Vec<Event> = Vec::new();
        let req = two_stages_and_a_report();
        let resolved = vec![Resolved::default(); 3];
        let (_, _, events) = f
            .world
            .decide_pipeline(&req, None, &resolved, false)
            .expect("valid");
        log.extend(events.clone());
        f.commit(events);
        let first = f.step();
        log.extend(first.clone());
        let job = started(&first)[0].1.job_id;
        f.run(job, &["data.csv"], true);
        // A world rebuilt from scratch from the same events decides the same next stage.
        let mut replayed = Fixture::new();
        replayed.commit(log);
        replayed.run(job, &["data.csv"], true);
        let a = started(&f.step());
        let b = started(&replayed.step());
        assert_eq!(a[0].0, b[0].0);
        assert_eq!(a[0].1.spec, b[0].1.spec);
    }
}
