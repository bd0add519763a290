//! `fetch_each`, the `fetch_many` of sources without a batch API, stops sending once the
//! backend is the trouble: before, twenty reads of a Key Vault whose challenge hung cost three
//! timeouts in turn (eight reads at a time, each eight starting a discovery of their own), and
//! a backend that throttled the first read got the other nineteen anyway.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use keyrack_core::sources::MemorySource;
use keyrack_core::testkit::{Fault, Op, Scripted};
use keyrack_core::{ErrorKind, ManualClock, SecretRef, SecretSource, Secrets};

const READS: usize = 20;

fn backend() -> (Scripted, Vec<SecretRef>) {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let refs = (0..READS)
        .map(|i| {
            memory.set(format!("s{i}"), "v");
            SecretRef::parse(&format!("mem://s{i}")).unwrap()
        })
        .collect();
    (Scripted::new(memory, clock), refs)
}

/// A memory source on `clock` holding one value at each of `paths`, and their references.
fn stored(
    clock: &ManualClock,
    paths: impl Iterator<Item = String>,
) -> (MemorySource, Vec<SecretRef>) {
    let memory = MemorySource::with_clock(clock.clone());
    let refs = paths
        .map(|path| {
            memory.set(path.as_str(), "v");
            SecretRef::parse(&format!("mem://{path}")).unwrap()
        })
        .collect();
    (memory, refs)
}

/// `refs` prefetched by a client of `source` on `clock`, the clock advanced a second at a time
/// until the prefetch ends (at most 200 s): its results and the seconds it took.
async fn prefetch_in_steps(
    clock: &ManualClock,
    source: impl SecretSource,
    refs: &[SecretRef],
) -> (Vec<keyrack_core::Result<keyrack_core::Secret>>, u32) {
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("mem", source)
        .build()
        .unwrap();
    let reads = tokio::spawn({
        let refs = refs.to_vec();
        async move { secrets.prefetch(&refs).await }
    });
    let mut waited = 0;
    while !reads.is_finished() && waited < 200 {
        clock.advance(Duration::from_secs(1)).await;
        waited += 1;
    }
    (reads.await.unwrap(), waited)
}

#[tokio::test]
async fn a_timeout_or_an_outage_stops_the_reads_not_yet_sent() {
    for kind in [ErrorKind::Timeout, ErrorKind::Unavailable] {
        let (backend, refs) = backend();
        backend.set_fault(Op::Fetch, Some(Fault::Fail(kind.clone(), None)));
        let results = backend.fetch_many(&refs).await;
        assert_eq!(results.len(), READS);
        let sent = backend.count(Op::Fetch);
        assert!(sent < READS, "{kind:?}: all {sent} were sent");
        for result in &results[sent..] {
            let e = result.as_ref().unwrap_err();
            assert_eq!(e.kind(), &kind);
            assert!(e.to_string().contains("not sent"), "{e}");
        }
    }
}

#[tokio::test]
async fn a_throttled_read_stops_the_rest_with_its_retry_after() {
    let (backend, refs) = backend();
    let hint = Duration::from_secs(3);
    backend.set_fault(
        Op::Fetch,
        Some(Fault::Fail(ErrorKind::Throttled, Some(hint))),
    );
    let results = backend.fetch_many(&refs).await;
    let sent = backend.count(Op::Fetch);
    assert!(sent < READS);
    for result in &results {
        let e = result.as_ref().unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Throttled);
        assert_eq!(e.retry_after(), Some(hint));
    }
}

#[tokio::test]
async fn a_secrets_own_failure_does_not_stop_the_others() {
    let (backend, mut refs) = backend();
    refs.push(SecretRef::parse("mem://missing").unwrap());
    let results = backend.fetch_many(&refs).await;
    assert_eq!(backend.count(Op::Fetch), READS + 1);
    assert!(results[..READS].iter().all(Result::is_ok));
    assert_eq!(
        results[READS].as_ref().unwrap_err().kind(),
        &ErrorKind::NotFound
    );
}

/// A backend failure stops only the reads under the same first path segment (one Key Vault, one
/// Vault mount): a Vault whose database engine times out still serves the KV reads beside it.
#[tokio::test]
async fn a_failure_stops_only_the_reads_under_its_first_segment() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let refs: Vec<SecretRef> = ["database/creds/a", "database/creds/b", "kv/x", "kv/y"]
        .iter()
        .map(|path| {
            memory.set(*path, "v");
            SecretRef::parse(&format!("mem://{path}")).unwrap()
        })
        .collect();
    // The first read (database/creds/a) times out; the others would succeed.
    memory.fail_next(1, ErrorKind::Timeout);
    let backend = Scripted::new(memory, clock);
    let results = backend.fetch_many(&refs).await;
    assert_eq!(results[0].as_ref().unwrap_err().kind(), &ErrorKind::Timeout);
    let e = results[1].as_ref().unwrap_err();
    assert!(e.to_string().contains("not sent"), "{e}");
    assert!(results[2].is_ok() && results[3].is_ok(), "{results:?}");
    assert_eq!(backend.count(Op::Fetch), 3);
}

/// Reads start slow: half of the concurrency in flight at first, one more per read answered.
/// Twenty reads at a concurrency of 8 take three round trips, as before (4, 8, 8 rather than
/// 8, 8, 4); a backend that refuses the first gets four reads, not eight.
#[tokio::test]
async fn reads_start_slow() {
    let latency = Duration::from_millis(100);
    let setup = || {
        let clock = ManualClock::new();
        let memory = MemorySource::with_clock(clock.clone());
        let refs: Vec<SecretRef> = (0..READS)
            .map(|i| {
                memory.set(format!("s{i}"), "v");
                SecretRef::parse(&format!("mem://s{i}")).unwrap()
            })
            .collect();
        memory.set_latency(latency);
        (clock, memory, refs)
    };
    let (clock, memory, refs) = setup();
    let reads = tokio::spawn({
        let memory = memory.clone();
        async move { keyrack_core::fetch_each(&memory, &refs, 8).await }
    });
    let mut sent = Vec::new();
    for _ in 0..3 {
        tokio::task::yield_now().await;
        sent.push(memory.calls().fetch);
        clock.advance(latency).await;
    }
    assert_eq!(sent, [4, 12, 20]);
    assert!(reads.await.unwrap().iter().all(Result::is_ok));

    let (clock, memory, refs) = setup();
    memory.throttle(None);
    let reads = tokio::spawn({
        let memory = memory.clone();
        async move { keyrack_core::fetch_each(&memory, &refs, 8).await }
    });
    for _ in 0..3 {
        clock.advance(latency).await;
    }
    let results = reads.await.unwrap();
    assert!(results.iter().all(Result::is_err));
    assert_eq!(memory.calls().fetch, 4);
}

/// A prefetch that takes longer than the request timeout in all while each read takes well
/// under it (a busy backend: twenty reads of 12 s each, four then eight at a time, 36 s in all
/// against a timeout of 30 s) keeps every read. Before, one request timeout bounded the whole
/// call, and at 30 s every answer it had already received was dropped with it: in the
/// simulated fleet (`benches/fleet`, `vault` at 10,000 pods) that was 418,712 requests for
/// 220,000 reads. A read that hangs among them still fails `Timeout` 30 s after it was sent,
/// and the reads answered before it are kept.
#[tokio::test]
async fn a_prefetch_longer_than_the_timeout_keeps_every_read() {
    let clock = ManualClock::new();
    let (memory, refs) = stored(&clock, (0..READS).map(|i| format!("s{i}")));
    memory.set_latency(Duration::from_secs(12));
    let backend = Scripted::new(memory, clock.clone());
    let (results, _) = prefetch_in_steps(&clock, backend.clone(), &refs).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(backend.count(Op::Fetch), READS);
}

/// A `fetch_many` of a source's own (one request after another, as the AWS source's single reads
/// after a refused batch go) keeps its answers the same way when each request goes through
/// `timed_request`: five reads of 12 s, one after another, 60 s in all against a 30 s timeout.
#[tokio::test]
async fn a_fetch_many_of_its_own_keeps_its_answers_through_timed_request() {
    #[derive(Debug, Clone)]
    struct OneByOne(MemorySource);

    #[keyrack_core::async_trait]
    impl SecretSource for OneByOne {
        fn capabilities(&self) -> keyrack_core::Capabilities {
            self.0.capabilities()
        }
        async fn fetch(&self, r: &SecretRef) -> keyrack_core::Result<keyrack_core::Secret> {
            self.0.fetch(r).await
        }
        async fn fetch_many(
            &self,
            refs: &[SecretRef],
        ) -> Vec<keyrack_core::Result<keyrack_core::Secret>> {
            let mut out = Vec::new();
            for r in refs {
                out.push(keyrack_core::timed_request(self.0.fetch(r)).await);
            }
            out
        }
        async fn version(
            &self,
            r: &SecretRef,
        ) -> keyrack_core::Result<Option<keyrack_core::Version>> {
            self.0.version(r).await
        }
        async fn renew(
            &self,
            lease: &keyrack_core::Lease,
            increment: Option<Duration>,
        ) -> keyrack_core::Result<keyrack_core::Lease> {
            self.0.renew(lease, increment).await
        }
        async fn revoke(&self, lease: &keyrack_core::Lease) -> keyrack_core::Result<()> {
            self.0.revoke(lease).await
        }
        fn watch(
            &self,
            r: &SecretRef,
        ) -> Option<
            futures_util::stream::BoxStream<
                'static,
                keyrack_core::Result<keyrack_core::SourceEvent>,
            >,
        > {
            self.0.watch(r)
        }
        async fn shutdown(&self) {
            self.0.shutdown().await;
        }
    }

    let clock = ManualClock::new();
    let (memory, refs) = stored(&clock, (0..5).map(|i| format!("s{i}")));
    memory.set_latency(Duration::from_secs(12));
    let (results, _) = prefetch_in_steps(&clock, OneByOne(memory), &refs).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
}

/// A backend that accepts and never answers still costs a prefetch one request timeout, however
/// many parts of the backend its reads go to: once a read of the call has timed out the call
/// sends no more, and a timeout does not keep the call alive. (Reads under five first path
/// segments, four in flight at first: with timeouts counted as signs of life, the second wave
/// went out at 30 s and the prefetch took 60 s.)
#[tokio::test]
async fn a_hung_backend_costs_a_prefetch_one_timeout() {
    let clock = ManualClock::new();
    let (memory, refs) = stored(&clock, (0..READS).map(|i| format!("part{}/s{i}", i % 5)));
    let backend = Scripted::new(memory, clock.clone());
    backend.set_fault(Op::Fetch, Some(Fault::Hang));
    let (results, waited) = prefetch_in_steps(&clock, backend.clone(), &refs).await;
    assert!(
        (30..=31).contains(&waited),
        "the prefetch took {waited} s against a 30 s timeout"
    );
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap_err().kind() == &ErrorKind::Timeout)
    );
    assert!(
        backend.count(Op::Fetch) <= 4,
        "{} reads sent to a hung backend",
        backend.count(Op::Fetch)
    );
}
