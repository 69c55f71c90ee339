//! Reading the request fields Sluice decides on — `model`, `stream`, `stream_options`, the
//! completion caps and `n` — strictly, so that Sluice and the backend read the same request.
//!
//! A field Sluice reads leniently but a backend reads otherwise is a way around a limit
//! (`"max_tokens":"5000"` read as absent while a lenient backend generates 5000 tokens;
//! `stream_options` given twice, Sluice setting the first while the backend keeps the last).
//! So each such field takes exactly the JSON types whose meaning is not in doubt, and
//! anything else is a [`Refusal`] the gateway answers with 400 before any backend sees it:
//!
//! | field | accepted |
//! | --- | --- |
//! | `model` | a string; `null` (absent) |
//! | `stream`, `stream_options.include_usage` | `true`, `false`; `null` (absent) |
//! | `stream_options` | an object; `null` (absent) |
//! | `max_tokens`, `max_completion_tokens`, `max_output_tokens`, `n`, `best_of` | a non-negative integer, also written as an integral number such as `100.0` or `1e3`; `null` (absent) |
//!
//! A key given twice is refused too: RFC 8259 §4 leaves the meaning of duplicate names to
//! each parser, and parsers disagree on which one wins. So is one of these keys spelled in
//! another case (`MODEL`, `Max_Tokens`): some parsers match keys without regard to case.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::lenient::LenientStr;

/// Why a request body was refused: which field, and what was wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The field, as the API names it (`stream_options.include_usage` for the nested one).
    pub param: &'static str,
    /// What was wrong.
    pub reason: Reason,
}

/// What was wrong with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The key appears more than once in its object.
    Duplicate,
    /// The key is spelled in another case (`Max_Tokens`): Go's `encoding/json`, which many
    /// OpenAI-compatible servers use, matches keys without regard to case; others do not.
    OtherCase,
    /// The value is not of an accepted type; the text names what is expected.
    Type(&'static str),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Reason::Duplicate => {
                write!(f, "The request body gives `{}` more than once.", self.param)
            }
            Reason::Type(expected) => write!(f, "`{}` must be {expected}.", self.param),
            Reason::OtherCase => write!(
                f,
                "The request body spells `{0}` in another case; send `{0}`.",
                self.param
            ),
        }
    }
}

/// Where a refusal is recorded while serde unwinds: the parse stops with an error, and the
/// caller tells a refusal from malformed JSON by what was recorded here.
pub(super) type Refused = Cell<Option<Refusal>>;

/// Records `refusal` and returns the error that stops the parse.
pub(super) fn refuse<E: de::Error>(cell: &Refused, refusal: Refusal) -> E {
    if cell.get().is_none() {
        cell.set(Some(refusal));
    }
    E::custom("refused")
}

/// What a strictly read field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `true` / `false`.
    Bool,
    /// A non-negative integer (integral numbers allowed).
    Count,
    /// A string.
    Str,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean",
            Kind::Count => "a non-negative integer",
            Kind::Str => "a string",
        }
    }
}

/// A strictly read value: `Null` for `null`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar<'a> {
    Null,
    Bool(bool),
    Count(u64),
    Str(Cow<'a, str>),
}

impl<'a> Scalar<'a> {
    pub(super) fn as_bool(&self) -> bool {
        matches!(self, Scalar::Bool(true))
    }

    pub(super) fn count(&self) -> Option<u64> {
        match self {
            Scalar::Count(n) => Some(*n),
            _ => None,
        }
    }

    pub(super) fn into_str(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Reads one field strictly as `kind`, recording a [`Refusal`] for any other type.
pub(super) struct Strict<'c> {
    pub(super) kind: Kind,
    pub(super) param: &'static str,
    pub(super) refused: &'c Refused,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Scalar<'de>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Scalar<'de>, D::Error> {
        de.deserialize_any(self)
    }
}

impl Strict<'_> {
    fn wrong<E: de::Error>(&self) -> E {
        refuse(
            self.refused,
            Refusal {
                param: self.param,
                reason: Reason::Type(self.kind.expected()),
            },
        )
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.expected())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar<'de>, E> {
        match self.kind {
            Kind::Bool => Ok(Scalar::Bool(v)),
            _ => Err(self.wrong()),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
        match self.kind {
            Kind::Count => Ok(Scalar::Count(v)),
            _ => Err(self.wrong()),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(self.wrong()),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
        // `100.0` and `1e3` are integers to a JSON number reader that converts (Python's
        // pydantic in lax mode, JavaScript): read them so. 2^64 and above saturate.
        if self.kind == Kind::Count && v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
            return Ok(Scalar::Count(v as u64));
        }
        Err(self.wrong())
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        match self.kind {
            Kind::Str => Ok(Scalar::Str(Cow::Borrowed(v))),
            _ => Err(self.wrong()),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
        match self.kind {
            Kind::Str => Ok(Scalar::Str(Cow::Owned(v.to_owned()))),
            _ => Err(self.wrong()),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Scalar<'de>, A::Error> {
        Err(self.wrong())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Scalar<'de>, A::Error> {
        Err(self.wrong())
    }
}

/// `stream_options`: an object (or `null`) whose `include_usage` is read strictly and given
/// once; its other members are skipped. The value is whether `include_usage` is `true`.
pub(super) struct StreamOptionsSeed<'c> {
    pub(super) refused: &'c Refused,
}

impl<'de> DeserializeSeed<'de> for StreamOptionsSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_any(self)
    }
}

impl StreamOptionsSeed<'_> {
    fn wrong<E: de::Error>(&self) -> E {
        refuse(
            self.refused,
            Refusal {
                param: "stream_options",
                reason: Reason::Type("an object"),
            },
        )
    }
}

impl<'de> Visitor<'de> for StreamOptionsSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stream_options")
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        const PARAM: &str = "stream_options.include_usage";
        let mut include_usage: Option<bool> = None;
        while let Some(key) = map.next_key::<LenientStr<'de>>()? {
            if key.0.as_deref() != Some("include_usage") {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if include_usage.is_some() {
                return Err(refuse(
                    self.refused,
                    Refusal {
                        param: PARAM,
                        reason: Reason::Duplicate,
                    },
                ));
            }
            let value = map.next_value_seed(Strict {
                kind: Kind::Bool,
                param: PARAM,
                refused: self.refused,
            })?;
            include_usage = Some(value.as_bool());
        }
        Ok(include_usage == Some(true))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Err(self.wrong())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Err(self.wrong())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Err(self.wrong())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Err(self.wrong())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Err(self.wrong())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<bool, A::Error> {
        Err(self.wrong())
    }
}
