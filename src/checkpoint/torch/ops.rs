//! The pickle opcodes swa reads ([`super::pickle`]) or writes ([`super::write`]), named as
//! Python's `pickletools` names them (`BINPUT` is [`Op::BinPut`]); their arguments, in bytes after
//! the opcode, are little-endian unless said otherwise. Any other byte is an opcode swa does not
//! read: [`Op::from_byte`] returns None for it.

/// Declares [`Op`], [`Op::from_byte`] and [`Op::group`] from one list, so that a byte and a
/// group are written once.
macro_rules! opcodes {
    ($($(#[$group_doc:meta])* $group:ident { $($(#[$doc:meta])* $name:ident = $byte:literal,)* })*) => {
        /// A pickle opcode; `op as u8` is its byte.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub(super) enum Op {
            $($($(#[$doc])* $name = $byte,)*)*
        }

        /// What an opcode works on: the reader runs each group in a method of its own.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Group {
            $($(#[$group_doc])* $group,)*
        }

        impl Op {
            /// The opcode of a byte, if swa knows it.
            pub fn from_byte(byte: u8) -> Option<Op> {
                match byte {
                    $($($byte => Some(Op::$name),)*)*
                    _ => None,
                }
            }

            pub fn group(self) -> Group {
                match self {
                    $($(Op::$name => Group::$group,)*)*
                }
            }
        }
    };
}

opcodes! {
    /// The protocol, framing, the stack and its end.
    Stack {
        /// `PROTO`: the protocol, one byte.
        Proto = 0x80,
        /// `FRAME`: the length of a frame, 8 bytes (framing is advisory).
        Frame = 0x95,
        /// `STOP`: the value on top of the stack is the pickle's.
        Stop = b'.',
        /// `MARK`: the start of a run of items (a tuple's, a list's…).
        Mark = b'(',
        /// `POP`: drops the top value.
        Pop = b'0',
        /// `POP_MARK`: drops the values down to the last mark.
        PopMark = b'1',
        /// `DUP`: pushes the top value again.
        Dup = b'2',
    }

    /// The memo: values kept by index.
    Memo {
        /// `BINPUT`: memoises the top value, at an index of one byte.
        BinPut = b'q',
        /// `LONG_BINPUT`: memoises the top value, at an index of 4 bytes.
        LongBinPut = b'r',
        /// `MEMOIZE`: memoises the top value at the next index.
        Memoize = 0x94,
        /// `BINGET`: pushes a memoised value, at an index of one byte.
        BinGet = b'h',
        /// `LONG_BINGET`: pushes a memoised value, at an index of 4 bytes.
        LongBinGet = b'j',
    }

    /// None, booleans, integers, floats.
    Scalar {
        /// `NONE`.
        None = b'N',
        /// `NEWTRUE`.
        NewTrue = 0x88,
        /// `NEWFALSE`.
        NewFalse = 0x89,
        /// `BININT`: a signed integer of 4 bytes.
        BinInt = b'J',
        /// `BININT1`: an unsigned integer of one byte.
        BinInt1 = b'K',
        /// `BININT2`: an unsigned integer of 2 bytes.
        BinInt2 = b'M',
        /// `LONG1`: a two's complement integer, its length in one byte.
        Long1 = 0x8a,
        /// `LONG4`: a two's complement integer, its length in 4 bytes.
        Long4 = 0x8b,
        /// `BINFLOAT`: a double, 8 bytes big-endian.
        BinFloat = b'G',
    }

    /// Strings and bytes, after their length.
    Text {
        /// `BINUNICODE`: UTF-8, its length in 4 bytes.
        BinUnicode = b'X',
        /// `SHORT_BINUNICODE`: UTF-8, its length in one byte.
        ShortBinUnicode = 0x8c,
        /// `BINUNICODE8`: UTF-8, its length in 8 bytes.
        BinUnicode8 = 0x8d,
        /// `BINSTRING`: a Python 2 `str`, its length in 4 bytes.
        BinString = b'T',
        /// `SHORT_BINSTRING`: a Python 2 `str`, its length in one byte.
        ShortBinString = b'U',
        /// `BINBYTES`: bytes, their length in 4 bytes.
        BinBytes = b'B',
        /// `SHORT_BINBYTES`: bytes, their length in one byte.
        ShortBinBytes = b'C',
        /// `BINBYTES8`: bytes, their length in 8 bytes.
        BinBytes8 = 0x8e,
        /// `BYTEARRAY8`: a bytearray, its length in 8 bytes.
        ByteArray8 = 0x96,
    }

    /// Tuples, lists, sets and dicts.
    Container {
        /// `EMPTY_TUPLE`.
        EmptyTuple = b')',
        /// `TUPLE1`: a tuple of the top value.
        Tuple1 = 0x85,
        /// `TUPLE2`: a tuple of the top 2 values.
        Tuple2 = 0x86,
        /// `TUPLE3`: a tuple of the top 3 values.
        Tuple3 = 0x87,
        /// `TUPLE`: a tuple of the values above the last mark.
        Tuple = b't',
        /// `EMPTY_LIST`.
        EmptyList = b']',
        /// `EMPTY_SET`.
        EmptySet = 0x8f,
        /// `LIST`: a list of the values above the last mark.
        List = b'l',
        /// `FROZENSET`: a frozenset of the values above the last mark.
        FrozenSet = 0x91,
        /// `APPEND`: appends the top value to the list below it.
        Append = b'a',
        /// `APPENDS`: appends the values above the last mark to the list below it.
        Appends = b'e',
        /// `ADDITEMS`: adds the values above the last mark to the set below it.
        AddItems = 0x90,
        /// `EMPTY_DICT`.
        EmptyDict = b'}',
        /// `DICT`: a dict of the keys and values above the last mark.
        Dict = b'd',
        /// `SETITEM`: sets a key (second from the top) to a value (the top) in the dict below them.
        SetItem = b's',
        /// `SETITEMS`: sets the keys and values above the last mark in the dict below it.
        SetItems = b'u',
    }

    /// Names and calls.
    Call {
        /// `GLOBAL`: a name, as two lines (module, name).
        Global = b'c',
        /// `STACK_GLOBAL`: a name, as two strings on the stack (module, name).
        StackGlobal = 0x93,
        /// `REDUCE`: a call, `callable(*args)`.
        Reduce = b'R',
        /// `NEWOBJ`: `cls.__new__(cls, *args)`.
        NewObj = 0x81,
        /// `NEWOBJ_EX`: `cls.__new__(cls, *args, **kwargs)`.
        NewObjEx = 0x92,
        /// `BUILD`: sets an object's state.
        Build = b'b',
        /// `BINPERSID`: the object of a persistent id (a storage, in `torch.save` files).
        BinPersId = b'Q',
    }
}
