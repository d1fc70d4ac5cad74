//! torch.save archives built by hand (pickles from [`PickleOut`], zips from the `zip` crate, an
//! independent writer), read back; the writer's archives checked by the `zip` crate (which
//! verifies CRC-32s) and read back bit for bit; and mutated files, which must never panic.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use safetensors::Dtype;

use super::ops::Op;
use super::write::PickleOut;
use super::*;
use crate::checkpoint::TensorSpec;

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A zip of stored members, written by the `zip` crate.
fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ::zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = ::zip::write::SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        w.start_file(*name, options).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A torch.save archive: `pickle` plus storages `data/0`, `data/1`… and byteorder `little`.
fn archive(pickle: &[u8], storages: &[Vec<u8>]) -> Vec<u8> {
    let names: Vec<String> = (0..storages.len()).map(|i| format!("ck/data/{i}")).collect();
    let mut members: Vec<(&str, &[u8])> = vec![("ck/data.pkl", pickle), ("ck/byteorder", b"little")];
    members.extend(names.iter().map(String::as_str).zip(storages.iter().map(Vec::as_slice)));
    members.push(("ck/version", b"3\n"));
    zip_of(&members)
}

/// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), offset, size, stride, …)`.
fn tensor(p: &mut PickleOut, class: &str, key: &str, numel: u64, offset: u64, size: &[u64], stride: &[u64]) {
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.mark()
        .mark()
        .str("storage")
        .global("torch", class)
        .str(key)
        .str("cpu")
        .int(numel)
        .op(Op::Tuple)
        .op(Op::BinPersId);
    p.int(offset).ints(size).ints(stride).op(Op::NewFalse).ordered_dict().op(Op::Tuple).op(Op::Reduce);
}

/// `OrderedDict(a=[0,1,2,3] f32, b=2x3 f32)` over storages 0 and 1.
fn plain_state_dict(p: &mut PickleOut) {
    p.ordered_dict().mark();
    p.str("a");
    tensor(p, "FloatStorage", "0", 4, 0, &[4], &[1]);
    p.str("b");
    tensor(p, "FloatStorage", "1", 6, 0, &[2, 3], &[3, 1]);
    p.op(Op::SetItems);
}

fn plain_storages() -> Vec<Vec<u8>> {
    vec![f32_bytes(&[0., 1., 2., 3.]), f32_bytes(&[10., 11., 12., 13., 14., 15.])]
}

fn plain_file() -> Vec<u8> {
    let mut p = PickleOut::new();
    plain_state_dict(&mut p);
    p.op(Op::Stop);
    archive(&p.bytes, &plain_storages())
}

fn write_temp(bytes: &[u8]) -> tempfile::TempPath {
    let mut f = tempfile::Builder::new().suffix(".pt").tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.into_temp_path()
}

fn open_err(bytes: &[u8], key: Option<&str>) -> String {
    crate::error::chain(&open_bytes(Path::new("x.pt"), bytes, key).unwrap_err())
}

#[test]
fn reads_a_plain_state_dict_as_views() {
    let path = write_temp(&plain_file());
    assert!(is_torch_zip(&std::fs::read(&path).unwrap()));
    let ck = open(&path, None).unwrap();
    let names: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let b = ck.get("b").unwrap();
    assert_eq!((b.dtype, b.shape.clone()), (Dtype::F32, vec![2, 3]));
    assert_eq!(ck.f32_values("a").unwrap(), [0., 1., 2., 3.]);
    assert_eq!(ck.f32_values("b").unwrap(), [10., 11., 12., 13., 14., 15.]);
    assert_eq!(ck.metadata().get(TORCH_KEY).map(String::as_str), Some(""));
    // Zero copy: one source, the mapped file.
    assert_eq!(ck.files(), [path.to_path_buf().as_path()]);
    let c = contents(&path).unwrap();
    assert_eq!(c.state_dicts, [(String::new(), 2)]);
    assert_eq!(c.chosen.as_deref(), Some(""));
}

#[test]
fn nested_checkpoints_choose_the_model_and_keep_scalars() {
    let mut p = PickleOut::new();
    p.op(Op::EmptyDict).mark();
    p.str("epoch").int(3);
    p.str("lr").op(Op::BinFloat).arg(&0.5f64.to_be_bytes());
    p.str("name").str("run-1");
    p.str("model");
    plain_state_dict(&mut p);
    // Optimizer state: an int-keyed dict of tensors, and a hyper-parameter object swa never builds.
    p.str("optimizer").op(Op::EmptyDict).str("state").op(Op::EmptyDict).int(0).op(Op::EmptyDict).str("step");
    tensor(&mut p, "FloatStorage", "0", 4, 0, &[], &[]);
    p.op(Op::SetItem).op(Op::SetItem).op(Op::SetItem);
    p.str("hyper_parameters")
        .global("argparse", "Namespace")
        .op(Op::EmptyTuple)
        .op(Op::NewObj)
        .op(Op::EmptyDict)
        .op(Op::Build);
    p.op(Op::SetItems).op(Op::Stop);
    let bytes = archive(&p.bytes, &plain_storages());
    let path = write_temp(&bytes);
    let ck = open(&path, None).unwrap();
    assert_eq!(ck.tensors().len(), 2);
    let meta = ck.metadata();
    assert_eq!(meta["epoch"], "3");
    assert_eq!(meta["lr"], "0.5");
    assert_eq!(meta["name"], "run-1");
    assert_eq!(meta[TORCH_KEY], "model");
    let c = contents(&path).unwrap();
    assert_eq!(c.state_dicts, [("model".to_string(), 2)]);
    assert_eq!(c.other_keys, ["epoch", "lr", "name", "optimizer", "hyper_parameters"]);
    assert_eq!(c.chosen.as_deref(), Some("model"));
    // The optimizer's step tensor is reachable by key (int keys in decimal), a 0-d tensor.
    let ck = open(&path, Some("optimizer.state.0")).unwrap();
    assert_eq!(ck.get("step").unwrap().shape, Vec::<usize>::new());
    assert_eq!(ck.f32_values("step").unwrap(), [0.]);
    let e = open_err(&bytes, Some("hyper_parameters"));
    assert!(e.contains("refusing global argparse.Namespace"), "{e}");
    let e = open_err(&bytes, Some("nope"));
    assert!(e.contains("no key `nope`"), "{e}");
}

#[test]
fn dotted_keys_match_the_longest_key() {
    let mut p = PickleOut::new();
    p.op(Op::EmptyDict).mark().str("callbacks").op(Op::EmptyDict).mark();
    p.str("EMA").op(Op::EmptyDict);
    p.str("EMA.v2").op(Op::EmptyDict).str("ema_state_dict");
    plain_state_dict(&mut p);
    p.op(Op::SetItem).op(Op::SetItems).op(Op::SetItems).op(Op::Stop);
    let bytes = archive(&p.bytes, &plain_storages());
    assert_eq!(open_bytes(Path::new("x.pt"), &bytes, Some("callbacks.EMA.v2.ema_state_dict")).unwrap(), 2);
    let e = open_err(&bytes, None);
    assert!(e.contains("choose one by key: `callbacks.EMA.v2.ema_state_dict` (2 tensors)"), "{e}");
}

#[test]
fn tied_offset_and_strided_tensors() {
    let mut p = PickleOut::new();
    p.ordered_dict().mark();
    p.str("w");
    tensor(&mut p, "FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    p.str("tied");
    tensor(&mut p, "FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    p.str("tail");
    tensor(&mut p, "FloatStorage", "0", 6, 2, &[4], &[1]);
    p.str("t");
    tensor(&mut p, "FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
    p.str("expanded");
    tensor(&mut p, "FloatStorage", "0", 6, 1, &[2, 2], &[0, 1]);
    p.str("empty");
    tensor(&mut p, "FloatStorage", "0", 6, 6, &[0, 3], &[3, 1]);
    p.op(Op::SetItems).op(Op::Stop);
    let storage = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
    let path = write_temp(&archive(&p.bytes, &[storage]));
    let ck = open(&path, None).unwrap();
    assert_eq!(ck.f32_values("w").unwrap(), ck.f32_values("tied").unwrap());
    assert_eq!(ck.f32_values("tail").unwrap(), [2., 3., 4., 5.]);
    assert_eq!(ck.f32_values("t").unwrap(), [0., 3., 1., 4., 2., 5.]);
    assert_eq!(ck.f32_values("expanded").unwrap(), [1., 2., 1., 2.]);
    assert_eq!(ck.get("empty").unwrap().shape, [0, 3]);
    assert_eq!(ck.get("empty").unwrap().nbytes(), 0);
}

#[test]
fn out_of_bounds_views_are_refused() {
    for (offset, size, stride) in
        [(3u64, vec![4u64], vec![1u64]), (0, vec![2, 3], vec![4, 1]), (u64::MAX / 2, vec![1], vec![1])]
    {
        let mut p = PickleOut::new();
        p.ordered_dict().mark().str("w");
        tensor(&mut p, "FloatStorage", "0", 6, offset, &size, &stride);
        p.op(Op::SetItems).op(Op::Stop);
        let e = open_err(&archive(&p.bytes, &[f32_bytes(&[0.; 6])]), None);
        assert!(e.contains("tensor `w`") && (e.contains("reaches byte") || e.contains("does not fit")), "{e}");
    }
    // A storage whose numel disagrees with its member.
    let mut p = PickleOut::new();
    p.ordered_dict().mark().str("w");
    tensor(&mut p, "FloatStorage", "0", 7, 0, &[6], &[1]);
    p.op(Op::SetItems).op(Op::Stop);
    let e = open_err(&archive(&p.bytes, &[f32_bytes(&[0.; 6])]), None);
    assert!(e.contains("holds 24 bytes, the pickle says 7 elements"), "{e}");
}

#[test]
fn every_storage_dtype() {
    let cases = [
        ("DoubleStorage", Dtype::F64),
        ("HalfStorage", Dtype::F16),
        ("BFloat16Storage", Dtype::BF16),
        ("LongStorage", Dtype::I64),
        ("IntStorage", Dtype::I32),
        ("ShortStorage", Dtype::I16),
        ("CharStorage", Dtype::I8),
        ("ByteStorage", Dtype::U8),
        ("BoolStorage", Dtype::BOOL),
        ("ComplexFloatStorage", Dtype::C64),
    ];
    let mut p = PickleOut::new();
    p.ordered_dict().mark();
    let mut storages = Vec::new();
    for (i, (class, d)) in cases.iter().enumerate() {
        p.str(class);
        tensor(&mut p, class, &i.to_string(), 3, 0, &[3], &[1]);
        storages.push((0..3 * dtype::width(*d)).map(|b| b as u8).collect::<Vec<u8>>());
    }
    // A float8 tensor as PyTorch saves it: bytes, with the dtype given to _rebuild_tensor_v3.
    p.str("f8").global("torch._utils", "_rebuild_tensor_v3");
    p.mark().mark().str("storage").global("torch.storage", "UntypedStorage").str("10").str("cpu").int(3);
    p.op(Op::Tuple)
        .op(Op::BinPersId)
        .int(0)
        .ints(&[3])
        .ints(&[1])
        .op(Op::NewFalse)
        .ordered_dict()
        .global("torch", "float8_e4m3fn");
    p.op(Op::Tuple).op(Op::Reduce);
    storages.push(vec![1, 2, 3]);
    p.op(Op::SetItems).op(Op::Stop);
    let path = write_temp(&archive(&p.bytes, &storages));
    let ck = open(&path, None).unwrap();
    for (i, (class, d)) in cases.iter().enumerate() {
        let t = ck.get(class).unwrap();
        assert_eq!(t.dtype, *d);
        assert_eq!(ck.bytes(t), storages[i].as_slice());
    }
    assert_eq!(ck.get("f8").unwrap().dtype, Dtype::F8_E4M3);
    assert_eq!(ck.bytes(ck.get("f8").unwrap()), [1, 2, 3]);
}

#[test]
fn code_is_refused_by_name_and_never_run() {
    let marker = std::env::temp_dir().join(format!("swa-torch-pwned-{}", std::process::id()));
    let command = format!("touch {}", marker.display());
    for (module, name) in [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "call")] {
        // At the top level, and hidden in a key that is not the state dict.
        let mut top = PickleOut::new();
        top.global(module, name).str(&command).op(Op::Tuple1).op(Op::Reduce).op(Op::Stop);
        let mut hidden = PickleOut::new();
        hidden.op(Op::EmptyDict).mark().str("model");
        plain_state_dict(&mut hidden);
        hidden.str("x").global(module, name).str(&command).op(Op::Tuple1).op(Op::Reduce).op(Op::SetItems).op(Op::Stop);
        for pickle in [top.bytes, hidden.bytes] {
            let e = open_err(&archive(&pickle, &plain_storages()), None);
            assert!(e.contains(&format!("refusing global {module}.{name}")), "{e}");
        }
    }
    assert!(!marker.exists());
    // A name that is merely unknown is refused only where it is read as a tensor.
    let mut p = PickleOut::new();
    p.ordered_dict().mark().str("a");
    tensor(&mut p, "FloatStorage", "0", 4, 0, &[4], &[1]);
    p.str("b").global("mymodule", "Thing").str("arg").op(Op::Tuple1).op(Op::Reduce).op(Op::SetItems).op(Op::Stop);
    let e = open_err(&archive(&p.bytes, &plain_storages()), None);
    assert!(e.contains("tensor `b`") && e.contains("refusing global mymodule.Thing"), "{e}");
}

/// `OrderedDict(a=<tensor whose backward hooks are `hooks(...)`>)`: a name hidden where swa does
/// not look (the hooks are never read).
fn state_dict_with_hooks(p: &mut PickleOut, module: &str, name: &str) {
    p.ordered_dict().mark().str("a");
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.mark().mark().str("storage").global("torch", "FloatStorage").str("0").str("cpu").int(4);
    p.op(Op::Tuple).op(Op::BinPersId).int(0).ints(&[4]).ints(&[1]).op(Op::NewFalse);
    p.global(module, name).str("x").op(Op::Tuple1).op(Op::Reduce);
    p.op(Op::Tuple).op(Op::Reduce).op(Op::SetItems);
}

#[test]
fn the_allow_list_is_the_rule_inside_the_state_dict_and_elsewhere_a_warning() {
    // Inside the state dict: a name in a tensor's hooks, or in the dict's own state (BUILD).
    let mut p = PickleOut::new();
    state_dict_with_hooks(&mut p, "mymodule", "Hook");
    p.op(Op::Stop);
    let e = open_err(&archive(&p.bytes, &plain_storages()), None);
    assert!(e.contains("the top level holds the name mymodule.Hook (at `a`)"), "{e}");
    // A torch function whose name starts like a dtype's is no dtype.
    for name in ["float_power", "int_repr", "complex"] {
        let mut p = PickleOut::new();
        state_dict_with_hooks(&mut p, "torch", name);
        p.op(Op::Stop);
        let e = open_err(&archive(&p.bytes, &plain_storages()), None);
        assert!(e.contains(&format!("holds the name torch.{name} (at `a`)")), "{e}");
    }
    let mut p = PickleOut::new();
    plain_state_dict(&mut p);
    p.op(Op::EmptyDict).str("_metadata").global("mymodule", "Meta").op(Op::EmptyTuple).op(Op::Reduce);
    p.op(Op::SetItem).op(Op::Build).op(Op::Stop);
    let e = open_err(&archive(&p.bytes, &plain_storages()), None);
    assert!(e.contains("holds the name mymodule.Meta"), "{e}");
    // Elsewhere: read, and named with where it is; names known to be plain data go unsaid.
    let mut p = PickleOut::new();
    p.op(Op::EmptyDict).mark().str("state_dict");
    plain_state_dict(&mut p);
    p.str("hyper_parameters").op(Op::EmptyDict).str("act").global("mymodule", "Act").op(Op::EmptyTuple);
    p.op(Op::Reduce).op(Op::SetItem);
    p.str("args").global("argparse", "Namespace").op(Op::EmptyTuple).op(Op::NewObj);
    // Built and dropped: in no value of the file.
    p.global("mymodule", "Dropped").op(Op::EmptyTuple).op(Op::Reduce).op(Op::Pop);
    p.op(Op::SetItems).op(Op::Stop);
    let bytes = archive(&p.bytes, &plain_storages());
    let plan = plan(Path::new("x.pt"), &bytes, None).unwrap();
    assert_eq!(plan.tensors.len(), 2);
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(
        plan.warnings[0].contains("x.pt: holds the name mymodule.Act at `hyper_parameters.act`"),
        "{:?}",
        plan.warnings
    );
    assert!(plan.warnings[0].contains("weights_only=False) would import it"), "{:?}", plan.warnings);
    assert!(plan.warnings[1].contains("mymodule.Dropped in a value the pickle discarded"), "{:?}", plan.warnings);
    // A state dict chosen by key that holds it is refused.
    let e = open_err(&bytes, Some("hyper_parameters"));
    assert!(e.contains("mymodule.Act"), "{e}");
}

/// A 10 KB string memoised once and used as the key of 2,000 nested dicts (a 24 KB file) around a
/// name outside the allow-list: the warning's path is cut (it was 20 MB), and a dict of 20,000
/// entries keyed by one 100 KB string is walked without copying or hashing it each time.
#[test]
fn paths_in_messages_stay_short_and_long_memoised_keys_cost_nothing_again() {
    let long = "k".repeat(10_000);
    let mut p = PickleOut::new();
    p.op(Op::EmptyDict).mark().str("model");
    plain_state_dict(&mut p);
    p.str(&long).op(Op::LongBinPut).arg(&1_000_000u32.to_le_bytes()).op(Op::Pop);
    p.str("junk");
    for _ in 0..2000 {
        p.op(Op::EmptyDict).op(Op::LongBinGet).arg(&1_000_000u32.to_le_bytes());
    }
    p.global("mymodule", "Evil").op(Op::EmptyTuple).op(Op::Reduce);
    for _ in 0..2000 {
        p.op(Op::SetItem);
    }
    // A wide dict: 20,000 entries, one key object.
    p.str("wide").op(Op::EmptyDict).mark();
    for i in 0..20_000u64 {
        p.op(Op::LongBinGet).arg(&1_000_000u32.to_le_bytes()).int(i);
    }
    p.op(Op::SetItems);
    p.op(Op::SetItems).op(Op::Stop);
    let bytes = archive(&p.bytes, &plain_storages());
    let plan = plan(Path::new("x.pt"), &bytes, None).unwrap();
    let w = &plan.warnings[0];
    assert!(
        w.len() < 1000 && w.contains("mymodule.Evil at `junk.kkk") && w.contains("more)…"),
        "{} bytes: {}",
        w.len(),
        &w[..w.len().min(300)]
    );
    // Read as the state dict: the error names the 10 KB key, cut.
    let e = open_err(&bytes, Some("junk"));
    assert!(e.len() < 1000 && e.contains("tensor `kkk"), "{} bytes", e.len());
}

#[test]
fn names_that_reach_code_stop_the_read_wherever_they_are() {
    for (module, name) in [
        ("torch.storage", "_load_from_bytes"),
        ("_posixsubprocess", "fork_exec"),
        ("builtins", "getattr"),
        ("io", "open"),
        ("torch", "load"),
        ("torch.utils.cpp_extension", "load_inline"),
        ("cPickle", "loads"),
        ("thread", "start_new_thread"),
        ("sympy", "sympify"),
        ("torch._inductor.codecache", "compile_file"),
        ("torch.serialization", "_load"),
    ] {
        let mut p = PickleOut::new();
        p.op(Op::EmptyDict).mark().str("model");
        plain_state_dict(&mut p);
        p.str("x").global(module, name).str("y").op(Op::Tuple1).op(Op::Reduce).op(Op::SetItems).op(Op::Stop);
        let e = open_err(&archive(&p.bytes, &plain_storages()), None);
        assert!(e.contains(&format!("refusing global {module}.{name}")), "{e}");
    }
}

#[test]
fn ambiguous_archives_and_names_are_refused() {
    // Two pickles: swa would read one, torch.load another.
    let mut p = PickleOut::new();
    plain_state_dict(&mut p);
    p.op(Op::Stop);
    let s = plain_storages();
    let two = zip_of(&[("a/data.pkl", &p.bytes), ("a/data/0", &s[0]), ("a/data/1", &s[1]), ("b/data.pkl", &p.bytes)]);
    let e = open_err(&two, None);
    assert!(e.contains("holds two pickles, `a/data.pkl` and `b/data.pkl`"), "{e}");
    // Two members of one name.
    let mut w = ::zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = ::zip::write::SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Stored);
    for (name, bytes) in
        [("a/data.pkl", p.bytes.as_slice()), ("a/data/0", &s[0]), ("a/data/1", &s[1]), ("a/data/9", &s[1])]
    {
        w.start_file(name, options).unwrap();
        w.write_all(bytes).unwrap();
    }
    let mut bytes = w.finish().unwrap().into_inner();
    // Rename a/data/9 to a/data/0 in both headers.
    for at in (0..bytes.len() - 8).rev() {
        if &bytes[at..at + 8] == b"a/data/9" {
            bytes[at + 7] = b'0';
        }
    }
    let e = open_err(&bytes, None);
    assert!(e.contains("two members named `a/data/0`"), "{e}");
    // Keys that are not UTF-8: two such keys would become one name.
    let mut p = PickleOut::new();
    p.ordered_dict().mark();
    p.op(Op::BinUnicode).arg(&2u32.to_le_bytes()).arg(b"a\xff");
    tensor(&mut p, "FloatStorage", "0", 4, 0, &[4], &[1]);
    p.op(Op::SetItems).op(Op::Stop);
    let e = open_err(&archive(&p.bytes, &plain_storages()), None);
    assert!(e.contains("not valid UTF-8"), "{e}");
}

#[test]
fn foreign_files_are_explained() {
    let e = open_err(&[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc], None);
    assert!(e.contains("legacy torch.save file") && e.contains("re-save"), "{e}");
    let e = open_err(b"hello", None);
    assert!(e.contains("not a torch.save file"), "{e}");
    let mut p = PickleOut::new();
    plain_state_dict(&mut p);
    p.op(Op::Stop);
    let storages = plain_storages();
    let big = zip_of(&[
        ("ck/data.pkl", &p.bytes),
        ("ck/byteorder", b"big"),
        ("ck/data/0", &storages[0]),
        ("ck/data/1", &storages[1]),
    ]);
    let e = open_err(&big, None);
    assert!(e.contains("big-endian") && e.contains("little-endian machine"), "{e}");
    // A storage compressed by a re-zip.
    let mut w = ::zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored = ::zip::write::SimpleFileOptions::default().compression_method(::zip::CompressionMethod::Stored);
    let deflated = stored.compression_method(::zip::CompressionMethod::Deflated);
    w.start_file("ck/data.pkl", stored).unwrap();
    w.write_all(&p.bytes).unwrap();
    w.start_file("ck/data/0", deflated).unwrap();
    w.write_all(&storages[0]).unwrap();
    w.start_file("ck/data/1", stored).unwrap();
    w.write_all(&storages[1]).unwrap();
    let e = open_err(&w.finish().unwrap().into_inner(), None);
    assert!(e.contains("`ck/data/0` is compressed"), "{e}");
    let e = open_err(&zip_of(&[("m/constants.pkl", b""), ("m/code/x.py", b"")]), None);
    assert!(e.contains("TorchScript"), "{e}");
}

/// A small xorshift generator: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn every_opcode_reaches_its_handler() {
    // A pickle of one opcode and nothing else: each opcode swa knows fails (or ends) in the
    // method of its group, never in the reader's dispatch; any other byte is refused as unknown.
    for byte in 0..=u8::MAX {
        let e = Machine::new(&[byte]).run().unwrap_err();
        let op = Op::from_byte(byte);
        assert_eq!(e.starts_with("unsupported pickle opcode"), op.is_none(), "{byte:#04x}: {e}");
        assert!(op.is_none_or(|op| op as u8 == byte), "{byte:#04x}");
    }
}

#[test]
fn mutated_files_never_panic() {
    let mut nested = PickleOut::new();
    nested.op(Op::EmptyDict).mark().str("epoch").int(7).str("state_dict");
    plain_state_dict(&mut nested);
    nested.op(Op::SetItems).op(Op::Stop);
    let seeds = [plain_file(), archive(&nested.bytes, &plain_storages()), written(false), written(true)];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut ok = 0;
    for seed in &seeds {
        assert!(open_bytes(Path::new("x.pt"), seed, None).is_ok());
        for _ in 0..3000 {
            let mut bytes = seed.clone();
            match rng.below(4) {
                0 => bytes.truncate(rng.below(bytes.len())),
                1 => {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
                2 => {
                    // Set a 32-bit field to an extreme: lengths, offsets, counts.
                    let at = rng.below(bytes.len() - 4);
                    let v = [0u32, 0xFFFF_FFFF, 0x7FFF_FFFF, 0x8000_0000, 1][rng.below(5)];
                    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                _ => {
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
            }
            ok += usize::from(open_bytes(Path::new("x.pt"), &bytes, None).is_ok());
        }
    }
    assert!(ok > 0);
}

/// The bytes of an archive written by [`TorchWriter`] (zip64 records forced or not).
fn written(force_zip64: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("w.pt");
    let (specs, data) = sample_tensors();
    let meta = BTreeMap::from([("swa_version".to_string(), "0.1".to_string())]);
    let w = TorchWriter::create_with(&target, &specs, &meta, force_zip64).unwrap();
    for (i, d) in data.iter().enumerate() {
        // In two halves, as the averaging writes chunks.
        let half = d.len() / 2;
        w.write_at(i, half, &d[half..]).unwrap();
        w.write_at(i, 0, &d[..half]).unwrap();
    }
    w.finish().unwrap().publish().unwrap();
    std::fs::read(&target).unwrap()
}

fn sample_tensors() -> (Vec<TensorSpec>, Vec<Vec<u8>>) {
    let spec = |name: &str, dtype, shape: &[usize]| TensorSpec { name: name.into(), dtype, shape: shape.to_vec() };
    let specs = vec![
        spec("layer.weight", Dtype::F32, &[3, 4]),
        spec("layer.bias", Dtype::BF16, &[3]),
        spec("bn.num_batches_tracked", Dtype::I64, &[]),
        spec("half", Dtype::F16, &[2, 2]),
        spec("mask", Dtype::BOOL, &[5]),
        spec("empty", Dtype::F32, &[0]),
        spec("codes", Dtype::F8_E5M2, &[4]),
        spec("ids", Dtype::U16, &[3]),
    ];
    let data = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (0..s.nbytes()).map(|b| (b * 7 + i) as u8 % if s.dtype == Dtype::BOOL { 2 } else { 251 }).collect()
        })
        .collect();
    (specs, data)
}

#[test]
fn writer_round_trips_bit_for_bit_with_valid_crcs() {
    let (specs, data) = sample_tensors();
    for force_zip64 in [false, true] {
        let bytes = written(force_zip64);
        // The zip crate verifies every member's CRC-32 when read to the end.
        let mut z = ::zip::ZipArchive::new(Cursor::new(bytes.clone())).unwrap();
        let mut names = Vec::new();
        for i in 0..z.len() {
            let mut f = z.by_index(i).unwrap();
            assert_eq!(f.compression(), ::zip::CompressionMethod::Stored);
            let mut content = Vec::new();
            f.read_to_end(&mut content).unwrap();
            if f.name().contains("/data/") {
                assert_eq!(f.data_start() % 64, 0, "{}", f.name());
            }
            names.push(f.name().to_string());
        }
        assert_eq!(names[0], "w/data.pkl");
        assert!(names.contains(&"w/swa_metadata.json".to_string()));
        let path = write_temp(&bytes);
        let ck = open(&path, None).unwrap();
        assert_eq!(ck.tensors().len(), specs.len());
        for (s, d) in specs.iter().zip(&data) {
            let t = ck.get(&s.name).unwrap();
            assert_eq!((t.dtype, &t.shape), (s.dtype, &s.shape));
            assert_eq!(ck.bytes(t), d.as_slice(), "{}", s.name);
        }
    }
}

#[test]
fn writer_refuses_bad_writes() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("w.pt");
    let (specs, _) = sample_tensors();
    let w = TorchWriter::create(&target, &specs, &BTreeMap::new()).unwrap();
    assert!(w.write_at(0, 40, &[0; 9]).is_err());
    assert!(w.write_at(99, 0, &[0]).is_err());
    drop(w);
    let twice = [specs[0].clone(), specs[0].clone()];
    assert!(TorchWriter::create(&target, &twice, &BTreeMap::new()).is_err());
    assert!(!target.exists());
}
