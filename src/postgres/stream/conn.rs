//! The replication connection: a walsender session spoken over `postgres-protocol`'s
//! codecs (startup with `replication=true`; cleartext, md5 and SCRAM-SHA-256 passwords;
//! simple queries; the CopyBoth stream of START_REPLICATION). Owns the socket; knows
//! nothing of chunks or the store.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type Rd = Box<dyn AsyncRead + Unpin + Send>;
type Wr = Box<dyn AsyncWrite + Unpin + Send>;

/// Why the session failed: the server's own error (with its SQLSTATE) or the connection.
#[derive(Debug)]
pub struct PgError {
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(c) => write!(f, "{} (SQLSTATE {c})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn io(e: std::io::Error) -> PgError {
    PgError {
        code: None,
        message: e.to_string(),
    }
}

fn plain(m: impl Into<String>) -> PgError {
    PgError {
        code: None,
        message: m.into(),
    }
}

fn server_error(fields: postgres_protocol::message::backend::ErrorFields<'_>) -> PgError {
    let mut fields = fields;
    let (mut code, mut message) = (None, String::new());
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = Some(String::from_utf8_lossy(f.value_bytes()).into_owned()),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    PgError { code, message }
}

/// A session before START_REPLICATION: it answers simple queries.
pub struct Conn {
    reader: Reader,
    wr: Wr,
}

/// One message read off the socket: the codec's, or a CopyBothResponse (`W`), which the
/// codec does not know.
enum Frame {
    Msg(Message),
    CopyBoth,
}

/// A query's rows, each column as text (`None`: NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// What the CopyBoth stream carries from the server.
pub enum Copied {
    Data(Bytes),
    /// The server ended the stream (the timeline ended: a promotion).
    Done,
}

/// The receiving half of a session.
pub struct Reader {
    rd: Rd,
    buf: BytesMut,
}

/// The sending half once streaming: standby status updates.
pub struct Writer {
    wr: Wr,
}

impl Reader {
    async fn frame(&mut self) -> Result<Frame, PgError> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if !(4..=1 << 30).contains(&len) {
                    return Err(plain(format!("a message of {len} bytes: not PostgreSQL")));
                }
                if self.buf.len() > len {
                    if self.buf[0] == b'W' {
                        self.buf.advance(1 + len);
                        return Ok(Frame::CopyBoth);
                    }
                    return match Message::parse(&mut self.buf).map_err(io)? {
                        Some(m) => Ok(Frame::Msg(m)),
                        None => Err(plain("a truncated message")),
                    };
                }
                self.buf.reserve(1 + len - self.buf.len());
            }
            if self.rd.read_buf(&mut self.buf).await.map_err(io)? == 0 {
                return Err(plain("the server closed the connection"));
            }
        }
    }

    /// The next CopyData's bytes, or the end of the stream; a server error ends it.
    pub async fn next(&mut self) -> Result<Copied, PgError> {
        loop {
            match self.frame().await? {
                Frame::Msg(Message::CopyData(d)) => return Ok(Copied::Data(d.into_bytes())),
                Frame::Msg(Message::CopyDone) => return Ok(Copied::Done),
                Frame::Msg(Message::ErrorResponse(e)) => return Err(server_error(e.fields())),
                // Notices and parameter changes may come at any time.
                Frame::Msg(_) | Frame::CopyBoth => {}
            }
        }
    }
}

async fn connect_socket(
    host: &tokio_postgres::config::Host,
    port: u16,
) -> std::io::Result<(Rd, Wr)> {
    Ok(match host {
        tokio_postgres::config::Host::Tcp(h) => {
            let s = tokio::net::TcpStream::connect((h.as_str(), port)).await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
        tokio_postgres::config::Host::Unix(dir) => {
            let s = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
    })
}

impl Conn {
    /// Open a replication session to the first host of `cfg` that answers.
    pub async fn connect(cfg: &tokio_postgres::Config) -> Result<Conn, PgError> {
        if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(plain(
                "sslmode=require: the streaming client does not speak TLS yet; use a \
                 connection inside the pod or cluster network (sslmode=disable or prefer)",
            ));
        }
        let ports = cfg.get_ports();
        let mut last = plain("the connection names no host");
        for (i, host) in cfg.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match connect_socket(host, port).await {
                Ok((rd, wr)) => {
                    let mut c = Conn {
                        reader: Reader {
                            rd,
                            buf: BytesMut::with_capacity(64 * 1024),
                        },
                        wr,
                    };
                    c.startup(cfg).await?;
                    return Ok(c);
                }
                Err(e) => last = plain(format!("{host:?} port {port}: {e}")),
            }
        }
        Err(last)
    }

    async fn send(&mut self, b: &BytesMut) -> Result<(), PgError> {
        self.wr.write_all(b).await.map_err(io)?;
        self.wr.flush().await.map_err(io)
    }

    async fn startup(&mut self, cfg: &tokio_postgres::Config) -> Result<(), PgError> {
        let user = cfg.get_user().unwrap_or("postgres");
        let app = cfg.get_application_name().unwrap_or("walship");
        let mut b = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user),
                ("replication", "true"),
                ("application_name", app),
            ],
            &mut b,
        )
        .map_err(io)?;
        self.send(&b).await?;
        let password = || {
            cfg.get_password().ok_or_else(|| {
                plain(format!(
                    "the server asks user {user:?} for a password and none is set (the \
                     connection's password, PGPASSWORD or PGPASSFILE)"
                ))
            })
        };
        loop {
            let Frame::Msg(m) = self.reader.frame().await? else {
                return Err(plain("a CopyBothResponse during start-up"));
            };
            let mut b = BytesMut::new();
            match m {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut b).map_err(io)?;
                    self.send(&b).await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let h = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password()?,
                        body.salt(),
                    );
                    frontend::password_message(h.as_bytes(), &mut b).map_err(io)?;
                    self.send(&b).await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let mut scram = false;
                    while let Some(m) = mechs.next().map_err(io)? {
                        scram |= m == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(plain("the server offers no SASL mechanism walship speaks"));
                    }
                    self.scram(password()?).await?;
                }
                Message::ErrorResponse(e) => return Err(server_error(e.fields())),
                Message::ReadyForQuery(_) => return Ok(()),
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential => {
                    return Err(plain(
                        "the server asks for an authentication method walship does not \
                         speak (use scram-sha-256, md5, password or trust in pg_hba.conf)",
                    ));
                }
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    async fn scram(&mut self, password: &[u8]) -> Result<(), PgError> {
        let mut s = ScramSha256::new(password, ChannelBinding::unsupported());
        let mut b = BytesMut::new();
        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut b).map_err(io)?;
        self.send(&b).await?;
        loop {
            let Frame::Msg(m) = self.reader.frame().await? else {
                return Err(plain("a CopyBothResponse during authentication"));
            };
            match m {
                Message::AuthenticationSaslContinue(body) => {
                    s.update(body.data()).map_err(io)?;
                    let mut b = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut b).map_err(io)?;
                    self.send(&b).await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    return s.finish(body.data()).map_err(io);
                }
                Message::ErrorResponse(e) => return Err(server_error(e.fields())),
                _ => return Err(plain("an unexpected message during SCRAM authentication")),
            }
        }
    }

    /// Run one simple query; its rows, each column as text.
    pub async fn query(&mut self, sql: &str) -> Result<Rows, PgError> {
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b).map_err(io)?;
        self.send(&b).await?;
        let (mut rows, mut failed) = (Vec::new(), None);
        loop {
            match self.reader.frame().await? {
                Frame::Msg(Message::DataRow(r)) => {
                    let buf = r.buffer();
                    let mut row = Vec::new();
                    let mut ranges = r.ranges();
                    while let Some(range) = ranges.next().map_err(io)? {
                        row.push(range.map(|rg| String::from_utf8_lossy(&buf[rg]).into_owned()));
                    }
                    rows.push(row);
                }
                Frame::Msg(Message::ErrorResponse(e)) => failed = Some(server_error(e.fields())),
                Frame::Msg(Message::ReadyForQuery(_)) => {
                    return failed.map_or(Ok(rows), Err);
                }
                Frame::CopyBoth => return Err(plain(format!("{sql}: began a stream"))),
                Frame::Msg(_) => {}
            }
        }
    }

    /// Send START_REPLICATION (`sql`) and wait for the stream to begin.
    pub async fn start_streaming(mut self, sql: &str) -> Result<(Reader, Writer), PgError> {
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b).map_err(io)?;
        self.send(&b).await?;
        loop {
            match self.reader.frame().await? {
                Frame::CopyBoth => return Ok((self.reader, Writer { wr: self.wr })),
                Frame::Msg(Message::ErrorResponse(e)) => return Err(server_error(e.fields())),
                Frame::Msg(_) => {}
            }
        }
    }
}

/// Microseconds since 2000-01-01, the replication protocol's clock.
fn pg_now_us() -> i64 {
    (crate::clock::now_ms() as i64 - 946_684_800_000) * 1000
}

impl Writer {
    /// A standby status update: `write` received, `flush` stored (the slot may release
    /// WAL before it), apply none (walship replays nothing).
    pub async fn status(&mut self, write: u64, flush: u64) -> Result<(), PgError> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(write);
        body.put_u64(flush);
        body.put_u64(0);
        body.put_i64(pg_now_us());
        body.put_u8(0);
        let mut b = BytesMut::new();
        frontend::CopyData::new(body.freeze())
            .map_err(io)?
            .write(&mut b);
        self.wr.write_all(&b).await.map_err(io)?;
        self.wr.flush().await.map_err(io)
    }
}

/// A message of the stream, from a CopyData's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Streamed {
    /// WAL from `start` (XLogData).
    Wal { start: u64, data: Bytes },
    /// The server's keepalive; `reply` asks for a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

/// Parse one CopyData of the replication stream.
pub fn parse(mut d: Bytes) -> Result<Streamed, PgError> {
    let bad = || plain("a malformed replication message");
    match d.first() {
        Some(b'w') if d.len() >= 25 => {
            d.advance(1);
            let start = d.get_u64();
            d.advance(16); // the server's WAL end and clock
            Ok(Streamed::Wal { start, data: d })
        }
        Some(b'k') if d.len() >= 18 => {
            d.advance(1);
            let wal_end = d.get_u64();
            d.advance(8);
            Ok(Streamed::Keepalive {
                wal_end,
                reply: d.get_u8() != 0,
            })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_messages_parse_and_short_ones_are_refused() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x1_0000_0028);
        w.put_u64(0x1_0000_0030);
        w.put_i64(5);
        w.put_slice(b"WAL!");
        assert_eq!(
            parse(w.freeze()).unwrap(),
            Streamed::Wal {
                start: 0x1_0000_0028,
                data: Bytes::from_static(b"WAL!")
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(77);
        k.put_i64(5);
        k.put_u8(1);
        assert_eq!(
            parse(k.freeze()).unwrap(),
            Streamed::Keepalive {
                wal_end: 77,
                reply: true
            }
        );
        for bad in [&b"w\0\0"[..], b"k", b"", b"x0123456789012345678901234"] {
            assert!(parse(Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
