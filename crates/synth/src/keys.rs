//! `synth keys`: issue, list, revoke and rotate callers' keys, stored in the ledger by their
//! digest. A key belongs to an application and, for a seat, to one of its users; the gateway
//! takes both from the key, never from the request.

use budget::Window;
use ledger::{IssuedKey, Ledger, LedgerError};
use thiserror::Error;

/// What can go wrong managing keys.
#[derive(Debug, Error)]
pub enum KeysError {
    /// The ledger could not be read or written.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The application has no budget in the ledger: a key for it would be refused on every call.
    #[error("application `{0}` has no budget in the ledger; deploy it before issuing keys for it")]
    NoBudget(String),
    /// A user name the ledger cannot hold.
    #[error("{0}")]
    BadUser(String),
    /// No key with that ID belongs to the application.
    #[error("application `{application}` has no key `{id}` (`synth keys list` shows its keys)")]
    NoSuchKey {
        /// The application.
        application: String,
        /// The ID asked for.
        id: String,
    },
    /// The operating system's random source failed.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// The prefix of every issued key.
pub const KEY_PREFIX: &str = ledger::ISSUED_KEY_PREFIX;

/// A fresh key: [`KEY_PREFIX`] and 256 random bits from the operating system, in hex.
pub fn generate() -> Result<String, KeysError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| KeysError::Random(e.to_string()))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{KEY_PREFIX}{hex}"))
}

/// An issued key: the secret, shown once, and what the ledger keeps.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The key itself. Never stored.
    pub key: String,
    /// What the ledger stores, under the key's digest.
    pub record: IssuedKey,
    /// Set when the application sets no budget for this user: the seat then meets only the
    /// application's limits.
    pub unlimited_user: bool,
}

/// Issues a key to `application` (and `user`) at `now`, Unix seconds.
pub async fn create<L: Ledger>(
    ledger: &L,
    application: &str,
    user: Option<&str>,
    now: i64,
) -> Result<Issued, KeysError> {
    if let Some(user) = user {
        ledger::check_user(user).map_err(KeysError::BadUser)?;
    }
    let Some(config) = ledger.budget(application).await? else {
        return Err(KeysError::NoBudget(application.to_string()));
    };
    let unlimited_user = user.is_some_and(|u| config.user_budget(u).is_none());
    // A collision of 48-bit IDs within one application is unlikely; a new key settles it.
    let mut attempts = 0;
    loop {
        let key = generate()?;
        let digest = ledger::key_digest(&key);
        let record = IssuedKey {
            id: ledger::key_id(&digest),
            application: application.to_string(),
            user: user.map(str::to_string),
            created: now,
        };
        match ledger.put_key(&digest, &record).await {
            Ok(()) => {
                return Ok(Issued {
                    key,
                    record,
                    unlimited_user,
                });
            }
            Err(LedgerError::Owned { .. }) if attempts < 3 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Revokes `application`'s key `id`: calls with it are refused (401) from then on, within the
/// gateway's key cache of a few seconds.
pub async fn revoke<L: Ledger>(ledger: &L, application: &str, id: &str) -> Result<(), KeysError> {
    if ledger.revoke_key(application, id).await? {
        Ok(())
    } else {
        Err(KeysError::NoSuchKey {
            application: application.to_string(),
            id: id.to_string(),
        })
    }
}

/// Replaces `application`'s key `id` with a new one for the same user, then revokes the old one.
pub async fn rotate<L: Ledger>(
    ledger: &L,
    application: &str,
    id: &str,
    now: i64,
) -> Result<Issued, KeysError> {
    let old = ledger
        .keys(application)
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| KeysError::NoSuchKey {
            application: application.to_string(),
            id: id.to_string(),
        })?;
    let issued = create(ledger, application, old.user.as_deref(), now).await?;
    revoke(ledger, application, id).await?;
    Ok(issued)
}

/// The keys of an application as a table: ID, user, when issued (UTC).
pub fn table(keys: &[IssuedKey]) -> String {
    let mut out = format!("{:<14}{:<34}{}\n", "ID", "USER", "ISSUED (UTC)");
    for k in keys {
        out.push_str(&format!(
            "{:<14}{:<34}{}\n",
            k.id,
            k.user.as_deref().unwrap_or("-"),
            issued_at(k.created)
        ));
    }
    out
}

fn issued_at(created: i64) -> String {
    Window::Minute
        .instance_at(created)
        .map(|i| i.key().trim_start_matches("minute#").to_string())
        .unwrap_or_else(|_| created.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use budget::config::{BudgetConfig, UserBudget};

    #[tokio::test]
    async fn issues_lists_rotates_and_revokes_keys_stored_by_digest() {
        let ledger = ledger::MemoryLedger::new();
        assert!(matches!(
            create(&ledger, "team", Some("alice"), 0).await,
            Err(KeysError::NoBudget(_))
        ));
        let config = BudgetConfig {
            application: "team".into(),
            per_user: None,
            users: [("alice".to_string(), UserBudget::default())].into(),
            ..BudgetConfig::default()
        };
        ledger.put_budget(&config, &[]).await.unwrap();
        assert!(matches!(
            create(&ledger, "team", Some("a/b"), 0).await,
            Err(KeysError::BadUser(_))
        ));
        let alice = create(&ledger, "team", Some("alice"), 1_800_000_000)
            .await
            .unwrap();
        assert!(alice.key.starts_with(KEY_PREFIX) && alice.key.len() == 68);
        assert!(!alice.unlimited_user);
        let bob = create(&ledger, "team", Some("bob"), 1_800_000_060)
            .await
            .unwrap();
        assert!(bob.unlimited_user, "bob has no budget of his own");
        assert_ne!(alice.key, bob.key);
        // Found by the digest of the key, never by the key itself.
        let found = ledger.key(&ledger::key_digest(&alice.key)).await.unwrap();
        assert_eq!(found.as_ref(), Some(&alice.record));
        assert_eq!(ledger.key(&alice.key).await.unwrap(), None);
        let listed = ledger.keys("team").await.unwrap();
        assert_eq!(listed, vec![alice.record.clone(), bob.record.clone()]);
        assert!(
            table(&listed).contains("2027-01-15T08:00"),
            "{}",
            table(&listed)
        );

        let rotated = rotate(&ledger, "team", &alice.record.id, 1_800_000_120)
            .await
            .unwrap();
        assert_eq!(rotated.record.user.as_deref(), Some("alice"));
        assert_eq!(
            ledger.key(&ledger::key_digest(&alice.key)).await.unwrap(),
            None
        );
        assert!(
            ledger
                .key(&ledger::key_digest(&rotated.key))
                .await
                .unwrap()
                .is_some()
        );
        revoke(&ledger, "team", &bob.record.id).await.unwrap();
        assert!(matches!(
            revoke(&ledger, "team", &bob.record.id).await,
            Err(KeysError::NoSuchKey { .. })
        ));
        assert_eq!(ledger.keys("team").await.unwrap(), vec![rotated.record]);
    }
}
