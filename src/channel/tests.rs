use super::*;

#[tokio::test]
async fn messages_and_fds_cross_the_pair() {
    let (a, b) = pair().unwrap();
    let a = Channel::new(a).unwrap();
    let b = Channel::new(b).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    a.send(
        &Msg::Bound {
            key: "127.0.0.1:1".into(),
        },
        &[l.as_fd()],
    )
    .await
    .unwrap();
    let (m, fds) = b.recv().await.unwrap().unwrap();
    assert_eq!(
        m,
        Msg::Bound {
            key: "127.0.0.1:1".into()
        }
    );
    assert_eq!(fds.len(), 1);
    let got = std::net::TcpListener::from(fds.into_iter().next().unwrap());
    assert_eq!(got.local_addr().unwrap().port(), port);
    let req = Msg::Request {
        id: 7,
        op: Op::Restart {
            exe: Some("/bin/x".into()),
            via: None,
        },
    };
    b.send(&req, &[]).await.unwrap();
    assert_eq!(a.recv().await.unwrap().unwrap().0, req);
    drop(b);
    assert!(a.recv().await.unwrap().is_none());
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_channel_goes_on() {
    let (a, b) = pair().unwrap();
    let a = Channel::new(a).unwrap();
    let b = Channel::new(b).unwrap();
    let huge = Msg::Failed {
        reason: "x".repeat(MAX_MSG),
    };
    assert!(a.send(&huge, &[]).await.is_err());
    a.send(&Msg::GoingAway, &[]).await.unwrap();
    assert_eq!(b.recv().await.unwrap().unwrap().0, Msg::GoingAway);
}

#[tokio::test]
async fn a_send_that_finds_the_socket_full_waits_for_room() {
    let (a, b) = pair().unwrap();
    let a = Channel::new(a).unwrap();
    let b = Channel::new(b).unwrap();
    let msg = Msg::Failed {
        reason: "x".repeat(4096),
    };
    let mut queued = 0usize;
    while a.try_send_now(&msg).unwrap() {
        queued += 1;
        assert!(queued < 100_000, "the socket never filled");
    }
    // Registered for readability only, the channel must still see the room a read makes.
    let last = tokio::spawn(async move {
        a.send(&Msg::GoingAway, &[]).await.unwrap();
        a
    });
    for _ in 0..queued {
        assert_eq!(b.recv().await.unwrap().unwrap().0, msg);
    }
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), b.recv()).await;
    assert_eq!(got.unwrap().unwrap().unwrap().0, Msg::GoingAway);
    let _a = tokio::time::timeout(std::time::Duration::from_secs(10), last)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn unknown_message_types_are_skipped_not_fatal() {
    assert!(
        decode(br#"{"v":1,"type":"from_the_future","x":1}"#)
            .unwrap()
            .is_none()
    );
    assert!(
        decode(br#"{"v":2,"type":"drain","shutdown":true}"#)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        decode(br#"{"v":1,"type":"drain","shutdown":true,"extra":5}"#).unwrap(),
        Some(Msg::Drain { shutdown: true })
    );
}

#[test]
fn reopen_logs_is_understood_across_versions() {
    // An older supervisor's, without an id: reopen, answer nothing.
    assert_eq!(
        decode(br#"{"v":1,"type":"reopen_logs"}"#).unwrap(),
        Some(Msg::ReopenLogs { id: None })
    );
    let new = encode(&Msg::ReopenLogs { id: Some(7) }).unwrap();
    assert_eq!(decode(&new).unwrap(), Some(Msg::ReopenLogs { id: Some(7) }));
    // An older worker knew `reopen_logs` without fields: it still reads this one (and reopens).
    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Older {
        ReopenLogs,
    }
    let env: serde_json::Value = serde_json::from_slice(&new).unwrap();
    let msg = env.as_object().unwrap().clone();
    let inner = serde_json::Value::Object(msg.into_iter().filter(|(k, _)| k != "v").collect());
    assert_eq!(
        serde_json::from_value::<Older>(inner).unwrap(),
        Older::ReopenLogs
    );
}
