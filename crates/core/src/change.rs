//! "This user's data changed": how ingestion, the webhook and link flows tell
//! the segment engine to re-evaluate someone, without depending on it.

use crate::ids::{LineUserId, MemberId};

/// A user whose inputs changed, named by whichever key the change carried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserRef {
    Member(MemberId),
    LineUser(LineUserId),
}

/// Receives changes after they are durable. Must not block: implementations
/// queue the work (e.g. into a channel) and return.
pub trait ChangeListener: Send + Sync + 'static {
    fn users_changed(&self, users: &[UserRef]);
}

/// For processes (and tests) with no segment engine running.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoChangeListener;

impl ChangeListener for NoChangeListener {
    fn users_changed(&self, _users: &[UserRef]) {}
}
