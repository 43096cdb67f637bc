//! The packaged Lambdas as `cargo lambda build --release` leaves them: Linux x86_64 executables
//! within issue #6's size budget (at most 15 MB each, stripped), which the release profile's
//! per-package opt-levels in the workspace `Cargo.toml` keep. A dependency that grows a bootstrap
//! past it fails here, not in a benchmark read weeks later.

/// Issue #6's budget, in the MB (10^6 bytes) `BENCHMARKS.md` reports.
const MAX_BYTES: u64 = 15_000_000;

#[test]
fn bootstraps_are_linux_executables_within_the_size_budget() {
    let dir = harness::lambda_artifacts();
    for function in ["provider", "invoke"] {
        let path = dir.join(function).join("bootstrap");
        let bytes = std::fs::read(&path).expect("bootstrap readable");
        // ELF magic, 64-bit, little-endian, e_machine x86-64 (62): what `provided.al2023` x86_64 runs.
        assert_eq!(&bytes[..4], b"\x7fELF", "{function}: not an ELF file");
        assert_eq!(
            (bytes[4], bytes[5]),
            (2, 1),
            "{function}: not 64-bit little-endian"
        );
        assert_eq!(
            u16::from_le_bytes([bytes[18], bytes[19]]),
            62,
            "{function}: not x86-64"
        );
        let size = bytes.len() as u64;
        assert!(
            size <= MAX_BYTES,
            "{function}/bootstrap is {size} bytes, over the {MAX_BYTES}-byte budget"
        );
        assert!(
            !has_section(&bytes, b".symtab"),
            "{function}/bootstrap is not stripped (it has a `.symtab`)"
        );
    }
}

/// Whether the ELF64 file has a section of that name (read from its section header table).
fn has_section(elf: &[u8], name: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().expect("8 bytes")) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18);
    (0..shnum).any(|i| {
        let start = strtab
            + u32::from_le_bytes(elf[header(i)..header(i) + 4].try_into().expect("4 bytes"))
                as usize;
        let end = start + name.len();
        elf.get(start..end) == Some(name) && elf.get(end) == Some(&0)
    })
}
