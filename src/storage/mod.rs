//! Object storage: object names (layout), where credentials come from, and the typed
//! replica client over object_store. Never imports sqlite.

pub mod credentials;
pub mod layout;
pub mod lease;
pub mod replica;
pub mod retry;

pub use replica::{Listed, PutOutcome, Replica, Swap};
pub use retry::get_retrying;
