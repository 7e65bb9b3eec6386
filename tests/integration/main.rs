//! The integration suite: one binary, real processes (walship, a Python writer standing in
//! for the application, SeaweedFS), real files. Run it through tests/run.sh, which starts
//! the S3 server; without it the S3 variants skip, except under CI=true where they fail.

mod bad_input;
mod capture;
mod corpus;
mod examples;
mod fuzzing;
mod init_mode;
mod large;
mod lease;
mod litestream;
mod litestream_backups;
mod pitr;
mod postgres;
mod regression;
mod restore_rule;
mod retention;
mod several_replicas;
mod snapshots;
mod sqlite_core;
mod support;
