//! Where jobs run: node capacity, the queues, and the placement decision. Plain data, no IO.
//!
//! Placement cost must not grow with the fleet: nodes are indexed by free CPU (and, for GPU
//! jobs, by free GPU count), so a placement walks an ordered range from the smallest node that
//! could fit instead of every node. Nodes that already hold the job's image (they pulled it or
//! ran it) are tried first, so fleets drain work by model instead of pulling and swapping.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use gantry_events::event::{Gpu, JobId, PendingReason, Resources};
use serde::Serialize;

/// Candidates examined per placement before giving up on a job for this round.
const SCAN_LIMIT: usize = 256;
/// Image-holding nodes tried first.
const AFFINITY_LIMIT: usize = 32;

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    /// An operator stopped new work going there.
    Cordoned,
    /// Leaving: no new work; what runs there finishes or is handed back.
    Draining,
    /// Silent past the heartbeat timeout; its attempts were re-placed.
    Lost,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Cordoned => "cordoned",
            NodeStatus::Draining => "draining",
            NodeStatus::Lost => "lost",
        }
    }
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Node {
    pub id: String,
    pub executor: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
    pub free_cpu_millis: u32,
    pub free_memory_bytes: u64,
    /// UUIDs of GPUs not reserved by a job.
    pub free_gpus: BTreeSet<String>,
    /// `ready`, `cordoned`, `draining` or `lost`: what the log last said of it.
    pub status: NodeStatus,
    /// Images this node pulled or ran.
    pub images: HashSet<String>,
}

impl Node {
    /// Whether it takes new work: only a `ready` node does.
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready
    }
}

/// What one running attempt holds on its node.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct Reservation {
    node: String,
    cpu_millis: u32,
    memory_bytes: u64,
    gpus: Vec<String>,
}

/// All nodes, with the indexes placement walks.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct Cluster {
    nodes: HashMap<String, Node>,
    by_free_cpu: BTreeSet<(u32, String)>,
    by_free_gpus: BTreeSet<(usize, String)>,
    by_image: HashMap<String, BTreeSet<String>>,
    reservations: HashMap<JobId, Reservation>,
    /// Bumped when a node joins, changes its GPUs or stops taking work: what could ever fit
    /// where changed, so pending reasons are worth working out again.
    generation: u64,
}

impl Cluster {
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Changes with the fleet's shape (not with reservations).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn unindex(&mut self, id: &str) {
        if let Some(n) = self.nodes.get(id) {
            self.by_free_cpu.remove(&(n.free_cpu_millis, n.id.clone()));
            self.by_free_gpus.remove(&(n.free_gpus.len(), n.id.clone()));
        }
    }

    fn index(&mut self, id: &str) {
        if let Some(n) = self.nodes.get(id)
            && n.schedulable()
        {
            self.by_free_cpu.insert((n.free_cpu_millis, n.id.clone()));
            if !n.free_gpus.is_empty() {
                self.by_free_gpus.insert((n.free_gpus.len(), n.id.clone()));
            }
        }
    }

    /// A node joined (or re-joined with new capacity). Reservations already held on it stay.
    pub fn join(
        &mut self,
        id: &str,
        executor: &str,
        cpu_millis: u32,
        memory_bytes: u64,
        gpus: Vec<Gpu>,
    ) {
        self.unindex(id);
        let held: Vec<Reservation> = self
            .reservations
            .values()
            .filter(|r| r.node == id)
            .cloned()
            .collect();
        let before = self.nodes.remove(id);
        // A cordon outlives the node's restarts; lost and draining end with a join.
        let status = match before.as_ref().map(|n| n.status) {
            Some(NodeStatus::Cordoned) => NodeStatus::Cordoned,
            _ => NodeStatus::Ready,
        };
        let images = before.map(|n| n.images).unwrap_or_default();
        let mut node = Node {
            id: id.to_owned(),
            executor: executor.to_owned(),
            cpu_millis,
            memory_bytes,
            free_gpus: gpus.iter().map(|g| g.uuid.clone()).collect(),
            gpus,
            free_cpu_millis: cpu_millis,
            free_memory_bytes: memory_bytes,
            status,
            images,
        };
        for r in &held {
            node.free_cpu_millis = node.free_cpu_millis.saturating_sub(r.cpu_millis);
            node.free_memory_bytes = node.free_memory_bytes.saturating_sub(r.memory_bytes);
            for g in &r.gpus {
                node.free_gpus.remove(g);
            }
        }
        self.nodes.insert(id.to_owned(), node);
        self.index(id);
        self.generation += 1;
    }

    /// The node's GPUs changed.
    pub fn observe_gpus(&mut self, id: &str, gpus: Vec<Gpu>) {
        if let Some(n) = self.nodes.get(id) {
            let (executor, cpu, mem) = (n.executor.clone(), n.cpu_millis, n.memory_bytes);
            let status = n.status;
            self.join(id, &executor, cpu, mem, gpus);
            if status != NodeStatus::Ready {
                self.set_status(id, status);
            }
        }
    }

    /// The node's status changed: only a `ready` node takes new work; the reservations of
    /// what runs there stay until those attempts end.
    pub fn set_status(&mut self, id: &str, status: NodeStatus) {
        self.unindex(id);
        if let Some(n) = self.nodes.get_mut(id) {
            n.status = status;
        }
        self.index(id);
        self.generation += 1;
    }

    /// Records that `node` holds `image`.
    pub fn saw_image(&mut self, node: &str, image: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.images.insert(image.to_owned());
            self.by_image
                .entry(image.to_owned())
                .or_default()
                .insert(node.to_owned());
        }
    }

    /// Reserves an attempt's resources on its node (idempotent per job).
    pub fn reserve(&mut self, job: JobId, node: &str, resources: &Resources, gpus: &[String]) {
        self.release(job);
        self.unindex(node);
        if let Some(n) = self.nodes.get_mut(node) {
            n.free_cpu_millis = n.free_cpu_millis.saturating_sub(resources.cpu_millis);
            n.free_memory_bytes = n.free_memory_bytes.saturating_sub(resources.memory_bytes);
            for g in gpus {
                n.free_gpus.remove(g);
            }
        }
        self.index(node);
        self.reservations.insert(
            job,
            Reservation {
                node: node.to_owned(),
                cpu_millis: resources.cpu_millis,
                memory_bytes: resources.memory_bytes,
                gpus: gpus.to_vec(),
            },
        );
    }

    /// Gives an attempt's resources back.
    pub fn release(&mut self, job: JobId) {
        let Some(r) = self.reservations.remove(&job) else {
            return;
        };
        self.unindex(&r.node);
        if let Some(n) = self.nodes.get_mut(&r.node) {
            n.free_cpu_millis = (n.free_cpu_millis + r.cpu_millis).min(n.cpu_millis);
            n.free_memory_bytes = (n.free_memory_bytes + r.memory_bytes).min(n.memory_bytes);
            let known: HashSet<&String> = n.gpus.iter().map(|g| &g.uuid).collect();
            for g in r.gpus {
                if known.contains(&g) {
                    n.free_gpus.insert(g);
                }
            }
        }
        self.index(&r.node);
    }

    /// Picks a node and GPUs for a job, or `None` if nothing fits now.
    pub fn place(&self, image: &str, resources: &Resources) -> Option<(String, Vec<String>)> {
        let fits = |n: &Node| -> Option<Vec<String>> { fit(n, resources) };
        // Nodes holding the image first.
        if let Some(holders) = self.by_image.get(image) {
            for id in holders.iter().take(AFFINITY_LIMIT) {
                if let Some(n) = self.nodes.get(id)
                    && n.schedulable()
                    && let Some(gpus) = fits(n)
                {
                    return Some((n.id.clone(), gpus));
                }
            }
        }
        // Then best fit: the smallest node with enough free CPU (or GPUs) that fits.
        let candidates: Box<dyn Iterator<Item = &String>> = if resources.gpus.count > 0 {
            Box::new(
                self.by_free_gpus
                    .range((resources.gpus.count as usize, String::new())..)
                    .map(|(_, id)| id),
            )
        } else {
            Box::new(
                self.by_free_cpu
                    .range((resources.cpu_millis, String::new())..)
                    .map(|(_, id)| id),
            )
        };
        for id in candidates.take(SCAN_LIMIT) {
            if let Some(n) = self.nodes.get(id)
                && let Some(gpus) = fits(n)
            {
                return Some((n.id.clone(), gpus));
            }
        }
        None
    }
}

impl Cluster {
    /// Why a job with these resources is not placed now: what no node that ever joined could
    /// give it (unschedulable), or that the nodes that could are unavailable or busy. Walks
    /// every node: called when a placement fails and the fleet's shape changed, not per pass.
    pub fn explain(&self, r: &Resources) -> PendingReason {
        let reason = |code: &str, message: String, unschedulable: bool| PendingReason {
            code: code.to_owned(),
            message,
            unschedulable,
        };
        if self.nodes.is_empty() {
            return reason("no_nodes", "no node has joined yet".into(), true);
        }
        let matching = |n: &Node| -> usize { n.gpus.iter().filter(|g| gpu_matches(g, r)).count() };
        if r.gpus.count > 0 {
            if let Some(model) = &r.gpus.model {
                let any_model = self.nodes.values().any(|n| {
                    n.gpus
                        .iter()
                        .any(|g| g.name.to_lowercase().contains(&model.to_lowercase()))
                });
                if !any_model {
                    return reason(
                        "no_gpu_model",
                        format!(
                            "no node has a GPU matching model '{model}' ({})",
                            self.gpu_census()
                        ),
                        true,
                    );
                }
            }
            let most = self.nodes.values().map(matching).max().unwrap_or(0);
            if most == 0 {
                let min = r.gpus.min_memory_bytes.unwrap_or(0);
                return reason(
                    "gpu_memory",
                    format!(
                        "no node has a GPU with {} GiB of memory ({})",
                        min >> 30,
                        self.gpu_census()
                    ),
                    true,
                );
            }
            if most < r.gpus.count as usize {
                return reason(
                    "too_many_gpus",
                    format!(
                        "needs {} matching GPUs; the largest node has {most}",
                        r.gpus.count
                    ),
                    true,
                );
            }
        }
        let enough = |n: &Node| {
            n.cpu_millis >= r.cpu_millis
                && n.memory_bytes >= r.memory_bytes
                && matching(n) >= r.gpus.count as usize
        };
        if !self.nodes.values().any(enough) {
            let cpu = self.nodes.values().map(|n| n.cpu_millis).max().unwrap_or(0);
            if cpu < r.cpu_millis {
                return reason(
                    "too_many_cpus",
                    format!(
                        "needs {} CPUs; the largest node has {}",
                        f64::from(r.cpu_millis) / 1000.0,
                        f64::from(cpu) / 1000.0
                    ),
                    true,
                );
            }
            let memory = self
                .nodes
                .values()
                .map(|n| n.memory_bytes)
                .max()
                .unwrap_or(0);
            if memory < r.memory_bytes {
                return reason(
                    "too_much_memory",
                    format!(
                        "needs {} MiB of memory; the largest node has {} MiB",
                        r.memory_bytes >> 20,
                        memory >> 20
                    ),
                    true,
                );
            }
            return reason(
                "too_large",
                "no single node has all of the CPUs, memory and GPUs it needs".into(),
                true,
            );
        }
        if !self.nodes.values().any(|n| n.schedulable() && enough(n)) {
            return reason(
                "nodes_unavailable",
                "every node that could run it is drained or lost".into(),
                false,
            );
        }
        reason(
            "resources_busy",
            "waiting for resources: every node that fits is busy".into(),
            false,
        )
    }

    /// "2 nodes have: H100 ×2; 1 node has no GPU" — what GPUs the fleet has, for reasons.
    fn gpu_census(&self) -> String {
        let mut models: BTreeMap<String, usize> = BTreeMap::new();
        for n in self.nodes.values() {
            for g in &n.gpus {
                *models.entry(g.name.clone()).or_default() += 1;
            }
        }
        if models.is_empty() {
            return "no node has a GPU".into();
        }
        let list: Vec<String> = models
            .into_iter()
            .map(|(name, count)| format!("{name} ×{count}"))
            .collect();
        format!("the fleet has: {}", list.join(", "))
    }
}

/// Whether a GPU is of the model and memory the job asks for.
fn gpu_matches(g: &Gpu, r: &Resources) -> bool {
    r.gpus
        .model
        .as_ref()
        .is_none_or(|m| g.name.to_lowercase().contains(&m.to_lowercase()))
        && r.gpus
            .min_memory_bytes
            .is_none_or(|min| g.memory_bytes >= min)
}

/// The GPUs `node` would give a job, if it fits at all.
fn fit(node: &Node, r: &Resources) -> Option<Vec<String>> {
    if !node.schedulable()
        || node.free_cpu_millis < r.cpu_millis
        || node.free_memory_bytes < r.memory_bytes
    {
        return None;
    }
    if r.gpus.count == 0 {
        return Some(Vec::new());
    }
    let chosen: Vec<String> = node
        .gpus
        .iter()
        .filter(|g| node.free_gpus.contains(&g.uuid))
        .filter(|g| gpu_matches(g, r))
        .take(r.gpus.count as usize)
        .map(|g| g.uuid.clone())
        .collect();
    (chosen.len() == r.gpus.count as usize).then_some(chosen)
}

/// Jobs waiting to be placed: by priority (higher first), first come first served within a
/// priority, and round-robin between queues so one busy queue cannot starve the others. Jobs
/// no node of the fleet could ever take are parked out of the order until the fleet's shape
/// changes, so however many of them wait, the jobs behind them are still offered each round.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct Queues {
    queues: BTreeMap<String, BTreeSet<(Reverse<i32>, u64, JobId)>>,
    positions: HashMap<JobId, (String, Reverse<i32>, u64)>,
    /// Queue names in the order they get their next turn.
    turns: VecDeque<String>,
    /// Queued jobs left out of the order (still counted as queued).
    parked: HashSet<JobId>,
}

impl Queues {
    /// Adds (or re-adds after a retry) a job; `order` is its submission sequence.
    pub fn push(&mut self, job: JobId, queue: &str, priority: i32, order: u64) {
        self.remove(job);
        let key = (Reverse(priority), order, job);
        let q = self.queues.entry(queue.to_owned()).or_default();
        if q.is_empty() && !self.turns.iter().any(|t| t == queue) {
            self.turns.push_back(queue.to_owned());
        }
        q.insert(key);
        self.positions
            .insert(job, (queue.to_owned(), Reverse(priority), order));
    }

    pub fn remove(&mut self, job: JobId) {
        self.parked.remove(&job);
        if let Some((queue, priority, order)) = self.positions.remove(&job)
            && let Some(q) = self.queues.get_mut(&queue)
        {
            q.remove(&(priority, order, job));
        }
    }

    /// Leaves a queued job out of the order until [`Queues::unpark_all`].
    pub fn park(&mut self, job: JobId) {
        if let Some((queue, priority, order)) = self.positions.get(&job)
            && let Some(q) = self.queues.get_mut(queue)
            && q.remove(&(*priority, *order, job))
        {
            self.parked.insert(job);
        }
    }

    /// Puts every parked job back in its place in the order.
    pub fn unpark_all(&mut self) {
        for job in std::mem::take(&mut self.parked) {
            if let Some((queue, priority, order)) = self.positions.get(&job) {
                let q = self.queues.entry(queue.clone()).or_default();
                if q.is_empty() && !self.turns.iter().any(|t| t == queue) {
                    self.turns.push_back(queue.clone());
                }
                q.insert((*priority, *order, job));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Jobs offered in one queue, in order (parked ones left out).
    pub fn waiting(&self, queue: &str) -> impl Iterator<Item = JobId> + '_ {
        self.queues
            .get(queue)
            .into_iter()
            .flatten()
            .map(|(_, _, id)| *id)
    }

    /// The order to offer jobs in for one scheduling round: queues take turns, one job each,
    /// each queue in priority-then-arrival order; `per_queue` bounds the look-ahead.
    pub fn round(&mut self, per_queue: usize) -> Vec<JobId> {
        self.turns
            .retain(|q| self.queues.get(q).is_some_and(|j| !j.is_empty()));
        let mut heads: Vec<_> = self
            .turns
            .iter()
            .map(|q| {
                self.queues[q]
                    .iter()
                    .take(per_queue)
                    .map(|(_, _, id)| *id)
                    .collect::<VecDeque<_>>()
            })
            .collect();
        // Next round starts with the next queue.
        if let Some(first) = self.turns.pop_front() {
            self.turns.push_back(first);
        }
        let mut out = Vec::new();
        loop {
            let mut any = false;
            for h in &mut heads {
                if let Some(id) = h.pop_front() {
                    out.push(id);
                    any = true;
                }
            }
            if !any {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gantry_events::event::GpuRequest;

    use super::*;

    fn gpu(uuid: &str, name: &str, gib: u64) -> Gpu {
        Gpu {
            uuid: uuid.into(),
            name: name.into(),
            memory_bytes: gib << 30,
            utilisation_pct: None,
            driver_version: None,
        }
    }

    fn res(cpu: u32, mem_gib: u64, gpus: u32, model: Option<&str>) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem_gib << 30,
            gpus: GpuRequest {
                count: gpus,
                model: model.map(Into::into),
                min_memory_bytes: None,
            },
        }
    }

    /// The fleets placement is tested over: NVIDIA-only, mixed, CPU-only.
    fn fleet(kind: &str) -> Cluster {
        let mut c = Cluster::default();
        match kind {
            "nvidia" => {
                c.join(
                    "a100-1",
                    "docker",
                    64_000,
                    512 << 30,
                    vec![
                        gpu("a1", "NVIDIA A100-SXM4-80GB", 80),
                        gpu("a2", "NVIDIA A100-SXM4-80GB", 80),
                    ],
                );
                c.join(
                    "h100-1",
                    "docker",
                    64_000,
                    512 << 30,
                    vec![gpu("h1", "NVIDIA H100 80GB HBM3", 80)],
                );
            }
            "mixed" => {
                c.join("cpu-1", "docker", 8_000, 32 << 30, vec![]);
                c.join(
                    "t4-1",
                    "docker",
                    16_000,
                    64 << 30,
                    vec![gpu("t1", "Tesla T4", 16)],
                );
                c.join(
                    "a100-1",
                    "docker",
                    64_000,
                    512 << 30,
                    vec![
                        gpu("a1", "NVIDIA A100-SXM4-80GB", 80),
                        gpu("a2", "NVIDIA A100-SXM4-80GB", 80),
                    ],
                );
            }
            _ => {
                c.join("cpu-1", "process", 4_000, 8 << 30, vec![]);
                c.join("cpu-2", "process", 16_000, 64 << 30, vec![]);
            }
        }
        c
    }

    #[test]
    fn placement_matrix() {
        // (fleet, request, expected node or None)
        let cases: &[(&str, Resources, Option<&str>)] = &[
            ("cpu", res(1000, 1, 0, None), Some("cpu-1")),
            ("cpu", res(8000, 1, 0, None), Some("cpu-2")),
            ("cpu", res(1000, 128, 0, None), None),
            ("cpu", res(1000, 1, 1, None), None),
            ("mixed", res(1000, 1, 0, None), Some("cpu-1")),
            ("mixed", res(1000, 1, 1, None), Some("t4-1")),
            ("mixed", res(1000, 1, 1, Some("a100")), Some("a100-1")),
            ("mixed", res(1000, 1, 2, None), Some("a100-1")),
            ("mixed", res(1000, 1, 3, None), None),
            ("nvidia", res(1000, 1, 1, Some("H100")), Some("h100-1")),
            ("nvidia", res(1000, 1, 2, Some("H100")), None),
            ("nvidia", res(1000, 1, 1, Some("V100")), None),
        ];
        for (kind, r, want) in cases {
            let got = fleet(kind).place("img", r).map(|(n, _)| n);
            assert_eq!(got.as_deref(), *want, "{kind} fleet, {r:?}");
        }
    }

    #[test]
    fn gpu_memory_minimum_is_respected() {
        let c = fleet("mixed");
        let mut r = res(1000, 1, 1, None);
        r.gpus.min_memory_bytes = Some(40 << 30);
        assert_eq!(c.place("img", &r).map(|p| p.0).as_deref(), Some("a100-1"));
    }

    #[test]
    fn reservations_use_up_and_give_back_capacity() {
        let mut c = fleet("mixed");
        let r = res(1000, 1, 2, None);
        let (node, gpus) = c.place("img", &r).expect("fits");
        assert_eq!(gpus.len(), 2);
        c.reserve(JobId::from_u128(1), &node, &r, &gpus);
        assert_eq!(c.place("img", &r), None, "both A100s are taken");
        c.release(JobId::from_u128(1));
        assert!(c.place("img", &r).is_some());
    }

    #[test]
    fn nodes_holding_the_image_come_first() {
        let mut c = fleet("cpu");
        let r = res(1000, 1, 0, None);
        assert_eq!(
            c.place("trainer", &r).map(|p| p.0).as_deref(),
            Some("cpu-1")
        );
        c.saw_image("cpu-2", "trainer");
        assert_eq!(
            c.place("trainer", &r).map(|p| p.0).as_deref(),
            Some("cpu-2")
        );
        c.set_status("cpu-2", NodeStatus::Draining);
        assert_eq!(
            c.place("trainer", &r).map(|p| p.0).as_deref(),
            Some("cpu-1")
        );
    }

    #[test]
    fn queues_order_by_priority_then_arrival_and_take_turns() {
        let mut q = Queues::default();
        let id = JobId::from_u128;
        q.push(id(1), "a", 0, 1);
        q.push(id(2), "a", 5, 2);
        q.push(id(3), "a", 0, 3);
        q.push(id(4), "b", 0, 4);
        assert_eq!(q.waiting("a").collect::<Vec<_>>(), [id(2), id(1), id(3)]);
        // Queue a's best, then b's, then a's next...
        assert_eq!(q.round(10), [id(2), id(4), id(1), id(3)]);
        // ...and the next round starts with b.
        assert_eq!(q.round(10), [id(4), id(2), id(1), id(3)]);
        q.remove(id(4));
        assert_eq!(q.round(1), [id(2)]);
        assert_eq!(q.len(), 3);
    }
}
