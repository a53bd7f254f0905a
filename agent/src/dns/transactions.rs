//! Query/response matching. A query waits under (connection, role, id); the
//! response with that key and the same question completes it. Queries that
//! wait longer than the timeout are reported as timeouts. A query is a retry
//! when it repeats one still waiting: the same key and question (a
//! retransmission on the same socket), or the same question from the same
//! workload on another socket or to another resolver. The same key with
//! another question replaces the waiting query.

use std::collections::HashMap;

use super::{wire, Conn, Role};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    conn: Conn,
    role: Role,
    id: u16,
}

/// A question as the matching sees it; `peer` is the client's address when
/// the workload is the server (different clients asking the same name are
/// not retries of each other).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QuestionKey {
    cgroup_id: u64,
    role: Role,
    peer: Option<std::net::IpAddr>,
    qname: String,
    qtype: u16,
}

#[derive(Clone, Debug)]
struct Pending {
    first_ns: u64,
    last_ns: u64,
    qname: String,
    qtype: u16,
}

/// What one message (or the passing of time) meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Query {
        conn: Conn,
        role: Role,
        qname: String,
        qtype: u16,
        retry: bool,
    },
    Response {
        conn: Conn,
        role: Role,
        qname: String,
        qtype: u16,
        rcode: u16,
        latency_ns: u64,
        truncated: bool,
    },
    Timeout {
        conn: Conn,
        role: Role,
        qname: String,
        qtype: u16,
    },
    /// A response to no waiting query.
    Unmatched {
        conn: Conn,
        role: Role,
    },
}

pub struct Tracker {
    pending: HashMap<Key, Pending>,
    waiting: HashMap<QuestionKey, u32>,
    timeout_ns: u64,
    max_pending: usize,
    /// Queries not tracked because `max_pending` were waiting (a loss).
    pub pending_full: u64,
    /// Waiting queries given up because the same connection and id were
    /// reused for another question (a loss: their outcome is unknown).
    pub superseded: u64,
}

impl Tracker {
    pub fn new(timeout: std::time::Duration, max_pending: usize) -> Self {
        Self {
            pending: HashMap::new(),
            waiting: HashMap::new(),
            timeout_ns: timeout.as_nanos().min(u128::from(u64::MAX)) as u64,
            max_pending,
            pending_full: 0,
            superseded: 0,
        }
    }

    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    fn question_key(conn: &Conn, role: Role, qname: &str, qtype: u16) -> QuestionKey {
        QuestionKey {
            cgroup_id: conn.cgroup_id,
            role,
            peer: (role == Role::Server).then_some(conn.remote.ip()),
            qname: qname.to_string(),
            qtype,
        }
    }

    /// One decoded message seen at `ts_ns` (kernel monotonic).
    pub fn message(&mut self, conn: Conn, role: Role, msg: &wire::Message, ts_ns: u64, out: &mut Vec<Outcome>) {
        let (qname, qtype) = msg.questions.first().map_or((String::new(), 0), |q| (q.name.clone(), q.qtype));
        let key = Key { conn, role, id: msg.header.id };
        if !msg.header.is_response() {
            let qk = Self::question_key(&conn, role, &qname, qtype);
            match self.pending.get_mut(&key) {
                Some(p) if p.qname == qname && p.qtype == qtype => {
                    // a retransmission: the wait is measured from the first send
                    p.last_ns = ts_ns;
                    out.push(Outcome::Query { conn, role, qname, qtype, retry: true });
                    return;
                }
                Some(_) => {
                    // The id now stands for another question: a response to
                    // the old one could no longer be told apart, so it stops
                    // waiting (neither answered nor timed out: counted).
                    if let Some(old) = self.pending.remove(&key) {
                        self.unwait(&conn, role, &old);
                        self.superseded += 1;
                    }
                }
                None => {}
            }
            let retry = self.waiting.get(&qk).is_some_and(|n| *n > 0);
            if self.pending.len() >= self.max_pending {
                self.pending_full += 1;
            } else {
                *self.waiting.entry(qk).or_default() += 1;
                self.pending.insert(key, Pending { first_ns: ts_ns, last_ns: ts_ns, qname: qname.clone(), qtype });
            }
            out.push(Outcome::Query { conn, role, qname, qtype, retry });
            return;
        }
        // A response answers the query with its key and question (a response
        // without a question, e.g. FORMERR, matches on the key alone).
        let matches =
            self.pending.get(&key).is_some_and(|p| msg.questions.is_empty() || (p.qname == qname && p.qtype == qtype));
        let Some(p) = matches.then(|| self.pending.remove(&key)).flatten() else {
            out.push(Outcome::Unmatched { conn, role });
            return;
        };
        self.unwait(&conn, role, &p);
        out.push(Outcome::Response {
            conn,
            role,
            qname: p.qname,
            qtype: p.qtype,
            rcode: msg.rcode(),
            latency_ns: ts_ns.saturating_sub(p.first_ns),
            truncated: msg.header.truncated(),
        });
    }

    /// Reports queries whose last send is at least the timeout before `now_ns`.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Outcome>) {
        let deadline = now_ns.saturating_sub(self.timeout_ns);
        let expired: Vec<Key> =
            self.pending.iter().filter(|(_, p)| p.last_ns <= deadline).map(|(k, _)| k.clone()).collect();
        for key in expired {
            if let Some(p) = self.pending.remove(&key) {
                self.unwait(&key.conn, key.role, &p);
                out.push(Outcome::Timeout { conn: key.conn, role: key.role, qname: p.qname, qtype: p.qtype });
            }
        }
    }

    fn unwait(&mut self, conn: &Conn, role: Role, p: &Pending) {
        let qk = Self::question_key(conn, role, &p.qname, p.qtype);
        if let Some(n) = self.waiting.get_mut(&qk) {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(&qk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use super::*;
    use crate::dns::{
        wire::{Header, Message, Question},
        Transport,
    };

    const MS: u64 = 1_000_000;

    fn conn(port: u16, resolver: &str) -> Conn {
        Conn {
            cgroup_id: 7,
            local: SocketAddr::from(([10, 0, 0, 1], port)),
            remote: resolver.parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn msg(id: u16, response: bool, rcode: u16, name: &str) -> Message {
        Message {
            header: Header {
                id,
                flags: if response { 0x8180 | rcode } else { 0x0100 },
                qdcount: 1,
                ..Default::default()
            },
            questions: vec![Question { name: name.into(), qtype: 1, qclass: 1 }],
            answers: vec![],
            answers_dropped: 0,
            edns: None,
            partial: false,
        }
    }

    fn tracker() -> Tracker {
        Tracker::new(Duration::from_secs(5), 100)
    }

    #[test]
    fn a_response_completes_its_query_with_the_latency() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = conn(40000, "10.96.0.10:53");
        t.message(c, Role::Client, &msg(1, false, 0, "a.example"), 100 * MS, &mut out);
        t.message(c, Role::Client, &msg(1, true, 3, "a.example"), 103 * MS, &mut out);
        assert_eq!(
            out[0],
            Outcome::Query { conn: c, role: Role::Client, qname: "a.example".into(), qtype: 1, retry: false }
        );
        assert_eq!(
            out[1],
            Outcome::Response {
                conn: c,
                role: Role::Client,
                qname: "a.example".into(),
                qtype: 1,
                rcode: 3,
                latency_ns: 3 * MS,
                truncated: false
            }
        );
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn responses_with_another_id_question_or_socket_do_not_match() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = conn(40000, "10.96.0.10:53");
        t.message(c, Role::Client, &msg(1, false, 0, "a.example"), 0, &mut out);
        t.message(c, Role::Client, &msg(2, true, 0, "a.example"), MS, &mut out);
        t.message(c, Role::Client, &msg(1, true, 0, "b.example"), MS, &mut out);
        t.message(conn(40001, "10.96.0.10:53"), Role::Client, &msg(1, true, 0, "a.example"), MS, &mut out);
        assert!(out[1..].iter().all(|o| matches!(o, Outcome::Unmatched { .. })), "{out:?}");
        assert_eq!(t.waiting(), 1);
    }

    #[test]
    fn unanswered_queries_time_out_after_their_last_send() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = conn(40000, "10.96.0.10:53");
        t.message(c, Role::Client, &msg(1, false, 0, "slow.example"), 0, &mut out);
        // the same id again on the same socket: a retransmission
        t.message(c, Role::Client, &msg(1, false, 0, "slow.example"), 2000 * MS, &mut out);
        assert!(matches!(out[1], Outcome::Query { retry: true, .. }));
        out.clear();
        t.expire(6000 * MS, &mut out);
        assert!(out.is_empty(), "5 s from the last send, not the first");
        t.expire(7000 * MS, &mut out);
        assert!(matches!(&out[..], [Outcome::Timeout { qname, .. }] if qname == "slow.example"));
        // a response after that matches nothing
        out.clear();
        t.message(c, Role::Client, &msg(1, true, 0, "slow.example"), 7001 * MS, &mut out);
        assert!(matches!(out[0], Outcome::Unmatched { .. }));
    }

    #[test]
    fn a_retransmission_is_measured_from_the_first_send() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = conn(40000, "10.96.0.10:53");
        t.message(c, Role::Client, &msg(9, false, 0, "a.example"), 0, &mut out);
        t.message(c, Role::Client, &msg(9, false, 0, "a.example"), 1000 * MS, &mut out);
        t.message(c, Role::Client, &msg(9, true, 0, "a.example"), 1004 * MS, &mut out);
        assert!(matches!(out[2], Outcome::Response { latency_ns, .. } if latency_ns == 1004 * MS));
    }

    #[test]
    fn the_same_question_to_another_resolver_is_a_retry_and_both_are_tracked() {
        let mut t = tracker();
        let mut out = Vec::new();
        let (a, b) = (conn(40000, "10.96.0.10:53"), conn(40001, "10.96.0.11:53"));
        t.message(a, Role::Client, &msg(1, false, 0, "x.example"), 0, &mut out);
        t.message(b, Role::Client, &msg(2, false, 0, "x.example"), 1000 * MS, &mut out);
        t.message(b, Role::Client, &msg(2, true, 0, "x.example"), 1001 * MS, &mut out);
        assert!(matches!(out[1], Outcome::Query { retry: true, .. }));
        assert!(matches!(out[2], Outcome::Response { latency_ns, .. } if latency_ns == MS));
        out.clear();
        t.expire(5000 * MS, &mut out);
        assert!(matches!(&out[..], [Outcome::Timeout { conn, .. }] if *conn == a), "the first resolver never answered");
        // once nothing waits, the same question is a fresh query
        out.clear();
        t.message(a, Role::Client, &msg(3, false, 0, "x.example"), 6000 * MS, &mut out);
        assert!(matches!(out[0], Outcome::Query { retry: false, .. }));
    }

    #[test]
    fn a_server_s_clients_asking_the_same_name_are_not_retries() {
        let mut t = tracker();
        let mut out = Vec::new();
        let server = |client: [u8; 4]| Conn {
            cgroup_id: 9,
            local: "10.0.0.53:53".parse().unwrap(),
            remote: SocketAddr::from((client, 40000)),
            transport: Transport::Udp,
        };
        t.message(server([10, 0, 0, 1]), Role::Server, &msg(1, false, 0, "svc.example"), 0, &mut out);
        t.message(server([10, 0, 0, 2]), Role::Server, &msg(1, false, 0, "svc.example"), 0, &mut out);
        assert!(out.iter().all(|o| matches!(o, Outcome::Query { retry: false, .. })), "{out:?}");
    }

    #[test]
    fn the_pending_table_is_bounded_and_counts_what_it_refuses() {
        let mut t = Tracker::new(Duration::from_secs(5), 2);
        let mut out = Vec::new();
        for id in 0..5 {
            t.message(conn(40000, "10.96.0.10:53"), Role::Client, &msg(id, false, 0, "a.example"), 0, &mut out);
        }
        assert_eq!((t.waiting(), t.pending_full, out.len()), (2, 3, 5), "every query is still counted");
    }

    #[test]
    fn an_id_reused_for_another_question_replaces_the_waiting_query() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = conn(40000, "10.96.0.10:53");
        t.message(c, Role::Client, &msg(4, false, 0, "a.example"), 0, &mut out);
        t.message(c, Role::Client, &msg(4, false, 0, "b.example"), 10 * MS, &mut out);
        t.message(c, Role::Client, &msg(4, true, 0, "b.example"), 12 * MS, &mut out);
        assert!(matches!(&out[1], Outcome::Query { qname, retry: false, .. } if qname == "b.example"), "{out:?}");
        assert!(
            matches!(&out[2], Outcome::Response { qname, latency_ns, .. } if qname == "b.example" && *latency_ns == 2 * MS),
            "{out:?}"
        );
        assert_eq!((t.waiting(), t.superseded), (0, 1));
        // the replaced question no longer waits: asking it again is no retry
        out.clear();
        t.message(c, Role::Client, &msg(5, false, 0, "a.example"), 20 * MS, &mut out);
        assert!(matches!(out[0], Outcome::Query { retry: false, .. }));
    }
}
