//! Every Redis key and pub/sub channel of the faye-redis 0.2.0 engine.
//!
//! This is the only place in the crate that formats one. The namespace is a
//! plain prefix with no separator added (faye-redis concatenates it as is):
//! with `faye:` (actionHero's choice) the client set is `faye:/clients`, with
//! the engine's default `""` it is `/clients`. Reference: faye.md §1.2–1.3.

/// Key builder bound to one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    ns: String,
}

impl Keys {
    /// Keys under `namespace`, used verbatim as a prefix.
    pub fn new(namespace: &str) -> Keys {
        Keys {
            ns: namespace.to_owned(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// ZSET client id → last ping in ms since the epoch (0: being created or
    /// destroyed).
    pub fn clients(&self) -> String {
        format!("{}/clients", self.ns)
    }

    /// SET of the names and patterns client `id` subscribed to.
    pub fn client_channels(&self, id: &str) -> String {
        format!("{}/clients/{id}/channels", self.ns)
    }

    /// LIST of JSON messages queued for client `id`.
    pub fn client_messages(&self, id: &str) -> String {
        let (head, tail) = self.client_messages_parts();
        format!("{head}{id}{tail}")
    }

    /// [`Keys::client_messages`] split around the client id, for the publish
    /// script, which learns the ids only inside Redis.
    pub fn client_messages_parts(&self) -> (String, &'static str) {
        (format!("{}/clients/", self.ns), "/messages")
    }

    /// SET of the client ids subscribed to `channel` (a name or a pattern,
    /// stored literally; no slash is inserted).
    pub fn channel(&self, channel: &str) -> String {
        format!("{}/channels{channel}", self.ns)
    }

    /// Pub/sub channel: payload = a client id whose queue got messages.
    pub fn notify_messages(&self) -> String {
        format!("{}/notifications/messages", self.ns)
    }

    /// Pub/sub channel: payload = a client id that was destroyed.
    pub fn notify_close(&self) -> String {
        format!("{}/notifications/close", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn exact_strings_of_faye_redis() {
        let k = Keys::new("faye:");
        assert_eq!(k.clients(), "faye:/clients");
        assert_eq!(k.client_channels("abc"), "faye:/clients/abc/channels");
        assert_eq!(k.client_messages("abc"), "faye:/clients/abc/messages");
        assert_eq!(k.channel("/chat/room1"), "faye:/channels/chat/room1");
        assert_eq!(k.channel("/chat/**"), "faye:/channels/chat/**");
        assert_eq!(k.notify_messages(), "faye:/notifications/messages");
        assert_eq!(k.notify_close(), "faye:/notifications/close");
        assert_eq!(Keys::new("").clients(), "/clients");
    }
}
