//! Finishing jobs: delivered (a bit in their group's bitmap, the group
//! removed once all are done) or rescheduled with their retry state.

use super::*;

impl Store {
    /// Marks jobs finished, adding to `b` the writes that record it: their
    /// own records removed, their groups' bitmaps saved, or their groups
    /// removed once every entry is finished.
    pub(super) fn finish_into(
        &self,
        live: &mut Live,
        fwd: u32,
        seqs: &[u64],
        b: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let mut touched = Vec::new();
        for &seq in seqs {
            if live.own.remove(&(fwd, seq)) {
                b.remove(&key(JOB, fwd, seq)[..]);
            }
            if let Some((first, done)) = self.group_of(live, fwd, seq)? {
                if done.set((seq - first) as usize) && touched.last() != Some(&first) {
                    touched.push(first);
                }
            }
        }
        let groups = live.groups.entry(fwd).or_default();
        for first in touched {
            let Some(done) = groups.get_mut(&first) else {
                continue;
            };
            if done.left() == 0 {
                b.remove(&key(GROUP, fwd, first)[..]);
                if done.saved {
                    b.remove(&key(DONE, fwd, first)[..]);
                }
                groups.remove(&first);
            } else {
                b.insert(&key(DONE, fwd, first)[..], done.bytes());
                done.saved = true;
            }
        }
        Ok(())
    }

    /// The job is done. Not flushed on its own: losing a completion to a
    /// crash only means one duplicate delivery.
    pub fn complete(&self, fwd: u32, seq: u64) -> Result<(), StoreError> {
        self.complete_many(fwd, &[seq])
    }

    /// Several jobs are done, recorded in one batch.
    pub fn complete_many(&self, fwd: u32, seqs: &[u64]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let mut live = self.live();
        self.finish_into(&mut live, fwd, seqs, &mut b)?;
        self.apply(b)?;
        Ok(())
    }

    /// Records a failed attempt and when to try next, if the job still
    /// waits: as its own record, which wins over its group's entry.
    pub fn reschedule(&self, fwd: u32, job: &Job) -> Result<(), StoreError> {
        let mut live = self.live();
        let waiting = live.own.contains(&(fwd, job.seq))
            || match self.group_of(&mut live, fwd, job.seq)? {
                Some((first, done)) => !done.is_set((job.seq - first) as usize),
                // A job completed or dead-lettered meanwhile must not come back.
                None => false,
            };
        if waiting {
            self.tree
                .insert(key(JOB, fwd, job.seq), record::encode(job))?;
            live.own.insert((fwd, job.seq));
        }
        Ok(())
    }
}
