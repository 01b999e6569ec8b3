//! Reading jobs in sequence order (what the dispatchers load), the groups
//! they live in, how many wait, and setting damaged records aside.

use super::*;

impl Store {
    /// Up to `limit` jobs of a forward with sequence numbers in
    /// `(after, to]` (`to` defaults to everything committed) that `keep`
    /// accepts, in sequence order. Damaged records are set aside and logged.
    pub fn scan(
        &self,
        fwd: u32,
        after: Option<u64>,
        to: Option<u64>,
        limit: usize,
        mut keep: impl FnMut(&Job) -> bool,
    ) -> Result<Vec<Job>, StoreError> {
        let committed = self.committed.load(Ordering::SeqCst);
        let mut end = to.unwrap_or(committed).min(committed);
        let start = match after {
            Some(seq) if seq >= end => return Ok(Vec::new()),
            Some(seq) => seq + 1,
            None => 0,
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Jobs on their own first: they win over their group's entry. If
        // `limit` of them are found by seq S, nothing past S is needed.
        let mut own = Vec::new();
        let mut seen = HashSet::new();
        for item in self.tree.range(key(JOB, fwd, start)..=key(JOB, fwd, end)) {
            let (k, v) = item?;
            let seq = record::seq_of(&k)?;
            seen.insert(seq);
            match record::decode(&k, &v) {
                Ok(job) if keep(&job) => own.push(job),
                Ok(_) => {}
                Err(e) => self.set_aside(fwd, &k, &v, &e),
            }
            if own.len() >= limit {
                end = seq;
                break;
            }
        }
        let mut grouped = Vec::new();
        let mut damaged = Vec::new();
        {
            let from = self
                .group_start(fwd, start)?
                .map_or(start, |(first, _)| first);
            for item in self
                .tree
                .range(key(GROUP, fwd, from)..=key(GROUP, fwd, end))
            {
                let (k, v) = item?;
                let first = record::seq_of(&k)?;
                let group::Opened {
                    plain: whole,
                    entries: ranges,
                    decompressed,
                } = match group::open(Bytes::from_owner(v.clone())) {
                    Ok(opened) => opened,
                    Err(e) => {
                        damaged.push((k.to_vec(), v.to_vec(), e));
                        continue;
                    }
                };
                let done = self
                    .done_of(&mut self.live(), fwd, first, ranges.len())?
                    .clone();
                for (i, range) in ranges.into_iter().enumerate() {
                    let seq = first + i as u64;
                    if seq < start || done.is_set(i) || seen.contains(&seq) {
                        continue;
                    }
                    if seq > end {
                        break;
                    }
                    match record::decode_in(seq, &whole, range.clone()) {
                        Ok(mut job) if keep(&job) => {
                            if decompressed {
                                job.payload = Bytes::copy_from_slice(&job.payload);
                            }
                            grouped.push(job)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            damaged.push((key(JOB, fwd, seq).to_vec(), whole[range].to_vec(), e))
                        }
                    }
                }
                if grouped.len() >= limit {
                    break;
                }
            }
        }
        for (k, v, e) in damaged {
            self.set_aside(fwd, &k, &v, &e);
        }
        // Both lists are in seq order; merge them.
        let mut out = Vec::with_capacity(limit.min(own.len() + grouped.len()));
        let (mut own, mut grouped) = (own.into_iter().peekable(), grouped.into_iter().peekable());
        while out.len() < limit {
            let next = match (own.peek(), grouped.peek()) {
                (Some(a), Some(b)) if a.seq < b.seq => own.next(),
                (Some(_), Some(_)) | (None, Some(_)) => grouped.next(),
                (Some(_), None) => own.next(),
                (None, None) => None,
            };
            match next {
                Some(job) => out.push(job),
                None => break,
            }
        }
        Ok(out)
    }

    /// Up to `limit` jobs of a forward after `after`, in sequence order.
    pub fn pending(
        &self,
        fwd: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.scan(fwd, after, None, limit, |_| true)
    }

    /// The group that holds `seq`, if one does: its first seq and size.
    pub(super) fn group_start(
        &self,
        fwd: u32,
        seq: u64,
    ) -> Result<Option<(u64, usize)>, StoreError> {
        let Some(item) = self
            .tree
            .range(key(GROUP, fwd, 0)..=key(GROUP, fwd, seq))
            .next_back()
        else {
            return Ok(None);
        };
        let (k, v) = item?;
        let first = record::seq_of(&k)?;
        let n = group::count(&v).unwrap_or(0);
        Ok((seq < first + n as u64).then_some((first, n)))
    }

    /// The finished-entries state of a group, read from the store the first
    /// time it is needed.
    pub(super) fn done_of<'l>(
        &self,
        live: &'l mut Live,
        fwd: u32,
        first: u64,
        n: usize,
    ) -> Result<&'l mut group::Done, StoreError> {
        match live.groups.entry(fwd).or_default().entry(first) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let done = match self.tree.get(key(DONE, fwd, first))? {
                    Some(bits) => group::Done::load(n, &bits),
                    None => group::Done::none(n),
                };
                Ok(e.insert(done))
            }
        }
    }

    /// The group holding `seq` and its state: from memory, else from sled.
    pub(super) fn group_of<'l>(
        &self,
        live: &'l mut Live,
        fwd: u32,
        seq: u64,
    ) -> Result<Option<(u64, &'l mut group::Done)>, StoreError> {
        let known = live
            .groups
            .get(&fwd)
            .and_then(|g| g.range(..=seq).next_back())
            .filter(|(first, done)| seq < **first + done.len() as u64)
            .map(|(first, done)| (*first, done.len()));
        let Some((first, n)) = known.map_or_else(|| self.group_start(fwd, seq), |k| Ok(Some(k)))?
        else {
            return Ok(None);
        };
        Ok(Some((first, self.done_of(live, fwd, first, n)?)))
    }

    pub(super) fn set_aside(&self, fwd: u32, k: &[u8], v: &[u8], e: &StoreError) {
        let seq = record::seq_of(k).unwrap_or(0);
        error!("job {seq} of forward #{fwd} is damaged ({e}); set aside under x-keys, the queue moves on");
        let mut b = sled::Batch::default();
        let mut live = self.live();
        match k.first() {
            Some(&GROUP) => {
                // The whole group is unreadable.
                b.remove(k);
                b.remove(&key(DONE, fwd, seq)[..]);
                if let Some(g) = live.groups.get_mut(&fwd) {
                    g.remove(&seq);
                }
            }
            _ => {
                // One job: on its own, or an entry of a readable group.
                if let Err(e) = self.finish_into(&mut live, fwd, &[seq], &mut b) {
                    error!("cannot set the damaged job aside: {e}");
                    return;
                }
                b.remove(k);
            }
        }
        b.insert(&key(DAMAGED, fwd, seq)[..], v);
        if let Err(e) = self.tree.apply_batch(b) {
            error!("cannot set the damaged job aside: {e}");
        }
    }

    /// How many jobs a forward has waiting.
    pub fn depth(&self, fwd: u32) -> usize {
        // A snapshot of what is known in memory; the scan below does not
        // hold the lock, so delivery does not wait for a metrics scrape.
        let (known, own): (HashMap<u64, usize>, Vec<u64>) = {
            let live = self.live();
            let known = live
                .groups
                .get(&fwd)
                .map(|g| g.iter().map(|(f, d)| (*f, d.left())).collect())
                .unwrap_or_default();
            let own = live
                .own
                .iter()
                .filter(|(f, _)| *f == fwd)
                .map(|(_, s)| *s)
                .collect();
            (known, own)
        };
        let mut n = 0;
        let mut groups = Vec::new();
        // Only what is flushed: a batch whose flush failed is not queued
        // (it was not confirmed, and will come again).
        let committed = self.committed.load(Ordering::SeqCst);
        for (k, v) in self
            .tree
            .range(key(GROUP, fwd, 0)..=key(GROUP, fwd, committed))
            .flatten()
        {
            let (Ok(first), Ok(count)) = (record::seq_of(&k), group::count(&v)) else {
                continue;
            };
            groups.push((first, count as u64));
            n += match known.get(&first) {
                Some(left) => *left,
                None => match self.tree.get(key(DONE, fwd, first)) {
                    Ok(Some(bits)) => group::Done::load(count, &bits).left(),
                    _ => count,
                },
            };
        }
        // Own records of group entries are counted with their group.
        n + own
            .iter()
            .filter(|seq| {
                let i = groups.partition_point(|(first, _)| *first <= **seq);
                i == 0 || {
                    let (first, count) = groups[i - 1];
                    **seq >= first + count
                }
            })
            .count()
    }

    /// When the forward's oldest waiting update was received (ms since the
    /// epoch), if it has any.
    pub fn oldest(&self, fwd: u32) -> Result<Option<u64>, StoreError> {
        let first = self.scan(fwd, None, Some(u64::MAX), 1, |_| true)?;
        Ok(first.first().map(|j| j.received_ms))
    }
}
