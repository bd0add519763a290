#![allow(clippy::unwrap_used)] // test helpers unwrap too
//! Request budgets, on a manual clock: calls spaced to the budget, the rate cut by throttling and
//! given back by successes, bad budgets refused, and a small fleet against a backend that enforces
//! a quota (the reason budgets exist).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::join_all;
use keyrack_core::sources::MemorySource;
use keyrack_core::{
    Capabilities, Clock, Error, ErrorKind, Lease, ManualClock, RequestBudget, Result, Secret,
    SecretRef, SecretSource, Secrets, Version, async_trait,
};

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// A client on the manual clock with `secrets` secrets (`mem://s0`, …) in one memory source
/// under `budget`.
fn budgeted(secrets: usize, budget: RequestBudget) -> (ManualClock, MemorySource, Secrets) {
    budgeted_within(secrets, budget, S(30))
}

/// [`budgeted`], with a request timeout of `timeout`.
fn budgeted_within(
    secrets: usize,
    budget: RequestBudget,
    timeout: Duration,
) -> (ManualClock, MemorySource, Secrets) {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    for i in 0..secrets {
        memory.set(format!("s{i}"), "v");
    }
    let client = Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .request_budget("mem", budget)
        .request_timeout(timeout)
        .build()
        .unwrap();
    (clock, memory, client)
}

/// `refs` prefetched by `secrets` while `clock` advances half a second at a time, until the
/// prefetch ends (at most 30 s): its results and how long it took.
async fn prefetch_in_steps<R: keyrack_core::ToSecretRef + Send + Sync + Clone + 'static>(
    clock: &ManualClock,
    secrets: &Secrets,
    refs: &[R],
) -> (Vec<Result<Secret>>, Duration) {
    let prefetch = tokio::spawn({
        let (secrets, refs) = (secrets.clone(), refs.to_vec());
        async move { secrets.prefetch(&refs).await }
    });
    let mut waited = Duration::ZERO;
    while !prefetch.is_finished() && waited < S(30) {
        clock.advance(MS(500)).await;
        waited += MS(500);
    }
    (prefetch.await.unwrap(), waited)
}

#[tokio::test]
async fn calls_wait_for_room_in_the_budget() {
    let (clock, memory, secrets) = budgeted(10, RequestBudget::per_second(2).with_burst(1).fixed());
    let reads = tokio::spawn({
        let secrets = secrets.clone();
        async move {
            join_all((0..10).map(|i| {
                let secrets = secrets.clone();
                async move { secrets.get_secret(format!("mem://s{i}")).await }
            }))
            .await
        }
    });
    keyrack_core::testkit::settle().await;
    assert_eq!(memory.calls().fetch, 1, "a burst of one");
    let mut seen = vec![memory.calls().fetch];
    for _ in 0..9 {
        clock.advance(MS(500)).await;
        seen.push(memory.calls().fetch);
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "one call per 500 ms");
    assert!(reads.await.unwrap().iter().all(Result::is_ok));
    assert_eq!(secrets.request_rate("mem"), Some(2.0));
}

/// A throttling answer halves the rate the source was sending at (here one call, not its
/// budget of 10/s: a budget it never reached would bind no one); successes give back 5 % of
/// the rate cut from per second, then half of the rate itself per second, up to the budget.
#[tokio::test]
async fn throttling_cuts_the_rate_and_successes_give_it_back() {
    let (clock, memory, secrets) = budgeted(5, RequestBudget::per_second(10));
    memory.throttle(None);
    let e = secrets.get_secret("mem://s0").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Throttled);
    assert_eq!(secrets.request_rate("mem"), Some(0.5));
    clock.advance(S(2)).await;
    secrets.get_secret("mem://s1").await.unwrap_err();
    assert_eq!(secrets.request_rate("mem"), Some(0.25));
    memory.recover();
    clock.advance(S(10)).await;
    secrets.get_secret("mem://s2").await.unwrap();
    // 5 % of the 0.5 cut from for each of the 10 s since the cut: back at 0.5.
    assert_eq!(secrets.request_rate("mem"), Some(0.5));
    clock.advance(S(2)).await;
    secrets.get_secret("mem://s3").await.unwrap();
    assert_eq!(
        secrets.request_rate("mem"),
        Some(1.0),
        "half of itself per second"
    );
    clock.advance(S(20)).await;
    secrets.get_secret("mem://s4").await.unwrap();
    assert_eq!(secrets.request_rate("mem"), Some(10.0));
}

/// Calls already waiting for their places when the backend throttles go at the cut rate, not
/// at the one their places were given at: six reads asked for together at 2/s, the first
/// refused. (Before, the five waiting went out at 0.5 s intervals, every one refused, and the
/// cut only slowed the calls asked for after it.)
#[tokio::test]
async fn calls_waiting_when_the_backend_throttles_go_at_the_cut_rate() {
    let (clock, memory, secrets) = budgeted(6, RequestBudget::per_second(2).with_burst(1));
    memory.set_latency(MS(100));
    memory.throttle(None);
    let reads = tokio::spawn({
        let secrets = secrets.clone();
        async move {
            join_all((0..6).map(|i| {
                let secrets = secrets.clone();
                async move { secrets.get_secret(&format!("mem://s{i}")).await }
            }))
            .await
        }
    });
    let mut sent = Vec::new();
    for _ in 0..40 {
        clock.advance(MS(100)).await;
        sent.push(memory.calls().fetch);
    }
    // `sent[i]`: calls by (i + 1) × 100 ms. The first refusal (answered at 0.1 s) halves the
    // 2/s the places were waiting at: the next goes 1 s later, at 1.1 s; its refusal (1.2 s)
    // halves again: the one after goes 2 s later, at 3.2 s.
    assert_eq!(&sent[..10], [1; 10], "{sent:?}");
    assert_eq!(&sent[10..31], [2; 21], "{sent:?}");
    assert_eq!(sent[31], 3, "{sent:?}");
    memory.recover();
    for _ in 0..300 {
        clock.advance(MS(100)).await;
    }
    // The three sent while it throttled failed; the rest waited (none past the request
    // timeout) and read their secrets.
    let results = reads.await.unwrap();
    for (i, result) in results.iter().enumerate() {
        match result {
            Err(e) if i < 3 => assert!(!e.is_budget_refusal(), "{e:?}"),
            r => assert!(r.is_ok(), "{i}: {r:?}"),
        }
    }
    assert_eq!(memory.calls().fetch, 6);
}

/// A call waiting for its place that a cut pushes past its request timeout is refused by the
/// budget at the cut, not left to wait: ten reads at 2/s (places up to 4.5 s) with a 5 s
/// timeout, the first refused by the backend (a 429 without Retry-After) and the rate halved,
/// so the places planned past the fifth second are refused at once.
#[tokio::test]
async fn a_cut_refuses_at_once_the_waiting_calls_it_pushes_past_their_timeout() {
    let (clock, memory, secrets) =
        budgeted_within(10, RequestBudget::per_second(2).with_burst(1), S(5));
    memory.set_latency(MS(100));
    memory.throttle(None);
    let reads: Vec<_> = (0..10)
        .map(|i| {
            let secrets = secrets.clone();
            tokio::spawn(async move { secrets.get_secret(&format!("mem://s{i}")).await })
        })
        .collect();
    let done = |reads: &[tokio::task::JoinHandle<_>]| -> Vec<bool> {
        reads
            .iter()
            .map(tokio::task::JoinHandle::is_finished)
            .collect()
    };
    clock.advance(MS(50)).await;
    assert_eq!(done(&reads), [false; 10], "all within their timeout");
    for _ in 0..3 {
        clock.advance(MS(100)).await;
    }
    // At 0.35 s, after the cut at 0.1 s to 1/s: the refused read and those now planned past
    // 5 s are done; the rest wait.
    let now = done(&reads);
    assert!(now[0] && now[9], "{now:?}");
    assert!(!now[1], "{now:?}");
    assert_eq!(memory.calls().fetch, 1);
    let last = reads.into_iter().last().unwrap().await.unwrap();
    let e = last.unwrap_err();
    assert!(e.is_budget_refusal(), "{e:?}");
    assert_eq!(e.kind(), &ErrorKind::Throttled);
}

#[tokio::test]
async fn a_hung_backend_is_not_budgeted_into_a_pile_up() {
    // Calls waiting for a budget are not sent while the backend hangs any faster than the
    // budget allows: a hang costs the budget, not extra calls.
    let (clock, memory, secrets) = budgeted_within(20, RequestBudget::per_second(1).fixed(), S(30));
    memory.hang();
    let reads = tokio::spawn({
        let secrets = secrets.clone();
        async move {
            join_all((0..20).map(|i| {
                let secrets = secrets.clone();
                async move { secrets.get_secret(format!("mem://s{i}")).await }
            }))
            .await
        }
    });
    for _ in 0..10 {
        clock.advance(S(1)).await;
    }
    assert!(
        memory.calls().fetch <= 11,
        "{} calls in 10 s",
        memory.calls().fetch
    );
    memory.recover();
    for _ in 0..20 {
        clock.advance(S(1)).await;
    }
    assert!(reads.await.unwrap().iter().all(Result::is_ok));
}

#[tokio::test]
async fn shutdown_revocations_do_not_wait_for_the_budget() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    for i in 0..3 {
        memory.lease(format!("db{i}"), S(3600), S(86_400), true);
        memory.set(format!("db{i}"), "v");
    }
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .request_budget("mem", RequestBudget::new(1, S(4)).fixed())
        .revoke_on_shutdown(true)
        .build()
        .unwrap();
    let loads = tokio::spawn({
        let secrets = secrets.clone();
        async move {
            for i in 0..3 {
                secrets.get_secret(format!("mem://db{i}")).await.unwrap();
            }
        }
    });
    for _ in 0..3 {
        clock.advance(S(4)).await;
    }
    loads.await.unwrap();
    let shutdown = tokio::spawn({
        let secrets = secrets.clone();
        async move { secrets.shutdown().await }
    });
    keyrack_core::testkit::settle().await;
    clock.advance(MS(10)).await;
    assert!(shutdown.is_finished(), "shutdown waited for the budget");
    assert_eq!(memory.calls().revoke, 3);
}

#[tokio::test]
async fn a_call_that_would_wait_past_the_request_timeout_is_refused_at_once() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    memory.set("a", "v");
    memory.set("b", "v");
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .request_budget("mem", RequestBudget::new(1, S(10)).fixed())
        .request_timeout(S(5))
        .build()
        .unwrap();
    secrets.get_secret("mem://a").await.unwrap();
    // Room in 10 s, the timeout is 5 s: refused now, with the wait as its hint, and no place
    // taken (retrying callers cannot pile up a queue).
    for _ in 0..5 {
        let refused = secrets.get_secret("mem://b").now_or_never();
        let e = refused.expect("not queued").unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Throttled);
        assert!(e.retry_after().is_some_and(|w| w <= S(10)), "{e}");
        clock.advance(S(1)).await;
    }
    assert_eq!(memory.calls().fetch, 1);
    clock.advance(S(5)).await;
    secrets.get_secret("mem://b").await.unwrap();
    assert_eq!(memory.calls().fetch, 2);
}

#[tokio::test]
async fn a_caller_that_gives_up_gives_its_place_back() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    for path in ["a", "b", "c"] {
        memory.set(path, "v");
    }
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .request_budget("mem", RequestBudget::new(1, S(2)).fixed())
        .build()
        .unwrap();
    secrets.get_secret("mem://a").await.unwrap();
    let gives_up = tokio::spawn({
        let secrets = secrets.clone();
        async move { secrets.get_secret("mem://b").await }
    });
    clock.advance(S(1)).await;
    gives_up.abort();
    let _ = gives_up.await;
    // The place at t = 2 s is free again: the next caller takes it, not the one at t = 4 s.
    let next = tokio::spawn({
        let secrets = secrets.clone();
        async move { secrets.get_secret("mem://c").await }
    });
    clock.advance(S(1)).await;
    assert!(next.await.unwrap().is_ok());
    assert_eq!(memory.calls().fetch, 2);
}

#[tokio::test]
async fn one_source_under_two_names_has_one_budget() {
    let clock = ManualClock::new();
    // A backend refusing past 1 call per second, whose default budget says so.
    let quota = Quota::new(clock.clone(), 1, S(1));
    let shared: Arc<dyn SecretSource> = Arc::new(quota.clone());
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .shared_source("one", shared.clone())
        .shared_source("two", shared)
        .build()
        .unwrap();
    let reads = tokio::spawn({
        let secrets = secrets.clone();
        async move {
            let (a, b) = tokio::join!(secrets.get_secret("one://x"), secrets.get_secret("two://y"));
            a.and(b)
        }
    });
    keyrack_core::testkit::settle().await;
    clock.advance(S(1)).await;
    reads.await.unwrap().unwrap();
    assert_eq!(
        quota.counts(),
        (2, 0),
        "two calls, a second apart, none throttled"
    );
}

#[test]
fn bad_budgets_are_config_errors_naming_the_source() {
    let e = Secrets::builder()
        .source("mem", MemorySource::new())
        .request_budget("mem", RequestBudget::new(0, S(1)))
        .request_budget("nope", RequestBudget::per_second(1))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config);
    let text = e.to_string();
    assert!(text.contains("`nope`, which is not registered"), "{text}");
    assert!(
        text.contains("source `mem`: a request budget needs"),
        "{text}"
    );
    // A period no clock could hold is refused too, not a panic at the first call.
    let e = Secrets::builder()
        .source("mem", MemorySource::new())
        .request_budget("mem", RequestBudget::new(1, Duration::MAX))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("less than 1 request per day"), "{e}");
}

#[tokio::test]
async fn a_source_default_applies_unless_the_application_overrides_it() {
    let clock = ManualClock::new();
    let quota = Quota::new(clock.clone(), 100, S(1));
    let defaulted = Secrets::builder()
        .clock(clock.clone())
        .source("q", quota.clone())
        .build()
        .unwrap();
    assert_eq!(defaulted.request_rate("q"), Some(100.0));
    let own = Secrets::builder()
        .clock(clock.clone())
        .source("q", quota.clone())
        .request_budget("q", RequestBudget::per_second(3))
        .build()
        .unwrap();
    assert_eq!(own.request_rate("q"), Some(3.0));
    let none = Secrets::builder()
        .clock(clock.clone())
        .source("q", quota)
        .unbudgeted("q")
        .build()
        .unwrap();
    assert_eq!(none.request_rate("q"), None);
}

/// A prefetch is one call to the source, but each of its reads is a request against the budget
/// (`fetch_each` asks for a place before every read after the first): ten reads at 2 per second
/// against a quota of 2 per second are spaced, none refused. (Before, the ten went out on the
/// call's one place: eight were throttled.)
#[tokio::test]
async fn a_prefetchs_reads_each_count_against_the_budget() {
    let clock = ManualClock::new();
    let quota = Quota::new(clock.clone(), 2, S(1));
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("q", quota.clone())
        .request_budget("q", RequestBudget::per_second(2).with_burst(1))
        .build()
        .unwrap();
    let refs: Vec<String> = (0..10).map(|i| format!("q://s{i}")).collect();
    let prefetch = tokio::spawn({
        let secrets = secrets.clone();
        async move { secrets.prefetch(&refs).await }
    });
    for _ in 0..10 {
        clock.advance(MS(500)).await;
    }
    let results = prefetch.await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(quota.counts(), (10, 0), "ten reads, none throttled");
}

/// A call's further requests wait for room as long as the call keeps going at the budget's pace
/// (each half a request timeout from the call's latest place or sign of life): ten reads at one
/// a second under a 4 s timeout take 9 s, and all are read. Before, they waited only during the
/// first half of the timeout from the call's first request: three were read and seven refused
/// `Throttled`, to be read one by one later (10,000 simulated pods sharing a Vault quota were
/// ready after 280 s, 2.57x the floor: `benches/fleet`, `vault_quota`, share).
#[tokio::test]
async fn a_prefetch_longer_than_the_timeout_goes_on_at_the_budgets_pace() {
    let clock = ManualClock::new();
    let quota = Quota::new(clock.clone(), 100, S(1));
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("q", quota.clone())
        .request_budget("q", RequestBudget::per_second(1).with_burst(1))
        .request_timeout(S(4))
        .build()
        .unwrap();
    let refs: Vec<String> = (0..10).map(|i| format!("q://s{i}")).collect();
    let (results, waited) = prefetch_in_steps(&clock, &secrets, &refs).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(quota.counts(), (10, 0));
    assert_eq!(waited, MS(9_000), "one read a second");
}

/// A read that needs a request of its own first (an authentication round trip) is bounded from
/// that request's place, not from when the read began: four such reads at one place a second
/// under a 2.5 s timeout take eight places and all succeed. Before, the second read began at
/// 2 s, its own request's place came at 5 s, and the read timed out at 4.5 s waiting for the
/// budget, and the prefetch with it.
#[tokio::test]
async fn a_read_waiting_for_its_own_requests_place_is_not_cut_off() {
    let clock = ManualClock::new();
    let singles = Arc::new(Singles::new(BeforeRead::Needed));
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .shared_source("auth", singles.clone())
        .request_budget("auth", RequestBudget::per_second(1).with_burst(1).fixed())
        .request_timeout(MS(2_500))
        .build()
        .unwrap();
    let refs: Vec<String> = (0..4).map(|i| format!("auth://s{i}")).collect();
    let (results, _) = prefetch_in_steps(&clock, &secrets, &refs).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(singles.fetched.load(Ordering::SeqCst), 4);
}

/// A read that hangs stops the reads that are waiting, inside their own requests, for the place
/// of a request they need first: one place a second, a 2.5 s timeout; the hung read is sent at
/// 0 s, the other two at 1 and 2 s, and their own requests' places come at 3 and 4 s. The hung
/// read times out at 2.5 s, and the other two give their places up then: nothing more is sent,
/// and the prefetch ends. Before, they waited for their places and were sent at 3 and 4 s.
#[tokio::test]
async fn a_hung_read_stops_the_reads_waiting_for_their_own_requests_places() {
    let clock = ManualClock::new();
    let singles = Arc::new(Singles::new(BeforeRead::NeededOrHang));
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .shared_source("auth", singles.clone())
        .request_budget("auth", RequestBudget::per_second(1).with_burst(1).fixed())
        .request_timeout(MS(2_500))
        .build()
        .unwrap();
    let refs = ["auth://hang", "auth://b", "auth://c"];
    let (results, waited) = prefetch_in_steps(&clock, &secrets, &refs).await;
    for e in results.iter().map(|r| r.as_ref().unwrap_err()) {
        assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    }
    assert_eq!(
        singles.fetched.load(Ordering::SeqCst),
        0,
        "nothing read after"
    );
    assert!(waited <= S(3), "the prefetch took {waited:?}");
}

/// A read that hangs stops the reads waiting for their places in the budget: with one place a
/// second and a 2.5 s timeout, the reads at 0, 1 and 2 s are sent and hang, and the one whose
/// place is at 3 s is not sent (the first read timed out at 2.5 s); the prefetch ends when the
/// last read sent times out, at 4.5 s. Before, that read waited for its place and was sent to the
/// hung backend too.
#[tokio::test]
async fn a_hung_read_stops_the_reads_waiting_for_their_places() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    for i in 0..10 {
        memory.set(format!("s{i}"), "v");
    }
    let backend = keyrack_core::testkit::Scripted::new(memory, clock.clone());
    backend.set_fault(
        keyrack_core::testkit::Op::Fetch,
        Some(keyrack_core::testkit::Fault::Hang),
    );
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("mem", backend.clone())
        .request_budget("mem", RequestBudget::per_second(1).with_burst(1))
        .request_timeout(MS(2_500))
        .build()
        .unwrap();
    let refs: Vec<String> = (0..10).map(|i| format!("mem://s{i}")).collect();
    let (results, waited) = prefetch_in_steps(&clock, &secrets, &refs).await;
    for e in results.iter().map(|r| r.as_ref().unwrap_err()) {
        assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    }
    assert_eq!(backend.count(keyrack_core::testkit::Op::Fetch), 3);
    assert_eq!(waited, MS(4_500), "the prefetch took {waited:?}");
}

/// A prefetch is one call whose reads answer one by one: reads the backend throttled inside it
/// cut the budget's rate as a throttled single call would. (Before, the call came back `Ok`
/// with throttled reads inside, and counted as a success.)
#[tokio::test]
async fn throttled_reads_inside_a_prefetch_cut_the_rate() {
    let clock = ManualClock::new();
    let quota = Quota::new(clock.clone(), 2, S(1));
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("q", quota.clone())
        .request_budget("q", RequestBudget::per_second(10))
        .build()
        .unwrap();
    let refs: Vec<String> = (0..10).map(|i| format!("q://s{i}")).collect();
    let results = secrets.prefetch(&refs).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
    // The reads after the first refusal are not sent (`fetch_each`; before, all ten were, and
    // eight refused).
    assert_eq!(quota.counts(), (3, 1));
    // Half of the three requests it had sent, not of its budget of 10/s.
    assert_eq!(secrets.request_rate("q"), Some(1.5));
}

/// A call whose further request the budget refused (no room within the request timeout) fails
/// with `Throttled`, marked as the client's own refusal: the backend refused nothing, so the
/// rate is not cut. (Before, the source's `Throttled` cut the rate like a 429.)
#[tokio::test]
async fn the_budgets_own_refusals_do_not_cut_its_rate() {
    let clock = ManualClock::new();
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("two", Singles::new(BeforeRead::Another))
        .request_budget("two", RequestBudget::per_second(1).with_burst(1))
        .request_timeout(S(1))
        .build()
        .unwrap();
    let e = secrets.get_secret("two://s").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Throttled, "{e}");
    assert!(e.is_budget_refusal(), "{e:?}");
    assert_eq!(secrets.request_rate("two"), Some(1.0));
    // A backend's own throttling answer is not marked.
    assert!(!Error::throttled(None, "429").is_budget_refusal());
}

/// A request a call cannot do without (an authentication round trip before the read) waits for
/// room while the call's time allows; when the room is further than that, it is sent at once
/// and counted, and the next call waits for it. Before, such a call under a budget with one
/// place per 25 s was refused every time (10,000 pods on one Key Vault: none started).
#[tokio::test]
async fn a_needed_request_waits_while_it_can_and_is_owed_after() {
    let clock = ManualClock::new();
    let build = |per: Duration| {
        Secrets::builder()
            .clock(clock.clone())
            .source("auth", Singles::new(BeforeRead::Needed))
            .request_budget("auth", RequestBudget::new(1, per).with_burst(1).fixed())
            .request_timeout(S(30))
            .build()
            .unwrap()
    };
    // One place per 20 s: the needed request waits 20 s for its own.
    let secrets = build(S(20));
    let read = tokio::spawn({
        let secrets = secrets.clone();
        async move { secrets.get_secret("auth://a").await }
    });
    keyrack_core::testkit::settle().await;
    assert!(!read.is_finished(), "sent before the budget had room");
    clock.advance(S(20)).await;
    read.await.unwrap().unwrap();

    // One place per 60 s: more than the call can wait, so it is sent now and owed: the next
    // call's room is two places away, past the request timeout, and it is refused at once.
    let secrets = build(S(60));
    secrets.get_secret("auth://a").await.unwrap();
    let e = secrets.get_secret("auth://b").await.unwrap_err();
    assert!(e.is_budget_refusal(), "{e:?}");
    assert_eq!(e.retry_after(), Some(S(120)));
}

/// The reads of a prefetch that the budget refused (they would have waited longer than half the
/// request timeout after the call's latest place: here one place per 10 s against a 10 s
/// timeout) are not remembered as failures: a read of one right after the prefetch waits for
/// its place. Before, the refusal was remembered for its hint counted from the prefetch's end
/// instead of from the refusal, and the read failed at once (10,000 pods with one request per
/// second each took 35 s to start instead of 21).
#[tokio::test]
async fn reads_the_budget_refused_in_a_prefetch_are_not_remembered() {
    let clock = ManualClock::new();
    let singles = Arc::new(Singles::new(BeforeRead::Nothing));
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .shared_source("one", singles.clone())
        .request_budget("one", RequestBudget::new(1, S(10)).with_burst(1).fixed())
        .request_timeout(S(10))
        .build()
        .unwrap();
    let refs: Vec<SecretRef> = (0..10)
        .map(|i| SecretRef::parse(&format!("one://s{i}")).unwrap())
        .collect();
    let prefetch = tokio::spawn({
        let secrets = secrets.clone();
        let refs = refs.clone();
        async move { secrets.prefetch(&refs).await }
    });
    keyrack_core::testkit::settle().await;
    let results = prefetch.await.unwrap();
    let refused: Vec<&SecretRef> = refs
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.as_ref().is_err_and(Error::is_budget_refusal))
        .map(|(r, _)| r)
        .collect();
    assert!(!refused.is_empty(), "{results:?}");
    let fetched = singles.fetched.load(Ordering::SeqCst);
    let read = tokio::spawn({
        let secrets = secrets.clone();
        let r = refused[0].clone();
        async move { secrets.get_secret(&r).await }
    });
    for _ in 0..10 {
        keyrack_core::testkit::settle().await;
        clock.advance(S(1)).await;
    }
    read.await.unwrap().unwrap();
    assert_eq!(singles.fetched.load(Ordering::SeqCst), fetched + 1);
}

/// A source without a batch API (a prefetch reads one by one, a place each, eight at a time)
/// whose read may need a request before it.
#[derive(Debug)]
struct Singles {
    before_read: BeforeRead,
    fetched: AtomicUsize,
}

#[derive(Clone, Copy, Debug)]
enum BeforeRead {
    Nothing,
    /// A further request (`budget::another_request`), which the budget may refuse.
    Another,
    /// A request the read cannot do without (`budget::needed_request`): an authentication
    /// round trip.
    Needed,
    /// As `Needed`, but a read of `hang` is sent and never answered.
    NeededOrHang,
}

impl Singles {
    fn new(before_read: BeforeRead) -> Self {
        Singles {
            before_read,
            fetched: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl SecretSource for Singles {
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        match self.before_read {
            BeforeRead::Nothing => {}
            BeforeRead::Another => keyrack_core::budget::another_request().await?,
            BeforeRead::Needed => keyrack_core::budget::needed_request().await,
            BeforeRead::NeededOrHang if r.path() == "hang" => std::future::pending().await,
            BeforeRead::NeededOrHang => keyrack_core::budget::needed_request().await,
        }
        self.fetched.fetch_add(1, Ordering::SeqCst);
        Ok(Secret::new(r.path().to_owned()))
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        keyrack_core::fetch_each(self, refs, 8).await
    }

    async fn version(&self, _r: &SecretRef) -> Result<Option<Version>> {
        Ok(None)
    }

    async fn renew(&self, _lease: &Lease, _increment: Option<Duration>) -> Result<Lease> {
        Err(Error::new(ErrorKind::Unsupported, "no leases"))
    }

    async fn revoke(&self, _lease: &Lease) -> Result<()> {
        Err(Error::new(ErrorKind::Unsupported, "no leases"))
    }

    fn watch(
        &self,
        _r: &SecretRef,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<keyrack_core::SourceEvent>>> {
        None
    }

    async fn shutdown(&self) {}
}

/// A request a call can do without is sent only when the budget has room now; outside a client
/// call it always may be.
#[test]
fn an_optional_request_never_waits() {
    assert!(keyrack_core::budget::try_another_request());
    let requests = keyrack_core::budget::CallRequests::new();
    assert!(requests.try_before_request());
    assert!(requests.try_before_request());
}

/// A source used on its own (no client around the call) is never held back by
/// `another_request`.
#[test]
fn another_request_outside_a_client_call_returns_at_once() {
    assert!(matches!(
        keyrack_core::budget::another_request().now_or_never(),
        Some(Ok(()))
    ));
}

/// 50 processes restarting together, 20 secrets each, against a backend whose quota (100 calls
/// per second in all) is refused with 429s and no Retry-After past it. Each process has its
/// share (2/s, what `request_budget` is for) or none: with the share, nothing is throttled and
/// every process has its secrets by the quota's floor (1,000 calls / 100 per s = 10 s) plus a
/// little; without, most first calls are refused.
#[tokio::test]
async fn a_fleet_sharing_a_quota_is_not_throttled_with_its_share() {
    const PODS: usize = 50;
    const SECRETS: usize = 20;
    let mut throttled_by = Vec::new();
    for share in [
        Some(RequestBudget::per_second(2).with_burst(1)),
        // The source's default: the whole quota per process, adaptive.
        Some(RequestBudget::per_second(100)),
        None,
    ] {
        let clock = ManualClock::new();
        let quota = Quota::new(clock.clone(), 100, S(1));
        let pods: Vec<Secrets> = (0..PODS)
            .map(|pod| {
                let mut b = Secrets::builder()
                    .clock(clock.clone())
                    .source("q", quota.clone())
                    .jitter_seed(pod as u64);
                b = match share {
                    Some(budget) => b.request_budget("q", budget),
                    None => b.unbudgeted("q"),
                };
                b.build().unwrap()
            })
            .collect();
        let start = clock.now();
        let started: Vec<_> = pods
            .iter()
            .map(|secrets| {
                let secrets = secrets.clone();
                let clock = clock.clone();
                tokio::spawn(async move {
                    let refs: Vec<String> = (0..SECRETS).map(|i| format!("q://s{i}")).collect();
                    // A service's start-up: read each, retry what failed, until all are held.
                    loop {
                        let results = join_all(refs.iter().map(|r| secrets.get_secret(r))).await;
                        if results.iter().all(Result::is_ok) {
                            return;
                        }
                        clock.sleep_until(clock.now() + S(1)).await;
                    }
                })
            })
            .collect();
        let mut done = None;
        for _ in 0..600 {
            clock.advance(MS(100)).await;
            if started.iter().all(tokio::task::JoinHandle::is_finished) {
                done = Some(clock.now() - start);
                break;
            }
        }
        let (calls, throttled) = quota.counts();
        println!(
            "share {:?}: all pods ready after {done:?}, {calls} calls, {throttled} throttled",
            share.map(|b| b.rate())
        );
        assert!(done.is_some(), "every pod started");
        throttled_by.push((calls, throttled));
        if share.is_some_and(|b| b.rate() == 2.0) {
            assert_eq!(throttled, 0);
            assert!(done.unwrap() <= S(12), "ready after {done:?}, floor 10 s");
        }
    }
    let [_, (adaptive_calls, adaptive), (none_calls, none)] = throttled_by[..] else {
        unreachable!()
    };
    assert!(none > none_calls / 2, "{none} of {none_calls}");
    // The adaptive default cuts from what each process sent, so it stops most of the storm
    // (before, when it cut from its budget of the whole quota, 1,952 of 2,952 calls were
    // throttled).
    assert!(
        adaptive_calls < none_calls && adaptive * 4 < none && adaptive * 4 < adaptive_calls,
        "adaptive {adaptive} of {adaptive_calls}, unbudgeted {none} of {none_calls}"
    );
}

/// A backend with a quota: `limit` calls per `window` (sliding), refused past it as a 429 with
/// no Retry-After; every secret exists. Its default budget is the quota itself.
#[derive(Clone, Debug)]
struct Quota {
    clock: ManualClock,
    limit: usize,
    window: Duration,
    state: Arc<Mutex<QuotaState>>,
}

#[derive(Debug, Default)]
struct QuotaState {
    recent: VecDeque<Instant>,
    calls: usize,
    throttled: usize,
}

impl Quota {
    fn new(clock: ManualClock, limit: usize, window: Duration) -> Self {
        Quota {
            clock,
            limit,
            window,
            state: Arc::default(),
        }
    }

    fn counts(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap();
        (st.calls, st.throttled)
    }
}

#[async_trait]
impl SecretSource for Quota {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.request_budget = Some(RequestBudget::new(
            u32::try_from(self.limit).unwrap(),
            self.window,
        ));
        caps
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        let now = self.clock.now();
        let mut st = self.state.lock().unwrap();
        st.calls += 1;
        while st
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            st.recent.pop_front();
        }
        if st.recent.len() >= self.limit {
            st.throttled += 1;
            return Err(Error::throttled(None, "429 Too Many Requests"));
        }
        st.recent.push_back(now);
        drop(st);
        Ok(Secret::new(r.path().to_owned()).versioned("1"))
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        keyrack_core::fetch_each(self, refs, 4).await
    }

    async fn version(&self, _r: &SecretRef) -> Result<Option<Version>> {
        Err(Error::new(ErrorKind::Unsupported, "no probe"))
    }

    async fn renew(&self, _lease: &Lease, _increment: Option<Duration>) -> Result<Lease> {
        Err(Error::new(ErrorKind::Unsupported, "no leases"))
    }

    async fn revoke(&self, _lease: &Lease) -> Result<()> {
        Err(Error::new(ErrorKind::Unsupported, "no leases"))
    }

    fn watch(
        &self,
        _r: &SecretRef,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<keyrack_core::SourceEvent>>> {
        None
    }

    async fn shutdown(&self) {}
}
