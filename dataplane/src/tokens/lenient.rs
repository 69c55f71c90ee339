//! Reading JSON leniently: a field of an unexpected type reads as absent (and is skipped
//! whole) instead of failing the parse of the body around it. Admission and accounting want
//! whatever facts a body has; refusing malformed requests is the backend's business.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A string, borrowed when it has no escapes; any other value reads as `None`.
pub(super) struct LenientStr<'a>(pub(super) Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for LenientStr<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(LenientVisitor::<LenientStr<'de>>::new())
    }
}

/// A scalar of the expected type, or `None` for any other value (which is skipped whole).
pub(super) struct Lenient<T>(pub(super) Option<T>);

impl<'de> Deserialize<'de> for Lenient<bool> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(LenientVisitor::<Lenient<bool>>::new())
    }
}

impl<'de> Deserialize<'de> for Lenient<u64> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(LenientVisitor::<Lenient<u64>>::new())
    }
}

/// What a lenient read keeps from each kind of JSON scalar.
trait LenientTarget<'de>: Sized {
    fn none() -> Self;
    fn from_str(_: Cow<'de, str>) -> Self {
        Self::none()
    }
    fn from_u64(_: u64) -> Self {
        Self::none()
    }
    fn from_bool(_: bool) -> Self {
        Self::none()
    }
}

impl<'de> LenientTarget<'de> for LenientStr<'de> {
    fn none() -> Self {
        LenientStr(None)
    }
    fn from_str(s: Cow<'de, str>) -> Self {
        LenientStr(Some(s))
    }
}

impl LenientTarget<'_> for Lenient<u64> {
    fn none() -> Self {
        Lenient(None)
    }
    fn from_u64(v: u64) -> Self {
        Lenient(Some(v))
    }
}

impl LenientTarget<'_> for Lenient<bool> {
    fn none() -> Self {
        Lenient(None)
    }
    fn from_bool(v: bool) -> Self {
        Lenient(Some(v))
    }
}

struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<T> LenientVisitor<T> {
    fn new() -> Self {
        LenientVisitor(std::marker::PhantomData)
    }
}

impl<'de, T: LenientTarget<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        Ok(T::from_str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::from_str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok(T::from_str(Cow::Owned(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::from_u64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Ok(u64::try_from(v).map_or_else(|_| T::none(), T::from_u64))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        Ok(T::none())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        Ok(T::from_bool(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::none())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(T::none())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(T::none())
    }
}

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

/// Skips a map's remaining entries.
pub(super) fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Skips a sequence's remaining elements, returning how many there were.
pub(super) fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<u64, A::Error> {
    let mut n = 0u64;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        n += 1;
    }
    Ok(n)
}
