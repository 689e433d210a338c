//! Which architecture an executable was built for, from its ELF header.

use std::io::Read;
use std::path::Path;

use tailor_targets::Arch;

use super::PackError;

/// The architecture of the 64-bit little-endian ELF file at `path`; an
/// error names the file when it is not one tailor ships.
pub(super) fn arch(path: &Path) -> Result<Arch, PackError> {
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => PackError::NotElf(path.to_owned()),
            _ => PackError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
    // e_ident: magic, class 2 (64-bit), data 1 (little-endian); e_machine at 18.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(PackError::NotElf(path.to_owned()));
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    Arch::from_elf_machine(machine).ok_or(PackError::UnknownMachine {
        path: path.to_owned(),
        machine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16) -> Vec<u8> {
        let mut h = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0".to_vec();
        h.extend(machine.to_le_bytes());
        h.extend([0u8; 44]);
        h
    }

    fn arch_of(bytes: &[u8]) -> Result<Arch, PackError> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        arch(f.path())
    }

    #[test]
    fn reads_the_machine_of_the_header() {
        assert_eq!(arch_of(&elf(183)).unwrap(), Arch::Aarch64);
        assert_eq!(arch_of(&elf(62)).unwrap(), Arch::X86_64);
        assert!(matches!(
            arch_of(&elf(40)),
            Err(PackError::UnknownMachine { machine: 40, .. })
        ));
    }

    #[test]
    fn scripts_and_short_files_are_not_elf() {
        assert!(matches!(
            arch_of(b"#!/bin/sh\necho hi\n"),
            Err(PackError::NotElf(_))
        ));
        assert!(matches!(arch_of(b"\x7fELF"), Err(PackError::NotElf(_))));
        let mut big_endian = elf(183);
        big_endian[5] = 2;
        assert!(matches!(arch_of(&big_endian), Err(PackError::NotElf(_))));
    }
}
