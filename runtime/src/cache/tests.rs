use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::manifest::Sha256;

/// A key of two fields: enough to tell entries apart (the selection's key,
/// and which of its fields a miss names, are tested with it, in `select`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Key {
    device: String,
    threads: u32,
}

impl super::Key for Key {
    type Field = &'static str;

    /// The first field that differs from the newest key.
    fn nearest_change<'a>(
        &self,
        mut stored: impl DoubleEndedIterator<Item = &'a Key>,
    ) -> Option<&'static str> {
        let newest = stored.next_back()?;
        if newest.device != self.device {
            Some("device")
        } else {
            (newest.threads != self.threads).then_some("threads")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Decision {
    subnet: String,
    p90_ms: f64,
}

fn decision(subnet: &str) -> Decision {
    Decision {
        subnet: subnet.into(),
        p90_ms: 21.5,
    }
}

fn key() -> Key {
    Key {
        device: "jetson-orin-nano-8gb".into(),
        threads: 4,
    }
}

fn key_with(change: impl FnOnce(&mut Key)) -> Key {
    let mut k = key();
    change(&mut k);
    k
}

fn cache_in(dir: &tempfile::TempDir) -> Cache<Key> {
    Cache::at(dir.path().join(FILE_NAME))
}

fn stored() -> (tempfile::TempDir, Cache<Key>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&dir);
    cache.store(&key(), &decision("w640-d18"), &[]).unwrap();
    (dir, cache)
}

/// The file's layout, spelled out here rather than taken from the cache.
type Layout = (u32, Vec<(Key, Vec<u8>)>, Vec<FileStamp>);

/// The file's entries and stamps, decoded here rather than by the cache.
fn decoded(cache: &Cache<Key>) -> Layout {
    postcard::from_bytes(&fs::read(cache.path()).unwrap()).unwrap()
}

fn hit(cache: &Cache<Key>, key: &Key) -> Option<Decision> {
    match cache.load(key) {
        Lookup::Hit(d) => Some(d),
        Lookup::Miss(_) => None,
    }
}

fn files_in(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

#[test]
fn each_key_keeps_its_own_decision() {
    let (_dir, cache) = stored();
    let other = key_with(|k| k.threads = 8);
    cache.store(&other, &decision("w384-d12"), &[]).unwrap();
    assert_eq!(hit(&cache, &key()), Some(decision("w640-d18")));
    assert_eq!(hit(&cache, &other), Some(decision("w384-d12")));
}

#[test]
fn an_equal_key_replaces_its_entry() {
    let (_dir, cache) = stored();
    cache.store(&key(), &decision("w384-d12"), &[]).unwrap();
    let (version, entries, _) = decoded(&cache);
    assert_eq!((version, entries.len()), (FORMAT_VERSION, 1));
    assert_eq!(hit(&cache, &key()), Some(decision("w384-d12")));
}

#[test]
fn the_oldest_entry_goes_beyond_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&dir);
    let keys: Vec<Key> = (0..=MAX_ENTRIES as u32)
        .map(|threads| key_with(|k| k.threads = threads))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        cache.store(k, &decision(&format!("n{i}")), &[]).unwrap();
    }
    assert_eq!(decoded(&cache).1.len(), MAX_ENTRIES);
    assert!(hit(&cache, &keys[0]).is_none());
    assert_eq!(hit(&cache, &keys[1]), Some(decision("n1")));
    assert_eq!(
        hit(&cache, &keys[MAX_ENTRIES]),
        Some(decision(&format!("n{MAX_ENTRIES}")))
    );
}

#[test]
fn missing_or_empty_files_are_absent() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&dir);
    assert!(matches!(
        cache.load::<Decision>(&key()),
        Lookup::Miss(Miss::Absent)
    ));
}

#[test]
fn truncated_garbled_or_longer_files_are_corrupt() {
    let (_dir, cache) = stored();
    let bytes = fs::read(cache.path()).unwrap();
    for len in 0..bytes.len() {
        fs::write(cache.path(), &bytes[..len]).unwrap();
        let lookup = cache.load::<Decision>(&key());
        assert!(
            matches!(lookup, Lookup::Miss(Miss::Corrupt(_))),
            "{len}: {lookup:?}"
        );
    }
    fs::write(cache.path(), [FORMAT_VERSION as u8, 0xff, 0xff, 0xff]).unwrap();
    assert!(matches!(
        cache.load::<Decision>(&key()),
        Lookup::Miss(Miss::Corrupt(_))
    ));
    let mut trailing = bytes.clone();
    trailing.push(0);
    fs::write(cache.path(), &trailing).unwrap();
    assert!(matches!(
        cache.load::<Decision>(&key()),
        Lookup::Miss(Miss::Corrupt(_))
    ));
}

#[test]
fn a_decision_of_another_type_is_corrupt() {
    let (_dir, cache) = stored();
    assert!(matches!(
        cache.load::<(u64, u64, u64)>(&key()),
        Lookup::Miss(Miss::Corrupt(_))
    ));
    // A shorter type that decodes from a prefix leaves bytes over.
    assert!(matches!(
        cache.load::<String>(&key()),
        Lookup::Miss(Miss::Corrupt(_))
    ));
}

#[test]
fn other_formats_are_named() {
    let (_dir, cache) = stored();
    // Format 1: one (version, key, decision).
    let bytes = postcard::to_stdvec(&(1u32, "device", decision("w64-d4"))).unwrap();
    fs::write(cache.path(), bytes).unwrap();
    let lookup = cache.load::<Decision>(&key());
    assert!(
        matches!(lookup, Lookup::Miss(Miss::OtherFormat { version: 1 })),
        "{lookup:?}"
    );
}

#[test]
fn a_directory_in_the_way_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    assert!(matches!(
        cache.load::<Decision>(&key()),
        Lookup::Miss(Miss::Unreadable(_))
    ));
}

#[test]
fn a_store_over_a_corrupt_file_replaces_it() {
    let (_dir, cache) = stored();
    fs::write(cache.path(), b"garbage").unwrap();
    cache.store(&key(), &decision("w64-d4"), &[]).unwrap();
    assert_eq!(hit(&cache, &key()), Some(decision("w64-d4")));
}

#[test]
fn unwritable_locations_are_errors_naming_the_path() {
    // Permission bits do not stop root: a file where the directory should
    // be stops everyone.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    fs::write(&blocker, b"").unwrap();
    let cache = Cache::at(blocker.join(FILE_NAME));
    let err = cache.store(&key(), &decision("w64-d4"), &[]).unwrap_err();
    assert!(matches!(err, CacheError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    let err = cache.lock().unwrap_err();
    assert!(matches!(err, CacheError::Lock { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn a_failed_rename_leaves_no_temporary_file() {
    // The temporary file is written, the rename onto a non-empty
    // directory fails (for root too).
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&dir);
    fs::create_dir(cache.path()).unwrap();
    fs::write(cache.path().join("occupant"), b"").unwrap();
    let err = cache.store(&key(), &decision("w64-d4"), &[]).unwrap_err();
    assert!(err.to_string().contains(FILE_NAME), "{err}");
    assert_eq!(files_in(dir.path()), [FILE_NAME]);
}

#[test]
fn default_path_precedence() {
    let path = |vars: &[(&str, &str)]| {
        default_path_from(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        })
    };
    let file = |dir: &str| Some(Path::new(dir).join(FILE_NAME));
    let all = [
        ("TAILOR_CACHE_DIR", "/t"),
        ("CACHE_DIRECTORY", "/var/cache/svc:/var/cache/other"),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/home/u"),
    ];
    assert_eq!(path(&all), file("/t"));
    assert_eq!(path(&all[1..]), file("/var/cache/svc"));
    assert_eq!(path(&all[2..]), file("/x/tailor"));
    assert_eq!(path(&all[3..]), file("/home/u/.cache/tailor"));
    assert_eq!(path(&[]), None);
    // Empty values count as unset, so does a relative XDG_CACHE_HOME.
    let empty = [
        ("TAILOR_CACHE_DIR", ""),
        ("CACHE_DIRECTORY", ""),
        ("XDG_CACHE_HOME", "relative"),
        ("HOME", "/home/u"),
    ];
    assert_eq!(path(&empty), file("/home/u/.cache/tailor"));
    assert_eq!(path(&empty[..3]), None);
}

#[test]
fn a_second_lock_waits_for_the_first() {
    let dir = tempfile::tempdir().unwrap();
    // The directory does not exist yet: lock() creates it.
    let cache = Cache::<Key>::at(dir.path().join("new/decisions.postcard"));
    let first = cache.lock().unwrap();
    let (acquired, second) = mpsc::channel();
    let waiter = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let guard = cache.lock().unwrap();
            acquired.send(()).unwrap();
            drop(guard);
        })
    };
    assert_eq!(
        second.recv_timeout(Duration::from_millis(300)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "the second lock was taken while the first was held"
    );
    drop(first);
    second
        .recv_timeout(Duration::from_secs(60))
        .expect("the second lock is taken once the first is dropped");
    waiter.join().unwrap();
}

#[test]
fn stamps_merge_by_path_and_share_the_file_with_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&dir);
    let file = |name: &str| {
        let path = dir.path().join(name);
        fs::write(&path, name).unwrap();
        path
    };
    let (a, b, c) = (file("a.onnx"), file("b.onnx"), file("c.onnx"));
    let stamp = |path: &Path, byte| FileStamp::of(path, Sha256([byte; 32])).unwrap();

    cache
        .store(&key(), &decision("w64-d4"), &[stamp(&a, 1), stamp(&b, 2)])
        .unwrap();
    assert_eq!(cache.verified(), [stamp(&a, 1), stamp(&b, 2)]);
    // A stamp of the same path replaces the old one.
    let other = key_with(|k| k.threads = 1);
    cache
        .store(&other, &decision("w32-d2"), &[stamp(&a, 3)])
        .unwrap();
    assert_eq!(cache.verified(), [stamp(&b, 2), stamp(&a, 3)]);
    assert_eq!(hit(&cache, &key()), Some(decision("w64-d4")));
    // A later decision without stamps keeps them.
    let third = key_with(|k| k.threads = 2);
    cache.store(&third, &decision("w16-d1"), &[]).unwrap();
    assert_eq!(decoded(&cache).2, [stamp(&b, 2), stamp(&a, 3)]);

    // Stamps of files gone since are dropped on the next write.
    fs::remove_file(&b).unwrap();
    cache
        .store(&key(), &decision("w64-d4"), &[stamp(&c, 4)])
        .unwrap();
    assert_eq!(cache.verified(), [stamp(&a, 3), stamp(&c, 4)]);
    assert_eq!(hit(&cache, &other), Some(decision("w32-d2")));
}

#[test]
fn verified_is_empty_for_unusable_files() {
    let (_dir, cache) = stored();
    fs::write(cache.path(), b"garbage").unwrap();
    assert_eq!(cache.verified(), []);
}
