//! What the local process executor enforces, checked from inside the jobs it runs: as root,
//! every attempt runs as an unprivileged uid of its own without supplementary groups, reaches
//! its own directory and nothing of gantry's data dir nor another attempt's; rlimits apply;
//! each attempt runs in a cgroup of its own with the job's memory, CPU and pids limits, gone
//! when the attempt ends, and an OOM kill is reported as one; without writable cgroups jobs
//! still run and the executor says limits are not enforced; the working directory is
//! honoured; a failed setup starts nothing; `discard` and `find` stop every process of an
//! attempt and remove its cgroup; and a job inherits no descriptor of gantry's.
//!
//! The isolation tests need root (they really switch users): without it they print a loud
//! SKIPPED line and return. The cgroup tests need root and a writable cgroup hierarchy with
//! the memory, pids and cpu controllers: without them they skip loudly, and fail under
//! GANTRY_REQUIRE_SERVICES=1.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_actors::executor::{Executor, Outcome, RunSpec};
use gantry_events::event::JobSpec;
use gantry_nodes::executor::cgroup::CgroupOptions;
use gantry_nodes::executor::process::{ProcessExecutor, ProcessOptions, UidRange};
use gantry_nodes::up::ExecutorChoice;
use gantry_tests::services::unavailable;
use gantry_tests::system::{Gantry, printed_value as value};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(30);
const MEMORY: u64 = 512 << 20;

/// A data dir laid out as gantry's, with files of gantry's in it, and its executor.
struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    executor: ProcessExecutor,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(ProcessOptions::default())
    }

    fn with(options: ProcessOptions) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        // The temp dir itself: the executor makes it searchable; /tmp above it is.
        let data = dir.path().to_owned();
        std::fs::write(data.join("events.log"), "gantry's log\n").expect("log");
        std::fs::write(data.join("node-id"), "node\n").expect("node id");
        std::fs::create_dir(data.join("views")).expect("views");
        std::fs::write(data.join("views/db"), "views\n").expect("views");
        for file in ["events.log", "node-id", "views/db"] {
            set_mode(&data.join(file), 0o644);
        }
        set_mode(&data.join("views"), 0o755);
        let executor = ProcessExecutor::open(&data, options).expect("open");
        Setup {
            _dir: dir,
            data,
            executor,
        }
    }

    /// An isolating setup, or `None` (with a loud notice) when this is not root.
    fn isolated(test: &str) -> Option<Setup> {
        let setup = Setup::new();
        if setup.executor.isolated() {
            return Some(setup);
        }
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! SKIPPED {test}: needs root (jobs are switched to their own uids)");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        None
    }

    /// A setup whose executor limits jobs through cgroups, or `None` (with a loud notice, or a
    /// failure under GANTRY_REQUIRE_SERVICES=1) when this machine lets it make none.
    fn cgrouped(options: ProcessOptions) -> Option<Setup> {
        let setup = Setup::with(options);
        if setup.executor.limits_enforced() {
            return Some(setup);
        }
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        unavailable(
            "cgroups",
            &format!(
                "no writable cgroup hierarchy with memory, pids and cpu under /sys/fs/cgroup \
                 (running as root: {root})"
            ),
        )
    }

    /// Starts `script`, which forks and prints `uid: N`; waits for the print. Returns the
    /// attempt, its handle, its process group and the uid it ran as.
    async fn start_forked(&self, script: &str) -> (RunSpec, String, i32, u32) {
        let run = self.attempt(script);
        let handle = self.executor.start(&run).await.expect("started");
        let pgid: i32 = handle.parse().expect("pid");
        until("the job forked", || {
            value(&printed(&run.log_path), "uid:").is_some()
        })
        .await;
        let uid = uid_of(&printed(&run.log_path));
        (run, handle, pgid, uid)
    }

    /// An attempt of `sh -c script`, logging where gantry's worker would.
    fn attempt(&self, script: &str) -> RunSpec {
        let spec: JobSpec = serde_json::from_value(json!({
            "name": "probe", "image": "local", "command": ["sh", "-c", script],
            "resources": { "cpu_millis": 500, "memory_bytes": MEMORY },
        }))
        .expect("job spec");
        let job_id = uuid::Uuid::now_v7();
        RunSpec {
            job_id,
            attempt: 1,
            spec,
            gpu_uuids: vec![],
            log_path: self
                .data
                .join("logs")
                .join(job_id.to_string())
                .join("attempt-1.log"),
            started_at_ms: None,
            secrets: Default::default(),
        }
    }

    fn dir(&self, run: &RunSpec) -> PathBuf {
        self.executor.attempt_dir(run.job_id, run.attempt)
    }

    /// Runs the attempt to its end: its outcome and what it printed.
    async fn run(&self, run: &RunSpec) -> (Outcome, Vec<String>) {
        let handle = self.executor.start(run).await.expect("started");
        let outcome = self.executor.wait(&handle, run).await;
        (outcome, printed(&run.log_path))
    }
}

impl Drop for Setup {
    /// A failed test must not leave its jobs running: kill whatever still works in the data
    /// dir.
    fn drop(&mut self) {
        for pid in processes_in(&self.data) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// What the attempt printed, from its output file.
fn printed(log: &Path) -> Vec<String> {
    gantry_tests::system::printed(&std::fs::read_to_string(log).unwrap_or_default())
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Live (not zombie) processes, with their real uid, process group and working directory.
fn processes() -> Vec<(i32, u32, i32, Option<PathBuf>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
        {
            continue;
        }
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let (Some(uid), Some(pgid)) = (field("Uid:"), field("NSpgid:")) else {
            continue;
        };
        let cwd = std::fs::read_link(entry.path().join("cwd")).ok();
        out.push((pid, uid as u32, pgid as i32, cwd));
    }
    out
}

fn processes_in(dir: &Path) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, _, _, cwd)| cwd.as_deref().is_some_and(|c| c.starts_with(dir)))
        .map(|(pid, ..)| pid)
        .collect()
}

fn processes_of_uid(uid: u32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, u, ..)| *u == uid)
        .map(|(pid, ..)| pid)
        .collect()
}

fn processes_of_group(pgid: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, _, g, _)| *g == pgid)
        .map(|(pid, ..)| pid)
        .collect()
}

/// The uid a job printed as `uid: N`.
fn uid_of(lines: &[String]) -> u32 {
    value(lines, "uid:")
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no uid printed: {lines:?}"))
}

#[test]
fn jobs_run_as_unprivileged_users_of_their_own() {
    let Some(setup) = Setup::isolated("jobs_run_as_unprivileged_users_of_their_own") else {
        return;
    };
    let probe = "echo uid: $(id -u); echo gid: $(id -g); echo ruid: $(id -u -r); \
                 grep -E '^(Groups|CapEff|CapPrm):' /proc/self/status";
    runtime().block_on(async {
        // The first one stays alive while the second runs: two live attempts.
        let first = setup.attempt(&format!("{probe}; echo ready; exec sleep 300"));
        let first_handle = setup.executor.start(&first).await.expect("started");
        until("the first attempt is up", || {
            printed(&first.log_path).contains(&"stdout ready".to_owned())
        })
        .await;
        let second = setup.attempt(probe);
        let (outcome, lines) = setup.run(&second).await;
        assert_eq!(
            outcome,
            Outcome::Exited {
                code: 0,
                oom_killed: false
            },
            "{lines:?}"
        );
        setup.executor.kill(&first_handle).await;
        setup.executor.wait(&first_handle, &first).await;
        let first_lines = printed(&first.log_path);

        for lines in [&first_lines, &lines] {
            let uid = uid_of(lines);
            assert!(UidRange::DEFAULT.first <= uid, "{lines:?}");
            assert!(uid < UidRange::DEFAULT.first + UidRange::DEFAULT.count);
            assert_eq!(value(lines, "ruid:"), Some(uid.to_string().as_str()));
            assert_eq!(value(lines, "gid:"), Some(uid.to_string().as_str()));
            assert_eq!(value(lines, "Groups:"), Some(""), "no supplementary groups");
            assert_eq!(value(lines, "CapEff:"), Some("0000000000000000"));
            assert_eq!(value(lines, "CapPrm:"), Some("0000000000000000"));
        }
        assert_ne!(
            uid_of(&first_lines),
            uid_of(&lines),
            "live attempts never share a uid"
        );
    });
}

#[test]
fn jobs_reach_only_their_own_directory() {
    let Some(setup) = Setup::isolated("jobs_reach_only_their_own_directory") else {
        return;
    };
    runtime().block_on(async {
        let other = setup.attempt("echo secret > mine; echo ready; exec sleep 300");
        let other_handle = setup.executor.start(&other).await.expect("started");
        until("the other attempt wrote its file", || {
            printed(&other.log_path).contains(&"stdout ready".to_owned())
        })
        .await;
        // Made after the executor opened: sealed before the next start.
        std::fs::write(setup.data.join("late.txt"), "late\n").expect("late file");
        set_mode(&setup.data.join("late.txt"), 0o644);

        let data = setup.data.display().to_string();
        let other_dir = setup.dir(&other).display().to_string();
        let other_log = other.log_path.display().to_string();
        let mut denied = vec![
            format!("ls {data}"),
            format!("cat {data}/events.log"),
            format!("cat {data}/node-id"),
            format!("cat {data}/late.txt"),
            format!("ls {data}/views"),
            format!("cat {data}/views/db"),
            format!("ls {data}/logs"),
            format!("cat {other_log}"),
            format!("touch {data}/new"),
            format!("ls {data}/work"),
            format!("ls {data}/work/{}", other.job_id),
            format!("ls {other_dir}"),
            format!("cat {other_dir}/mine"),
            format!("touch {other_dir}/x"),
        ];
        let allowed = [
            "touch ./own".to_owned(),
            "cat ./own".to_owned(),
            "touch $HOME/home".to_owned(),
            "ls $HOME".to_owned(),
        ];
        let probe = |commands: &[String]| {
            commands
                .iter()
                .map(|c| format!("if {c} >/dev/null 2>&1; then echo 'allowed: {c}'; else echo 'denied: {c}'; fi"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut prober = setup.attempt("");
        let own_job = setup.data.join("work").join(prober.job_id.to_string());
        // Its own pid file: gantry's record, out of the job's reach.
        denied.push(format!("touch {}/1.pid", own_job.display()));
        denied.push(format!("touch {}/x", own_job.display()));
        let all: Vec<String> = denied.iter().chain(&allowed).cloned().collect();
        prober.spec.command = vec!["sh".into(), "-c".into(), probe(&all)];
        let (outcome, lines) = setup.run(&prober).await;
        assert!(matches!(outcome, Outcome::Exited { code: 0, .. }), "{lines:?}");
        for c in &denied {
            assert!(lines.contains(&format!("stdout denied: {c}")), "{c}: {lines:?}");
        }
        for c in &allowed {
            assert!(lines.contains(&format!("stdout allowed: {c}")), "{c}: {lines:?}");
        }

        // The other attempt ends: its processes go, its directory is handed back to gantry.
        let uid = std::fs::metadata(setup.dir(&other)).expect("dir").uid();
        assert_ne!(uid, 0, "a live attempt's directory is its own");
        setup.executor.kill(&other_handle).await;
        setup.executor.wait(&other_handle, &other).await;
        let sealed = std::fs::metadata(setup.dir(&other)).expect("dir");
        assert_eq!((sealed.uid(), sealed.mode() & 0o777), (0, 0o700));
        assert_eq!(processes_of_uid(uid), Vec::<i32>::new());
        let later = probe(&[format!("cat {other_dir}/mine")]);
        let (_, lines) = setup.run(&setup.attempt(&later)).await;
        assert!(
            lines.contains(&format!("stdout denied: cat {other_dir}/mine")),
            "{lines:?}"
        );
    });
}

#[test]
fn limits_apply() {
    let setup = Setup::new();
    if !Path::new("/usr/bin/prlimit").exists() && !Path::new("/bin/prlimit").exists() {
        eprintln!("!!! SKIPPED limits_apply: prlimit (util-linux) is not installed");
        return;
    }
    runtime().block_on(async {
        // The soft limits, from the kernel (sh builtins differ between shells).
        let run = setup.attempt(
            "while read -r line; do case $line in \
               'Max open files'*) set -- $line; echo nofile: $4;; \
               'Max processes'*) set -- $line; echo nproc: $3;; \
               'Max address space'*) set -- $line; echo as: $4;; \
             esac; done < /proc/self/limits",
        );
        let (outcome, lines) = setup.run(&run).await;
        assert!(
            matches!(outcome, Outcome::Exited { code: 0, .. }),
            "{lines:?}"
        );
        let options = ProcessOptions::default();
        let nofile = options.nofile.to_string();
        assert_eq!(value(&lines, "nofile:"), Some(nofile.as_str()), "{lines:?}");
        // No address-space limit of the job's own (CUDA reserves huge virtual ranges): the
        // job has what this test process has.
        let ours = std::fs::read_to_string("/proc/self/limits").expect("limits");
        let ours = ours
            .lines()
            .find_map(|l| l.strip_prefix("Max address space"))
            .and_then(|l| l.split_whitespace().next())
            .expect("address space limit");
        assert_eq!(value(&lines, "as:"), Some(ours), "{lines:?}");
        if setup.executor.isolated() {
            let nproc = options.nproc.to_string();
            assert_eq!(value(&lines, "nproc:"), Some(nproc.as_str()), "{lines:?}");
        }
    });
}

/// Prints the job's cgroups (`cgroup: <line of /proc/self/cgroup>`) and the limits they hold
/// (`memory:`, `pids:`, `cpu: <quota> <period>`), read from inside the job, for cgroup v1 (a
/// hierarchy per controller) and v2 (one hierarchy).
const CGROUP_PROBE: &str = r#"
while read -r line; do echo "cgroup: $line"; done < /proc/self/cgroup
while IFS=: read -r id controllers path; do
  case ",$controllers," in
    *,memory,*) echo "memory: $(cat /sys/fs/cgroup/memory$path/memory.limit_in_bytes)";;
  esac
  case ",$controllers," in
    *,pids,*) echo "pids: $(cat /sys/fs/cgroup/pids$path/pids.max)";;
  esac
  case ",$controllers," in
    *,cpu,*) echo "cpu: $(cat /sys/fs/cgroup/cpu$path/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu$path/cpu.cfs_period_us)";;
  esac
  if [ -z "$controllers" ] && [ -e "/sys/fs/cgroup$path/memory.max" ]; then
    echo "memory: $(cat /sys/fs/cgroup$path/memory.max)"
    echo "pids: $(cat /sys/fs/cgroup$path/pids.max)"
    echo "cpu: $(cat /sys/fs/cgroup$path/cpu.max)"
  fi
done < /proc/self/cgroup
"#;

#[test]
fn each_attempt_runs_in_a_cgroup_with_its_limits() {
    let Some(setup) = Setup::cgrouped(ProcessOptions::default()) else {
        return;
    };
    runtime().block_on(async {
        let run = setup.attempt(CGROUP_PROBE);
        let dirs = setup.executor.attempt_cgroups(run.job_id, run.attempt);
        assert!(!dirs.is_empty());
        let (outcome, lines) = setup.run(&run).await;
        assert_eq!(
            outcome,
            Outcome::Exited {
                code: 0,
                oom_killed: false
            },
            "{lines:?}"
        );
        // In the attempt's own cgroup, in every hierarchy gantry uses (v1: memory, pids and
        // cpu each; v2: the one).
        let name = format!("/gantry/{}-{}", run.job_id, run.attempt);
        let in_attempt: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("stdout cgroup: ") && l.ends_with(&name))
            .collect();
        assert_eq!(in_attempt.len(), dirs.len(), "{lines:?}");
        for dir in &dirs {
            assert!(dir.ends_with(&name[1..]), "{}", dir.display());
        }
        // The limits, as the job's own cgroup files say.
        let memory = MEMORY.to_string();
        assert_eq!(value(&lines, "memory:"), Some(memory.as_str()), "{lines:?}");
        let pids = ProcessOptions::default().pids_limit.to_string();
        assert_eq!(value(&lines, "pids:"), Some(pids.as_str()), "{lines:?}");
        // 500 millis: half of each 100 ms period.
        assert_eq!(value(&lines, "cpu:"), Some("50000 100000"), "{lines:?}");
        // The attempt over, its cgroup is gone.
        for dir in &dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    });
}

#[test]
fn the_pids_limit_holds() {
    let options = ProcessOptions {
        pids_limit: 8,
        ..ProcessOptions::default()
    };
    let Some(setup) = Setup::cgrouped(options) else {
        return;
    };
    runtime().block_on(async {
        // The job itself and seven more: the eighth fork fails.
        let run = setup.attempt(
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 300 & done; echo forked: $i; wait",
        );
        let (_, lines) = setup.run(&run).await;
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("stderr ") && l.to_lowercase().contains("fork")),
            "a fork past the limit fails: {lines:?}"
        );
        // The sleeps it did start went with the attempt.
        assert_eq!(processes_in(&setup.dir(&run)), Vec::<i32>::new());
    });
}

#[test]
fn an_oom_killed_job_says_so() {
    let Some(setup) = Setup::cgrouped(ProcessOptions::default()) else {
        return;
    };
    runtime().block_on(async {
        let mut run = setup.attempt("echo growing; x=a; while :; do x=$x$x; done");
        run.spec.resources.memory_bytes = 32 << 20;
        let (outcome, lines) = setup.run(&run).await;
        assert_eq!(
            outcome,
            Outcome::Exited {
                code: 137,
                oom_killed: true
            },
            "{lines:?}"
        );
        assert!(lines.contains(&"stdout growing".to_owned()), "{lines:?}");
        for dir in setup.executor.attempt_cgroups(run.job_id, run.attempt) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    });
}

#[test]
fn without_writable_cgroups_jobs_run_unlimited_and_say_so() {
    let empty = tempfile::tempdir().expect("tempdir");
    for root in [empty.path().join("nonexistent"), empty.path().to_owned()] {
        let options = ProcessOptions {
            cgroups: CgroupOptions {
                root: root.clone(),
                ..CgroupOptions::default()
            },
            ..ProcessOptions::default()
        };
        let setup = Setup::with(options);
        assert!(!setup.executor.limits_enforced(), "{}", root.display());
        runtime().block_on(async {
            let run = setup.attempt(
                "echo ran; while read -r l; do echo \"cgroup: $l\"; done < /proc/self/cgroup",
            );
            assert_eq!(
                setup.executor.attempt_cgroups(run.job_id, 1),
                Vec::<PathBuf>::new()
            );
            let (outcome, lines) = setup.run(&run).await;
            assert!(
                matches!(
                    outcome,
                    Outcome::Exited {
                        code: 0,
                        oom_killed: false
                    }
                ),
                "{lines:?}"
            );
            assert!(lines.contains(&"stdout ran".to_owned()), "{lines:?}");
            let job = run.job_id.to_string();
            assert!(
                !lines.iter().any(|l| l.contains(&job)),
                "in no cgroup of the attempt: {lines:?}"
            );
        });
    }
}

#[test]
fn the_working_directory_is_honoured() {
    let setup = Setup::new();
    runtime().block_on(async {
        let mut relative = setup.attempt("echo pwd: $(pwd); touch here");
        relative.spec.working_dir = Some("sub/dir".into());
        let (outcome, lines) = setup.run(&relative).await;
        assert!(
            matches!(outcome, Outcome::Exited { code: 0, .. }),
            "{lines:?}"
        );
        let expected = setup.dir(&relative).join("sub/dir");
        assert_eq!(
            value(&lines, "pwd:"),
            Some(expected.display().to_string().as_str())
        );
        assert!(expected.join("here").exists(), "the job wrote there");

        let mut absolute = setup.attempt("echo pwd: $(pwd)");
        absolute.spec.working_dir = Some("/".into());
        let (_, lines) = setup.run(&absolute).await;
        assert_eq!(value(&lines, "pwd:"), Some("/"));

        let mut escaping = setup.attempt("echo should not run");
        escaping.spec.working_dir = Some("../../elsewhere".into());
        match setup.executor.start(&escaping).await {
            Err(Outcome::Failed { message }) => assert!(message.contains("leaves"), "{message}"),
            other => panic!("a working_dir outside the attempt started: {other:?}"),
        }
    });
}

#[test]
fn a_failed_setup_starts_nothing() {
    let setup = Setup::new();
    runtime().block_on(async {
        // The log file cannot be made: its parent is a file.
        let mut no_log = setup.attempt("touch started; exec sleep 300");
        let blocker = setup.data.join("logs").join("blocker");
        std::fs::create_dir_all(blocker.parent().expect("parent")).expect("logs");
        std::fs::write(&blocker, "a file, not a directory").expect("blocker");
        no_log.log_path = blocker.join("attempt-1.log");
        match setup.executor.start(&no_log).await {
            Err(Outcome::Failed { message }) => {
                assert!(
                    message.contains("log") && message.contains("blocker"),
                    "{message}"
                )
            }
            other => panic!("started without a log file: {other:?}"),
        }
        // A child, had one been spawned, would exist by now (the spawn returns after its exec).
        assert_eq!(processes_in(&setup.dir(&no_log)), Vec::<i32>::new());
        assert!(!setup.dir(&no_log).join("started").exists());

        // The pid file cannot be made: a directory stands in its place.
        let no_pid = setup.attempt("touch started; exec sleep 300");
        let pid_file = setup
            .data
            .join("work")
            .join(no_pid.job_id.to_string())
            .join("1.pid");
        std::fs::create_dir_all(&pid_file).expect("pid blocker");
        match setup.executor.start(&no_pid).await {
            Err(Outcome::Failed { message }) => {
                assert!(message.contains("pid file"), "{message}")
            }
            other => panic!("started without a pid file: {other:?}"),
        }
        assert_eq!(processes_in(&setup.dir(&no_pid)), Vec::<i32>::new());
        assert!(!setup.dir(&no_pid).join("started").exists());
    });
}

#[test]
fn discard_and_find_stop_every_process_of_the_attempt() {
    let setup = Setup::new();
    // As its own uid, a job's escape from its process group (setsid) is caught too.
    let script = if setup.executor.isolated() {
        "setsid sleep 300 & sleep 300 & echo uid: $(id -u); wait"
    } else {
        "sleep 300 & sleep 301 & echo uid: $(id -u); wait"
    };
    runtime().block_on(async {
        // discard, on the executor that started it.
        let (run, handle, pgid, uid) = setup.start_forked(script).await;
        assert!(processes_of_group(pgid).len() >= 2);
        setup.executor.discard(run.job_id, run.attempt).await;
        until("the group is gone", || processes_of_group(pgid).is_empty()).await;
        if setup.executor.isolated() {
            assert_eq!(
                processes_of_uid(uid),
                Vec::<i32>::new(),
                "the setsid one too"
            );
        }
        // Its end was collected: a later wait reads it.
        assert!(matches!(
            setup.executor.wait(&handle, &run).await,
            Outcome::Exited { code: 137, .. }
        ));
        for dir in setup.executor.attempt_cgroups(run.job_id, run.attempt) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }

        // find, on an executor of a restarted gantry: the process is not its child.
        let (run, handle, pgid, uid) = setup.start_forked(script).await;
        let restarted =
            ProcessExecutor::open(&setup.data, ProcessOptions::default()).expect("open");
        assert_eq!(restarted.find(run.job_id, run.attempt).await, None);
        until("the group is gone", || processes_of_group(pgid).is_empty()).await;
        for dir in restarted.attempt_cgroups(run.job_id, run.attempt) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        if setup.executor.isolated() {
            assert_eq!(
                processes_of_uid(uid),
                Vec::<i32>::new(),
                "the setsid one too"
            );
            let sealed = std::fs::metadata(setup.dir(&run)).expect("dir");
            assert_eq!((sealed.uid(), sealed.mode() & 0o777), (0, 0o700));
        }
        // The first executor still reaps its child.
        setup.executor.wait(&handle, &run).await;
    });
}

/// Descriptors of this process now: number → whether it is close-on-exec.
fn descriptors() -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo")
        .expect("fdinfo")
        .flatten()
    {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Closed since the listing (the listing's own descriptor, say).
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        const O_CLOEXEC: u32 = 0o2000000;
        out.push((fd, flags & O_CLOEXEC != 0));
    }
    out
}

#[test]
fn jobs_inherit_no_descriptor_of_gantrys() {
    let before: Vec<u32> = descriptors().into_iter().map(|(fd, _)| fd).collect();
    let held = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let _log = rt
        .block_on(gantry_events::EmbeddedLog::open(held.path().join("log")))
        .expect("embedded log");
    let _views = gantry_projections::Projections::open(held.path().join("views")).expect("views");
    // A whole gantry in this process too: its log, views, sockets and actors.
    let gantry = Gantry::start(ExecutorChoice::Process);
    let setup = Setup::new();

    let fds = "ls -l /proc/self/fd";
    let (outcome, lines) = rt.block_on(setup.run(&setup.attempt(fds)));
    assert!(
        matches!(outcome, Outcome::Exited { code: 0, .. }),
        "{lines:?}"
    );
    let id = gantry.submit(json!({
        "name": "fds", "image": "busybox", "command": ["sh", "-c", fds],
        "resources": { "cpus": 0.25, "memory_bytes": MEMORY },
    }));
    let job = gantry.wait_for(&id, &["succeeded", "dead_lettered"], WITHIN);
    assert_eq!(job["state"], "succeeded", "{job}");
    let through_gantry: Vec<String> = gantry
        .logs(&id, 1)
        .lines()
        .map(|l| l.split_once(' ').map_or("", |(_, rest)| rest).to_owned())
        .collect();

    for lines in [&lines, &through_gantry] {
        // `<mode> … <fd> -> <target>`; ls's own descriptor is the /proc/<pid>/fd it reads.
        let open: Vec<(&str, &str)> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("stdout "))
            .filter_map(|l| l.split_once(" -> "))
            .map(|(left, target)| (left.rsplit(' ').next().unwrap_or(""), target))
            .collect();
        assert!(open.len() >= 3, "{lines:?}");
        for (fd, target) in open {
            let ls_own = target.starts_with("/proc/") && target.ends_with("/fd");
            assert!(
                ["0", "1", "2"].contains(&fd) || ls_own,
                "the job inherited fd {fd} -> {target}: {lines:?}"
            );
        }
    }

    // Everything opened here since the test began is close-on-exec.
    let leaky: Vec<u32> = descriptors()
        .into_iter()
        .filter(|(fd, cloexec)| !before.contains(fd) && !cloexec)
        .map(|(fd, _)| fd)
        .collect();
    assert_eq!(leaky, Vec::<u32>::new(), "descriptors without O_CLOEXEC");
}
