//! Streamed chunks read back: a WAL segment as recovery needs it, from its whole object
//! when there is one, else joined from the chunks the streaming sidecar stored for it
//! (`stream`), the part not streamed yet padded with zeros (recovery ends there). Reads
//! the replica only; never writes.

use crate::catalog::Generation;
use crate::error::{Error, Result};
use crate::format::pgwal;
use crate::pgformat::walname::WalFile;
use crate::storage::Replica;
use crate::storage::layout::{self, ChunkName, GenerationId};

/// The chunks that join without a gap from the segment's first byte, in order: at each
/// position the one reaching furthest (chunks of one segment hold the same bytes where
/// they overlap: WAL at a position never changes).
pub fn joining(chunks: &[ChunkName]) -> Vec<ChunkName> {
    let mut out = Vec::new();
    let mut at = 0u32;
    while let Some(c) = chunks
        .iter()
        .filter(|c| c.start <= at && c.end > at)
        .max_by_key(|c| c.end)
    {
        out.push(*c);
        at = c.end;
    }
    out
}

/// Chunks of segment `f` listed in `g`.
pub fn of_segment(g: &Generation, f: &WalFile) -> Vec<ChunkName> {
    g.chunks
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| c.segment == *f)
        .collect()
}

/// How far (bytes from its start) segment `f` can be joined from `g`'s chunks (0: not).
pub fn joined_upto(g: &Generation, f: &WalFile) -> u32 {
    joining(&of_segment(g, f)).last().map_or(0, |c| c.end)
}

/// A segment read for recovery.
pub struct Segment {
    pub raw: Vec<u8>,
    /// Bytes fetched from the store.
    pub stored: u64,
    /// Joined from this many chunks, holding WAL up to this offset (the rest zeros);
    /// `None` for the whole object.
    pub joined: Option<(usize, u32)>,
}

/// Segment `f` of `generation`: its whole object if `whole` (listed), else joined from
/// `chunks` (its listed chunks), padded with zeros to the segment size its first page
/// header gives. `None` when neither is there.
pub async fn read(
    replica: &Replica,
    generation: &GenerationId,
    f: WalFile,
    whole: bool,
    chunks: &[ChunkName],
) -> Result<Option<Segment>> {
    if whole {
        let key = layout::format_pg_wal(generation, &f);
        match crate::storage::get_retrying(replica, &key, None).await {
            Ok(obj) => {
                let stored = obj.len() as u64;
                let raw = tokio::task::spawn_blocking(move || pgwal::decode(&f, &obj))
                    .await
                    .expect("decode task")
                    .map_err(|r| Error::corrupt(&key, r))?;
                return Ok(Some(Segment {
                    raw,
                    stored,
                    joined: None,
                }));
            }
            // Deleted since the listing (retention keeps chunks until the whole exists,
            // so this is not expected): the chunks may still be there.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let path = joining(chunks);
    let Some(last) = path.last() else {
        return Ok(None);
    };
    let upto = last.end;
    let mut raw = Vec::with_capacity(upto as usize);
    let mut stored = 0;
    for c in &path {
        let key = layout::format_pg_chunk(generation, c);
        let obj = crate::storage::get_retrying(replica, &key, None).await?;
        stored += obj.len() as u64;
        let c2 = *c;
        let bytes = tokio::task::spawn_blocking(move || {
            pgwal::decode_chunk(&c2.segment, c2.start, c2.end, &obj)
        })
        .await
        .expect("decode task")
        .map_err(|r| Error::corrupt(&key, r))?;
        let from = (raw.len() as u32 - c.start) as usize;
        raw.extend_from_slice(&bytes[from..]);
    }
    let size = segment_size(&raw).ok_or_else(|| {
        Error::corrupt(
            layout::format_pg_chunk(generation, &path[0]),
            "no valid WAL segment size in the segment's first page header",
        )
    })?;
    if upto > size {
        return Err(Error::corrupt(
            layout::format_pg_chunk(generation, last),
            format!("reaches past the segment's end ({size} bytes)"),
        ));
    }
    raw.resize(size as usize, 0);
    Ok(Some(Segment {
        raw,
        stored,
        joined: Some((path.len(), upto)),
    }))
}

/// The segment size a segment's first (long) page header records.
pub fn segment_size(raw: &[u8]) -> Option<u32> {
    raw.get(32..36)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .filter(|s| s.is_power_of_two() && (1 << 20..=1 << 30).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(start: u32, end: u32) -> ChunkName {
        ChunkName {
            segment: WalFile::parse("000000010000000000000003").unwrap(),
            start,
            end,
        }
    }

    #[test]
    fn chunks_join_from_the_first_byte_and_stop_at_a_gap() {
        assert_eq!(
            joining(&[c(0, 10), c(10, 30), c(40, 50)]),
            [c(0, 10), c(10, 30)]
        );
        assert_eq!(joining(&[c(10, 30)]), [], "nothing from offset 0");
        // An overlap (a chunk stored twice over different ranges) joins through the
        // furthest-reaching one.
        assert_eq!(
            joining(&[c(0, 10), c(0, 20), c(5, 25), c(25, 26)]),
            [c(0, 20), c(5, 25), c(25, 26)]
        );
    }
}
