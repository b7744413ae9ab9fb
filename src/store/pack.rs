//! The byte-level building blocks of stored values: LEB128 varints, length-prefixed strings,
//! and *packed JSON*, a compact binary form of a [`serde_json::Value`].
//!
//! Packed JSON is one tag byte per value followed by its content:
//!
//! | tag | value | content |
//! |---|---|---|
//! | 0 | `null` | — |
//! | 1 / 2 | `false` / `true` | — |
//! | 3 | integer ≥ 0 | varint |
//! | 4 | integer < 0 | varint of `-(n + 1)` |
//! | 5 | other number | `f64`, 8 bytes little-endian |
//! | 6 | string, first occurrence | varint byte length, UTF-8 bytes |
//! | 7 | string seen before | varint index into the strings seen so far |
//! | 8 | array | varint item count, items |
//! | 9 | object | varint entry count, then per entry a key (tag 6 or 7) and a value |
//!
//! Every string (object keys included) enters a table in order of first occurrence, and a
//! repeat is written as its index: field names and repeated values (a plan's capability ids,
//! stages and facet names, node ids referenced by edges) cost two or three bytes after their
//! first use. The table is per packed value; nothing is shared between stored values.

use serde_json::{Map, Number, Value};

/// Why bytes could not be read; the caller adds the table and key.
pub(crate) type Malformed = &'static str;

/// The tag bytes of packed JSON.
pub(crate) mod tag {
    pub(crate) const NULL: u8 = 0;
    pub(crate) const FALSE: u8 = 1;
    pub(crate) const TRUE: u8 = 2;
    pub(crate) const UINT: u8 = 3;
    pub(crate) const NEG_INT: u8 = 4;
    pub(crate) const FLOAT: u8 = 5;
    pub(crate) const STRING: u8 = 6;
    pub(crate) const STRING_REF: u8 = 7;
    pub(crate) const ARRAY: u8 = 8;
    pub(crate) const OBJECT: u8 = 9;
}
use tag::{ARRAY, FALSE, FLOAT, NEG_INT, NULL, OBJECT, STRING, STRING_REF, TRUE, UINT};

/// Deepest nesting a stored packed value may have; deeper input is reported as malformed
/// instead of exhausting the stack.
const MAX_DEPTH: usize = 128;

/// Below this many distinct strings the table is searched linearly (no hashing, no map).
pub(crate) const LINEAR_TABLE: usize = 16;

/// Appends `value` as an LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `text` as a varint byte length and its bytes.
pub(crate) fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// A cursor over stored bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Malformed> {
        let (&first, rest) = self.bytes.split_first().ok_or("value truncated")?;
        self.bytes = rest;
        Ok(first)
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], Malformed> {
        if len > self.bytes.len() {
            return Err("value truncated");
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let part = u64::from(byte & 0x7f);
            if shift == 63 && part > 1 {
                return Err("varint overflows 64 bits");
            }
            value |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes")
    }

    pub(crate) fn varint_u32(&mut self) -> Result<u32, Malformed> {
        u32::try_from(self.varint()?).map_err(|_| "varint overflows 32 bits")
    }

    fn length(&mut self) -> Result<usize, Malformed> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
        if len > self.bytes.len() {
            return Err("length exceeds the value");
        }
        Ok(len)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, Malformed> {
        let len = self.length()?;
        std::str::from_utf8(self.take(len)?).map_err(|_| "string is not UTF-8")
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self) -> Result<(), Malformed> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the value")
        }
    }
}

/// The strings seen so far while packing one value: the first [`LINEAR_TABLE`] in an inline
/// array searched linearly (small values allocate nothing); past that, all of them in a map
/// (seeded with the array's), so a large value costs one hash per string, not a scan and a hash.
struct Strings<'v> {
    first: [&'v str; LINEAR_TABLE],
    len: usize,
    index: Option<foldhash::HashMap<&'v str, u32>>,
}

impl<'v> Strings<'v> {
    fn new() -> Self {
        Self {
            first: [""; LINEAR_TABLE],
            len: 0,
            index: None,
        }
    }

    /// The index of `text` if seen before; otherwise records it and returns `None`.
    fn intern(&mut self, text: &'v str) -> Option<u32> {
        if let Some(index) = &mut self.index {
            let next = self.len as u32;
            let found = *index.entry(text).or_insert(next);
            if found != next {
                return Some(found);
            }
        } else if let Some(found) = self.first[..self.len].iter().position(|seen| *seen == text) {
            return Some(found as u32);
        } else if self.len < LINEAR_TABLE {
            self.first[self.len] = text;
        } else {
            let mut index: foldhash::HashMap<&'v str, u32> =
                foldhash::HashMap::with_capacity_and_hasher(4 * LINEAR_TABLE, Default::default());
            index.extend(self.first.iter().enumerate().map(|(i, s)| (*s, i as u32)));
            index.insert(text, self.len as u32);
            self.index = Some(index);
        }
        self.len += 1;
        None
    }
}

/// Packs one value into `out`.
pub(crate) fn pack_value(out: &mut Vec<u8>, value: &Value) {
    Packer {
        out,
        strings: Strings::new(),
    }
    .value(value);
}

/// Packs one object into `out` (the same bytes as [`pack_value`] of `Value::Object`).
pub(crate) fn pack_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    Packer {
        out,
        strings: Strings::new(),
    }
    .object(map);
}

struct Packer<'o, 'v> {
    out: &'o mut Vec<u8>,
    strings: Strings<'v>,
}

impl<'v> Packer<'_, 'v> {
    fn value(&mut self, value: &'v Value) {
        match value {
            Value::Null => self.out.push(NULL),
            Value::Bool(false) => self.out.push(FALSE),
            Value::Bool(true) => self.out.push(TRUE),
            Value::Number(number) => self.number(number),
            Value::String(text) => self.string(text),
            Value::Array(items) => {
                self.out.push(ARRAY);
                put_varint(self.out, items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => self.object(map),
        }
    }

    fn object(&mut self, map: &'v Map<String, Value>) {
        self.out.push(OBJECT);
        put_varint(self.out, map.len() as u64);
        for (key, value) in map {
            self.string(key);
            self.value(value);
        }
    }

    fn number(&mut self, number: &Number) {
        if let Some(n) = number.as_u64() {
            self.out.push(UINT);
            put_varint(self.out, n);
        } else if let Some(n) = number.as_i64() {
            self.out.push(NEG_INT);
            // n < 0 here, so -(n + 1) = !n fits in u64 without overflow.
            put_varint(self.out, !n as u64);
        } else {
            // Without arbitrary precision every other number is an f64.
            self.out.push(FLOAT);
            let float = number.as_f64().unwrap_or(f64::NAN);
            self.out.extend_from_slice(&float.to_le_bytes());
        }
    }

    fn string(&mut self, text: &'v str) {
        match self.strings.intern(text) {
            Some(index) => {
                self.out.push(STRING_REF);
                put_varint(self.out, u64::from(index));
            }
            None => {
                self.out.push(STRING);
                put_str(self.out, text);
            }
        }
    }
}

/// Reads one packed value from `reader`.
pub(crate) fn unpack_value(reader: &mut Reader<'_>) -> Result<Value, Malformed> {
    Unpacker {
        reader,
        strings: Vec::new(),
    }
    .value(0)
}

/// Reads one packed value from `reader` that must be an object.
pub(crate) fn unpack_object(reader: &mut Reader<'_>) -> Result<Map<String, Value>, Malformed> {
    match unpack_value(reader)? {
        Value::Object(map) => Ok(map),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_) => {
            Err("object expected")
        }
    }
}

struct Unpacker<'r, 'a> {
    reader: &'r mut Reader<'a>,
    strings: Vec<&'a str>,
}

impl<'a> Unpacker<'_, 'a> {
    fn value(&mut self, depth: usize) -> Result<Value, Malformed> {
        if depth > MAX_DEPTH {
            return Err("packed value nested too deeply");
        }
        let tag = self.reader.u8()?;
        Ok(match tag {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UINT => Value::Number(self.reader.varint()?.into()),
            NEG_INT => {
                let magnitude = self.reader.varint()?;
                let n = i64::try_from(magnitude).map_err(|_| "negative integer overflows")?;
                Value::Number((-n - 1).into())
            }
            FLOAT => {
                let float = f64::from_le_bytes(self.reader.array()?);
                Value::Number(Number::from_f64(float).ok_or("number is not finite")?)
            }
            STRING | STRING_REF => Value::String(self.string(tag)?.to_owned()),
            ARRAY => {
                let count = self.count()?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let count = self.count()?;
                let mut map = Map::new();
                for _ in 0..count {
                    let tag = self.reader.u8()?;
                    let key = self.string(tag)?.to_owned();
                    let value = self.value(depth + 1)?;
                    if map.insert(key, value).is_some() {
                        return Err("object key repeated");
                    }
                }
                Value::Object(map)
            }
            _ => return Err("packed value tag unknown"),
        })
    }

    /// An item count, bounded by the bytes left (every item takes at least one byte).
    fn count(&mut self) -> Result<usize, Malformed> {
        self.reader.length()
    }

    fn string(&mut self, tag: u8) -> Result<&'a str, Malformed> {
        match tag {
            STRING => {
                let text = self.reader.str()?;
                self.strings.push(text);
                Ok(text)
            }
            STRING_REF => {
                let index = usize::try_from(self.reader.varint()?)
                    .map_err(|_| "string reference overflows")?;
                self.strings
                    .get(index)
                    .copied()
                    .ok_or("string reference out of range")
            }
            _ => Err("string expected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn round_trip(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        pack_value(&mut out, value);
        let mut reader = Reader::new(&out);
        assert_eq!(&unpack_value(&mut reader).unwrap(), value);
        reader.finish().unwrap();
        out
    }

    #[test]
    fn varints_round_trip_at_their_edges() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.varint().unwrap(), value);
            reader.finish().unwrap();
        }
        let mut one = Vec::new();
        put_varint(&mut one, 127);
        assert_eq!(one, vec![127]);
        assert_eq!(
            Reader::new(&[0xff; 11]).varint(),
            Err("varint overflows 64 bits")
        );
        assert_eq!(Reader::new(&[0x80]).varint(), Err("value truncated"));
    }

    #[test]
    fn repeated_strings_and_keys_become_short_references() {
        let nodes: Vec<Value> = (0..50)
            .map(|i| json!({"id": format!("s{i:05}"), "capabilityId": "bench.noop", "kind": "execution"}))
            .collect();
        let value = json!({ "nodes": nodes });
        let packed = round_trip(&value);
        let text = serde_json::to_vec(&value).unwrap();
        assert!(
            packed.len() * 3 < text.len(),
            "packed {} bytes, json {} bytes",
            packed.len(),
            text.len()
        );
    }

    #[test]
    fn numbers_keep_their_kind() {
        let value = json!([0, 1, -1, i64::MIN, u64::MAX, 1.5, 2.0, -0.25, 1e300]);
        round_trip(&value);
        let mut out = Vec::new();
        pack_value(&mut out, &json!(2.0));
        assert_eq!(out[0], FLOAT);
    }

    #[test]
    fn malformed_input_is_reported_not_panicked_on() {
        let cases: [(&[u8], Malformed); 7] = [
            (&[], "value truncated"),
            (&[42], "packed value tag unknown"),
            (&[STRING, 5, b'a'], "length exceeds the value"),
            (&[STRING_REF, 0], "string reference out of range"),
            (&[ARRAY, 200, 1], "length exceeds the value"),
            (&[OBJECT, 1, UINT, 1, NULL], "string expected"),
            (
                &[OBJECT, 2, STRING, 1, b'a', NULL, STRING_REF, 0, NULL],
                "object key repeated",
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                unpack_value(&mut Reader::new(bytes)),
                Err(expected),
                "{bytes:?}"
            );
        }
        let deep = [ARRAY, 1].repeat(MAX_DEPTH + 2);
        assert_eq!(
            unpack_value(&mut Reader::new(&deep)),
            Err("packed value nested too deeply")
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            "[a-c]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]{0,2}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_json_value_round_trips(value in arb_json()) {
            round_trip(&value);
        }
    }
}
