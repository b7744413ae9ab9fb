//! A fresh database per test on the server named by `FLEXRUN_TEST_POSTGRES`.

use tokio_postgres::NoTls;
use uuid::Uuid;

/// The variable that names the test server's URL.
const VAR: &str = "FLEXRUN_TEST_POSTGRES";

/// A database of its own for one test, created on the test server and dropped (with its
/// connections) when this is dropped.
#[derive(Debug)]
pub(crate) struct TestDb {
    /// The database's URL.
    pub(crate) url: String,
    name: String,
    server: String,
}

/// The URL `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |at| at + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{host_part}/{name}?{query}"),
        None => format!("{host_part}/{name}"),
    }
}

/// Connects to the database at `url` on a runtime of its own and runs `work` with the client.
fn with_client<T>(
    url: &str,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, tokio_postgres::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the test's SQL");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let driver = tokio::spawn(connection);
        let result = work(&client).await;
        drop(client);
        let _ = driver.await;
        result
    })
}

/// Runs `sql` (simple protocol, several statements allowed) on the database at `url`.
pub(crate) fn run_sql(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    with_client(url, async |client| client.batch_execute(sql).await)
}

/// The first column of the first row of `sql` on the database at `url`, as text.
pub(crate) fn query_text(url: &str, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    with_client(url, async |client| {
        let messages = client.simple_query(sql).await?;
        Ok(messages.into_iter().find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        }))
    })
}

impl TestDb {
    /// Creates the database.
    ///
    /// # Panics
    /// When `FLEXRUN_TEST_POSTGRES` is not set (the PostgreSQL tests never pass by skipping)
    /// or the server refuses.
    pub(crate) fn new() -> Self {
        let server = std::env::var(VAR).unwrap_or_else(|_| {
            panic!(
                "{VAR} is not set: the PostgreSQL store's tests need a server. Run \
                 `scripts/postgres.sh start` and `export {VAR}=<the URL it prints>` \
                 (scripts/test.sh does both)"
            )
        });
        let name = format!("flexrun_t_{}", Uuid::new_v4().simple());
        run_sql(&server, &format!("CREATE DATABASE {name}")).unwrap_or_else(|err| {
            panic!("cannot create a test database on {server} ({VAR}): {err}; is it running? (scripts/postgres.sh start)")
        });
        Self {
            url: with_database(&server, &name),
            name,
            server,
        }
    }

    /// Runs `sql` on the test database.
    pub(crate) fn sql(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        run_sql(&self.url, sql)
    }

    /// The first column of the first row of `sql` on the test database, as text.
    pub(crate) fn text(&self, sql: &str) -> Option<String> {
        query_text(&self.url, sql).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = run_sql(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:54329/flexrun", "t1"),
            "postgres://postgres@127.0.0.1:54329/t1"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "t2"),
            "postgres://u@h/t2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t3"), "postgres://u@h/t3");
    }
}
