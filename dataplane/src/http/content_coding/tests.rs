use std::io::Write;

use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::{Compression, GzBuilder};

use super::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn br(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn encode(coding: Coding, data: &[u8]) -> Vec<u8> {
    match coding {
        Coding::Gzip => gzip(data),
        Coding::Deflate => zlib(data),
        Coding::Br => br(data),
    }
}

/// Decodes `pieces` in order; every output piece is at most [`PIECE`] bytes.
fn decode_all<'a>(
    applied: &[Coding],
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, DecodeError> {
    let mut dec = ContentDecoder::new(applied);
    let mut out = Vec::new();
    for piece in pieces {
        let mut pos = 0;
        loop {
            let (n, got) = dec.decode(&piece[pos..])?;
            assert!(got.len() <= PIECE);
            pos += n;
            if got.is_empty() {
                assert_eq!(pos, piece.len(), "an empty piece means all input was taken");
                break;
            }
            out.extend_from_slice(got);
        }
    }
    dec.finish()?;
    Ok(out)
}

fn text(n: usize) -> Vec<u8> {
    const WORDS: &[u8] = b"{\"usage\":{\"prompt_tokens\":31}} lorem ipsum ";
    (0..n)
        .map(|i| WORDS[i % WORDS.len()] ^ ((i / 997) % 3) as u8)
        .collect()
}

#[test]
fn parse_reads_every_field_in_order() {
    use Coding::*;
    let cases: [(&[&[u8]], Codings); 9] = [
        (&[], Codings::Identity),
        (&[b""], Codings::Identity),
        (&[b"identity"], Codings::Identity),
        (&[b"GZIP"], Codings::Decodable(vec![Gzip])),
        (&[b"x-gzip"], Codings::Decodable(vec![Gzip])),
        (&[b"gzip, br"], Codings::Decodable(vec![Gzip, Br])),
        (
            &[b"deflate", b" identity ,br"],
            Codings::Decodable(vec![Deflate, Br]),
        ),
        (&[b"gzip", b"zstd"], Codings::Unsupported("zstd".into())),
        (
            &[b"gzip,gzip,gzip,gzip,gzip"],
            Codings::Unsupported("more than 4 codings".into()),
        ),
    ];
    for (values, want) in cases {
        assert_eq!(Codings::parse(values.iter().copied()), want, "{values:?}");
    }
    assert_eq!(
        Codings::parse([&b"compress"[..]]),
        Codings::Unsupported("compress".into())
    );
}

#[test]
fn each_coding_at_every_split() {
    let body = text(3000);
    for coding in [Coding::Gzip, Coding::Deflate, Coding::Br] {
        let coded = encode(coding, &body);
        assert_eq!(
            decode_all(&[coding], [&coded[..]]).unwrap(),
            body,
            "{coding}"
        );
        for at in 0..=coded.len() {
            assert_eq!(
                decode_all(&[coding], [&coded[..at], &coded[at..]]).unwrap(),
                body,
                "{coding} split at {at}"
            );
        }
        assert_eq!(
            decode_all(&[coding], coded.chunks(1)).unwrap(),
            body,
            "{coding} bytewise"
        );
    }
}

#[test]
fn raw_deflate_is_told_from_zlib() {
    let body = text(5000);
    let coded = raw(&body);
    assert!(!Deflate::is_zlib(coded[0], coded[1]));
    assert_eq!(decode_all(&[Coding::Deflate], [&coded[..]]).unwrap(), body);
    assert_eq!(
        decode_all(&[Coding::Deflate], coded.chunks(1)).unwrap(),
        body
    );
    let empty = raw(b"");
    assert_eq!(decode_all(&[Coding::Deflate], [&empty[..]]).unwrap(), b"");
    for level in 0..=9 {
        let z = {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::new(level));
            e.write_all(&body).unwrap();
            e.finish().unwrap()
        };
        assert!(Deflate::is_zlib(z[0], z[1]), "level {level}");
        let r = {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::new(level));
            e.write_all(&body).unwrap();
            e.finish().unwrap()
        };
        assert!(!Deflate::is_zlib(r[0], r[1]), "level {level}");
        assert_eq!(decode_all(&[Coding::Deflate], [&r[..]]).unwrap(), body);
    }
}

#[test]
fn stacked_codings_are_undone_last_first() {
    let body = text(70_000);
    for applied in [
        vec![Coding::Gzip, Coding::Br],
        vec![Coding::Br, Coding::Gzip],
        vec![Coding::Deflate, Coding::Gzip, Coding::Br],
    ] {
        let mut coded = body.clone();
        for &c in &applied {
            coded = encode(c, &coded);
        }
        assert_eq!(
            decode_all(&applied, [&coded[..]]).unwrap(),
            body,
            "{applied:?}"
        );
        assert_eq!(
            decode_all(&applied, coded.chunks(7)).unwrap(),
            body,
            "{applied:?}"
        );
        assert_eq!(
            decode_all(&applied, coded.chunks(1)).unwrap(),
            body,
            "{applied:?}"
        );
    }
}

#[test]
fn gzip_members_and_header_fields() {
    let (a, b) = (text(100), text(200));
    let mut two = gzip(&a);
    two.extend_from_slice(&gzip(&b));
    let both: Vec<u8> = a.iter().chain(&b).copied().collect();
    assert_eq!(decode_all(&[Coding::Gzip], [&two[..]]).unwrap(), both);
    assert_eq!(decode_all(&[Coding::Gzip], two.chunks(1)).unwrap(), both);

    let mut named = GzBuilder::new()
        .filename("answer.json")
        .comment("a comment")
        .extra(vec![7; 300])
        .write(Vec::new(), Compression::default());
    named.write_all(&a).unwrap();
    let named = named.finish().unwrap();
    assert_eq!(named[3], FEXTRA | FNAME | FCOMMENT);
    assert_eq!(decode_all(&[Coding::Gzip], named.chunks(1)).unwrap(), a);

    // FHCRC: two more bytes after the header.
    let plain = gzip(&a);
    let mut hcrc = plain[..10].to_vec();
    hcrc[3] |= FHCRC;
    hcrc.extend_from_slice(&[0xab, 0xcd]);
    hcrc.extend_from_slice(&plain[10..]);
    assert_eq!(decode_all(&[Coding::Gzip], hcrc.chunks(3)).unwrap(), a);
}

#[test]
fn corrupt_truncated_and_trailing_bodies_are_errors() {
    let body = text(2000);
    for coding in [Coding::Gzip, Coding::Deflate, Coding::Br] {
        let coded = encode(coding, &body);
        // Cut anywhere before the end: never taken as whole (an empty body is empty).
        assert_eq!(decode_all(&[coding], [&coded[..0]]), Ok(Vec::new()));
        for at in 1..coded.len() {
            let got = decode_all(&[coding], [&coded[..at]]);
            assert!(got.is_err(), "{coding} cut at {at}");
        }
        assert_eq!(
            decode_all(&[coding], [&coded[..coded.len() - 1]]),
            Err(DecodeError::Truncated(coding))
        );
        let mut trailing = coded.clone();
        trailing.push(b'x');
        assert!(
            decode_all(&[coding], [&trailing[..]]).is_err(),
            "{coding} trailing"
        );
    }
    // Not gzip at all; a bad CRC; a bad length; reserved flags.
    let coded = gzip(&body);
    assert_eq!(
        decode_all(&[Coding::Gzip], [&b"{\"usage\":1}"[..]]),
        Err(DecodeError::Corrupt(Coding::Gzip))
    );
    for (at, flip) in [(coded.len() - 8, 1), (coded.len() - 2, 1), (3, 0x20)] {
        let mut bad = coded.clone();
        bad[at] ^= flip;
        assert_eq!(
            decode_all(&[Coding::Gzip], [&bad[..]]),
            Err(DecodeError::Corrupt(Coding::Gzip)),
            "flip at {at}"
        );
    }
    // A zlib stream with a bad Adler-32.
    let mut z = zlib(&body);
    let n = z.len();
    z[n - 1] ^= 1;
    assert_eq!(
        decode_all(&[Coding::Deflate], [&z[..]]),
        Err(DecodeError::Corrupt(Coding::Deflate))
    );
    assert!(decode_all(&[Coding::Br], [&b"not brotli at all, really"[..]]).is_err());
}

#[test]
fn a_bomb_comes_out_in_bounded_pieces() {
    // 64 MiB of zeros: a few tens of KiB coded. Every decode call gives at most PIECE bytes.
    let zeros = vec![0u8; 64 << 20];
    for coding in [Coding::Gzip, Coding::Br] {
        let coded = encode(coding, &zeros);
        assert!(coded.len() < 200 << 10, "{coding}: {}", coded.len());
        let mut dec = ContentDecoder::new(&[coding]);
        let (mut pos, mut total, mut calls) = (0, 0usize, 0);
        loop {
            let (n, piece) = dec.decode(&coded[pos..]).unwrap();
            assert!(piece.len() <= PIECE);
            assert!(piece.iter().all(|&b| b == 0));
            pos += n;
            total += piece.len();
            calls += 1;
            if piece.is_empty() {
                break;
            }
        }
        dec.finish().unwrap();
        assert_eq!(total, zeros.len(), "{coding}");
        assert!(calls > zeros.len() / PIECE, "{coding}: {calls} calls");
    }
}
