//! The budget on tokio's paused clock: every time asserted is exact.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn limits(chat: &[Window], group: &[Window], bot: &[Window]) -> Limits {
    Limits {
        per_chat: chat.to_vec(),
        per_group: group.to_vec(),
        per_bot: bot.to_vec(),
        chat_methods: MethodSet::parse(&["send*"]).unwrap(),
    }
}

fn w(calls: u32, secs: u64) -> Window {
    Window::new(calls, Duration::from_secs(secs))
}

fn send(chat: &str) -> Ask {
    Ask {
        chat: Some(chat.into()),
        counted: true,
        urgent: false,
    }
}

const FAR: Duration = Duration::from_secs(3600);

/// Makes `asks` in order, each answered at once; returns each grant's
/// time since the start, in whole milliseconds.
async fn run_all(budget: Arc<Budget>, asks: Vec<Ask>) -> Vec<(usize, u128)> {
    let t0 = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, ask) in asks.into_iter().enumerate() {
        let (budget, tx) = (budget.clone(), tx.clone());
        tokio::spawn(async move {
            let slot = budget.acquire(&ask, Instant::now() + FAR).await.unwrap();
            tx.send((i, t0.elapsed().as_millis())).unwrap();
            drop(slot);
        });
        // Each joins its queue before the next.
        tokio::task::yield_now().await;
    }
    drop(tx);
    let mut out = Vec::new();
    while let Some(x) = rx.recv().await {
        out.push(x);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_chat_gets_its_window_and_keeps_its_order() {
    let budget = Arc::new(Budget::new(limits(&[w(3, 3)], &[], &[]), 100));
    let got = run_all(budget, (0..7).map(|_| send("42")).collect()).await;
    let order: Vec<usize> = got.iter().map(|g| g.0).collect();
    assert_eq!(order, (0..7).collect::<Vec<_>>());
    let times: Vec<u128> = got.iter().map(|g| g.1).collect();
    assert_eq!(times, [0, 0, 0, 3000, 3000, 3000, 6000]);
}

#[tokio::test(start_paused = true)]
async fn groups_also_get_the_group_window_and_private_chats_do_not() {
    let budget = Arc::new(Budget::new(limits(&[w(5, 1)], &[w(2, 10)], &[]), 100));
    let got = run_all(budget.clone(), (0..3).map(|_| send("-100123")).collect()).await;
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [0, 0, 10000]);
    let got = run_all(budget, (0..3).map(|_| send("7")).collect()).await;
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn the_bot_window_spreads_calls_of_all_chats_in_arrival_order() {
    let budget = Arc::new(Budget::new(limits(&[w(1, 1)], &[], &[w(2, 1)]), 100));
    let asks = ["1", "2", "3", "4", "1"].iter().map(|c| send(c)).collect();
    let got = run_all(budget, asks).await;
    assert_eq!(
        got,
        [(0, 0), (1, 0), (2, 1000), (3, 1000), (4, 2000)],
        "two a second, first come first served"
    );
}

#[tokio::test(start_paused = true)]
async fn answering_a_query_goes_ahead_of_everything_waiting() {
    let l = limits(&[], &[], &[w(1, 1)]);
    let mut asks: Vec<Ask> = (0..4)
        .map(|i| Ask::new(&l, "sendMessage", Some(i.to_string())))
        .collect();
    asks.push(Ask::new(&l, "answerCallbackQuery", None));
    assert!(asks[4].urgent && asks[4].chat.is_none());
    let got = run_all(Arc::new(Budget::new(l, 100)), asks).await;
    let order: Vec<usize> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        order,
        [0, 4, 1, 2, 3],
        "the answer went second, right after the one already granted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_only_its_chat_and_the_holder_goes_first_after_it() {
    let budget = Arc::new(Budget::new(limits(&[w(10, 1)], &[], &[]), 100));
    let t0 = Instant::now();
    let mut slot = budget.acquire(&send("A"), t0 + FAR).await.unwrap();
    slot.rate_limited(Duration::from_secs(3));
    // Another call of chat A queues behind the holder; chat B is free.
    let b = budget.clone();
    let queued_a = tokio::spawn(async move {
        let _s = b.acquire(&send("A"), Instant::now() + FAR).await.unwrap();
        Instant::now()
    });
    tokio::task::yield_now().await;
    let other = budget.acquire(&send("B"), t0 + FAR).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO, "chat B does not wait");
    drop(other);
    slot.again(t0 + FAR).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    drop(slot);
    let a_at = queued_a.await.unwrap();
    assert_eq!(a_at - t0, Duration::from_secs(3), "then the next of chat A");
}

#[tokio::test(start_paused = true)]
async fn a_429_on_a_call_without_a_chat_pauses_the_whole_bot() {
    let budget = Budget::new(limits(&[w(10, 1)], &[], &[w(100, 1)]), 100);
    let t0 = Instant::now();
    let none = Ask {
        chat: None,
        counted: false,
        urgent: false,
    };
    let mut slot = budget.acquire(&none, t0 + FAR).await.unwrap();
    slot.rate_limited(Duration::from_secs(2));
    drop(slot);
    let _s = budget.acquire(&send("9"), t0 + FAR).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded_in_number_and_in_time() {
    let budget = Arc::new(Budget::new(limits(&[w(1, 10)], &[], &[]), 2));
    let t0 = Instant::now();
    let first = budget.acquire(&send("1"), t0 + FAR).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let b = budget.clone();
        waiters.push(tokio::spawn(async move {
            b.acquire(&send("1"), Instant::now() + Duration::from_secs(2))
                .await
                .err()
        }));
    }
    tokio::task::yield_now().await;
    match budget.acquire(&send("2"), t0 + FAR).await {
        Err(Overflow::Full { .. }) => {}
        other => panic!(
            "a third waiter must be refused at once, got {:?}",
            other.is_ok()
        ),
    }
    for w in waiters {
        match w.await.unwrap() {
            Some(o @ Overflow::Waited { .. }) => assert!(o.retry_after_secs() >= 1),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    // Those that gave up left: the queue has room again.
    drop(first);
    let _s = budget
        .acquire(&send("2"), Instant::now() + FAR)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_frees_its_chat() {
    let budget = Arc::new(Budget::new(limits(&[w(100, 1)], &[], &[]), 10));
    let t0 = Instant::now();
    let holder = budget.acquire(&send("5"), t0 + FAR).await.unwrap();
    let b = budget.clone();
    let gone = tokio::spawn(async move {
        b.acquire(&send("5"), Instant::now() + FAR)
            .await
            .map(|_| ())
    });
    tokio::task::yield_now().await;
    gone.abort();
    let _ = gone.await;
    drop(holder);
    let _next = tokio::time::timeout(Duration::from_secs(1), budget.acquire(&send("5"), t0 + FAR))
        .await
        .expect("the abandoned waiter no longer holds the chat")
        .unwrap();
}

#[test]
fn groups_are_negative_ids_or_public_usernames() {
    assert!(is_group("-100123") && is_group("-5") && is_group("@channel"));
    assert!(!is_group("42") && !is_group("-") && !is_group("-12a") && !is_group("uuid-1"));
}

#[test]
fn flavor_defaults_follow_each_platforms_documents() {
    let tg = Limits::for_flavor(Flavor::Telegram);
    assert_eq!(tg.per_bot, [w(30, 1)]);
    assert!(tg.chat_methods.allows("sendPhoto") && !tg.chat_methods.allows("sendChatAction"));
    let ww = Limits::for_flavor(Flavor::WwChat);
    assert_eq!(ww.per_chat, [w(1, 1), w(20, 60)]);
    assert!(ww.chat_methods.allows("sendVoice") && !ww.chat_methods.allows("sendSticker"));
    assert!(Limits::for_flavor(Flavor::MpChat).per_chat.is_empty());
}
