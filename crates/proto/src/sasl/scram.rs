//! SCRAM-SHA-256 [RFC 5802, RFC 7677] without channel binding, server and client, sans-I/O.
//!
//! ```text
//! C: n,,n=user,r=c-nonce                                   (client-first)
//! S: r=c-nonce s-nonce,s=base64(salt),i=iterations         (server-first)
//! C: c=biws,r=c-nonce s-nonce,p=base64(ClientProof)        (client-final)
//! S: v=base64(ServerSignature)                             (server-final)
//! ```
//!
//! In SMTP (RFC 4954) each message travels base64-encoded: `AUTH SCRAM-SHA-256 <client-first>`,
//! `334 <server-first>`, `<client-final>`, `334 <server-final>`, then the client sends an empty
//! line and the server answers `235`, since a `235` cannot carry data (RFC 4954 §4). The types
//! here take and return the *decoded* messages; base64 and the SMTP lines are the caller's.
//!
//! Invariants, and why:
//!
//! * **The password is never stored.** [`ScramVerifier`] keeps salt, iteration count, StoredKey
//!   and ServerKey [RFC 5802 §3]. StoredKey lets a server check a proof but not compute one;
//!   ServerKey lets it sign. Both are still secrets (together with an eavesdropped exchange they
//!   allow impersonation), so `Debug` never prints them.
//! * **The stored format is stable and versioned**: `0x01 ‖ iterations (u32 big-endian) ‖
//!   salt length (u8) ‖ salt ‖ StoredKey (32) ‖ ServerKey (32)`. [`ScramVerifier::from_bytes`]
//!   checks every length and the iteration bounds, so a record in the store is either usable or
//!   refused, never misread.
//! * **No hand-rolled crypto**: PBKDF2 comes from `pbkdf2`, HMAC from `hmac`, SHA-256 from `sha2`
//!   (all RustCrypto, digest 0.11). The RFC 7677 §3 exchange is reproduced octet for octet by the
//!   tests, from both sides.
//! * **Comparisons are constant-time** (`subtle`): the server compares H(ClientKey) with StoredKey,
//!   the client compares the ServerSignature, and [`verify_password`] compares StoredKey and
//!   ServerKey.
//! * **Unknown users are indistinguishable**: [`ScramServer::verifier`] with `None` answers with a
//!   decoy salt and the default iteration count and fails only at the proof, with the same
//!   [`ScramError::AuthenticationFailed`] as a wrong password. With
//!   [`ScramServer::with_decoy_secret`] the decoy salt is stable per user name across attempts,
//!   like a real one; without it it is derived from the server nonce and changes every attempt.
//! * **The client authenticates the server**: [`ScramClient::server_final`] succeeds only on a
//!   matching ServerSignature; `e=` is an error. The client refuses iteration counts outside
//!   [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`] (too weak, or a denial of service) and a server nonce
//!   that does not extend its own.
//! * **No channel binding**: the client sends the GS2 header `n,,`; the server accepts `n` and `y`
//!   (`y`: the client could bind, but believes we cannot, which is true as long as
//!   `SCRAM-SHA-256-PLUS` is not advertised) and refuses `p=`. The `c=` attribute must be exactly
//!   base64 of the GS2 header that came in client-first.
//! * **No proxy authorization**: an authzid (`a=`) is accepted only if, prepared, it equals the
//!   prepared user name.
//! * **SASLprep** [RFC 4013] is applied to passwords (for the key derivation) and user names; a
//!   string that fails preparation or becomes empty fails the exchange.
//! * **`m=` (mandatory extensions) fails the exchange** [RFC 5802 §5.1]; other extension attributes
//!   are checked for syntax and ignored.
//! * **Sans-I/O and panic-free on input**: the caller supplies the nonces (randomness); malformed
//!   messages, messages out of order and arbitrary octets produce errors, never panics.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Name of the stored-verifier scheme.
pub const SCHEME: &str = "scram-sha-256";
/// The SASL mechanism name.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iteration count for new verifiers: the minimum of RFC 7677 §3.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Lowest iteration count accepted anywhere (RFC 7677 §3 SHOULD).
pub const MIN_ITERATIONS: u32 = 4096;
/// Highest iteration count accepted anywhere: a server asking for more is treated as an attack on
/// the client's CPU.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Longest salt a verifier may have (its length is stored in one octet).
pub const MAX_SALT_LEN: usize = 255;
/// Length of StoredKey, ServerKey, proofs and signatures (SHA-256 output).
pub const KEY_LEN: usize = 32;

/// Version byte of the format written by [`ScramVerifier::to_bytes`].
const VERSION: u8 = 1;
/// Version, iterations, salt length.
const HEADER_LEN: usize = 1 + 4 + 1;
/// Salt length of decoy verifiers (what a caller is expected to use for real ones).
const DECOY_SALT_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Errors of verifiers, messages and exchanges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A stored verifier whose length does not match its salt length.
    #[error("stored SCRAM-SHA-256 verifier has an invalid length ({0} octets)")]
    BadLength(usize),
    /// A stored verifier in an unknown format version.
    #[error("stored SCRAM-SHA-256 verifier has unknown version {0}")]
    UnknownVersion(u8),
    /// An iteration count outside [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`].
    #[error("SCRAM iteration count {0} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    BadIterations(u32),
    /// An empty salt, or one longer than [`MAX_SALT_LEN`].
    #[error("SCRAM salt must be 1 to {MAX_SALT_LEN} octets")]
    BadSalt,
    /// A user name or password that SASLprep refuses or turns into the empty string.
    #[error("SASLprep failed or gave an empty string")]
    SaslPrep,
    /// A nonce that is empty or has characters other than printable ASCII without `,`.
    #[error("SCRAM nonce is empty or not printable ASCII without ','")]
    BadNonce,
    /// A message that does not follow the RFC 5802 §7 grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`p=`).
    #[error("SCRAM channel binding is not supported")]
    ChannelBindingNotSupported,
    /// A mandatory extension (`m=`) was sent.
    #[error("SCRAM mandatory extension is not supported")]
    ExtensionNotSupported,
    /// The authorization identity differs from the user name.
    #[error("SCRAM authorization identity differs from the user name")]
    AuthzidNotAllowed,
    /// `c=` is not base64 of the GS2 header of client-first.
    #[error("SCRAM channel binding data does not match the GS2 header")]
    ChannelBindingMismatch,
    /// The combined nonce is not the one of this exchange (server), or does not extend the
    /// client's nonce (client).
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// Wrong password or unknown user (deliberately the same error).
    #[error("SCRAM authentication failed")]
    AuthenticationFailed,
    /// The server's signature does not verify: it does not know the verifier.
    #[error("SCRAM server signature does not verify")]
    BadServerSignature,
    /// The server sent `e=` with this value.
    #[error("SCRAM server error: {0}")]
    ServerError(String),
    /// A message arrived in the wrong state (or after the exchange ended).
    #[error("SCRAM message out of order")]
    OutOfOrder,
}

/// What the server stores for a user instead of the password.
#[derive(Clone)]
pub struct ScramVerifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Derives the verifier: SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt,
    /// iterations). The salt should be at least 16 random octets, fresh per user.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Result<Self, ScramError> {
        check_iterations(iterations)?;
        check_salt(salt)?;
        let salted = salted_password(&prepare(password)?, salt, iterations);
        Ok(Self::from_salted(&salted, salt, iterations))
    }

    fn from_salted(salted: &[u8; KEY_LEN], salt: &[u8], iterations: u32) -> Self {
        Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&hmac(salted, b"Client Key")),
            server_key: hmac(salted, b"Server Key"),
        }
    }

    /// A verifier for a user that does not exist, so that the exchange (and [`verify_password`])
    /// for it looks and costs like a real one. Deterministic in `(user, secret)`; it matches no
    /// password (finding one would need a SHA-256 preimage).
    pub fn decoy(user: &str, secret: &[u8]) -> Self {
        let derive = |label: &[u8]| {
            let mut mac = new_hmac(secret);
            mac.update(b"odmr scram decoy ");
            mac.update(label);
            mac.update(b"\0");
            mac.update(user.as_bytes());
            let out: [u8; KEY_LEN] = mac.finalize().into_bytes().into();
            out
        };
        Self {
            salt: derive(b"salt")[..DECOY_SALT_LEN].to_vec(),
            iterations: DEFAULT_ITERATIONS,
            stored_key: derive(b"stored key"),
            server_key: derive(b"server key"),
        }
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// The iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The stored form: `0x01 ‖ iterations (u32 BE) ‖ salt length (u8) ‖ salt ‖ StoredKey ‖
    /// ServerKey`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.salt.len() + 2 * KEY_LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.iterations.to_be_bytes());
        // The salt length is bounded by `check_salt` in every constructor but `decoy` (16).
        b.push(u8::try_from(self.salt.len()).unwrap_or(u8::MAX));
        b.extend_from_slice(&self.salt[..self.salt.len().min(MAX_SALT_LEN)]);
        b.extend_from_slice(&self.stored_key);
        b.extend_from_slice(&self.server_key);
        b
    }

    /// Reads the form written by [`ScramVerifier::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, ScramError> {
        let Some(&version) = b.first() else {
            return Err(ScramError::BadLength(0));
        };
        if version != VERSION {
            return Err(ScramError::UnknownVersion(version));
        }
        if b.len() < HEADER_LEN {
            return Err(ScramError::BadLength(b.len()));
        }
        let salt_len = usize::from(b[5]);
        if b.len() != HEADER_LEN + salt_len + 2 * KEY_LEN {
            return Err(ScramError::BadLength(b.len()));
        }
        let iterations = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        check_iterations(iterations)?;
        let (salt, keys) = b[HEADER_LEN..].split_at(salt_len);
        check_salt(salt)?;
        let (stored, server) = keys.split_at(KEY_LEN);
        let mut v = Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: [0; KEY_LEN],
            server_key: [0; KEY_LEN],
        };
        v.stored_key.copy_from_slice(stored);
        v.server_key.copy_from_slice(server);
        Ok(v)
    }
}

/// Whether `password` is the one `v` was made from (for PLAIN and LOGIN against the stored
/// verifier): recomputes SaltedPassword with `v`'s salt and iteration count and compares StoredKey
/// and ServerKey in constant time. A password that fails SASLprep matches nothing.
pub fn verify_password(v: &ScramVerifier, password: &str) -> bool {
    let Ok(prepared) = prepare(password) else {
        return false;
    };
    let candidate = ScramVerifier::from_salted(
        &salted_password(&prepared, &v.salt, v.iterations),
        &v.salt,
        v.iterations,
    );
    (candidate.stored_key.ct_eq(&v.stored_key) & candidate.server_key.ct_eq(&v.server_key)).into()
}

/// A nonce from caller-supplied random octets (base64: printable ASCII without `,`). 18 octets
/// or more are recommended (24 characters, 144 bits).
pub fn make_nonce(random: &[u8]) -> String {
    B64.encode(random)
}

/// One step of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    /// Fetch this (prepared) user's verifier and call [`ScramServer::verifier`].
    LookupUser(String),
    /// server-first, to send in a `334`.
    Challenge(Vec<u8>),
    /// server-final (`v=...`), to send in a `334`; the client then sends an empty line and the
    /// caller answers `235`. [`ScramServer::user`] now names the authenticated user.
    Final(Vec<u8>),
    /// The exchange failed (answer `535` for [`ScramError::AuthenticationFailed`], `501`/`535`
    /// otherwise); every later call fails with [`ScramError::OutOfOrder`].
    Failed(ScramError),
}

enum ServerState {
    /// Waiting for client-first.
    Start,
    /// Waiting for the verifier.
    Lookup {
        gs2_header: String,
        client_first_bare: String,
        client_nonce: String,
        user: String,
    },
    /// Waiting for client-final.
    Proof {
        gs2_header: String,
        /// `client-first-bare "," server-first`
        auth_prefix: String,
        nonce: String,
        user: String,
        verifier: ScramVerifier,
        known: bool,
    },
    Done {
        user: String,
    },
    Failed,
}

/// The server side of one exchange.
pub struct ScramServer {
    nonce: String,
    decoy_secret: Option<Vec<u8>>,
    state: ServerState,
    /// The user client-first named, kept when the exchange fails (to count the failure).
    claimed: Option<String>,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            ServerState::Start => "start",
            ServerState::Lookup { .. } => "lookup",
            ServerState::Proof { .. } => "proof",
            ServerState::Done { .. } => "done",
            ServerState::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// A server for one exchange; `nonce` is the server's part of the nonce, from the caller's
    /// randomness (see [`make_nonce`]). Characters other than printable ASCII and `,` are dropped.
    pub fn new(nonce: &str) -> Self {
        Self {
            nonce: nonce.chars().filter(|&c| is_nonce_char(c)).collect(),
            decoy_secret: None,
            state: ServerState::Start,
            claimed: None,
        }
    }

    /// Derives decoy salts for unknown users from `secret` and the user name (see
    /// [`ScramVerifier::decoy`]), so that they stay the same across attempts like real ones.
    pub fn with_decoy_secret(mut self, secret: &[u8]) -> Self {
        self.decoy_secret = Some(secret.to_vec());
        self
    }

    fn fail(&mut self, e: ScramError) -> ServerStep {
        self.state = ServerState::Failed;
        ServerStep::Failed(e)
    }

    /// Takes client-first; asks for the user's verifier.
    pub fn client_first(&mut self, msg: &[u8]) -> ServerStep {
        if !matches!(self.state, ServerState::Start) {
            return self.fail(ScramError::OutOfOrder);
        }
        match parse_client_first(msg) {
            Ok(cf) => {
                let user = cf.user.clone();
                self.claimed = Some(user.clone());
                self.state = ServerState::Lookup {
                    gs2_header: cf.gs2_header,
                    client_first_bare: cf.bare,
                    client_nonce: cf.nonce,
                    user: cf.user,
                };
                ServerStep::LookupUser(user)
            }
            Err(e) => self.fail(e),
        }
    }

    /// Takes the verifier of the user named in [`ServerStep::LookupUser`] (`None`: no such user);
    /// answers with server-first.
    pub fn verifier(&mut self, v: Option<ScramVerifier>) -> ServerStep {
        let ServerState::Lookup {
            gs2_header,
            client_first_bare,
            client_nonce,
            user,
        } = std::mem::replace(&mut self.state, ServerState::Failed)
        else {
            return self.fail(ScramError::OutOfOrder);
        };
        let (verifier, known) = match v {
            Some(v) => (v, true),
            None => {
                let secret = self.decoy_secret.as_deref().unwrap_or(self.nonce.as_bytes());
                (ScramVerifier::decoy(&user, secret), false)
            }
        };
        let nonce = format!("{client_nonce}{}", self.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let auth_prefix = format!("{client_first_bare},{server_first}");
        self.state = ServerState::Proof {
            gs2_header,
            auth_prefix,
            nonce,
            user,
            verifier,
            known,
        };
        ServerStep::Challenge(server_first.into_bytes())
    }

    /// Takes client-final; verifies the proof and answers with server-final.
    pub fn client_final(&mut self, msg: &[u8]) -> ServerStep {
        let ServerState::Proof {
            gs2_header,
            auth_prefix,
            nonce,
            user,
            verifier,
            known,
        } = std::mem::replace(&mut self.state, ServerState::Failed)
        else {
            return self.fail(ScramError::OutOfOrder);
        };
        let cf = match parse_client_final(msg) {
            Ok(cf) => cf,
            Err(e) => return self.fail(e),
        };
        if cf.channel_binding != gs2_header.as_bytes() {
            return self.fail(ScramError::ChannelBindingMismatch);
        }
        if cf.nonce != nonce {
            return self.fail(ScramError::NonceMismatch);
        }
        let auth_message = format!("{auth_prefix},{}", cf.without_proof);
        let client_signature = hmac(&verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&cf.proof, &client_signature);
        let ok = sha256(&client_key).ct_eq(&verifier.stored_key) & Choice::from(u8::from(known));
        if !bool::from(ok) {
            return self.fail(ScramError::AuthenticationFailed);
        }
        let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
        self.state = ServerState::Done { user };
        ServerStep::Final(format!("v={}", B64.encode(server_signature)).into_bytes())
    }

    /// The user client-first named, whatever became of the exchange: a failed proof is a failed
    /// login of this user.
    pub fn claimed_user(&self) -> Option<&str> {
        self.claimed.as_deref()
    }

    /// The authenticated user, once [`ServerStep::Final`] has been returned.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            ServerState::Done { user } => Some(user),
            _ => None,
        }
    }
}

enum ClientState {
    /// client-first is ready; waiting for server-first.
    Start,
    /// client-final sent; waiting for server-final.
    Final {
        server_signature: [u8; KEY_LEN],
    },
    Done,
    Failed,
}

/// The client side of one exchange.
pub struct ScramClient {
    /// SASLprep'ed password.
    password: String,
    nonce: String,
    client_first_bare: String,
    state: ClientState,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("client_first_bare", &self.client_first_bare)
            .finish_non_exhaustive()
    }
}

/// The GS2 header the client sends: no channel binding, no authzid.
const CLIENT_GS2_HEADER: &str = "n,,";

impl ScramClient {
    /// A client for one exchange. `user` and `password` are SASLprep'ed; `nonce` comes from the
    /// caller's randomness (see [`make_nonce`]) and must be printable ASCII without `,`.
    pub fn new(user: &str, password: &str, nonce: &str) -> Result<Self, ScramError> {
        let user = prepare(user)?;
        let password = prepare(password)?;
        if nonce.is_empty() || !nonce.chars().all(is_nonce_char) {
            return Err(ScramError::BadNonce);
        }
        Ok(Self {
            password,
            nonce: nonce.to_owned(),
            client_first_bare: format!("n={},r={nonce}", encode_saslname(&user)),
            state: ClientState::Start,
        })
    }

    /// client-first: `n,,n=user,r=nonce`.
    pub fn client_first(&self) -> Vec<u8> {
        format!("{CLIENT_GS2_HEADER}{}", self.client_first_bare).into_bytes()
    }

    fn fail<T>(&mut self, e: ScramError) -> Result<T, ScramError> {
        self.state = ClientState::Failed;
        Err(e)
    }

    /// Takes server-first; returns client-final with the proof.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ClientState::Start) {
            return self.fail(ScramError::OutOfOrder);
        }
        let sf = match parse_server_first(msg, &self.nonce) {
            Ok(sf) => sf,
            Err(e) => return self.fail(e),
        };
        let salted = salted_password(&self.password, &sf.salt, sf.iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let without_proof = format!("c={},r={}", B64.encode(CLIENT_GS2_HEADER), sf.nonce);
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, sf.message);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        let server_key = hmac(&salted, b"Server Key");
        self.state = ClientState::Final {
            server_signature: hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Takes server-final; succeeds only if the server proved it knows the verifier.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::Final { server_signature } = self.state else {
            return self.fail(ScramError::OutOfOrder);
        };
        let Ok(s) = std::str::from_utf8(msg) else {
            return self.fail(ScramError::Malformed("server-final is not UTF-8"));
        };
        let (first, extensions) = match s.split_once(',') {
            Some((first, rest)) => (first, Some(rest)),
            None => (s, None),
        };
        if let Some(e) = first.strip_prefix("e=") {
            let e: String = e.chars().filter(|c| !c.is_control()).take(200).collect();
            return self.fail(ScramError::ServerError(e));
        }
        let Some(v) = first.strip_prefix("v=") else {
            return self.fail(ScramError::Malformed("server-final has no v= or e="));
        };
        if let Some(ext) = extensions {
            if let Err(e) = check_extensions(ext.split(',')) {
                return self.fail(e);
            }
        }
        let Some(signature) = decode_key(v) else {
            return self.fail(ScramError::Malformed(
                "server-final signature is not 32 octets of base64",
            ));
        };
        if !bool::from(signature.ct_eq(&server_signature)) {
            return self.fail(ScramError::BadServerSignature);
        }
        self.state = ClientState::Done;
        Ok(())
    }

    /// Whether the server has been authenticated (server-final verified).
    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }
}

struct ClientFirst {
    gs2_header: String,
    bare: String,
    user: String,
    nonce: String,
}

/// `gs2-header client-first-message-bare` [RFC 5802 §7].
fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, ScramError> {
    let s = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("client-first is not UTF-8"))?;
    let (flag, rest) = s
        .split_once(',')
        .ok_or(ScramError::Malformed("client-first has no GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBindingNotSupported),
        _ => return Err(ScramError::Malformed("bad GS2 channel binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("client-first has no GS2 header"))?;
    let gs2_header = &s[..s.len() - bare.len()];
    let authzid = if authzid.is_empty() {
        None
    } else {
        let a = authzid
            .strip_prefix("a=")
            .ok_or(ScramError::Malformed("bad GS2 authzid"))?;
        Some(decode_saslname(a)?)
    };

    let mut attrs = bare.split(',');
    let first = attrs.next().unwrap_or_default();
    if first.starts_with("m=") {
        return Err(ScramError::ExtensionNotSupported);
    }
    let user = first
        .strip_prefix("n=")
        .ok_or(ScramError::Malformed("client-first has no n="))?;
    let user = prepare(&decode_saslname(user)?)?;
    if let Some(a) = authzid {
        if prepare(&a)? != user {
            return Err(ScramError::AuthzidNotAllowed);
        }
    }
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed("client-first has no r="))?;
    if nonce.is_empty() || !nonce.chars().all(is_nonce_char) {
        return Err(ScramError::BadNonce);
    }
    check_extensions(attrs)?;
    Ok(ClientFirst {
        gs2_header: gs2_header.to_owned(),
        bare: bare.to_owned(),
        user,
        nonce: nonce.to_owned(),
    })
}

struct ClientFinal<'a> {
    /// Decoded `c=`.
    channel_binding: Vec<u8>,
    nonce: &'a str,
    /// `client-final-message-without-proof`
    without_proof: &'a str,
    proof: [u8; KEY_LEN],
}

/// `channel-binding "," nonce ["," extensions] "," proof` [RFC 5802 §7].
fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let s = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("client-final is not UTF-8"))?;
    let at = s
        .rfind(",p=")
        .ok_or(ScramError::Malformed("client-final has no p="))?;
    let (without_proof, proof) = (&s[..at], &s[at + 3..]);
    let proof = decode_key(proof).ok_or(ScramError::Malformed("client proof is not 32 octets of base64"))?;
    let mut attrs = without_proof.split(',');
    let cb = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(ScramError::Malformed("client-final has no c="))?;
    let channel_binding = B64
        .decode(cb)
        .map_err(|_| ScramError::Malformed("client-final c= is not base64"))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed("client-final has no r="))?;
    check_extensions(attrs)?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

struct ServerFirst<'a> {
    message: &'a str,
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

/// `[reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]` [RFC 5802 §7].
fn parse_server_first<'a>(msg: &'a [u8], client_nonce: &str) -> Result<ServerFirst<'a>, ScramError> {
    let s = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("server-first is not UTF-8"))?;
    let mut attrs = s.split(',');
    let first = attrs.next().unwrap_or_default();
    if first.starts_with("m=") {
        return Err(ScramError::ExtensionNotSupported);
    }
    let nonce = first
        .strip_prefix("r=")
        .ok_or(ScramError::Malformed("server-first has no r="))?;
    if !nonce.chars().all(is_nonce_char) {
        return Err(ScramError::BadNonce);
    }
    if nonce.len() <= client_nonce.len() || !nonce.starts_with(client_nonce) {
        return Err(ScramError::NonceMismatch);
    }
    let salt = attrs
        .next()
        .and_then(|a| a.strip_prefix("s="))
        .ok_or(ScramError::Malformed("server-first has no s="))?;
    let salt = B64
        .decode(salt)
        .map_err(|_| ScramError::Malformed("server-first salt is not base64"))?;
    if salt.is_empty() {
        return Err(ScramError::BadSalt);
    }
    let iterations = attrs
        .next()
        .and_then(|a| a.strip_prefix("i="))
        .ok_or(ScramError::Malformed("server-first has no i="))?;
    if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScramError::Malformed("server-first i= is not a number"));
    }
    let iterations = iterations.parse::<u32>().unwrap_or(u32::MAX);
    check_iterations(iterations)?;
    check_extensions(attrs)?;
    Ok(ServerFirst {
        message: s,
        nonce,
        salt,
        iterations,
    })
}

/// Extension attributes: `ALPHA "=" 1*value-char`, where value-char is any UTF-8 character
/// except `,` (already split off) and NUL. Checked, then ignored.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for a in attrs {
        let mut chars = a.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.next() == Some('=')
            && a.len() > 2
            && !a.contains('\0');
        if !ok {
            return Err(ScramError::Malformed("bad extension attribute"));
        }
    }
    Ok(())
}

/// `printable = %x21-2B / %x2D-7E` [RFC 5802 §7].
fn is_nonce_char(c: char) -> bool {
    matches!(c, '\x21'..='\x7e') && c != ','
}

/// `saslname`: `,` as `=2C`, `=` as `=3D` [RFC 5802 §5.1].
fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// The inverse of [`encode_saslname`]; any other `=` is an error, as is NUL or emptiness. (ABNF
/// literals are case-insensitive, so `=2c` and `=3d` are accepted.)
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    if s.is_empty() {
        return Err(ScramError::Malformed("empty name"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3).unwrap_or_default();
        if escape.eq_ignore_ascii_case("=2C") {
            out.push(',');
        } else if escape.eq_ignore_ascii_case("=3D") {
            out.push('=');
        } else {
            return Err(ScramError::Malformed("bad '=' escape in name"));
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.contains('\0') {
        return Err(ScramError::Malformed("NUL in name"));
    }
    Ok(out)
}

/// SASLprep [RFC 4013]; failure or an empty result is [`ScramError::SaslPrep`].
fn prepare(s: &str) -> Result<String, ScramError> {
    match stringprep::saslprep(s) {
        Ok(p) if !p.is_empty() => Ok(p.into_owned()),
        _ => Err(ScramError::SaslPrep),
    }
}

fn check_iterations(i: u32) -> Result<(), ScramError> {
    if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&i) {
        Ok(())
    } else {
        Err(ScramError::BadIterations(i))
    }
}

fn check_salt(salt: &[u8]) -> Result<(), ScramError> {
    if (1..=MAX_SALT_LEN).contains(&salt.len()) {
        Ok(())
    } else {
        Err(ScramError::BadSalt)
    }
}

/// `Hi(password, salt, i)` = PBKDF2-HMAC-SHA-256 with one output block.
fn salted_password(prepared: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(prepared.as_bytes(), salt, iterations)
}

fn new_hmac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; KEY_LEN] {
    let mut mac = new_hmac(key);
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn sha256(b: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(b).into()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Exactly 32 octets of canonical base64.
fn decode_key(s: &str) -> Option<[u8; KEY_LEN]> {
    B64.decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 7677 §3.
    const USER: &str = "user";
    const PASSWORD: &str = "pencil";
    const C_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const S_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_salt() -> Vec<u8> {
        B64.decode(SALT_B64).unwrap()
    }

    /// Computed once: PBKDF2 with 4096 iterations is slow in unoptimized test builds.
    fn rfc_verifier() -> ScramVerifier {
        static V: std::sync::OnceLock<ScramVerifier> = std::sync::OnceLock::new();
        V.get_or_init(|| ScramVerifier::from_password(PASSWORD, &rfc_salt(), 4096).unwrap())
            .clone()
    }

    fn challenge(step: ServerStep) -> Vec<u8> {
        match step {
            ServerStep::Challenge(c) => c,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// A server that has sent server-first for the RFC exchange.
    fn rfc_server_at_proof() -> ScramServer {
        let mut s = ScramServer::new(S_NONCE);
        assert_eq!(
            s.client_first(CLIENT_FIRST.as_bytes()),
            ServerStep::LookupUser(USER.into())
        );
        assert_eq!(
            challenge(s.verifier(Some(rfc_verifier()))),
            SERVER_FIRST.as_bytes()
        );
        s
    }

    /// A full exchange between our client and our server; returns the server's last step and the
    /// client's verdict on it.
    fn exchange(
        user: &str,
        password: &str,
        stored: Option<&ScramVerifier>,
    ) -> (ServerStep, Option<Result<(), ScramError>>) {
        let mut c = ScramClient::new(user, password, "clientnonce+/=").unwrap();
        let mut s = ScramServer::new("servernonce");
        let looked_up = match s.client_first(&c.client_first()) {
            ServerStep::LookupUser(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(looked_up, stringprep::saslprep(user).unwrap());
        let sf = challenge(s.verifier(stored.cloned()));
        let cf = c.server_first(&sf).unwrap();
        let last = s.client_final(&cf);
        let verdict = match &last {
            ServerStep::Final(m) => Some(c.server_final(m)),
            _ => None,
        };
        (last, verdict)
    }

    #[test]
    fn rfc7677_vector_client() {
        let mut c = ScramClient::new(USER, PASSWORD, C_NONCE).unwrap();
        assert_eq!(c.client_first(), CLIENT_FIRST.as_bytes());
        assert_eq!(
            c.server_first(SERVER_FIRST.as_bytes()).unwrap(),
            CLIENT_FINAL.as_bytes()
        );
        assert!(!c.is_done());
        c.server_final(SERVER_FINAL.as_bytes()).unwrap();
        assert!(c.is_done());
    }

    #[test]
    fn rfc7677_vector_server() {
        let mut s = rfc_server_at_proof();
        assert_eq!(s.user(), None);
        assert_eq!(
            s.client_final(CLIENT_FINAL.as_bytes()),
            ServerStep::Final(SERVER_FINAL.as_bytes().to_vec())
        );
        assert_eq!(s.user(), Some(USER));
        // Nothing after the end.
        assert_eq!(
            s.client_final(CLIENT_FINAL.as_bytes()),
            ServerStep::Failed(ScramError::OutOfOrder)
        );
        assert_eq!(s.user(), None);
    }

    #[test]
    fn rfc7677_vector_through_stored_form() {
        let v = ScramVerifier::from_bytes(&rfc_verifier().to_bytes()).unwrap();
        let mut s = ScramServer::new(S_NONCE);
        s.client_first(CLIENT_FIRST.as_bytes());
        assert_eq!(challenge(s.verifier(Some(v))), SERVER_FIRST.as_bytes());
        assert_eq!(
            s.client_final(CLIENT_FINAL.as_bytes()),
            ServerStep::Final(SERVER_FINAL.as_bytes().to_vec())
        );
    }

    #[test]
    fn pbkdf2_matches_rfc7914() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64), first 32 octets.
        let got = salted_password("passwd", b"salt", 1);
        let expected = [
            0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f, 0xec, 0x16, 0x91, 0xc2, 0x25, 0x44, 0xb6, 0x05,
            0xf9, 0x41, 0x85, 0x21, 0x6d, 0xde, 0x04, 0x65, 0xe6, 0x8b, 0x9d, 0x57, 0xc2, 0x0d, 0xac, 0xbc,
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn client_and_server_agree() {
        for (user, password) in [
            ("user", "pencil"),
            ("user@example.org", "correct horse battery staple"),
            ("jürgen", "pässwörd"),
            ("a,b=c", "x,y=z"),
            ("=2C", "=3D"),
            ("日本", "パスワード"),
            ("u", &"p".repeat(1000)),
        ] {
            let v = ScramVerifier::from_password(password, b"0123456789abcdef", 4096).unwrap();
            let (last, verdict) = exchange(user, password, Some(&v));
            assert!(matches!(last, ServerStep::Final(_)), "{user}: {last:?}");
            assert_eq!(verdict, Some(Ok(())), "{user}");
        }
    }

    #[test]
    fn wrong_password_fails_at_proof() {
        let v = ScramVerifier::from_password("pencil", b"0123456789abcdef", 4096).unwrap();
        let (last, _) = exchange("user", "pencil2", Some(&v));
        assert_eq!(last, ServerStep::Failed(ScramError::AuthenticationFailed));
    }

    #[test]
    fn saslprep_applies_to_passwords() {
        // RFC 4013 §3: "I<U+00AD>X" and "<U+2168>" both prepare to "IX".
        let v = ScramVerifier::from_password("IX", b"salt", 4096).unwrap();
        for p in ["I\u{00AD}X", "\u{2168}", "IX"] {
            assert_eq!(exchange("user", p, Some(&v)).1, Some(Ok(())), "{p:?}");
            assert!(verify_password(&v, p), "{p:?}");
        }
        assert!(!verify_password(&v, "ix"));
        for bad in ["", "\u{00AD}", "a\u{0007}b"] {
            assert_eq!(
                ScramVerifier::from_password(bad, b"salt", 4096).unwrap_err(),
                ScramError::SaslPrep,
                "{bad:?}"
            );
            assert!(!verify_password(&v, bad));
            assert_eq!(
                ScramClient::new("user", bad, "n").unwrap_err(),
                ScramError::SaslPrep
            );
        }
        assert_eq!(ScramClient::new("", "p", "n").unwrap_err(), ScramError::SaslPrep);
        assert_eq!(
            ScramClient::new("a\u{0007}", "p", "n").unwrap_err(),
            ScramError::SaslPrep
        );
    }

    #[test]
    fn bad_proof_every_bit() {
        let good = CLIENT_FINAL.rsplit_once(",p=").unwrap();
        let proof = decode_key(good.1).unwrap();
        for i in [0, 1, 15, 16, 31] {
            for bit in [0, 3, 7] {
                let mut bad = proof;
                bad[i] ^= 1 << bit;
                let msg = format!("{},p={}", good.0, B64.encode(bad));
                let mut s = rfc_server_at_proof();
                assert_eq!(
                    s.client_final(msg.as_bytes()),
                    ServerStep::Failed(ScramError::AuthenticationFailed)
                );
                assert_eq!(s.user(), None);
            }
        }
    }

    #[test]
    fn server_checks_nonce_and_channel_binding() {
        let proof = CLIENT_FINAL.rsplit_once(",p=").unwrap().1;
        let full = format!("{C_NONCE}{S_NONCE}");
        let cases = [
            (format!("c=biws,r={C_NONCE},p={proof}"), ScramError::NonceMismatch),
            (format!("c=biws,r={full}x,p={proof}"), ScramError::NonceMismatch),
            (
                format!("c=biws,r={},p={proof}", &full[1..]),
                ScramError::NonceMismatch,
            ),
            (
                format!("c=eSws,r={full},p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
            (
                format!("c=,r={full},p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
            (
                format!("c=cD10bHMtdW5pcXVlLCw=,r={full},p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
            (
                format!("c=bml3,r={full},p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
        ];
        for (msg, err) in cases {
            let mut s = rfc_server_at_proof();
            assert_eq!(s.client_final(msg.as_bytes()), ServerStep::Failed(err), "{msg}");
        }
    }

    #[test]
    fn server_accepts_extensions_and_y_flag() {
        // An extension between nonce and proof is part of AuthMessage; a proof computed without
        // it fails, but the syntax is accepted.
        let (head, proof) = CLIENT_FINAL.rsplit_once(",p=").unwrap();
        let mut s = rfc_server_at_proof();
        assert_eq!(
            s.client_final(format!("{head},x=ext,p={proof}").as_bytes()),
            ServerStep::Failed(ScramError::AuthenticationFailed)
        );

        // "y,," is accepted, and then c= must be base64("y,,").
        let mut s = ScramServer::new("sn");
        assert_eq!(
            s.client_first(b"y,,n=user,r=cn,x=1"),
            ServerStep::LookupUser("user".into())
        );
        let sf = challenge(s.verifier(Some(rfc_verifier())));
        assert!(sf.starts_with(b"r=cnsn,s="));
        let mut c = ScramClient::new(USER, PASSWORD, "cn").unwrap();
        let cf = c.server_first(&sf).unwrap();
        // Our client sends "n,,"; the server remembers "y,,".
        assert_eq!(
            s.client_final(&cf),
            ServerStep::Failed(ScramError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn y_flag_full_exchange() {
        // A client that says "y,," and computes the proof over c=eSws succeeds.
        let salt = b"0123456789abcdef";
        let v = ScramVerifier::from_password(PASSWORD, salt, 4096).unwrap();
        let mut s = ScramServer::new("sn");
        s.client_first(b"y,,n=user,r=cn");
        let sf = String::from_utf8(challenge(s.verifier(Some(v.clone())))).unwrap();
        let salted = salted_password(PASSWORD, salt, 4096);
        let client_key = hmac(&salted, b"Client Key");
        let without_proof = "c=eSws,r=cnsn";
        let auth = format!("n=user,r=cn,{sf},{without_proof}");
        let proof = xor(&client_key, &hmac(&sha256(&client_key), auth.as_bytes()));
        let cf = format!("{without_proof},p={}", B64.encode(proof));
        let expected = format!(
            "v={}",
            B64.encode(hmac(&hmac(&salted, b"Server Key"), auth.as_bytes()))
        );
        assert_eq!(
            s.client_final(cf.as_bytes()),
            ServerStep::Final(expected.into_bytes())
        );
        assert_eq!(s.user(), Some("user"));
    }

    #[test]
    fn server_refuses_bad_client_first() {
        let cases: &[(&[u8], ScramError)] = &[
            (
                b"p=tls-unique,,n=user,r=abc",
                ScramError::ChannelBindingNotSupported,
            ),
            (b"n,,m=foo,n=user,r=abc", ScramError::ExtensionNotSupported),
            (b"n,a=other,n=user,r=abc", ScramError::AuthzidNotAllowed),
            (b"", ScramError::Malformed("client-first has no GS2 header")),
            (b"n", ScramError::Malformed("client-first has no GS2 header")),
            (b"n,", ScramError::Malformed("client-first has no GS2 header")),
            (b"n,,", ScramError::Malformed("client-first has no n=")),
            (
                b"x,,n=user,r=abc",
                ScramError::Malformed("bad GS2 channel binding flag"),
            ),
            (
                b"N,,n=user,r=abc",
                ScramError::Malformed("bad GS2 channel binding flag"),
            ),
            (b"n,x,n=user,r=abc", ScramError::Malformed("bad GS2 authzid")),
            (b"n,,n=user", ScramError::Malformed("client-first has no r=")),
            (
                b"n,,r=abc,n=user",
                ScramError::Malformed("client-first has no n="),
            ),
            (b"n,,n=,r=abc", ScramError::Malformed("empty name")),
            (
                b"n,,n=us=er,r=abc",
                ScramError::Malformed("bad '=' escape in name"),
            ),
            (
                b"n,,n=user=2,r=abc",
                ScramError::Malformed("bad '=' escape in name"),
            ),
            (b"n,,n=us\0er,r=abc", ScramError::Malformed("NUL in name")),
            (b"n,,n=user,r=", ScramError::BadNonce),
            (b"n,,n=user,r=a b", ScramError::BadNonce),
            (b"n,,n=user,r=\xc3\xa9", ScramError::BadNonce),
            (
                b"n,,n=user,r=abc,",
                ScramError::Malformed("bad extension attribute"),
            ),
            (
                b"n,,n=user,r=abc,xy",
                ScramError::Malformed("bad extension attribute"),
            ),
            (
                b"n,,n=user,r=abc,x=",
                ScramError::Malformed("bad extension attribute"),
            ),
            (
                b"n,,n=user,r=abc,1=a",
                ScramError::Malformed("bad extension attribute"),
            ),
            (
                b"n,,n=\xff,r=abc",
                ScramError::Malformed("client-first is not UTF-8"),
            ),
            (b"n,,n=\x07,r=abc", ScramError::SaslPrep),
            (b"n,,n=\xc2\xad,r=abc", ScramError::SaslPrep),
        ];
        for (msg, err) in cases {
            let mut s = ScramServer::new("sn");
            assert_eq!(
                s.client_first(msg),
                ServerStep::Failed(err.clone()),
                "{}",
                String::from_utf8_lossy(msg)
            );
            assert_eq!(s.verifier(None), ServerStep::Failed(ScramError::OutOfOrder));
        }
    }

    #[test]
    fn authzid_equal_to_user_is_accepted() {
        let mut s = ScramServer::new("sn");
        assert_eq!(
            s.client_first(b"n,a=a=2Cb,n=a=2cb,r=abc"),
            ServerStep::LookupUser("a,b".into())
        );
        let mut s = ScramServer::new("sn");
        // Both sides prepared: U+2168 → "IX".
        assert_eq!(
            s.client_first("n,a=\u{2168},n=IX,r=abc".as_bytes()),
            ServerStep::LookupUser("IX".into())
        );
    }

    #[test]
    fn names_with_comma_and_equals_are_escaped() {
        let c = ScramClient::new("a,b=c,=", "p", "nonce").unwrap();
        assert_eq!(c.client_first(), b"n,,n=a=2Cb=3Dc=2C=3D,r=nonce");
        let mut s = ScramServer::new("sn");
        assert_eq!(
            s.client_first(&c.client_first()),
            ServerStep::LookupUser("a,b=c,=".into())
        );
        assert_eq!(encode_saslname("=2C"), "=3D2C");
        assert_eq!(decode_saslname("=3D2C").unwrap(), "=2C");
        assert_eq!(decode_saslname("=3d=2c").unwrap(), "=,");
        assert!(decode_saslname("=").is_err());
        assert!(decode_saslname("a=3").is_err());
        assert!(decode_saslname("=é1").is_err());
    }

    #[test]
    fn unknown_user_is_indistinguishable_until_the_proof() {
        let salt = [7u8; DECOY_SALT_LEN];
        let real = ScramVerifier::from_password(PASSWORD, &salt, DEFAULT_ITERATIONS).unwrap();
        let shape = |sf: &[u8]| {
            let s = std::str::from_utf8(sf).unwrap();
            let parts: Vec<&str> = s.split(',').collect();
            assert_eq!(parts.len(), 3);
            let salt_len = B64.decode(parts[1].strip_prefix("s=").unwrap()).unwrap().len();
            (parts[0].len(), salt_len, parts[2].to_owned())
        };
        // The known user with a wrong password and an unknown user with any password: the same
        // challenge shape and the same failure at the same stage.
        let mut outcomes = Vec::new();
        for (user, verifier) in [("user", Some(&real)), ("nobody", None)] {
            let mut c = ScramClient::new(user, "wrong", "cnonce").unwrap();
            let mut s = ScramServer::new("snonce").with_decoy_secret(b"server secret");
            assert!(matches!(
                s.client_first(&c.client_first()),
                ServerStep::LookupUser(_)
            ));
            let sf = challenge(s.verifier(verifier.cloned()));
            let cf = c.server_first(&sf).unwrap();
            outcomes.push((shape(&sf), s.client_final(&cf)));
        }
        assert_eq!(outcomes[0], outcomes[1]);
        assert_eq!(
            outcomes[0].1,
            ServerStep::Failed(ScramError::AuthenticationFailed)
        );

        // Even the right password for the real user's salt cannot pass as an unknown user.
        let (last, _) = exchange("nobody", PASSWORD, None);
        assert_eq!(last, ServerStep::Failed(ScramError::AuthenticationFailed));
    }

    #[test]
    fn decoy_salt_is_stable_with_a_secret() {
        let first = |user: &str, nonce: &str, secret: Option<&[u8]>| {
            let mut s = ScramServer::new(nonce);
            if let Some(k) = secret {
                s = s.with_decoy_secret(k);
            }
            s.client_first(format!("n,,n={user},r=c").as_bytes());
            let sf = String::from_utf8(challenge(s.verifier(None))).unwrap();
            sf.split(',').nth(1).unwrap().to_owned()
        };
        let k: &[u8] = b"secret";
        assert_eq!(first("a", "n1", Some(k)), first("a", "n2", Some(k)));
        assert_ne!(first("a", "n1", Some(k)), first("b", "n1", Some(k)));
        assert_ne!(first("a", "n1", Some(k)), first("a", "n1", Some(b"other")));
        // Without a secret it follows the nonce.
        assert_ne!(first("a", "n1", None), first("a", "n2", None));
        let d = ScramVerifier::decoy("a", k);
        assert_eq!(d.salt().len(), DECOY_SALT_LEN);
        assert_eq!(d.iterations(), DEFAULT_ITERATIONS);
        assert!(!verify_password(&d, "a"));
        assert!(!verify_password(&d, "secret"));
        assert_eq!(
            ScramVerifier::from_bytes(&d.to_bytes()).unwrap().to_bytes(),
            d.to_bytes()
        );
    }

    #[test]
    fn client_refuses_bad_server_first() {
        let cases: &[(&str, ScramError)] = &[
            ("r=cnsn,s=c2FsdA==,i=4095", ScramError::BadIterations(4095)),
            ("r=cnsn,s=c2FsdA==,i=0", ScramError::BadIterations(0)),
            (
                "r=cnsn,s=c2FsdA==,i=1000001",
                ScramError::BadIterations(1_000_001),
            ),
            (
                "r=cnsn,s=c2FsdA==,i=99999999999999",
                ScramError::BadIterations(u32::MAX),
            ),
            (
                "r=cnsn,s=c2FsdA==,i=-4096",
                ScramError::Malformed("server-first i= is not a number"),
            ),
            (
                "r=cnsn,s=c2FsdA==,i=+4096",
                ScramError::Malformed("server-first i= is not a number"),
            ),
            (
                "r=cnsn,s=c2FsdA==,i=",
                ScramError::Malformed("server-first i= is not a number"),
            ),
            (
                "r=cnsn,s=c2FsdA==",
                ScramError::Malformed("server-first has no i="),
            ),
            (
                "r=cnsn,i=4096,s=c2FsdA==",
                ScramError::Malformed("server-first has no s="),
            ),
            (
                "r=cnsn,s=c2FsdA,i=4096",
                ScramError::Malformed("server-first salt is not base64"),
            ),
            ("r=cnsn,s=,i=4096", ScramError::BadSalt),
            ("r=cn,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            ("r=xcnsn,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            ("r=c,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            ("r=,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            ("r=cn s,s=c2FsdA==,i=4096", ScramError::BadNonce),
            ("m=x,r=cnsn,s=c2FsdA==,i=4096", ScramError::ExtensionNotSupported),
            (
                "s=c2FsdA==,r=cnsn,i=4096",
                ScramError::Malformed("server-first has no r="),
            ),
            ("", ScramError::Malformed("server-first has no r=")),
            (
                "r=cnsn,s=c2FsdA==,i=4096,",
                ScramError::Malformed("bad extension attribute"),
            ),
            ("e=other-error", ScramError::Malformed("server-first has no r=")),
        ];
        for (msg, err) in cases {
            let mut c = ScramClient::new("user", "pencil", "cn").unwrap();
            assert_eq!(c.server_first(msg.as_bytes()).unwrap_err(), *err, "{msg}");
            assert_eq!(
                c.server_final(SERVER_FINAL.as_bytes()),
                Err(ScramError::OutOfOrder)
            );
            assert!(!c.is_done());
        }
        let mut c = ScramClient::new("user", "pencil", "cn").unwrap();
        assert_eq!(
            c.server_first(b"r=cn\xff,s=c2FsdA==,i=4096").unwrap_err(),
            ScramError::Malformed("server-first is not UTF-8")
        );
        // Extensions after the iteration count are ignored.
        let mut c = ScramClient::new("user", "pencil", "cn").unwrap();
        assert!(c.server_first(b"r=cnsn,s=c2FsdA==,i=4096,x=y").is_ok());
    }

    #[test]
    fn client_checks_server_final() {
        let at_final = || {
            let mut c = ScramClient::new(USER, PASSWORD, C_NONCE).unwrap();
            c.server_first(SERVER_FIRST.as_bytes()).unwrap();
            c
        };
        let sig = decode_key(SERVER_FINAL.strip_prefix("v=").unwrap()).unwrap();
        for i in [0, 13, 31] {
            let mut bad = sig;
            bad[i] ^= 0x80;
            let mut c = at_final();
            assert_eq!(
                c.server_final(format!("v={}", B64.encode(bad)).as_bytes()),
                Err(ScramError::BadServerSignature)
            );
            assert!(!c.is_done());
        }
        let cases: &[(&[u8], ScramError)] = &[
            (
                b"e=invalid-proof",
                ScramError::ServerError("invalid-proof".into()),
            ),
            (
                b"e=other-error,x=1",
                ScramError::ServerError("other-error".into()),
            ),
            (b"e=a\r\nb", ScramError::ServerError("ab".into())),
            (b"", ScramError::Malformed("server-final has no v= or e=")),
            (b"x=1", ScramError::Malformed("server-final has no v= or e=")),
            (
                b"v=",
                ScramError::Malformed("server-final signature is not 32 octets of base64"),
            ),
            (
                b"v=AAAA",
                ScramError::Malformed("server-final signature is not 32 octets of base64"),
            ),
            (
                b"v=!!!",
                ScramError::Malformed("server-final signature is not 32 octets of base64"),
            ),
            (b"\xff", ScramError::Malformed("server-final is not UTF-8")),
        ];
        for (msg, err) in cases {
            let mut c = at_final();
            assert_eq!(
                c.server_final(msg),
                Err(err.clone()),
                "{}",
                String::from_utf8_lossy(msg)
            );
            assert!(!c.is_done());
            // A failed client stays failed.
            assert_eq!(
                c.server_final(SERVER_FINAL.as_bytes()),
                Err(ScramError::OutOfOrder)
            );
        }
        let mut c = at_final();
        assert_eq!(
            c.server_final(format!("{SERVER_FINAL},").as_bytes()),
            Err(ScramError::Malformed("bad extension attribute"))
        );
        let mut c = at_final();
        c.server_final(format!("{SERVER_FINAL},x=ext").as_bytes())
            .unwrap();
        assert!(c.is_done());
    }

    #[test]
    fn out_of_order() {
        let mut s = ScramServer::new("sn");
        assert_eq!(s.verifier(None), ServerStep::Failed(ScramError::OutOfOrder));
        let mut s = ScramServer::new("sn");
        assert_eq!(
            s.client_final(CLIENT_FINAL.as_bytes()),
            ServerStep::Failed(ScramError::OutOfOrder)
        );
        let mut s = ScramServer::new(S_NONCE);
        s.client_first(CLIENT_FIRST.as_bytes());
        assert_eq!(
            s.client_first(CLIENT_FIRST.as_bytes()),
            ServerStep::Failed(ScramError::OutOfOrder)
        );
        let mut s = rfc_server_at_proof();
        assert_eq!(s.verifier(None), ServerStep::Failed(ScramError::OutOfOrder));
        assert_eq!(
            s.client_final(CLIENT_FINAL.as_bytes()),
            ServerStep::Failed(ScramError::OutOfOrder)
        );

        let mut c = ScramClient::new(USER, PASSWORD, C_NONCE).unwrap();
        assert_eq!(
            c.server_final(SERVER_FINAL.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
        let mut c = ScramClient::new(USER, PASSWORD, C_NONCE).unwrap();
        c.server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            c.server_first(SERVER_FIRST.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn nonces() {
        for bad in ["", "a,b", "a b", "é", "a\0"] {
            assert_eq!(
                ScramClient::new("u", "p", bad).unwrap_err(),
                ScramError::BadNonce,
                "{bad:?}"
            );
        }
        assert!(ScramClient::new("u", "p", "!~+/=").is_ok());
        // The server drops what cannot be in a nonce.
        let mut s = ScramServer::new("a, b\né~");
        s.client_first(b"n,,n=u,r=c");
        assert!(challenge(s.verifier(None)).starts_with(b"r=cab~,s="));
        let n = make_nonce(&[0xfb; 18]);
        assert_eq!(n.len(), 24);
        assert!(n.chars().all(is_nonce_char));
        assert!(ScramClient::new("u", "p", &n).is_ok());
    }

    #[test]
    fn stored_format() {
        let v = rfc_verifier();
        let b = v.to_bytes();
        assert_eq!(b.len(), HEADER_LEN + 16 + 2 * KEY_LEN);
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..5], &4096u32.to_be_bytes());
        assert_eq!(b[5], 16);
        assert_eq!(&b[6..22], rfc_salt().as_slice());
        // Deterministic and round-tripping.
        assert_eq!(
            ScramVerifier::from_password(PASSWORD, &rfc_salt(), 4096)
                .unwrap()
                .to_bytes(),
            b
        );
        let back = ScramVerifier::from_bytes(&b).unwrap();
        assert_eq!(back.to_bytes(), b);
        assert_eq!(back.salt(), rfc_salt().as_slice());
        assert_eq!(back.iterations(), 4096);
        // StoredKey and ServerKey as RFC 5802 defines them.
        let salted = salted_password(PASSWORD, &rfc_salt(), 4096);
        assert_eq!(&b[22..54], &sha256(&hmac(&salted, b"Client Key")));
        assert_eq!(&b[54..], &hmac(&salted, b"Server Key"));
        // The password is not in it.
        assert!(!b.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()));
        // Debug shows no key material.
        let dbg = format!("{v:?}");
        assert_eq!(dbg, "ScramVerifier { iterations: 4096, salt_len: 16, .. }");

        assert_eq!(
            ScramVerifier::from_bytes(&[]).unwrap_err(),
            ScramError::BadLength(0)
        );
        assert_eq!(
            ScramVerifier::from_bytes(&b[..5]).unwrap_err(),
            ScramError::BadLength(5)
        );
        assert_eq!(
            ScramVerifier::from_bytes(&b[..b.len() - 1]).unwrap_err(),
            ScramError::BadLength(b.len() - 1)
        );
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(
            ScramVerifier::from_bytes(&longer).unwrap_err(),
            ScramError::BadLength(b.len() + 1)
        );
        let mut v2 = b.clone();
        v2[0] = 2;
        assert_eq!(
            ScramVerifier::from_bytes(&v2).unwrap_err(),
            ScramError::UnknownVersion(2)
        );
        let mut weak = b.clone();
        weak[1..5].copy_from_slice(&4095u32.to_be_bytes());
        assert_eq!(
            ScramVerifier::from_bytes(&weak).unwrap_err(),
            ScramError::BadIterations(4095)
        );
        let mut no_salt = vec![1, 0, 0, 16, 0, 0];
        no_salt.extend_from_slice(&[0; 64]);
        assert_eq!(
            ScramVerifier::from_bytes(&no_salt).unwrap_err(),
            ScramError::BadSalt
        );
        // Longest salt.
        let long = ScramVerifier::from_password("p", &[9; MAX_SALT_LEN], 4096).unwrap();
        let lb = long.to_bytes();
        assert_eq!(lb.len(), HEADER_LEN + MAX_SALT_LEN + 64);
        assert_eq!(ScramVerifier::from_bytes(&lb).unwrap().to_bytes(), lb);
        assert!(verify_password(&ScramVerifier::from_bytes(&lb).unwrap(), "p"));
    }

    #[test]
    fn from_password_bounds() {
        let e = |p: &str, s: &[u8], i| ScramVerifier::from_password(p, s, i).unwrap_err();
        assert_eq!(e("p", b"s", 4095), ScramError::BadIterations(4095));
        assert_eq!(e("p", b"s", 0), ScramError::BadIterations(0));
        assert_eq!(
            e("p", b"s", MAX_ITERATIONS + 1),
            ScramError::BadIterations(MAX_ITERATIONS + 1)
        );
        assert_eq!(e("p", b"", 4096), ScramError::BadSalt);
        assert_eq!(e("p", &[0; MAX_SALT_LEN + 1], 4096), ScramError::BadSalt);
        assert_eq!(
            ScramVerifier::from_password("p", b"s", 5000)
                .unwrap()
                .iterations(),
            5000
        );
    }

    #[test]
    fn verify_password_works() {
        let v = rfc_verifier();
        assert!(verify_password(&v, PASSWORD));
        assert!(!verify_password(&v, "pencil "));
        assert!(!verify_password(&v, "Pencil"));
        assert!(!verify_password(&v, ""));
        // Same password, other salt: another verifier.
        let other = ScramVerifier::from_password(PASSWORD, b"other salt", 4096).unwrap();
        assert_ne!(other.to_bytes(), v.to_bytes());
        assert!(verify_password(&other, PASSWORD));
    }

    #[test]
    fn truncations_and_mutations_never_panic() {
        for cut in 0..CLIENT_FIRST.len() {
            let mut s = ScramServer::new(S_NONCE);
            assert!(matches!(
                s.client_first(&CLIENT_FIRST.as_bytes()[..cut]),
                ServerStep::Failed(_) | ServerStep::LookupUser(_)
            ));
        }
        for cut in 0..CLIENT_FINAL.len() {
            let mut s = rfc_server_at_proof();
            assert!(matches!(
                s.client_final(&CLIENT_FINAL.as_bytes()[..cut]),
                ServerStep::Failed(_)
            ));
            assert_eq!(s.user(), None);
        }
        for i in 0..CLIENT_FINAL.len() {
            for x in [0u8, b',', b'=', 0xff, 0x80] {
                let mut m = CLIENT_FINAL.as_bytes().to_vec();
                if m[i] == x {
                    continue;
                }
                m[i] = x;
                let mut s = rfc_server_at_proof();
                assert!(matches!(s.client_final(&m), ServerStep::Failed(_)), "{i} {x}");
            }
        }
        for cut in 0..SERVER_FIRST.len() {
            let mut c = ScramClient::new(USER, PASSWORD, C_NONCE).unwrap();
            assert!(c.server_first(&SERVER_FIRST.as_bytes()[..cut]).is_err());
        }
        for cut in 0..SERVER_FINAL.len() {
            let mut c = ScramClient::new(USER, PASSWORD, C_NONCE).unwrap();
            c.server_first(SERVER_FIRST.as_bytes()).unwrap();
            assert!(c.server_final(&SERVER_FINAL.as_bytes()[..cut]).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_client_first_never_panics(msg in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut s = ScramServer::new("sn");
            if let ServerStep::LookupUser(_) = s.client_first(&msg) {
                let _ = s.verifier(None);
            }
        }

        #[test]
        fn random_client_first_text_never_panics(msg in "[nyp,=a-z0-9\u{e9}\u{2168}\u{ad}]{0,40}") {
            let mut s = ScramServer::new("sn");
            let _ = s.client_first(msg.as_bytes());
        }

        #[test]
        fn random_client_final_never_panics(msg in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut s = rfc_server_at_proof();
            prop_assert!(matches!(s.client_final(&msg), ServerStep::Failed(_)));
            prop_assert_eq!(s.user(), None);
        }

        #[test]
        fn random_client_final_text_never_panics(tail in "[cbrpws=,A-Za-z0-9+/]{0,80}") {
            let mut s = rfc_server_at_proof();
            let msg = format!("c=biws,r={C_NONCE}{S_NONCE}{tail}");
            prop_assert!(matches!(s.client_final(msg.as_bytes()), ServerStep::Failed(_)));
        }

        #[test]
        fn random_server_messages_never_panic(
            first in proptest::collection::vec(any::<u8>(), 0..120),
            last in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut c = ScramClient::new(USER, PASSWORD, C_NONCE).unwrap();
            prop_assert!(c.server_first(&first).is_err());
            let mut c = ScramClient::new(USER, PASSWORD, C_NONCE).unwrap();
            c.server_first(SERVER_FIRST.as_bytes()).unwrap();
            prop_assert!(c.server_final(&last).is_err());
            prop_assert!(!c.is_done());
        }

        #[test]
        fn random_verifier_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(v) = ScramVerifier::from_bytes(&b) {
                prop_assert_eq!(v.to_bytes(), b);
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(SCHEME, "scram-sha-256");
        assert_eq!(MECHANISM, "SCRAM-SHA-256");
        assert_eq!(DEFAULT_ITERATIONS, 4096);
    }
}
