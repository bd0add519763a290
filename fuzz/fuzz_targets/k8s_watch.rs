//! The Kubernetes watch stream: line framing across arbitrary chunk boundaries and each line's
//! `WatchEvent` (Secret or Status). Never panics; framing does not depend on where chunks end;
//! no `data` value reaches an `ERROR` event's error.
#![no_main]

use keyrack_fuzz::{MARKER, assert_clean, json_object, marker_b64, plant};
use keyrack_k8s::fuzzing::{WatchLine, watch_stream};
use libfuzzer_sys::fuzz_target;

/// The lines' kinds and resourceVersions (versions are keyed per call, so left out).
fn shape(lines: &[WatchLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l {
            WatchLine::Blank => "blank".into(),
            WatchLine::Malformed(c) => format!("malformed@{c}"),
            WatchLine::Event(k, rv, end, _) => format!("{k} {rv:?} {end}"),
            WatchLine::Error(e) => format!("error {e}"),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, stream)) = data.split_first() else {
        return;
    };
    let key = (cuts & 1 == 1).then_some("password");
    // Chunks of 1 + (cuts >> 1) bytes, against the whole stream at once.
    let size = 1 + usize::from(cuts >> 1);
    let chunks: Vec<&[u8]> = stream.chunks(size).collect();
    let (a, left_a) = watch_stream(&chunks, key);
    let (b, left_b) = watch_stream(&[stream], key);
    assert_eq!(shape(&a), shape(&b));
    assert_eq!(left_a, left_b);

    // Planted: each line's object's `data` values (base64 of the marker) and its annotations'.
    let mut planted = Vec::new();
    for line in stream.split(|&b| b == b'\n') {
        let Some(mut o) = json_object(line) else {
            continue;
        };
        if let Some(object) = o.get_mut("object").and_then(|v| v.as_object_mut()) {
            if let Some(d) = object.get_mut("data") {
                plant(d, &marker_b64());
            }
            if let Some(a) = object
                .get_mut("metadata")
                .and_then(|m| m.get_mut("annotations"))
            {
                plant(a, MARKER);
            }
        }
        planted.extend(serde_json::to_vec(&o).expect("serializes"));
        planted.push(b'\n');
    }
    let (lines, _) = watch_stream(&[&planted], key);
    for l in &lines {
        if let WatchLine::Error(e) = l {
            assert_clean(e, "watch ERROR event");
        }
    }
});
