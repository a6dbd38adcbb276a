//! Property tests of the submission validators: whatever a client sends, validation answers
//! (never panics), a refusal names a field by its JSON path, and a spec it accepts keeps
//! within the documented limits.

use proptest::prelude::*;

use gantry_actors::spec::{
    GpuAsk, Limits, ResourceRequest, RetryRequest, SubmitRequest, check_image, validate,
};

/// The request's top-level fields: a refusal's field path starts with one of them.
const FIELDS: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "env",
    "working_dir",
    "resources",
    "timeout_secs",
    "retry",
    "priority",
    "queue",
    "labels",
    "network",
    "idempotency_key",
];

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._/:@-]{0,40}",
        any::<String>(),
        Just(String::new()),
        "[a-z]{1,8}",
    ]
}

type Gpus = Option<(u32, Option<String>, Option<u64>)>;
type Retry = Option<(Option<u32>, Option<u64>, Option<u64>)>;

fn request(
    (name, image, command): (String, String, Vec<String>),
    (cpus, memory_bytes, gpus): (Option<f64>, Option<u64>, Gpus),
    (timeout_secs, retry, priority, queue): (Option<u64>, Retry, i32, Option<String>),
    env: std::collections::BTreeMap<String, String>,
    labels: std::collections::BTreeMap<String, String>,
) -> SubmitRequest {
    SubmitRequest {
        name,
        image,
        command,
        env,
        labels,
        resources: ResourceRequest {
            cpus,
            memory_bytes,
            gpus: gpus.map(|(count, model, min_memory_bytes)| GpuAsk {
                count,
                model,
                min_memory_bytes,
            }),
        },
        timeout_secs,
        retry: retry.map(
            |(max_attempts, backoff_initial_ms, backoff_max_ms)| RetryRequest {
                max_attempts,
                backoff_initial_ms,
                backoff_max_ms,
                retry_user_failures: None,
            },
        ),
        priority,
        queue,
        ..SubmitRequest::default()
    }
}

fn any_request() -> impl Strategy<Value = SubmitRequest> {
    (
        (
            any_text(),
            any_text(),
            prop::collection::vec(any_text(), 0..4),
        ),
        (
            prop::option::of(any::<f64>()),
            prop::option::of(any::<u64>()),
            prop::option::of((
                any::<u32>(),
                prop::option::of(any_text()),
                prop::option::of(any::<u64>()),
            )),
        ),
        (
            prop::option::of(any::<u64>()),
            prop::option::of((
                prop::option::of(any::<u32>()),
                prop::option::of(any::<u64>()),
                prop::option::of(any::<u64>()),
            )),
            any::<i32>(),
            prop::option::of(any_text()),
        ),
        prop::collection::btree_map(any_text(), any_text(), 0..4),
        prop::collection::btree_map(any_text(), any_text(), 0..4),
    )
        .prop_map(|(a, b, c, env, labels)| request(a, b, c, env, labels))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn validation_answers_and_names_a_known_field(request in any_request()) {
        let limits = Limits::default();
        match validate(&request, &limits) {
            Ok(spec) => {
                prop_assert!(!spec.name.is_empty() && spec.name.len() <= 128);
                prop_assert!(check_image(&spec.image).is_ok());
                prop_assert!(spec.resources.gpus.count <= limits.max_gpus);
                prop_assert!(spec.retry.backoff_initial_ms <= spec.retry.backoff_max_ms);
                prop_assert!((-1000..=1000).contains(&spec.priority));
            }
            Err(invalid) => {
                let top = invalid.field.split('.').next().unwrap_or_default();
                prop_assert!(FIELDS.contains(&top), "field {:?}", invalid.field);
                prop_assert!(!invalid.code.is_empty());
            }
        }
    }

    #[test]
    fn an_image_with_a_character_outside_references_is_refused(
        prefix in "[a-z]{1,10}",
        bad in "[ A-Z!#$%^&*()+=\\[\\]{}|;'\"<>?,`~\\\\]",
        suffix in "[a-z]{0,10}",
    ) {
        let image = format!("{prefix}{bad}{suffix}");
        prop_assert!(check_image(&image).is_err(), "{image}");
    }

    #[test]
    fn well_formed_references_are_accepted(
        host in prop::option::of((
            "[a-z][a-z0-9]{0,10}(\\.[a-z][a-z0-9]{0,10}){1,2}",
            prop::option::of(1u16..),
        )),
        path in prop::collection::vec("[a-z0-9]{1,10}([._-][a-z0-9]{1,5})?", 1..4),
        tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
    ) {
        let mut image = String::new();
        if let Some((host, port)) = &host {
            image.push_str(host);
            if let Some(port) = port {
                image.push_str(&format!(":{port}"));
            }
            image.push('/');
        }
        image.push_str(&path.join("/"));
        if let Some(tag) = &tag {
            image.push(':');
            image.push_str(tag);
        }
        prop_assert!(check_image(&image).is_ok(), "{image}");
    }
}
