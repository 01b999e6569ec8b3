//! What the store knows about itself: forwards' compact ids, the
//! installation's instance id in every webhook-id, its size on disk.

use super::*;

impl Store {
    /// The compact id of a forward, assigned on first sight and kept.
    pub fn forward_id(&self, bot: &str, forward: &str) -> Result<u32, StoreError> {
        let name_key = [b"m/fwd/", bot.as_bytes(), b"\0", forward.as_bytes()].concat();
        if let Some(v) = self.tree.get(&name_key)? {
            return u32_from(&v);
        }
        let id = self
            .tree
            .update_and_fetch(b"m/next-fwd", |old| {
                let n = old.and_then(|v| u32_from(v).ok()).unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .map(|v| u32_from(&v))
            .transpose()?
            .unwrap_or(1);
        self.tree.insert(name_key, &id.to_be_bytes())?;
        self.db.flush()?;
        self.blobs.sync()?;
        Ok(id)
    }

    /// Every forward the store knows, in id order.
    pub fn forwards(&self) -> Result<Vec<ForwardRef>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"m/fwd/") {
            let (k, v) = item?;
            let text = String::from_utf8_lossy(&k[6..]).into_owned();
            let (bot, name) = text.split_once('\0').unwrap_or((&text, ""));
            out.push(ForwardRef {
                id: u32_from(&v)?,
                bot: bot.to_string(),
                name: name.to_string(),
            });
        }
        out.sort_by_key(|f| f.id);
        Ok(out)
    }

    /// The Standard Webhooks message id of a stored update: the same on every
    /// retry, after every restart and after a replay, and different across
    /// installations.
    pub fn webhook_id(&self, job: &Job) -> String {
        format!("msg_{}{:016x}", self.instance, job.id_seq)
    }

    /// A tree of its own in the same database, for state beside the queue
    /// (the gateway's remembered answers).
    pub fn side_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}
