//! Lifecycle signals: [`Signal`] and the pool's four.
//!
//! A signal is a process-wide list of receivers. [`Signal::send`] calls each
//! receiver that matches the sender, in the order they connected, on the
//! sending task: receivers must be cheap and must not block. Receivers may
//! connect and disconnect from inside a receiver; such changes apply to the
//! next send.
//!
//! The pool sends [`POOL_STARTED`] from `start`, [`POOL_PRE_SHUTDOWN`] and
//! [`POOL_POST_SHUTDOWN`] around the wait in `stop`, and [`APPLY`] for every
//! job it admits, before the job is spawned. Each is sent with
//! `send_robust`, so a panicking receiver never disturbs the pool.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::job_id::JobId;
use crate::outcome::PanicInfo;
use crate::pool::PoolId;
use crate::unwind;

/// A receiver: called with the sender's id and the signal's arguments.
///
/// Receivers may run concurrently with each other when several tasks send at
/// once. A panicking receiver is caught: [`Signal::send`] stops there and
/// returns the panic, [`Signal::send_robust`] records it and goes on.
pub type Receiver<A, R> = Arc<dyn Fn(PoolId, &A) -> R + Send + Sync>;

/// Names one connection, for [`Signal::disconnect`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReceiverKey(KeyKind);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyKind {
    Uid(String),
    Serial(u64),
}

/// How to connect a receiver: to one sender only, and under a dispatch uid.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    sender: Option<PoolId>,
    dispatch_uid: Option<String>,
}

impl ConnectOptions {
    /// Options that receive from every sender with no dispatch uid.
    pub fn new() -> Self {
        Self::default()
    }

    /// Receive only what this sender sends.
    pub fn sender(mut self, sender: PoolId) -> Self {
        self.sender = Some(sender);
        self
    }

    /// Connect at most once under this uid: a second connect with the same
    /// uid keeps the first receiver.
    pub fn dispatch_uid(mut self, uid: impl Into<String>) -> Self {
        self.dispatch_uid = Some(uid.into());
        self
    }
}

struct Connection<A, R> {
    key: ReceiverKey,
    sender: Option<PoolId>,
    receiver: Receiver<A, R>,
}

impl<A, R> Clone for Connection<A, R> {
    fn clone(&self) -> Self {
        Connection {
            key: self.key.clone(),
            sender: self.sender,
            receiver: Arc::clone(&self.receiver),
        }
    }
}

/// A process-wide signal with arguments `A` whose receivers return `R`.
///
/// # Examples
///
/// ```
/// use greenpool::signals::{ConnectOptions, Signal};
///
/// static READY: Signal<u32, u32> = Signal::new("ready");
///
/// let key = READY.connect(|_sender, n| n * 2);
/// READY.connect_with(ConnectOptions::new().dispatch_uid("once"), |_, n| n + 1);
/// READY.connect_with(ConnectOptions::new().dispatch_uid("once"), |_, n| n + 100);
/// let replies = READY.send(greenpool::PoolId::ANONYMOUS, &20).unwrap();
/// assert_eq!(replies.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), vec![40, 21]);
/// assert!(READY.disconnect(&key));
/// ```
pub struct Signal<A: 'static, R: 'static = ()> {
    name: &'static str,
    /// Connected receivers, in connection order.
    receivers: RwLock<Vec<Connection<A, R>>>,
    /// True while any receiver is connected: lets senders skip the lock.
    any: AtomicBool,
    /// Source of serial keys.
    serial: AtomicU64,
}

impl<A: 'static, R: 'static> Signal<A, R> {
    /// A signal with no receivers.
    pub const fn new(name: &'static str) -> Self {
        Signal {
            name,
            receivers: RwLock::new(Vec::new()),
            any: AtomicBool::new(false),
            serial: AtomicU64::new(0),
        }
    }

    /// The signal's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Connects a receiver for every sender.
    pub fn connect(
        &self,
        receiver: impl Fn(PoolId, &A) -> R + Send + Sync + 'static,
    ) -> ReceiverKey {
        self.connect_with(ConnectOptions::new(), receiver)
    }

    /// Connects a receiver with options; with a dispatch uid that is already
    /// connected, nothing is added and the existing key is returned.
    pub fn connect_with(
        &self,
        options: ConnectOptions,
        receiver: impl Fn(PoolId, &A) -> R + Send + Sync + 'static,
    ) -> ReceiverKey {
        let mut list = self
            .receivers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let key = match options.dispatch_uid {
            Some(uid) => {
                let key = ReceiverKey(KeyKind::Uid(uid));
                if list.iter().any(|c| c.key == key) {
                    return key;
                }
                key
            }
            None => ReceiverKey(KeyKind::Serial(self.serial.fetch_add(1, Ordering::Relaxed))),
        };
        list.push(Connection {
            key: key.clone(),
            sender: options.sender,
            receiver: Arc::new(receiver),
        });
        // Release pairs with the Acquire in `snapshot`: a sender that sees
        // `any` also sees the list it guards (the lock orders the rest).
        self.any.store(true, Ordering::Release);
        key
    }

    /// Disconnects a receiver; false if it was not connected.
    pub fn disconnect(&self, key: &ReceiverKey) -> bool {
        let mut list = self
            .receivers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = list.len();
        list.retain(|c| &c.key != key);
        self.any.store(!list.is_empty(), Ordering::Release);
        list.len() != before
    }

    /// Disconnects the receiver connected under a dispatch uid.
    pub fn disconnect_uid(&self, uid: &str) -> bool {
        self.disconnect(&ReceiverKey(KeyKind::Uid(uid.to_owned())))
    }

    /// How many receivers are connected.
    pub fn len(&self) -> usize {
        self.receivers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no receiver is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The receivers for `sender`, copied so that none runs under the lock.
    fn snapshot(&self, sender: PoolId) -> Vec<Connection<A, R>> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let list = self
            .receivers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        list.iter()
            .filter(|c| c.sender.is_none_or(|s| s == sender))
            .cloned()
            .collect()
    }

    /// Calls every matching receiver in order and returns their replies.
    ///
    /// # Errors
    ///
    /// A receiver that panics stops the send: the receivers after it are
    /// not called and the panic is returned with the receiver's key.
    pub fn send(
        &self,
        sender: PoolId,
        args: &A,
    ) -> Result<Vec<(ReceiverKey, R)>, (ReceiverKey, PanicInfo)> {
        let mut replies = Vec::new();
        for c in self.snapshot(sender) {
            match unwind::call(|| (c.receiver)(sender, args)) {
                Ok(r) => replies.push((c.key, r)),
                Err(p) => return Err((c.key, p)),
            }
        }
        Ok(replies)
    }

    /// Calls every matching receiver in order, whatever they do; a receiver
    /// that panics has its panic in its place among the replies.
    pub fn send_robust(
        &self,
        sender: PoolId,
        args: &A,
    ) -> Vec<(ReceiverKey, Result<R, PanicInfo>)> {
        self.snapshot(sender)
            .into_iter()
            .map(|c| {
                let reply = unwind::call(|| (c.receiver)(sender, args));
                if let Err(p) = &reply {
                    tracing::error!(signal = self.name, panic = %p, "signal receiver panicked");
                }
                (c.key, reply)
            })
            .collect()
    }

    /// True if a receiver may be connected (cheap; no lock): a sender can
    /// skip building arguments nobody reads. A receiver connected after
    /// this returned false does not see that send.
    ///
    /// ```
    /// use greenpool::signals::Signal;
    ///
    /// static PING: Signal<u32> = Signal::new("ping");
    /// assert!(!PING.has_receivers());
    /// PING.connect(|_sender, n: &u32| assert!(*n > 0));
    /// assert!(PING.has_receivers());
    /// ```
    #[inline]
    pub fn has_receivers(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }
}

impl<A, R> fmt::Debug for Signal<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Signal");
        d.field("name", &self.name);
        match self.receivers.try_read() {
            Ok(list) => d.field("receivers", &list.len()),
            Err(_) => d.field("receivers", &"<locked>"),
        };
        d.finish()
    }
}

/// Arguments of [`APPLY`]: the job being admitted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApplyArgs {
    /// The job's id.
    pub job_id: JobId,
    /// The job's name, if it has one.
    pub name: Option<String>,
    /// A printable form of the job's arguments, if given.
    pub args: Option<String>,
}

/// Sent by `start` once the pool runs (Celery's `eventlet_pool_started`).
pub static POOL_STARTED: Signal<()> = Signal::new("pool_started");
/// Sent by `stop` before it waits for the jobs (`eventlet_pool_preshutdown`).
pub static POOL_PRE_SHUTDOWN: Signal<()> = Signal::new("pool_pre_shutdown");
/// Sent by `stop` after every job has ended (`eventlet_pool_postshutdown`).
pub static POOL_POST_SHUTDOWN: Signal<()> = Signal::new("pool_post_shutdown");
/// Sent for every job the pool admits, before it is spawned
/// (`eventlet_pool_apply`).
pub static APPLY: Signal<ApplyArgs> = Signal::new("pool_apply");
