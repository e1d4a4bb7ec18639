//! The fleet's own tests: balancing, outlier ejection and the breaker, on states made
//! from routes files.

use super::breaker::{CLOSED, HALF_OPEN, OPEN};
use super::*;
use crate::config::resilience::{BreakerConfig, Trip};

/// A service of `n` instances with outlier detection (2 failures in a row, 10 s out).
fn outlying(n: usize, max_ejected_percent: u32) -> Arc<ServiceState> {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("http://127.0.0.1:{}", 9100 + i))
        .collect();
    let yaml = format!(
        "listen: 127.0.0.1:8080\nlegacy: {{url: http://127.0.0.1:9001}}\nservices:\n  s:\n    urls: [{}]\n    outlier: {{consecutive: 2, ejection: 10s, max_ejected_percent: {max_ejected_percent}}}\nroutes: []\n",
        urls.join(", ")
    );
    let config = crate::config::Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
    let s = config.upstream(1);
    Fleet::new().service(s, &Dial::of(s, &Default::default()))
}

fn fail(s: &ServiceState, i: &Instance, at: Instant) {
    s.report(Some(i), Some(false), None, at, at);
}

fn succeed(s: &ServiceState, i: &Instance, at: Instant) {
    s.report(Some(i), Some(true), None, at, at);
}

/// The labels of the instances picked `n` times in a row.
fn picks(s: &ServiceState, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| s.pick(None).unwrap().guard.instance().label.to_string())
        .collect()
}

#[test]
fn failures_in_a_row_eject_an_instance_for_longer_each_time_and_a_success_forgives() {
    let s = outlying(3, 50);
    let list = s.instances.load_full();
    let (a, t) = (&list[0], s.born);
    fail(&s, a, t);
    succeed(&s, a, t);
    fail(&s, a, t);
    assert!(!a.ejected(s.ms(t)), "a success between resets the streak");
    fail(&s, a, t);
    assert!(a.ejected(s.ms(t)));
    assert!(
        !picks(&s, 30).contains(&*a.label),
        "an ejected instance gets nothing"
    );
    let back = t + Duration::from_secs(10);
    assert!(!a.ejected(s.ms(back)), "back after 10 s");
    // Ejected again with no success between: 20 s.
    fail(&s, a, back);
    fail(&s, a, back);
    assert!(a.ejected(s.ms(back + Duration::from_secs(19))));
    assert!(!a.ejected(s.ms(back + Duration::from_secs(20))));
    // A success forgives: 10 s again.
    let later = back + Duration::from_secs(20);
    succeed(&s, a, later);
    fail(&s, a, later);
    fail(&s, a, later);
    assert!(!a.ejected(s.ms(later + Duration::from_secs(10))));
    // The client's own failure says nothing.
    for _ in 0..5 {
        let at = later + Duration::from_secs(10);
        s.report(Some(a), None, None, at, at);
    }
    assert_eq!(a.streak.load(Ordering::Relaxed), 0);
}

/// A service of `n` instances at `max_ejected_percent` whose instances all fail twice
/// in a row: how many are out, and how many distinct ones 30 picks reach.
fn all_failing(n: usize, max_ejected_percent: u32) -> (usize, usize) {
    let s = outlying(n, max_ejected_percent);
    let list = s.instances.load_full();
    for i in list.iter() {
        fail(&s, i, s.born);
        fail(&s, i, s.born);
    }
    let out = list.iter().filter(|i| i.ejected(s.ms(s.born))).count();
    (out, picks(&s, 30).len())
}

#[test]
fn ejections_stop_at_the_cap_and_never_take_the_last_instance() {
    // Three instances at 50%: one out at most.
    assert_eq!(all_failing(3, 50), (1, 2));
    // At 100%, two of three, never the third.
    assert_eq!(all_failing(3, 100), (2, 1));
    // A lone instance is never ejected (that is the breaker's work).
    assert_eq!(all_failing(1, 100), (0, 1));
    // A share that rounds down to none still lets one out (of two or more).
    assert_eq!(all_failing(3, 10), (1, 2));
}

/// How long `i` is out when ejected at `at`, in seconds.
fn out_for(s: &ServiceState, i: &Instance, at: Instant) -> u64 {
    fail(s, i, at);
    fail(s, i, at);
    assert!(i.ejected(s.ms(at)));
    (i.out_until.load(Ordering::Relaxed) - s.ms(at)) / 1000
}

#[test]
fn ejections_in_a_row_grow_to_ten_times_and_start_over_after_a_long_stay() {
    let s = outlying(3, 50);
    let a = s.instances.load_full()[0].clone();
    let mut at = s.born;
    let mut spans = Vec::new();
    for _ in 0..12 {
        let span = out_for(&s, &a, at);
        spans.push(span);
        at += Duration::from_secs(span);
    }
    assert_eq!(
        spans,
        [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100, 100],
        "10 s more each time, up to ten times"
    );
    // In for as long as the longest ejection since the last one ended: 10 s again.
    at += Duration::from_secs(100);
    assert_eq!(out_for(&s, &a, at), 10);
}

#[test]
fn reports_of_attempts_begun_before_an_ejection_are_ignored() {
    let s = outlying(3, 50);
    let a = s.instances.load_full()[0].clone();
    let t = s.born + Duration::from_secs(1);
    assert_eq!(out_for(&s, &a, t), 10);
    let back = t + Duration::from_secs(10);
    // Two failures of requests sent before the ejection, reported after it: nothing.
    for _ in 0..2 {
        s.report(Some(&a), Some(false), None, s.born, back);
    }
    assert!(!a.ejected(s.ms(back)));
    assert_eq!(a.streak.load(Ordering::Relaxed), 0);
    // Nor does an old success forgive: the next ejection is 20 s.
    s.report(Some(&a), Some(true), None, s.born, back);
    assert_eq!(out_for(&s, &a, back), 20);
}

#[test]
fn an_ejected_instance_serves_when_no_other_healthy_one_can() {
    let s = outlying(3, 50);
    let list = s.instances.load_full();
    let t = s.born;
    assert_eq!(out_for(&s, &list[0], t), 10);
    // The checks then take the other two out: the ejected one serves, not none.
    list[1].healthy.store(false, Ordering::Relaxed);
    list[2].healthy.store(false, Ordering::Relaxed);
    let picked = s.pick(None).unwrap();
    assert!(!picked.all_unhealthy);
    assert_eq!(picked.guard.instance().label, list[0].label);
}

fn breaker() -> Breaker {
    Breaker::new(
        "s",
        BreakerConfig {
            trip: Trip::Failures(3),
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
        },
        Duration::from_secs(5),
    )
}

#[test]
fn opens_on_failures_within_the_window_only() {
    let b = breaker();
    let t = Instant::now();
    let fail = |at: u64| b.record(Some(false), None, t + Duration::from_secs(at));
    fail(0);
    fail(1);
    // The first two are out of the window by the third.
    fail(12);
    fail(13);
    let at = t + Duration::from_secs(13);
    assert_eq!(b.admit(at, true), Admit::Pass);
    assert_eq!(b.state(at), CLOSED);
    fail(14);
    let at = t + Duration::from_secs(15);
    assert_eq!(b.state(at), OPEN);
    assert!(b.is_open(at));
    assert_eq!(b.admit(at, true), Admit::Refuse);
}

#[test]
fn one_probe_after_the_cooldown_decides() {
    let b = breaker();
    let t = Instant::now();
    for _ in 0..3 {
        b.record(Some(false), None, t);
    }
    let after = t + Duration::from_secs(30);
    // Past the cooldown it reads half-open, and fails no guard, before any request.
    assert_eq!(b.state(after), HALF_OPEN);
    assert!(!b.is_open(after));
    // An upgrade never takes the probe.
    assert_eq!(b.admit(after, false), Admit::Refuse);
    let Admit::Probe(first) = b.admit(after, true) else {
        panic!("a probe")
    };
    // Only one probe at a time.
    assert_eq!(b.admit(after, true), Admit::Refuse);
    b.record(Some(false), Some(first), after);
    assert_eq!(b.state(after), OPEN);
    assert_eq!(b.admit(after + Duration::from_secs(1), true), Admit::Refuse);
    let later = after + Duration::from_secs(30);
    let Admit::Probe(second) = b.admit(later, true) else {
        panic!("a probe")
    };
    // A report from the first probe, late, changes nothing.
    b.record(Some(true), Some(first), later);
    assert_eq!(b.state(later), HALF_OPEN);
    b.record(Some(true), Some(second), later);
    assert_eq!(b.state(later), CLOSED);
    assert_eq!(b.admit(later, true), Admit::Pass);
}

#[test]
fn a_probe_without_a_verdict_frees_the_slot_and_one_that_never_reports_is_replaced() {
    let b = breaker();
    let t = Instant::now();
    for _ in 0..3 {
        b.record(Some(false), None, t);
    }
    let after = t + Duration::from_secs(30);
    let Admit::Probe(n) = b.admit(after, true) else {
        panic!("a probe")
    };
    // Its client left: no verdict, the breaker stays half-open, the next may probe.
    b.record(None, Some(n), after);
    assert_eq!(b.state(after), HALF_OPEN);
    let Admit::Probe(_) = b.admit(after, true) else {
        panic!("a probe")
    };
    assert_eq!(b.admit(after + Duration::from_secs(4), true), Admit::Refuse);
    assert!(matches!(
        b.admit(after + Duration::from_secs(5), true),
        Admit::Probe(_)
    ));
}

#[test]
fn a_cooldown_beyond_any_clock_does_not_panic() {
    let b = Breaker::new(
        "s",
        BreakerConfig {
            trip: Trip::Failures(1),
            window: Duration::from_secs(10),
            cooldown: Duration::MAX,
        },
        Duration::MAX,
    );
    let t = Instant::now();
    b.record(Some(false), None, t);
    assert_eq!(b.admit(t + Duration::from_secs(3600), true), Admit::Refuse);
}
