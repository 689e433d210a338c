use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::*;
use crate::manifest::Sha256;

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn write_atomic_replaces_the_file_and_leaves_nothing_else() {
    // Bug caught: the temporary file renamed to the wrong name or left over.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("cache.bin");
    fs::write(&dest, b"old contents, longer than the new").unwrap();
    write_atomic(&dest, b"new").unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"new");
    assert_eq!(names(dir.path()), ["cache.bin"]);
}

#[test]
fn the_temporary_file_sits_beside_its_destination() {
    // Bug caught: staging in another directory (e.g. /tmp), where the
    // rename crosses file systems and fails.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pack.tar.gz");
    let staged = StagedFile::create(&dest).unwrap();
    assert_eq!(staged.path().parent(), Some(dir.path()));
    assert_eq!(staged.dest(), dest);
}

#[test]
fn a_writer_failing_midway_leaves_the_old_file_and_no_temporary_one() {
    // Bug caught: writing in place (half a file under the final name), or a
    // temporary file left behind by the failed writer.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("manifest.json");
    fs::write(&dest, b"old").unwrap();
    let write = |out: &mut StagedFile| -> io::Result<()> {
        out.write_all(&[7; 100_000])?;
        Err(io::Error::other("the disk is full"))
    };
    let failed = StagedFile::create(&dest).and_then(|mut staged| {
        write(&mut staged)?;
        staged.commit()
    });
    assert_eq!(failed.unwrap_err().to_string(), "the disk is full");
    assert_eq!(fs::read(&dest).unwrap(), b"old");
    assert_eq!(names(dir.path()), ["manifest.json"]);
}

#[test]
fn a_failed_rename_leaves_the_destination_and_no_temporary_file() {
    // A non-empty directory cannot be replaced by a file. Bug caught: the
    // temporary file kept when the rename fails.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("occupied");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("inside"), b"kept").unwrap();
    assert!(write_atomic(&dest, b"new").is_err());
    assert_eq!(fs::read(dest.join("inside")).unwrap(), b"kept");
    assert_eq!(names(dir.path()), ["occupied"]);
}

#[test]
fn commit_new_never_replaces_an_existing_file() {
    // Bug caught: `pack` without --force clobbering an earlier pack.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pack.tar.gz");
    fs::write(&dest, b"an earlier pack").unwrap();
    let mut staged = StagedFile::create(&dest).unwrap();
    staged.write_all(b"new").unwrap();
    let err = staged.commit_new().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(fs::read(&dest).unwrap(), b"an earlier pack");
    assert_eq!(names(dir.path()), ["pack.tar.gz"]);

    fs::remove_file(&dest).unwrap();
    let mut staged = StagedFile::create(&dest).unwrap();
    staged.write_all(b"new").unwrap();
    staged.commit_new().unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"new");
    assert_eq!(names(dir.path()), ["pack.tar.gz"]);
}

/// A staged bundle directory holding `graphs/new.onnx` with `text`.
fn staged_dir(dest: &Path, text: &str) -> StagedDir {
    let staged = StagedDir::create(dest).unwrap();
    fs::create_dir(staged.path().join("graphs")).unwrap();
    fs::write(staged.path().join("graphs/new.onnx"), text).unwrap();
    staged
}

#[test]
fn a_directory_swap_replaces_the_old_tree_whole() {
    // Bug caught: the new tree merged into the old one, or the old one left
    // aside after the swap.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("bundle");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("stale.onnx"), b"old").unwrap();
    staged_dir(&dest, "new").commit().unwrap();
    assert_eq!(names(&dest), ["graphs"]);
    assert_eq!(fs::read(dest.join("graphs/new.onnx")).unwrap(), b"new");
    assert_eq!(names(dir.path()), ["bundle"]);
}

/// A rename that fails on the calls numbered in `failing` (from 1).
fn failing_rename(failing: &[usize]) -> impl FnMut(&Path, &Path) -> io::Result<()> + '_ {
    let mut call = 0;
    move |from, to| {
        call += 1;
        if failing.contains(&call) {
            Err(io::Error::other(format!("rename {call} refused")))
        } else {
            fs::rename(from, to)
        }
    }
}

/// A bundle directory holding `old.onnx`.
fn old_bundle(dir: &Path) -> std::path::PathBuf {
    let dest = dir.join("bundle");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("old.onnx"), b"old").unwrap();
    dest
}

#[test]
fn a_directory_swap_rolls_back_when_the_new_tree_cannot_move_in() {
    // Rename 1 moves the old tree aside, rename 2 (the new tree in) fails.
    // Bug caught: no rollback (`exporter --all-subnets --force` leaving the
    // user with no bundle at all), or the staged tree left behind.
    let dir = tempfile::tempdir().unwrap();
    let dest = old_bundle(dir.path());
    let err = staged_dir(&dest, "new")
        .commit_with(failing_rename(&[2]))
        .unwrap_err();
    assert_eq!(err.to_string(), "rename 2 refused");
    assert_eq!(names(&dest), ["old.onnx"]);
    assert_eq!(names(dir.path()), ["bundle"]);
}

#[test]
fn a_failed_rollback_says_where_the_old_tree_is() {
    // Renames 2 (in) and 3 (back) fail. Bug caught: an error that hides
    // where the user's old bundle went.
    let dir = tempfile::tempdir().unwrap();
    let dest = old_bundle(dir.path());
    let err = staged_dir(&dest, "new")
        .commit_with(failing_rename(&[2, 3]))
        .unwrap_err()
        .to_string();
    let aside: Vec<String> = names(dir.path());
    let [aside] = &aside[..] else {
        panic!("expected only the old tree, set aside: {aside:?}")
    };
    assert!(err.contains(aside.as_str()), "{err}");
    assert_eq!(names(&dir.path().join(aside)), ["old.onnx"]);
}

#[test]
fn a_directory_commit_new_refuses_an_existing_destination() {
    // Bug caught: `exporter` without --force replacing a bundle.
    let dir = tempfile::tempdir().unwrap();
    let dest = old_bundle(dir.path());
    let err = staged_dir(&dest, "new").commit_new().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(names(&dest), ["old.onnx"]);
    assert_eq!(names(dir.path()), ["bundle"]);
}

#[test]
fn a_staged_directory_dropped_uncommitted_is_removed() {
    // Bug caught: a failed export leaving a hidden partial bundle behind.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("bundle");
    drop(staged_dir(&dest, "new"));
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

/// The id of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

#[test]
fn the_next_writer_clears_what_a_killed_one_left() {
    // A killed `exporter --force` leaves its staged bundle, a killed cache
    // store its temporary file. Bug caught: litter that grows with every
    // kill, or a sweep that takes a running writer's (ours) or another
    // destination's temporaries.
    let dir = tempfile::tempdir().unwrap();
    let (dead, alive) = (dead_pid(), std::process::id());
    let staged = dir.path().join(format!(".bundle.tmp-{dead}-0"));
    fs::create_dir_all(staged.join("graphs")).unwrap();
    fs::write(staged.join("graphs/half.onnx"), b"half").unwrap();
    let running = format!(".bundle.tmp-{alive}-999");
    fs::create_dir(dir.path().join(&running)).unwrap();
    fs::write(dir.path().join(format!(".cache.bin.tmp-{dead}-3")), b"half").unwrap();
    let other = format!(".bundle-2.tmp-{dead}-0");
    fs::write(dir.path().join(&other), b"half").unwrap();

    let dest = dir.path().join("bundle");
    drop(StagedDir::create(&dest).unwrap());
    let mut left = vec![
        format!(".cache.bin.tmp-{dead}-3"),
        running.clone(),
        other.clone(),
    ];
    left.sort();
    assert_eq!(names(dir.path()), left);

    write_atomic(&dir.path().join("cache.bin"), b"new").unwrap();
    let mut left = vec!["cache.bin".to_owned(), running, other];
    left.sort();
    assert_eq!(names(dir.path()), left);
}

#[test]
fn a_swap_killed_between_its_renames_is_undone_by_the_next_writer() {
    // Where the kernel cannot exchange, a kill between "old aside" and "new
    // in" leaves no bundle at the destination. Bug caught: the old bundle
    // left under a hidden name, or removed as litter.
    let dir = tempfile::tempdir().unwrap();
    let aside = old_bundle(dir.path());
    let dest = dir.path().join("bundle");
    fs::rename(
        &aside,
        dir.path().join(format!(".bundle.old-{}-0", dead_pid())),
    )
    .unwrap();
    drop(StagedDir::create(&dest).unwrap());
    assert_eq!(names(dir.path()), ["bundle"]);
    assert_eq!(names(&dest), ["old.onnx"]);
}

#[cfg(target_os = "linux")]
#[test]
fn a_directory_swap_never_leaves_the_destination_missing() {
    // A reader (or a kill) between the two renames of a swap finds no
    // bundle; Linux exchanges the two in one step. Bug caught: the
    // two-rename swap where the kernel can exchange. The watcher can miss a
    // gap, never see one that is not there.
    let dir = tempfile::tempdir().unwrap();
    let dest = old_bundle(dir.path());
    let done = std::sync::atomic::AtomicBool::new(false);
    let gaps = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut gaps = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                gaps += usize::from(dest.symlink_metadata().is_err());
            }
            gaps
        });
        for _ in 0..200 {
            staged_dir(&dest, "new").commit().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert_eq!(gaps, 0, "the destination was missing {gaps} times");
    assert_eq!(names(dir.path()), ["bundle"]);
}

#[test]
fn digests_match_the_published_test_vectors() {
    // FIPS 180-2's vectors; the million `a`s outgrow one read, so a file
    // hashed from its first buffer only fails. Bug caught: a digest wrapped
    // from the wrong bytes, or a file hashed in part.
    let hex = |s: &str| Sha256::from_hex(s).unwrap();
    let abc = hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(sha256(b"abc"), abc);
    let mut pieces = Hasher::new();
    pieces.update("a");
    pieces.write_all(b"bc").unwrap();
    assert_eq!(pieces.finish(), abc);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a");
    fs::write(&file, vec![b'a'; 1_000_000]).unwrap();
    assert_eq!(
        sha256_file(&file).unwrap(),
        hex("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    );
}
