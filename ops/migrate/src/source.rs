//! The chat-api's PostgreSQL, read only: one REPEATABLE READ READ ONLY
//! transaction, so every query of a run sees the same snapshot, and rows come
//! through a portal a page at a time, so memory does not grow with the database.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_postgres::{Client, Config, Portal, Row, Statement, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use crate::Failure;

/// Rows fetched from a portal at a time.
const PAGE_ROWS: i32 = 500;

/// Every column the migration reads, by table: a database without one of them
/// is not the chat-api's, and the run stops before reading anything else.
const REQUIRED: [(&str, &[&str]); 2] = [
    (
        "conversations",
        &[
            "id",
            "user_id",
            "title",
            "model_tag",
            "is_favorited",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "messages",
        &[
            "id",
            "conversation_id",
            "role",
            "content",
            "token_count",
            "model_tag",
            "inference_time_ms",
            "created_at",
        ],
    ),
];

/// A conversation row, with what identifies its messages: a change to the
/// conversation or to the set of its messages changes [`LegacyConversation::version`].
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyConversation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: Option<String>,
    pub model_tag: Option<String>,
    pub is_favorited: bool,
    pub created_at: Option<OffsetDateTime>,
    pub updated_at: Option<OffsetDateTime>,
    pub messages: i64,
    /// md5 of the messages' ids and times, in id order ("" without messages).
    pub messages_digest: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LegacyMessage {
    pub id: Uuid,
    pub role: String,
    pub content: String,
    pub token_count: Option<i32>,
    pub model_tag: Option<String>,
    pub inference_time_ms: Option<i32>,
    pub created_at: Option<OffsetDateTime>,
}

/// A connection to the source, refusing writes at the session level too.
pub struct Source {
    client: Client,
}

impl Source {
    /// Connects as the URL says; `sslmode` (`disable`, `prefer`, the default,
    /// or `require`) decides about TLS, and a server's certificate must chain
    /// to `ca_file` (a PEM bundle, e.g. RDS's `global-bundle.pem`) or, without
    /// one, to Mozilla's roots; its name must match the host.
    pub async fn connect(url: &str, ca_file: Option<&Path>) -> Result<Self, Failure> {
        // libpq's verify-ca and verify-full are what `require` does here: the
        // certificate is always verified, its name always checked.
        let url = url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        let mut config: Config = url
            .parse()
            .map_err(|e| Failure::Input(format!("--postgres: not a PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // Even a bug here cannot write: the server refuses writes in the session.
        // The URL's own options (a search_path, say) are kept.
        let options = format!(
            "{} -c default_transaction_read_only=on -c TimeZone=UTC",
            config.get_options().unwrap_or("")
        );
        config.options(options.trim_start());
        config.application_name("samosachaat-migrate");
        let (client, connection) = config.connect(tls(ca_file)?).await.map_err(|e| {
            Failure::Input(format!(
                "PostgreSQL: cannot connect or log in ({}): {}",
                describe_target(&config),
                pg_reason(&e)
            ))
        })?;
        tokio::spawn(async move {
            // The connection ends with the client; a broken one fails the next query.
            let _ = connection.await;
        });
        Ok(Self { client })
    }

    /// Starts the run's snapshot after checking the schema is the chat-api's.
    pub async fn snapshot(&mut self) -> Result<Snapshot<'_>, Failure> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_failure)?;
        check_schema(&tx).await?;
        let messages = tx
            .prepare(
                "SELECT id, role, content, token_count, model_tag, inference_time_ms, created_at \
                 FROM messages WHERE conversation_id = $1 \
                 ORDER BY created_at ASC, id ASC",
            )
            .await
            .map_err(pg_failure)?;
        Ok(Snapshot { tx, messages })
    }
}

fn tls(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, Failure> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let unusable = || {
                Failure::Input(format!(
                    "--postgres-ca: {} holds no usable CA certificate",
                    path.display()
                ))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|_| unusable())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| unusable())?;
            if roots.add_parsable_certificates(certs).0 == 0 {
                return Err(unusable());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Input(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

async fn check_schema(tx: &Transaction<'_>) -> Result<(), Failure> {
    for (table, columns) in REQUIRED {
        let rows = tx
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
                &[&table],
            )
            .await
            .map_err(pg_failure)?;
        if rows.is_empty() {
            return Err(Failure::Input(format!(
                "PostgreSQL: this is not the chat-api's schema: table `{table}` is missing"
            )));
        }
        let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| !present.iter().any(|p| p == c))
            .collect();
        if !missing.is_empty() {
            return Err(Failure::Input(format!(
                "PostgreSQL: this is not the chat-api's schema: table `{table}` lacks column(s) {}",
                missing.join(", ")
            )));
        }
    }
    Ok(())
}

/// The run's consistent view of the source.
pub struct Snapshot<'a> {
    tx: Transaction<'a>,
    messages: Statement,
}

impl Snapshot<'_> {
    /// How many conversations the snapshot holds (for the progress line).
    pub async fn count(&self) -> Result<i64, Failure> {
        let row = self
            .tx
            .query_one("SELECT count(*) FROM conversations", &[])
            .await
            .map_err(pg_failure)?;
        row.try_get(0).map_err(pg_failure)
    }

    /// Every conversation in id order (the order the ledger lists them in),
    /// with its messages' count and digest.
    pub async fn conversations(&self) -> Result<Conversations<'_>, Failure> {
        let portal = self
            .tx
            .bind(
                "SELECT c.id, c.user_id, c.title::text, c.model_tag::text, c.is_favorited, \
                        c.created_at, c.updated_at, count(m.id), \
                        coalesce(md5(string_agg(m.id::text || '@' || coalesce(m.created_at::text, ''), \
                                                ',' ORDER BY m.id)), '') \
                 FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id \
                 GROUP BY c.id ORDER BY c.id",
                &[],
            )
            .await
            .map_err(pg_failure)?;
        Ok(Conversations {
            tx: &self.tx,
            portal,
            page: Vec::new().into_iter(),
            done: false,
        })
    }

    /// A conversation's messages in the chat-api's order: `created_at`, then id
    /// (PostgreSQL sorts a NULL `created_at` last).
    pub async fn messages(&self, conversation: Uuid) -> Result<Vec<LegacyMessage>, Failure> {
        let rows = self
            .tx
            .query(&self.messages, &[&conversation])
            .await
            .map_err(pg_failure)?;
        rows.iter().map(message_row).collect()
    }
}

/// The conversations' portal, read a page at a time.
pub struct Conversations<'a> {
    tx: &'a Transaction<'a>,
    portal: Portal,
    page: std::vec::IntoIter<Row>,
    done: bool,
}

impl Conversations<'_> {
    pub async fn next(&mut self) -> Result<Option<LegacyConversation>, Failure> {
        loop {
            if let Some(row) = self.page.next() {
                return conversation_row(&row).map(Some);
            }
            if self.done {
                return Ok(None);
            }
            let rows = self
                .tx
                .query_portal(&self.portal, PAGE_ROWS)
                .await
                .map_err(pg_failure)?;
            self.done = rows.len() < PAGE_ROWS as usize;
            self.page = rows.into_iter();
        }
    }
}

fn conversation_row(row: &Row) -> Result<LegacyConversation, Failure> {
    Ok(LegacyConversation {
        id: row.try_get(0).map_err(pg_failure)?,
        user_id: row.try_get(1).map_err(pg_failure)?,
        title: row.try_get(2).map_err(pg_failure)?,
        model_tag: row.try_get(3).map_err(pg_failure)?,
        is_favorited: row.try_get(4).map_err(pg_failure)?,
        created_at: row.try_get(5).map_err(pg_failure)?,
        updated_at: row.try_get(6).map_err(pg_failure)?,
        messages: row.try_get(7).map_err(pg_failure)?,
        messages_digest: row.try_get(8).map_err(pg_failure)?,
    })
}

fn message_row(row: &Row) -> Result<LegacyMessage, Failure> {
    Ok(LegacyMessage {
        id: row.try_get(0).map_err(pg_failure)?,
        role: row.try_get(1).map_err(pg_failure)?,
        content: row.try_get(2).map_err(pg_failure)?,
        token_count: row.try_get(3).map_err(pg_failure)?,
        model_tag: row.try_get(4).map_err(pg_failure)?,
        inference_time_ms: row.try_get(5).map_err(pg_failure)?,
        created_at: row.try_get(6).map_err(pg_failure)?,
    })
}

/// Where the run connects, without the password.
fn describe_target(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(default user)");
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("{user}@{host}:{port}/{db}")
}

/// The server's own message when there is one (wrong password, no such
/// database), else the client's.
fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

fn pg_failure(e: tokio_postgres::Error) -> Failure {
    Failure::Source(format!("PostgreSQL: {}", pg_reason(&e)))
}
