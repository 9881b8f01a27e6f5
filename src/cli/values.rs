//! Value parsers for numeric flags: each flag is checked by value when the command line
//! is parsed, and a bad value is refused with the flag's name and the allowed range
//! (clap prints `invalid value 'V' for '--flag <X>': <the reason>`).

use clap::builder::{PossibleValuesParser, RangedU64ValueParser, TypedValueParser};

/// `--memory`: efficient or naive, listed in the help.
pub fn memory_mode() -> impl TypedValueParser<Value = crate::nn::MemoryMode> {
    PossibleValuesParser::new(["efficient", "naive"]).map(|s| match s.as_str() {
        "naive" => crate::nn::MemoryMode::Naive,
        _ => crate::nn::MemoryMode::Efficient,
    })
}

/// A count of at least 1 (epochs, steps, `--top`, …). Written out rather than a
/// `RangedU64ValueParser` with `1..`, whose message quoted the range as
/// `1..18446744073709551615`.
pub fn at_least_one() -> impl TypedValueParser<Value = usize> {
    clap::builder::StringValueParser::new().try_map(|s: String| match s.trim().parse::<usize>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("'{s}' is not a whole number of at least 1")),
    })
}

/// A count in `1..=max`.
pub fn one_to(max: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..=max)
}

/// Images per batch: 1 to 65,536 (what a training configuration allows).
pub fn batch_size() -> RangedU64ValueParser<usize> {
    one_to(crate::nn::limits::MAX_BATCH as u64)
}

fn number(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("'{s}' is not a number"))
}

/// `v` if it meets `ok`, else `rule` as the error.
fn meets(v: f64, ok: impl Fn(f64) -> bool, rule: &str) -> Result<f64, String> {
    if ok(v) {
        Ok(v)
    } else {
        Err(rule.into())
    }
}

/// `s` as a number that meets `ok`.
fn checked(s: &str, ok: impl Fn(f64) -> bool, rule: &str) -> Result<f64, String> {
    meets(number(s)?, ok, rule)
}

/// [`checked`] for an `f32` flag: the rule sees the value as stored (1e39 is infinite).
fn checked_f32(s: &str, ok: impl Fn(f64) -> bool, rule: &str) -> Result<f32, String> {
    let v = number(s)? as f32;
    meets(v as f64, ok, rule).map(|v| v as f32)
}

/// A learning rate: finite and greater than 0.
pub fn learning_rate(s: &str) -> Result<f32, String> {
    checked_f32(
        s,
        |v| v.is_finite() && v > 0.0,
        "must be a finite number greater than 0",
    )
}

/// Momentum: in [0, 1).
pub fn momentum(s: &str) -> Result<f32, String> {
    fraction_f32(s)
}

/// Weight decay: finite and at least 0.
pub fn weight_decay(s: &str) -> Result<f32, String> {
    checked_f32(
        s,
        |v| v.is_finite() && v >= 0.0,
        "must be a finite number, at least 0",
    )
}

/// A fraction in [0, 1) (dropout rate, momentum).
pub fn fraction_f32(s: &str) -> Result<f32, String> {
    checked_f32(s, |v| (0.0..1.0).contains(&v), "must be in [0, 1)")
}

/// A fraction in [0, 1) (the validation split).
pub fn fraction(s: &str) -> Result<f64, String> {
    checked(s, |v| (0.0..1.0).contains(&v), "must be in [0, 1)")
}

/// Compression θ: in (0, 1].
pub fn compression(s: &str) -> Result<f64, String> {
    checked(s, |v| v > 0.0 && v <= 1.0, "must be in (0, 1]")
}

/// Input channels: 1 (grey) or 3 (RGB).
pub fn in_channels(s: &str) -> Result<usize, String> {
    match s.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err("must be 1 (grey) or 3 (RGB)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_flags_are_checked_by_value() {
        assert_eq!(learning_rate("0.1"), Ok(0.1));
        for bad in ["-0.1", "0", "nan", "inf", "1e39", "x"] {
            assert!(learning_rate(bad).is_err(), "{bad}");
        }
        assert!(momentum("0.9").is_ok() && momentum("2").is_err() && momentum("-0.1").is_err());
        assert!(weight_decay("0").is_ok() && weight_decay("-1").is_err());
        assert!(weight_decay("nan").is_err());
        assert!(compression("1").is_ok() && compression("0").is_err());
        assert!(compression("1e308").is_err());
        assert!(fraction_f32("0.2").is_ok() && fraction_f32("1").is_err());
        assert!(fraction("0.1").is_ok() && fraction("nan").is_err());
        assert!(in_channels("3").is_ok() && in_channels("2").is_err());
    }

    /// A count's error says what it must be, in words, not as a range up to u64::MAX.
    #[test]
    fn counts_say_at_least_one() {
        let cmd =
            clap::Command::new("t").arg(clap::Arg::new("n").long("n").value_parser(at_least_one()));
        let n = |v: &str| cmd.clone().try_get_matches_from(["t", "--n", v]);
        assert_eq!(n("3").unwrap().get_one::<usize>("n"), Some(&3));
        for bad in ["0", "x", "1.5", "99999999999999999999999"] {
            let e = n(bad).unwrap_err().to_string();
            assert!(
                e.contains("is not a whole number of at least 1"),
                "{bad}: {e}"
            );
            assert!(!e.contains("18446744073709551615"), "{e}");
        }
    }
}
