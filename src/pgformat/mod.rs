//! PostgreSQL's on-disk formats, as far as walship reads them: WAL file names, WAL
//! records (the last transaction's time), `pg_control`'s prefix, timeline history files
//! and LSNs. The floor under `postgres/`, `storage/layout.rs` and retention: pure, it
//! imports nothing of walship but `error`, and never touches a store or a server.

pub mod control;
pub mod history;
pub mod lsn;
pub mod walname;
pub mod walrecords;
