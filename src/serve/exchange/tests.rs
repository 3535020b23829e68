//! Unit tests of [`super`]: every request finished once whatever its end, the id's way into the
//! response, the clock.

use super::*;

/// What each finished request looked like: outcome, status, bytes, user agent, path.
type Seen1 = (Outcome, u16, u64, Option<HeaderValue>, Option<String>);

#[derive(Debug, Default)]
struct Seen(Mutex<Vec<Seen1>>);

impl Observer for Seen {
    fn started(&self, uri: &Uri, headers: &HeaderMap, ex: &mut Exchange) {
        ex.user_agent = headers.get(http::header::USER_AGENT).cloned();
        ex.path = uri.path_and_query().cloned();
    }
    fn finished(&self, ex: &Exchange) {
        self.0.lock().unwrap().push((
            ex.outcome,
            ex.status.as_u16(),
            ex.bytes,
            ex.user_agent.clone(),
            ex.path.as_ref().map(|p| p.to_string()),
        ));
    }
}

fn rec(o: &Arc<dyn Observer>, un: &Unflushed, ua: Option<&str>) -> Recording {
    let mut req = http::Request::builder().uri("/x?y=1");
    if let Some(ua) = ua {
        req = req.header("user-agent", ua);
    }
    Recording::start(
        o,
        &req.body(()).unwrap(),
        ClientAddr(([127, 0, 0, 1], 9).into()),
        un,
    )
}

/// Gives each request the id it sent (returned in the response when `echo`), and keeps the id
/// each finished one was logged with.
#[derive(Debug, Default)]
struct Ids {
    echo: bool,
    logged: Mutex<Vec<Option<Vec<u8>>>>,
}

impl Observer for Ids {
    fn started(&self, _uri: &Uri, headers: &HeaderMap, ex: &mut Exchange) {
        ex.request_id = headers.get(X_REQUEST_ID_NAME).cloned();
        ex.echo_id = self.echo;
    }
    fn finished(&self, ex: &Exchange) {
        self.logged
            .lock()
            .unwrap()
            .push(ex.id_bytes().map(<[u8]>::to_vec));
    }
}

#[test]
fn the_id_goes_into_the_response_and_stays_in_the_record() {
    for echo in [true, false] {
        ids_answered_and_logged(echo);
    }
}

fn ids_answered_and_logged(echo: bool) {
    let ids = Arc::new(Ids {
        echo,
        ..Ids::default()
    });
    let o: Arc<dyn Observer> = ids.clone();
    let un = Unflushed::default();
    let made = "0123456789abcdef-0000000000000001";
    assert_eq!(made.len(), crate::sys::ID_LEN);
    let mut answered = Vec::new();
    for id in [Some(made), Some("abc"), None, Some(made)] {
        let mut req = http::Request::builder();
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        let mut r = Recording::start(
            &o,
            &req.body(()).unwrap(),
            ClientAddr(([127, 0, 0, 1], 9).into()),
            &un,
        );
        r.answered(StatusCode::OK);
        let sent = r.id_for_response();
        // A made id's length: moved out of the record (its copy kept); another: cloned. Not
        // echoed: it stays.
        let stays = if echo {
            id == Some("abc")
        } else {
            id.is_some()
        };
        assert_eq!(r.0.ex.request_id.is_some(), stays);
        answered.push(sent.map(|v| v.as_bytes().to_vec()));
        un.push(r);
        un.flushed();
    }
    let want: Vec<Option<Vec<u8>>> = [Some(made), Some("abc"), None, Some(made)]
        .iter()
        .map(|i| i.map(|s| s.as_bytes().to_vec()))
        .collect();
    if echo {
        assert_eq!(answered, want);
    } else {
        assert_eq!(answered, [None, None, None, None]);
    }
    // The same box served all four: each logged its own id, none the one before's copy.
    assert_eq!(*ids.logged.lock().unwrap(), want);
}

#[test]
fn each_request_finishes_once_whatever_its_end() {
    let seen = Arc::new(Seen::default());
    let o: Arc<dyn Observer> = seen.clone();
    let un = Unflushed::default();
    // Written: only at the flush after its body ended.
    let mut a = rec(&o, &un, Some("t/1"));
    a.answered(StatusCode::CREATED);
    a.took(5);
    un.flushed();
    un.push(a);
    assert!(seen.0.lock().unwrap().is_empty(), "finished before a flush");
    un.flushed();
    un.flushed();
    // The next request reuses the first one's box, and sees none of its facts.
    let spare = un.spare.take().unwrap();
    un.spare.put(spare);
    let mut b = rec(&o, &un, None);
    assert!(un.spare.take().is_none());
    assert_eq!((b.0.ex.bytes, b.0.ex.outcome), (0, Outcome::Open));
    // Answered, never flushed: cut when the connection's state goes.
    b.answered(StatusCode::OK);
    un.push(b);
    // Never answered: abandoned.
    drop(rec(&o, &un, None));
    drop(un);
    let path = Some("/x?y=1".to_string());
    assert_eq!(
        *seen.0.lock().unwrap(),
        vec![
            (
                Outcome::Written,
                201,
                5,
                Some(HeaderValue::from_static("t/1")),
                path.clone()
            ),
            (Outcome::Abandoned, 499, 0, None, path.clone()),
            (Outcome::Cut, 200, 0, None, path),
        ]
    );
}

#[test]
fn pipelined_records_finish_in_order_at_the_next_flush() {
    let seen = Arc::new(Seen::default());
    let o: Arc<dyn Observer> = seen.clone();
    let un = Unflushed::default();
    // Three bodies end before a flush: the first takes the slot, the others the list.
    for (ua, status) in [("a", 200), ("b", 201), ("c", 202)] {
        let mut r = rec(&o, &un, Some(ua));
        r.answered(StatusCode::from_u16(status).unwrap());
        un.push(r);
    }
    assert!(un.first.is_full());
    assert!(seen.0.lock().unwrap().is_empty(), "finished before a flush");
    un.flushed();
    let order: Vec<(Outcome, u16)> = seen.0.lock().unwrap().iter().map(|s| (s.0, s.1)).collect();
    let w = Outcome::Written;
    assert_eq!(order, vec![(w, 200), (w, 201), (w, 202)]);
    // A push that found the slot full and reached the list after a flush emptied the slot
    // (HTTP/2: a stream's body ends as the connection flushes) is finished by the next one.
    un.push_more(rec(&o, &un, Some("d")));
    assert!(!un.first.is_full());
    un.flushed();
    assert_eq!(seen.0.lock().unwrap().len(), 4);
    un.flushed();
    assert_eq!(seen.0.lock().unwrap().len(), 4, "finished twice");
}

#[test]
fn the_monotonic_clock_is_instants_clock() {
    let a = mono_ns();
    let i = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let b = mono_ns();
    let e = i.elapsed().as_nanos() as u64;
    // The same clock: the two measures of the sleep agree within a few ms.
    assert!(b - a >= 20_000_000, "{}", b - a);
    assert!((b - a).abs_diff(e) < 5_000_000, "{} vs {e}", b - a);
}

/// A record is allocated once per connection: at 336 bytes it left mimalloc's 320-byte bin for
/// the one tokio's task cells use, and a new connection cost ~100 instructions more in the
/// allocator's slow path (BENCHMARKS (al)). A field that would push it over goes in a box.
#[test]
fn a_record_fits_its_allocator_bin() {
    assert!(
        std::mem::size_of::<super::Recorded>() <= 320,
        "{}",
        std::mem::size_of::<super::Recorded>()
    );
}
