//! The zip container of `torch.save` files: a reader that finds each member's data in the mapped
//! bytes (from the central directory, then the member's own *local* header, whose extra field —
//! PyTorch's alignment padding — differs from the central directory's), and the layout of the
//! archives [`super::TorchWriter`] writes. Both handle zip64 (files or members of 4 GiB and more).
//!
//! Every offset and length read from the file is checked against the bytes before use, with
//! checked arithmetic: a corrupt archive is an error, never a panic or an allocation sized by the
//! file.

use std::ops::Range;

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;
/// The extra field id PyTorch pads local headers with (`FB`), so that data is 64-byte aligned.
const PAD_EXTRA: u16 = 0x4246;
const LOCAL_LEN: usize = 30;
const CENTRAL_LEN: usize = 46;
const EOCD_LEN: usize = 22;
const EOCD64_LEN: usize = 56;
const LOCATOR_LEN: usize = 20;

/// One member of an archive.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub name: String,
    /// Compression method (0: stored).
    pub method: u16,
    /// Bit 0 of the flags: encrypted.
    pub encrypted: bool,
    /// Where its (stored, compressed) bytes are in the file.
    pub data: Range<usize>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn to_usize(v: u64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} does not fit in memory"))
}

/// The members of the zip archive `bytes`, in central directory order.
pub(super) fn read_members(bytes: &[u8]) -> Result<Vec<Member>, String> {
    let truncated = || "truncated or corrupt zip archive: no end of central directory".to_string();
    // The end of central directory record is within the last 22 + 65535 bytes (its comment).
    let earliest = bytes.len().saturating_sub(EOCD_LEN + u16::MAX as usize);
    let eocd = (earliest..=bytes.len().checked_sub(EOCD_LEN).ok_or_else(truncated)?)
        .rev()
        .find(|&at| {
            u32_at(bytes, at) == Some(EOCD_SIG)
                && u16_at(bytes, at + 20).is_some_and(|c| at + EOCD_LEN + c as usize == bytes.len())
        })
        .ok_or_else(truncated)?;
    let field = |at: usize| u32_at(bytes, eocd + at).ok_or_else(truncated);
    let mut entries = u64::from(u16_at(bytes, eocd + 10).ok_or_else(truncated)?);
    let mut cd_size = u64::from(field(12)?);
    let mut cd_offset = u64::from(field(16)?);
    if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // zip64: the locator sits just before the end record and points at the zip64 end record.
        let locator = eocd.checked_sub(LOCATOR_LEN).ok_or("corrupt zip64 archive: no zip64 locator")?;
        if u32_at(bytes, locator) != Some(EOCD64_LOCATOR_SIG) {
            return Err("corrupt zip64 archive: no zip64 locator".into());
        }
        let at = to_usize(u64_at(bytes, locator + 8).ok_or_else(truncated)?, "zip64 record offset")?;
        if u32_at(bytes, at) != Some(EOCD64_SIG) {
            return Err("corrupt zip64 archive: no zip64 end of central directory record".into());
        }
        let bad = || "truncated zip64 end of central directory record".to_string();
        entries = u64_at(bytes, at + 32).ok_or_else(bad)?;
        cd_size = u64_at(bytes, at + 40).ok_or_else(bad)?;
        cd_offset = u64_at(bytes, at + 48).ok_or_else(bad)?;
    }
    let cd_start = to_usize(cd_offset, "central directory offset")?;
    let cd_end = cd_start
        .checked_add(to_usize(cd_size, "central directory size")?)
        .filter(|&e| e <= bytes.len())
        .ok_or("corrupt zip archive: the central directory lies outside the file")?;
    // Each entry takes at least 46 bytes: the count cannot ask for more than the bytes hold.
    if entries > ((cd_end - cd_start) / CENTRAL_LEN) as u64 {
        return Err(format!("corrupt zip archive: {entries} entries cannot fit in its central directory"));
    }
    let mut members = Vec::with_capacity(entries as usize);
    let mut at = cd_start;
    for n in 0..entries {
        let bad = || format!("corrupt zip archive: central directory entry {n} is truncated or invalid");
        if u32_at(bytes, at) != Some(CENTRAL_SIG) {
            return Err(bad());
        }
        let flags = u16_at(bytes, at + 8).ok_or_else(bad)?;
        let method = u16_at(bytes, at + 10).ok_or_else(bad)?;
        let mut csize = u64::from(u32_at(bytes, at + 20).ok_or_else(bad)?);
        let mut uncompressed = u64::from(u32_at(bytes, at + 24).ok_or_else(bad)?);
        let name_len = usize::from(u16_at(bytes, at + 28).ok_or_else(bad)?);
        let extra_len = usize::from(u16_at(bytes, at + 30).ok_or_else(bad)?);
        let comment_len = usize::from(u16_at(bytes, at + 32).ok_or_else(bad)?);
        let mut offset = u64::from(u32_at(bytes, at + 42).ok_or_else(bad)?);
        let name_start = at + CENTRAL_LEN;
        let extra_start = name_start + name_len;
        let next = extra_start + extra_len + comment_len;
        if next > cd_end {
            return Err(bad());
        }
        let name = String::from_utf8_lossy(&bytes[name_start..extra_start]).into_owned();
        // zip64 extra: the 8-byte values, in this order, of the fields that are 0xFFFFFFFF.
        if let Some(extra) = find_extra(&bytes[extra_start..extra_start + extra_len], ZIP64_EXTRA) {
            let mut fields = extra.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
            for v in [&mut uncompressed, &mut csize, &mut offset] {
                if *v == 0xFFFF_FFFF {
                    *v = fields.next().ok_or_else(bad)?;
                }
            }
        }
        if method == 0 && uncompressed != csize {
            return Err(format!(
                "corrupt zip archive: stored member `{name}` has two sizes ({csize} and {uncompressed})"
            ));
        }
        let data = local_data(bytes, offset, csize).map_err(|e| format!("member `{name}`: {e}"))?;
        members.push(Member { name, method, encrypted: flags & 1 != 0, data });
        at = next;
    }
    // Two members of one name (or of names that are one once invalid UTF-8 is replaced): readers
    // disagree on which one counts.
    let mut names = std::collections::HashSet::with_capacity(members.len());
    if let Some(m) = members.iter().find(|m| !names.insert(m.name.as_str())) {
        return Err(format!("the zip archive holds two members named `{}`: refusing an ambiguous file", m.name));
    }
    Ok(members)
}

/// The extra field `id`'s data within a header's extra fields.
fn find_extra(mut extra: &[u8], id: u16) -> Option<&[u8]> {
    while extra.len() >= 4 {
        let (this, len) = (u16_at(extra, 0)?, usize::from(u16_at(extra, 2)?));
        let data = extra.get(4..4 + len)?;
        if this == id {
            return Some(data);
        }
        extra = &extra[4 + len..];
    }
    None
}

/// Where a member's data is: after its local header, whose name and extra field lengths are its
/// own (PyTorch pads the local extra field only).
fn local_data(bytes: &[u8], offset: u64, size: u64) -> Result<Range<usize>, String> {
    let bad = || "its local header is truncated or invalid".to_string();
    let at = to_usize(offset, "local header offset")?;
    if u32_at(bytes, at) != Some(LOCAL_SIG) {
        return Err(bad());
    }
    let name_len = usize::from(u16_at(bytes, at + 26).ok_or_else(bad)?);
    let extra_len = usize::from(u16_at(bytes, at + 28).ok_or_else(bad)?);
    let start = at + LOCAL_LEN + name_len + extra_len;
    let end = start
        .checked_add(to_usize(size, "member size")?)
        .filter(|&e| e <= bytes.len())
        .ok_or("its data lies outside the file (truncated?)")?;
    Ok(start..end)
}

// -------------------------------------------------------------------------------------------------
// Writing
// -------------------------------------------------------------------------------------------------

/// Data of every member starts at a multiple of this, as in PyTorch (`.storage_alignment`).
pub(super) const ALIGNMENT: u64 = 64;

/// One member of an archive being laid out.
pub(super) struct Planned {
    pub name: String,
    pub size: u64,
    /// Where its local header starts.
    pub header: u64,
    /// Where its data starts (a multiple of [`ALIGNMENT`]).
    pub data: u64,
    /// The local header, CRC-32 left zero (at [`CRC_AT`]) until the data is written.
    pub local: Vec<u8>,
}

/// The offset of the CRC-32 within a local or central header.
pub(super) const CRC_AT: u64 = 14;
const CENTRAL_CRC_AT: u64 = 16;

fn is_64(v: u64, force: bool) -> bool {
    force || v >= 0xFFFF_FFFF
}

/// Lays out stored members of these names and sizes from offset 0: local headers padded so that
/// each member's data is aligned. `force_zip64` writes zip64 fields whatever the sizes (tests).
pub(super) fn plan(members: &[(String, u64)], force_zip64: bool) -> Result<(Vec<Planned>, u64), String> {
    let mut offset = 0u64;
    let mut planned = Vec::with_capacity(members.len());
    for (name, size) in members {
        let name_len = u16::try_from(name.len()).map_err(|_| format!("member name `{name}` is too long"))?;
        let big = is_64(*size, force_zip64);
        let mut extra = Vec::new();
        if big {
            extra.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
            extra.extend_from_slice(&16u16.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
        }
        let unpadded = offset + LOCAL_LEN as u64 + u64::from(name_len) + extra.len() as u64 + 4;
        let pad = (ALIGNMENT - unpadded % ALIGNMENT) % ALIGNMENT;
        extra.extend_from_slice(&PAD_EXTRA.to_le_bytes());
        extra.extend_from_slice(&(pad as u16).to_le_bytes());
        extra.resize(extra.len() + pad as usize, b'Z');
        let mut local = Vec::with_capacity(LOCAL_LEN + name.len() + extra.len());
        local.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        local.extend_from_slice(&(if big { 45u16 } else { 20 }).to_le_bytes());
        local.extend_from_slice(&flags(name).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes()); // stored
        local.extend_from_slice(&DOS_TIME.to_le_bytes());
        local.extend_from_slice(&DOS_DATE.to_le_bytes());
        local.extend_from_slice(&0u32.to_le_bytes()); // CRC-32, filled in later
        let short = if big { 0xFFFF_FFFF } else { *size as u32 };
        local.extend_from_slice(&short.to_le_bytes());
        local.extend_from_slice(&short.to_le_bytes());
        local.extend_from_slice(&name_len.to_le_bytes());
        local.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        local.extend_from_slice(&extra);
        let data = offset + local.len() as u64;
        debug_assert_eq!(data % ALIGNMENT, 0);
        planned.push(Planned { name: name.clone(), size: *size, header: offset, data, local });
        offset = data.checked_add(*size).ok_or("archive size overflows")?;
    }
    Ok((planned, offset))
}

/// 1980-01-01 00:00, the earliest DOS date (a zero date is invalid for some readers).
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = 0x21;

fn flags(name: &str) -> u16 {
    if name.is_ascii() {
        0
    } else {
        1 << 11 // the name is UTF-8
    }
}

/// The central directory and end records for `members` (CRC-32s given), placed at `offset`.
pub(super) fn central(members: &[Planned], crcs: &[u32], offset: u64, force_zip64: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut any64 = false;
    for (m, crc) in members.iter().zip(crcs) {
        let big = is_64(m.size, force_zip64);
        let far = is_64(m.header, force_zip64);
        let mut extra = Vec::new();
        if big || far {
            extra.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
            let len = if big { 16u16 } else { 0 } + if far { 8 } else { 0 };
            extra.extend_from_slice(&len.to_le_bytes());
            if big {
                extra.extend_from_slice(&m.size.to_le_bytes());
                extra.extend_from_slice(&m.size.to_le_bytes());
            }
            if far {
                extra.extend_from_slice(&m.header.to_le_bytes());
            }
            any64 = true;
        }
        let version = if big || far { 45u16 } else { 20 };
        out.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes()); // made by (MS-DOS)
        out.extend_from_slice(&version.to_le_bytes()); // needed
        out.extend_from_slice(&flags(&m.name).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&DOS_TIME.to_le_bytes());
        out.extend_from_slice(&DOS_DATE.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        let short = if big { 0xFFFF_FFFF } else { m.size as u32 };
        out.extend_from_slice(&short.to_le_bytes());
        out.extend_from_slice(&short.to_le_bytes());
        out.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // comment
        out.extend_from_slice(&0u16.to_le_bytes()); // disk
        out.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        out.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        out.extend_from_slice(&(if far { 0xFFFF_FFFF } else { m.header as u32 }).to_le_bytes());
        out.extend_from_slice(m.name.as_bytes());
        out.extend_from_slice(&extra);
    }
    let size = out.len() as u64;
    let count = members.len() as u64;
    let zip64 = any64 || is_64(offset, force_zip64) || is_64(size, force_zip64) || count >= 0xFFFF;
    if zip64 {
        let record = offset + size;
        out.extend_from_slice(&EOCD64_SIG.to_le_bytes());
        out.extend_from_slice(&(EOCD64_LEN as u64 - 12).to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // this disk
        out.extend_from_slice(&0u32.to_le_bytes()); // disk of the central directory
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&EOCD64_LOCATOR_SIG.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&record.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // disks
    }
    let clamp16 = |v: u64| if zip64 { 0xFFFF } else { v as u16 };
    let clamp32 = |v: u64| if zip64 { 0xFFFF_FFFF } else { v as u32 };
    out.extend_from_slice(&EOCD_SIG.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&clamp16(count).to_le_bytes());
    out.extend_from_slice(&clamp16(count).to_le_bytes());
    out.extend_from_slice(&clamp32(size).to_le_bytes());
    out.extend_from_slice(&clamp32(offset).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment
    out
}

/// Where member `index`'s CRC-32 sits in the central directory built by [`central`].
pub(super) fn central_crc_offsets(members: &[Planned], offset: u64, force_zip64: bool) -> Vec<u64> {
    let mut at = offset;
    members
        .iter()
        .map(|m| {
            let crc = at + CENTRAL_CRC_AT;
            let big = is_64(m.size, force_zip64);
            let far = is_64(m.header, force_zip64);
            let extra = if big || far { 4 + if big { 16 } else { 0 } + if far { 8 } else { 0 } } else { 0 };
            at += (CENTRAL_LEN + m.name.len() + extra) as u64;
            crc
        })
        .collect()
}
