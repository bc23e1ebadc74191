//! How a [`Store`] reaches its backend: one `enum` variant per backend, not `dyn`, so every
//! operation stays a plain `async fn` whose future is `Send` when the backend's is.
//!
//! The `backends!` line below is the only place that lists the backends. From it come the
//! [`Store`] enum, the writer enum behind [`MessageWriter`], the locations a [`StoreConfig`] holds
//! and the URL schemes it accepts, [`Store::open`], and the `dispatch!` and `dispatch_writer!`
//! macros, which every operation goes through (the one-to-one operations are written by
//! `contract!` in `contract.rs`). A new backend is a folder implementing [`Backend`] (and its
//! concern traits) plus one line there.

use std::fmt;
use std::path::Path;

use crate::contract::{Accounts, Leases, Operators, Queue, QueueEnd};
use crate::{
    prepare_recipients, sqlite, ClockOffset, CommitInfo, Envelope, MessageId, NewRecipient, QueueFilter,
    QueuedMessage, StoreConfig, StoreError, StoreUrlError,
};

/// What a backend implements beyond the one-to-one operations of its concern traits.
pub(crate) trait Backend:
    Accounts + Leases + Queue + QueueEnd + Operators + Clone + fmt::Debug
{
    /// The scheme of this backend's store URLs: `sqlite` in `sqlite:/var/lib/odmr`.
    const SCHEME: &'static str;

    /// Where a store of this backend is: what its URL says after `SCHEME:`.
    type Location: Clone + fmt::Debug + PartialEq + Eq;

    /// Parses what follows `SCHEME:`; the error says what is wrong and what would do.
    fn parse_location(text: &str) -> Result<Self::Location, String>;

    /// Writes a location as [`Backend::parse_location`] takes it, leaving out any secret.
    fn show_location(location: &Self::Location, f: &mut fmt::Formatter<'_>) -> fmt::Result;

    /// The local directory the store keeps its files in, if it does.
    fn local_dir(location: &Self::Location) -> Option<&Path>;

    /// See [`Store::open`]. `clock` is added to the database's clock wherever the backend reads
    /// it (zero outside tests).
    async fn open(location: &Self::Location, clock: ClockOffset) -> Result<Self, StoreError>;

    /// A message being received.
    type Writer: BackendWriter + fmt::Debug;

    /// Starts receiving a message whose recipients are checked and whose domains are derived.
    /// Nothing needs to be written yet.
    fn receive(&self, envelope: Envelope, recipients: Vec<NewRecipient>) -> Self::Writer;

    /// See [`Store::close`].
    async fn close(&self);
}

/// A backend's side of [`MessageWriter`]; see its methods.
pub(crate) trait BackendWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError>;
    fn size(&self) -> u64;
    async fn commit(self, info: CommitInfo) -> Result<MessageId, StoreError>;
    async fn abort(self) -> Result<(), StoreError>;
}

/// Writes everything that has one arm or one variant per backend, from the list of backends.
/// `$d` is a `$`, passed in so that the macros written here can have variables of their own.
macro_rules! backends {
    ($d:tt $( $(#[$attr:meta])* $variant:ident($store:ty) ),+ $(,)?) => {
        /// The store, one variant per backend. Cheap to clone (clones share the connections).
        #[derive(Clone)]
        pub enum Store {
            $( $(#[$attr])* $variant($store), )+
        }

        /// A message being received, in the backend of the store receiving it.
        #[derive(Debug)]
        enum WriterImpl {
            $( $variant(<$store as Backend>::Writer), )+
        }

        /// `dispatch!(store, backend => expr)`: `expr` with `backend` bound to the backend of
        /// `store` (a `&Store`).
        macro_rules! dispatch {
            ($d store:expr, $d backend:ident => $d call:expr) => {
                match $d store {
                    $( Store::$variant($d backend) => $d call, )+
                }
            };
        }
        pub(crate) use dispatch;

        /// `dispatch_writer!(writer, w => expr)`, the same for a writer.
        macro_rules! dispatch_writer {
            ($d writer:expr, $d w:ident => $d call:expr) => {
                match $d writer {
                    $( WriterImpl::$variant($d w) => $d call, )+
                }
            };
        }

        /// Where a store is, for each backend (inside [`StoreConfig`]).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(crate) enum Location {
            $( $variant(<$store as Backend>::Location), )+
        }

        /// The schemes of the backends, in the order of the list.
        pub(crate) const SCHEMES: &[&str] = &[$( <$store as Backend>::SCHEME, )+];

        impl Location {
            /// `None` if no backend has this (lower-case) scheme.
            pub(crate) fn parse(scheme: &str, text: &str) -> Option<Result<Location, StoreUrlError>> {
                $(
                    if scheme == <$store as Backend>::SCHEME {
                        return Some(
                            <$store as Backend>::parse_location(text)
                                .map(Location::$variant)
                                .map_err(|problem| StoreUrlError::Invalid {
                                    scheme: <$store as Backend>::SCHEME,
                                    problem,
                                }),
                        );
                    }
                )+
                None
            }

            pub(crate) fn scheme(&self) -> &'static str {
                match self {
                    $( Location::$variant(_) => <$store as Backend>::SCHEME, )+
                }
            }

            pub(crate) fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $( Location::$variant(l) => <$store as Backend>::show_location(l, f), )+
                }
            }

            pub(crate) fn local_dir(&self) -> Option<&Path> {
                match self {
                    $( Location::$variant(l) => <$store as Backend>::local_dir(l), )+
                }
            }
        }

        impl Store {
            /// Opens the store `config` names, creating it if missing, brings its schema up to
            /// date, and removes messages whose receiving was abandoned (idle for
            /// [`STALE_RECEIVING`](crate::STALE_RECEIVING)).
            pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
                Ok(match config.location() {
                    $( Location::$variant(l) => Store::$variant(<$store as Backend>::open(l, config.clock()).await?), )+
                })
            }

            fn writer(&self, envelope: Envelope, recipients: Vec<NewRecipient>) -> WriterImpl {
                match self {
                    $( Store::$variant(b) => WriterImpl::$variant(b.receive(envelope, recipients)), )+
                }
            }
        }
    };
}

backends! {$
    /// SQLite: one file in a local directory, shared by the processes of one machine.
    Sqlite(sqlite::SqliteStore),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        dispatch!(self, backend => fmt::Debug::fmt(backend, f))
    }
}

impl Store {
    /// Clean shutdown: checkpoints what it can and closes the connections. Other clones of this
    /// store can no longer be used afterwards.
    pub async fn close(&self) {
        dispatch!(self, backend => backend.close().await)
    }

    /// Starts receiving a message. The body is then streamed through the returned writer, so
    /// memory stays bounded whatever the size of the message.
    pub async fn receive(&self, envelope: Envelope) -> Result<MessageWriter, StoreError> {
        let recipients = prepare_recipients(&envelope)?;
        Ok(MessageWriter {
            inner: self.writer(envelope, recipients),
        })
    }

    /// Every committed message, oldest first, with all its recipients.
    pub async fn queue_list(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.queue_find(&QueueFilter::default()).await
    }
}

/// Receives the body of one message: [`write`](MessageWriter::write) it in pieces of any size,
/// then [`commit`](MessageWriter::commit) or [`abort`](MessageWriter::abort). Dropping a writer
/// without either removes what was written (in the background).
#[derive(Debug)]
pub struct MessageWriter {
    inner: WriterImpl,
}

impl MessageWriter {
    /// Appends to the body. Buffers up to [`CHUNK_SIZE`](crate::CHUNK_SIZE), then stores a
    /// chunk; the message stays invisible to delivery and to [`Store::queue_list`] until
    /// committed.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        dispatch_writer!(&mut self.inner, w => w.write(data).await)
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        dispatch_writer!(&self.inner, w => w.size())
    }

    /// Queues the message. It is durable when this returns; its size is the total written.
    pub async fn commit(self, info: CommitInfo) -> Result<MessageId, StoreError> {
        dispatch_writer!(self.inner, w => w.commit(info).await)
    }

    /// Removes what was written.
    pub async fn abort(self) -> Result<(), StoreError> {
        dispatch_writer!(self.inner, w => w.abort().await)
    }
}
