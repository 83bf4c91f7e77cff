//! The simulated client's own secrets, shared by simulated and live runs so both
//! forge alike: the client RNG's seed domain and the forger's key.

use reference::token::KeyRing;

/// Seed domain of the client RNG (forgeries), apart from the workload's.
pub const CLIENT_RNG_NAME: u64 = 0x636c_6965_6e74; // "client"

/// Key id forgers sign with (the wallet's dev key is id 0).
pub const FORGER_KEY_ID: u32 = 1;

/// The key the simulated forger signs with for a run of `seed` (key id 1).
pub fn forger_keys(seed: u64) -> KeyRing {
    KeyRing::from_secret(
        FORGER_KEY_ID,
        *blake3::hash(&(seed ^ CLIENT_RNG_NAME).to_le_bytes()).as_bytes(),
    )
}
