//! Teams and API keys. A key is `gm_<prefix>_<secret>`: the prefix finds the row, only a SHA-256
//! of the whole token is stored, so a database leak reveals no usable key.
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::{KeyId, TeamId};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Team {
    pub id: TeamId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// A key's public description (never the secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: KeyId,
    pub team_id: TeamId,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// A key just created: the token is shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The bearer token. Store it now: it cannot be recovered.
    pub token: String,
}

/// What authentication needs from a key row.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: KeyId,
    pub team_id: TeamId,
    pub scopes: Vec<Scope>,
    pub revoked: bool,
    secret_hash: Vec<u8>,
}

impl KeyRecord {
    /// Whether `token` is this key's, comparing its hash with the stored one in constant time.
    pub fn matches(&self, token: &str) -> bool {
        secret_matches(token, &self.secret_hash)
    }
}

/// Whether `token` hashes to `stored` (a SHA-256). The bytes are compared with `subtle` in constant
/// time; the two are always 32 bytes, so the early length check reveals nothing about the secret
/// (a stored value of any other length is not a hash this code wrote, and matches nothing).
fn secret_matches(token: &str, stored: &[u8]) -> bool {
    let h = Sha256::digest(token.as_bytes());
    stored.len() == h.len() && bool::from(h.as_slice().ct_eq(stored))
}

const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

fn random_string(n: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Splits `gm_<prefix>_<secret>` into its prefix.
pub fn token_prefix(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("gm_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (!prefix.is_empty() && !secret.is_empty()).then_some(prefix)
}

pub async fn create_team(pool: &PgPool, name: &str) -> sqlx::Result<Team> {
    let id = TeamId::new();
    let row: (OffsetDateTime,) =
        sqlx::query_as("INSERT INTO teams (id, name) VALUES ($1, $2) RETURNING created_at")
            .bind(id)
            .bind(name)
            .fetch_one(pool)
            .await?;
    Ok(Team {
        id,
        name: name.to_string(),
        created_at: row.0,
    })
}

pub async fn list_teams(pool: &PgPool) -> sqlx::Result<Vec<Team>> {
    let rows: Vec<(TeamId, String, OffsetDateTime)> =
        sqlx::query_as("SELECT id, name, created_at FROM teams ORDER BY name")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, created_at)| Team {
            id,
            name,
            created_at,
        })
        .collect())
}

/// Creates a key for `team`; `None` when the team does not exist.
pub async fn create_key(
    pool: &PgPool,
    team: TeamId,
    name: &str,
    scopes: &[Scope],
) -> sqlx::Result<Option<NewKey>> {
    let exists: Option<(TeamId,)> = sqlx::query_as("SELECT id FROM teams WHERE id = $1")
        .bind(team)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let id = KeyId::new();
    let prefix = random_string(10);
    let token = format!("gm_{prefix}_{}", random_string(32));
    let hash = Sha256::digest(token.as_bytes()).to_vec();
    let mut scopes: Vec<Scope> = scopes.to_vec();
    scopes.sort_by_key(|s| s.as_str());
    scopes.dedup();
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let row: (OffsetDateTime,) = sqlx::query_as(
        "INSERT INTO api_keys (id, team_id, name, prefix, secret_hash, scopes) VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
    )
    .bind(id)
    .bind(team)
    .bind(name)
    .bind(&prefix)
    .bind(hash)
    .bind(&names)
    .fetch_one(pool)
    .await?;
    Ok(Some(NewKey {
        key: ApiKey {
            id,
            team_id: team,
            name: name.to_string(),
            prefix,
            scopes,
            created_at: row.0,
        },
        token,
    }))
}

/// The key a bearer token names, if its prefix exists (the caller checks the secret).
pub async fn find_key(pool: &PgPool, token: &str) -> sqlx::Result<Option<KeyRecord>> {
    let Some(prefix) = token_prefix(token) else {
        return Ok(None);
    };
    let row: Option<KeyRow> =
        sqlx::query_as("SELECT id, team_id, scopes, revoked_at IS NOT NULL AS revoked, secret_hash FROM api_keys WHERE prefix = $1")
            .bind(prefix)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| KeyRecord {
        id: r.id,
        team_id: r.team_id,
        scopes: r.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        revoked: r.revoked,
        secret_hash: r.secret_hash,
    }))
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: KeyId,
    team_id: TeamId,
    scopes: Vec<String>,
    revoked: bool,
    secret_hash: Vec<u8>,
}

/// Revokes a key; false when there is no such (unrevoked) key.
pub async fn revoke_key(pool: &PgPool, id: KeyId) -> sqlx::Result<bool> {
    let r =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(pool)
            .await?;
    Ok(r.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_compared_by_their_full_hash() {
        let token = "gm_abcd1234_secretsecretsecret";
        let stored = Sha256::digest(token.as_bytes()).to_vec();
        assert!(secret_matches(token, &stored));
        for other in [
            "",
            "gm_abcd1234_secretsecretsecreT",
            "gm_abcd1234_secretsecretsecre",
            "gm_abcd1234_secretsecretsecretx",
        ] {
            assert!(!secret_matches(other, &stored), "{other:?}");
        }
        // A stored value that is not a 32-byte hash (truncated, empty) matches nothing, not even
        // a token whose hash starts with it.
        assert!(!secret_matches(token, &stored[..16]));
        assert!(!secret_matches(token, &[]));
    }

    #[sqlx::test]
    async fn keys_are_found_by_prefix_checked_by_hash_and_revocable(pool: PgPool) {
        let team = create_team(&pool, "vision").await.unwrap();
        let new = create_key(
            &pool,
            team.id,
            "ci",
            &[Scope::Write, Scope::Read, Scope::Read],
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(new.key.scopes, vec![Scope::Read, Scope::Write]);
        let rec = find_key(&pool, &new.token).await.unwrap().unwrap();
        assert!(rec.matches(&new.token));
        assert!(!rec.matches(&format!("{}x", new.token)));
        assert_eq!(rec.team_id, team.id);
        assert!(revoke_key(&pool, new.key.id).await.unwrap());
        assert!(!revoke_key(&pool, new.key.id).await.unwrap());
        assert!(find_key(&pool, &new.token).await.unwrap().unwrap().revoked);
        assert!(find_key(&pool, "not-a-token").await.unwrap().is_none());
        assert!(create_key(&pool, TeamId::new(), "x", &[Scope::Read])
            .await
            .unwrap()
            .is_none());
    }
}
