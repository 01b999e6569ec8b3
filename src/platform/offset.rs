//! Which `getUpdates` offset confirms a batch.
//!
//! The offset is "the identifier of the first update to be returned": the
//! platform forgets every update whose id is below it. So an update is
//! confirmed by `update_id + 1`, and only a positive offset means that.
//! Telegram reads a negative offset as "only the last -offset updates" (it
//! forgets everything before them) and 0 as no offset at all, and
//! `i64::MAX + 1` does not exist. A broken or hostile platform can send any
//! of those ids, so the sum is checked and anything but a positive result
//! confirms nothing.

/// The offset that confirms the update with this id, if there is one.
pub fn confirming(id: i64) -> Option<i64> {
    id.checked_add(1).filter(|offset| *offset > 0)
}

/// What a stored batch lets the poller send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// This offset confirms the batch.
    Offset(i64),
    /// No update in the batch has an id that an offset can confirm.
    Nothing,
    /// The batch ends on an update the offset already sent had confirmed:
    /// the platform ignored that offset, and the batch was stored before.
    Repeated(i64),
}

/// The offset after a batch whose update ids (None: unreadable) are `ids`,
/// in the order received, given the offset sent with the call that got it.
///
/// Ids rise within a batch but may jump down between batches (Telegram
/// picks a new random start after a week without updates), so the batch's
/// last confirmable update decides, not the highest id ever seen.
pub fn after_batch(ids: &[Option<i64>], sent: Option<i64>) -> Next {
    match ids.iter().rev().flatten().find_map(|&id| confirming(id)) {
        None => Next::Nothing,
        Some(offset) if Some(offset) == sent => Next::Repeated(offset),
        Some(offset) => Next::Offset(offset),
    }
}

/// The ids in a batch that no offset can confirm, for the log.
pub fn unconfirmable(ids: &[Option<i64>]) -> Vec<i64> {
    ids.iter()
        .flatten()
        .copied()
        .filter(|&id| confirming(id).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinary_batch_is_confirmed_by_its_last_id_plus_one() {
        assert_eq!(
            after_batch(&[Some(5), Some(6), Some(7)], Some(5)),
            Next::Offset(8)
        );
        // Ids jumped down after a reset: the last one still decides.
        assert_eq!(after_batch(&[Some(3)], Some(900)), Next::Offset(4));
        assert_eq!(after_batch(&[Some(0)], None), Next::Offset(1));
    }

    #[test]
    fn i64_max_has_no_offset_above_it() {
        assert_eq!(confirming(i64::MAX), None);
        assert_eq!(after_batch(&[Some(i64::MAX)], Some(2)), Next::Nothing);
        // An earlier update in the batch still confirms what it can.
        assert_eq!(
            after_batch(&[Some(1), Some(i64::MAX)], None),
            Next::Offset(2)
        );
        assert_eq!(unconfirmable(&[Some(1), Some(i64::MAX)]), vec![i64::MAX]);
    }

    #[test]
    fn negative_ids_never_make_an_offset_of_zero_or_below() {
        for id in [-1, -5, i64::MIN] {
            assert_eq!(confirming(id), None, "{id}");
        }
        assert_eq!(after_batch(&[Some(-9), Some(-5)], None), Next::Nothing);
        assert_eq!(
            after_batch(&[Some(-5), Some(3), Some(-1)], None),
            Next::Offset(4)
        );
        assert_eq!(unconfirmable(&[Some(-5), Some(3), None]), vec![-5]);
    }

    #[test]
    fn unreadable_ids_confirm_nothing() {
        assert_eq!(after_batch(&[None, None], Some(4)), Next::Nothing);
        assert_eq!(after_batch(&[Some(4), None], Some(4)), Next::Offset(5));
    }

    #[test]
    fn a_batch_ending_on_an_already_confirmed_update_is_a_repeat() {
        assert_eq!(
            after_batch(&[Some(i64::MAX), Some(3)], Some(4)),
            Next::Repeated(4)
        );
        assert_eq!(after_batch(&[Some(3)], None), Next::Offset(4));
    }
}
