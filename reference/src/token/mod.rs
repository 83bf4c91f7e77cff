//! Red-packet tokens (seed 000 §4.2, struct in seed 001): a protobuf message with
//! the award's facts, signed with Ed25519 under a key id so keys can rotate. The
//! server keeps a copy and so does the client; each backs the other up.
//!
//! Verification is strict: the bytes must decode to exactly the canonical encoding
//! (so no changed byte can slip through as an ignored field), the key id must be
//! known, the signature must verify (`verify_strict`), and the token must belong to
//! the act_id and activity presenting it. The one exception is [`verify_batch`], for
//! the credit worker's server-side copies: the same checks, the signatures in one
//! batch equation (not strict about small-order components; see there).

use std::collections::BTreeMap;
use std::fmt;
use std::panic::resume_unwind;
use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use prost::Message as _;
use serde::Deserialize;

use crate::config::{ConfigError, parse_toml, read_config_file};
use crate::order_no::OrderNo;
use crate::{ActId, ActivityId, ChildId};

/// Status written to the KV while a token is being credited (seed: 2).
pub const STATUS_PROCESSING: u8 = 2;
/// Status written once a token is credited (seed: 8). There is no failed state.
pub const STATUS_SUCCESS: u8 = 8;
/// Longest token accepted for verification; real ones are ~150 bytes.
pub const TOKEN_LEN_MAX: usize = 512;
/// Name of the environment variable `KeyRing::from_env` reads.
pub const KEYS_ENV: &str = "REDRAIN_TOKEN_KEYS";

/// The signed facts of one award: the seed's fields, plus the child activity and
/// award id the wallet resolved (tags 10 and 11).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TokenBody {
    /// Which of the eight apps the award came through.
    #[prost(int64, tag = "1")]
    pub app_id: i64,
    /// The user.
    #[prost(int64, tag = "2")]
    pub act_id: i64,
    /// The parent activity, as upstream names it.
    #[prost(string, tag = "3")]
    pub activity_id: String,
    /// The scene.
    #[prost(string, tag = "4")]
    pub scene_id: String,
    /// Cents.
    #[prost(int64, tag = "5")]
    pub amount: i64,
    /// The order number.
    #[prost(string, tag = "6")]
    pub out_trade_no: String,
    /// When the award was opened, Unix ms; the credit is dated at this time.
    #[prost(int64, tag = "7")]
    pub open_time: i64,
    /// The rain.
    #[prost(int32, tag = "8")]
    pub rain_id: i32,
    /// Status at signing time: always 0; the live status is in the KV.
    #[prost(int64, tag = "9")]
    pub status: i64,
    /// The child activity the award belongs to.
    #[prost(int64, tag = "10")]
    pub child_id: i64,
    /// The award id.
    #[prost(int64, tag = "11")]
    pub award_id: i64,
}

/// The wire form: key id, encoded body, signature over the body.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SignedToken {
    /// Which key signed it.
    #[prost(uint32, tag = "1")]
    pub key_id: u32,
    /// `TokenBody`, protobuf-encoded.
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
    /// Ed25519 over `body`.
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
}

/// A token's facts in domain types, after verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFacts {
    /// The app.
    pub app_id: i64,
    /// The user.
    pub act_id: ActId,
    /// Parent activity.
    pub activity_id: ActivityId,
    /// Child activity.
    pub child_id: ChildId,
    /// The parsed order number.
    pub order_no: OrderNo,
    /// The award id.
    pub award_id: u64,
    /// Cents, > 0.
    pub amount_cents: u64,
    /// Unix ms.
    pub open_time_ms: u64,
}

impl TokenFacts {
    /// The protobuf body of these facts.
    pub fn body(&self) -> TokenBody {
        // Every value here came from validated, range-checked domain types.
        TokenBody {
            app_id: self.app_id,
            act_id: self.act_id as i64,
            activity_id: self.activity_id.to_string(),
            scene_id: self.order_no.scene_id.to_string(),
            amount: self.amount_cents as i64,
            out_trade_no: self.order_no.to_string(),
            open_time: self.open_time_ms as i64,
            rain_id: self.order_no.rain_id as i32,
            status: 0,
            child_id: self.child_id as i64,
            award_id: self.award_id as i64,
        }
    }

    fn from_body(body: &TokenBody) -> Result<Self, TokenError> {
        let bad = |what: &str| TokenError::BadBody(what.to_owned());
        let order_no: OrderNo = body
            .out_trade_no
            .parse()
            .map_err(|_| bad("out_trade_no is not an order number"))?;
        let facts = TokenFacts {
            app_id: body.app_id,
            act_id: u64::try_from(body.act_id).map_err(|_| bad("act_id is negative"))?,
            activity_id: body
                .activity_id
                .parse()
                .map_err(|_| bad("activity_id is not a number"))?,
            child_id: u64::try_from(body.child_id).map_err(|_| bad("child_id is negative"))?,
            award_id: u64::try_from(body.award_id).map_err(|_| bad("award_id is negative"))?,
            amount_cents: u64::try_from(body.amount)
                .ok()
                .filter(|&a| a > 0)
                .ok_or_else(|| bad("amount is not positive"))?,
            open_time_ms: u64::try_from(body.open_time)
                .map_err(|_| bad("open_time is negative"))?,
            order_no,
        };
        // The redundant fields must agree with the order number they travel with.
        if facts.act_id != facts.order_no.act_id
            || body.scene_id != facts.order_no.scene_id.to_string()
            || i64::from(body.rain_id) != i64::from(facts.order_no.rain_id)
            || body.status != 0
        {
            return Err(bad("fields disagree with the order number"));
        }
        Ok(facts)
    }
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than any token we sign.
    #[error("token is {len} bytes; at most {max}")]
    TooLong { len: usize, max: usize },
    /// Not a protobuf `SignedToken`, or not its canonical encoding (truncated, changed framing).
    #[error("token bytes are not a canonical signed token")]
    Malformed,
    /// Signed by a key this wallet does not know (or no longer trusts).
    #[error("token key id {0} is unknown")]
    UnknownKey(u32),
    /// The signature does not verify: the body or the signature was changed.
    #[error("token signature does not verify")]
    BadSignature,
    /// Signed, but the body does not make sense.
    #[error("token body is invalid: {0}")]
    BadBody(String),
    /// Presented by (or for) another user.
    #[error("token belongs to act_id {token}, not {presenter}")]
    WrongActId { token: ActId, presenter: ActId },
    /// Presented to another activity.
    #[error("token belongs to activity {token}, not {presented}")]
    WrongActivity {
        token: ActivityId,
        presented: ActivityId,
    },
}

impl TokenError {
    /// Stable code for records and the protocol.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLong { .. } => "token_too_long",
            TokenError::Malformed => "token_malformed",
            TokenError::UnknownKey(_) => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::BadBody(_) => "token_bad_body",
            TokenError::WrongActId { .. } => "token_wrong_act_id",
            TokenError::WrongActivity { .. } => "token_wrong_activity",
        }
    }
}

/// A key-ring problem at load time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file is unusable.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// The environment variable is unusable.
    #[error("{KEYS_ENV}: {0}")]
    Env(String),
}

/// Verifying keys by id, and the one signing key in use.
pub struct KeyRing {
    signing: Option<(u32, SigningKey)>,
    verifying: BTreeMap<u32, VerifyingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("KeyRing")
            .field("signing_key_id", &self.signing.as_ref().map(|(id, _)| *id))
            .field(
                "verifying_key_ids",
                &self.verifying.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    /// The key id new tokens are signed with.
    active: u32,
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: u32,
    /// 32-byte Ed25519 secret, hex. Absent for retired keys kept only to verify.
    secret_hex: Option<String>,
    /// 32-byte public key, hex; derived from the secret when absent.
    public_hex: Option<String>,
}

fn hex32(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, expected 32", bytes.len()))
}

impl KeyRing {
    /// A ring that signs with `secret` under `key_id` (and verifies it).
    pub fn from_secret(key_id: u32, secret: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        let verifying = BTreeMap::from([(key_id, signing.verifying_key())]);
        Self {
            signing: Some((key_id, signing)),
            verifying,
        }
    }

    /// A development key derived from `seed` — only for simulations and tests that
    /// ask for it by name; never a default.
    pub fn dev(seed: u64) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"redrain dev token key v1");
        hasher.update(&seed.to_le_bytes());
        Self::from_secret(0, *hasher.finalize().as_bytes())
    }

    /// Also trust `key` under `key_id` for verification (a rotated-out key).
    pub fn trust(&mut self, key_id: u32, key: VerifyingKey) {
        self.verifying.insert(key_id, key);
    }

    /// Load a key file: `active = ID` and `[[key]] id, secret_hex | public_hex`.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let (text, origin) = read_config_file(path)?;
        let file: KeyFile = parse_toml(&text, &origin)?;
        let err = |key_path: String, message: String| ConfigError {
            origin: origin.clone(),
            line: None,
            key_path,
            message,
        };
        let mut ring = KeyRing {
            signing: None,
            verifying: BTreeMap::new(),
        };
        for (index, entry) in file.key.iter().enumerate() {
            let at = |m: String| err(format!("key[{index}]"), m);
            let verifying = match (&entry.secret_hex, &entry.public_hex) {
                (Some(secret), _) => {
                    let signing = SigningKey::from_bytes(
                        &hex32(secret).map_err(|m| at(format!("secret_hex: {m}")))?,
                    );
                    let verifying = signing.verifying_key();
                    if entry.id == file.active {
                        ring.signing = Some((entry.id, signing));
                    }
                    verifying
                }
                (None, Some(public)) => {
                    let bytes = hex32(public).map_err(|m| at(format!("public_hex: {m}")))?;
                    VerifyingKey::from_bytes(&bytes).map_err(|e| at(format!("public_hex: {e}")))?
                }
                (None, None) => return Err(at("needs secret_hex or public_hex".to_owned()).into()),
            };
            if ring.verifying.insert(entry.id, verifying).is_some() {
                return Err(at(format!("key id {} appears twice", entry.id)).into());
            }
        }
        if ring.signing.is_none() {
            return Err(err(
                "active".to_owned(),
                format!("no [[key]] with id {} and a secret_hex", file.active),
            )
            .into());
        }
        Ok(ring)
    }

    /// Load from `REDRAIN_TOKEN_KEYS` = `ID:SECRET_HEX[,ID:SECRET_HEX…]`; the first signs.
    pub fn from_env() -> Result<Self, KeyError> {
        let text = std::env::var(KEYS_ENV).map_err(|_| KeyError::Env("is not set".to_owned()))?;
        Self::from_spec(&text).map_err(KeyError::Env)
    }

    fn from_spec(text: &str) -> Result<Self, String> {
        let mut ring = KeyRing {
            signing: None,
            verifying: BTreeMap::new(),
        };
        for (index, item) in text.split(',').enumerate() {
            let (id, secret) = item
                .split_once(':')
                .ok_or_else(|| format!("item {index} is not ID:SECRET_HEX"))?;
            let id: u32 = id
                .trim()
                .parse()
                .map_err(|_| format!("item {index}: key id `{id}` is not a number"))?;
            let signing =
                SigningKey::from_bytes(&hex32(secret).map_err(|m| format!("item {index}: {m}"))?);
            if ring.verifying.insert(id, signing.verifying_key()).is_some() {
                return Err(format!("key id {id} appears twice"));
            }
            if ring.signing.is_none() {
                ring.signing = Some((id, signing));
            }
        }
        Ok(ring)
    }

    /// The public keys, for checkers that verify independently.
    pub fn verifying_keys(&self) -> BTreeMap<u32, VerifyingKey> {
        self.verifying.clone()
    }

    /// Sign `facts`; `None` when this ring only verifies.
    pub fn sign(&self, facts: &TokenFacts) -> Option<Vec<u8>> {
        let (key_id, key) = self.signing.as_ref()?;
        let body = facts.body().encode_to_vec();
        let signature = key.sign(&body).to_bytes().to_vec();
        Some(
            SignedToken {
                key_id: *key_id,
                body,
                signature,
            }
            .encode_to_vec(),
        )
    }

    /// Verify a token presented by `act_id` to `activity_id`.
    pub fn verify_for(
        &self,
        bytes: &[u8],
        act_id: ActId,
        activity_id: ActivityId,
    ) -> Result<TokenFacts, TokenError> {
        verify_with(&self.verifying, bytes, act_id, activity_id)
    }

    /// Verify a token's signature and body without an owner check (server-side copies).
    pub fn verify(&self, bytes: &[u8]) -> Result<TokenFacts, TokenError> {
        verify_signature(&self.verifying, bytes)
    }

    /// [`verify`](Self::verify) for several server-side copies at once; see
    /// [`verify_batch`] for what differs and why it is safe there.
    pub fn verify_batch(&self, tokens: &[impl AsRef<[u8]>]) -> Result<Vec<TokenFacts>, TokenError> {
        verify_batch(&self.verifying, tokens)
    }

    /// [`verify_batch`](Self::verify_batch) on up to `threads` threads; see
    /// [`verify_batch_on`].
    pub fn verify_batch_on(
        &self,
        tokens: &[impl AsRef<[u8]> + Sync],
        threads: usize,
    ) -> Result<Vec<TokenFacts>, TokenError> {
        verify_batch_on(&self.verifying, tokens, threads)
    }
}

/// Decode a token's facts WITHOUT verifying anything — for audits that need to
/// know what a refused token claimed. Never credit on the strength of this.
pub fn decode_unverified(bytes: &[u8]) -> Option<TokenFacts> {
    let signed = SignedToken::decode(bytes).ok()?;
    let body = TokenBody::decode(signed.body.as_slice()).ok()?;
    TokenFacts::from_body(&body).ok()
}

/// Public keys from raw bytes (as a run record keeps them).
pub fn verifying_keys_from_bytes(raw: &BTreeMap<u32, [u8; 32]>) -> BTreeMap<u32, VerifyingKey> {
    raw.iter()
        .filter_map(|(id, bytes)| VerifyingKey::from_bytes(bytes).ok().map(|k| (*id, k)))
        .collect()
}

/// Verify `bytes` against `keys` and check the presenter.
pub fn verify_with(
    keys: &BTreeMap<u32, VerifyingKey>,
    bytes: &[u8],
    act_id: ActId,
    activity_id: ActivityId,
) -> Result<TokenFacts, TokenError> {
    let facts = verify_signature(keys, bytes)?;
    if facts.act_id != act_id {
        return Err(TokenError::WrongActId {
            token: facts.act_id,
            presenter: act_id,
        });
    }
    if facts.activity_id != activity_id {
        return Err(TokenError::WrongActivity {
            token: facts.activity_id,
            presented: activity_id,
        });
    }
    Ok(facts)
}

/// Verify signature, canonical encoding and body of `bytes` against `keys`.
pub fn verify_signature(
    keys: &BTreeMap<u32, VerifyingKey>,
    bytes: &[u8],
) -> Result<TokenFacts, TokenError> {
    let unverified = Unverified::decode(keys, bytes)?;
    unverified
        .key
        .verify_strict(&unverified.signed.body, &unverified.signature)
        .map_err(|_| TokenError::BadSignature)?;
    unverified.facts()
}

/// Most tokens [`verify_batch`] checks in one batch equation (a longer input is
/// checked a chunk at a time); bounds the equation's scratch memory.
pub const VERIFY_BATCH_MAX: usize = 1024;

/// Verify server-side copies together: every check [`verify_signature`] makes, with
/// the signatures checked in one Ed25519 batch equation (on a claim of a few
/// hundred, about a third of the time per token). `Ok` holds the facts in input
/// order; on any failure the tokens are verified one by one, so the error is
/// exactly the one [`verify_signature`] gives for the first bad token.
///
/// Only for copies the wallet wrote itself (the credit worker's claims): the batch
/// equation is not `verify_strict`. It still refuses weak keys, but it does not
/// refuse a signature whose R has a small-order component or a non-canonical
/// encoding. Making such a signature verify needs the signing key, and a changed
/// body or signature fails the batch as surely as the strict check, so for these
/// copies only a token the key holder deliberately malformed could tell the
/// difference. Tokens a client presents keep [`verify_with`] and `verify_strict`.
///
/// Deterministic, and no randomness is taken (the core takes none): ed25519-dalek
/// derives the batch's 128-bit weights from a transcript of its inputs, never from
/// an OS source. Honest tokens pass whatever the weights; a batch holding a changed
/// token passes with probability about 2^-128.
pub fn verify_batch(
    keys: &BTreeMap<u32, VerifyingKey>,
    tokens: &[impl AsRef<[u8]>],
) -> Result<Vec<TokenFacts>, TokenError> {
    let mut all = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(VERIFY_BATCH_MAX) {
        match verify_batch_fast(keys, chunk) {
            Some(facts) => all.extend(facts),
            None => {
                for bytes in chunk {
                    all.push(verify_signature(keys, bytes.as_ref())?);
                }
            }
        }
    }
    Ok(all)
}

/// Most threads [`verify_batch_on`] uses.
pub const VERIFY_THREADS_MAX: usize = 8;

/// Fewest tokens worth a thread of their own in [`verify_batch_on`]: below this a
/// thread costs more to start than it saves.
pub const VERIFY_THREAD_TOKENS_MIN: usize = 64;

/// [`verify_batch`] with the tokens split into up to `threads` runs in input
/// order, verified side by side. The same answer on any number of threads: the
/// facts are joined in input order, and the first run holding a bad token names
/// it (every run before it passed), with the error [`verify_signature`] gives.
pub fn verify_batch_on(
    keys: &BTreeMap<u32, VerifyingKey>,
    tokens: &[impl AsRef<[u8]> + Sync],
    threads: usize,
) -> Result<Vec<TokenFacts>, TokenError> {
    let threads = threads
        .min(VERIFY_THREADS_MAX)
        .min(tokens.len() / VERIFY_THREAD_TOKENS_MIN)
        .max(1);
    if threads == 1 {
        return verify_batch(keys, tokens);
    }
    let run_len = tokens.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut runs = tokens.chunks(run_len);
        // `threads` ≥ 2 means at least 2 × VERIFY_THREAD_TOKENS_MIN tokens.
        let first = runs.next().unwrap_or_default();
        let helpers: Vec<_> = runs
            .map(|run| scope.spawn(move || verify_batch(keys, run)))
            .collect();
        let mut all = verify_batch(keys, first)?;
        for helper in helpers {
            // A panic while verifying is a bug: pass it on unchanged.
            all.extend(helper.join().unwrap_or_else(|panic| resume_unwind(panic))?);
        }
        Ok(all)
    })
}

/// The facts of `tokens` when every one decodes and the batch equation holds;
/// `None` as soon as anything fails (the caller then names the culprit).
fn verify_batch_fast(
    keys: &BTreeMap<u32, VerifyingKey>,
    tokens: &[impl AsRef<[u8]>],
) -> Option<Vec<TokenFacts>> {
    let mut facts = Vec::with_capacity(tokens.len());
    let mut messages: Vec<Vec<u8>> = Vec::with_capacity(tokens.len());
    let mut signatures = Vec::with_capacity(tokens.len());
    let mut verifying_keys = Vec::with_capacity(tokens.len());
    // The last key id found not weak: the tokens of a claim share one key.
    let mut strong_key_id = None;
    for bytes in tokens {
        let unverified = Unverified::decode(keys, bytes.as_ref()).ok()?;
        // `verify_strict` refuses weak keys; so does this path.
        if strong_key_id != Some(unverified.signed.key_id) {
            if unverified.key.is_weak() {
                return None;
            }
            strong_key_id = Some(unverified.signed.key_id);
        }
        facts.push(unverified.facts().ok()?);
        verifying_keys.push(*unverified.key);
        signatures.push(unverified.signature);
        messages.push(unverified.signed.body);
    }
    let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &verifying_keys).ok()?;
    Some(facts)
}

/// A token that passed every check but the signature: length, canonical framing,
/// known key id and a well-formed signature.
struct Unverified<'k> {
    signed: SignedToken,
    key: &'k VerifyingKey,
    signature: Signature,
}

impl<'k> Unverified<'k> {
    fn decode(keys: &'k BTreeMap<u32, VerifyingKey>, bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() > TOKEN_LEN_MAX {
            return Err(TokenError::TooLong {
                len: bytes.len(),
                max: TOKEN_LEN_MAX,
            });
        }
        let signed = SignedToken::decode(bytes).map_err(|_| TokenError::Malformed)?;
        if signed.encode_to_vec() != bytes {
            return Err(TokenError::Malformed);
        }
        let key = keys
            .get(&signed.key_id)
            .ok_or(TokenError::UnknownKey(signed.key_id))?;
        let signature =
            Signature::from_slice(&signed.signature).map_err(|_| TokenError::BadSignature)?;
        Ok(Self {
            signed,
            key,
            signature,
        })
    }

    /// The body's facts; meaningful only once the signature is verified.
    fn facts(&self) -> Result<TokenFacts, TokenError> {
        let body = TokenBody::decode(self.signed.body.as_slice())
            .map_err(|_| TokenError::BadBody("not a token body".to_owned()))?;
        if body.encode_to_vec() != self.signed.body {
            return Err(TokenError::BadBody("not canonically encoded".to_owned()));
        }
        TokenFacts::from_body(&body)
    }
}

#[cfg(test)]
mod tests;
