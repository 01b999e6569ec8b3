//! Which forward wants which update: by kind, by chat, by chat type.
//!
//! Routing happens once, when a batch is stored: a forward that does not want
//! an update never gets a job for it, and an update no forward wants is
//! counted and dropped instead of waiting in a queue forever.

use std::collections::HashSet;

use crate::platform::update::{Lane, Update};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Update kinds (`message`, `callback_query`, …); None: all.
    pub updates: Option<Vec<String>>,
    /// Chat ids as text (`123`, `-100…`, a UUID); None: all chats and
    /// updates without a chat.
    pub chats: Option<HashSet<String>>,
    /// `private`, `group`, `supergroup`, `channel`; None: all.
    pub chat_types: Option<Vec<String>>,
}

impl Filter {
    pub fn wants(&self, u: &Update) -> bool {
        if let Some(kinds) = &self.updates {
            if !kinds.contains(&u.kind) {
                return false;
            }
        }
        if let Some(chats) = &self.chats {
            match &u.lane {
                Lane::Chat(id) if chats.contains(id) => {}
                _ => return false,
            }
        }
        if let Some(types) = &self.chat_types {
            match &u.chat_type {
                Some(t) if types.iter().any(|x| x == t) => {}
                _ => return false,
            }
        }
        true
    }

    pub fn is_everything(&self) -> bool {
        self.updates.is_none() && self.chats.is_none() && self.chat_types.is_none()
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_everything() {
            return f.write_str("(all)");
        }
        let mut parts = Vec::new();
        if let Some(k) = &self.updates {
            parts.push(format!("kinds {}", k.join(", ")));
        }
        if let Some(c) = &self.chats {
            let mut c: Vec<&String> = c.iter().collect();
            c.sort();
            parts.push(format!(
                "chats {}",
                c.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(t) = &self.chat_types {
            parts.push(format!("chat types {}", t.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn update(text: &str) -> Update {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        Update::parse(&raw).unwrap()
    }

    #[test]
    fn filters_combine_kind_chat_and_type() {
        let group = update(r#"{"update_id":1,"message":{"chat":{"id":-100,"type":"supergroup"}}}"#);
        let private = update(r#"{"update_id":2,"message":{"chat":{"id":"7","type":"private"}}}"#);
        let inline = update(r#"{"update_id":3,"inline_query":{"id":"q","from":{"id":7}}}"#);
        let all = Filter::default();
        assert!(all.wants(&group) && all.wants(&private) && all.wants(&inline));
        let only_7 = Filter {
            chats: Some(["7".to_string()].into()),
            ..Default::default()
        };
        assert!(!only_7.wants(&group) && only_7.wants(&private) && !only_7.wants(&inline));
        let groups = Filter {
            chat_types: Some(vec!["supergroup".into(), "group".into()]),
            ..Default::default()
        };
        assert!(groups.wants(&group) && !groups.wants(&private) && !groups.wants(&inline));
        let msgs_in_7 = Filter {
            updates: Some(vec!["message".into()]),
            chats: Some(["7".to_string()].into()),
            chat_types: None,
        };
        assert!(msgs_in_7.wants(&private) && !msgs_in_7.wants(&group));
    }
}
