//! Laying out, checking and upgrading the store's tables, and the commit log's state in them.

use redb::{Database, ReadableDatabase, ReadableTable, TableError, TableHandle, WriteTransaction};

use crate::store::error::StoreError;
use crate::store::tables::{
    ALL_TABLES, CAPABILITIES, CHECKPOINT_SEQ_KEY, ENVELOPES, EVENTS, FACETS, HITL, LOG_STATE, META,
    NODES, PLANS, QUEUED, REQUESTS, RUNS, SCHEMA_VERSION, SCHEMA_VERSION_KEY, STORE_ID_KEY,
    UPGRADABLE_FROM,
};

/// Checks the schema version of an existing store, upgrades an older one in place, or lays
/// out a new one. An upgrade is [`create_schema`] (creating every table is idempotent): the
/// older versions lack only tables, a store id, and (before 5) nothing else, because values
/// written before 5 carry their own format byte and are read as they are (`codec.rs`).
pub(super) fn init_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(meta) => {
            let found = meta.get(SCHEMA_VERSION_KEY)?.map(|guard| guard.value());
            drop(meta);
            drop(txn);
            match found {
                Some(SCHEMA_VERSION) => Ok(()),
                Some(found) if (UPGRADABLE_FROM..SCHEMA_VERSION).contains(&found) => {
                    create_schema(db)
                }
                Some(found) => Err(StoreError::UpgradeRequired {
                    found,
                    expected: SCHEMA_VERSION,
                }),
                None => Err(StoreError::corrupt("meta: schema_version missing")),
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {
            let foreign: Vec<String> = txn
                .list_tables()?
                .map(|table| table.name().to_owned())
                .filter(|name| !ALL_TABLES.contains(&name.as_str()))
                .collect();
            if !foreign.is_empty() {
                return Err(StoreError::corrupt(format!(
                    "not a flexrun store: no meta table, foreign tables {}",
                    foreign.join(", ")
                )));
            }
            drop(txn);
            create_schema(db)
        }
        Err(err) => Err(err.into()),
    }
}

/// Creates every missing table, gives the store its id if it has none, and records the
/// schema version, in one durable transaction.
fn create_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(META)?
            .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
        txn.open_table(RUNS)?;
        txn.open_table(ENVELOPES)?;
        txn.open_table(PLANS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(NODES)?;
        txn.open_table(HITL)?;
        txn.open_table(FACETS)?;
        txn.open_table(CAPABILITIES)?;
        txn.open_table(QUEUED)?;
        txn.open_table(REQUESTS)?;
        let mut state = txn.open_table(LOG_STATE)?;
        if state.get(STORE_ID_KEY)?.is_none() {
            state.insert(STORE_ID_KEY, uuid::Uuid::new_v4().as_bytes().as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// The store id and the checkpointed log seq of a store whose schema is current. A file
/// laid out without a store id (tables may be missing) is given one.
pub(super) fn log_state(db: &Database) -> Result<([u8; 16], u64), StoreError> {
    let txn = db.begin_read()?;
    let state = match txn.open_table(LOG_STATE) {
        Ok(state) => state,
        Err(TableError::TableDoesNotExist(_)) => {
            drop(txn);
            create_schema(db)?;
            return log_state(db);
        }
        Err(err) => return Err(err.into()),
    };
    let Some(id) = state.get(STORE_ID_KEY)? else {
        drop(state);
        drop(txn);
        create_schema(db)?;
        return log_state(db);
    };
    let id = <[u8; 16]>::try_from(id.value())
        .map_err(|_| StoreError::corrupt("log_state: store_id malformed"))?;
    let seq = match state.get(CHECKPOINT_SEQ_KEY)? {
        Some(seq) => {
            let seq = <[u8; 8]>::try_from(seq.value())
                .map_err(|_| StoreError::corrupt("log_state: checkpoint_seq malformed"))?;
            u64::from_be_bytes(seq)
        }
        None => 0,
    };
    Ok((id, seq))
}

/// Records in `txn` that its commit holds every log entry up to `seq`.
pub(super) fn put_checkpoint_seq(txn: &WriteTransaction, seq: u64) -> Result<(), StoreError> {
    txn.open_table(LOG_STATE)?
        .insert(CHECKPOINT_SEQ_KEY, seq.to_be_bytes().as_slice())?;
    Ok(())
}
