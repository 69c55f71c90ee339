//! JSON trees read under a node budget, so that rendering one audit record costs memory and
//! time in proportion to what the record keeps, not to what a client or backend sent.
//!
//! A `serde_json::Value` takes 32 bytes or more per node, a map entry much more: a 32 MiB
//! body of `[0,0,0,…]` would build half a gigabyte of tree for a record that keeps a bounded
//! prefix of it anyway. [`Tree`] reads like `Value` until [`MAX_NODES`] nodes are built in
//! one [`read`]; past that, the rest of every array and object is skipped unbuilt (still
//! parsed, so the body must still be valid JSON) and the read reports itself cut.

use std::cell::Cell;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The most nodes (values, plus one per object member) one [`read`] builds: 262,144, some
/// 10 MiB of tree with short strings — thousands of chat messages with their content parts,
/// or the first quarter million token ids of an embeddings input.
pub const MAX_NODES: usize = 1 << 18;

thread_local! {
    /// Nodes the current [`read`] may still build, and whether it skipped any.
    static BUDGET: Cell<(usize, bool)> = const { Cell::new((usize::MAX, false)) };
}

/// Runs `read_json` (a `serde_json` read whose trees are [`Tree`]s) under a budget of
/// [`MAX_NODES`]; returns its result and whether anything was skipped (`true`: cut).
pub fn read<R>(read_json: impl FnOnce() -> R) -> (R, bool) {
    let outer = BUDGET.replace((MAX_NODES, false));
    let result = read_json();
    let (_, cut) = BUDGET.replace(outer);
    (result, cut)
}

/// Takes one node from the budget; `false` (and the read marked cut) when none is left.
fn take() -> bool {
    BUDGET.with(|budget| {
        let (left, cut) = budget.get();
        match left.checked_sub(1) {
            Some(left) => {
                budget.set((left, cut));
                true
            }
            None => {
                budget.set((0, true));
                false
            }
        }
    })
}

/// A JSON value read as `serde_json::Value` is, within the current [`read`]'s budget.
/// Outside any [`read`] the budget is unlimited.
#[derive(Debug, Default, PartialEq)]
pub struct Tree(pub Value);

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor).map(Tree)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Tree::deserialize(deserializer).map(|tree| tree.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while take() {
            match seq.next_element::<Tree>()? {
                Some(Tree(item)) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while take() {
            match map.next_key::<String>()? {
                Some(key) => {
                    let Tree(value) = map.next_value()?;
                    members.insert(key, value);
                }
                None => return Ok(Value::Object(members)),
            }
        }
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Object(members))
    }
}

/// A JSON array of `T`, each item taking one node of the current [`read`]'s budget; items
/// past the budget are skipped unbuilt and the read marked cut.
#[derive(Debug)]
pub struct Items<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Items<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ItemsVisitor<T> {
            type Value = Items<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items<T>, A::Error> {
                let mut items = Vec::new();
                while take() {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => return Ok(Items(items)),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Items(items))
            }
        }
        deserializer.deserialize_seq(ItemsVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_within_the_budget_reads_as_a_value_does() {
        let text =
            r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":"\u00e9","d":18446744073709551615}"#;
        let (tree, cut) = read(|| serde_json::from_str::<Tree>(text));
        assert_eq!(
            tree.unwrap().0,
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert!(!cut);
    }

    #[test]
    fn past_the_budget_arrays_and_objects_keep_their_first_members_and_the_read_is_cut() {
        let n = MAX_NODES * 4;
        let mut text = String::from(r#"{"messages":["#);
        for i in 0..n {
            if i > 0 {
                text.push(',');
            }
            text.push('0');
        }
        text.push_str(r#"],"later":{"k":1}}"#);
        let (tree, cut) = read(|| serde_json::from_str::<Tree>(&text));
        let Value::Object(top) = tree.unwrap().0 else {
            panic!("an object")
        };
        let Some(Value::Array(items)) = top.get("messages") else {
            panic!("messages kept")
        };
        // The top-level member and the array's items share the budget.
        assert_eq!(items.len(), MAX_NODES - 1);
        assert!(!top.contains_key("later"));
        assert!(cut);
        // The skipped part is still read: invalid JSON past the budget is an error.
        text.insert_str(text.len() - 1, ",}");
        assert!(read(|| serde_json::from_str::<Tree>(&text)).0.is_err());
        // The budget is per read.
        let (small, cut) = read(|| serde_json::from_str::<Tree>("[1,2]"));
        assert_eq!(small.unwrap().0, serde_json::json!([1, 2]));
        assert!(!cut);
    }
}
