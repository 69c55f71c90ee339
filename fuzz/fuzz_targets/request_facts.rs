//! The request-facts reader (the fields Sluice decides on, the prompt it estimates) and the
//! in-place `model` rewrite: never panic; a rewrite of a body serde_json reads is one
//! serde_json still reads, with `model` set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::json_edit::set_string_member;
use sluice::route::Operation;
use sluice::tokens::estimate::RequestFacts;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let op = match which % 4 {
        0 => Operation::ChatCompletions,
        1 => Operation::Completions,
        2 => Operation::Embeddings,
        _ => Operation::Responses,
    };
    let _ = RequestFacts::parse(op, body);
    if let Ok(Some(edited)) = set_string_member(body, "model", "pinned", true) {
        if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
            let v: serde_json::Value =
                serde_json::from_slice(&edited).expect("the rewrite stays JSON");
            assert_eq!(v["model"], "pinned");
        }
    }
});
