//! Sending a canvas from Rust, as Python's `canvas.apply_async()`: every
//! task of it gets its id first (so that the caller can wait on the
//! chain's last task, a group's members or a chord's body before any of
//! them runs), then it is applied as a worker applies a follow-up
//! ([`crate::canvas::apply`]): a chord's size is set in the result
//! backend, then the messages are sent.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{AsyncResult, Client, ClientBroker};
use crate::canvas::{apply, Caller};
use crate::error::{BrokerError, ResultError};
use crate::protocol::Signature;

/// What waiting on an applied canvas gives.
#[derive(Debug, Clone)]
pub enum CanvasResult {
    /// A task, a chain (its last task) or a chord (its body).
    One(AsyncResult),
    /// A group: its members' results, in order.
    Group(GroupResult),
}

impl CanvasResult {
    /// The id to wait on: the task's, or the group's.
    pub fn id(&self) -> &str {
        match self {
            CanvasResult::One(r) => r.id(),
            CanvasResult::Group(g) => g.id(),
        }
    }

    /// Waits up to `timeout` for the result: the task's value, or the
    /// list of the group's.
    ///
    /// # Errors
    ///
    /// As [`AsyncResult::get`]; for a group, the first member's error.
    pub async fn get(&self, timeout: Duration) -> Result<Value, ResultError> {
        match self {
            CanvasResult::One(r) => r.get(timeout).await,
            CanvasResult::Group(g) => g.get(timeout).await.map(Value::Array),
        }
    }
}

/// The results of a group's members, as Celery's `GroupResult`.
#[derive(Debug, Clone)]
pub struct GroupResult {
    id: String,
    results: Vec<CanvasResult>,
}

impl GroupResult {
    /// The group id (each member's result is stored with it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' results, in order.
    pub fn results(&self) -> &[CanvasResult] {
        &self.results
    }

    /// Waits up to `timeout` in all for every member, as
    /// `GroupResult.get()`: their values in order.
    ///
    /// # Errors
    ///
    /// The first member's error, in order ([`ResultError::Timeout`] when
    /// the time is up).
    pub async fn get(&self, timeout: Duration) -> Result<Vec<Value>, ResultError> {
        // No deadline when `timeout` is beyond what the clock can add.
        let deadline = Instant::now().checked_add(timeout);
        let mut out = Vec::with_capacity(self.results.len());
        for r in &self.results {
            let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            out.push(Box::pin(r.get(left)).await?);
        }
        Ok(out)
    }
}

/// Where a frozen canvas's result is.
enum Frozen {
    One(String),
    Group(String, Vec<Frozen>),
}

/// The `task_id` option of `sig`, set to a new id when it has none; with
/// `reply_to` (rpc:// results), the reply queue too.
fn id_of(sig: &mut Signature, reply_to: Option<&str>) -> String {
    if let Some(r) = reply_to {
        *sig = std::mem::take(sig).set("reply_to", Value::String(r.to_owned()));
    }
    if let Some(id) = sig
        .options()
        .and_then(|o| o.get("task_id"))
        .and_then(Value::as_str)
    {
        return id.to_owned();
    }
    let id = crate::uuid::uuid4();
    *sig = std::mem::take(sig).set("task_id", Value::String(id.clone()));
    id
}

/// The signatures held at `key` of `kwargs` (a list, or a group's tasks),
/// frozen in place.
fn freeze_list(v: Option<&mut Value>, reply_to: Option<&str>) -> Result<Vec<Frozen>, BrokerError> {
    let items = match v {
        Some(Value::Array(items)) => items,
        Some(Value::Object(group)) => {
            match group.get_mut("kwargs").and_then(|k| k.get_mut("tasks")) {
                Some(Value::Array(items)) => items,
                _ => return Err(BrokerError::Canvas("a group without tasks".to_owned())),
            }
        }
        _ => return Err(BrokerError::Canvas("a canvas without tasks".to_owned())),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter_mut() {
        let Value::Object(m) = item else {
            return Err(BrokerError::Canvas(format!("not a signature: {item}")));
        };
        let mut s = Signature(std::mem::take(m));
        let frozen = freeze(&mut s, reply_to);
        *m = s.0;
        out.push(frozen?);
    }
    Ok(out)
}

/// Gives every task of `sig` its id, as Celery's `freeze`; where its
/// result will be.
fn freeze(sig: &mut Signature, reply_to: Option<&str>) -> Result<Frozen, BrokerError> {
    match sig.subtask_type().map(str::to_owned).as_deref() {
        None => Ok(Frozen::One(id_of(sig, reply_to))),
        Some("chain") => {
            let tasks = sig.0.get_mut("kwargs").and_then(|k| k.get_mut("tasks"));
            freeze_list(tasks, reply_to)?
                .pop()
                .ok_or_else(|| BrokerError::Canvas("an empty chain".to_owned()))
        }
        Some("group") => {
            let id = id_of(sig, None);
            let tasks = sig.0.get_mut("kwargs").and_then(|k| k.get_mut("tasks"));
            Ok(Frozen::Group(id, freeze_list(tasks, reply_to)?))
        }
        Some("chord") => {
            // The chord's id is its header's group id.
            id_of(sig, None);
            let kwargs = sig.0.get_mut("kwargs");
            let Some(Value::Object(kwargs)) = kwargs else {
                return Err(BrokerError::Canvas(
                    "a chord without header and body".to_owned(),
                ));
            };
            freeze_list(kwargs.get_mut("header"), reply_to)?;
            let Some(Value::Object(body)) = kwargs.get_mut("body") else {
                return Err(BrokerError::Canvas("a chord without a body".to_owned()));
            };
            let mut b = Signature(std::mem::take(body));
            let frozen = freeze(&mut b, reply_to);
            *body = b.0;
            frozen
        }
        Some(other) => Err(BrokerError::Canvas(format!(
            "greenpool cannot apply a signature of subtask_type {other:?}"
        ))),
    }
}

impl Client {
    /// Sends `canvas` (a task, [`Signature::chain`], [`Signature::group`]
    /// or [`Signature::chord`], nested as Celery allows), as Python's
    /// `apply_async()`; the result to wait on.
    ///
    /// ```no_run
    /// use greenpool_celery::{Client, Signature};
    /// use serde_json::json;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Client::connect("redis://127.0.0.1:6379/0", Some("redis://127.0.0.1:6379/0")).await?;
    /// let add = |x: i64| Signature::new("greenpool.add", vec![json!(x), json!(x)], Default::default());
    /// let sum = Signature::new("greenpool.echo", vec![], Default::default());
    /// let r = client.apply(&Signature::chord((0..10).map(add).collect(), sum)).await?;
    /// println!("{}", r.get(std::time::Duration::from_secs(10)).await?);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`BrokerError::Canvas`] for a canvas that cannot be sent (a chord
    /// without a Redis result backend, an unknown form, unusable options;
    /// nothing is sent then), or the broker's error.
    pub async fn apply(&self, canvas: &Signature) -> Result<CanvasResult, BrokerError> {
        let mut sig = canvas.clone();
        let frozen = freeze(&mut sig, self.reply_to())?;
        let caller = Caller {
            parent: None,
            priority: None,
            joins_chords: self.joins_chords(),
        };
        let applied = apply(&sig, None, Vec::new(), caller)
            .map_err(|e| BrokerError::Canvas(e.to_string()))?;
        for (group, size) in &applied.chord_sizes {
            self.set_chord_size(group, *size).await?;
        }
        for p in applied.publish {
            self.publish(p).await?;
        }
        Ok(self.results(frozen))
    }

    fn results(&self, f: Frozen) -> CanvasResult {
        match f {
            Frozen::One(id) => CanvasResult::One(self.result(&id)),
            Frozen::Group(id, members) => CanvasResult::Group(GroupResult {
                id,
                results: members.into_iter().map(|m| self.results(m)).collect(),
            }),
        }
    }

    /// The rpc:// reply queue, when results come that way.
    fn reply_to(&self) -> Option<&str> {
        match &self.broker {
            #[cfg(feature = "amqp")]
            ClientBroker::Amqp(a) => a.reply_to(),
            #[cfg(feature = "redis")]
            ClientBroker::Redis(_) => None,
        }
    }

    /// Whether results go to a Redis backend, which joins chords.
    fn joins_chords(&self) -> bool {
        #[cfg(feature = "redis")]
        if self.backend.is_some() {
            return true;
        }
        false
    }

    /// Sets a chord's size in the Redis backend, as Celery's client does.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    async fn set_chord_size(&self, group: &str, size: usize) -> Result<(), BrokerError> {
        #[cfg(feature = "redis")]
        if let Some(link) = &self.backend {
            // As Celery's client: a reapplied frozen chord is a new run.
            let keys = crate::canvas::chord::JoinKeys::of(group);
            let mut set = redis::pipe();
            set.cmd("DEL").arg(&keys.claim).ignore();
            set.cmd("SET")
                .arg(&keys.size)
                .arg(size)
                .arg("EX")
                .arg(86_400)
                .ignore();
            let _: () = link
                .call_until_done("setting a chord's size", |mut conn| {
                    let set = &set;
                    async move { set.query_async(&mut conn).await }
                })
                .await?
                .map_err(BrokerError::Redis)?;
            return Ok(());
        }
        Err(BrokerError::Canvas(
            "a chord needs a Redis result backend".to_owned(),
        ))
    }

    /// Sends one message of a canvas.
    async fn publish(&self, p: crate::broker::Publish) -> Result<(), BrokerError> {
        match &self.broker {
            #[cfg(feature = "redis")]
            ClientBroker::Redis(link) => {
                let mut p = p;
                let payload = crate::broker::publish::kombu_json(&mut p)
                    .map_err(|e| BrokerError::Canvas(e.to_string()))?;
                let key = link
                    .settings()
                    .keys
                    .queue_key(&p.routing_key, p.priority.unwrap_or(0));
                super::lpush(link, &key, payload).await
            }
            #[cfg(feature = "amqp")]
            ClientBroker::Amqp(amqp) => {
                let out = crate::broker::amqp::amqp_from_publish(&p)
                    .map_err(|e| BrokerError::Canvas(e.to_string()))?;
                amqp.publish(&p.routing_key, out).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn add(x: i64) -> Signature {
        Signature::new("t.add", vec![json!(x)], Map::new())
    }

    #[test]
    fn freezing_gives_every_task_an_id_and_says_where_the_result_is() {
        let mut chain = Signature::chain(vec![
            add(1),
            Signature::chord(vec![add(2), add(3)], add(4).set("task_id", json!("body"))),
        ]);
        let Ok(Frozen::One(id)) = freeze(&mut chain, Some("rq")) else {
            panic!("a chain ending in a chord waits on the body");
        };
        assert_eq!(id, "body");
        let tasks = chain.0["kwargs"]["tasks"].as_array().unwrap();
        let first = &tasks[0]["options"];
        assert!(first["task_id"].is_string());
        assert_eq!(first["reply_to"], json!("rq"));
        let chord = &tasks[1];
        assert!(
            chord["options"]["task_id"].is_string(),
            "the chord's group id"
        );
        for part in chord["kwargs"]["header"].as_array().unwrap() {
            assert!(part["options"]["task_id"].is_string());
        }
        let mut group = Signature::group(vec![add(1), add(2)]);
        let Ok(Frozen::Group(gid, members)) = freeze(&mut group, None) else {
            panic!("a group waits on its members");
        };
        assert_eq!(group.0["options"]["task_id"], json!(gid));
        assert_eq!(members.len(), 2);
        let mut odd = Signature::new("x", vec![], Map::new());
        odd.0.insert("subtask_type".into(), json!("weird"));
        assert!(matches!(
            freeze(&mut odd, None),
            Err(BrokerError::Canvas(_))
        ));
        assert!(freeze(&mut Signature::chain(vec![]), None).is_err());
    }
}
