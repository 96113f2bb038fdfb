//! actionHero's chat-room membership in both layouts it has used.

use std::collections::BTreeMap;

use redis::AsyncCommands as _;
use serde_json::{Value, json};

use super::{Settings, now_ms};

/// Which layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomLayout {
    /// actionHero 4.0–7.0: a LIST of connection ids per room at the member
    /// key template (`actionHero:roomMembers:{room}`); rooms are implicit.
    MemberLists,
    /// actionHero 7.1 onwards: `<prefix>:chatRoom:rooms` SET and
    /// `<prefix>:chatRoom:members:<room>` HASH id → `{"id","joinedAt","host"}`.
    ChatRoom,
}

/// The chat rooms.
#[derive(Clone)]
pub struct Rooms {
    conn: crate::connection::Conn,
    layout: RoomLayout,
    prefix: String,
    members_template: String,
    host: String,
}

impl Rooms {
    pub(super) fn new(conn: crate::connection::Conn, s: &Settings) -> Rooms {
        Rooms {
            conn,
            layout: s.room_layout,
            prefix: s.prefix.clone(),
            members_template: s.room_members_key.clone(),
            host: s.server_id.clone(),
        }
    }

    fn rooms_key(&self) -> String {
        format!("{}:chatRoom:rooms", self.prefix)
    }

    fn members_key(&self, room: &str) -> String {
        match self.layout {
            RoomLayout::MemberLists => self.members_template.replace("{room}", room),
            RoomLayout::ChatRoom => format!("{}:chatRoom:members:{room}", self.prefix),
        }
    }

    /// Every room (7.1 layout: the rooms set; 7.0: every non-empty list).
    pub async fn list(&self) -> crate::Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut rooms: Vec<String> = match self.layout {
            RoomLayout::ChatRoom => conn.smembers(self.rooms_key()).await?,
            RoomLayout::MemberLists => {
                let pattern = self.members_template.replace("{room}", "*");
                let (head, tail) = self
                    .members_template
                    .split_once("{room}")
                    .unwrap_or((&self.members_template, ""));
                super::scan(&mut conn, &pattern)
                    .await?
                    .into_iter()
                    .map(|k| k[head.len()..k.len() - tail.len()].to_owned())
                    .collect()
            }
        };
        rooms.sort();
        Ok(rooms)
    }

    /// `api.chatRoom.add(room)`: create a room (7.1 layout; a no-op for 7.0,
    /// whose rooms exist while they have members). `false` if it existed.
    pub async fn create(&self, room: &str) -> crate::Result<bool> {
        if self.layout == RoomLayout::MemberLists {
            return Ok(true);
        }
        let mut conn = self.conn.clone();
        let n: i64 = conn.sadd(self.rooms_key(), room).await?;
        Ok(n == 1)
    }

    /// Put connection `id` in `room` (7.1: the room must exist). `false` if
    /// it was already a member or the room does not exist.
    pub async fn add_member(&self, room: &str, id: &str) -> crate::Result<bool> {
        let mut conn = self.conn.clone();
        match self.layout {
            RoomLayout::MemberLists => {
                let members: Vec<String> = conn.lrange(self.members_key(room), 0, -1).await?;
                if members.iter().any(|m| m == id) {
                    return Ok(false);
                }
                conn.rpush::<_, _, ()>(self.members_key(room), id).await?;
                Ok(true)
            }
            RoomLayout::ChatRoom => {
                if !conn.sismember::<_, _, bool>(self.rooms_key(), room).await? {
                    return Ok(false);
                }
                let member = json!({"id": id, "joinedAt": now_ms(), "host": self.host}).to_string();
                let n: i64 = conn.hset_nx(self.members_key(room), id, member).await?;
                Ok(n == 1)
            }
        }
    }

    /// Take connection `id` out of `room`; whether it was there.
    pub async fn remove_member(&self, room: &str, id: &str) -> crate::Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = match self.layout {
            RoomLayout::MemberLists => conn.lrem(self.members_key(room), 1, id).await?,
            RoomLayout::ChatRoom => conn.hdel(self.members_key(room), id).await?,
        };
        Ok(n == 1)
    }

    /// `api.chatRoom.roomStatus(room)`: `{room, members, membersCount}` with
    /// members as actionHero reports them (7.1: id → `{id, joinedAt, host}`;
    /// 7.0: a list of ids).
    pub async fn status(&self, room: &str) -> crate::Result<Value> {
        let mut conn = self.conn.clone();
        let (members, count) = match self.layout {
            RoomLayout::MemberLists => {
                let ids: Vec<String> = conn.lrange(self.members_key(room), 0, -1).await?;
                let n = ids.len();
                (json!(ids), n)
            }
            RoomLayout::ChatRoom => {
                let all: BTreeMap<String, String> = conn.hgetall(self.members_key(room)).await?;
                let n = all.len();
                let members: serde_json::Map<String, Value> = all
                    .into_iter()
                    .map(|(id, v)| (id, serde_json::from_str(&v).unwrap_or(Value::String(v))))
                    .collect();
                (Value::Object(members), n)
            }
        };
        Ok(json!({"room": room, "members": members, "membersCount": count}))
    }
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms").finish_non_exhaustive()
    }
}
