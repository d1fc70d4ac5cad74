//! The pickle encoder of the writer, for now only for tests: protocol-2 pickles from the opcodes
//! `torch.save` uses.

use std::collections::HashMap;

/// Builds protocol-2 pickles from the opcodes `torch.save` uses.
#[derive(Default)]
pub(super) struct PickleOut {
    pub bytes: Vec<u8>,
    globals: HashMap<String, u32>,
    memo: u32,
}

impl PickleOut {
    pub fn new() -> Self {
        let mut p = PickleOut::default();
        p.bytes.extend_from_slice(&[0x80, 2]);
        p
    }

    pub fn op(&mut self, op: u8) -> &mut Self {
        self.bytes.push(op);
        self
    }

    pub fn mark(&mut self) -> &mut Self {
        self.op(b'(')
    }

    /// A global, written once and then fetched from the memo.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        let key = format!("{module}\n{name}\n");
        if let Some(&id) = self.globals.get(&key) {
            self.bytes.push(b'j');
            self.bytes.extend_from_slice(&id.to_le_bytes());
        } else {
            self.bytes.push(b'c');
            self.bytes.extend_from_slice(key.as_bytes());
            self.bytes.push(b'r');
            self.bytes.extend_from_slice(&self.memo.to_le_bytes());
            self.globals.insert(key, self.memo);
            self.memo += 1;
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes.push(b'X');
        self.bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }

    pub fn int(&mut self, v: u64) -> &mut Self {
        if v < 0x100 {
            self.bytes.extend_from_slice(&[b'K', v as u8]);
        } else if v < 0x1_0000 {
            self.bytes.push(b'M');
            self.bytes.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as u64 {
            self.bytes.push(b'J');
            self.bytes.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1 of 9 bytes: little-endian, with a zero byte keeping it positive.
            self.bytes.extend_from_slice(&[0x8a, 9]);
            self.bytes.extend_from_slice(&v.to_le_bytes());
            self.bytes.push(0);
        }
        self
    }

    /// A tuple of integers.
    pub fn ints(&mut self, values: &[u64]) -> &mut Self {
        self.mark();
        for &v in values {
            self.int(v);
        }
        self.op(b't')
    }

    /// `OrderedDict()`.
    pub fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }
}
