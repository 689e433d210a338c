//! Names a file hands us (a manifest's file names, a graph's external-data
//! locations) that must stay below a directory: relative, made only of
//! normal components, and not leading outside through a symlink.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Why a name would lead outside the directory it is relative to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Escape {
    #[error("is empty")]
    Empty,
    #[error("is absolute")]
    Absolute,
    #[error("climbs out through `..`")]
    Parent,
    #[error("has a `.` component")]
    Current,
    #[error("is not a single file name")]
    Nested,
    #[error("resolves to {}, outside the directory it is relative to", to.display())]
    Outside { to: PathBuf },
    #[error("is a symlink that cannot be resolved")]
    Unresolvable,
}

/// `name` as a relative path made only of normal components, which joined to
/// a directory can only name something below it.
pub fn relative(name: &str) -> Result<&Path, Escape> {
    let path = Path::new(name);
    // `components` drops inner `.`s and repeated `/`s; a name that is
    // nothing but those is empty.
    if path.components().next().is_none() {
        return Err(Escape::Empty);
    }
    for component in path.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(Escape::Parent),
            Component::CurDir => return Err(Escape::Current),
            Component::RootDir | Component::Prefix(_) => return Err(Escape::Absolute),
        }
    }
    Ok(path)
}

/// `name` as one normal component: a file name that other names are built
/// from (a sub-network id becomes `ID.onnx`).
pub fn file_name(name: &str) -> Result<&Path, Escape> {
    let path = relative(name)?;
    if name.contains('/') {
        return Err(Escape::Nested);
    }
    Ok(path)
}

/// `root.join(name)`, checked [`relative`] and, through every symlink on the
/// way, still inside `root` (which must be canonical). The part of the path
/// that does not exist yet cannot lead anywhere else; an entry that exists
/// but does not resolve (a dangling symlink, a loop) is refused.
pub fn resolve_inside(root: &Path, name: &str) -> Result<PathBuf, Escape> {
    let path = root.join(relative(name)?);
    for existing in path.ancestors().take_while(|a| *a != root) {
        match fs::canonicalize(existing) {
            Ok(to) if to.starts_with(root) => return Ok(path),
            Ok(to) => return Err(Escape::Outside { to }),
            // Not there at all: its parent decides.
            Err(_) if fs::symlink_metadata(existing).is_err() => {}
            Err(_) => return Err(Escape::Unresolvable),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn only_normal_components_pass() {
        for ok in ["graphs/w32-d2.onnx", "w.bin", "a//b", "a/./b", "a/"] {
            assert!(relative(ok).is_ok(), "{ok}");
        }
        for (name, escape) in [
            ("", Escape::Empty),
            ("/etc/passwd", Escape::Absolute),
            ("../x", Escape::Parent),
            ("graphs/../../x", Escape::Parent),
            ("graphs/..", Escape::Parent),
            ("./x", Escape::Current),
            (".", Escape::Current),
        ] {
            assert_eq!(relative(name), Err(escape), "{name:?}");
        }
        assert_eq!(file_name("w32-d4@int8-s8"), Ok(Path::new("w32-d4@int8-s8")));
        assert_eq!(file_name("a/b"), Err(Escape::Nested));
        assert_eq!(file_name("a/"), Err(Escape::Nested));
        assert_eq!(file_name(".."), Err(Escape::Parent));
    }

    #[test]
    fn symlinks_are_followed_to_where_they_lead() {
        let dir = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(dir.path()).unwrap();
        let (root, outside) = (dir.join("bundle"), dir.join("outside"));
        fs::create_dir_all(root.join("graphs")).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"").unwrap();
        fs::write(root.join("graphs/w.bin"), b"").unwrap();
        symlink(outside.join("secret"), root.join("graphs/out.bin")).unwrap();
        symlink(&outside, root.join("calibration")).unwrap();
        symlink("w.bin", root.join("graphs/alias.bin")).unwrap();
        symlink(root.join("missing"), root.join("dangling")).unwrap();

        let inside = |name| resolve_inside(&root, name);
        assert_eq!(inside("graphs/w.bin"), Ok(root.join("graphs/w.bin")));
        assert_eq!(
            inside("graphs/alias.bin"),
            Ok(root.join("graphs/alias.bin"))
        );
        // Not there yet: a file a writer is about to create.
        assert_eq!(
            inside("graphs/new/x.onnx"),
            Ok(root.join("graphs/new/x.onnx"))
        );
        let out = |to: &Path| Escape::Outside { to: to.to_owned() };
        assert_eq!(inside("graphs/out.bin"), Err(out(&outside.join("secret"))));
        // Through a symlinked directory, to a file that exists or not.
        assert_eq!(
            inside("calibration/secret"),
            Err(out(&outside.join("secret")))
        );
        assert_eq!(inside("calibration/new.json"), Err(out(&outside)));
        assert_eq!(inside("dangling"), Err(Escape::Unresolvable));
        assert_eq!(inside("../outside/secret"), Err(Escape::Parent));
    }
}
