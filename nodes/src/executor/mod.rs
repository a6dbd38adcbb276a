//! Executors: Docker (the default when an engine answers) and local processes, with the
//! cgroups the local process executor limits its jobs with.

pub mod cgroup;
pub mod docker;
pub mod process;

/// The variable CUDA reads to choose its devices; UUIDs (`GPU-…`) are accepted.
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
/// The variable the NVIDIA container toolkit reads to choose the devices it mounts.
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// The environment that tells a job which GPUs it was given: their UUIDs, comma-separated,
/// in both variables. With none, `CUDA_VISIBLE_DEVICES` is empty (CUDA then sees no device)
/// and `NVIDIA_VISIBLE_DEVICES` is `void` (the toolkit mounts none; CUDA base images set it
/// to `all`, which would otherwise hand the job every GPU of the node). Executors set these
/// after the job's own variables, so a job cannot name GPUs it was not given.
pub fn gpu_env(gpu_uuids: &[String]) -> [(&'static str, String); 2] {
    let uuids = gpu_uuids.join(",");
    let nvidia = if gpu_uuids.is_empty() {
        "void".to_owned()
    } else {
        uuids.clone()
    };
    [
        (CUDA_VISIBLE_DEVICES, uuids),
        (NVIDIA_VISIBLE_DEVICES, nvidia),
    ]
}

/// Whether the executors set `name` themselves (a job's own value is dropped; submissions
/// naming one are refused earlier, see [`gantry_actors::spec::RESERVED_ENV`]).
pub fn is_gpu_env(name: &str) -> bool {
    gantry_actors::spec::RESERVED_ENV.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_set_are_the_ones_submissions_cannot_name() {
        for (name, _) in gpu_env(&[]) {
            assert!(is_gpu_env(name), "{name}");
        }
        assert_eq!(gantry_actors::spec::RESERVED_ENV.len(), 2);
    }

    #[test]
    fn gpu_env_names_the_uuids_or_none() {
        let two = ["GPU-aaaa".to_owned(), "GPU-bbbb".to_owned()];
        assert_eq!(
            gpu_env(&two),
            [
                (CUDA_VISIBLE_DEVICES, "GPU-aaaa,GPU-bbbb".to_owned()),
                (NVIDIA_VISIBLE_DEVICES, "GPU-aaaa,GPU-bbbb".to_owned()),
            ]
        );
        assert_eq!(
            gpu_env(&[]),
            [
                (CUDA_VISIBLE_DEVICES, String::new()),
                (NVIDIA_VISIBLE_DEVICES, "void".to_owned()),
            ]
        );
    }
}
