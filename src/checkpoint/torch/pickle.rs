//! A restricted pickle machine: it builds data (numbers, strings, tuples, lists, dicts, tensor
//! descriptions) and nothing else. No pickled code is ever run: `GLOBAL` only names a function,
//! and `REDUCE` / `NEWOBJ` of a name outside a short allow-list (the data constructors of
//! `torch.load(weights_only=True)`) yield an opaque value. Every such name is remembered with
//! what it was used to build ([`Machine::foreign`]), so that the reader can refuse one inside the
//! chosen state dict and name those elsewhere (optimizer state, hyper-parameters, callbacks: a
//! warning, not a stop). Names that only a hostile file holds (`os.system`, `builtins.eval`,
//! `subprocess.*`…) stop the read at once. Which names are which is [`super::globals`]; the
//! opcodes are [`super::ops`].
//!
//! Objects live in an arena and values refer to them by index, so shared references (the memo)
//! behave as in Python (a dict filled after it was memoised is seen filled), cycles cost nothing,
//! and memory grows linearly with the pickle, within [`MAX_OBJECTS`] / [`MAX_STACK`] / [`MAX_MEMO`].

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};

use safetensors::Dtype;

use super::globals::{self, Elem, Global};
use super::ops::{Group, Op};

/// Objects (containers, strings, tensors…) one pickle may build.
pub(super) const MAX_OBJECTS: usize = 1 << 23;
/// Values on the stack, all marks included.
pub(super) const MAX_STACK: usize = 1 << 23;
/// Memo entries.
pub(super) const MAX_MEMO: usize = 1 << 23;

/// The longest key or name a message quotes (longer ones are cut, marked `…`).
pub(super) const MAX_KEY: usize = 80;
/// The longest path to a value a message quotes.
pub(super) const MAX_PATH: usize = 400;

/// How one object is reached from another: an item's index, a dict entry's key, or what the
/// other was built from (no part of a path).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Edge {
    Index(usize),
    Key(Value),
    Built,
}

/// What [`Machine::reachable`] found: each object reached, with where it was reached from.
pub(super) type Reached = HashMap<ObjId, Option<(ObjId, Edge)>>;

/// `s` cut to at most `max` characters (on a character boundary), marked `…` where cut.
pub(super) fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// Values copied out of existing objects (see [`Machine::charge`]).
pub(super) const MAX_COPIED: usize = 1 << 24;
/// Dimensions of a tensor (PyTorch's own limit is 64 too).
pub(super) const MAX_DIMS: usize = 64;

/// Index of an object in [`Machine::objects`].
pub(super) type ObjId = usize;

/// A pickled value: a scalar, or a reference to an object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(ObjId),
}

/// A storage: the persistent id `('storage', class, key, location, numel)`.
#[derive(Debug, Clone)]
pub(super) struct Storage {
    pub elem: Elem,
    pub key: String,
    /// Elements of `elem` (bytes for untyped storages).
    pub numel: u64,
}

/// A tensor over a storage (`_rebuild_tensor_v2` / `_v3`); offsets and strides in elements.
#[derive(Debug, Clone)]
pub(super) struct Tensor {
    pub storage: ObjId,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
    /// The dtype given to `_rebuild_tensor_v3` (else the storage's).
    pub dtype: Option<Dtype>,
}

/// What a call builds: an existing value, or a new object.
enum Built {
    Value(Value),
    Obj(Obj),
}

/// What a value refers to.
#[derive(Debug)]
pub(super) enum Obj {
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Items in insertion order; a repeated key is resolved by [`Machine::entries`].
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(Storage),
    Tensor(Tensor),
    /// Something swa does not build, and why (`refusing global foo.Bar`).
    Opaque(String),
}

/// The pickle machine and, once [`Machine::run`] returns, everything it built.
pub(super) struct Machine<'a> {
    code: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copied: Cell<usize>,
    pub objects: Vec<Obj>,
    /// What each object was built from beyond its items: a call's callable and arguments, a
    /// `NEWOBJ`'s class and arguments, the state a `BUILD` gave it.
    links: HashMap<ObjId, Vec<Value>>,
    /// The names outside the allow-list ([`Global::Other`]) the pickle holds.
    pub foreign: Vec<ObjId>,
}

type Step<T = ()> = Result<T, String>;

impl<'a> Machine<'a> {
    pub fn new(code: &'a [u8]) -> Self {
        Machine {
            code,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copied: Cell::new(0),
            objects: Vec::new(),
            links: HashMap::new(),
            foreign: Vec::new(),
        }
    }

    /// Runs the pickle to its `STOP`; returns the value it built. Errors say where.
    pub fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let byte = self.take(1).map_err(|e| format!("{e} (no STOP opcode)"))?[0];
            let step = Op::from_byte(byte)
                .ok_or_else(|| {
                    format!("unsupported pickle opcode 0x{byte:02x} (swa reads the opcodes torch.save writes)")
                })
                .and_then(|op| self.step(op));
            match step {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(format!("{e} (opcode 0x{byte:02x} at byte {at})")),
            }
        }
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let code: &'a [u8] = self.code;
        let end = self.pos.checked_add(n).filter(|&e| e <= code.len()).ok_or("truncated pickle")?;
        let bytes = &code[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }

    fn take_u16(&mut self) -> Step<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn take_u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn take_u64(&mut self) -> Step<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A length read from the pickle: checked against the bytes left, so it never sizes more.
    fn take_len(&mut self, n: u64) -> Step<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| "length does not fit in memory")?;
        self.take(n)
    }

    /// Bytes after their length, which is `width` bytes long (1, 4 or 8).
    fn take_sized(&mut self, width: usize) -> Step<&'a [u8]> {
        let n = match width {
            1 => u64::from(self.take_u8()?),
            4 => u64::from(self.take_u32()?),
            8 => self.take_u64()?,
            _ => unreachable!("lengths are 1, 4 or 8 bytes"),
        };
        self.take_len(n)
    }

    fn take_line(&mut self) -> Step<&'a [u8]> {
        let rest = &self.code[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("truncated pickle: unterminated line")?;
        let line = self.take(n)?;
        self.pos += 1;
        Ok(line)
    }

    /// Fails when the stack, marks included, is full.
    fn room(&self) -> Step {
        if self.stack.len() + self.marks.len() >= MAX_STACK {
            return Err(format!("pickle stack deeper than {MAX_STACK}"));
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> Step {
        self.room()?;
        self.stack.push(v);
        Ok(())
    }

    fn alloc(&mut self, obj: Obj) -> Step<Value> {
        if self.objects.len() >= MAX_OBJECTS {
            return Err(format!("pickle builds more than {MAX_OBJECTS} objects"));
        }
        self.objects.push(obj);
        Ok(Value::Obj(self.objects.len() - 1))
    }

    fn push_obj(&mut self, obj: Obj) -> Step {
        let v = self.alloc(obj)?;
        self.push(v)
    }

    fn pop(&mut self) -> Step<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("pickle stack underflow".into());
        }
        Ok(self.stack.pop().expect("above the floor"))
    }

    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let mark = self.marks.pop().ok_or("no MARK on the pickle stack")?;
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Step<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("pickle stack underflow".into());
        }
        Ok(*self.stack.last().expect("above the floor"))
    }

    fn memoize(&mut self, id: u32) -> Step {
        let v = self.top()?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&id) {
            return Err(format!("pickle memo larger than {MAX_MEMO}"));
        }
        self.memo.insert(id, v);
        Ok(())
    }

    fn get(&mut self, id: u32) -> Step {
        let v = *self.memo.get(&id).ok_or_else(|| format!("memo entry {id} is not defined"))?;
        self.push(v)
    }

    /// A string: valid UTF-8 only (two keys that differ in invalid bytes must not become one
    /// name; `torch.load` refuses such a file too).
    fn str_value(&mut self, bytes: &[u8]) -> Step {
        let s = std::str::from_utf8(bytes).map_err(|e| format!("a string that is not valid UTF-8 ({e})"))?;
        self.push_obj(Obj::Str(s.to_string()))
    }

    /// Records that `owner` was built from `from` (kept for [`Machine::reachable`]; counted as
    /// copied values, so that a pickle cannot grow the record without bound).
    fn link(&mut self, owner: Value, from: &[Value]) -> Step {
        if let Value::Obj(id) = owner {
            let from: Vec<Value> = from.iter().copied().filter(|v| matches!(v, Value::Obj(_))).collect();
            self.charge(from.len())?;
            self.links.entry(id).or_default().extend(from);
        }
        Ok(())
    }

    /// What `id` holds and was built from, each with how it is reached from `id`.
    fn children(&self, id: ObjId) -> Vec<(Value, Edge)> {
        let mut out: Vec<(Value, Edge)> = match &self.objects[id] {
            Obj::Tuple(items) | Obj::List(items) => {
                items.iter().enumerate().map(|(i, &v)| (v, Edge::Index(i))).collect()
            }
            Obj::Dict(items) => items.iter().flat_map(|&(k, v)| [(k, Edge::Built), (v, Edge::Key(k))]).collect(),
            _ => Vec::new(),
        };
        out.extend(self.links.get(&id).into_iter().flatten().map(|&v| (v, Edge::Built)));
        out
    }

    /// Every object reachable from `from` (through items and what objects were built from),
    /// with the object each was first reached from and how (for [`Machine::path`]).
    pub fn reachable(&self, from: Value) -> Reached {
        let mut seen: Reached = HashMap::new();
        let Value::Obj(start) = from else { return seen };
        seen.insert(start, None);
        // Objects reached through what something was built from: their keys and indices (a
        // call's argument tuple) are no part of a path.
        let mut built_from = std::collections::HashSet::new();
        let mut queue = VecDeque::from([start]);
        while let Some(id) = queue.pop_front() {
            let quiet = built_from.contains(&id);
            for (v, how) in self.children(id) {
                if let Value::Obj(child) = v {
                    if child < self.objects.len() && !seen.contains_key(&child) {
                        let how = if quiet { Edge::Built } else { how };
                        if how == Edge::Built {
                            built_from.insert(child);
                        }
                        seen.insert(child, Some((id, how)));
                        queue.push_back(child);
                    }
                }
            }
        }
        seen
    }

    /// How `id` is reached in `seen` (from [`Machine::reachable`]): `optimizer_states[0].state`
    /// (what an object was built from adds nothing to the path). At most [`MAX_PATH`] characters
    /// (the start and the end kept), each key at most [`MAX_KEY`]: a crafted file cannot make it
    /// long.
    pub fn path(&self, seen: &Reached, id: ObjId) -> String {
        let mut steps = Vec::new();
        let mut at = id;
        while let Some(Some((parent, how))) = seen.get(&at) {
            if *how != Edge::Built {
                steps.push(*how);
            }
            at = *parent;
        }
        steps.reverse();
        let text = |how: &Edge| match *how {
            Edge::Index(i) => format!("[{i}]"),
            Edge::Key(k) => match (k, self.obj(k)) {
                (_, Some(Obj::Str(s))) => format!(".{}", shorten(s, MAX_KEY)),
                (Value::Int(i), _) => format!("[{i}]"),
                _ => "[?]".into(),
            },
            Edge::Built => String::new(),
        };
        let mut path = String::new();
        let mut tail = Vec::new();
        for (n, how) in steps.iter().enumerate() {
            let part = text(how);
            if path.len() + part.len() > MAX_PATH / 2 {
                // Keep the end: walk back from the last step while it fits.
                let mut len = 0;
                for how in steps[n..].iter().rev() {
                    let part = text(how);
                    len += part.len();
                    if len > MAX_PATH / 2 {
                        break;
                    }
                    tail.push(part);
                }
                tail.reverse();
                let skipped = steps.len() - n - tail.len();
                if skipped > 0 {
                    path.push_str(&format!("…({skipped} more)…"));
                }
                break;
            }
            path.push_str(&part);
        }
        path.push_str(&tail.concat());
        path.trim_start_matches('.').to_string()
    }

    /// What `v` was built from: a call's callable and arguments, a `NEWOBJ`'s class and
    /// arguments, the state a `BUILD` gave it (objects only), in that order.
    pub fn built_from(&self, v: Value) -> &[Value] {
        match v {
            Value::Obj(id) => self.links.get(&id).map_or(&[], Vec::as_slice),
            _ => &[],
        }
    }

    /// The name of a global outside the allow-list that `v` is, if it is one.
    pub fn foreign_global(&self, v: Value) -> Option<&str> {
        match self.obj(v)? {
            Obj::Global(Global::Other(name)) => Some(name),
            _ => None,
        }
    }

    /// The name of a [`Machine::foreign`] object, at most [`MAX_KEY`] characters.
    pub fn foreign_name(&self, id: ObjId) -> String {
        match &self.objects[id] {
            Obj::Global(Global::Other(name)) => shorten(name, MAX_KEY),
            _ => unreachable!("foreign holds names outside the allow-list"),
        }
    }

    /// A Python 2 `str` (BINSTRING): bytes as Latin-1, as Python 3 decodes them with `latin1`.
    fn latin1_value(&mut self, bytes: &[u8]) -> Step {
        self.push_obj(Obj::Str(bytes.iter().map(|&b| b as char).collect()))
    }

    fn tuple(&mut self, items: Vec<Value>) -> Step {
        self.push_obj(Obj::Tuple(items))
    }

    /// The object a value refers to, if any.
    pub fn obj(&self, v: Value) -> Option<&Obj> {
        match v {
            Value::Obj(id) => self.objects.get(id),
            _ => None,
        }
    }

    /// The string a value is, if it is one.
    pub fn str(&self, v: Value) -> Option<&str> {
        match self.obj(v) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Runs one opcode; returns the pickle's value at its `STOP`.
    /// Each [`Group`] of opcodes runs in a method of its own.
    fn step(&mut self, op: Op) -> Step<Option<Value>> {
        match op.group() {
            Group::Stack => return self.stack_op(op),
            Group::Memo => self.memo_op(op),
            Group::Scalar => self.scalar_op(op),
            Group::Text => self.text_op(op),
            Group::Container => self.container_op(op),
            Group::Call => self.call_op(op),
        }?;
        Ok(None)
    }

    fn stack_op(&mut self, op: Op) -> Step<Option<Value>> {
        match op {
            Op::Proto => {
                let proto = self.take_u8()?;
                if proto > 5 {
                    return Err(format!("unsupported pickle protocol {proto}"));
                }
            }
            Op::Frame => {
                self.take_u64()?; // framing is advisory
            }
            Op::Stop => return self.pop().map(Some),
            Op::Mark => {
                self.room()?;
                self.marks.push(self.stack.len());
            }
            Op::Pop => {
                self.pop()?;
            }
            Op::PopMark => {
                self.pop_mark()?;
            }
            Op::Dup => {
                let v = self.top()?;
                self.push(v)?;
            }
            _ => unreachable!("{op:?} is not a stack opcode"),
        }
        Ok(None)
    }

    fn memo_op(&mut self, op: Op) -> Step {
        match op {
            Op::BinPut => {
                let id = self.take_u8()?;
                self.memoize(u32::from(id))
            }
            Op::LongBinPut => {
                let id = self.take_u32()?;
                self.memoize(id)
            }
            Op::Memoize => {
                let id = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                self.memoize(id)
            }
            Op::BinGet => {
                let id = self.take_u8()?;
                self.get(u32::from(id))
            }
            Op::LongBinGet => {
                let id = self.take_u32()?;
                self.get(id)
            }
            _ => unreachable!("{op:?} is not a memo opcode"),
        }
    }

    fn scalar_op(&mut self, op: Op) -> Step {
        let v = match op {
            Op::None => Value::None,
            Op::NewTrue => Value::Bool(true),
            Op::NewFalse => Value::Bool(false),
            Op::BinInt => Value::Int(i64::from(i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))),
            Op::BinInt1 => Value::Int(i64::from(self.take_u8()?)),
            Op::BinInt2 => Value::Int(i64::from(self.take_u16()?)),
            Op::Long1 => {
                let bytes = self.take_sized(1)?;
                return self.long(bytes);
            }
            Op::Long4 => {
                let bytes = self.take_sized(4)?;
                return self.long(bytes);
            }
            Op::BinFloat => Value::Float(f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            _ => unreachable!("{op:?} is not a scalar opcode"),
        };
        self.push(v)
    }

    fn text_op(&mut self, op: Op) -> Step {
        let width = match op {
            Op::ShortBinUnicode | Op::ShortBinString | Op::ShortBinBytes => 1,
            Op::BinUnicode | Op::BinString | Op::BinBytes => 4,
            Op::BinUnicode8 | Op::BinBytes8 | Op::ByteArray8 => 8,
            _ => unreachable!("{op:?} is not a string or bytes opcode"),
        };
        let s = self.take_sized(width)?;
        match op {
            Op::ShortBinUnicode | Op::BinUnicode | Op::BinUnicode8 => self.str_value(s),
            Op::ShortBinString | Op::BinString => self.latin1_value(s),
            _ => self.push_obj(Obj::Bytes(s.to_vec())),
        }
    }

    fn container_op(&mut self, op: Op) -> Step {
        match op {
            Op::EmptyTuple => self.tuple(Vec::new()),
            Op::Tuple1 => {
                let a = self.pop()?;
                self.tuple(vec![a])
            }
            Op::Tuple2 => {
                let b = self.pop()?;
                let a = self.pop()?;
                self.tuple(vec![a, b])
            }
            Op::Tuple3 => {
                let c = self.pop()?;
                let b = self.pop()?;
                let a = self.pop()?;
                self.tuple(vec![a, b, c])
            }
            Op::Tuple => {
                let items = self.pop_mark()?;
                self.tuple(items)
            }
            Op::EmptyList | Op::EmptySet => self.push_obj(Obj::List(Vec::new())),
            Op::List | Op::FrozenSet => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::List(items))
            }
            Op::Append => {
                let v = self.pop()?;
                self.extend_list(vec![v])
            }
            Op::Appends | Op::AddItems => {
                let items = self.pop_mark()?;
                self.extend_list(items)
            }
            Op::EmptyDict => self.push_obj(Obj::Dict(Vec::new())),
            Op::Dict => {
                let pairs = pairs(self.pop_mark()?)?;
                self.push_obj(Obj::Dict(pairs))
            }
            Op::SetItem => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![(k, v)])
            }
            Op::SetItems => {
                let pairs = pairs(self.pop_mark()?)?;
                self.extend_dict(pairs)
            }
            _ => unreachable!("{op:?} is not a container opcode"),
        }
    }

    /// Data constructors only: nothing is ever run.
    fn call_op(&mut self, op: Op) -> Step {
        match op {
            Op::Global => {
                let module = String::from_utf8_lossy(self.take_line()?).into_owned();
                let name = String::from_utf8_lossy(self.take_line()?).into_owned();
                self.global(&module, &name)
            }
            Op::StackGlobal => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(module), Some(name)) = (self.str(module), self.str(name)) else {
                    return Err("STACK_GLOBAL of something other than two strings".into());
                };
                let (module, name) = (module.to_string(), name.to_string());
                self.global(&module, &name)
            }
            Op::Reduce => {
                let args = self.pop()?;
                let callable = self.pop()?;
                if !matches!(self.obj(args), Some(Obj::Tuple(_))) {
                    return Err("REDUCE with arguments that are not a tuple".into());
                }
                let v = match self.call(callable, args)? {
                    Built::Value(v) => v,
                    Built::Obj(obj) => self.alloc(obj)?,
                };
                self.link(v, &[callable, args])?;
                self.push(v)
            }
            Op::NewObj | Op::NewObjEx => {
                let kwargs = if op == Op::NewObjEx { self.pop()? } else { Value::None };
                let args = self.pop()?;
                let class = self.pop()?;
                let v = self.new_object(class)?;
                self.link(v, &[class, args, kwargs])?;
                self.push(v)
            }
            Op::Build => {
                // An object's state (an OrderedDict's `_metadata`, an instance's fields): nothing
                // swa reads. The object stays as it was, and remembers what it was given.
                let state = self.pop()?;
                let object = self.top()?;
                self.link(object, &[state])
            }
            Op::BinPersId => {
                let pid = self.pop()?;
                let v = self.persistent(pid)?;
                self.link(v, &[pid])?;
                self.push(v)
            }
            _ => unreachable!("{op:?} is not a name or call opcode"),
        }
    }

    fn long(&mut self, bytes: &[u8]) -> Step {
        // Little-endian two's complement; fits in i64 when the bytes past 8 only extend the sign.
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let fill = if negative { 0xFF } else { 0 };
        if bytes.len() > 8 && bytes[8..].iter().any(|&b| b != fill)
            || bytes.len() > 8 && (bytes[7] & 0x80 != 0) != negative
        {
            return self.push_obj(Obj::Opaque("an integer too large for 64 bits".into()));
        }
        let mut buf = [fill; 8];
        let n = bytes.len().min(8);
        buf[..n].copy_from_slice(&bytes[..n]);
        self.push(Value::Int(i64::from_le_bytes(buf)))
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Step {
        let target = self.top()?;
        match target {
            Value::Obj(id) => match &mut self.objects[id] {
                Obj::List(list) => {
                    list.extend(items);
                    Ok(())
                }
                Obj::Opaque(_) => Ok(()), // an object swa did not build: its items are dropped
                _ => Err("APPEND to something that is not a list".into()),
            },
            _ => Err("APPEND to something that is not a list".into()),
        }
    }

    fn extend_dict(&mut self, items: Vec<(Value, Value)>) -> Step {
        let target = self.top()?;
        match target {
            Value::Obj(id) => match &mut self.objects[id] {
                Obj::Dict(dict) => {
                    dict.extend(items);
                    Ok(())
                }
                Obj::Opaque(_) => Ok(()),
                _ => Err("SETITEM on something that is not a dict".into()),
            },
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Step {
        // STACK_GLOBAL copies its strings out of existing objects: a long name fetched from the
        // memo again and again must not cost memory for nothing.
        self.charge_text(module.len() + name.len())?;
        let global = globals::resolve(module, name)?;
        let foreign = matches!(global, Global::Other(_));
        let v = self.alloc(Obj::Global(global))?;
        if let (true, Value::Obj(id)) = (foreign, v) {
            self.foreign.push(id);
        }
        self.push(v)
    }

    fn global_of(&self, v: Value) -> Option<&Global> {
        match self.obj(v) {
            Some(Obj::Global(g)) => Some(g),
            _ => None,
        }
    }

    fn int(&self, v: Value) -> Option<u64> {
        match v {
            Value::Int(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }

    /// A tuple of at most [`MAX_DIMS`] non-negative integers (a size or stride).
    fn dims(&self, v: Value) -> Option<Vec<u64>> {
        match self.obj(v)? {
            Obj::Tuple(items) | Obj::List(items) if items.len() <= MAX_DIMS => {
                items.iter().map(|&i| self.int(i)).collect()
            }
            _ => None,
        }
    }

    /// NEWOBJ: `cls.__new__(cls, *args)` for the containers among the allowed names; anything
    /// else is opaque.
    fn new_object(&mut self, class: Value) -> Step<Value> {
        let obj = match self.global_of(class) {
            Some(Global::OrderedDict) => Obj::Dict(Vec::new()),
            Some(Global::Identity) => Obj::List(Vec::new()),
            Some(Global::Other(name)) => {
                self.charge_text(name.len())?;
                Obj::Opaque(format!("refusing global {}", shorten(name, MAX_KEY)))
            }
            _ => Obj::Opaque("an object swa does not build".into()),
        };
        self.alloc(obj)
    }

    /// REDUCE: the allowed data constructors build their data; nothing is ever run. `args` is a
    /// tuple (checked by the caller), read in place: a tuple called many times is never copied.
    fn call(&self, callable: Value, args: Value) -> Step<Built> {
        let Some(Obj::Tuple(args)) = self.obj(args) else { unreachable!("checked by REDUCE") };
        let args = args.as_slice();
        let Some(global) = self.global_of(callable) else {
            return Ok(Built::Obj(Obj::Opaque("a call of something that is not a global".into())));
        };
        let obj = match global {
            Global::OrderedDict => match args {
                [] => Obj::Dict(Vec::new()),
                [items] => match self.obj(*items) {
                    Some(Obj::List(items) | Obj::Tuple(items)) => {
                        self.charge(items.len())?;
                        let mut dict = Vec::with_capacity(items.len());
                        for item in items {
                            match self.obj(*item) {
                                Some(Obj::Tuple(kv) | Obj::List(kv)) if kv.len() == 2 => dict.push((kv[0], kv[1])),
                                _ => return Err("OrderedDict of items that are not pairs".into()),
                            }
                        }
                        Obj::Dict(dict)
                    }
                    _ => Obj::Opaque("an OrderedDict built from something other than pairs".into()),
                },
                _ => Obj::Opaque("an OrderedDict with several arguments".into()),
            },
            // Its size and stride (64 dimensions each: 1 KiB) or the reason it is opaque are
            // copied out of the arguments, which a pickle may pass again and again.
            Global::RebuildTensorV2 | Global::RebuildTensorV3 => match self.tensor(global, args) {
                Ok(t) => {
                    self.charge(t.size.len() + t.stride.len())?;
                    Obj::Tensor(t)
                }
                Err(why) => {
                    self.charge_text(why.len())?;
                    Obj::Opaque(format!("a tensor that cannot be rebuilt: {why}"))
                }
            },
            Global::RebuildParameter => match args.first() {
                // A parameter is its tensor (requires_grad and hooks do not matter here).
                Some(&v @ Value::Obj(id)) if matches!(self.objects[id], Obj::Tensor(_)) => return Ok(Built::Value(v)),
                _ => Obj::Opaque("a parameter that is not over a tensor".into()),
            },
            Global::Identity => match args {
                [] => Obj::List(Vec::new()),
                [v] => return Ok(Built::Value(*v)),
                _ => Obj::Opaque("torch.Size or set with several arguments".into()),
            },
            Global::Device => match args.first() {
                Some(&v) if self.str(v).is_some() => return Ok(Built::Value(v)),
                _ => Obj::Opaque("a torch.device".into()),
            },
            Global::Bytes => match args.first().and_then(|&v| self.obj(v)) {
                Some(Obj::Str(s)) => {
                    self.charge_text(s.len())?;
                    // `_codecs.encode(text, 'latin1')`: protocol 2's bytes.
                    let latin1 = args.get(1).and_then(|&e| self.str(e)).is_some_and(|e| e.starts_with("latin"));
                    if latin1 {
                        match s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect::<Option<Vec<u8>>>() {
                            Some(b) => Obj::Bytes(b),
                            None => Obj::Opaque("bytes that are not Latin-1".into()),
                        }
                    } else {
                        Obj::Bytes(s.as_bytes().to_vec())
                    }
                }
                Some(Obj::Bytes(b)) => {
                    self.charge(b.len() / 16)?;
                    Obj::Bytes(b.clone())
                }
                None if args.is_empty() => Obj::Bytes(Vec::new()),
                _ => Obj::Opaque("bytes from something other than a string".into()),
            },
            Global::Storage(_) | Global::Dtype(..) => Obj::Opaque("a storage or dtype called directly".into()),
            Global::Other(name) => {
                self.charge_text(name.len())?;
                Obj::Opaque(format!("refusing global {}", shorten(name, MAX_KEY)))
            }
        };
        Ok(Built::Obj(obj))
    }

    /// Counts values copied out of existing objects (an OrderedDict built from a list, bytes from
    /// bytes), so that calling one large object many times cannot cost quadratic time or memory.
    fn charge(&self, n: usize) -> Step {
        let total = self.copied.get().saturating_add(n);
        if total > MAX_COPIED {
            return Err(format!("pickle copies more than {MAX_COPIED} values"));
        }
        self.copied.set(total);
        Ok(())
    }

    /// [`Machine::charge`] for `len` bytes of text or bytes copied out of existing objects (a
    /// value is 16 bytes).
    fn charge_text(&self, len: usize) -> Step {
        self.charge(len / 16)
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
    /// metadata])`, `_rebuild_tensor_v3(…, backward_hooks, dtype[, metadata])`.
    fn tensor(&self, global: &Global, args: &[Value]) -> Result<Tensor, String> {
        let v3 = *global == Global::RebuildTensorV3;
        if args.len() < if v3 { 7 } else { 4 } {
            return Err(format!("{} arguments", args.len()));
        }
        let storage = match args[0] {
            Value::Obj(id) if matches!(self.objects[id], Obj::Storage(_)) => id,
            _ => match self.obj(args[0]) {
                Some(Obj::Opaque(why)) => return Err(why.clone()),
                _ => return Err("its storage is not a storage".into()),
            },
        };
        let offset = self.int(args[1]).ok_or("its storage offset is not a non-negative integer")?;
        let size = self.dims(args[2]).ok_or("its size is not a tuple of at most 64 non-negative integers")?;
        let stride = self.dims(args[3]).ok_or("its stride is not a tuple of at most 64 non-negative integers")?;
        if size.len() != stride.len() {
            return Err(format!("size {size:?} and stride {stride:?} differ in length"));
        }
        let dtype = if v3 {
            match self.global_of(args[6]) {
                Some(Global::Dtype(Some(d), _)) => Some(*d),
                Some(Global::Dtype(None, name)) => return Err(format!("dtype torch.{name} is not supported")),
                _ => return Err("its dtype is not a torch dtype".into()),
            }
        } else {
            None
        };
        Ok(Tensor { storage, offset, size, stride, dtype })
    }

    /// BINPERSID: `('storage', storage_class, key, location, numel)`.
    fn persistent(&mut self, pid: Value) -> Step<Value> {
        let Some(Obj::Tuple(items)) = self.obj(pid) else {
            return Err("persistent id that is not a tuple".into());
        };
        let obj = match items.as_slice() {
            [kind, class, key, _location, numel] if self.str(*kind) == Some("storage") => {
                match (self.global_of(*class), self.str(*key), self.int(*numel)) {
                    (Some(Global::Storage(elem)), Some(key), Some(numel)) => {
                        let name = match elem {
                            Elem::Unsupported(name) => name.len(),
                            _ => 0,
                        };
                        self.charge_text(key.len() + name)?;
                        Obj::Storage(Storage { elem: elem.clone(), key: key.to_string(), numel })
                    }
                    _ => Obj::Opaque("a storage whose persistent id swa cannot read".into()),
                }
            }
            _ => Obj::Opaque("a persistent id other than a storage".into()),
        };
        self.alloc(obj)
    }

    /// A dict's entries, as Python would hold them: a repeated key keeps its first position and
    /// takes its last value.
    pub fn entries(&self, id: ObjId) -> Vec<(Value, Value)> {
        let Obj::Dict(items) = &self.objects[id] else { return Vec::new() };
        let mut seen: HashMap<Key, usize> = HashMap::with_capacity(items.len());
        // A key object met again (the memo lets one long string be every key) is found by its
        // index, not hashed again: hashing costs each distinct key's bytes once.
        let mut by_object: HashMap<ObjId, usize> = HashMap::new();
        let mut out: Vec<(Value, Value)> = Vec::with_capacity(items.len());
        for &(k, v) in items {
            if let Some(&at) = match k {
                Value::Obj(key_id) => by_object.get(&key_id),
                _ => None,
            } {
                out[at].1 = v;
                continue;
            }
            let key = match (k, self.obj(k)) {
                (_, Some(Obj::Str(s))) => Key::Str(s),
                (Value::Int(i), _) => Key::Int(i),
                (Value::Bool(b), _) => Key::Int(i64::from(b)),
                _ => {
                    out.push((k, v));
                    continue;
                }
            };
            let at = match seen.get(&key) {
                Some(&at) => {
                    out[at].1 = v;
                    at
                }
                None => {
                    seen.insert(key, out.len());
                    out.push((k, v));
                    out.len() - 1
                }
            };
            if let Value::Obj(key_id) = k {
                by_object.insert(key_id, at);
            }
        }
        out
    }

    /// What a value is, in words, for errors.
    pub fn describe(&self, v: Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an integer".into(),
            Value::Float(_) => "a float".into(),
            Value::Obj(_) => match self.obj(v).expect("allocated") {
                Obj::Str(_) => "a string".into(),
                Obj::Bytes(_) => "bytes".into(),
                Obj::Tuple(_) => "a tuple".into(),
                Obj::List(_) => "a list".into(),
                Obj::Dict(_) => "a dict".into(),
                Obj::Global(Global::Other(name)) => format!("the name {}", shorten(name, MAX_KEY)),
                Obj::Global(_) => "a torch name".into(),
                Obj::Storage(_) => "a storage".into(),
                Obj::Tensor(_) => "a tensor".into(),
                Obj::Opaque(why) => why.clone(),
            },
        }
    }
}

#[derive(Hash, PartialEq, Eq)]
enum Key<'a> {
    Str(&'a str),
    Int(i64),
}

fn pairs(items: Vec<Value>) -> Step<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::with_capacity(it.len() / 2);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}
