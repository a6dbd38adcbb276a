//! Per-attempt cgroups for the process executor: the memory, pids and CPU limits of a local
//! job, and the record of whether the kernel's OOM killer struck it.
//!
//! **Layout.** Every attempt gets a cgroup `<parent>/<job>-<attempt>` (`parent` is
//! [`CgroupOptions::parent`], `gantry` by default) in each hierarchy gantry uses. The parent is
//! made when the executor starts and never removed; an attempt's cgroup is made before its
//! process starts and removed after it ends, once every process in it is killed.
//!
//! **Which hierarchy.** [`Cgroups::detect`] looks under [`CgroupOptions::root`]
//! (`/sys/fs/cgroup`):
//!
//! - **cgroup v2** when the root itself (a pure v2 host) or `<root>/unified` (a hybrid host) is a
//!   v2 hierarchy whose `cgroup.controllers` offers `memory`. The controllers gantry uses
//!   (`memory`, `pids`, `cpu`, those offered) are enabled in `cgroup.subtree_control` of the
//!   hierarchy's root and of every cgroup down to the parent, so the parent must be a cgroup
//!   without processes of its own (v2 puts processes only in leaves). Limits: `memory.max`,
//!   `memory.swap.max` = 0 (when the kernel accounts swap), `pids.max`, `cpu.max`. OOM kills:
//!   `oom_kill` in `memory.events`.
//! - **cgroup v1** otherwise, with one hierarchy per controller at `<root>/memory`,
//!   `<root>/pids` and `<root>/cpu` (the usual layout; `cpu` may be a link to `cpu,cpuacct`).
//!   Limits: `memory.limit_in_bytes` and, when swap is accounted,
//!   `memory.memsw.limit_in_bytes` (the same value: no swap beyond it), `pids.max`,
//!   `cpu.cfs_period_us`/`cpu.cfs_quota_us`. OOM kills: `oom_kill` in `memory.oom_control`
//!   (kernels before 4.13 lack it: then `memory.failcnt`, see [`Oom::Unknown`]).
//!
//! A hierarchy without `memory` is not used at all. Before it is used, a probe cgroup is made
//! and removed under the parent, so an executor that cannot write cgroups (not root, a
//! read-only mount, no delegation) learns it at start rather than at every attempt.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where gantry makes its cgroups. [`Default`] gives the documented values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupOptions {
    /// Where the cgroup filesystems are mounted: a v2 hierarchy itself, or a directory holding
    /// `unified/` (v2) and one v1 hierarchy per controller (`memory/`, `pids/`, `cpu/`).
    /// Default: `/sys/fs/cgroup`.
    pub root: PathBuf,
    /// The cgroup holding the attempts' cgroups, relative to each hierarchy's root (a path
    /// into a subtree delegated to gantry works too). Default: `gantry`.
    pub parent: PathBuf,
}

impl Default for CgroupOptions {
    fn default() -> CgroupOptions {
        CgroupOptions {
            root: PathBuf::from("/sys/fs/cgroup"),
            parent: PathBuf::from("gantry"),
        }
    }
}

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The controllers gantry sets limits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    /// The kernel's name for it (also the v1 mount's directory name).
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// The limits of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory, without swap beyond it. 0: no limit.
    pub memory_bytes: u64,
    /// Processes and threads in the cgroup. 0: no limit.
    pub pids: u64,
    /// Thousandths of one CPU's time. 0: no limit.
    pub cpu_millis: u32,
}

/// The CFS period gantry uses, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts, in microseconds.
const CPU_QUOTA_MIN_US: u64 = 1_000;
/// How often `kill` looks for survivors, and how long it waits between looks.
const KILL_ROUNDS: u32 = 100;
const KILL_PAUSE: Duration = Duration::from_millis(10);
/// How often `remove` tries `rmdir` while the kernel still counts exiting processes.
const RMDIR_TRIES: u32 = 100;

/// What went wrong with cgroups. Never reaches the gateway: the executor turns it into a
/// warning at start (no limits) or a failed attempt.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No hierarchy offers the memory controller.
    #[error("no cgroup hierarchy with the memory controller under {root}")]
    NotFound { root: PathBuf },
    /// [`CgroupOptions::parent`] is absolute or climbs out (`..`).
    #[error("the cgroup parent {parent} must be a relative path without `..`")]
    BadParent { parent: PathBuf },
    /// A v2 cgroup on the way to the parent would not enable the controllers for its children
    /// (it has processes of its own, or is not delegated to gantry).
    #[error("{path} does not enable {missing} for its children")]
    NotEnabled { path: PathBuf, missing: String },
    /// A file or directory of the cgroup filesystem could not be read, written or made.
    #[error("{doing} {path}: {source}")]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Processes were still in the cgroup after every kill.
    #[error("processes still in {path} after {KILL_ROUNDS} rounds of SIGKILL")]
    Survivors { path: PathBuf },
}

fn io_error(doing: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io {
        doing,
        path,
        source,
    }
}

/// Whether the OOM killer struck an attempt's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oom {
    /// It killed at least one process of the attempt.
    Killed,
    /// It killed none.
    NotKilled,
    /// The kernel keeps no OOM-kill count (v1 before Linux 4.13); `limit_hit`: the memory
    /// limit was reached at least once (`memory.failcnt`), which with a SIGKILL is the
    /// OOM killer's mark.
    Unknown { limit_hit: bool },
}

/// One hierarchy gantry writes: its controllers and the parent cgroup's directory in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    controllers: Vec<Controller>,
    parent: PathBuf,
}

/// The cgroups this host lets gantry make, found and probed by [`Cgroups::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    version: Version,
    hierarchies: Vec<Hierarchy>,
}

/// One file of a new cgroup and what goes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    file: &'static str,
    value: String,
    /// Written only when the kernel offers the file (swap accounting may be off).
    optional: bool,
}

impl Setting {
    fn required(file: &'static str, value: impl ToString) -> Setting {
        Setting {
            file,
            value: value.to_string(),
            optional: false,
        }
    }

    fn optional(file: &'static str, value: impl ToString) -> Setting {
        Setting {
            file,
            value: value.to_string(),
            optional: true,
        }
    }
}

/// What a new cgroup's files get for `limits`, in the order they must be written (v1 refuses
/// a memsw limit below the memory limit, so the memory limit goes first).
fn settings(version: Version, controller: Controller, limits: &Limits) -> Vec<Setting> {
    let quota_us = (limits.cpu_millis > 0).then(|| {
        // 1000 millis = one CPU = one period of run time per period.
        (u64::from(limits.cpu_millis) * CPU_PERIOD_US / 1000).max(CPU_QUOTA_MIN_US)
    });
    match (version, controller) {
        (Version::V2, Controller::Memory) if limits.memory_bytes > 0 => vec![
            Setting::required("memory.max", limits.memory_bytes),
            Setting::optional("memory.swap.max", 0),
        ],
        (Version::V1, Controller::Memory) if limits.memory_bytes > 0 => vec![
            Setting::required("memory.limit_in_bytes", limits.memory_bytes),
            Setting::optional("memory.memsw.limit_in_bytes", limits.memory_bytes),
        ],
        (_, Controller::Memory) => vec![],
        (_, Controller::Pids) if limits.pids > 0 => {
            vec![Setting::required("pids.max", limits.pids)]
        }
        (_, Controller::Pids) => vec![Setting::required("pids.max", "max")],
        (Version::V2, Controller::Cpu) => vec![Setting::required(
            "cpu.max",
            match quota_us {
                Some(quota) => format!("{quota} {CPU_PERIOD_US}"),
                None => format!("max {CPU_PERIOD_US}"),
            },
        )],
        (Version::V1, Controller::Cpu) => vec![
            Setting::required("cpu.cfs_period_us", CPU_PERIOD_US),
            Setting::required(
                "cpu.cfs_quota_us",
                quota_us.map_or_else(|| "-1".to_owned(), |q| q.to_string()),
            ),
        ],
    }
}

/// The number after `key` in a flat-keyed cgroup file (`memory.events`, `memory.oom_control`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The controllers a v2 `cgroup.controllers` or `cgroup.subtree_control` lists. A `+` before
/// a name is ignored: the kernel never shows one, but a file written in a test does.
fn listed(text: &str) -> Vec<&str> {
    text.split_whitespace()
        .map(|name| name.trim_start_matches('+'))
        .collect()
}

impl Cgroups {
    /// Finds the hierarchy to use under `options.root` (see the module doc), makes the parent
    /// cgroup (v2: enabling the controllers on the way), and proves a cgroup can be made and
    /// removed under it.
    pub fn detect(options: &CgroupOptions) -> Result<Cgroups, Error> {
        let parent = &options.parent;
        let relative = parent
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !relative || parent.as_os_str().is_empty() {
            return Err(Error::BadParent {
                parent: parent.clone(),
            });
        }
        let (version, mounts) = find(&options.root)?;
        let mut hierarchies = Vec::new();
        for (controllers, mount) in mounts {
            let dir = mount.join(parent);
            match version {
                Version::V2 => enable_down_to(&mount, parent, &controllers)?,
                Version::V1 => {
                    std::fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
                }
            }
            probe(&dir)?;
            hierarchies.push(Hierarchy {
                controllers,
                parent: dir,
            });
        }
        Ok(Cgroups {
            version,
            hierarchies,
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The controllers in use, in [`Controller::ALL`] order.
    pub fn controllers(&self) -> Vec<Controller> {
        let mut all: Vec<Controller> = self
            .hierarchies
            .iter()
            .flat_map(|h| h.controllers.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Whether memory, pids and CPU are all limited.
    pub fn enforced(&self) -> bool {
        self.controllers() == Controller::ALL
    }

    /// The directories of cgroup `name`, one per hierarchy.
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.parent.join(name))
            .collect()
    }

    /// Makes cgroup `name` with `limits`. On failure, removes what it made (nothing was in
    /// it yet).
    pub fn create(&self, name: &str, limits: &Limits) -> Result<(), Error> {
        let mut made = Vec::new();
        let result = self.create_in(name, limits, &mut made);
        if result.is_err() {
            for dir in made.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        result
    }

    fn create_in(&self, name: &str, limits: &Limits, made: &mut Vec<PathBuf>) -> Result<(), Error> {
        for hierarchy in &self.hierarchies {
            let dir = hierarchy.parent.join(name);
            std::fs::create_dir(&dir).map_err(io_error("creating", &dir))?;
            made.push(dir.clone());
            for controller in &hierarchy.controllers {
                for setting in settings(self.version, *controller, limits) {
                    let path = dir.join(setting.file);
                    if setting.optional && !path.exists() {
                        continue;
                    }
                    std::fs::write(&path, &setting.value).map_err(io_error("writing", &path))?;
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` (all its threads) into cgroup `name`, in every hierarchy.
    pub fn place(&self, name: &str, pid: u32) -> Result<(), Error> {
        for dir in self.dirs(name) {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io_error("writing", &procs))?;
        }
        Ok(())
    }

    /// Whether the OOM killer struck cgroup `name`. Read it before [`Cgroups::remove`].
    pub fn oom(&self, name: &str) -> Oom {
        let Some(memory) = self
            .hierarchies
            .iter()
            .find(|h| h.controllers.contains(&Controller::Memory))
        else {
            return Oom::Unknown { limit_hit: false };
        };
        let dir = memory.parent.join(name);
        let events = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        let text = std::fs::read_to_string(dir.join(events)).unwrap_or_default();
        match field(&text, "oom_kill") {
            Some(0) => Oom::NotKilled,
            Some(_) => Oom::Killed,
            None => {
                let hit = match self.version {
                    // How often usage hit `memory.max`.
                    Version::V2 => field(&text, "max"),
                    Version::V1 => std::fs::read_to_string(dir.join("memory.failcnt"))
                        .ok()
                        .and_then(|t| t.trim().parse().ok()),
                };
                Oom::Unknown {
                    limit_hit: hit.is_some_and(|n| n > 0),
                }
            }
        }
    }

    /// Kills every process in cgroup `name` (SIGKILL; v2 uses `cgroup.kill` where the kernel
    /// has it, which also catches processes forking meanwhile) until none is left.
    pub async fn kill(&self, name: &str) -> Result<(), Error> {
        for dir in self.dirs(name) {
            if !dir.exists() {
                continue;
            }
            let all_at_once = dir.join("cgroup.kill");
            if self.version == Version::V2 && all_at_once.exists() {
                std::fs::write(&all_at_once, "1").map_err(io_error("writing", &all_at_once))?;
            }
            let procs = dir.join("cgroup.procs");
            let mut empty = false;
            for _ in 0..KILL_ROUNDS {
                let pids = match std::fs::read_to_string(&procs) {
                    Ok(text) => text,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                    Err(e) => return Err(io_error("reading", &procs)(e)),
                };
                let pids: Vec<i32> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.is_empty() {
                    empty = true;
                    break;
                }
                for pid in pids {
                    // ESRCH: it ended meanwhile.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                tokio::time::sleep(KILL_PAUSE).await;
            }
            if !empty {
                return Err(Error::Survivors { path: dir });
            }
        }
        Ok(())
    }

    /// Kills what is left in cgroup `name` and removes it from every hierarchy. A cgroup that
    /// is not there is fine.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        self.kill(name).await?;
        for dir in self.dirs(name) {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // The kernel still counts processes that are exiting.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && tries < RMDIR_TRIES => {
                        tries += 1;
                        tokio::time::sleep(KILL_PAUSE).await;
                    }
                    Err(e) => return Err(io_error("removing", &dir)(e)),
                }
            }
        }
        Ok(())
    }
}

/// A hierarchy's root directory and the controllers gantry uses in it.
type Mount = (Vec<Controller>, PathBuf);

/// The hierarchies under `root`: v2 when one offers memory, else the v1 controllers mounted.
fn find(root: &Path) -> Result<(Version, Vec<Mount>), Error> {
    for v2 in [root.to_owned(), root.join("unified")] {
        let Ok(text) = std::fs::read_to_string(v2.join("cgroup.controllers")) else {
            continue;
        };
        let offered = listed(&text);
        let controllers: Vec<Controller> = Controller::ALL
            .into_iter()
            .filter(|c| offered.contains(&c.name()))
            .collect();
        if controllers.contains(&Controller::Memory) {
            return Ok((Version::V2, vec![(controllers, v2)]));
        }
    }
    let mut mounts: Vec<Mount> = Vec::new();
    for controller in Controller::ALL {
        let mount = root.join(controller.name());
        if !mount.join("cgroup.procs").exists() {
            continue;
        }
        // Two controllers mounted together (`cpu` linked to another's mount) share one
        // hierarchy: one cgroup there, not two.
        let real = std::fs::canonicalize(&mount).unwrap_or_else(|_| mount.clone());
        match mounts
            .iter_mut()
            .find(|(_, m)| std::fs::canonicalize(m).is_ok_and(|m| m == real))
        {
            Some((controllers, _)) => controllers.push(controller),
            None => mounts.push((vec![controller], mount)),
        }
    }
    if mounts
        .iter()
        .any(|(controllers, _)| controllers.contains(&Controller::Memory))
    {
        Ok((Version::V1, mounts))
    } else {
        Err(Error::NotFound {
            root: root.to_owned(),
        })
    }
}

/// v2: enables `controllers` for the children of the hierarchy's root and of every cgroup
/// down to `parent` (made where missing), then checks each one reads back enabled.
fn enable_down_to(mount: &Path, parent: &Path, controllers: &[Controller]) -> Result<(), Error> {
    let mut dir = mount.to_owned();
    enable(&dir, controllers)?;
    for part in parent.components() {
        let Component::Normal(part) = part else {
            continue;
        };
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error("creating", &dir)(e)),
        }
        enable(&dir, controllers)?;
    }
    Ok(())
}

fn enable(dir: &Path, controllers: &[Controller]) -> Result<(), Error> {
    let path = dir.join("cgroup.subtree_control");
    let missing = |text: &str| -> Vec<&'static str> {
        let on = listed(text);
        controllers
            .iter()
            .map(|c| c.name())
            .filter(|name| !on.contains(name))
            .collect()
    };
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    if missing(&before).is_empty() {
        return Ok(());
    }
    // All of them in one write: the kernel adds each `+name`; it refuses the whole write
    // when the cgroup has processes of its own (v2 allows controllers only above leaves).
    let wanted: Vec<String> = controllers
        .iter()
        .map(|c| format!("+{}", c.name()))
        .collect();
    std::fs::write(&path, wanted.join(" ")).map_err(io_error("writing", &path))?;
    let after = std::fs::read_to_string(&path).map_err(io_error("reading", &path))?;
    let still = missing(&after);
    if still.is_empty() {
        Ok(())
    } else {
        Err(Error::NotEnabled {
            path,
            missing: still.join(" "),
        })
    }
}

/// Makes and removes an empty cgroup under `parent`: the proof that attempts' cgroups can be.
fn probe(parent: &Path) -> Result<(), Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = parent.join(format!("probe-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).map_err(io_error("creating", &dir))?;
    std::fs::remove_dir(&dir).map_err(io_error("removing", &dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn options(root: &Path) -> CgroupOptions {
        CgroupOptions {
            root: root.to_owned(),
            ..CgroupOptions::default()
        }
    }

    const LIMITS: Limits = Limits {
        memory_bytes: 32 << 20,
        pids: 64,
        cpu_millis: 1500,
    };

    /// A fake pure-v2 root: what the kernel shows at the top of the hierarchy.
    fn fake_v2(root: &Path, controllers: &str) {
        write(&root.join("cgroup.controllers"), controllers);
        write(&root.join("cgroup.subtree_control"), "");
        write(&root.join("cgroup.procs"), "1\n");
    }

    #[test]
    fn v2_enables_controllers_and_writes_the_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fake_v2(root, "cpuset cpu io memory hugetlb pids rdma misc\n");
        let cgroups = Cgroups::detect(&options(root)).expect("v2");
        assert_eq!(cgroups.version(), Version::V2);
        assert_eq!(cgroups.controllers(), Controller::ALL);
        assert!(cgroups.enforced());
        // Enabled for the children of the root and of the parent: attempts are leaves below.
        for dir in [root.to_owned(), root.join("gantry")] {
            let on = read(&dir.join("cgroup.subtree_control"));
            assert_eq!(listed(&on), ["memory", "pids", "cpu"], "{}", dir.display());
        }
        // The probe cgroup is gone again.
        let left: Vec<_> = std::fs::read_dir(root.join("gantry"))
            .expect("parent")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "cgroup.subtree_control")
            .collect();
        assert!(left.is_empty(), "{left:?}");

        cgroups.create("job-1", &LIMITS).expect("create");
        let attempt = root.join("gantry/job-1");
        assert_eq!(cgroups.dirs("job-1"), std::slice::from_ref(&attempt));
        assert_eq!(read(&attempt.join("memory.max")), (32u64 << 20).to_string());
        assert_eq!(read(&attempt.join("pids.max")), "64");
        assert_eq!(read(&attempt.join("cpu.max")), "150000 100000");
        // Optional files are only written where the kernel offers them.
        assert!(!attempt.join("memory.swap.max").exists());
        cgroups.place("job-1", 4242).expect("place");
        assert_eq!(read(&attempt.join("cgroup.procs")), "4242");
        // Made twice: refused, and the first is left alone.
        assert!(cgroups.create("job-1", &LIMITS).is_err());
        assert!(attempt.join("memory.max").exists());
    }

    #[test]
    fn v2_oom_kills_come_from_memory_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fake_v2(root, "cpu memory pids\n");
        let cgroups = Cgroups::detect(&options(root)).expect("v2");
        cgroups.create("a-1", &LIMITS).expect("create");
        let events = root.join("gantry/a-1/memory.events");
        write(
            &events,
            "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        assert_eq!(cgroups.oom("a-1"), Oom::Killed);
        write(&events, "low 0\nhigh 0\nmax 7\noom 0\noom_kill 0\n");
        assert_eq!(cgroups.oom("a-1"), Oom::NotKilled);
        write(&events, "low 0\nhigh 0\nmax 7\noom 1\n");
        assert_eq!(cgroups.oom("a-1"), Oom::Unknown { limit_hit: true });
    }

    #[test]
    fn v2_without_a_controller_limits_what_it_can() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_v2(dir.path(), "memory pids\n");
        let cgroups = Cgroups::detect(&options(dir.path())).expect("v2");
        assert_eq!(
            cgroups.controllers(),
            [Controller::Memory, Controller::Pids]
        );
        assert!(!cgroups.enforced());
    }

    #[test]
    fn a_nested_parent_is_enabled_all_the_way_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fake_v2(root, "memory pids cpu\n");
        let options = CgroupOptions {
            root: root.to_owned(),
            parent: PathBuf::from("gantry.slice/jobs"),
        };
        let cgroups = Cgroups::detect(&options).expect("v2");
        for dir in ["", "gantry.slice", "gantry.slice/jobs"] {
            let on = read(&root.join(dir).join("cgroup.subtree_control"));
            assert_eq!(listed(&on).len(), 3, "{dir}: {on}");
        }
        assert_eq!(cgroups.dirs("j-2"), [root.join("gantry.slice/jobs/j-2")]);
    }

    #[test]
    fn v1_writes_one_cgroup_per_controller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // A hybrid host like the test machines: v1 controllers, an empty v2 hierarchy.
        write(&root.join("unified/cgroup.controllers"), "\n");
        for controller in ["memory", "pids", "cpu,cpuacct"] {
            write(&root.join(controller).join("cgroup.procs"), "1\n");
        }
        std::os::unix::fs::symlink(root.join("cpu,cpuacct"), root.join("cpu")).expect("link");
        let cgroups = Cgroups::detect(&options(root)).expect("v1");
        assert_eq!(cgroups.version(), Version::V1);
        assert!(cgroups.enforced());
        cgroups.create("job-3", &LIMITS).expect("create");
        let memory = root.join("memory/gantry/job-3");
        assert_eq!(
            read(&memory.join("memory.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        assert_eq!(read(&root.join("pids/gantry/job-3/pids.max")), "64");
        let cpu = root.join("cpu/gantry/job-3");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "150000");

        write(
            &memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        assert_eq!(cgroups.oom("job-3"), Oom::Killed);
        // An old kernel: no count, only how often the limit was hit.
        write(
            &memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        );
        write(&memory.join("memory.failcnt"), "12\n");
        assert_eq!(cgroups.oom("job-3"), Oom::Unknown { limit_hit: true });
    }

    #[test]
    fn settings_cover_swap_and_unlimited_values() {
        let none = Limits {
            memory_bytes: 0,
            pids: 0,
            cpu_millis: 0,
        };
        assert_eq!(settings(Version::V2, Controller::Memory, &none), vec![]);
        assert_eq!(
            settings(Version::V2, Controller::Cpu, &none),
            vec![Setting::required("cpu.max", "max 100000")]
        );
        assert_eq!(
            settings(Version::V1, Controller::Cpu, &none)[1],
            Setting::required("cpu.cfs_quota_us", "-1")
        );
        assert_eq!(
            settings(Version::V2, Controller::Pids, &none),
            vec![Setting::required("pids.max", "max")]
        );
        assert_eq!(
            settings(Version::V2, Controller::Memory, &LIMITS),
            vec![
                Setting::required("memory.max", 32u64 << 20),
                Setting::optional("memory.swap.max", 0),
            ]
        );
        assert_eq!(
            settings(Version::V1, Controller::Memory, &LIMITS),
            vec![
                Setting::required("memory.limit_in_bytes", 32u64 << 20),
                Setting::optional("memory.memsw.limit_in_bytes", 32u64 << 20),
            ]
        );
        // A sliver of a CPU still gets the kernel's smallest quota.
        let tiny = Limits {
            cpu_millis: 1,
            ..none
        };
        assert_eq!(
            settings(Version::V2, Controller::Cpu, &tiny),
            vec![Setting::required("cpu.max", "1000 100000")]
        );
    }

    #[test]
    fn nothing_usable_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nonexistent");
        assert!(matches!(
            Cgroups::detect(&options(&missing)),
            Err(Error::NotFound { .. })
        ));
        // v2 without memory, no v1: nothing.
        fake_v2(dir.path(), "cpu pids\n");
        assert!(matches!(
            Cgroups::detect(&options(dir.path())),
            Err(Error::NotFound { .. })
        ));
        for parent in ["/abs", "../up", ""] {
            let options = CgroupOptions {
                root: dir.path().to_owned(),
                parent: PathBuf::from(parent),
            };
            assert!(
                matches!(Cgroups::detect(&options), Err(Error::BadParent { .. })),
                "{parent}"
            );
        }
    }

    /// The v2 moves, kills and removals against the kernel, where this host has a writable v2
    /// hierarchy (a pure v2 host, or the hybrid `unified` one, which may offer no controller:
    /// none is needed to move and kill processes). Skipped loudly elsewhere.
    #[test]
    fn v2_places_kills_and_removes_for_real() {
        let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .map(PathBuf::from)
            .into_iter()
            .find(|d| d.join("cgroup.controllers").exists());
        let parent = v2.map(|d| d.join(format!("gantry-unit-{}", std::process::id())));
        let Some(parent) = parent.filter(|p| std::fs::create_dir(p).is_ok()) else {
            eprintln!("!!! SKIPPED v2_places_kills_and_removes_for_real: no writable cgroup v2");
            return;
        };
        let cgroups = Cgroups {
            version: Version::V2,
            hierarchies: vec![Hierarchy {
                controllers: vec![],
                parent: parent.clone(),
            }],
        };
        let mut sleeper = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("sleep");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let result = runtime.block_on(async {
            cgroups.create("a-1", &LIMITS)?;
            cgroups.place("a-1", sleeper.id())?;
            let ours = std::fs::read_to_string(format!("/proc/{}/cgroup", sleeper.id()))
                .unwrap_or_default();
            cgroups.remove("a-1").await.map(|()| ours)
        });
        // Already dead when `remove` returns (the cgroup was empty), else killed here.
        let ended = sleeper.try_wait().ok().flatten();
        if ended.is_none() {
            let _ = sleeper.kill();
            let _ = sleeper.wait();
        }
        let _ = std::fs::remove_dir(parent.join("a-1"));
        let _ = std::fs::remove_dir(&parent);
        let ours = result.expect("create, place, remove");
        assert!(ours.contains("/gantry-unit-"), "moved: {ours}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            ended.and_then(|s| s.signal()),
            Some(9),
            "killed through its cgroup"
        );
        assert!(!parent.join("a-1").exists());
    }

    #[test]
    fn fields_parse() {
        assert_eq!(field("oom 1\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(field("oom_kill_disable 0\n", "oom_kill"), None);
        assert_eq!(field("", "oom_kill"), None);
    }
}
