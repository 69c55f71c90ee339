//! JSON member names as lenient decoders match them to fields. Go's `encoding/json` (behind
//! many OpenAI-compatible servers) matches a member to a field case-insensitively under
//! Unicode simple case folding (`bytes.EqualFold`), and .NET's case-insensitive option
//! compares ordinal upper cases: besides ASCII case, `ſ` (U+017F) reads as `s`, `K` (U+212A,
//! Kelvin) as `k` and `ı` (U+0131) as `i`. A body whose member folds to a field Sluice reads
//! (`"Temperature"`, `"meſſages"`) may mean that field to the backend while Sluice takes it
//! for another member, so callers treat such a name as the field's alias: they refuse the
//! body, or do not cache it.

/// Whether `name` (a decoded member name, UTF-8) matches `field` (ASCII, lower case) under
/// any of those foldings — exactly equal included. Invalid UTF-8 matches nothing.
pub fn folds_to(name: &[u8], field: &[u8]) -> bool {
    // Each character that folds to one ASCII byte takes one to three bytes.
    if name.len() < field.len() || name.len() > 3 * field.len() {
        return false;
    }
    if name.is_ascii() {
        return name.eq_ignore_ascii_case(field);
    }
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let mut chars = name.chars();
    field
        .iter()
        .all(|f| chars.next().map(fold_char) == Some(char::from(f.to_ascii_lowercase())))
        && chars.next().is_none()
}

/// Whether two of `names` (decoded member names of one object) are one name to a decoder
/// that folds case as Go's `encoding/json` does (Unicode simple case folding): `"User"`
/// and `"user"`, `"ſeed"` and `"SEED"`. Names that are all lower-case ASCII are checked
/// without allocating.
pub fn any_fold_together<'n>(names: impl Iterator<Item = &'n str> + Clone) -> bool {
    if names
        .clone()
        .all(|n| n.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()))
    {
        // Lower-case ASCII names fold only to themselves.
        return false;
    }
    let mut folded: Vec<String> = names.map(|n| n.chars().map(fold_char).collect()).collect();
    folded.sort_unstable();
    folded.windows(2).any(|w| w[0] == w[1])
}

/// The one character that stands for `c`'s case-folding orbit: the lower case of its upper
/// case (`ſ` → `S` → `s`, `K` (Kelvin) → `k`, `ς` → `Σ` → `σ`), or `c` where a mapping
/// gives several characters.
fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    one(c.to_uppercase())
        .and_then(|u| one(u.to_lowercase()))
        .unwrap_or(c)
}

/// The one character a case mapping gives (`None` when it gives several, as `ß` → `SS`).
fn one(mut mapped: impl Iterator<Item = char>) -> Option<char> {
    let first = mapped.next()?;
    mapped.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_case_and_the_unicode_letters_that_fold_into_ascii_match() {
        for (name, field) in [
            ("seed", "seed"),
            ("Seed", "seed"),
            ("SEED", "seed"),
            ("\u{17f}eed", "seed"),
            ("\u{17f}EED", "seed"),
            ("\u{17f}tream", "stream"),
            ("max_to\u{212a}ens", "max_tokens"),
            ("\u{131}nput", "input"),
            ("MESSAGES", "messages"),
        ] {
            assert!(
                folds_to(name.as_bytes(), field.as_bytes()),
                "{name} → {field}"
            );
        }
    }

    #[test]
    fn names_one_object_holds_in_two_cases_are_found() {
        for names in [
            &["user", "User"][..],
            &["messages", "model", "MESSAGES"],
            &["seed", "\u{17f}EED"],
            &["ma\u{212a}e", "make"],
            &["\u{3c2}x", "\u{3a3}X"], // final sigma and capital sigma
        ] {
            assert!(any_fold_together(names.iter().copied()), "{names:?}");
        }
        for names in [
            &["user", "users"][..],
            &["messages", "model"],
            &["Seed", "see"],
            &["s\u{435}\u{435}d", "seed"],
        ] {
            assert!(!any_fold_together(names.iter().copied()), "{names:?}");
        }
    }

    #[test]
    fn other_names_do_not_match() {
        for (name, field) in [
            ("seeds", "seed"),
            ("see", "seed"),
            ("\u{df}eed", "seed"),
            ("s\u{435}\u{435}d", "seed"), // Cyrillic е
            ("", "seed"),
            ("stream_options", "stream"),
            ("max-tokens", "max_tokens"),
        ] {
            assert!(
                !folds_to(name.as_bytes(), field.as_bytes()),
                "{name} ≠ {field}"
            );
        }
        assert!(!folds_to(b"\xffseed", b"seed"));
    }
}
