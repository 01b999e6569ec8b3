//! The in-memory window of one forward's queue, split into lanes.
//!
//! Invariant: every non-empty lane is in exactly one place: the ready queue,
//! the timer heap (waiting for its head's retry time), or in flight (taken
//! by `take_ready` and not yet settled). That is what keeps one request per
//! lane in flight without scanning every lane on every event.
//!
//! A lane holds at most `PER_LANE` jobs in memory. Past that its further jobs
//! stay in the store and the lane is marked as overflowing from the first one
//! skipped; the dispatcher reloads them (`needs_reload`) as the lane drains.
//! Without the cap, one chat stuck on a failing update could fill the whole
//! window and stall every other chat of the forward.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::platform::update::Lane;
use crate::store::Job;

pub const PER_LANE: usize = 256;

#[derive(Default)]
pub struct Lanes {
    queues: HashMap<String, VecDeque<Job>>,
    ready: VecDeque<String>,
    timers: BinaryHeap<Reverse<(u64, String)>>,
    loaded: usize,
    cursor: Option<u64>,
    /// Lanes with jobs left in the store: the first sequence number skipped.
    overflow: HashMap<String, u64>,
}

/// The lane a job is ordered in. Updates with neither chat nor user are
/// ordered with nothing, so each gets a lane of its own.
pub fn key_of(job: &Job) -> String {
    match &job.lane {
        Lane::Alone => format!("#{}", job.seq),
        lane => lane.encode(),
    }
}

impl Lanes {
    pub fn loaded(&self) -> usize {
        self.loaded
    }

    /// The highest sequence number loaded so far.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// Adds a job scanned from the store (in sequence order) unless its lane
    /// is full or already overflowing; the cursor moves past it either way.
    pub fn push(&mut self, job: Job, now: u64) {
        let key = key_of(&job);
        self.cursor = Some(self.cursor.map_or(job.seq, |c| c.max(job.seq)));
        if self.overflow.contains_key(&key) {
            return;
        }
        if self.queues.get(&key).is_some_and(|q| q.len() >= PER_LANE) {
            self.overflow.insert(key, job.seq);
            return;
        }
        self.insert(key, job, now);
    }

    /// If this lane has jobs left in the store and room for them: the
    /// sequence number to reload from, how many fit, and up to where.
    pub fn needs_reload(&self, key: &str) -> Option<(u64, usize, u64)> {
        let from = *self.overflow.get(key)?;
        let len = self.queues.get(key).map_or(0, |q| q.len());
        (len <= PER_LANE / 2).then(|| (from, PER_LANE - len, self.cursor.unwrap_or(from)))
    }

    /// Adds jobs reloaded for an overflowing lane; `rest_from` is where its
    /// jobs still in the store start, if any remain below the cursor.
    pub fn reloaded(&mut self, key: &str, jobs: Vec<Job>, rest_from: Option<u64>, now: u64) {
        match rest_from {
            Some(seq) => {
                self.overflow.insert(key.to_string(), seq);
            }
            None => {
                self.overflow.remove(key);
            }
        }
        for job in jobs {
            self.insert(key.to_string(), job, now);
        }
    }

    fn insert(&mut self, key: String, job: Job, now: u64) {
        self.loaded += 1;
        let at = job.next_at_ms;
        let queue = self.queues.entry(key.clone()).or_default();
        queue.push_back(job);
        if queue.len() == 1 {
            self.schedule(key, at, now);
        }
    }

    fn schedule(&mut self, key: String, at: u64, now: u64) {
        if at <= now {
            self.ready.push_back(key);
        } else {
            self.timers.push(Reverse((at, key)));
        }
    }

    /// Moves lanes whose retry time has come to the ready queue.
    pub fn release_due(&mut self, now: u64) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            self.ready.push_back(key);
        }
    }

    /// Every lane waiting out a backoff becomes ready now.
    pub fn release_all(&mut self) {
        while let Some(Reverse((_, key))) = self.timers.pop() {
            self.ready.push_back(key);
        }
    }

    /// When the earliest waiting lane becomes ready.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// The head job of the next ready lane; the lane is in flight until
    /// `finish` or `replace_head`.
    pub fn take_ready(&mut self) -> Option<(String, Job)> {
        while let Some(key) = self.ready.pop_front() {
            if let Some(job) = self.queues.get(&key).and_then(|q| q.front()) {
                return Some((key, job.clone()));
            }
        }
        None
    }

    /// A copy of the lane's head (the job in flight, while it is).
    pub fn head(&self, key: &str) -> Option<Job> {
        self.queues.get(key).and_then(|q| q.front()).cloned()
    }

    /// The lane's head was delivered: drop it and schedule the next one.
    pub fn finish(&mut self, key: &str, now: u64) {
        let Some(queue) = self.queues.get_mut(key) else {
            return;
        };
        if queue.pop_front().is_some() {
            self.loaded -= 1;
        }
        match queue.front() {
            Some(next) => {
                let at = next.next_at_ms;
                self.schedule(key.to_string(), at, now);
            }
            None => {
                self.queues.remove(key);
            }
        }
    }

    /// The lane's head failed: keep it at the head with its new schedule.
    pub fn replace_head(&mut self, key: &str, job: Job, now: u64) {
        let at = job.next_at_ms;
        if let Some(head) = self.queues.get_mut(key).and_then(|q| q.front_mut()) {
            *head = job;
            self.schedule(key.to_string(), at, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn job(seq: u64, lane: Lane) -> Job {
        Job {
            seq,
            id_seq: seq,
            dead_at_ms: 0,
            replayed_ms: 0,
            attempts: 0,
            next_at_ms: 0,
            received_ms: 0,
            update_id: Some(seq as i64),
            kind: "message".into(),
            lane,
            last_error: String::new(),
            payload: Bytes::new(),
        }
    }

    #[test]
    fn one_in_flight_per_lane_and_lanes_in_parallel() {
        let mut l = Lanes::default();
        l.push(job(1, Lane::Chat("a".into())), 0);
        l.push(job(2, Lane::Chat("a".into())), 0);
        l.push(job(3, Lane::Chat("b".into())), 0);
        let (ka, ja) = l.take_ready().unwrap();
        let (kb, jb) = l.take_ready().unwrap();
        assert_eq!((ja.seq, jb.seq), (1, 3));
        assert!(l.take_ready().is_none(), "job 2 must wait for job 1");
        l.finish(&ka, 0);
        assert_eq!(l.take_ready().unwrap().1.seq, 2);
        l.finish(&kb, 0);
        assert_eq!(l.loaded(), 1);
    }

    #[test]
    fn a_failed_head_blocks_only_its_lane_until_due() {
        let mut l = Lanes::default();
        l.push(job(1, Lane::Chat("a".into())), 0);
        l.push(job(2, Lane::Chat("a".into())), 0);
        let (k, mut j) = l.take_ready().unwrap();
        j.attempts = 1;
        j.next_at_ms = 100;
        l.replace_head(&k, j, 50);
        assert!(l.take_ready().is_none());
        assert_eq!(l.next_due(), Some(100));
        l.release_due(99);
        assert!(l.take_ready().is_none());
        l.release_due(100);
        let (_, again) = l.take_ready().unwrap();
        assert_eq!((again.seq, again.attempts), (1, 1));
    }

    #[test]
    fn a_full_lane_overflows_without_holding_back_others() {
        let mut l = Lanes::default();
        let stuck = Lane::Chat("stuck".into());
        for seq in 1..=(PER_LANE as u64 + 10) {
            l.push(job(seq, stuck.clone()), 0);
        }
        l.push(job(1000, Lane::Chat("other".into())), 0);
        assert_eq!(
            l.loaded(),
            PER_LANE + 1,
            "the stuck lane keeps only PER_LANE in memory"
        );
        assert_eq!(l.cursor(), Some(1000));
        let key = Lane::Chat("stuck".into()).encode();
        assert_eq!(l.needs_reload(&key), None, "no room yet");
        let (k1, _) = l.take_ready().unwrap();
        let (k2, j2) = l.take_ready().unwrap();
        assert_eq!(j2.seq, 1000, "the other chat is not held back");
        l.finish(&k2, 0);
        for _ in 0..(PER_LANE / 2) {
            l.finish(&k1, 0);
            if let Some((k, _)) = l.take_ready() {
                assert_eq!(k, k1);
            }
        }
        let (from, room, to) = l.needs_reload(&key).expect("room now");
        assert_eq!((from, to), (PER_LANE as u64 + 1, 1000));
        assert!(room >= PER_LANE / 2);
        let rest: Vec<Job> = (from..from + 10).map(|s| job(s, stuck.clone())).collect();
        l.reloaded(&key, rest, None, 0);
        assert_eq!(l.needs_reload(&key), None);
        // New jobs of the lane are accepted again once it no longer overflows.
        l.push(job(1001, stuck.clone()), 0);
        assert_eq!(l.queues[&key].back().unwrap().seq, 1001);
    }

    #[test]
    fn updates_without_chat_or_user_do_not_wait_for_each_other() {
        let mut l = Lanes::default();
        l.push(job(1, Lane::Alone), 0);
        l.push(job(2, Lane::Alone), 0);
        assert!(l.take_ready().is_some());
        assert!(l.take_ready().is_some());
        assert_eq!(l.cursor(), Some(2));
    }
}
