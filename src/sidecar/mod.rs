//! What both engines' sidecars share, below them: the replica probe at start-up, the
//! spool lock and the path's lease, and the retention loop.
//! Never names an engine (`replicate`, `postgres`): each engine passes its own hooks in.

pub mod holding;
pub mod probe;
pub mod retention;
