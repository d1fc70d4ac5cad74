//! A reader of the structure of HDF5 files as h5py writes them: Keras 3 `*.weights.h5` (also inside
//! `.keras` zips) and tf-keras / Keras 2 `model.save("x.h5")` / `save_weights("x.h5")` files. It lists
//! every group, every dataset with its type, shape and where its raw bytes lie in the file (nothing is
//! copied: the caller maps the file), and the attributes it can decode. Std only, no `unsafe`, and
//! safe on hostile input: every read is bounds-checked, every offset computed with checked arithmetic,
//! recursion is depth-limited, and what is built (names, paths, attribute values) and what is scanned
//! (object headers, global heaps) is charged against a budget proportional to the input's length.
//!
//! Read:
//! - superblocks version 0 to 3, with 2-, 4- or 8-byte addresses and lengths; a user block before the
//!   superblock (addresses are relative to the superblock, as libhdf5 reads them);
//! - object headers version 1 and 2 (`OHDR`/`OCHK`, checksums not verified) with continuation blocks;
//! - groups stored as symbol tables (v1 B-tree of `SNOD` nodes, names in a local heap) and as compact
//!   link messages (hard links; soft and external links are skipped);
//! - datasets: dataspaces (scalar, simple, null), datatypes (integers, IEEE floats, h5py's bool enum;
//!   anything else is [`Type::Other`] with a description; committed datatypes are followed), data
//!   layouts version 1 to 4 (contiguous, compact, chunked, virtual) and filter pipelines;
//! - attributes (message versions 1 to 3) holding integers, floats, fixed-length strings or
//!   variable-length strings (in global heap collections); any other attribute is [`AttrValue::Other`].
//!
//! Refused with an error: groups in dense link storage (a fractal heap, written by `libver='latest'`
//! for more than 8 links), datasets whose data is in external files, shared dataspaces, contiguous
//! data whose size disagrees with its shape and type or that lies past the end of the file. Attributes
//! in dense attribute storage are not listed.

use std::collections::{HashMap, HashSet};

/// What [`parse`] found in a file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    /// Every dataset, depth first, the children of a group in name order.
    pub datasets: Vec<Dataset>,
    /// Every group's path, in the same order; the root group is `""`.
    pub groups: Vec<String>,
    /// The attributes of groups and datasets that could be named, in the same order.
    pub attributes: Vec<Attribute>,
}

/// A dataset: where its raw (little-endian, row-major) bytes are, if they are stored plainly.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The full path without a leading `/`, e.g. `layers/conv2d/vars/0`.
    pub path: String,
    /// The element type.
    pub dtype: Type,
    /// The dimensions; `[]` for a scalar (and a null) dataspace.
    pub shape: Vec<u64>,
    /// Where the data is.
    pub storage: Storage,
}

/// The element type of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// A little-endian IEEE float of 2, 4 or 8 bytes.
    Float {
        /// Its size in bytes.
        bytes: u8,
    },
    /// A little-endian integer of 1, 2, 4 or 8 bytes.
    Int {
        /// Its size in bytes.
        bytes: u8,
        /// Whether it is signed.
        signed: bool,
    },
    /// h5py's bool: a one-byte enum with members `FALSE` = 0 and `TRUE` = 1.
    Bool,
    /// Anything else (big-endian, strings, compounds, ...), described.
    Other(String),
}

/// Where a dataset's raw bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `file[offset..offset + len]`, `len` being the element count times the element size.
    Contiguous {
        /// Where the bytes start in the file.
        offset: u64,
        /// How many there are.
        len: u64,
    },
    /// Inside the object header, at `file[offset..offset + len]`.
    Compact {
        /// Where the bytes start in the file.
        offset: u64,
        /// How many there are.
        len: u64,
    },
    /// Never written (no data address), or a null dataspace.
    Unallocated,
    /// Split into chunks, unfiltered.
    Chunked,
    /// Passed through filters (always chunked): the filters' names joined by `+` in pipeline order, e.g.
    /// `shuffle+gzip`; a filter other than HDF5's own six is named by its message and id: `lzf (32000)`.
    Filtered(String),
    /// A virtual dataset (mapped from other datasets).
    Virtual,
}

/// An attribute of a group or a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// The path of the group or dataset it is attached to; `""` for the root group.
    pub object: String,
    /// The attribute's name.
    pub name: String,
    /// Its value, flattened.
    pub value: AttrValue,
}

/// An attribute's value, all elements of its dataspace in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// Fixed-length (NUL- or space-padded) or variable-length strings, invalid UTF-8 replaced.
    Strings(Vec<String>),
    /// Integers (of any size and byte order, unsigned ones that fit an `i64`).
    Ints(Vec<i64>),
    /// IEEE floats of 2, 4 or 8 bytes.
    Floats(Vec<f64>),
    /// Anything this reader does not decode.
    Other,
}

/// Reads the structure of the HDF5 file `bytes`. The error says what is wrong and where (the
/// object's path or a byte offset).
pub fn parse(bytes: &[u8]) -> Result<File, String> {
    let mut parser = Parser::new(bytes);
    let root = parser.superblock()?;
    parser.visit(root, "", 0)?;
    Ok(parser.out)
}

/// The format signature, found at 0, 512, 1024, 2048, ...
const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
/// How deep groups may nest.
const MAX_GROUP_DEPTH: usize = 64;
/// How many levels a group B-tree may have.
const MAX_BTREE_LEVEL: u8 = 32;
/// The most dimensions a dataspace has.
const MAX_RANK: usize = 32;

const MSG_DATASPACE: u16 = 0x01;
const MSG_LINK_INFO: u16 = 0x02;
const MSG_DATATYPE: u16 = 0x03;
const MSG_LINK: u16 = 0x06;
const MSG_EXTERNAL_FILES: u16 = 0x07;
const MSG_LAYOUT: u16 = 0x08;
const MSG_GROUP_INFO: u16 = 0x0A;
const MSG_FILTERS: u16 = 0x0B;
const MSG_ATTRIBUTE: u16 = 0x0C;
const MSG_CONTINUATION: u16 = 0x10;
const MSG_SYMBOL_TABLE: u16 = 0x11;
/// A message flag: the message is stored elsewhere (a committed datatype, a shared message heap).
const FLAG_SHARED: u8 = 0x02;

/// A bounds-checked little-endian reader of `bytes[pos..end]`; positions are file offsets.
#[derive(Clone)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    /// `len` bytes from `start`, which must lie in `bytes`.
    fn new(bytes: &'a [u8], start: usize, len: usize) -> Result<Self, String> {
        match start.checked_add(len) {
            Some(end) if end <= bytes.len() => Ok(Cursor { bytes, pos: start, end }),
            _ => Err(format!("{len} bytes at byte {start} run past the end of the file ({} bytes)", bytes.len())),
        }
    }

    fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let slice =
            self.pos.checked_add(n).filter(|&end| end <= self.end).and_then(|end| self.bytes.get(self.pos..end));
        let slice =
            slice.ok_or_else(|| format!("{n} bytes at byte {} run past the end of their structure", self.pos))?;
        self.pos += n;
        Ok(slice)
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(|_| ())
    }

    /// The next `n` bytes as a cursor of their own.
    fn sub(&mut self, n: usize) -> Result<Cursor<'a>, String> {
        let start = self.pos;
        self.skip(n)?;
        Ok(Cursor { bytes: self.bytes, pos: start, end: self.pos })
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        if n > 8 {
            return Err(format!("a {n}-byte integer at byte {}", self.pos));
        }
        Ok(self.take(n)?.iter().rev().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Checks a 4-byte signature.
    fn expect(&mut self, signature: &[u8; 4], what: &str) -> Result<(), String> {
        let at = self.pos;
        if self.take(4)? != signature {
            return Err(format!("no {what} signature {:?} at byte {at}", String::from_utf8_lossy(signature)));
        }
        Ok(())
    }

    /// A NUL-terminated string that must end before the cursor does; the cursor moves past the NUL.
    fn c_string(&mut self) -> Result<&'a [u8], String> {
        let rest = self.bytes.get(self.pos..self.end).unwrap_or_default();
        let len = rest.iter().position(|&b| b == 0).ok_or_else(|| format!("unterminated name at byte {}", self.pos))?;
        let name = self.take(len)?;
        self.skip(1)?;
        Ok(name)
    }
}

/// `n` rounded up to a multiple of 8.
fn pad8(n: usize) -> Result<usize, String> {
    n.checked_add(7).map(|n| n & !7).ok_or_else(|| format!("size {n} overflows"))
}

/// A message of an object header: its type, flags and where its data is.
#[derive(Clone, Copy)]
struct Message {
    kind: u16,
    flags: u8,
    start: usize,
    len: usize,
}

/// An element type, as much of it as datasets and attributes need.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Int {
        signed: bool,
        big_endian: bool,
    },
    Float {
        big_endian: bool,
    },
    Bool,
    /// A fixed-length string, padded with spaces (or else NULs).
    String {
        space_padded: bool,
    },
    VlenString,
    Other(String),
}

/// A decoded datatype message.
#[derive(Debug, Clone, PartialEq)]
struct Datatype {
    kind: Kind,
    size: u32,
}

impl Datatype {
    /// The type as [`Dataset::dtype`] reports it.
    fn public(&self) -> Type {
        let bytes = u8::try_from(self.size).unwrap_or(u8::MAX);
        match &self.kind {
            Kind::Int { signed, big_endian: false } => Type::Int { bytes, signed: *signed },
            Kind::Float { big_endian: false } => Type::Float { bytes },
            Kind::Int { signed, big_endian: true } => {
                Type::Other(format!("big-endian {}{}", if *signed { "int" } else { "uint" }, self.size * 8))
            }
            Kind::Float { big_endian: true } => Type::Other(format!("big-endian float{}", self.size * 8)),
            Kind::Bool => Type::Bool,
            Kind::String { .. } => Type::Other(format!("fixed-length string of {} bytes", self.size)),
            Kind::VlenString => Type::Other("variable-length string".into()),
            Kind::Other(what) => Type::Other(what.clone()),
        }
    }
}

/// Where a dataset's data is, as the layout message says.
enum Layout {
    Compact { start: usize, len: u64 },
    Contiguous { address: Option<u64>, len: Option<u64> },
    Chunked,
    Virtual,
}

/// The parser's state: the file, its address sizes, what was visited and what remains of the budget.
struct Parser<'a> {
    bytes: &'a [u8],
    /// The file offset addresses are relative to (the superblock's).
    base: u64,
    offset_size: usize,
    length_size: usize,
    /// Bytes that may still be built or scanned (names, paths, values, headers, heaps).
    budget: u64,
    /// Object headers already listed: each object is listed once, cycles end.
    seen_objects: HashSet<u64>,
    /// B-tree and symbol table nodes already read.
    seen_nodes: HashSet<usize>,
    /// Global heap collections read: object index → (file offset, length).
    collections: HashMap<u64, HashMap<u64, (usize, usize)>>,
    out: File,
}

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let budget = (bytes.len() as u64).saturating_mul(16).saturating_add(1 << 20);
        Parser {
            bytes,
            base: 0,
            offset_size: 8,
            length_size: 8,
            budget,
            seen_objects: HashSet::new(),
            seen_nodes: HashSet::new(),
            collections: HashMap::new(),
            out: File::default(),
        }
    }

    /// Spends `n` of the budget, or fails (spending nothing).
    fn charge(&mut self, n: usize) -> Result<(), String> {
        let n = n as u64;
        if n > self.budget {
            return Err("the file's metadata is larger than its size allows (a malformed file)".into());
        }
        self.budget -= n;
        Ok(())
    }

    /// An address (`None` when undefined: all bits set).
    fn address(&self, c: &mut Cursor) -> Result<Option<u64>, String> {
        let value = c.uint(self.offset_size)?;
        let undefined = if self.offset_size >= 8 { u64::MAX } else { (1u64 << (8 * self.offset_size)) - 1 };
        Ok((value != undefined).then_some(value))
    }

    /// A defined address.
    fn required_address(&self, c: &mut Cursor, what: &str) -> Result<u64, String> {
        let at = c.pos;
        self.address(c)?.ok_or_else(|| format!("the {what} address at byte {at} is undefined"))
    }

    fn length(&self, c: &mut Cursor) -> Result<u64, String> {
        c.uint(self.length_size)
    }

    /// The file offset of `address`, which must lie in the file.
    fn locate(&self, address: u64, what: &str) -> Result<usize, String> {
        self.base
            .checked_add(address)
            .and_then(|at| usize::try_from(at).ok())
            .filter(|&at| at < self.bytes.len())
            .ok_or_else(|| format!("the {what} address {address} lies outside the file ({} bytes)", self.bytes.len()))
    }

    /// A cursor from `address` to the end of the file.
    fn at(&self, address: u64, what: &str) -> Result<Cursor<'a>, String> {
        let start = self.locate(address, what)?;
        Cursor::new(self.bytes, start, self.bytes.len() - start)
    }

    /// `len` (a value read from the file) as a `usize` that fits in the file.
    fn size(&self, len: u64, what: &str) -> Result<usize, String> {
        usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.bytes.len())
            .ok_or_else(|| format!("the {what} size {len} exceeds the file's"))
    }

    /// Reads the superblock: sets the address sizes and base, returns the root group's header address.
    fn superblock(&mut self) -> Result<u64, String> {
        let mut start = 0usize;
        while !self.bytes.get(start..).is_some_and(|rest| rest.starts_with(SIGNATURE)) {
            start = if start == 0 { 512 } else { start.saturating_mul(2) };
            if start >= self.bytes.len() {
                return Err("not an HDF5 file: no signature at byte 0, 512, 1024, ...".into());
            }
        }
        let mut c = Cursor::new(self.bytes, start, self.bytes.len() - start)?;
        c.skip(8)?;
        let version = c.u8()?;
        let (offset_size, length_size) = match version {
            0 | 1 => {
                c.skip(4)?; // free-space, root group entry and shared header versions, reserved
                let sizes = (c.u8()?, c.u8()?);
                c.skip(1 + 2 + 2 + 4 + if version == 1 { 4 } else { 0 })?; // reserved, group K's, flags
                sizes
            }
            2 | 3 => {
                let sizes = (c.u8()?, c.u8()?);
                c.skip(1)?; // flags
                sizes
            }
            _ => return Err(format!("superblock version {version} is not supported (0 to 3 are)")),
        };
        for (size, what) in [(offset_size, "offsets"), (length_size, "lengths")] {
            if !matches!(size, 2 | 4 | 8) {
                return Err(format!("a size of {what} of {size} bytes is not supported (2, 4 and 8 are)"));
            }
        }
        self.offset_size = usize::from(offset_size);
        self.length_size = usize::from(length_size);
        // Addresses are relative to the base address, which libhdf5 takes to be where it found the
        // superblock whatever the stored value (they agree in files it writes, user block or not).
        self.base = start as u64;
        let _stored_base = self.address(&mut c)?;
        if version <= 1 {
            c.skip(3 * self.offset_size)?; // free-space info, end of file, driver info
            c.skip(self.offset_size)?; // the root entry's link name offset
        } else {
            c.skip(2 * self.offset_size)?; // superblock extension, end of file
        }
        self.required_address(&mut c, "root group object header")
    }

    /// Lists the object at `address` as `path`, then its children if it is a group.
    fn visit(&mut self, address: u64, path: &str, depth: usize) -> Result<(), String> {
        if !self.seen_objects.insert(address) {
            return Ok(());
        }
        let shown = if path.is_empty() { "/" } else { path };
        let messages = self.header(address).map_err(|e| format!("object '{shown}': {e}"))?;
        let has = |kind: u16| messages.iter().any(|m| m.kind == kind);
        if has(MSG_LAYOUT) {
            let dataset = self.dataset(path, &messages).map_err(|e| format!("dataset '{path}': {e}"))?;
            self.out.datasets.push(dataset);
            self.attributes(path, &messages);
        } else if [MSG_SYMBOL_TABLE, MSG_LINK, MSG_LINK_INFO, MSG_GROUP_INFO].into_iter().any(has) {
            self.out.groups.push(path.to_string());
            self.attributes(path, &messages);
            let mut children = self.children(&messages).map_err(|e| format!("group '{shown}': {e}"))?;
            children.sort();
            if depth >= MAX_GROUP_DEPTH && !children.is_empty() {
                return Err(format!("group '{shown}': groups nest more than {MAX_GROUP_DEPTH} deep"));
            }
            for (name, child) in children {
                let child_path = if path.is_empty() { name } else { format!("{path}/{name}") };
                self.charge(child_path.len())?;
                self.visit(child, &child_path, depth + 1)?;
            }
        }
        // Anything else (a committed datatype) is not listed.
        Ok(())
    }

    /// The messages of the object header at `address`, continuation blocks followed.
    fn header(&mut self, address: u64) -> Result<Vec<Message>, String> {
        let start = self.locate(address, "object header")?;
        let mut c = Cursor::new(self.bytes, start, self.bytes.len() - start)?;
        let v2 = self.bytes.get(start..).is_some_and(|rest| rest.starts_with(b"OHDR"));
        // Each block: (start, length) of its messages.
        let mut blocks = Vec::new();
        let mut prefix = 8; // a message's type, size, flags and reserved bytes (v1)
        if v2 {
            c.skip(4)?;
            let version = c.u8()?;
            if version != 2 {
                return Err(format!("object header version {version} at byte {start} is not supported"));
            }
            let flags = c.u8()?;
            c.skip(if flags & 0x20 != 0 { 16 } else { 0 } + if flags & 0x10 != 0 { 4 } else { 0 })?;
            let len = c.uint(1 << (flags & 3))?;
            let len = self.size(len, "object header")?;
            blocks.push((c.pos, len));
            prefix = if flags & 0x04 != 0 { 6 } else { 4 };
        } else {
            let version = c.u8()?;
            if version != 1 {
                return Err(format!("no object header at byte {start} (version {version})"));
            }
            c.skip(7)?; // reserved, message count, reference count
            let len = c.u32()?;
            c.skip(4)?; // alignment
            blocks.push((c.pos, self.size(u64::from(len), "object header")?));
        }
        let mut seen_blocks: HashSet<usize> = blocks.iter().map(|&(at, _)| at).collect();
        let mut messages = Vec::new();
        let mut next = 0;
        while let Some(&(block_start, block_len)) = blocks.get(next) {
            next += 1;
            self.charge(block_len)?;
            let mut c = Cursor::new(self.bytes, block_start, block_len)?;
            while c.remaining() >= prefix {
                let kind = if v2 { u16::from(c.u8()?) } else { c.u16()? };
                let len = usize::from(c.u16()?);
                let flags = c.u8()?;
                c.skip(prefix - if v2 { 4 } else { 5 })?; // v1: reserved; v2: creation order
                let message = Message { kind, flags, start: c.pos, len };
                c.skip(len)?;
                if kind == MSG_CONTINUATION {
                    let mut data = Cursor::new(self.bytes, message.start, message.len)?;
                    let at = self.required_address(&mut data, "continuation block")?;
                    let len = self.length(&mut data)?;
                    let (at, len) = (self.locate(at, "continuation block")?, self.size(len, "continuation block")?);
                    if !seen_blocks.insert(at) {
                        return Err(format!("the continuation block at byte {at} is referenced twice"));
                    }
                    let mut block = Cursor::new(self.bytes, at, len)?;
                    if v2 {
                        block.expect(b"OCHK", "object header continuation")?;
                        blocks.push((block.pos, block.remaining().saturating_sub(4)));
                    } else {
                        blocks.push((at, len));
                    }
                } else {
                    messages.push(message);
                }
            }
        }
        Ok(messages)
    }

    /// A cursor over a message's data.
    fn data(&self, message: &Message) -> Result<Cursor<'a>, String> {
        Cursor::new(self.bytes, message.start, message.len)
    }

    /// The (name, object header address) of a group's hard links.
    fn children(&mut self, messages: &[Message]) -> Result<Vec<(String, u64)>, String> {
        let mut children = Vec::new();
        for message in messages {
            let mut c = self.data(message)?;
            match message.kind {
                MSG_SYMBOL_TABLE => {
                    let btree = self.required_address(&mut c, "group B-tree")?;
                    let heap = self.required_address(&mut c, "group local heap")?;
                    let heap = self.local_heap(heap)?;
                    self.group_btree(btree, None, heap, &mut children)?;
                }
                MSG_LINK_INFO => {
                    c.skip(1)?; // version
                    let flags = c.u8()?;
                    c.skip(if flags & 1 != 0 { 8 } else { 0 })?;
                    if self.address(&mut c)?.is_some() {
                        return Err("its links are in dense storage (a fractal heap), which is not read; \
                                    re-save the file with h5py's default libver"
                            .into());
                    }
                }
                MSG_LINK => {
                    if let Some(child) = self.link(&mut c)? {
                        children.push(child);
                    }
                }
                _ => {}
            }
        }
        Ok(children)
    }

    /// A link message: `Some((name, address))` for a hard link, `None` for a soft or external one.
    fn link(&mut self, c: &mut Cursor) -> Result<Option<(String, u64)>, String> {
        let version = c.u8()?;
        if version != 1 {
            return Err(format!("link message version {version} is not supported"));
        }
        let flags = c.u8()?;
        let link_type = if flags & 0x08 != 0 { c.u8()? } else { 0 };
        c.skip(if flags & 0x04 != 0 { 8 } else { 0 } + if flags & 0x10 != 0 { 1 } else { 0 })?;
        let name_len = c.uint(1 << (flags & 3))?;
        let name = c.take(self.size(name_len, "link name")?)?;
        if link_type != 0 {
            return Ok(None);
        }
        let address = self.required_address(c, "link")?;
        self.charge(name.len())?;
        Ok(Some((String::from_utf8_lossy(name).into_owned(), address)))
    }

    /// A local heap's data segment: (file offset, length).
    fn local_heap(&self, address: u64) -> Result<(usize, usize), String> {
        let mut c = self.at(address, "local heap")?;
        c.expect(b"HEAP", "local heap")?;
        c.skip(4)?; // version, reserved
        let len = self.length(&mut c)?;
        self.length(&mut c)?; // free list
        let data = self.required_address(&mut c, "local heap data")?;
        let data = self.locate(data, "local heap data")?;
        let segment = Cursor::new(self.bytes, data, self.size(len, "local heap")?)?;
        Ok((segment.pos, segment.remaining()))
    }

    /// Walks a group B-tree node (level `level` if known), appending the links of its leaves.
    fn group_btree(
        &mut self,
        address: u64,
        level: Option<u8>,
        heap: (usize, usize),
        out: &mut Vec<(String, u64)>,
    ) -> Result<(), String> {
        let mut c = self.at(address, "group B-tree node")?;
        if !self.seen_nodes.insert(c.pos) {
            return Err(format!("the B-tree node at byte {} is referenced twice", c.pos));
        }
        c.expect(b"TREE", "B-tree node")?;
        let (node_type, node_level, entries) = (c.u8()?, c.u8()?, c.u16()?);
        if node_type != 0 || node_level > MAX_BTREE_LEVEL || level.is_some_and(|l| l != node_level) {
            return Err(format!(
                "a malformed group B-tree node (type {node_type}, level {node_level}) at byte {}",
                c.pos
            ));
        }
        c.skip(2 * self.offset_size)?; // siblings
        for _ in 0..entries {
            c.skip(self.length_size)?; // key: a heap offset
            let child = self.required_address(&mut c, "B-tree child")?;
            match node_level.checked_sub(1) {
                Some(below) => self.group_btree(child, Some(below), heap, out)?,
                None => self.symbol_table_node(child, heap, out)?,
            }
        }
        Ok(())
    }

    /// Appends the links of a symbol table node (`SNOD`).
    fn symbol_table_node(
        &mut self,
        address: u64,
        heap: (usize, usize),
        out: &mut Vec<(String, u64)>,
    ) -> Result<(), String> {
        let mut c = self.at(address, "symbol table node")?;
        if !self.seen_nodes.insert(c.pos) {
            return Err(format!("the symbol table node at byte {} is referenced twice", c.pos));
        }
        c.expect(b"SNOD", "symbol table node")?;
        c.skip(2)?; // version, reserved
        for _ in 0..c.u16()? {
            let name_offset = c.uint(self.offset_size)?;
            let child = self.required_address(&mut c, "symbol table entry")?;
            c.skip(24)?; // cache type, reserved, scratch pad
            let name = usize::try_from(name_offset)
                .ok()
                .filter(|&offset| offset < heap.1)
                .and_then(|offset| Cursor::new(self.bytes, heap.0 + offset, heap.1 - offset).ok())
                .ok_or_else(|| format!("the link name offset {name_offset} lies outside the local heap"))?
                .c_string()?;
            self.charge(name.len() + 1)?;
            out.push((String::from_utf8_lossy(name).into_owned(), child));
        }
        Ok(())
    }

    /// Describes the dataset whose header has `messages`.
    fn dataset(&mut self, path: &str, messages: &[Message]) -> Result<Dataset, String> {
        let find = |kind: u16| messages.iter().find(|m| m.kind == kind).ok_or_else(|| format!("no message {kind:#x}"));
        let space = find(MSG_DATASPACE)?;
        if space.flags & FLAG_SHARED != 0 {
            return Err("shared dataspaces are not read".into());
        }
        let dims = dataspace(&mut self.data(space)?, self.length_size)?;
        let dtype = self.dataset_type(find(MSG_DATATYPE)?)?;
        if messages.iter().any(|m| m.kind == MSG_EXTERNAL_FILES) {
            return Err("its data is in external files, which are not read".into());
        }
        let layout = self.layout(&mut self.data(find(MSG_LAYOUT)?)?)?;
        let count = dims.iter().flatten().try_fold(1u64, |n, &d| n.checked_mul(d));
        let nbytes = count
            .and_then(|n| n.checked_mul(u64::from(dtype.size)))
            .ok_or_else(|| format!("its shape {dims:?} of {}-byte elements overflows", dtype.size))?;
        let filters = messages.iter().find(|m| m.kind == MSG_FILTERS).map(|m| self.filters(m)).transpose()?;
        let storage = match (&dims, layout) {
            (None, _) => Storage::Unallocated,
            _ if filters.is_some() => Storage::Filtered(filters.unwrap_or_default()),
            (_, Layout::Chunked) => Storage::Chunked,
            (_, Layout::Virtual) => Storage::Virtual,
            (_, Layout::Contiguous { address: None, .. }) => Storage::Unallocated,
            (_, Layout::Compact { start, len }) => {
                if len != nbytes {
                    return Err(format!("its compact data has {len} bytes, its shape and type need {nbytes}"));
                }
                Storage::Compact { offset: start as u64, len }
            }
            (_, Layout::Contiguous { address: Some(address), len }) => {
                let len = len.unwrap_or(nbytes);
                if len != nbytes {
                    return Err(format!("its contiguous data has {len} bytes, its shape and type need {nbytes}"));
                }
                let offset = self.base.saturating_add(address);
                if offset.checked_add(len).is_none_or(|end| end > self.bytes.len() as u64) {
                    return Err(format!(
                        "its {len} bytes of data at byte {offset} run past the end of the file ({} bytes)",
                        self.bytes.len()
                    ));
                }
                Storage::Contiguous { offset, len }
            }
        };
        self.charge(path.len())?;
        let shape = dims.unwrap_or_default();
        Ok(Dataset { path: path.to_string(), dtype: dtype.public(), shape, storage })
    }

    /// A dataset's datatype message, following a committed (shared) datatype once.
    fn dataset_type(&mut self, message: &Message) -> Result<Datatype, String> {
        let mut c = self.data(message)?;
        if message.flags & FLAG_SHARED == 0 {
            return datatype(&mut c, 0);
        }
        let version = c.u8()?;
        let kind = c.u8()?;
        match (version, kind) {
            (1, _) => c.skip(6)?,
            (2, _) | (3, 2) => {}
            _ => return Err(format!("shared datatype message version {version}, type {kind} is not read")),
        }
        let address = self.required_address(&mut c, "committed datatype")?;
        let messages = self.header(address).map_err(|e| format!("committed datatype: {e}"))?;
        match messages.iter().find(|m| m.kind == MSG_DATATYPE) {
            Some(m) if m.flags & FLAG_SHARED == 0 => datatype(&mut self.data(m)?, 0),
            _ => Err(format!("no datatype in the committed datatype at address {address}")),
        }
    }

    /// A data layout message (versions 1 to 4).
    fn layout(&self, c: &mut Cursor) -> Result<Layout, String> {
        let version = c.u8()?;
        if version == 1 || version == 2 {
            let rank = usize::from(c.u8()?);
            let class = c.u8()?;
            c.skip(5)?;
            let address = if class != 0 { self.address(c)? } else { None };
            c.skip(rank.checked_mul(4).ok_or("rank overflows")?)?;
            return match class {
                0 => {
                    let len = c.u32()?;
                    let start = c.pos;
                    c.skip(len as usize)?;
                    Ok(Layout::Compact { start, len: u64::from(len) })
                }
                1 => Ok(Layout::Contiguous { address, len: None }),
                2 => Ok(Layout::Chunked),
                _ => Err(format!("layout class {class} is unknown")),
            };
        }
        if version != 3 && version != 4 {
            return Err(format!("data layout message version {version} is not supported"));
        }
        match c.u8()? {
            0 => {
                let len = c.u16()?;
                let start = c.pos;
                c.skip(usize::from(len))?;
                Ok(Layout::Compact { start, len: u64::from(len) })
            }
            1 => Ok(Layout::Contiguous { address: self.address(c)?, len: Some(self.length(c)?) }),
            2 => Ok(Layout::Chunked),
            3 if version == 4 => Ok(Layout::Virtual),
            class => Err(format!("layout class {class} is unknown")),
        }
    }

    /// A filter pipeline message: the filters' names joined by `+`.
    fn filters(&self, message: &Message) -> Result<String, String> {
        let mut c = self.data(message)?;
        let version = c.u8()?;
        let count = c.u8()?;
        if version == 1 {
            c.skip(6)?;
        }
        let mut names = Vec::new();
        for _ in 0..count {
            let id = c.u16()?;
            let name_len = if version == 1 || id >= 256 { usize::from(c.u16()?) } else { 0 };
            c.skip(2)?; // flags
            let values = usize::from(c.u16()?);
            let name = c.take(if version == 1 { pad8(name_len)? } else { name_len })?;
            c.skip(4 * values + if version == 1 && values % 2 == 1 { 4 } else { 0 })?;
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            names.push(match id {
                1 => "gzip".to_string(), // deflate
                2 => "shuffle".to_string(),
                3 => "fletcher32".to_string(),
                4 => "szip".to_string(),
                5 => "nbit".to_string(),
                6 => "scaleoffset".to_string(),
                _ if !name.is_empty() => format!("{} ({id})", String::from_utf8_lossy(name)),
                _ => format!("filter {id}"),
            });
        }
        Ok(names.join("+"))
    }

    /// Appends the attributes among `messages`, skipping those that cannot even be named.
    fn attributes(&mut self, object: &str, messages: &[Message]) {
        for message in messages.iter().filter(|m| m.kind == MSG_ATTRIBUTE) {
            let Ok(mut c) = self.data(message) else { continue };
            if let Ok(attribute) = self.attribute(object, &mut c) {
                self.out.attributes.push(attribute);
            }
        }
    }

    /// An attribute message (versions 1 to 3).
    fn attribute(&mut self, object: &str, c: &mut Cursor) -> Result<Attribute, String> {
        let version = c.u8()?;
        let flags = c.u8()?;
        let (name_len, type_len, space_len) = (c.u16()?, c.u16()?, c.u16()?);
        let [name_len, type_len, space_len] = [name_len, type_len, space_len].map(usize::from);
        let (name, mut dtype, mut space) = match version {
            1 => (c.take(pad8(name_len)?)?, c.sub(pad8(type_len)?)?, c.sub(pad8(space_len)?)?),
            2 | 3 => {
                c.skip(if version == 3 { 1 } else { 0 })?; // name encoding
                (c.take(name_len)?, c.sub(type_len)?, c.sub(space_len)?)
            }
            _ => return Err(format!("attribute message version {version}")),
        };
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        self.charge(name.len() + object.len())?;
        let name = String::from_utf8_lossy(name).into_owned();
        let value = if version > 1 && flags & 3 != 0 {
            AttrValue::Other // shared datatype or dataspace
        } else {
            let decoded = datatype(&mut dtype, 0)
                .and_then(|dtype| Ok((dtype, dataspace(&mut space, self.length_size)?)))
                .and_then(|(dtype, dims)| self.attribute_value(&dtype, dims.as_deref(), c));
            decoded.unwrap_or(AttrValue::Other)
        };
        Ok(Attribute { object: object.to_string(), name, value })
    }

    /// Decodes an attribute's data of type `dtype` and shape `dims` (`None`: a null dataspace).
    fn attribute_value(&mut self, dtype: &Datatype, dims: Option<&[u64]>, c: &mut Cursor) -> Result<AttrValue, String> {
        let Some(dims) = dims else { return Ok(AttrValue::Other) }; // h5py.Empty
        let count = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let count = count.and_then(|n| usize::try_from(n).ok()).ok_or("count overflows")?;
        let size = match dtype.kind {
            Kind::VlenString => 4 + self.offset_size + 4,
            _ => dtype.size as usize,
        };
        if size == 0 {
            return Err("zero-sized elements".into());
        }
        let data = c.take(count.checked_mul(size).ok_or("size overflows")?)?;
        self.charge(count.saturating_mul(8))?;
        let elements = data.chunks_exact(size);
        let value = match dtype.kind {
            Kind::Int { signed, big_endian } if size <= 8 => {
                let ints = elements.map(|e| {
                    let mut bytes = e.to_vec();
                    if big_endian {
                        bytes.reverse();
                    }
                    let value = bytes.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                    let shift = 64 - 8 * size as u32;
                    match signed {
                        true => Ok(((value << shift) as i64) >> shift),
                        false => i64::try_from(value).map_err(|_| "unsigned value exceeds i64".to_string()),
                    }
                });
                AttrValue::Ints(ints.collect::<Result<_, _>>()?)
            }
            Kind::Float { big_endian } => {
                let floats = elements.map(|e| {
                    let mut bytes = e.to_vec();
                    if big_endian {
                        bytes.reverse();
                    }
                    match *bytes.as_slice() {
                        [a, b] => Ok(f16_to_f64(u16::from_le_bytes([a, b]))),
                        [a, b, c, d] => Ok(f64::from(f32::from_le_bytes([a, b, c, d]))),
                        [a, b, c, d, e, f, g, h] => Ok(f64::from_le_bytes([a, b, c, d, e, f, g, h])),
                        _ => Err(format!("a {size}-byte float")),
                    }
                });
                AttrValue::Floats(floats.collect::<Result<_, _>>()?)
            }
            Kind::String { space_padded } => {
                let mut strings = Vec::new();
                for e in elements {
                    let mut s = e.split(|&b| b == 0).next().unwrap_or_default();
                    while space_padded && s.last() == Some(&b' ') {
                        s = &s[..s.len() - 1];
                    }
                    self.charge(s.len())?;
                    strings.push(String::from_utf8_lossy(s).into_owned());
                }
                AttrValue::Strings(strings)
            }
            Kind::VlenString => {
                let mut strings = Vec::new();
                for e in elements {
                    let mut e = Cursor { bytes: e, pos: 0, end: e.len() };
                    let len = e.u32()? as usize;
                    let collection = self.address(&mut e)?;
                    let index = e.u32()?;
                    let s = match collection {
                        Some(collection) if len > 0 => {
                            let (start, object_len) = self.global_object(collection, u64::from(index))?;
                            self.bytes.get(start..start + object_len.min(len)).unwrap_or_default()
                        }
                        _ => &[],
                    };
                    let s = s.split(|&b| b == 0).next().unwrap_or_default();
                    self.charge(s.len())?;
                    strings.push(String::from_utf8_lossy(s).into_owned());
                }
                AttrValue::Strings(strings)
            }
            _ => AttrValue::Other,
        };
        Ok(value)
    }

    /// An object of the global heap collection at `address`: (file offset, length).
    fn global_object(&mut self, address: u64, index: u64) -> Result<(usize, usize), String> {
        if !self.collections.contains_key(&address) {
            // A collection that cannot be read is remembered as empty: it is not read again.
            let objects = self.read_collection(address).unwrap_or_default();
            self.collections.insert(address, objects);
        }
        let object = self.collections.get(&address).and_then(|objects| objects.get(&index));
        object.copied().ok_or_else(|| format!("no object {index} in the global heap at address {address}"))
    }

    /// Reads a global heap collection (`GCOL`).
    fn read_collection(&mut self, address: u64) -> Result<HashMap<u64, (usize, usize)>, String> {
        let mut c = self.at(address, "global heap")?;
        let start = c.pos;
        c.expect(b"GCOL", "global heap collection")?;
        c.skip(4)?; // version, reserved
        let len = self.length(&mut c)?;
        let len = self.size(len, "global heap")?;
        self.charge(len)?;
        let header = pad8(c.pos - start)?; // libhdf5 aligns the collection's header
        let mut c = Cursor::new(self.bytes, start, len)?;
        c.skip(header)?;
        let mut objects = HashMap::new();
        while c.remaining() >= 8 + self.length_size {
            let index = c.u16()?;
            c.skip(6)?; // reference count, reserved
            let object_len = self.length(&mut c)?;
            if index == 0 {
                break; // free space: the rest of the collection
            }
            let object_len = self.size(object_len, "global heap object")?;
            c.skip(pad8(8 + self.length_size)? - (8 + self.length_size))?; // the object header is aligned too
            let object = c.pos;
            c.skip(object_len)?;
            c.skip(pad8(object_len)? - object_len).ok();
            objects.insert(u64::from(index), (object, object_len));
        }
        Ok(objects)
    }
}

/// A dataspace message: `Some(dims)` (`[]` for a scalar), `None` for a null dataspace.
fn dataspace(c: &mut Cursor, length_size: usize) -> Result<Option<Vec<u64>>, String> {
    let version = c.u8()?;
    let rank = usize::from(c.u8()?);
    c.skip(1)?; // flags
    let null = match version {
        1 => {
            c.skip(5)?;
            false
        }
        2 => c.u8()? == 2,
        _ => return Err(format!("dataspace message version {version} is not supported")),
    };
    if rank > MAX_RANK {
        return Err(format!("a dataspace of rank {rank} (at most {MAX_RANK})"));
    }
    let dims = (0..rank).map(|_| c.uint(length_size)).collect::<Result<Vec<_>, _>>()?;
    Ok((!null).then_some(dims))
}

/// A datatype message; `nesting` counts the enclosing types (an enum's base type).
fn datatype(c: &mut Cursor, nesting: u32) -> Result<Datatype, String> {
    let class_version = c.u8()?;
    let (class, version) = (class_version & 0x0f, class_version >> 4);
    let bits = c.take(3)?;
    let size = c.u32()?;
    let other = |what: &str| Ok(Datatype { kind: Kind::Other(what.to_string()), size });
    let sizes_ok = matches!(size, 1 | 2 | 4 | 8);
    match class {
        0 => {
            let (offset, precision) = (c.u16()?, c.u16()?);
            if !sizes_ok || offset != 0 || u64::from(precision) != u64::from(size) * 8 {
                return other(&format!("{precision}-bit integer in {size} bytes"));
            }
            Ok(Datatype { kind: Kind::Int { signed: bits[0] & 0x08 != 0, big_endian: bits[0] & 1 != 0 }, size })
        }
        1 => {
            let (offset, precision) = (c.u16()?, c.u16()?);
            let fields = (c.u8()?, c.u8()?, c.u8()?, c.u8()?, c.u32()?);
            let ieee = match size {
                2 => Some((10, 5, 0, 10, 15)),
                4 => Some((23, 8, 0, 23, 127)),
                8 => Some((52, 11, 0, 52, 1023)),
                _ => None,
            };
            let bits_ok = u64::from(precision) == u64::from(size) * 8 && offset == 0 && bits[0] & 0x40 == 0;
            if ieee != Some(fields) || !bits_ok {
                return other(&format!(
                    "non-IEEE float of {size} bytes (exponent {} bits, mantissa {})",
                    fields.1, fields.3
                ));
            }
            Ok(Datatype { kind: Kind::Float { big_endian: bits[0] & 1 != 0 }, size })
        }
        3 => Ok(Datatype { kind: Kind::String { space_padded: bits[0] & 0x0f == 2 }, size }),
        8 if nesting == 0 => {
            let base = datatype(c, nesting + 1)?;
            let members = u16::from_le_bytes([bits[0], bits[1]]);
            let bool_like = base.kind == (Kind::Int { signed: true, big_endian: false }) && base.size == 1;
            if members != 2 || !bool_like {
                return other("enum");
            }
            let mut names = Vec::new();
            for _ in 0..2 {
                let start = c.pos;
                let name = c.c_string()?;
                if version < 3 {
                    c.skip(pad8(c.pos - start)? - (c.pos - start))?;
                }
                names.push(name);
            }
            let mut members: Vec<_> = names.into_iter().zip(c.take(2)?.iter().copied()).collect();
            members.sort();
            if members == [(&b"FALSE"[..], 0), (&b"TRUE"[..], 1)] {
                return Ok(Datatype { kind: Kind::Bool, size });
            }
            other("enum")
        }
        9 if bits[0] & 0x0f == 1 => Ok(Datatype { kind: Kind::VlenString, size }),
        _ => other(match class {
            2 => "time",
            4 => "bitfield",
            5 => "opaque",
            6 => "compound",
            7 => "reference",
            8 => "enum",
            9 => "variable-length sequence",
            10 => "array",
            _ => "unknown datatype class",
        }),
    }
}

/// An IEEE half-precision float.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((h >> 10) & 0x1f);
    let mantissa = f64::from(h & 0x3ff);
    match exponent {
        0 => sign * mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + mantissa / 1024.0) * 2f64.powi(exponent - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture written by `fixtures/hdf5/make_hdf5_fixtures.py` and what h5py reads from it.
    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hdf5/", $name, ".h5")).as_slice(),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hdf5/", $name, ".expected")),
            )
        };
    }

    /// Keras 3 weights, Keras 2 `model.save`, h5py defaults and `libver='latest'`.
    const FIXTURES: [(&str, &[u8], &str); 4] =
        [fixture!("keras3.weights"), fixture!("keras2"), fixture!("basic"), fixture!("latest")];

    fn fnv1a64(bytes: &[u8]) -> String {
        let hash =
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{hash:016x}")
    }

    /// `file` in the line format of the `.expected` files (attributes sorted, floats normalised).
    fn render(bytes: &[u8], file: &File) -> Vec<String> {
        let mut lines: Vec<String> = file.groups.iter().map(|g| format!("group\t{g}")).collect();
        for d in &file.datasets {
            let dtype = match d.dtype {
                Type::Float { bytes } => format!("<f{bytes}"),
                Type::Int { bytes: 1, signed } => format!("|{}1", if signed { 'i' } else { 'u' }),
                Type::Int { bytes, signed } => format!("<{}{bytes}", if signed { 'i' } else { 'u' }),
                Type::Bool => "|b1".into(),
                Type::Other(_) => "other".into(),
            };
            let (storage, range) = match &d.storage {
                Storage::Contiguous { offset, len } => ("contiguous".to_string(), Some((*offset, *len))),
                Storage::Compact { offset, len } => ("compact".to_string(), Some((*offset, *len))),
                Storage::Unallocated => ("unallocated".into(), None),
                Storage::Chunked => ("chunked".into(), None),
                Storage::Filtered(names) => (format!("filtered:{names}"), None),
                Storage::Virtual => ("virtual".into(), None),
            };
            let data = match range {
                Some((offset, len)) => {
                    let data = &bytes[offset as usize..(offset + len) as usize];
                    format!("{len}\t{}", fnv1a64(data))
                }
                None => "-\t-".into(),
            };
            let shape: Vec<String> = d.shape.iter().map(u64::to_string).collect();
            lines.push(format!("dataset\t{}\t{dtype}\t{}\t{storage}\t{data}", d.path, shape.join(",")));
        }
        let mut attributes: Vec<String> = file
            .attributes
            .iter()
            .map(|a| {
                let (kind, values): (&str, Vec<String>) = match &a.value {
                    AttrValue::Strings(s) => ("strings", s.iter().map(|s| string_value(s)).collect()),
                    AttrValue::Ints(v) => ("ints", v.iter().map(i64::to_string).collect()),
                    AttrValue::Floats(v) => ("floats", v.iter().map(|v| format!("{v:?}")).collect()),
                    AttrValue::Other => ("other", vec![]),
                };
                format!("attr\t{}\t{}\t{kind}\t{}", a.object, a.name, values.join(","))
            })
            .collect();
        attributes.sort();
        lines.extend(attributes);
        lines
    }

    fn string_value(s: &str) -> String {
        match s.len() {
            0..=64 => s.bytes().map(|b| format!("{b:02x}")).collect(),
            len => format!("#{len}:{}", fnv1a64(s.as_bytes())),
        }
    }

    /// An `.expected` file's lines, attributes sorted and floats written as Rust writes them.
    fn expected(text: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut attributes = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["attr", object, name, "floats", values] if !values.is_empty() => {
                    let values: Vec<String> =
                        values.split(',').map(|v| format!("{:?}", v.parse::<f64>().expect("a float"))).collect();
                    attributes.push(format!("attr\t{object}\t{name}\tfloats\t{}", values.join(",")));
                }
                ["attr", ..] => attributes.push(line.to_string()),
                _ => lines.push(line.to_string()),
            }
        }
        attributes.sort();
        lines.extend(attributes);
        lines
    }

    #[test]
    fn reads_what_h5py_reads() {
        for (name, bytes, text) in FIXTURES {
            let file = parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(render(bytes, &file), expected(text), "{name}");
        }
    }

    #[test]
    fn keras3_weights() {
        let file = parse(FIXTURES[0].1).expect("keras3 weights");
        let kernel = file.datasets.iter().find(|d| d.path == "layers/conv2d/vars/0").expect("the conv kernel");
        assert_eq!((&kernel.dtype, kernel.shape.as_slice()), (&Type::Float { bytes: 4 }, &[3, 3, 3, 4][..]));
        assert!(matches!(kernel.storage, Storage::Contiguous { len: 432, .. }));
        assert!(file.groups.iter().any(|g| g == "layers/flatten/vars"), "empty groups are listed");
    }

    #[test]
    fn keras2_attributes() {
        let file = parse(FIXTURES[1].1).expect("keras2");
        let attribute = |object: &str, name: &str| {
            file.attributes.iter().find(|a| a.object == object && a.name == name).map(|a| a.value.clone())
        };
        let names = ["kernel:0", "bias:0"].map(|n| format!("conv2d/{n}")).to_vec();
        assert_eq!(attribute("model_weights/conv2d", "weight_names"), Some(AttrValue::Strings(names)));
        let Some(AttrValue::Strings(config)) = attribute("", "model_config") else { panic!("no model_config") };
        assert!(config[0].starts_with("{\"class_name\": \"Functional\""), "{}", config[0]);
        let iterations = file.datasets.iter().find(|d| d.path.ends_with("iteration:0")).expect("iteration");
        assert_eq!((&iterations.dtype, iterations.shape.len()), (&Type::Int { bytes: 8, signed: true }, 0));
    }

    #[test]
    fn storage_kinds() {
        let file = parse(FIXTURES[2].1).expect("basic");
        let storage = |path: &str| file.datasets.iter().find(|d| d.path == path).map(|d| d.storage.clone());
        assert_eq!(storage("storage/gzip"), Some(Storage::Filtered("gzip".into())));
        assert_eq!(storage("storage/shuffle_gzip"), Some(Storage::Filtered("shuffle+gzip".into())));
        assert_eq!(storage("storage/chunked"), Some(Storage::Chunked));
        assert_eq!(storage("storage/unwritten"), Some(Storage::Unallocated));
        assert!(matches!(storage("storage/compact"), Some(Storage::Compact { len: 24, .. })));
    }

    #[test]
    fn refuses_what_is_not_hdf5() {
        assert!(parse(b"").unwrap_err().contains("not an HDF5 file"));
        assert!(parse(&[0u8; 4096]).unwrap_err().contains("not an HDF5 file"));
        let mut bytes = FIXTURES[2].1.to_vec();
        bytes[8] = 7; // superblock version
        assert!(parse(&bytes).unwrap_err().contains("superblock version 7"));
    }

    /// A file of hand-made objects: a version 2 superblock, then `objects[i]` at byte `64 + 256 * i`
    /// (the root group is the first).
    fn handmade(objects: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend([2, 8, 8, 0]);
        for address in [0, u64::MAX, 64 + 256 * objects.len() as u64, 64] {
            bytes.extend(address.to_le_bytes()); // base, extension, end of file, root
        }
        for (i, object) in objects.iter().enumerate() {
            bytes.resize(64 + 256 * i, 0);
            bytes.extend(object);
        }
        bytes
    }

    /// A version 1 object header holding `messages` (type, data).
    fn header_v1(messages: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, data) in messages {
            let len = data.len().div_ceil(8) * 8;
            body.extend(kind.to_le_bytes());
            body.extend((len as u16).to_le_bytes());
            body.extend([0; 4]);
            body.extend(data);
            body.resize(body.len() + len - data.len(), 0);
        }
        let mut header = vec![1, 0];
        header.extend((messages.len() as u16).to_le_bytes());
        header.extend(1u32.to_le_bytes());
        header.extend((body.len() as u32).to_le_bytes());
        header.extend([0; 4]);
        header.extend(body);
        header
    }

    /// A hard link message to the object at `address`.
    fn link(name: &str, address: u64) -> (u16, Vec<u8>) {
        let mut data = vec![1, 0, name.len() as u8];
        data.extend(name.as_bytes());
        data.extend(address.to_le_bytes());
        (MSG_LINK, data)
    }

    /// The header of a float32 dataset of shape `dims` whose data is at `address` (`len` bytes).
    fn float_dataset(dims: &[u64], address: u64, len: u64) -> Vec<u8> {
        let mut space = vec![1, dims.len() as u8, 0, 0, 0, 0, 0, 0];
        dims.iter().for_each(|d| space.extend(d.to_le_bytes()));
        let mut dtype = vec![0x11, 0x20, 0x3f, 0, 4, 0, 0, 0, 0, 0, 32, 0, 23, 8, 0, 23];
        dtype.extend(127u32.to_le_bytes());
        let mut layout = vec![3, 1];
        layout.extend(address.to_le_bytes());
        layout.extend(len.to_le_bytes());
        header_v1(&[(MSG_DATASPACE, space), (MSG_DATATYPE, dtype), (MSG_LAYOUT, layout)])
    }

    #[test]
    fn handmade_files() {
        let file = handmade(&[header_v1(&[link("w", 320)]), float_dataset(&[2, 2], 576, 16), vec![7; 16]]);
        let parsed = parse(&file).expect("a handmade file");
        let dataset = Dataset {
            path: "w".into(),
            dtype: Type::Float { bytes: 4 },
            shape: vec![2, 2],
            storage: Storage::Contiguous { offset: 576, len: 16 },
        };
        assert_eq!((parsed.groups, parsed.datasets), (vec![String::new()], vec![dataset]));
        // The data's size disagrees with the shape, lies past the end, or the shape overflows.
        for (dataset, error) in [
            (
                float_dataset(&[2, 2], 576, 12),
                "dataset 'w': its contiguous data has 12 bytes, its shape and type need 16",
            ),
            (float_dataset(&[2, 2], 1000, 16), "dataset 'w': its 16 bytes of data at byte 1000 run past the end"),
            (float_dataset(&[1 << 40, 1 << 40], 576, 16), "dataset 'w': its shape"),
        ] {
            let file = handmade(&[header_v1(&[link("w", 320)]), dataset, vec![7; 16]]);
            let message = parse(&file).unwrap_err();
            assert!(message.starts_with(error), "{message}");
        }
    }

    #[test]
    fn handmade_loops_end() {
        // A group linking to itself is listed once.
        let file = handmade(&[header_v1(&[link("me", 64)])]);
        assert_eq!(parse(&file).expect("a self-link").groups, vec![String::new()]);
        // A continuation block that continues into itself.
        let mut continuation = 80u64.to_le_bytes().to_vec();
        continuation.extend(24u64.to_le_bytes());
        let file = handmade(&[header_v1(&[(MSG_CONTINUATION, continuation)])]);
        assert!(parse(&file).unwrap_err().contains("referenced twice"));
        // A B-tree node that is its own child.
        let mut table = 320u64.to_le_bytes().to_vec();
        table.extend(576u64.to_le_bytes());
        let mut node = b"TREE".to_vec();
        node.extend([0, 1, 1, 0]);
        node.extend([0xff; 16]); // siblings
        node.extend([0; 8]);
        node.extend(320u64.to_le_bytes());
        node.extend([0; 8]);
        let mut heap = b"HEAP".to_vec();
        heap.extend([0; 4]);
        heap.extend([16u64, 0, 608].map(u64::to_le_bytes).concat());
        heap.extend([0; 16]);
        let file = handmade(&[header_v1(&[(MSG_SYMBOL_TABLE, table)]), node, heap]);
        assert!(parse(&file).unwrap_err().contains("B-tree node at byte 320 is referenced twice"));
        // Groups nested too deep.
        let chain: Vec<_> = (1..=MAX_GROUP_DEPTH as u64 + 2).map(|i| header_v1(&[link("g", 64 + 256 * i)])).collect();
        assert!(parse(&handmade(&chain)).unwrap_err().contains("groups nest more than 64 deep"));
    }

    /// Contiguous and compact data reported by a parse of `bytes` lies in `bytes`.
    fn check_ranges(bytes: &[u8], file: &File) {
        for d in &file.datasets {
            if let Storage::Contiguous { offset, len } | Storage::Compact { offset, len } = d.storage {
                assert!(offset.checked_add(len).is_some_and(|end| end <= bytes.len() as u64), "{}", d.path);
            }
        }
    }

    #[test]
    fn truncated_files_do_not_panic() {
        let mut cases = 0;
        for (name, bytes, _) in FIXTURES {
            for len in (0..bytes.len()).step_by((bytes.len() / 3000).max(1)) {
                if let Ok(file) = parse(&bytes[..len]) {
                    check_ranges(&bytes[..len], &file);
                }
                cases += 1;
            }
            assert!(parse(&bytes[..bytes.len() / 2]).is_err(), "{name}: half a file");
        }
        assert!(cases > 10_000, "{cases}");
    }

    #[test]
    fn corrupted_files_do_not_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (_, bytes, _) in FIXTURES {
            // Most of a file's metadata is in its first few kilobytes: aim half of the flips there.
            for case in 0..4000 {
                let mut corrupted = bytes.to_vec();
                let span = if case % 2 == 0 { bytes.len().min(4096) } else { bytes.len() };
                for _ in 0..=random() % 4 {
                    let at = (random() % span as u64) as usize;
                    corrupted[at] = match random() % 3 {
                        0 => corrupted[at] ^ (1 << (random() % 8)),
                        1 => 0xff,
                        _ => random() as u8,
                    };
                }
                if let Ok(file) = parse(&corrupted) {
                    check_ranges(&corrupted, &file);
                }
            }
        }
    }
}
