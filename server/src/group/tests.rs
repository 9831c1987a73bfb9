//! Groups of one process wired to each other in memory: membership
//! changes, destroying a replica, and the vote a blank replica refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::prelude::{Message, MessageType};

use super::*;

/// The applied commands, in order.
#[derive(Default)]
struct Items(Vec<Bytes>);

#[derive(Clone, PartialEq, prost::Message)]
struct ItemsSnapshot {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    items: Vec<Bytes>,
}

impl StateMachine for Items {
    type Output = usize;

    fn apply(&mut self, _index: u64, command: Bytes) -> usize {
        self.0.push(command);
        self.0.len()
    }

    type Snapshot = ItemsSnapshot;

    fn snapshot(&self) -> ItemsSnapshot {
        ItemsSnapshot {
            items: self.0.clone(),
        }
    }

    fn restore(&mut self, snapshot: Bytes) -> Result<(), String> {
        let snap: ItemsSnapshot = prost::Message::decode(snapshot).map_err(|e| e.to_string())?;
        self.0 = snap.items;
        Ok(())
    }
}

/// Delivers messages between the groups of one test; records what each
/// node sent.
#[derive(Default)]
struct Net {
    groups: Mutex<HashMap<u64, Weak<Group<Items>>>>,
    sent: Mutex<Vec<Message>>,
}

impl Outbox for Net {
    fn send(&self, _group: &str, msg: Message) -> bool {
        self.sent.lock().unwrap().push(msg.clone());
        let to = self
            .groups
            .lock()
            .unwrap()
            .get(&msg.to)
            .and_then(Weak::upgrade);
        to.is_some_and(|g| g.step(msg))
    }

    fn send_snapshot(&self, group: &str, msg: Message, sent: SnapshotSent) {
        sent(self.send(group, msg));
    }
}

struct Cluster {
    net: Arc<Net>,
    groups: HashMap<u64, Arc<Group<Items>>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Nodes `ids`, the group formed on `voters` (others start blank).
    fn start(ids: &[u64], voters: &[u64]) -> Cluster {
        let net = Arc::new(Net::default());
        let mut groups = HashMap::new();
        let mut dirs = Vec::new();
        for &id in ids {
            let dir = tempfile::tempdir().unwrap();
            let config = GroupConfig {
                name: "g".into(),
                log_dir: dir.path().join("g"),
                node_id: id,
                tick: Duration::from_millis(10),
                election_ticks: 10,
                heartbeat_ticks: 2,
                uncommitted_bytes_max: 16 << 20,
                snapshot_log_bytes: 64 << 20,
                voters: if voters.contains(&id) {
                    voters.to_vec()
                } else {
                    Vec::new()
                },
                outbox: Some(net.clone() as Arc<dyn Outbox>),
                addresses: Default::default(),
                log_context: crate::log::LogContext::start(),
                metrics: Default::default(),
            };
            let group = Arc::new(Group::start(config, Items::default()).unwrap());
            net.groups
                .lock()
                .unwrap()
                .insert(id, Arc::downgrade(&group));
            groups.insert(id, group);
            dirs.push(dir);
        }
        Cluster {
            net,
            groups,
            _dirs: dirs,
        }
    }

    fn group(&self, id: u64) -> &Group<Items> {
        &self.groups[&id]
    }

    /// Waits (up to 10 s) until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn leader(&self) -> u64 {
        self.until("a leader", |c| {
            c.groups.values().any(|g| g.leader_term().is_some())
        })
        .await;
        let (&id, _) = self
            .groups
            .iter()
            .find(|(_, g)| g.leader_term().is_some())
            .unwrap();
        id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_replica_refuses_votes() {
    // Voters 2 and 3 never start: no leader, so no member ignores a vote
    // request for being in a leader's lease.
    let c = Cluster::start(&[1, 4], &[1, 2, 3]);
    let vote = |from: u64, to: u64| {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgRequestVote);
        m.from = from;
        m.to = to;
        m.term = 1000;
        m.log_term = 1000;
        m.index = 1000;
        m
    };
    let answered = |c: &Cluster, by: u64| {
        c.net.sent.lock().unwrap().iter().any(|m| {
            m.from == by
                && m.get_msg_type() == MessageType::MsgRequestVoteResponse
                && m.term == 1000
        })
    };
    // Node 4 holds nothing: a candidate it has never heard of gets no vote.
    assert!(c.group(4).status().is_blank());
    assert!(c.group(4).step(vote(9, 4)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!answered(&c, 4), "a blank replica voted");
    // A member answers the same request (the control).
    assert!(c.group(1).step(vote(9, 1)));
    c.until("a member to answer the vote", |c| answered(c, 1))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_destroyed_only_once_it_no_longer_votes() {
    let c = Cluster::start(&[1, 2, 3], &[1, 2, 3]);
    let leader = c.leader().await;
    for i in 0..10u8 {
        c.group(leader).propose(vec![i]).await.unwrap();
    }
    let gone = if leader == 3 { 2 } else { 3 };
    let stays: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != gone).collect();
    let other = *stays.iter().find(|&&n| n != leader).unwrap();

    // Voters are never destroyed, whatever they are told.
    assert!(!c.group(leader).destroy(None).await, "the leader");
    assert!(!c.group(other).destroy(None).await, "a voter");
    let stale = LeaderConf {
        conf_index: 1,
        members: stays.clone(),
    };
    assert!(
        !c.group(other).destroy(Some(stale)).await,
        "an older membership"
    );

    c.group(leader).change_member(gone, MemberChange::Remove);
    c.until("the leader to apply the removal", |c| {
        c.group(leader).status().voters == stays
    })
    .await;
    let applied = c.group(leader).status();
    assert!(applied.conf_index > 1, "{applied:?}");
    // The removed replica may not know: then only the leader's newer
    // membership lets it go.
    if c.group(gone).status().voters.contains(&gone) {
        let view = LeaderConf {
            conf_index: applied.conf_index,
            members: applied.voters.clone(),
        };
        assert!(c.group(gone).destroy(Some(view)).await);
    } else {
        assert!(c.group(gone).destroy(None).await);
    }
    let after = c.group(gone).status();
    assert!(after.is_blank(), "{after:?}");
    assert_eq!(after.applied, 0);
    assert!(
        !c.group(gone).destroy(None).await,
        "nothing left to destroy"
    );

    // The group goes on with two voters; adding the node back as a learner
    // sends the blank replica a snapshot, and it catches up.
    c.group(leader).propose(vec![99]).await.unwrap();
    c.group(leader)
        .change_member(gone, MemberChange::AddLearner);
    c.until("the node to be a learner again", |c| {
        c.group(gone).status().learners == vec![gone]
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut items = 0;
    while items < 11 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        items = c
            .group(gone)
            .query(|s: &mut Items| s.0.len())
            .await
            .unwrap();
    }
    assert_eq!(items, 11, "every entry, from the snapshot and the log");
}
