//! Packs any `Serialize` value straight into packed JSON (see [`pack`](super::pack)), without
//! building a [`serde_json::Value`] first.
//!
//! The bytes decode to the value `serde_json::to_value` would have produced: the same
//! numbers (integers ≥ 0 as unsigned, non-finite floats as `null`), `null` for `None` and unit,
//! externally tagged enum variants, map keys as strings. Object entries come in serialization
//! order rather than sorted, which decoding into a `Map` does not see. A stored plan or draft
//! is packed this way: building and dropping the intermediate tree cost as much as the packing.

use std::fmt::Display;
use std::hash::BuildHasher;

use serde::ser::{self, Serialize};

use super::pack::put_varint;
use super::pack::{LINEAR_TABLE, tag};

/// Why a value cannot be packed (what `serde_json::to_value` refuses too).
#[derive(Debug)]
pub(crate) struct PackError(String);

impl Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PackError {}

impl ser::Error for PackError {
    fn custom<T: Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, PackError>;

/// Packs `value` into `out`.
pub(crate) fn pack_serialize<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result {
    let mut packer = Packer::new(out);
    value.serialize(&mut packer)
}

/// Packs only the `field` entry of the struct `value` serializes as (`null` when it has
/// none): the payload of an adjacently tagged enum, without its tag.
pub(crate) fn pack_field<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
    field: &'static str,
) -> Result {
    let mut packer = Packer::new(out);
    let mut pick = Pick {
        packer: &mut packer,
        field,
        found: false,
    };
    value.serialize(&mut pick)?;
    if !pick.found {
        packer.out.push(tag::NULL);
    }
    Ok(())
}

/// The string table of one packed value, as byte ranges of the output: the first
/// [`LINEAR_TABLE`] strings searched linearly, then by hash. Every string written in full
/// takes the next index, as the reader counts them.
struct Strings {
    first: Vec<(usize, usize)>,
    by_hash: Option<foldhash::HashMap<u64, (u32, usize, usize)>>,
    hasher: foldhash::fast::FixedState,
    len: u32,
}

struct Packer<'o> {
    out: &'o mut Vec<u8>,
    strings: Strings,
}

impl<'o> Packer<'o> {
    fn new(out: &'o mut Vec<u8>) -> Self {
        Self {
            out,
            strings: Strings {
                first: Vec::new(),
                by_hash: None,
                hasher: foldhash::fast::FixedState::default(),
                len: 0,
            },
        }
    }

    fn string(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let same = |out: &[u8], (at, len): (usize, usize)| &out[at..at + len] == bytes;
        let strings = &mut self.strings;
        let hash = if let Some(map) = &strings.by_hash {
            let hash = strings.hasher.hash_one(bytes);
            if let Some(&(index, at, len)) = map.get(&hash)
                && same(self.out, (at, len))
            {
                self.out.push(tag::STRING_REF);
                put_varint(self.out, u64::from(index));
                return;
            }
            Some(hash)
        } else {
            if let Some(index) = strings.first.iter().position(|&r| same(self.out, r)) {
                self.out.push(tag::STRING_REF);
                put_varint(self.out, index as u64);
                return;
            }
            None
        };
        self.out.push(tag::STRING);
        put_varint(self.out, bytes.len() as u64);
        let at = self.out.len();
        self.out.extend_from_slice(bytes);
        let index = strings.len;
        strings.len += 1;
        match (hash, &mut strings.by_hash) {
            // A colliding hash keeps its first string; this one is still a table entry.
            (Some(hash), Some(map)) => {
                map.entry(hash).or_insert((index, at, bytes.len()));
            }
            _ if strings.first.len() < LINEAR_TABLE => strings.first.push((at, bytes.len())),
            _ => {
                let mut map = foldhash::HashMap::with_capacity_and_hasher(
                    4 * LINEAR_TABLE,
                    foldhash::fast::RandomState::default(),
                );
                let out = &*self.out;
                for (i, &(at, len)) in strings.first.iter().enumerate() {
                    let hash = strings.hasher.hash_one(&out[at..at + len]);
                    map.entry(hash).or_insert((i as u32, at, len));
                }
                let hash = strings.hasher.hash_one(bytes);
                map.entry(hash).or_insert((index, at, bytes.len()));
                strings.by_hash = Some(map);
            }
        }
    }

    /// Starts an array or object of `len` items (a guess when the serializer gives none),
    /// returning where its count was written.
    fn open(&mut self, tag: u8, len: Option<usize>) -> Container {
        self.out.push(tag);
        let at = self.out.len();
        let expected = len.unwrap_or(0);
        put_varint(self.out, expected as u64);
        Container {
            at,
            expected,
            count: 0,
        }
    }

    /// Ends a container, rewriting its count when the items written differ from it.
    fn close(&mut self, container: &Container) {
        if container.count == container.expected {
            return;
        }
        let mut old = Vec::with_capacity(10);
        put_varint(&mut old, container.expected as u64);
        let mut new = Vec::with_capacity(10);
        put_varint(&mut new, container.count as u64);
        self.out.splice(container.at..container.at + old.len(), new);
    }

    fn uint(&mut self, v: u64) {
        self.out.push(tag::UINT);
        put_varint(self.out, v);
    }

    fn int(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else {
            self.out.push(tag::NEG_INT);
            put_varint(self.out, !v as u64);
        }
    }

    fn float(&mut self, v: f64) {
        if v.is_finite() {
            self.out.push(tag::FLOAT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.push(tag::NULL);
        }
    }
}

struct Container {
    at: usize,
    expected: usize,
    count: usize,
}

/// An array or object being packed.
struct Compound<'a, 'o> {
    packer: &'a mut Packer<'o>,
    container: Container,
    /// For an enum variant with content: the one-entry object around it.
    outer: Option<Container>,
}

impl Compound<'_, '_> {
    fn end(self) -> Result {
        self.packer.close(&self.container);
        if let Some(outer) = &self.outer {
            self.packer.close(outer);
        }
        Ok(())
    }
}

impl<'a, 'o> ser::Serializer for &'a mut Packer<'o> {
    type Ok = ();
    type Error = PackError;
    type SerializeSeq = Compound<'a, 'o>;
    type SerializeTuple = Compound<'a, 'o>;
    type SerializeTupleStruct = Compound<'a, 'o>;
    type SerializeTupleVariant = Compound<'a, 'o>;
    type SerializeMap = Compound<'a, 'o>;
    type SerializeStruct = Compound<'a, 'o>;
    type SerializeStructVariant = Compound<'a, 'o>;

    fn serialize_bool(self, v: bool) -> Result {
        self.out.push(if v { tag::TRUE } else { tag::FALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result {
        self.int(v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result {
        if let Ok(v) = u64::try_from(v) {
            self.uint(v);
        } else if let Ok(v) = i64::try_from(v) {
            self.int(v);
        } else {
            return Err(PackError("number out of range".to_owned()));
        }
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result {
        self.uint(v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result {
        let v = u64::try_from(v).map_err(|_| PackError("number out of range".to_owned()))?;
        self.uint(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result {
        self.float(f64::from(v));
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result {
        self.float(v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result {
        self.string(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.out.push(tag::ARRAY);
        put_varint(self.out, v.len() as u64);
        for byte in v {
            self.uint(u64::from(*byte));
        }
        Ok(())
    }
    fn serialize_none(self) -> Result {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result {
        self.out.push(tag::NULL);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _name: &'static str, _i: u32, variant: &'static str) -> Result {
        self.string(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        value: &T,
    ) -> Result {
        self.out.push(tag::OBJECT);
        put_varint(self.out, 1);
        self.string(variant);
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq> {
        let container = self.open(tag::ARRAY, len);
        Ok(Compound {
            packer: self,
            container,
            outer: None,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        let outer = self.open(tag::OBJECT, Some(1));
        self.string(variant);
        let container = self.open(tag::ARRAY, Some(len));
        Ok(Compound {
            packer: self,
            container,
            outer: Some(Container { count: 1, ..outer }),
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap> {
        let container = self.open(tag::OBJECT, len);
        Ok(Compound {
            packer: self,
            container,
            outer: None,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Self::SerializeStruct> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant> {
        let outer = self.open(tag::OBJECT, Some(1));
        self.string(variant);
        let container = self.open(tag::OBJECT, Some(len));
        Ok(Compound {
            packer: self,
            container,
            outer: Some(Container { count: 1, ..outer }),
        })
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.container.count += 1;
        value.serialize(&mut *self.packer)
    }
    fn end(self) -> Result {
        Compound::end(self)
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result {
        Compound::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result {
        Compound::end(self)
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result {
        Compound::end(self)
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        self.container.count += 1;
        key.serialize(Key(&mut *self.packer))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        value.serialize(&mut *self.packer)
    }
    fn end(self) -> Result {
        Compound::end(self)
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.container.count += 1;
        self.packer.string(key);
        value.serialize(&mut *self.packer)
    }
    fn end(self) -> Result {
        Compound::end(self)
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result {
        Compound::end(self)
    }
}

/// Map keys become strings, as JSON object keys (numbers and booleans by their text).
struct Key<'a, 'o>(&'a mut Packer<'o>);

impl Key<'_, '_> {
    fn text(self, text: &str) -> Result {
        self.0.string(text);
        Ok(())
    }
}

fn key_error() -> PackError {
    PackError("key must be a string".to_owned())
}

impl ser::Serializer for Key<'_, '_> {
    type Ok = ();
    type Error = PackError;
    type SerializeSeq = ser::Impossible<(), PackError>;
    type SerializeTuple = ser::Impossible<(), PackError>;
    type SerializeTupleStruct = ser::Impossible<(), PackError>;
    type SerializeTupleVariant = ser::Impossible<(), PackError>;
    type SerializeMap = ser::Impossible<(), PackError>;
    type SerializeStruct = ser::Impossible<(), PackError>;
    type SerializeStructVariant = ser::Impossible<(), PackError>;

    fn serialize_bool(self, v: bool) -> Result {
        self.text(if v { "true" } else { "false" })
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_i128(self, v: i128) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_u128(self, v: u128) -> Result {
        self.text(&v.to_string())
    }
    fn serialize_f32(self, _v: f32) -> Result {
        Err(key_error())
    }
    fn serialize_f64(self, _v: f64) -> Result {
        Err(key_error())
    }
    fn serialize_char(self, v: char) -> Result {
        self.text(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result {
        self.text(v)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result {
        Err(key_error())
    }
    fn serialize_none(self) -> Result {
        Err(key_error())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result {
        Err(key_error())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        Err(key_error())
    }
    fn serialize_unit_variant(self, _name: &'static str, _i: u32, variant: &'static str) -> Result {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _i: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result {
        Err(key_error())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(key_error())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _i: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(key_error())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap> {
        Err(key_error())
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _i: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(key_error())
    }
}

/// Serializes a value as a struct and packs one of its fields (see [`pack_field`]).
struct Pick<'a, 'o> {
    packer: &'a mut Packer<'o>,
    field: &'static str,
    found: bool,
}

fn not_a_struct() -> PackError {
    PackError("expected a struct with a payload field".to_owned())
}

impl<'b, 'a, 'o> ser::Serializer for &'b mut Pick<'a, 'o> {
    type Ok = ();
    type Error = PackError;
    type SerializeSeq = ser::Impossible<(), PackError>;
    type SerializeTuple = ser::Impossible<(), PackError>;
    type SerializeTupleStruct = ser::Impossible<(), PackError>;
    type SerializeTupleVariant = ser::Impossible<(), PackError>;
    type SerializeMap = ser::Impossible<(), PackError>;
    type SerializeStruct = Self;
    type SerializeStructVariant = ser::Impossible<(), PackError>;

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self> {
        Ok(self)
    }

    fn serialize_bool(self, _v: bool) -> Result {
        Err(not_a_struct())
    }
    fn serialize_i8(self, _v: i8) -> Result {
        Err(not_a_struct())
    }
    fn serialize_i16(self, _v: i16) -> Result {
        Err(not_a_struct())
    }
    fn serialize_i32(self, _v: i32) -> Result {
        Err(not_a_struct())
    }
    fn serialize_u8(self, _v: u8) -> Result {
        Err(not_a_struct())
    }
    fn serialize_u16(self, _v: u16) -> Result {
        Err(not_a_struct())
    }
    fn serialize_u32(self, _v: u32) -> Result {
        Err(not_a_struct())
    }
    fn serialize_f32(self, _v: f32) -> Result {
        Err(not_a_struct())
    }
    fn serialize_char(self, _v: char) -> Result {
        Err(not_a_struct())
    }
    fn serialize_i64(self, _v: i64) -> Result {
        Err(not_a_struct())
    }
    fn serialize_u64(self, _v: u64) -> Result {
        Err(not_a_struct())
    }
    fn serialize_f64(self, _v: f64) -> Result {
        Err(not_a_struct())
    }
    fn serialize_str(self, _v: &str) -> Result {
        Err(not_a_struct())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result {
        Err(not_a_struct())
    }
    fn serialize_none(self) -> Result {
        Err(not_a_struct())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result {
        Err(not_a_struct())
    }
    fn serialize_unit(self) -> Result {
        Err(not_a_struct())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        Err(not_a_struct())
    }
    fn serialize_unit_variant(self, _n: &'static str, _i: u32, _v: &'static str) -> Result {
        Err(not_a_struct())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
        _value: &T,
    ) -> Result {
        Err(not_a_struct())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(not_a_struct())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple> {
        Err(not_a_struct())
    }
    fn serialize_tuple_struct(
        self,
        _n: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(not_a_struct())
    }
    fn serialize_tuple_variant(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(not_a_struct())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap> {
        Err(not_a_struct())
    }
    fn serialize_struct_variant(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(not_a_struct())
    }
}

impl ser::SerializeStruct for &mut Pick<'_, '_> {
    type Ok = ();
    type Error = PackError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        if key == self.field && !self.found {
            self.found = true;
            value.serialize(&mut *self.packer)?;
        }
        Ok(())
    }
    fn end(self) -> Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;
    use serde_json::{Value, json};

    use super::{pack_field, pack_serialize};
    use crate::store::pack::{Reader, unpack_value};

    fn round_trip<T: Serialize>(value: &T) -> Value {
        let mut out = Vec::new();
        pack_serialize(&mut out, value).unwrap();
        let mut reader = Reader::new(&out);
        let back = unpack_value(&mut reader).unwrap();
        reader.finish().unwrap();
        back
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Node {
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        tags: Vec<String>,
        weight: f64,
        #[serde(flatten)]
        extra: BTreeMap<String, Value>,
        kind: Kind,
        shape: Shape,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Plain,
        Wrapped(u8),
        Pair(i32, i32),
        Named { left: i64, right: bool },
    }

    #[derive(Serialize)]
    #[serde(tag = "type", content = "payload", rename_all = "snake_case")]
    enum Shape {
        Dot,
        Line { length: u32 },
    }

    #[test]
    fn decodes_to_what_to_value_builds() {
        let mut extra = BTreeMap::new();
        extra.insert("z".to_owned(), json!({"deep": [1, -2, 3.5, null]}));
        let kinds = [
            Kind::Plain,
            Kind::Wrapped(7),
            Kind::Pair(-1, 1),
            Kind::Named {
                left: i64::MIN,
                right: true,
            },
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let node = Node {
                id: format!("n{i}"),
                note: (i % 2 == 0).then(|| "n0".to_owned()),
                tags: vec!["a".into(), "b".into(), "a".into(), format!("n{i}")],
                weight: if i == 3 { f64::NAN } else { 0.5 },
                extra: extra.clone(),
                kind,
                shape: if i == 1 {
                    Shape::Dot
                } else {
                    Shape::Line { length: 3 }
                },
            };
            assert_eq!(round_trip(&node), serde_json::to_value(&node).unwrap());
        }
    }

    #[test]
    fn many_strings_and_maps_with_number_keys() {
        let strings: Vec<String> = (0..200).map(|i| format!("s{}", i % 70)).collect();
        assert_eq!(
            round_trip(&strings),
            serde_json::to_value(&strings).unwrap()
        );
        let map: BTreeMap<u32, Vec<&str>> = (0..40).map(|i| (i, vec!["x", "y"])).collect();
        assert_eq!(round_trip(&map), serde_json::to_value(&map).unwrap());
        let value = json!({"big": u64::MAX, "neg": -5, "text": "é", "empty": {}, "list": []});
        assert_eq!(round_trip(&value), value);
    }

    #[test]
    fn picks_the_payload_of_an_adjacently_tagged_enum() {
        let pick = |shape: &Shape| {
            let mut out = Vec::new();
            pack_field(&mut out, shape, "payload").unwrap();
            unpack_value(&mut Reader::new(&out)).unwrap()
        };
        assert_eq!(pick(&Shape::Line { length: 4 }), json!({"length": 4}));
        assert_eq!(pick(&Shape::Dot), Value::Null);
    }
}
