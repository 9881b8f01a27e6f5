//! Tests of the `.pth` reader against fixtures made by `torch.save`
//! (`tests/fixtures/make_pth_fixtures.py`) and mutations of them.

use super::storage::*;
use super::*;
use safetensors::SafeTensors;
use std::io::Read;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Expected values: a safetensors file whose metadata lists the
/// state-dict `order` (comma-separated) and each tensor's torch `dtype.<name>`.
struct Expected {
    order: Vec<String>,
    dtypes: HashMap<String, String>,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

fn expected(name: &str) -> Expected {
    let bytes = fixture(name);
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("metadata");
    let meta = meta.metadata().clone().expect("__metadata__");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let order = meta["order"].split(',').map(str::to_string).collect();
    let dtypes = meta
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("dtype.")?.to_string(), v.clone())))
        .collect();
    let mut tensors = HashMap::new();
    for (n, view) in st.tensors() {
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            d => panic!("unexpected dtype {d:?} in {name}"),
        };
        tensors.insert(n, (view.shape().to_vec(), data));
    }
    Expected {
        order,
        dtypes,
        tensors,
    }
}

/// Compares a checkpoint with its expected file, bit for bit; `rename`
/// maps checkpoint names to expected names.
fn check(pth: &str, exp: &str, rename: impl Fn(&str) -> String) {
    let got = read_pth(Path::new(&format!("{FIXTURES}/{pth}"))).expect(pth);
    let exp = expected(exp);
    let names: Vec<String> = got.iter().map(|t| rename(&t.name)).collect();
    assert_eq!(names, exp.order, "{pth}: order");
    for t in &got {
        let name = rename(&t.name);
        let (shape, data) = &exp.tensors[&name];
        assert_eq!(&t.shape, shape, "{name}: shape");
        assert_eq!(t.data.len(), data.len(), "{name}: len");
        for (i, (a, b)) in t.data.iter().zip(data).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs {b}");
        }
        assert_eq!(t.dtype, exp.dtypes[&name], "{name}: dtype");
    }
}

fn modern_name(legacy: &str) -> String {
    ["norm", "relu", "conv"]
        .iter()
        .fold(legacy.to_string(), |s, p| {
            s.replace(&format!(".{p}.1."), &format!(".{p}1."))
                .replace(&format!(".{p}.2."), &format!(".{p}2."))
        })
}

#[test]
fn legacy_tiny_densenet_matches_modern_expected() {
    check(
        "legacy_tiny_densenet.pth",
        "legacy_tiny_densenet.expected.safetensors",
        modern_name,
    );
    let got = read_pth(Path::new(&format!("{FIXTURES}/legacy_tiny_densenet.pth"))).unwrap();
    assert!(got
        .iter()
        .any(|t| t.name == "features.denseblock1.denselayer1.norm.1.weight"));
    let nbt: Vec<&PthTensor> = got
        .iter()
        .filter(|t| t.name.ends_with("num_batches_tracked"))
        .collect();
    assert!(!nbt.is_empty());
    for t in nbt {
        assert_eq!(t.dtype, "int64");
        assert!(t.shape.is_empty());
        assert_eq!(t.data.len(), 1);
    }
}

#[test]
fn views_offsets_and_strides() {
    check(
        "edge_views.pth",
        "edge_views.expected.safetensors",
        str::to_string,
    );
}

#[test]
fn dtypes_convert_like_torch() {
    check(
        "edge_dtypes.pth",
        "edge_dtypes.expected.safetensors",
        str::to_string,
    );
}

#[test]
fn wrapped_state_dict_with_parameters() {
    check(
        "edge_wrapped.pth",
        "edge_wrapped.expected.safetensors",
        str::to_string,
    );
}

#[test]
fn protocol4_model_wrapper() {
    check(
        "edge_proto4.pth",
        "edge_proto4.expected.safetensors",
        str::to_string,
    );
}

#[test]
fn f16_conversion_is_exact() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    assert!(f16_to_f32(0x7e00).is_nan());
    // Every finite half against its defining formula.
    for h in 0..=u16::MAX {
        let (s, e, m) = (h >> 15, i32::from((h >> 10) & 0x1f), f64::from(h & 0x3ff));
        if e == 0x1f {
            continue;
        }
        let mag = if e == 0 {
            m * 2f64.powi(-24)
        } else {
            (1.0 + m / 1024.0) * 2f64.powi(e - 15)
        };
        let want = if s == 1 { -mag } else { mag } as f32;
        assert_eq!(f16_to_f32(h).to_bits(), want.to_bits(), "{h:#06x}");
    }
}

fn err_text(bytes: &[u8]) -> String {
    match read_pth_bytes(bytes, "test.pth") {
        Ok(t) => panic!("expected an error, got {} tensors", t.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn forbidden_global_is_named() {
    let bytes = fixture("evil_os_system.pth");
    let err = read_pth_bytes(&bytes, "evil.pth").unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, PthError::ForbiddenGlobal { module, name, .. } if module == "os" && name == "system"),
        "{msg}"
    );
    assert!(msg.contains("evil.pth"), "{msg}");
    assert!(msg.contains("archive/data.pkl"), "{msg}");
    assert!(msg.contains("pickle offset"), "{msg}");
    assert!(msg.contains("`os.system`"), "{msg}");
}

#[test]
fn pickled_module_class_is_forbidden() {
    // A whole nn.Module pickled by torch.save names its class.
    let msg = err_text(&fixture("edge_pickled_module.pth"));
    assert!(msg.contains("torch.nn.modules.linear.Linear"), "{msg}");
}

#[test]
fn truncated_file() {
    let bytes = fixture("legacy_tiny_densenet.pth");
    for cut in [bytes.len() / 2, bytes.len() - 10, 30] {
        let msg = err_text(&bytes[..cut]);
        assert!(msg.contains("test.pth"), "{msg}");
        assert!(msg.contains("zip"), "{msg}");
    }
}

#[test]
fn garbage_bytes() {
    let msg = err_text(b"this is not a checkpoint at all");
    assert!(msg.contains("expected a zip archive"), "{msg}");
    let msg = err_text(b"PK\x03\x04garbage garbage garbage garbage garbage");
    assert!(msg.contains("zip"), "{msg}");
    let msg = err_text(b"");
    assert!(msg.contains("expected a zip archive"), "{msg}");
}

#[test]
fn old_non_zip_format_is_explained() {
    let msg = err_text(&fixture("old_serialization.pth"));
    assert!(msg.contains("legacy (pre-1.6"), "{msg}");
}

#[test]
fn big_endian_is_rejected() {
    let msg = err_text(&fixture("big_endian_marker.pth"));
    assert!(msg.contains("archive/byteorder"), "{msg}");
    assert!(msg.contains("big-endian"), "{msg}");
}

#[test]
fn out_of_bounds_view_is_rejected() {
    let msg = err_text(&fixture("bad_storage_bounds.pth"));
    assert!(msg.contains("tensor `w`"), "{msg}");
    assert!(msg.contains("bad_storage_bounds/data/0"), "{msg}");
    assert!(msg.contains("reaches element"), "{msg}");
}

/// Zip `members` (stored) under the prefix `archive/`.
fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in members {
        w.start_file(format!("archive/{name}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn malformed_pickles_give_offsets() {
    // (pickle, expected fragment of the message)
    let cases: &[(&[u8], &str)] = &[
        (
            b"\x80\x02}q\x00(X\x01\x00\x00",
            "pickle offset 6: truncated",
        ),
        (b"\x80\x02}q\x00", "ended before its STOP"),
        (b"\x80\x02h\x05.", "pickle offset 2: memo key 5"),
        (b"\x80\x02s.", "pickle offset 2: stack underflow"),
        (
            b"\x80\x02\xff.",
            "pickle offset 2: unsupported pickle opcode 0xff",
        ),
        (b"\x80\x02K\x01.", "pickle offset 4: expected a state dict"),
        (b"\x80\x02K\x01.", "found a top-level int"),
        (
            b"\x80\x02ctorch\nComplexFloatStorage\n.",
            "unsupported storage type `torch.ComplexFloatStorage`",
        ),
        (
            b"\x80\x02}X\x01\x00\x00\x00aK\x01s.",
            "entry `a` holding int 1",
        ),
        (
            b"\x80\x02cbuiltins\neval\nq\x00.",
            "pickle offset 2: global `builtins.eval` is not allowed",
        ),
        (
            b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93.",
            "global `os.system` is not allowed",
        ),
    ];
    for (pkl, want) in cases {
        let bytes = zip_of(&[("data.pkl", pkl), ("version", b"3\n")]);
        let msg = err_text(&bytes);
        assert!(msg.contains(want), "want {want:?} in {msg}");
        assert!(msg.contains("test.pth: archive/data.pkl"), "{msg}");
    }
}

#[test]
fn missing_members() {
    let msg = err_text(&zip_of(&[("version", b"3\n")]));
    assert!(msg.contains("no `<prefix>/data.pkl`"), "{msg}");
    // A tensor whose storage member is absent.
    let pkl: &[u8] = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(\
        (X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQ\
        K\x00K\x02\x85K\x01\x85\x89}tRs.";
    let msg = err_text(&zip_of(&[("data.pkl", pkl)]));
    assert!(msg.contains("storage member `archive/data/0`"), "{msg}");
    assert!(msg.contains("is missing"), "{msg}");
    // The same with its storage present reads back.
    let data: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let got = read_pth_bytes(&zip_of(&[("data.pkl", pkl), ("data/0", &data)]), "x").unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "w");
    assert_eq!(got[0].shape, vec![2]);
    assert_eq!(got[0].data, vec![1.5, -2.0]);
    assert_eq!(got[0].dtype, "float32");
}

/// Corrupting any byte of a real pickle, or cutting it short, gives an
/// error or a result, never a panic.
#[test]
fn corrupted_pickles_never_panic() {
    let bytes = fixture("edge_wrapped.pth");
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes.as_slice())).unwrap();
    let mut members = Vec::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let Some(name) = name.strip_prefix("edge_wrapped/").map(str::to_string) else {
            continue;
        };
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        members.push((name, data));
    }
    let pkl = members
        .iter()
        .find(|(n, _)| n == "data.pkl")
        .unwrap()
        .1
        .clone();
    let storages: Vec<(&str, &[u8])> = members
        .iter()
        .filter(|(n, _)| n != "data.pkl")
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let run = |p: &[u8]| {
        let mut all = vec![("data.pkl", p)];
        all.extend(storages.iter().copied());
        let _ = read_pth_bytes(&zip_of(&all), "fuzz");
    };
    run(&pkl);
    for i in 0..pkl.len() {
        run(&pkl[..i]);
        for v in [0x00u8, 0x7f, 0xff, b'Q'] {
            let mut p = pkl.clone();
            p[i] = v;
            run(&p);
        }
    }
}

/// The members of fixture `name` (without the archive prefix), in archive order.
fn members_of(name: &str) -> Vec<(String, Vec<u8>)> {
    let bytes = fixture(name);
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes.as_slice())).unwrap();
    let mut members = Vec::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let full = f.name().unwrap().to_string();
        let Some((_, rest)) = full.split_once('/') else {
            continue;
        };
        let rest = rest.to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        members.push((rest, data));
    }
    members
}

/// Issue 12, item 10: a storage class changed from `FloatStorage` to a smaller element
/// type leaves the member 2–4× larger than the declared storage; like `torch.load`, the
/// reader refuses it, naming the member, the declared class and both sizes.
#[test]
fn storage_member_must_match_declared_storage_size() {
    let members = members_of("legacy_tiny_densenet.pth");
    let as_refs = |m: &[(String, Vec<u8>)]| {
        zip_of(
            &m.iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect::<Vec<_>>(),
        )
    };
    // unchanged, it reads
    assert!(read_pth_bytes(&as_refs(&members), "x").is_ok());
    for class in [
        "HalfStorage",
        "BFloat16Storage",
        "ByteStorage",
        "BoolStorage",
    ] {
        let mut m = members.clone();
        let pkl = &mut m.iter_mut().find(|(n, _)| n == "data.pkl").unwrap().1;
        let text = pkl.clone();
        let needle = b"FloatStorage";
        let at = text
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("a FloatStorage in the fixture");
        let mut changed = text[..at].to_vec();
        changed.extend_from_slice(class.as_bytes());
        changed.extend_from_slice(&text[at + needle.len()..]);
        *pkl = changed;
        let msg = err_text(&as_refs(&m));
        assert!(msg.contains(&format!("torch.{class}")), "{class}: {msg}");
        assert!(msg.contains("storage member holds"), "{class}: {msg}");
        assert!(msg.contains("archive/data/"), "{class}: {msg}");
        assert!(!msg.contains('\n'), "{class}: {msg}");
    }
    // a member longer than declared (trailing bytes) is refused too
    let mut m = members.clone();
    let storage = &mut m
        .iter_mut()
        .find(|(n, _)| n.starts_with("data/"))
        .unwrap()
        .1;
    storage.extend_from_slice(&[0; 4]);
    let msg = err_text(&as_refs(&m));
    assert!(msg.contains("storage member holds"), "{msg}");
}
