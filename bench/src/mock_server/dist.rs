//! Durations and delay distributions as the command line writes them (`20ms`,
//! `uniform:10ms..30ms`, `exp:20ms`, `normal:20ms,5ms`), and the small per-thread random
//! generator that samples them and draws the fault shares.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Parses a duration: a number (decimals allowed) followed by `ns`, `us` (or `µs`), `ms`, `s`
/// or `m`; a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}`: a duration needs a unit (ns, us, ms, s, m)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: `{number}` is not a number"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (ns, us, ms, s, m)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{text}`: {e}"))
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest unit that keeps it
/// whole (`1500us`, `20ms`, `2s`).
fn write_duration(f: &mut fmt::Formatter<'_>, d: Duration) -> fmt::Result {
    let ns = d.as_nanos();
    if ns == 0 {
        write!(f, "0ms")
    } else if ns.is_multiple_of(1_000_000_000) {
        write!(f, "{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        write!(f, "{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        write!(f, "{}us", ns / 1_000)
    } else {
        write!(f, "{ns}ns")
    }
}

/// A delay distribution. Samples are never negative. Default: fixed zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Always this delay (`20ms`).
    Fixed(Duration),
    /// Uniform between the two bounds, inclusive (`uniform:10ms..30ms`).
    Uniform(Duration, Duration),
    /// Exponential with this mean (`exp:20ms`).
    Exp(Duration),
    /// Normal with this mean and standard deviation, cut at zero (`normal:20ms,5ms`).
    Normal(Duration, Duration),
}

impl Default for Dist {
    fn default() -> Self {
        Dist::Fixed(Duration::ZERO)
    }
}

impl Dist {
    /// True when every sample is zero (nothing to sleep).
    pub fn is_zero(&self) -> bool {
        matches!(self, Dist::Fixed(d) if d.is_zero())
    }

    /// One sample.
    pub fn sample(&self, rng: &mut Rng) -> Duration {
        let secs = match *self {
            Dist::Fixed(d) => return d,
            Dist::Uniform(lo, hi) => {
                let (lo, hi) = (lo.as_secs_f64(), hi.as_secs_f64());
                lo + (hi - lo) * rng.unit()
            }
            // 1 - unit() is in (0, 1], so the logarithm is finite.
            Dist::Exp(mean) => -mean.as_secs_f64() * (1.0 - rng.unit()).ln(),
            Dist::Normal(mean, sd) => {
                // Box–Muller; one of the pair is enough here.
                let (u1, u2) = (1.0 - rng.unit(), rng.unit());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                mean.as_secs_f64() + sd.as_secs_f64() * z
            }
        };
        Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::ZERO)
    }
}

impl FromStr for Dist {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let Some((kind, args)) = text.split_once(':') else {
            return parse_duration(text).map(Dist::Fixed);
        };
        match kind {
            "fixed" => parse_duration(args).map(Dist::Fixed),
            "uniform" => {
                let (lo, hi) = args
                    .split_once("..")
                    .ok_or_else(|| format!("`{text}`: write uniform:LOW..HIGH"))?;
                let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
                if lo > hi {
                    return Err(format!("`{text}`: the low bound is above the high one"));
                }
                Ok(Dist::Uniform(lo, hi))
            }
            "exp" => parse_duration(args).map(Dist::Exp),
            "normal" => {
                let (mean, sd) = args
                    .split_once(',')
                    .ok_or_else(|| format!("`{text}`: write normal:MEAN,STDDEV"))?;
                Ok(Dist::Normal(parse_duration(mean)?, parse_duration(sd)?))
            }
            _ => Err(format!(
                "`{text}`: unknown distribution `{kind}` (DUR, uniform:LO..HI, exp:MEAN, normal:MEAN,SD)"
            )),
        }
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Dist::Fixed(d) => write_duration(f, d),
            Dist::Uniform(lo, hi) => {
                f.write_str("uniform:")?;
                write_duration(f, lo)?;
                f.write_str("..")?;
                write_duration(f, hi)
            }
            Dist::Exp(mean) => {
                f.write_str("exp:")?;
                write_duration(f, mean)
            }
            Dist::Normal(mean, sd) => {
                f.write_str("normal:")?;
                write_duration(f, mean)?;
                f.write_str(",")?;
                write_duration(f, sd)
            }
        }
    }
}

/// xorshift64* — tiny, fast, and plenty for drawing shares and delays. One per worker
/// thread, so drawing needs no synchronisation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `stream` (the worker index) under `seed`; the same pair always
    /// gives the same sequence, and different streams differ.
    pub fn new(seed: u64, stream: u64) -> Self {
        // splitmix64 of the pair, so nearby seeds and streams start far apart; never zero,
        // which xorshift cannot leave.
        let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        // The top 53 bits, exactly representable.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `share` (0 never, 1 always).
    pub fn chance(&mut self, share: f64) -> bool {
        share > 0.0 && (share >= 1.0 || self.unit() < share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn distributions_parse_and_print_back() {
        for text in [
            "20ms",
            "uniform:10ms..30ms",
            "exp:20ms",
            "normal:20ms,5ms",
            "1500us",
        ] {
            let d: Dist = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert!("uniform:30ms..10ms".parse::<Dist>().is_err());
        assert!("poisson:1ms".parse::<Dist>().is_err());
    }

    #[test]
    fn samples_stay_in_range_and_near_the_mean() {
        let mut rng = Rng::new(7, 0);
        let uniform: Dist = "uniform:10ms..30ms".parse().unwrap();
        let exp: Dist = "exp:20ms".parse().unwrap();
        let normal: Dist = "normal:20ms,5ms".parse().unwrap();
        let n = 20_000;
        let mut sums = [0.0; 3];
        for _ in 0..n {
            let u = uniform.sample(&mut rng);
            assert!(u >= Duration::from_millis(10) && u <= Duration::from_millis(30));
            sums[0] += u.as_secs_f64();
            sums[1] += exp.sample(&mut rng).as_secs_f64();
            sums[2] += normal.sample(&mut rng).as_secs_f64();
        }
        for sum in sums {
            let mean = sum / f64::from(n);
            assert!((mean - 0.020).abs() < 0.001, "mean {mean}");
        }
    }

    #[test]
    fn shares_are_deterministic_and_about_right() {
        let draw = |seed| {
            let mut rng = Rng::new(seed, 1);
            (0..10_000).filter(|_| rng.chance(0.25)).count()
        };
        assert_eq!(draw(42), draw(42));
        assert!((2_300..2_700).contains(&draw(42)));
        let mut rng = Rng::new(0, 0);
        assert!((0..100).all(|_| rng.chance(1.0)));
        assert!((0..100).all(|_| !rng.chance(0.0)));
    }
}
