//! Key files: how a node finds its keys, notices new ones, and how tsc makes and hands them out.
//!
//! A node's keys live in one directory (`--key-dir`, `TS_KEY_DIR`), a file per kind, one hex
//! key per line, preferred key first (see [`crate::core::keyring`]):
//!
//! | file | what | who gets it |
//! | --- | --- | --- |
//! | `leader.key` | Ed25519 seeds of the leader key | servers |
//! | `leader.pub` | Ed25519 public leader keys | everyone |
//! | `replica.key` | HMAC keys of the control messages | servers |
//! | `cluster.key` | cluster secrets, from which client keys derive | servers |
//! | `client.key` | this client's own HMAC keys, a line `<kid> <hex key>` each | that client |
//! | `client.id` | this client's id (the UUID its keys derive from) | that client |
//! | `operator.token` | operator tokens, one per line | servers |
//! | `swarm.keys` | a swarm's clients, a line `<id> <kid> <hex key>` each (several lines of one id: its keys, preferred first) | a swarm (`ts-client --swarm`) |
//!
//! Files are written 0600 in directories 0700. A node re-reads its directory when a file in it
//! changes ([`KeySource`]), so keys are rotated without restarting anything: tsc first adds the
//! new keys everywhere as accepted, then makes them preferred, then drops the old ones
//! ([`rotate`]).

use crate::core::auth::{random_key, MacKey, SignKey, VerifyKey, KEY_LEN};
use crate::core::keyring::{format_keys, parse_keys, KeyRing};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};
use uuid::Uuid;

pub const LEADER_KEY: &str = "leader.key";
pub const LEADER_PUB: &str = "leader.pub";
pub const REPLICA_KEY: &str = "replica.key";
pub const CLUSTER_KEY: &str = "cluster.key";
pub const CLIENT_KEY: &str = "client.key";
pub const OPERATOR_TOKEN: &str = "operator.token";
pub const SWARM_KEYS: &str = "swarm.keys";
/// A client's id, beside the key derived from it (not a key: not watched for changes).
pub const CLIENT_ID: &str = "client.id";
const FILES: [&str; 7] = [
    LEADER_KEY,
    LEADER_PUB,
    REPLICA_KEY,
    CLUSTER_KEY,
    CLIENT_KEY,
    OPERATOR_TOKEN,
    SWARM_KEYS,
];

/// How often a node looks for changed key files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn keys_in(dir: &Path, file: &str) -> Result<Vec<[u8; KEY_LEN]>> {
    let path = dir.join(file);
    match read_opt(&path)? {
        Some(t) => parse_keys(&t).map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
        None => Ok(Vec::new()),
    }
}

/// Reads every key file in `dir` (missing files are empty lists).
pub fn load(dir: &Path) -> Result<KeyRing> {
    let leader: Vec<SignKey> = keys_in(dir, LEADER_KEY)?
        .into_iter()
        .map(SignKey::from_seed)
        .collect();
    let leader_public = keys_in(dir, LEADER_PUB)?
        .iter()
        .map(|b| {
            VerifyKey::from_bytes(b).ok_or_else(|| {
                Error::Config(format!(
                    "{}: not a usable Ed25519 public key (not a point, not canonical, or of small order)",
                    dir.join(LEADER_PUB).display()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let macs = |file| -> Result<Vec<MacKey>> {
        Ok(keys_in(dir, file)?.into_iter().map(MacKey::new).collect())
    };
    let cluster = macs(CLUSTER_KEY)?;
    // A client's keys are named after the cluster secret they derive from: the file's lines
    // are `<kid> <hex>`, as tsc writes them.
    let client = match read_opt(&dir.join(CLIENT_KEY))? {
        Some(t) => parse_client_keys(&t)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.join(CLIENT_KEY).display())))?,
        None => Vec::new(),
    };
    let operator = read_opt(&dir.join(OPERATOR_TOKEN))?
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let swarm = match read_opt(&dir.join(SWARM_KEYS))? {
        Some(t) => parse_swarm_keys(&t)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.join(SWARM_KEYS).display())))?,
        None => Vec::new(),
    };
    Ok(KeyRing {
        leader,
        leader_public,
        replica: macs(REPLICA_KEY)?,
        cluster,
        client,
        operator,
        swarm,
    })
}

/// A swarm's `swarm.keys`: `<id> <kid> <hex key>` lines; an id's lines are its keys, preferred
/// first; ids keep the order of their first line.
pub fn parse_swarm_keys(text: &str) -> std::result::Result<Vec<(Uuid, Vec<MacKey>)>, String> {
    let mut out: Vec<(Uuid, Vec<MacKey>)> = Vec::new();
    let mut at = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, rest) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {}: a swarm key line is `<id> <kid> <hex key>`", n + 1))?;
        let id: Uuid = id
            .parse()
            .map_err(|_| format!("line {}: not a UUID: {id:?}", n + 1))?;
        let mut key = parse_client_keys(rest).map_err(|e| format!("line {}: {e}", n + 1))?;
        let i = *at.entry(id).or_insert_with(|| {
            out.push((id, Vec::new()));
            out.len() - 1
        });
        out[i].1.append(&mut key);
    }
    Ok(out)
}

pub fn parse_client_keys(text: &str) -> std::result::Result<Vec<MacKey>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (kid, hex) = l
                .split_once(' ')
                .filter(|(kid, _)| crate::core::auth::is_kid(kid))
                .ok_or("a client key line is `<kid> <hex key>`, the kid 8 lowercase hex digits")?;
            let key = parse_keys(hex)?
                .pop()
                .ok_or("a client key line is `<kid> <hex key>`")?;
            Ok(MacKey::with_kid(kid.to_string(), key))
        })
        .collect()
}

/// A node's keys, re-read when its key files change.
#[derive(Clone)]
pub struct KeySource {
    dir: Option<PathBuf>,
    current: Arc<RwLock<Arc<KeyRing>>>,
    stamp: Arc<RwLock<Vec<Option<SystemTime>>>>,
}

impl KeySource {
    /// Loads `dir`'s keys and checks them with `check` (what this kind of node needs).
    pub fn open(
        dir: &Path,
        check: fn(&KeyRing) -> std::result::Result<(), crate::core::keyring::MissingKey>,
    ) -> Result<Self> {
        let ring = load(dir)?;
        check(&ring).map_err(|e| {
            Error::Config(format!(
                "{}: {e} (tsc init makes the keys; give the node its key directory)",
                dir.display()
            ))
        })?;
        Ok(KeySource {
            dir: Some(dir.to_path_buf()),
            stamp: Arc::new(RwLock::new(mtimes(dir))),
            current: Arc::new(RwLock::new(Arc::new(ring))),
        })
    }

    /// Fixed keys that never reload (tests, benchmarks, tsc's own use).
    pub fn fixed(ring: KeyRing) -> Self {
        KeySource {
            dir: None,
            stamp: Arc::default(),
            current: Arc::new(RwLock::new(Arc::new(ring))),
        }
    }

    /// The keys now.
    pub fn get(&self) -> Arc<KeyRing> {
        self.current.read().expect("not poisoned").clone()
    }

    /// Re-reads the directory if a file in it changed; `true` if the keys changed. A directory
    /// that cannot be read keeps the keys in hand (and says so).
    pub fn reload(&self) -> bool {
        let Some(dir) = &self.dir else {
            return false;
        };
        let now = mtimes(dir);
        if *self.stamp.read().expect("not poisoned") == now {
            return false;
        }
        match load(dir) {
            Ok(ring) => {
                *self.current.write().expect("not poisoned") = Arc::new(ring);
                *self.stamp.write().expect("not poisoned") = now;
                info!(dir = %dir.display(), "reloaded keys");
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot reload keys; keeping the ones in hand");
                false
            }
        }
    }

    /// Reloads every [`RELOAD_EVERY`] until `stop`.
    pub async fn watch(self, stop: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(RELOAD_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => { self.reload(); }
            }
        }
    }
}

fn mtimes(dir: &Path) -> Vec<Option<SystemTime>> {
    FILES
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect()
}

/// Writes `text` to `path`, mode 0600, atomically (a reader never sees half a file).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Creates `dir` (and parents) with mode 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))
}

/// A cluster's whole key set: what tsc keeps in `<home>/keys/` and hands out.
#[derive(Debug, Clone)]
pub struct ClusterKeys {
    /// Leader keys, preferred first.
    pub leader: Vec<SignKey>,
    pub replica: Vec<MacKey>,
    pub cluster: Vec<MacKey>,
    pub operator: Vec<String>,
}

impl ClusterKeys {
    /// A fresh set with one key of each kind and the operator token `operator`.
    pub fn generate(operator: &str) -> Self {
        let mut rng = rand::thread_rng();
        ClusterKeys {
            leader: vec![SignKey::from_seed(random_key(&mut rng))],
            replica: vec![MacKey::new(random_key(&mut rng))],
            cluster: vec![MacKey::new(random_key(&mut rng))],
            operator: vec![operator.to_string()],
        }
    }

    /// What a server replica holds.
    pub fn server_ring(&self) -> KeyRing {
        KeyRing {
            leader: self.leader.clone(),
            leader_public: self.leader.iter().map(SignKey::public).collect(),
            replica: self.replica.clone(),
            cluster: self.cluster.clone(),
            client: Vec::new(),
            operator: self.operator.clone(),
            swarm: Vec::new(),
        }
    }

    /// What client `id` holds: the leader's public keys and its own keys.
    pub fn client_ring(&self, id: &Uuid) -> KeyRing {
        KeyRing {
            leader_public: self.leader.iter().map(SignKey::public).collect(),
            client: self.server_ring().client_keys(id),
            ..KeyRing::default()
        }
    }

    /// What a swarm of clients `ids` holds: the leader's public keys and each client's keys.
    pub fn swarm_ring(&self, ids: &[Uuid]) -> KeyRing {
        let server = self.server_ring();
        KeyRing {
            leader_public: server.leader_public.clone(),
            swarm: ids.iter().map(|id| (*id, server.client_keys(id))).collect(),
            ..KeyRing::default()
        }
    }

    /// Writes the whole set to `dir` (tsc's own copy).
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_ring(dir, &self.server_ring())
    }

    /// Reads a set written by [`ClusterKeys::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let r = load(dir)?;
        if r.leader.is_empty() || r.replica.is_empty() || r.cluster.is_empty() {
            return Err(Error::NotFound(format!(
                "no cluster keys in {}; run `tsc init` first",
                dir.display()
            )));
        }
        Ok(ClusterKeys {
            leader: r.leader,
            replica: r.replica,
            cluster: r.cluster,
            operator: r.operator,
        })
    }
}

/// Writes every non-empty part of `ring` to `dir` (0700), one file per kind (0600).
pub fn write_ring(dir: &Path, ring: &KeyRing) -> Result<()> {
    private_dir(dir)?;
    let seeds: Vec<[u8; KEY_LEN]> = ring.leader.iter().map(SignKey::seed).collect();
    let pubs: Vec<[u8; KEY_LEN]> = ring.leader_public.iter().map(VerifyKey::bytes).collect();
    let files: [(&str, &str, Vec<&[u8; KEY_LEN]>); 4] = [
        (
            LEADER_KEY,
            "leader signing keys (Ed25519 seeds), preferred first",
            seeds.iter().collect(),
        ),
        (
            LEADER_PUB,
            "leader public keys (Ed25519), all accepted",
            pubs.iter().collect(),
        ),
        (
            REPLICA_KEY,
            "replica keys (HMAC-SHA256), preferred first",
            ring.replica.iter().map(MacKey::bytes).collect(),
        ),
        (
            CLUSTER_KEY,
            "cluster secrets (HMAC-SHA256), preferred first",
            ring.cluster.iter().map(MacKey::bytes).collect(),
        ),
    ];
    for (file, comment, keys) in files {
        let path = dir.join(file);
        if keys.is_empty() {
            remove_if_there(&path)?;
        } else {
            write_private(&path, &format_keys(comment, keys))?;
        }
    }
    let client = dir.join(CLIENT_KEY);
    if ring.client.is_empty() {
        remove_if_there(&client)?;
    } else {
        let mut text =
            String::from("# this client's keys: <kid> <hex HMAC-SHA256 key>, preferred first\n");
        for k in &ring.client {
            text.push_str(&format!("{} {}\n", k.kid, hex::encode(k.bytes())));
        }
        write_private(&client, &text)?;
    }
    let swarm = dir.join(SWARM_KEYS);
    if ring.swarm.is_empty() {
        remove_if_there(&swarm)?;
    } else {
        let mut text = String::from(
            "# a swarm's clients and their keys: <id> <kid> <hex HMAC-SHA256 key>, preferred first\n",
        );
        for (id, keys) in &ring.swarm {
            for k in keys {
                text.push_str(&format!("{id} {} {}\n", k.kid, hex::encode(k.bytes())));
            }
        }
        write_private(&swarm, &text)?;
    }
    let op = dir.join(OPERATOR_TOKEN);
    if ring.operator.is_empty() {
        remove_if_there(&op)?;
    } else {
        write_private(
            &op,
            &format!("# operator tokens\n{}\n", ring.operator.join("\n")),
        )?;
    }
    Ok(())
}

/// Writes `client.id` into a client's key directory.
pub fn write_client_id(dir: &Path, id: &Uuid) -> Result<()> {
    private_dir(dir)?;
    write_private(&dir.join(CLIENT_ID), &format!("{id}\n"))
}

/// The id in `dir`'s `client.id`, if there is one.
pub fn read_client_id(dir: &Path) -> Result<Option<Uuid>> {
    let path = dir.join(CLIENT_ID);
    read_opt(&path)?
        .map(|t| {
            t.trim().parse().map_err(|_| {
                Error::Config(format!("{}: not a UUID: {:?}", path.display(), t.trim()))
            })
        })
        .transpose()
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// One step of a key rotation, as [`rotate`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// New keys are accepted everywhere; the old ones still seal.
    Accepted,
    /// New keys seal; old ones are still accepted.
    Preferred,
    /// Old keys are gone.
    Dropped,
}

/// The three key sets of a rotation from `old` to `new`: first both accepted with the old
/// preferred, then the new preferred, then the new alone.
pub fn rotation(old: &ClusterKeys, new: &ClusterKeys) -> [(RotationStep, ClusterKeys); 3] {
    let both = |a: &ClusterKeys, b: &ClusterKeys| ClusterKeys {
        leader: a.leader.iter().chain(&b.leader).cloned().collect(),
        replica: a.replica.iter().chain(&b.replica).cloned().collect(),
        cluster: a.cluster.iter().chain(&b.cluster).cloned().collect(),
        operator: a.operator.iter().chain(&b.operator).cloned().collect(),
    };
    [
        (RotationStep::Accepted, both(old, new)),
        (RotationStep::Preferred, both(new, old)),
        (RotationStep::Dropped, new.clone()),
    ]
}

/// Rotates every key (and, if `operator` is given, the operator token): writes each step of
/// [`rotation`] to every node's directory (`write` does that for one step) and waits `grace`
/// after each, so every node has reloaded and every message sealed with an old key has been
/// delivered or has expired before the key goes. Returns the new set.
pub async fn rotate<F, Fut>(
    old: &ClusterKeys,
    operator: Option<&str>,
    grace: Duration,
    mut write: F,
) -> Result<ClusterKeys>
where
    F: FnMut(RotationStep, ClusterKeys) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut new = ClusterKeys::generate(operator.unwrap_or(""));
    if operator.is_none() {
        new.operator = old.operator.clone();
    }
    for (step, keys) in rotation(old, &new) {
        write(step, keys).await?;
        if step != RotationStep::Dropped {
            tokio::time::sleep(grace).await;
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ts-keys-{}", Uuid::new_v4().simple()));
        private_dir(&d).unwrap();
        d
    }

    #[test]
    fn written_rings_load_back_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let keys = ClusterKeys::generate("tok");
        let d = dir();
        keys.save(&d).unwrap();
        let again = ClusterKeys::load(&d).unwrap();
        assert_eq!(again.leader[0].kid, keys.leader[0].kid);
        assert_eq!(again.cluster, keys.cluster);
        assert_eq!(again.operator, vec!["tok".to_string()]);
        for f in [
            LEADER_KEY,
            LEADER_PUB,
            REPLICA_KEY,
            CLUSTER_KEY,
            OPERATOR_TOKEN,
        ] {
            let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A client's directory holds only what a client needs.
        let id = Uuid::from_u128(5);
        let c = dir();
        write_ring(&c, &keys.client_ring(&id)).unwrap();
        let ring = load(&c).unwrap();
        ring.check_client().unwrap();
        assert!(ring.leader.is_empty() && ring.cluster.is_empty() && ring.replica.is_empty());
        assert!(!c.join(LEADER_KEY).exists() && !c.join(CLUSTER_KEY).exists());
        assert_eq!(ring.client, keys.server_ring().client_keys(&id));
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&c).unwrap();
    }

    #[test]
    fn client_key_lines_need_a_well_formed_kid() {
        let key = "00".repeat(KEY_LEN);
        let ok = parse_client_keys(&format!("# c\n0a1b2c3d  {key}\n")).unwrap();
        assert_eq!(ok[0].kid, "0a1b2c3d");
        for bad in [
            format!("0A1B2C3D {key}"),
            format!("0a1b2c3 {key}"),
            format!("0a1b2c3d\t{key}"),
            "0a1b2c3d".to_string(),
            format!("0a1b2c3d {key} {key}"),
        ] {
            assert!(parse_client_keys(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_source_reloads_changed_files() {
        let d = dir();
        let a = ClusterKeys::generate("a");
        a.save(&d).unwrap();
        let src = KeySource::open(&d, KeyRing::check_server).unwrap();
        assert!(!src.reload(), "nothing changed");
        std::thread::sleep(Duration::from_millis(20));
        let b = ClusterKeys::generate("b");
        b.save(&d).unwrap();
        assert!(src.reload());
        assert_eq!(src.get().leader[0].kid, b.leader[0].kid);
        assert!(KeySource::open(&dir(), KeyRing::check_server)
            .err()
            .unwrap()
            .to_string()
            .contains("no leader key"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn rotation_accepts_then_prefers_then_drops() {
        let old = ClusterKeys::generate("t");
        let new = ClusterKeys::generate("t");
        let steps = rotation(&old, &new);
        assert_eq!(
            steps[0].1.cluster,
            vec![old.cluster[0].clone(), new.cluster[0].clone()]
        );
        assert_eq!(
            steps[1].1.cluster,
            vec![new.cluster[0].clone(), old.cluster[0].clone()]
        );
        assert_eq!(steps[2].1.cluster, vec![new.cluster[0].clone()]);
        assert_eq!(steps[1].1.leader[0].kid, new.leader[0].kid);
    }
}
