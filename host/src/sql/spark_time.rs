//! Spark's date-time functions and `regexp_replace`/`regexp_extract`, registered under Spark's
//! names so that they replace DataFusion's built-ins of the same names (`date_format`,
//! `to_timestamp`, `to_date`, `from_unixtime`, `date_trunc`, `trunc`, `date_part` and so SQL's
//! `EXTRACT`, `regexp_replace`) and add those DataFusion lacks.
//!
//! The answers are Spark 4's with the session time zone `UTC` and ANSI mode on, Spark's default
//! (checked against `tests/fixtures/spark/time_functions.json`):
//!
//! - **Time zone.** Every instant is read in UTC: a timestamp of any unit and any zone stands for
//!   the instant it stores and its fields are taken in UTC, a date is its midnight UTC, and new
//!   timestamps are `Timestamp(Microsecond, "UTC")`, Sluice's `TIMESTAMP`. A zone written in a
//!   string (`Z`, `+01:00`, `UTC+1`, `GMT`, or a pattern's `X`/`Z`/`O` offset) is honoured.
//! - **Patterns.** `date_format`, `from_unixtime`, `to_timestamp`, `to_date` and `unix_timestamp`
//!   take Spark's datetime patterns (`yyyy-MM-dd HH:mm:ss.SSS`, `EEE`, `MMMM`, `hh:mm a`,
//!   `'quoted'`, `''`, `[optional]`, ...) with Spark's count rules, for formatting and parsing.
//!   What Spark refuses is refused with an error naming the letter: the week-based `Y w W u e c`,
//!   `A B n N p`, five `G M L E Q q` or seven `y`, and `E F q Q` when parsing.
//! - **Strings.** Without a pattern a string is read as Spark's `CAST` reads it (`2024-01-15`,
//!   `2024-01-15 10:30:00.123456`, a `T` separator, a trailing zone). A string that Spark cannot
//!   read is an error, as with ANSI on; `try_to_timestamp` and `try_to_date` give NULL instead.
//! - **Refusals.** Where Spark's answer cannot be reproduced the function fails with an error
//!   saying why, never a different answer: zone region names (`Europe/Paris`, `PST`), a time
//!   without a date (Spark takes today's), the `v` and `g` pattern letters, a time field of a
//!   DATE in `date_part`, and in the `regexp_*` functions the Java regex constructs the `regex`
//!   crate lacks or reads differently (look-around, back-references, possessive quantifiers,
//!   `\v`, `\Z`, ...; and `$`, `.`, `(?i)` or `\b` on the rare strings where the two engines
//!   disagree: see [`Guard`]).
//!
//! Functions: `date_format`, `to_timestamp`, `try_to_timestamp`, `to_date`, `try_to_date`,
//! `unix_timestamp` (alias `to_unix_timestamp`; the no-argument form is refused),
//! `from_unixtime`, `year`, `quarter`, `month`, `dayofmonth` (alias `day`), `dayofweek`
//! (1 = Sunday), `weekday` (0 = Monday), `dayofyear`, `weekofyear` (ISO week), `hour`, `minute`,
//! `second`, `date_add` (alias `dateadd`), `date_sub`, `datediff` (alias `date_diff`),
//! `add_months` (clamped to the month's end), `last_day`, `date_trunc`, `trunc` (on a number it is
//! DataFusion's numeric `trunc`), `date_part` (alias `datepart`, and `EXTRACT(field FROM x)`:
//! Spark's fields and aliases, `SECOND` as `DECIMAL(8,6)`; a time field of a DATE is refused),
//! `regexp_replace` (Java semantics: every match replaced) and `regexp_extract`,
//! `regexp_extract_all` (a group of the first match, of every match), `unix_seconds`,
//! `unix_millis`, `unix_micros` (floored), `unix_date`, `timestamp_seconds`, `timestamp_millis`,
//! `timestamp_micros` (integers only: Spark reads `1.5` as a DECIMAL, Sluice as a DOUBLE),
//! `date_from_unix_date`, `months_between`, `next_day`, `timestampadd` and `timestampdiff` (the
//! unit a constant string: Spark's bare keyword, `timestampadd(MONTH, 1, ts)`, is quoted in the
//! SQL text before parsing), `rlike` (aliases `regexp_like`, `regexp`; Spark's `RLIKE` operator:
//! Java's `find`, so a match anywhere).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, FieldRef, TimeUnit};
use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveDateTime, Timelike};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, DataFusionError, Result as DfResult, ScalarValue, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::registry::FunctionRegistry;
use datafusion::logical_expr::type_coercion::functions::fields_with_udf;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use regex::Regex;

const US_PER_SECOND: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SECOND;
const UTC: &str = "UTC";
const DEFAULT_FORMAT: &str = "yyyy-MM-dd HH:mm:ss";
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const QUARTERS: [&str; 4] = ["1st quarter", "2nd quarter", "3rd quarter", "4th quarter"];

/// Registers the functions of this module on `ctx`, replacing DataFusion's of the same names.
pub(super) fn register(ctx: &SessionContext) {
    let date_part = time_udf(Fun::DatePart, DATE_PART, &["datepart"]);
    // Only adds the rewrite to the analyzer: cannot fail.
    let _ = ctx.state_ref().write().register_function_rewrite(Arc::new(SparkExtract(Arc::new(date_part.clone()))));
    let regexp_extract = |name: &'static str, all: bool| RegexpExtractUdf {
        name,
        all,
        signature: Signature::user_defined(Volatility::Immutable),
        regexes: RegexCache::default(),
    };
    for udf in [
        time_udf(Fun::DateFormat, "date_format", &[]),
        time_udf(Fun::ToTimestamp { try_: false }, "to_timestamp", &[]),
        time_udf(Fun::ToTimestamp { try_: true }, "try_to_timestamp", &[]),
        time_udf(Fun::ToDate { try_: false }, "to_date", &[]),
        time_udf(Fun::ToDate { try_: true }, "try_to_date", &[]),
        time_udf(Fun::UnixTimestamp, "unix_timestamp", &["to_unix_timestamp"]),
        time_udf(Fun::FromUnixtime, "from_unixtime", &[]),
        time_udf(Fun::Extract(Part::Year), "year", &[]),
        time_udf(Fun::Extract(Part::Quarter), "quarter", &[]),
        time_udf(Fun::Extract(Part::Month), "month", &[]),
        time_udf(Fun::Extract(Part::DayOfMonth), "dayofmonth", &["day"]),
        time_udf(Fun::Extract(Part::DayOfWeek), "dayofweek", &[]),
        time_udf(Fun::Extract(Part::Weekday), "weekday", &[]),
        time_udf(Fun::Extract(Part::DayOfYear), "dayofyear", &[]),
        time_udf(Fun::Extract(Part::WeekOfYear), "weekofyear", &[]),
        time_udf(Fun::Extract(Part::Hour), "hour", &[]),
        time_udf(Fun::Extract(Part::Minute), "minute", &[]),
        time_udf(Fun::Extract(Part::Second), "second", &[]),
        time_udf(Fun::DateAdd, "date_add", &["dateadd"]),
        time_udf(Fun::DateSub, "date_sub", &[]),
        time_udf(Fun::DateDiff, "datediff", &["date_diff"]),
        time_udf(Fun::AddMonths, "add_months", &[]),
        time_udf(Fun::LastDay, "last_day", &[]),
        time_udf(Fun::DateTrunc, "date_trunc", &[]),
        time_udf(Fun::Trunc, "trunc", &[]),
        time_udf(Fun::UnixUnits(US_PER_SECOND), "unix_seconds", &[]),
        time_udf(Fun::UnixUnits(1_000), "unix_millis", &[]),
        time_udf(Fun::UnixUnits(1), "unix_micros", &[]),
        time_udf(Fun::UnixDate, "unix_date", &[]),
        time_udf(Fun::FromUnits(US_PER_SECOND), "timestamp_seconds", &[]),
        time_udf(Fun::FromUnits(1_000), "timestamp_millis", &[]),
        time_udf(Fun::FromUnits(1), "timestamp_micros", &[]),
        time_udf(Fun::DateFromUnixDate, "date_from_unix_date", &[]),
        time_udf(Fun::MonthsBetween, "months_between", &[]),
        time_udf(Fun::NextDay, "next_day", &[]),
        time_udf(Fun::TimestampAdd, TIMESTAMPADD, &[]),
        time_udf(Fun::TimestampDiff, TIMESTAMPDIFF, &[]),
        date_part,
        ScalarUDF::from(RegexpReplaceUdf {
            signature: Signature::user_defined(Volatility::Immutable),
            regexes: RegexCache::default(),
        }),
        ScalarUDF::from(regexp_extract("regexp_extract", false)),
        ScalarUDF::from(regexp_extract("regexp_extract_all", true)),
        ScalarUDF::from(RlikeUdf {
            aliases: vec!["regexp_like".into(), "regexp".into()],
            signature: Signature::user_defined(Volatility::Immutable),
            regexes: RegexCache::default(),
        }),
    ] {
        ctx.register_udf(udf);
    }
}

fn time_udf(fun: Fun, name: &'static str, aliases: &[&str]) -> ScalarUDF {
    let aliases = aliases.iter().map(|a| (*a).to_owned()).collect();
    ScalarUDF::from(TimeUdf { fun, name, aliases, signature: Signature::user_defined(Volatility::Immutable) })
}

fn exec(name: &str, msg: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("{name}: {msg}"))
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

// ---------------------------------------------------------------------------------------------
// Spark datetime patterns
// ---------------------------------------------------------------------------------------------

/// One element of a compiled Spark datetime pattern.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Lit(String),
    /// `G`: AD/BC, `GGGG`: Anno Domini/Before Christ.
    Era {
        full: bool,
    },
    /// `y`.. : the year padded to `count` digits (the year of era when the pattern has `G`);
    /// `yy`: its last two digits.
    Year {
        count: usize,
        of_era: bool,
    },
    /// A number zero-padded to `width`; parsing reads `width..=max` digits.
    Num {
        field: NumField,
        width: usize,
        max: usize,
    },
    /// `MMM`/`MMMM`, `QQQ`/`QQQQ`, `E`/`EEEE`.
    Text {
        field: TextField,
        full: bool,
    },
    AmPm,
    /// `S`..: the fraction of the second, truncated to this many digits.
    Fraction(usize),
    /// A zone letter: in a UTC session its text is fixed; parsing reads an offset.
    Zone {
        letter: char,
        count: usize,
    },
    /// `[...]`: always formatted; when parsing, skipped if it does not match.
    Optional(Vec<Item>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NumField {
    Month,
    Day,
    DayOfYear,
    Quarter,
    AlignedDayOfWeek,
    Hour,
    ClockHour,
    HourOfAmPm,
    ClockHourOfAmPm,
    Minute,
    Second,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TextField {
    Month,
    Quarter,
    DayOfWeek,
}

/// Compiles a Spark datetime pattern (java.time's `DateTimeFormatterBuilder.appendPattern` after
/// Spark's checks); `parsing` adds Spark's refusals for parsing.
fn compile(pattern: &str, parsing: bool) -> Result<Vec<Item>, String> {
    let cs: Vec<char> = pattern.chars().collect();
    let mut quoted = false;
    let of_era = cs.iter().any(|&c| {
        quoted ^= c == '\'';
        !quoted && c == 'G'
    });
    let mut stack: Vec<Vec<Item>> = vec![Vec::new()];
    let mut i = 0;
    while let Some(&c) = cs.get(i) {
        let item = if c == '\'' {
            let start = i;
            i += 1;
            while let Some(&q) = cs.get(i) {
                if q == '\'' {
                    if cs.get(i + 1) != Some(&'\'') {
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            if i >= cs.len() {
                return Err(format!("the pattern ends with an incomplete string literal: {pattern}"));
            }
            let text: String = cs[start + 1..i].iter().collect();
            i += 1;
            Item::Lit(if text.is_empty() { "'".into() } else { text.replace("''", "'") })
        } else if c == '[' {
            stack.push(Vec::new());
            i += 1;
            continue;
        } else if c == ']' {
            i += 1;
            match stack.pop() {
                Some(inner) if !stack.is_empty() => Item::Optional(inner),
                _ => return Err(format!("the pattern has ']' without a previous '[': {pattern}")),
            }
        } else if matches!(c, '{' | '}' | '#') {
            return Err(format!("the pattern includes the reserved character '{c}'"));
        } else if c.is_ascii_alphabetic() {
            let n = cs[i..].iter().take_while(|&&x| x == c).count();
            i += n;
            letter(c, n, of_era, parsing)?
        } else {
            i += 1;
            Item::Lit(c.to_string())
        };
        push_item(&mut stack, item);
    }
    // java.time closes optional sections left open
    while stack.len() > 1 {
        let inner = stack.pop().unwrap_or_default();
        push_item(&mut stack, Item::Optional(inner));
    }
    Ok(stack.pop().unwrap_or_default())
}

fn push_item(stack: &mut [Vec<Item>], item: Item) {
    let Some(top) = stack.last_mut() else { return };
    if let (Some(Item::Lit(prev)), Item::Lit(s)) = (top.last_mut(), &item) {
        prev.push_str(s);
        return;
    }
    top.push(item);
}

/// The item for `n` repetitions of the pattern letter `c`.
fn letter(c: char, n: usize, of_era: bool, parsing: bool) -> Result<Item, String> {
    use NumField as F;
    if matches!(c, 'Y' | 'w' | 'W' | 'u' | 'e' | 'c') {
        return Err(format!(
            "all week-based patterns are unsupported since Spark 3.0, detected: {c}; \
             use the SQL function EXTRACT instead"
        ));
    }
    if matches!(c, 'A' | 'B' | 'n' | 'N' | 'p') || (parsing && matches!(c, 'E' | 'F' | 'q' | 'Q')) {
        return Err(format!("illegal pattern character: {c}"));
    }
    // one letter: no padding, any width; more: that many digits (up to three for `DD`)
    let num = |field: NumField, n: usize| {
        let max = if n == 1 {
            19
        } else if field == F::DayOfYear {
            3
        } else {
            n
        };
        Item::Num { field, width: n, max }
    };
    Ok(match (c, n) {
        ('G', 1..=3) => Item::Era { full: false },
        ('G', 4) => Item::Era { full: true },
        ('y', 1..=6) => Item::Year { count: n, of_era },
        ('M' | 'L', 1 | 2) => num(F::Month, n),
        ('M' | 'L', 3 | 4) => Item::Text { field: TextField::Month, full: n == 4 },
        ('Q' | 'q', 1 | 2) => num(F::Quarter, n),
        ('Q' | 'q', 3 | 4) => Item::Text { field: TextField::Quarter, full: n == 4 },
        ('E', 1..=4) => Item::Text { field: TextField::DayOfWeek, full: n == 4 },
        ('d', 1 | 2) => num(F::Day, n),
        ('D', 1..=3) => num(F::DayOfYear, n),
        ('F', 1) => num(F::AlignedDayOfWeek, n),
        ('H', 1 | 2) => num(F::Hour, n),
        ('k', 1 | 2) => num(F::ClockHour, n),
        ('K', 1 | 2) => num(F::HourOfAmPm, n),
        ('h', 1 | 2) => num(F::ClockHourOfAmPm, n),
        ('m', 1 | 2) => num(F::Minute, n),
        ('s', 1 | 2) => num(F::Second, n),
        ('a', 1) => Item::AmPm,
        ('S', 1..=9) => Item::Fraction(n),
        ('V', 2) | ('z', 1..=4) | ('O', 1 | 4) | ('X' | 'x' | 'Z', 1..=5) => Item::Zone { letter: c, count: n },
        ('V', _) => return Err("pattern letter count must be 2: V".into()),
        ('v' | 'g', _) => return Err(format!("the pattern letter {c} is not supported by Sluice")),
        (
            'G' | 'y' | 'M' | 'L' | 'Q' | 'q' | 'E' | 'd' | 'D' | 'F' | 'H' | 'k' | 'K' | 'h' | 'm' | 's' | 'a' | 'S',
            _,
        )
        | ('z' | 'O' | 'X' | 'x' | 'Z', _) => {
            return Err(format!("too many pattern letters: {}", c.to_string().repeat(n)));
        }
        _ => return Err(format!("unknown pattern letter: {c}")),
    })
}

/// Formats `micros` (since the epoch, UTC) with a compiled pattern into `out`.
fn format_micros(micros: i64, items: &[Item], out: &mut String) -> Result<(), String> {
    let t = DateTime::from_timestamp_micros(micros).ok_or_else(|| format!("timestamp {micros} µs is out of range"))?;
    render(items, &t.naive_utc(), out);
    Ok(())
}

fn render(items: &[Item], t: &NaiveDateTime, out: &mut String) {
    for item in items {
        match item {
            Item::Lit(s) => out.push_str(s),
            Item::Era { full } => out.push_str(match (t.year() > 0, full) {
                (true, false) => "AD",
                (true, true) => "Anno Domini",
                (false, false) => "BC",
                (false, true) => "Before Christ",
            }),
            Item::Year { count, of_era } => {
                let y = i64::from(t.year());
                let y = if *of_era && y <= 0 { 1 - y } else { y };
                if *count == 2 {
                    pad(out, y.rem_euclid(100), 2);
                } else {
                    // java.time: a sign for negative years, and '+' when 4+ letters overflow
                    if y < 0 {
                        out.push('-');
                    } else if *count >= 4 && y >= 10_i64.pow(*count as u32) {
                        out.push('+');
                    }
                    pad(out, y.abs(), *count);
                }
            }
            Item::Num { field, width, .. } => pad(out, num_value(*field, t), *width),
            Item::Text { field, full } => {
                let text = match field {
                    TextField::Month => MONTHS[t.month0() as usize],
                    TextField::DayOfWeek => WEEKDAYS[t.weekday().num_days_from_monday() as usize],
                    TextField::Quarter if *full => QUARTERS[t.month0() as usize / 3],
                    TextField::Quarter => {
                        let _ = write!(out, "Q{}", t.month0() / 3 + 1);
                        continue;
                    }
                };
                out.push_str(if *full { text } else { &text[..3] });
            }
            Item::AmPm => out.push_str(if t.hour() < 12 { "AM" } else { "PM" }),
            Item::Fraction(n) => pad(out, i64::from(t.nanosecond() % 1_000_000_000) / 10_i64.pow(9 - *n as u32), *n),
            Item::Zone { letter, count } => out.push_str(match (letter, count) {
                ('z', 4) => "Coordinated Universal Time",
                ('V' | 'z', _) => "UTC",
                ('O', _) | ('Z', 4) => "GMT",
                ('X', _) | ('Z', 5) => "Z",
                ('x', 1) => "+00",
                ('x', 2 | 4) | ('Z', _) => "+0000",
                _ => "+00:00",
            }),
            Item::Optional(inner) => render(inner, t, out),
        }
    }
}

fn num_value(field: NumField, t: &NaiveDateTime) -> i64 {
    let hour = i64::from(t.hour());
    match field {
        NumField::Month => i64::from(t.month()),
        NumField::Day => i64::from(t.day()),
        NumField::DayOfYear => i64::from(t.ordinal()),
        NumField::Quarter => i64::from(t.month0() / 3 + 1),
        NumField::AlignedDayOfWeek => i64::from((t.day() - 1) % 7 + 1),
        NumField::Hour => hour,
        NumField::ClockHour => {
            if hour == 0 {
                24
            } else {
                hour
            }
        }
        NumField::HourOfAmPm => hour % 12,
        NumField::ClockHourOfAmPm => {
            if hour % 12 == 0 {
                12
            } else {
                hour % 12
            }
        }
        NumField::Minute => i64::from(t.minute()),
        NumField::Second => i64::from(t.second()),
    }
}

fn pad(out: &mut String, v: i64, width: usize) {
    let _ = write!(out, "{v:0width$}");
}

/// Why a string gave no value.
#[derive(Debug)]
enum Failure {
    /// Spark cannot read it either (an error with ANSI on, NULL from `try_`): Java's reason.
    NoMatch(String),
    /// Spark reads it, but Sluice cannot reproduce the answer.
    Refused(String),
}

fn no_match(detail: impl Into<String>) -> Failure {
    Failure::NoMatch(detail.into())
}

fn at(s: &str, pos: usize) -> Failure {
    no_match(format!(" at index {}", s.get(..pos).map_or(pos, |p| p.chars().count())))
}

/// Fields read from a string by a pattern, before they are resolved to an instant.
#[derive(Debug, Default, Clone, Copy)]
struct Parsed {
    year: Option<i64>,
    year_of_era: bool,
    bc: Option<bool>,
    month: Option<i64>,
    day: Option<i64>,
    day_of_year: Option<i64>,
    hour: Option<i64>,
    hour_of_am_pm: Option<i64>,
    pm: Option<bool>,
    minute: Option<i64>,
    second: Option<i64>,
    nanos: Option<i64>,
    offset: Option<i64>,
}

/// Records a parsed field: one read twice must agree (java.time's "conflict found").
fn put<T: PartialEq + Copy>(slot: &mut Option<T>, v: T) -> Result<(), Failure> {
    match *slot {
        Some(old) if old != v => Err(no_match(": conflicting values for one field")),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

/// Parses `s` with a compiled pattern (java.time's strict, case-insensitive parsing, with
/// Spark's defaults for missing fields) into microseconds since the epoch.
fn parse_micros(items: &[Item], s: &str) -> Result<i64, Failure> {
    let (mut p, mut pos) = (Parsed::default(), 0);
    parse_seq(items, s, &mut pos, &mut p)?;
    if pos < s.len() {
        let index = s.get(..pos).map_or(pos, |p| p.chars().count());
        return Err(no_match(format!(", unparsed text found at index {index}")));
    }
    resolve(&p)
}

fn parse_seq(items: &[Item], s: &str, pos: &mut usize, p: &mut Parsed) -> Result<(), Failure> {
    for (k, item) in items.iter().enumerate() {
        let rest = s.get(*pos..).unwrap_or("");
        let fail = || at(s, *pos);
        // java.time's adjacent value parsing: a variable-width number leaves the digits of the
        // fixed-width numbers right after it to them
        let reserve = || -> usize {
            items[k + 1..]
                .iter()
                .map_while(|it| match it {
                    Item::Num { width, max, .. } if width == max => Some(*width),
                    Item::Year { count: 2, .. } => Some(2),
                    Item::Fraction(1) => Some(1),
                    _ => None,
                })
                .sum()
        };
        let len = match item {
            Item::Lit(l) => match_lit(rest, l).ok_or_else(fail)?,
            Item::Optional(inner) => {
                let (save_pos, save) = (*pos, *p);
                if let Err(e) = parse_seq(inner, s, pos, p) {
                    if let Failure::Refused(_) = e {
                        return Err(e);
                    }
                    (*pos, *p) = (save_pos, save);
                }
                0
            }
            Item::Era { full } => {
                let names: &[&str] = if *full { &["Anno Domini", "Before Christ"] } else { &["AD", "BC"] };
                let (i, n) = match_name(rest, names).ok_or_else(fail)?;
                put(&mut p.bc, i == 1)?;
                n
            }
            Item::Year { count: 2, of_era } => {
                let (v, n) = digits(rest, 2, 2, 0).ok_or_else(fail)?;
                p.year_of_era = *of_era;
                put(&mut p.year, 2000 + v)?;
                n
            }
            Item::Year { count, of_era } => {
                let (neg, plus) = (rest.starts_with('-'), rest.starts_with('+'));
                let sign = usize::from(neg || plus);
                let (v, n) = digits(&rest[sign..], *count, 19, reserve()).ok_or_else(fail)?;
                // strict java.time: '+' only (and then always) when the digits exceed the pad
                if (plus && *count < 4) || (*count >= 4 && !neg && plus != (n > *count)) {
                    return Err(fail());
                }
                p.year_of_era = *of_era;
                put(&mut p.year, if neg { -v } else { v })?;
                sign + n
            }
            Item::Num { field, width, max } => {
                let (v, n) = digits(rest, *width, *max, if width == max { 0 } else { reserve() }).ok_or_else(fail)?;
                set_num(p, *field, v)?;
                n
            }
            Item::Text { field: TextField::Month, full } => {
                let names: Vec<&str> = MONTHS.iter().map(|m| if *full { *m } else { &m[..3] }).collect();
                let (i, n) = match_name(rest, &names).ok_or_else(fail)?;
                put(&mut p.month, i as i64 + 1)?;
                n
            }
            Item::AmPm => {
                let (i, n) = match_name(rest, &["AM", "PM"]).ok_or_else(fail)?;
                put(&mut p.pm, i == 1)?;
                n
            }
            Item::Fraction(max) => {
                let (v, n) = digits(rest, 1, *max, 0).ok_or_else(fail)?;
                put(&mut p.nanos, v * 10_i64.pow(9 - n as u32))?;
                n
            }
            Item::Zone { letter, count } => {
                let (offset, n) = parse_zone(*letter, *count, rest)?.ok_or_else(fail)?;
                put(&mut p.offset, offset)?;
                n
            }
            // refused for parsing by `compile`
            Item::Text { .. } => return Err(fail()),
        };
        *pos += len;
    }
    Ok(())
}

fn set_num(p: &mut Parsed, field: NumField, v: i64) -> Result<(), Failure> {
    match field {
        NumField::Month if (1..=12).contains(&v) => put(&mut p.month, v),
        NumField::Day if (1..=31).contains(&v) => put(&mut p.day, v),
        NumField::DayOfYear if (1..=366).contains(&v) => put(&mut p.day_of_year, v),
        NumField::Hour if (0..=23).contains(&v) => put(&mut p.hour, v),
        NumField::ClockHour if (1..=24).contains(&v) => put(&mut p.hour, v % 24),
        NumField::HourOfAmPm if (0..=11).contains(&v) => put(&mut p.hour_of_am_pm, v),
        NumField::ClockHourOfAmPm if (1..=12).contains(&v) => put(&mut p.hour_of_am_pm, v % 12),
        NumField::Minute if (0..=59).contains(&v) => put(&mut p.minute, v),
        NumField::Second if (0..=59).contains(&v) => put(&mut p.second, v),
        _ => Err(no_match(format!(": invalid value for {field:?}: {v}"))),
    }
}

/// Reads `min..=max` ASCII digits, leaving `reserve` digits for the numbers that follow.
fn digits(rest: &str, min: usize, max: usize, reserve: usize) -> Option<(i64, usize)> {
    let avail = rest.bytes().take(max + reserve).take_while(u8::is_ascii_digit).count();
    let take = if reserve > 0 { avail.saturating_sub(reserve).max(min) } else { avail };
    if take < min || take > avail {
        return None;
    }
    let v = rest.bytes().take(take).try_fold(0_i64, |v, b| v.checked_mul(10)?.checked_add(i64::from(b - b'0')))?;
    Some((v, take))
}

/// The longest of `names` that `rest` starts with, ignoring ASCII case: (index, length).
fn match_name(rest: &str, names: &[&str]) -> Option<(usize, usize)> {
    names
        .iter()
        .enumerate()
        .filter(|(_, n)| rest.as_bytes().get(..n.len()).is_some_and(|r| r.eq_ignore_ascii_case(n.as_bytes())))
        .max_by_key(|(_, n)| n.len())
        .map(|(i, n)| (i, n.len()))
}

/// The length of `lit` at the start of `rest`, ignoring case.
fn match_lit(rest: &str, lit: &str) -> Option<usize> {
    let mut chars = rest.char_indices();
    let mut end = 0;
    for l in lit.chars() {
        let (i, r) = chars.next()?;
        if r != l && !r.to_lowercase().eq(l.to_lowercase()) && !r.to_uppercase().eq(l.to_uppercase()) {
            return None;
        }
        end = i + r.len_utf8();
    }
    Some(end)
}

/// A zone pattern letter's offset at the start of `rest`: (seconds east of UTC, length).
fn parse_zone(letter: char, count: usize, rest: &str) -> Result<Option<(i64, usize)>, Failure> {
    let zulu = rest.starts_with(['Z', 'z']);
    Ok(match (letter, count) {
        ('X', _) | ('Z', 5) if zulu => Some((0, 1)),
        ('O', _) | ('Z', 4) => gmt_offset(rest, count == 4),
        ('V' | 'z', _) => {
            let prefix = ["UTC", "GMT", "UT", "Z"]
                .into_iter()
                .find(|p| rest.get(..p.len()).is_some_and(|r| r.eq_ignore_ascii_case(p)));
            match prefix {
                Some(p) => match offset_hms(&rest[p.len()..], true, true, true) {
                    Some((o, n)) if p != "Z" => Some((o, p.len() + n)),
                    _ => Some((0, p.len())),
                },
                None if rest.starts_with(['+', '-']) => offset_hms(rest, true, true, true),
                None if rest.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                    return Err(Failure::Refused(format!("zone names other than UTC/GMT are not supported: '{rest}'")));
                }
                None => None,
            }
        }
        ('X' | 'x', 1) => offset_hms(rest, false, false, false),
        ('X' | 'x', 2) | ('Z', _) if count <= 3 => offset_hms(rest, false, true, false),
        ('X' | 'x', 3) => offset_hms(rest, true, true, false),
        ('X' | 'x', 4) => offset_hms(rest, false, true, true),
        _ => offset_hms(rest, true, true, true),
    })
}

/// `+HH[[:]MM[[:]SS]]` at the start of `rest`: (seconds, length).
fn offset_hms(rest: &str, colon: bool, need_minutes: bool, with_seconds: bool) -> Option<(i64, usize)> {
    let b = rest.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let two = |i: usize| -> Option<i64> {
        let (x, y) = (*b.get(i)?, *b.get(i + 1)?);
        (x.is_ascii_digit() && y.is_ascii_digit()).then(|| i64::from((x - b'0') * 10 + (y - b'0')))
    };
    let sep = usize::from(colon);
    let field = |i: usize| if !colon || b.get(i) == Some(&b':') { two(i + sep).filter(|v| *v < 60) } else { None };
    let hours = two(1)?;
    let (mut secs, mut len) = (hours * 3_600, 3);
    match field(len) {
        Some(m) => {
            secs += m * 60;
            len += sep + 2;
            if with_seconds && let Some(s) = field(len) {
                secs += s;
                len += sep + 2;
            }
        }
        None if need_minutes => return None,
        None => {}
    }
    (secs <= 18 * 3_600).then_some((sign * secs, len))
}

/// `GMT`, `GMT+8`, `GMT+08:00` (`full`: `GMT+08:00` only) at the start of `rest`.
fn gmt_offset(rest: &str, full: bool) -> Option<(i64, usize)> {
    if !rest.get(..3)?.eq_ignore_ascii_case("GMT") {
        return None;
    }
    let tail = &rest[3..];
    if !tail.starts_with(['+', '-']) {
        return Some((0, 3));
    }
    if full {
        return offset_hms(tail, true, true, true).map(|(o, n)| (o, 3 + n));
    }
    let b = tail.as_bytes();
    let hour_digits = b[1..].iter().take(2).take_while(|c| c.is_ascii_digit()).count();
    if hour_digits == 0 {
        return None;
    }
    let mut secs = b[1..=hour_digits].iter().fold(0, |v, c| v * 10 + i64::from(c - b'0')) * 3_600;
    let mut len = 1 + hour_digits;
    for unit in [60, 1] {
        match (b.get(len), b.get(len + 1), b.get(len + 2)) {
            (Some(b':'), Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                secs += i64::from((x - b'0') * 10 + (y - b'0')) * unit;
                len += 3;
            }
            _ => break,
        }
    }
    let sign = if b[0] == b'-' { -1 } else { 1 };
    (secs <= 18 * 3_600).then_some((sign * secs, 3 + len))
}

/// Resolves parsed fields as java.time's strict resolver and Spark's defaults do (year 1970,
/// January, the 1st, midnight; am/pm without an hour is 00:00 or 12:00).
fn resolve(p: &Parsed) -> Result<i64, Failure> {
    let invalid = |what: &str| no_match(format!(": {what}"));
    let year = match (p.year, p.bc, p.year_of_era) {
        (Some(y), _, true) if y < 1 => return Err(invalid("invalid year of era")),
        (Some(y), Some(true), true) => 1 - y,
        (Some(y), Some(false), true) | (Some(y), _, false) => y,
        // no year, or a year of era without its era, which strict java.time leaves unresolved
        _ => 1970,
    };
    let year = i32::try_from(year).map_err(|_| invalid("year out of range"))?;
    let date = match p.day_of_year {
        Some(doy) => {
            let d = NaiveDate::from_yo_opt(year, doy as u32).ok_or_else(|| invalid("invalid day of year"))?;
            if p.month.is_some_and(|m| m != i64::from(d.month())) || p.day.is_some_and(|x| x != i64::from(d.day())) {
                return Err(invalid("the day of year disagrees with the month or day"));
            }
            d
        }
        None => NaiveDate::from_ymd_opt(year, p.month.unwrap_or(1) as u32, p.day.unwrap_or(1) as u32)
            .ok_or_else(|| invalid("invalid date"))?,
    };
    let pm_hours = |pm: bool| if pm { 12 } else { 0 };
    let hour = match (p.hour, p.hour_of_am_pm, p.pm) {
        (Some(h), Some(k), Some(pm)) if h != k + pm_hours(pm) => return Err(invalid("conflicting hours")),
        (Some(h), None, Some(pm)) if (h >= 12) != pm => return Err(invalid("conflicting hour and am/pm")),
        (Some(h), Some(k), None) if h % 12 != k => return Err(invalid("conflicting hours")),
        (Some(h), _, _) => h,
        (None, Some(k), pm) => k + pm_hours(pm == Some(true)),
        (None, None, pm) => pm_hours(pm == Some(true)),
    };
    let (minute, second, nanos) = (p.minute.unwrap_or(0), p.second.unwrap_or(0), p.nanos.unwrap_or(0));
    let t = date
        .and_hms_nano_opt(hour as u32, minute as u32, second as u32, nanos as u32)
        .ok_or_else(|| invalid("invalid time"))?;
    let offset = p.offset.unwrap_or(0) * US_PER_SECOND;
    t.and_utc().timestamp_micros().checked_sub(offset).ok_or_else(|| invalid("out of range"))
}

// ---------------------------------------------------------------------------------------------
// Spark's CAST of strings
// ---------------------------------------------------------------------------------------------

fn is_spark_space(c: char) -> bool {
    c <= ' ' || c == '\u{7f}'
}

/// Spark's `CAST(string AS TIMESTAMP)` in a UTC session (`SparkDateTimeUtils.parseTimestampString`).
fn cast_micros(s: &str) -> Result<i64, Failure> {
    let t = s.trim_matches(is_spark_space);
    let at_zero = !s.starts_with(is_spark_space);
    let b = t.as_bytes();
    let malformed = || no_match("");
    if b.is_empty() {
        return Err(malformed());
    }
    let valid = |seg: usize, d: usize| match seg {
        0 => (4..=6).contains(&d),
        6 => true,
        7 => d <= 2,
        _ => (1..=2).contains(&d),
    };
    let mut seg = [1_i64, 1, 1, 0, 0, 0, 0, 0, 0];
    let (mut i, mut val, mut digits, mut frac, mut j) = (0_usize, 0_i64, 0_usize, 0_usize, 0_usize);
    let (mut sign, mut tz, mut just_time) = (None, None, false);
    if b[0] == b'-' || b[0] == b'+' {
        sign = Some(if b[0] == b'-' { -1 } else { 1 });
        j = 1;
    }
    while j < b.len() {
        let c = b[j];
        if c.is_ascii_digit() {
            if i == 6 {
                frac += 1;
            }
            if i != 6 || digits < 6 {
                val = val.wrapping_mul(10).wrapping_add(i64::from(c - b'0'));
            }
            digits += 1;
        } else if j == 0 && at_zero && c == b'T' {
            just_time = true;
            i += 3;
        } else {
            let time_first = i == 0 && c == b':' && sign.is_none();
            let separator = match i {
                0 | 1 => c == b'-' || time_first,
                2 => c == b' ' || c == b'T',
                3 | 4 => c == b':',
                5 | 6 => true,
                _ => i < seg.len() && (c == b':' || c == b' '),
            };
            let target = if time_first { 3 } else { i };
            if !separator || !valid(target, digits) {
                return Err(malformed());
            }
            seg[target] = val;
            (val, digits) = (0, 0);
            if time_first {
                just_time = true;
                i = 4;
            } else if (i == 5 || i == 6) && !(c == b'.' && i == 5) {
                // the rest is the zone
                tz = Some(&t[j..]);
                j = b.len() - 1;
                i = 7;
            } else {
                i += 1;
            }
        }
        j += 1;
    }
    if !valid(i, digits) {
        return Err(malformed());
    }
    *seg.get_mut(i).ok_or_else(malformed)? = val;
    while frac < 6 {
        seg[6] *= 10;
        frac += 1;
    }
    if just_time {
        return Err(Failure::Refused("a time without a date takes today's date in Spark; Sluice does not".into()));
    }
    let offset = match tz {
        Some(z) => zone_id_offset(z.trim_matches(|c: char| c <= ' '))?,
        None => 0,
    };
    let year = sign.unwrap_or(1) * seg[0];
    if year.abs() > 262_143 {
        return Err(Failure::Refused(format!("the year {year} is beyond what Sluice can represent")));
    }
    let date = NaiveDate::from_ymd_opt(year as i32, seg[1] as u32, seg[2] as u32).ok_or_else(malformed)?;
    let t = date.and_hms_micro_opt(seg[3] as u32, seg[4] as u32, seg[5] as u32, seg[6] as u32).ok_or_else(malformed)?;
    Ok(t.and_utc().timestamp_micros() - offset * US_PER_SECOND)
}

/// java.time's `ZoneId.of` for the zone of a timestamp string, after Spark's `getZoneId` fixes
/// (`+h:mm` → `+0h:mm`, `+hh:m` → `+hh:0m`): seconds east of UTC.
fn zone_id_offset(z: &str) -> Result<i64, Failure> {
    let mut z = z.to_owned();
    let b = z.as_bytes();
    let sign = |c: u8| c == b'+' || c == b'-';
    let short_hour = |k: usize| sign(b[k]) && b[k + 1].is_ascii_digit() && b[k + 2] == b':';
    if let Some(k) = (0..b.len().saturating_sub(2)).find(|&k| short_hour(k)) {
        z.insert(k + 1, '0');
    }
    let (b, n) = (z.as_bytes(), z.len());
    let digit = |k: usize| b[k].is_ascii_digit();
    if n >= 5 && sign(b[n - 5]) && digit(n - 4) && digit(n - 3) && b[n - 2] == b':' && digit(n - 1) {
        z.insert(n - 1, '0');
    }
    match z.as_str() {
        "Z" | "UTC" | "GMT" | "UT" => return Ok(0),
        "EST" => return Ok(-5 * 3_600),
        "MST" => return Ok(-7 * 3_600),
        "HST" => return Ok(-10 * 3_600),
        _ => {}
    }
    let offset = if z.starts_with(['+', '-']) {
        Some(z.as_str())
    } else {
        ["UTC", "GMT", "UT"].iter().find_map(|p| z.strip_prefix(p).filter(|r| r.starts_with(['+', '-'])))
    };
    if let Some(o) = offset {
        return offset_id(o).ok_or_else(|| no_match(""));
    }
    let region = |c: char| c.is_ascii_alphanumeric() || "~/._+-".contains(c);
    if z.starts_with(|c: char| c.is_ascii_alphabetic()) && z.chars().all(region) {
        return Err(Failure::Refused(format!("the time zone '{z}' is not supported (only Z, UTC, GMT, ±hh:mm)")));
    }
    Err(no_match(""))
}

/// java.time's `ZoneOffset.of`: `±h`, `±hh`, `±hhmm`, `±hh:mm`, `±hhmmss`, `±hh:mm:ss`.
fn offset_id(o: &str) -> Option<i64> {
    let sign = if o.starts_with('-') { -1 } else { 1 };
    let d = o.get(1..)?.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = d.get(r)?;
        s.iter().all(u8::is_ascii_digit).then(|| s.iter().fold(0, |v, c| v * 10 + i64::from(c - b'0')))
    };
    let colon = |i: usize| d.get(i) == Some(&b':');
    let (h, m, s) = match d.len() {
        1 | 2 => (num(0..d.len())?, 0, 0),
        4 => (num(0..2)?, num(2..4)?, 0),
        5 if colon(2) => (num(0..2)?, num(3..5)?, 0),
        6 => (num(0..2)?, num(2..4)?, num(4..6)?),
        8 if colon(2) && colon(5) => (num(0..2)?, num(3..5)?, num(6..8)?),
        _ => return None,
    };
    let secs = h * 3_600 + m * 60 + s;
    (h <= 18 && m <= 59 && s <= 59 && secs <= 18 * 3_600).then_some(sign * secs)
}

/// Spark's `CAST(string AS DATE)` (`SparkDateTimeUtils.stringToDate`): days since the epoch.
fn cast_days(s: &str) -> Result<i32, Failure> {
    let b = s.trim_matches(is_spark_space).as_bytes();
    let malformed = || no_match("");
    let Some(&first) = b.first() else { return Err(malformed()) };
    let (sign, mut j) = match first {
        b'-' => (-1, 1),
        b'+' => (1, 1),
        _ => (1, 0),
    };
    let valid = |seg: usize, d: usize| if seg == 0 { (4..=7).contains(&d) } else { (1..=2).contains(&d) };
    let mut seg = [1_i64, 1, 1];
    let (mut i, mut val, mut digits) = (0_usize, 0_i64, 0_usize);
    while j < b.len() && b[j] != b' ' && b[j] != b'T' {
        let c = b[j];
        if i < 2 && c == b'-' {
            if !valid(i, digits) {
                return Err(malformed());
            }
            seg[i] = val;
            (val, digits, i) = (0, 0, i + 1);
        } else if c.is_ascii_digit() {
            val = val.wrapping_mul(10).wrapping_add(i64::from(c - b'0'));
            digits += 1;
        } else {
            return Err(malformed());
        }
        j += 1;
    }
    // `yyyy` and `yyyy-[m]m` must be the whole string
    if !valid(i, digits) || (i < 2 && j < b.len()) {
        return Err(malformed());
    }
    seg[i] = val;
    let year = sign * seg[0];
    if year.abs() > 262_143 {
        return Err(Failure::Refused(format!("the year {year} is beyond what Sluice can represent")));
    }
    NaiveDate::from_ymd_opt(year as i32, seg[1] as u32, seg[2] as u32).map(|d| d.to_epoch_days()).ok_or_else(malformed)
}

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn str_at(a: &ArrayRef, i: usize) -> Option<&str> {
    if let Some(s) = a.as_string_opt::<i32>() {
        return s.is_valid(i).then(|| s.value(i));
    }
    if let Some(s) = a.as_string_opt::<i64>() {
        return s.is_valid(i).then(|| s.value(i));
    }
    a.as_string_view_opt().and_then(|s| s.is_valid(i).then(|| s.value(i)))
}

fn arg<'a>(name: &str, a: &'a [ColumnarValue], i: usize) -> DfResult<&'a ColumnarValue> {
    a.get(i).ok_or_else(|| exec(name, format!("missing argument {}", i + 1)))
}

/// A string argument that is usually a constant (a pattern, a unit).
enum StrArg {
    Const(Option<String>),
    Col(ArrayRef),
}

impl StrArg {
    fn new(v: &ColumnarValue) -> Self {
        match v {
            ColumnarValue::Scalar(ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s)) => {
                StrArg::Const(s.clone())
            }
            ColumnarValue::Scalar(_) => StrArg::Const(None),
            ColumnarValue::Array(a) => StrArg::Col(Arc::clone(a)),
        }
    }
    fn get(&self, i: usize) -> Option<&str> {
        match self {
            StrArg::Const(s) => s.as_deref(),
            StrArg::Col(a) => str_at(a, i),
        }
    }
}

/// Compiled datetime patterns by their text; a constant pattern is checked before any row.
struct Patterns {
    name: &'static str,
    parsing: bool,
    compiled: HashMap<String, Arc<Vec<Item>>>,
}

impl Patterns {
    fn new(name: &'static str, parsing: bool, pattern: &StrArg) -> DfResult<Self> {
        let mut patterns = Patterns { name, parsing, compiled: HashMap::new() };
        if let StrArg::Const(Some(p)) = pattern {
            patterns.get(p)?;
        }
        Ok(patterns)
    }
    fn get(&mut self, pattern: &str) -> DfResult<Arc<Vec<Item>>> {
        if let Some(items) = self.compiled.get(pattern) {
            return Ok(Arc::clone(items));
        }
        let items = compile(pattern, self.parsing)
            .map_err(|e| exec(self.name, format!("invalid datetime pattern '{pattern}': {e}")))?;
        let items = Arc::new(items);
        self.compiled.insert(pattern.to_owned(), Arc::clone(&items));
        Ok(items)
    }
}

/// A string cast's outcome: Spark's ANSI error for a malformed string, or NULL when not `ansi`.
fn settle<T>(name: &str, s: &str, r: Result<T, Failure>, target: &str, ansi: bool) -> DfResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Failure::NoMatch(_)) if !ansi => Ok(None),
        Err(Failure::NoMatch(_)) => Err(exec(
            name,
            format!(
                "[CAST_INVALID_INPUT] The value '{s}' of the type \"STRING\" cannot be cast to \"{target}\" \
                 because it is malformed. Use `try_cast` to tolerate malformed input and return NULL instead"
            ),
        )),
        Err(Failure::Refused(why)) => Err(exec(name, format!("cannot read '{s}': {why}"))),
    }
}

/// The argument as microseconds since the epoch, as Spark casts it to TIMESTAMP: a timestamp's
/// instant, a date's midnight, a string read as CAST reads it.
fn micros_of(name: &str, a: &ArrayRef, ansi: bool) -> DfResult<Vec<Option<i64>>> {
    match a.data_type() {
        DataType::Timestamp(unit, _) => {
            let raw = arrow_cast::cast(a, &DataType::Int64)?;
            let unit = *unit;
            raw.as_primitive::<Int64Type>()
                .iter()
                .map(|v| {
                    v.map(|v| match unit {
                        TimeUnit::Second => v.checked_mul(US_PER_SECOND),
                        TimeUnit::Millisecond => v.checked_mul(1_000),
                        TimeUnit::Microsecond => Some(v),
                        TimeUnit::Nanosecond => Some(v.div_euclid(1_000)),
                    })
                    .map(|v| v.ok_or_else(|| exec(name, "timestamp out of range")))
                    .transpose()
                })
                .collect()
        }
        DataType::Date32 => {
            Ok(a.as_primitive::<Date32Type>().iter().map(|d| d.map(|d| i64::from(d) * US_PER_DAY)).collect())
        }
        DataType::Null => Ok(vec![None; a.len()]),
        t if is_string(t) => (0..a.len())
            .map(|i| str_at(a, i).map_or(Ok(None), |s| settle(name, s, cast_micros(s), "TIMESTAMP", ansi)))
            .collect(),
        t => Err(exec(name, format!("expected a timestamp, date or string, got {t}"))),
    }
}

/// The argument as days since the epoch, as Spark casts it to DATE.
fn days_of(name: &str, a: &ArrayRef, ansi: bool) -> DfResult<Vec<Option<i32>>> {
    match a.data_type() {
        DataType::Date32 => Ok(a.as_primitive::<Date32Type>().iter().collect()),
        t if is_string(t) => (0..a.len())
            .map(|i| str_at(a, i).map_or(Ok(None), |s| settle(name, s, cast_days(s), "DATE", ansi)))
            .collect(),
        _ => Ok(micros_of(name, a, ansi)?.into_iter().map(|m| m.map(day_of)).collect()),
    }
}

fn day_of(micros: i64) -> i32 {
    micros.div_euclid(US_PER_DAY) as i32
}

fn date(name: &str, days: i32) -> DfResult<NaiveDate> {
    NaiveDate::from_epoch_days(days).ok_or_else(|| exec(name, format!("date {days} is out of range")))
}

/// `to_timestamp`'s reading of its argument: a string parsed with the pattern (`default` when
/// none is given; without either, read as CAST reads it), a timestamp or date converted.
fn read_micros(
    name: &'static str,
    values: &ArrayRef,
    pattern: Option<&ColumnarValue>,
    default: Option<&str>,
    try_: bool,
) -> DfResult<Vec<Option<i64>>> {
    let pattern = match (pattern, default) {
        (Some(p), _) => StrArg::new(p),
        (None, Some(d)) => StrArg::Const(Some(d.to_owned())),
        (None, None) => return micros_of(name, values, !try_),
    };
    if !is_string(values.data_type()) {
        return micros_of(name, values, !try_);
    }
    let mut patterns = Patterns::new(name, true, &pattern)?;
    let try_name = if name.ends_with("date") { "try_to_date" } else { "try_to_timestamp" };
    (0..values.len())
        .map(|i| {
            let (Some(s), Some(p)) = (str_at(values, i), pattern.get(i)) else { return Ok(None) };
            match parse_micros(&patterns.get(p)?, s) {
                Ok(m) => Ok(Some(m)),
                Err(Failure::NoMatch(_)) if try_ => Ok(None),
                Err(Failure::NoMatch(why)) => Err(exec(
                    name,
                    format!(
                        "[CANNOT_PARSE_TIMESTAMP] Text '{s}' could not be parsed{why}. \
                         Use `{try_name}` to tolerate invalid input string and return NULL instead"
                    ),
                )),
                Err(Failure::Refused(why)) => Err(exec(name, why)),
            }
        })
        .collect()
}

/// Formats each instant with its row's pattern.
fn format_column(name: &'static str, micros: &[Option<i64>], pattern: &StrArg) -> DfResult<ArrayRef> {
    let mut patterns = Patterns::new(name, false, pattern)?;
    let mut out = StringBuilder::with_capacity(micros.len(), micros.len() * 20);
    let mut buf = String::new();
    for (i, m) in micros.iter().enumerate() {
        match (m, pattern.get(i)) {
            (Some(m), Some(p)) => {
                buf.clear();
                format_micros(*m, &patterns.get(p)?, &mut buf).map_err(|e| exec(name, e))?;
                out.append_value(&buf);
            }
            _ => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}

/// Evaluates `f` once when every argument is a constant (giving a constant), else per row.
fn invoke_rows(
    args: &ScalarFunctionArgs,
    f: impl FnOnce(&[ColumnarValue], usize) -> DfResult<ArrayRef>,
) -> DfResult<ColumnarValue> {
    let constant = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let out = f(&args.args, if constant { 1 } else { args.number_rows })?;
    if constant {
        return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(out.as_ref(), 0)?));
    }
    Ok(ColumnarValue::Array(out))
}

/// What an argument must be; `coerce_arg` gives the type DataFusion casts it to.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A timestamp, date or string (Spark's implicit casts to TIMESTAMP/DATE).
    Time,
    Text,
    Int,
    /// `from_unixtime`'s seconds: any number, as BIGINT.
    Seconds,
    /// Any integer, as BIGINT.
    Long,
    /// A timestamp only (Spark's `ExpectsInputTypes`: no implicit cast).
    Timestamp,
    /// A date only, likewise.
    Date,
    Bool,
}

fn coerce_arg(name: &str, kind: Kind, t: &DataType) -> DfResult<DataType> {
    Ok(match (kind, t) {
        (Kind::Int, DataType::Null) => DataType::Int32,
        (Kind::Seconds | Kind::Long, DataType::Null) => DataType::Int64,
        (Kind::Bool, DataType::Null | DataType::Boolean) => DataType::Boolean,
        (_, DataType::Null) => DataType::Null,
        (Kind::Time | Kind::Timestamp, DataType::Timestamp(..)) | (Kind::Time, DataType::Date32) => t.clone(),
        (Kind::Time | Kind::Date, DataType::Date64) | (Kind::Date, DataType::Date32) => DataType::Date32,
        (Kind::Long, t) if t.is_integer() => DataType::Int64,
        (Kind::Time | Kind::Text, t) if is_string(t) => t.clone(),
        (Kind::Int, t) if t.is_integer() => DataType::Int32,
        (Kind::Seconds, t) if t.is_numeric() => DataType::Int64,
        _ => {
            let want = match kind {
                Kind::Time => "a timestamp, date or string",
                Kind::Text => "a string",
                Kind::Int => "an integer",
                Kind::Seconds => "a number of seconds",
                Kind::Long => "an integer",
                Kind::Timestamp => "a timestamp",
                Kind::Date => "a date",
                Kind::Bool => "a boolean",
            };
            return plan_err!("{name}: expected {want}, got {t}");
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The date-time functions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fun {
    DateFormat,
    ToTimestamp { try_: bool },
    ToDate { try_: bool },
    UnixTimestamp,
    FromUnixtime,
    Extract(Part),
    DatePart,
    DateAdd,
    DateSub,
    DateDiff,
    AddMonths,
    LastDay,
    DateTrunc,
    Trunc,
    // `unix_seconds`, `unix_millis`, `unix_micros`: whole units of this many µs, floored
    UnixUnits(i64),
    // `timestamp_seconds`, `timestamp_millis`, `timestamp_micros`: units of this many µs
    FromUnits(i64),
    UnixDate,
    DateFromUnixDate,
    MonthsBetween,
    NextDay,
    TimestampAdd,
    TimestampDiff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    Year,
    /// The ISO week-based year.
    YearOfWeek,
    Quarter,
    Month,
    DayOfMonth,
    DayOfWeek,
    /// 1 = Monday.
    DayOfWeekIso,
    Weekday,
    DayOfYear,
    WeekOfYear,
    Hour,
    Minute,
    Second,
}

/// Spark's truncation levels, finest first (`trunc` takes `Week` and coarser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

/// Spark's `parseTruncLevel`: an unknown unit gives NULL.
fn level(unit: &str) -> Option<Level> {
    Some(match unit.to_uppercase().as_str() {
        "MICROSECOND" => Level::Microsecond,
        "MILLISECOND" => Level::Millisecond,
        "SECOND" => Level::Second,
        "MINUTE" => Level::Minute,
        "HOUR" => Level::Hour,
        "DAY" | "DD" => Level::Day,
        "WEEK" => Level::Week,
        "MON" | "MONTH" | "MM" => Level::Month,
        "QUARTER" => Level::Quarter,
        "YEAR" | "YYYY" | "YY" => Level::Year,
        _ => return None,
    })
}

/// One of Spark's date-time functions (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
struct TimeUdf {
    fun: Fun,
    name: &'static str,
    aliases: Vec<String>,
    signature: Signature,
}

impl ScalarUDFImpl for TimeUdf {
    fn name(&self) -> &str {
        self.name
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> DfResult<Vec<DataType>> {
        use Kind::{Bool, Date, Int, Long, Seconds, Text, Time, Timestamp};
        if self.fun == Fun::Trunc && t.first().is_some_and(DataType::is_numeric) {
            let fields: Vec<FieldRef> = t.iter().map(|t| Arc::new(Field::new("x", t.clone(), true))).collect();
            let numeric = datafusion::functions::math::trunc();
            return Ok(fields_with_udf(&fields, numeric.as_ref())?.iter().map(|f| f.data_type().clone()).collect());
        }
        let kinds: &[Kind] = match (self.fun, t.len()) {
            (Fun::DateFormat, 2) => &[Time, Text],
            (Fun::ToTimestamp { .. } | Fun::ToDate { .. } | Fun::UnixTimestamp, 1) => &[Time],
            (Fun::ToTimestamp { .. } | Fun::ToDate { .. } | Fun::UnixTimestamp, 2) => &[Time, Text],
            (Fun::FromUnixtime, 1) => &[Seconds],
            (Fun::FromUnixtime, 2) => &[Seconds, Text],
            (Fun::Extract(_) | Fun::LastDay, 1) => &[Time],
            (Fun::DateAdd | Fun::DateSub | Fun::AddMonths, 2) => &[Time, Int],
            (Fun::DateDiff, 2) => &[Time, Time],
            (Fun::DateTrunc | Fun::DatePart, 2) => &[Text, Time],
            (Fun::Trunc, 2) => &[Time, Text],
            (Fun::UnixUnits(_), 1) => &[Timestamp],
            (Fun::FromUnits(_), 1) => &[Long],
            (Fun::UnixDate, 1) => &[Date],
            (Fun::DateFromUnixDate, 1) => &[Int],
            (Fun::MonthsBetween, 2) => &[Time, Time],
            (Fun::MonthsBetween, 3) => &[Time, Time, Bool],
            (Fun::NextDay, 2) => &[Time, Text],
            (Fun::TimestampAdd, 3) => &[Text, Long, Time],
            (Fun::TimestampDiff, 3) => &[Text, Time, Time],
            (Fun::UnixTimestamp, 0) => {
                return plan_err!(
                    "unix_timestamp() without an argument (the current time) is not supported: \
                     use unix_timestamp(now()), the batch's time"
                );
            }
            (_, n) => return plan_err!("{}: wrong number of arguments ({n})", self.name),
        };
        kinds.iter().zip(t).map(|(k, t)| coerce_arg(self.name, *k, t)).collect()
    }
    fn return_type(&self, t: &[DataType]) -> DfResult<DataType> {
        Ok(match self.fun {
            Fun::Trunc if t.first().is_some_and(DataType::is_numeric) => {
                return datafusion::functions::math::trunc().return_type(t);
            }
            Fun::DateFormat | Fun::FromUnixtime => DataType::Utf8,
            Fun::ToTimestamp { .. } | Fun::FromUnits(_) | Fun::TimestampAdd => timestamp_type(),
            Fun::ToDate { .. }
            | Fun::DateAdd
            | Fun::DateSub
            | Fun::AddMonths
            | Fun::LastDay
            | Fun::Trunc
            | Fun::DateFromUnixDate
            | Fun::NextDay => DataType::Date32,
            Fun::UnixTimestamp | Fun::UnixUnits(_) | Fun::TimestampDiff => DataType::Int64,
            Fun::Extract(_) | Fun::DateDiff | Fun::UnixDate => DataType::Int32,
            Fun::MonthsBetween => DataType::Float64,
            Fun::DatePart => return plan_err!("date_part: its type depends on the field (a constant)"),
            Fun::DateTrunc => match t.get(1) {
                Some(ts @ DataType::Timestamp(..)) => ts.clone(),
                _ => timestamp_type(),
            },
        })
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let t = if self.fun == Fun::DatePart {
            let part = extract_part(args.scalar_arguments.first().copied().flatten())?;
            let source = args.arg_fields.get(1).map(|f| f.data_type());
            if let Part::Hour | Part::Minute | Part::Second = part
                && let Some(DataType::Date32 | DataType::Date64) = source
            {
                let field = format!("{part:?}").to_uppercase();
                return plan_err!("date_part: a DATE has no {field}; cast it to TIMESTAMP first");
            }
            if part == Part::Second { DataType::Decimal128(8, 6) } else { DataType::Int32 }
        } else {
            if let Fun::TimestampAdd | Fun::TimestampDiff = self.fun {
                datetime_unit(self.fun, args.scalar_arguments.first().copied().flatten())?;
            }
            self.return_type(&args.arg_fields.iter().map(|f| f.data_type().clone()).collect::<Vec<_>>())?
        };
        Ok(Arc::new(Field::new(self.name, t, true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if self.fun == Fun::Trunc && args.arg_fields.first().is_some_and(|f| f.data_type().is_numeric()) {
            return datafusion::functions::math::trunc().invoke_with_args(args);
        }
        let ret = args.return_type().clone();
        invoke_rows(&args, |a, n| self.eval(a, n, &ret))
    }
}

impl TimeUdf {
    fn eval(&self, a: &[ColumnarValue], n: usize, ret: &DataType) -> DfResult<ArrayRef> {
        let name = self.name;
        let col = |i: usize| arg(name, a, i).and_then(|v| v.to_array(n));
        let out: ArrayRef = match self.fun {
            Fun::DateFormat => format_column(name, &micros_of(name, &col(0)?, true)?, &StrArg::new(arg(name, a, 1)?))?,
            Fun::FromUnixtime => {
                let secs = col(0)?;
                let secs = secs.as_primitive_opt::<Int64Type>().ok_or_else(|| exec(name, "expected BIGINT seconds"))?;
                let micros = secs
                    .iter()
                    .map(|s| s.map(|s| s.checked_mul(US_PER_SECOND).ok_or_else(|| exec(name, "seconds out of range"))))
                    .map(Option::transpose)
                    .collect::<DfResult<Vec<_>>>()?;
                let pattern = a.get(1).map_or_else(|| StrArg::Const(Some(DEFAULT_FORMAT.into())), StrArg::new);
                format_column(name, &micros, &pattern)?
            }
            Fun::ToTimestamp { try_ } => {
                let micros = read_micros(name, &col(0)?, a.get(1), None, try_)?;
                Arc::new(TimestampMicrosecondArray::from(micros).with_timezone(UTC))
            }
            Fun::ToDate { try_ } => {
                let values = col(0)?;
                let days: Vec<Option<i32>> = if a.len() > 1 && is_string(values.data_type()) {
                    read_micros(name, &values, a.get(1), None, try_)?.into_iter().map(|m| m.map(day_of)).collect()
                } else {
                    days_of(name, &values, !try_)?
                };
                Arc::new(Date32Array::from(days))
            }
            Fun::UnixTimestamp => {
                // Java's long division: truncated toward zero
                let micros = read_micros(name, &col(0)?, a.get(1), Some(DEFAULT_FORMAT), false)?;
                Arc::new(Int64Array::from_iter(micros.into_iter().map(|m| m.map(|m| m / US_PER_SECOND))))
            }
            Fun::Extract(part) => extract(name, part, &col(0)?)?,
            Fun::DatePart => {
                let field = match arg(name, a, 0)? {
                    ColumnarValue::Scalar(v) => Some(v),
                    ColumnarValue::Array(_) => None,
                };
                match extract_part(field)? {
                    // Spark's SecondWithFraction: seconds and microseconds as DECIMAL(8,6)
                    Part::Second => {
                        let micros = micros_of(name, &col(1)?, true)?;
                        let values =
                            micros.into_iter().map(|m| m.map(|m| i128::from(m.rem_euclid(60 * US_PER_SECOND))));
                        Arc::new(Decimal128Array::from_iter(values).with_precision_and_scale(8, 6)?)
                    }
                    part => extract(name, part, &col(1)?)?,
                }
            }
            Fun::DateAdd | Fun::DateSub | Fun::AddMonths => {
                let days = days_of(name, &col(0)?, true)?;
                let k = col(1)?;
                let k = k.as_primitive_opt::<Int32Type>().ok_or_else(|| exec(name, "expected an INT"))?;
                let out = days
                    .iter()
                    .zip(k.iter())
                    .map(|(d, k)| match (d, k) {
                        (Some(d), Some(k)) => shift(name, self.fun, *d, k).map(Some),
                        _ => Ok(None),
                    })
                    .collect::<DfResult<Vec<_>>>()?;
                Arc::new(Date32Array::from(out))
            }
            Fun::DateDiff => {
                let (end, start) = (days_of(name, &col(0)?, true)?, days_of(name, &col(1)?, true)?);
                let out = end
                    .iter()
                    .zip(&start)
                    .map(|(e, s)| match (e, s) {
                        (Some(e), Some(s)) => i32::try_from(i64::from(*e) - i64::from(*s))
                            .map(Some)
                            .map_err(|_| exec(name, "difference out of range")),
                        _ => Ok(None),
                    })
                    .collect::<DfResult<Vec<_>>>()?;
                Arc::new(Int32Array::from(out))
            }
            Fun::LastDay => {
                let days = days_of(name, &col(0)?, true)?;
                let out =
                    days.into_iter().map(|d| d.map(|d| last_day(name, d)).transpose()).collect::<DfResult<Vec<_>>>()?;
                Arc::new(Date32Array::from(out))
            }
            Fun::DateTrunc => {
                let unit = StrArg::new(arg(name, a, 0)?);
                let micros = micros_of(name, &col(1)?, true)?;
                let DataType::Timestamp(out_unit, _) = ret else {
                    return Err(exec(name, format!("unexpected return type {ret}")));
                };
                let out = micros
                    .iter()
                    .enumerate()
                    .map(|(i, m)| match (m, unit.get(i).and_then(level)) {
                        (Some(m), Some(l)) => trunc_micros(name, *m, l).and_then(|m| match out_unit {
                            TimeUnit::Second => Ok(Some(m.div_euclid(US_PER_SECOND))),
                            TimeUnit::Millisecond => Ok(Some(m.div_euclid(1_000))),
                            TimeUnit::Microsecond => Ok(Some(m)),
                            TimeUnit::Nanosecond => {
                                m.checked_mul(1_000).map(Some).ok_or_else(|| exec(name, "timestamp out of range"))
                            }
                        }),
                        _ => Ok(None),
                    })
                    .collect::<DfResult<Vec<_>>>()?;
                arrow_cast::cast(&Int64Array::from(out), ret)?
            }
            Fun::Trunc => {
                let days = days_of(name, &col(0)?, true)?;
                let unit = StrArg::new(arg(name, a, 1)?);
                let out = days
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match (d, unit.get(i).and_then(level)) {
                        (Some(d), Some(l)) if l >= Level::Week => trunc_days(name, *d, l).map(Some),
                        _ => Ok(None),
                    })
                    .collect::<DfResult<Vec<_>>>()?;
                Arc::new(Date32Array::from(out))
            }
            Fun::UnixUnits(per) => {
                let micros = micros_of(name, &col(0)?, true)?;
                Arc::new(Int64Array::from_iter(micros.into_iter().map(|m| m.map(|m| m.div_euclid(per)))))
            }
            Fun::FromUnits(per) => {
                let k = col(0)?;
                let k = k.as_primitive_opt::<Int64Type>().ok_or_else(|| exec(name, "expected a BIGINT"))?;
                let overflow = || exec(name, "[ARITHMETIC_OVERFLOW] long overflow");
                let micros = k.iter().map(|k| k.map(|k| k.checked_mul(per).ok_or_else(overflow)).transpose());
                Arc::new(TimestampMicrosecondArray::from(micros.collect::<DfResult<Vec<_>>>()?).with_timezone(UTC))
            }
            Fun::UnixDate => Arc::new(Int32Array::from(days_of(name, &col(0)?, true)?)),
            Fun::DateFromUnixDate => {
                let k = col(0)?;
                let k = k.as_primitive_opt::<Int32Type>().ok_or_else(|| exec(name, "expected an INT"))?;
                Arc::new(Date32Array::from_iter(k.iter()))
            }
            Fun::MonthsBetween => {
                let both = micros_of(name, &col(0)?, true)?.into_iter().zip(micros_of(name, &col(1)?, true)?);
                let round: Vec<Option<bool>> = match a.get(2) {
                    Some(r) => r
                        .to_array(n)?
                        .as_boolean_opt()
                        .ok_or_else(|| exec(name, "expected a BOOLEAN"))?
                        .iter()
                        .collect(),
                    None => vec![Some(true); n],
                };
                let out = rows(both.map(|(e, s)| e.zip(s)), round, |(e, s), r| months_between(name, e, s, r))?;
                Arc::new(Float64Array::from(out))
            }
            Fun::NextDay => {
                let names = StrArg::new(arg(name, a, 1)?);
                let out =
                    rows(days_of(name, &col(0)?, true)?, (0..n).map(|i| names.get(i)), |d, w| next_day(name, d, w))?;
                Arc::new(Date32Array::from(out))
            }
            Fun::TimestampAdd => {
                let unit = datetime_unit(self.fun, const_arg(a, 0))?;
                let k = col(1)?;
                let k = k.as_primitive_opt::<Int64Type>().ok_or_else(|| exec(name, "expected a BIGINT"))?;
                let out = rows(k.iter(), micros_of(name, &col(2)?, true)?, |k, m| timestamp_add(name, unit, k, m))?;
                Arc::new(TimestampMicrosecondArray::from(out).with_timezone(UTC))
            }
            Fun::TimestampDiff => {
                let unit = datetime_unit(self.fun, const_arg(a, 0))?;
                let (start, end) = (micros_of(name, &col(1)?, true)?, micros_of(name, &col(2)?, true)?);
                Arc::new(Int64Array::from(rows(start, end, |s, e| timestamp_diff(name, unit, s, e))?))
            }
        };
        Ok(out)
    }
}

/// A field of each value (cast to DATE for the date fields, to TIMESTAMP for the time fields).
fn extract(name: &str, part: Part, values: &ArrayRef) -> DfResult<ArrayRef> {
    if let Part::Hour | Part::Minute | Part::Second = part {
        let values = micros_of(name, values, true)?.into_iter().map(|m| {
            m.map(|m| {
                let s = m.div_euclid(US_PER_SECOND).rem_euclid(86_400) as i32;
                match part {
                    Part::Hour => s / 3_600,
                    Part::Minute => s / 60 % 60,
                    _ => s % 60,
                }
            })
        });
        return Ok(Arc::new(Int32Array::from_iter(values)));
    }
    let days = days_of(name, values, true)?;
    let values = days
        .into_iter()
        .map(|d| d.map(|d| date(name, d).map(|d| date_part(part, d))).transpose())
        .collect::<DfResult<Vec<_>>>()?;
    Ok(Arc::new(Int32Array::from(values)))
}

const DATE_PART: &str = "date_part";
const EXTRACT_FIELDS: &str = "YEAR (Y, YEARS, YR, YRS), YEAROFWEEK, QUARTER (QTR), MONTH (MON, MONS, MONTHS), \
    WEEK (W, WEEKS), DAY (D, DAYS), DAYOFWEEK (DOW), DAYOFWEEK_ISO (DOW_ISO), DOY, HOUR (H, HOURS, HR, HRS), \
    MINUTE (M, MIN, MINS, MINUTES), SECOND (S, SEC, SECONDS, SECS)";

/// Spark's `DatePart.parseExtractField`: `date_part`'s field, a constant string.
fn extract_part(field: Option<&ScalarValue>) -> DfResult<Part> {
    let Some(Some(field)) = field.and_then(ScalarValue::try_as_str) else {
        return plan_err!("date_part: the field must be a constant string, one of {EXTRACT_FIELDS}");
    };
    Ok(match field.to_uppercase().as_str() {
        "YEAR" | "Y" | "YEARS" | "YR" | "YRS" => Part::Year,
        "YEAROFWEEK" => Part::YearOfWeek,
        "QUARTER" | "QTR" => Part::Quarter,
        "MONTH" | "MON" | "MONS" | "MONTHS" => Part::Month,
        "WEEK" | "W" | "WEEKS" => Part::WeekOfYear,
        "DAY" | "D" | "DAYS" => Part::DayOfMonth,
        "DAYOFWEEK" | "DOW" => Part::DayOfWeek,
        "DAYOFWEEK_ISO" | "DOW_ISO" => Part::DayOfWeekIso,
        "DOY" => Part::DayOfYear,
        "HOUR" | "H" | "HOURS" | "HR" | "HRS" => Part::Hour,
        "MINUTE" | "M" | "MIN" | "MINS" | "MINUTES" => Part::Minute,
        "SECOND" | "S" | "SEC" | "SECONDS" | "SECS" => Part::Second,
        _ => {
            return plan_err!(
                "[INVALID_EXTRACT_FIELD] date_part: cannot extract '{field}'; the fields are {EXTRACT_FIELDS}"
            );
        }
    })
}

/// SQL's `EXTRACT(field FROM source)`: DataFusion's planner calls its own `date_part` directly,
/// not by name, so the analyzer swaps it for Spark's.
#[derive(Debug)]
struct SparkExtract(Arc<ScalarUDF>);

impl FunctionRewrite for SparkExtract {
    fn name(&self) -> &str {
        "spark_extract"
    }
    fn rewrite(&self, expr: Expr, _: &DFSchema, _: &ConfigOptions) -> DfResult<Transformed<Expr>> {
        Ok(match expr {
            Expr::ScalarFunction(f) if f.func.name() == DATE_PART && !Arc::ptr_eq(f.func.inner(), self.0.inner()) => {
                Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(&self.0), f.args)))
            }
            e => Transformed::no(e),
        })
    }
}

fn date_part(part: Part, d: NaiveDate) -> i32 {
    match part {
        Part::Year => d.year(),
        Part::YearOfWeek => d.iso_week().year(),
        Part::Quarter => d.month0() as i32 / 3 + 1,
        Part::Month => d.month() as i32,
        Part::DayOfMonth => d.day() as i32,
        Part::DayOfWeek => d.weekday().number_from_sunday() as i32,
        Part::DayOfWeekIso => d.weekday().number_from_monday() as i32,
        Part::Weekday => d.weekday().num_days_from_monday() as i32,
        Part::DayOfYear => d.ordinal() as i32,
        Part::WeekOfYear => d.iso_week().week() as i32,
        Part::Hour | Part::Minute | Part::Second => 0,
    }
}

/// `date_add`, `date_sub` and `add_months` (java.time's `plusMonths`: clamped to the month's end).
fn shift(name: &str, fun: Fun, d: i32, k: i32) -> DfResult<i32> {
    let overflow = || exec(name, "date out of range");
    match fun {
        Fun::DateAdd => d.checked_add(k).ok_or_else(overflow),
        Fun::DateSub => d.checked_sub(k).ok_or_else(overflow),
        _ => {
            let (day, months) = (date(name, d)?, Months::new(k.unsigned_abs()));
            let moved = if k >= 0 { day.checked_add_months(months) } else { day.checked_sub_months(months) };
            moved.map(|m| m.to_epoch_days()).ok_or_else(overflow)
        }
    }
}

fn last_day(name: &str, d: i32) -> DfResult<i32> {
    let day = date(name, d)?;
    day.with_day(1)
        .and_then(|first| first.checked_add_months(Months::new(1)))
        .and_then(|next| next.pred_opt())
        .map(|last| last.to_epoch_days())
        .ok_or_else(|| exec(name, "date out of range"))
}

/// Spark's `truncTimestamp` in UTC.
fn trunc_micros(name: &str, m: i64, level: Level) -> DfResult<i64> {
    let unit = match level {
        Level::Microsecond => 1,
        Level::Millisecond => 1_000,
        Level::Second => US_PER_SECOND,
        Level::Minute => 60 * US_PER_SECOND,
        Level::Hour => 3_600 * US_PER_SECOND,
        Level::Day => US_PER_DAY,
        _ => return Ok(i64::from(trunc_days(name, day_of(m), level)?) * US_PER_DAY),
    };
    Ok(m - m.rem_euclid(unit))
}

/// Spark's `truncDate`: weeks start on Monday.
fn trunc_days(name: &str, d: i32, level: Level) -> DfResult<i32> {
    let day = date(name, d)?;
    let first = match level {
        Level::Week => return Ok(d - day.weekday().num_days_from_monday() as i32),
        Level::Month => day.with_day(1),
        Level::Quarter => NaiveDate::from_ymd_opt(day.year(), day.month0() / 3 * 3 + 1, 1),
        Level::Year => NaiveDate::from_ymd_opt(day.year(), 1, 1),
        _ => return Ok(d),
    };
    first.map(|f| f.to_epoch_days()).ok_or_else(|| exec(name, "date out of range"))
}

/// `months_between(end, start[, roundOff])` (Spark's `DateTimeUtils.monthsBetween`): whole
/// months when both fall on the same day of the month or both on a month's last day, else a
/// 31-day month's fraction of the difference in whole seconds, rounded to 8 digits.
fn months_between(name: &str, end: i64, start: i64, round_off: bool) -> DfResult<f64> {
    let (d1, d2) = (day_of(end), day_of(start));
    let (a, b) = (date(name, d1)?, date(name, d2)?);
    let months = (a.year() - b.year()) * 12 + a.month() as i32 - b.month() as i32;
    if a.day() == b.day() || (last_day(name, d1)? == d1 && last_day(name, d2)? == d2) {
        return Ok(f64::from(months));
    }
    let seconds_of_day = |m: i64| m.rem_euclid(US_PER_DAY) / US_PER_SECOND;
    let seconds = (i64::from(a.day()) - i64::from(b.day())) * 86_400 + seconds_of_day(end) - seconds_of_day(start);
    let diff = f64::from(months) + seconds as f64 / (31.0 * 86_400.0);
    Ok(if round_off { round_half_up(diff * 1e8) / 1e8 } else { diff })
}

/// Java's `Math.round`: halves go up, toward positive infinity.
fn round_half_up(x: f64) -> f64 {
    let floor = x.floor();
    if x - floor >= 0.5 { floor + 1.0 } else { floor }
}

/// `next_day(date, dayOfWeek)`: the first later date on that day of the week, named as Spark's
/// `getDayOfWeekFromString` reads it (`MO`, `MON`, `MONDAY`, any case); another name is an error,
/// as with ANSI on.
fn next_day(name: &str, day: i32, day_of_week: &str) -> DfResult<i32> {
    let upper = day_of_week.to_uppercase();
    let target = WEEKDAYS.iter().position(|w| [2, 3, w.len()].iter().any(|&k| w[..k].eq_ignore_ascii_case(&upper)));
    let Some(target) = target else {
        return Err(exec(name, format!("[ILLEGAL_DAY_OF_WEEK] Illegal input for day of week: {day_of_week}.")));
    };
    // day 0, 1970-01-01, was a Thursday: 3 days after a Monday
    let weekday = (i64::from(day) + 3).rem_euclid(7);
    let next = i64::from(day) + 1 + (target as i64 - weekday - 1).rem_euclid(7);
    i32::try_from(next).map_err(|_| exec(name, "date out of range"))
}

const TIMESTAMPADD: &str = "timestampadd";
const TIMESTAMPDIFF: &str = "timestampdiff";

/// One of Spark's `datetimeUnit` keywords: its name, its length in µs (0 for the units counted
/// in months) and its number of months.
type DatetimeUnit = (&'static str, i64, i64);

const DATETIME_UNITS: [DatetimeUnit; 11] = [
    ("YEAR", 0, 12),
    ("QUARTER", 0, 3),
    ("MONTH", 0, 1),
    ("WEEK", 7 * US_PER_DAY, 0),
    ("DAY", US_PER_DAY, 0),
    ("DAYOFYEAR", US_PER_DAY, 0),
    ("HOUR", 3_600 * US_PER_SECOND, 0),
    ("MINUTE", 60 * US_PER_SECOND, 0),
    ("SECOND", US_PER_SECOND, 0),
    ("MILLISECOND", 1_000, 0),
    ("MICROSECOND", 1, 0),
];

/// An argument given as a constant.
fn const_arg(a: &[ColumnarValue], i: usize) -> Option<&ScalarValue> {
    match a.get(i) {
        Some(ColumnarValue::Scalar(v)) => Some(v),
        _ => None,
    }
}

/// `f` of each row's two values; NULL where either is.
fn rows<A, B, T>(
    a: impl IntoIterator<Item = Option<A>>,
    b: impl IntoIterator<Item = Option<B>>,
    f: impl Fn(A, B) -> DfResult<T>,
) -> DfResult<Vec<Option<T>>> {
    a.into_iter().zip(b).map(|pair| if let (Some(x), Some(y)) = pair { f(x, y).map(Some) } else { Ok(None) }).collect()
}

/// The unit of `timestampadd`/`timestampdiff`, a constant string (Spark's bare keyword, which
/// the SQL text gives quoted); `timestampdiff` has no `DAYOFYEAR`.
fn datetime_unit(fun: Fun, unit: Option<&ScalarValue>) -> DfResult<DatetimeUnit> {
    let name = if fun == Fun::TimestampAdd { TIMESTAMPADD } else { TIMESTAMPDIFF };
    let Some(Some(unit)) = unit.and_then(ScalarValue::try_as_str) else {
        return plan_err!("{name}: the unit must be a constant, such as MONTH");
    };
    let upper = unit.to_uppercase();
    match DATETIME_UNITS.iter().find(|u| u.0 == upper && (fun == Fun::TimestampAdd || u.0 != "DAYOFYEAR")) {
        Some(u) => Ok(*u),
        None => plan_err!(
            "[INVALID_PARAMETER_VALUE.DATETIME_UNIT] The value of parameter(s) `unit` in `{name}` is invalid: \
             expects one of the units without quotes YEAR, QUARTER, MONTH, WEEK, DAY, DAYOFYEAR, HOUR, MINUTE, \
             SECOND, MILLISECOND, MICROSECOND, but got the string literal '{unit}'"
        ),
    }
}

/// `timestampadd`: exact microseconds, or java.time's `plusMonths` (clamped to the month's end).
fn timestamp_add(name: &str, (unit, us, months): DatetimeUnit, k: i64, m: i64) -> DfResult<i64> {
    let overflow = || {
        exec(name, format!("[DATETIME_OVERFLOW] Datetime operation overflow: add {k} {unit} to the timestamp {m} µs"))
    };
    if us > 0 {
        return k.checked_mul(us).and_then(|d| m.checked_add(d)).ok_or_else(overflow);
    }
    let n = k.checked_mul(months).and_then(|n| u32::try_from(n.unsigned_abs()).ok()).ok_or_else(overflow)?;
    let t = DateTime::from_timestamp_micros(m).ok_or_else(overflow)?.naive_utc();
    let moved = if k >= 0 { t.checked_add_months(Months::new(n)) } else { t.checked_sub_months(Months::new(n)) };
    moved.map(|t| t.and_utc().timestamp_micros()).ok_or_else(overflow)
}

/// `timestampdiff` (java.time's `ChronoUnit.between` on UTC date-times): whole units, truncated
/// toward zero; a month counts once its day of the month and time of day are reached.
fn timestamp_diff(name: &str, (unit, us, _): DatetimeUnit, start: i64, end: i64) -> DfResult<i64> {
    if us > 0 {
        let units = (i128::from(end) - i128::from(start)) / i128::from(us);
        return i64::try_from(units).map_err(|_| exec(name, "[ARITHMETIC_OVERFLOW] long overflow"));
    }
    let (first, mut last) = (day_of(start), day_of(end));
    let (from, to) = (start.rem_euclid(US_PER_DAY), end.rem_euclid(US_PER_DAY));
    if last > first && to < from {
        last -= 1;
    } else if last < first && to > from {
        last += 1;
    }
    let packed =
        |d: i32| date(name, d).map(|d| (i64::from(d.year()) * 12 + i64::from(d.month0())) * 32 + i64::from(d.day()));
    let months = (packed(last)? - packed(first)?) / 32;
    Ok(match unit {
        "YEAR" => months / 12,
        "QUARTER" => months / 3,
        _ => months,
    })
}

// ---------------------------------------------------------------------------------------------
// regexp_replace, regexp_extract, rlike
// ---------------------------------------------------------------------------------------------

const REGEXP_REPLACE: &str = "regexp_replace";

/// `regexp_replace(str, regexp, rep[, position])` with Java's semantics: every match replaced
/// from the 1-based `position` on, `$1`/`${name}` group references, `\` escapes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RegexpReplaceUdf {
    signature: Signature,
    regexes: RegexCache,
}

/// The last replacement string parsed: for its pattern, its text and its parts.
type LastReplacement = (Arc<JavaRegex>, String, Arc<Result<Vec<RepPart>, String>>);

fn compile_regex(name: &str, pattern: &str) -> DfResult<Arc<JavaRegex>> {
    java_regex(pattern)
        .map(Arc::new)
        .map_err(|e| exec(name, format!("cannot use the regular expression '{pattern}': {e}")))
}

/// A function's last constant pattern, compiled: a query's pattern is usually one literal.
/// A cache, not a parameter: all are equal.
#[derive(Debug, Default)]
struct RegexCache(Mutex<Option<(String, Arc<JavaRegex>)>>);

impl PartialEq for RegexCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for RegexCache {}
impl std::hash::Hash for RegexCache {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl RegexCache {
    fn constant(&self, name: &'static str, pattern: &str) -> DfResult<Arc<JavaRegex>> {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((p, re)) = last.as_ref()
            && p == pattern
        {
            return Ok(Arc::clone(re));
        }
        let re = compile_regex(name, pattern)?;
        *last = Some((pattern.to_owned(), Arc::clone(&re)));
        Ok(re)
    }

    /// One batch's regexes: a constant pattern compiled before any row, others as they come.
    fn batch(&self, name: &'static str, pattern: &StrArg) -> DfResult<Regexes> {
        let constant = match pattern {
            StrArg::Const(Some(p)) => Some(self.constant(name, p)?),
            _ => None,
        };
        Ok(Regexes { name, constant, compiled: HashMap::new() })
    }
}

struct Regexes {
    name: &'static str,
    constant: Option<Arc<JavaRegex>>,
    compiled: HashMap<String, Arc<JavaRegex>>,
}

impl Regexes {
    fn get(&mut self, pattern: &str) -> DfResult<Arc<JavaRegex>> {
        if let Some(re) = self.constant.as_ref().or_else(|| self.compiled.get(pattern)) {
            return Ok(Arc::clone(re));
        }
        let re = compile_regex(self.name, pattern)?;
        self.compiled.insert(pattern.to_owned(), Arc::clone(&re));
        Ok(re)
    }
}

impl ScalarUDFImpl for RegexpReplaceUdf {
    fn name(&self) -> &str {
        REGEXP_REPLACE
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> DfResult<Vec<DataType>> {
        let kinds: &[Kind] = match t.len() {
            3 => &[Kind::Text, Kind::Text, Kind::Text],
            4 => &[Kind::Text, Kind::Text, Kind::Text, Kind::Int],
            n => return plan_err!("regexp_replace: expected 3 or 4 arguments, got {n}"),
        };
        kinds.iter().zip(t).map(|(k, t)| coerce_arg(REGEXP_REPLACE, *k, t)).collect()
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        invoke_rows(&args, |a, n| self.eval(a, n))
    }
}

impl RegexpReplaceUdf {
    fn eval(&self, a: &[ColumnarValue], n: usize) -> DfResult<ArrayRef> {
        let subject = arg(REGEXP_REPLACE, a, 0)?.to_array(n)?;
        let (pattern, replacement) = (StrArg::new(arg(REGEXP_REPLACE, a, 1)?), StrArg::new(arg(REGEXP_REPLACE, a, 2)?));
        let position = a.get(3).map(|p| p.to_array(n)).transpose()?;
        let position = position
            .as_ref()
            .map(|p| {
                p.as_primitive_opt::<Int32Type>().ok_or_else(|| exec(REGEXP_REPLACE, "the position must be an INT"))
            })
            .transpose()?;
        let mut regexes = self.regexes.batch(REGEXP_REPLACE, &pattern)?;
        let mut last_rep: Option<LastReplacement> = None;
        let mut out = StringBuilder::with_capacity(subject.len(), subject.len() * 16);
        let mut buf = String::new();
        for i in 0..subject.len() {
            let (Some(s), Some(p), Some(r)) = (str_at(&subject, i), pattern.get(i), replacement.get(i)) else {
                out.append_null();
                continue;
            };
            let pos = match position {
                Some(pa) if pa.is_null(i) => {
                    out.append_null();
                    continue;
                }
                Some(pa) => pa.value(i),
                None => 1,
            };
            if pos <= 0 {
                return Err(exec(REGEXP_REPLACE, format!("the position must be positive, got {pos}")));
            }
            let re = regexes.get(p)?;
            re.guard.check(s).map_err(|e| exec(REGEXP_REPLACE, format!("cannot reproduce Java's regex here: {e}")))?;
            let hit = last_rep
                .as_ref()
                .filter(|(lre, lr, _)| Arc::ptr_eq(lre, &re) && lr.as_str() == r)
                .map(|(_, _, parts)| Arc::clone(parts));
            let parts = match hit {
                Some(parts) => parts,
                None => {
                    let parts = Arc::new(java_replacement(r, &re.re));
                    last_rep = Some((Arc::clone(&re), r.to_owned(), Arc::clone(&parts)));
                    parts
                }
            };
            buf.clear();
            replace_java(&re.re, s, pos as usize, &parts, &mut buf).map_err(|e| exec(REGEXP_REPLACE, e))?;
            out.append_value(&buf);
        }
        Ok(Arc::new(out.finish()))
    }
}

/// `regexp_extract(str, regexp[, idx])` and `regexp_extract_all`: group `idx` (1 if not given)
/// of the first (of every) Java match, "" for a group that took no part.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RegexpExtractUdf {
    name: &'static str,
    all: bool,
    signature: Signature,
    regexes: RegexCache,
}

impl ScalarUDFImpl for RegexpExtractUdf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> DfResult<Vec<DataType>> {
        let kinds: &[Kind] = match t.len() {
            2 => &[Kind::Text, Kind::Text],
            3 => &[Kind::Text, Kind::Text, Kind::Int],
            n => return plan_err!("{}: expected 2 or 3 arguments, got {n}", self.name),
        };
        kinds.iter().zip(t).map(|(k, t)| coerce_arg(self.name, *k, t)).collect()
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(if self.all { DataType::new_list(DataType::Utf8, true) } else { DataType::Utf8 })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        invoke_rows(&args, |a, n| self.eval(a, n))
    }
}

impl RegexpExtractUdf {
    fn eval(&self, a: &[ColumnarValue], n: usize) -> DfResult<ArrayRef> {
        let name = self.name;
        let subject = arg(name, a, 0)?.to_array(n)?;
        let pattern = StrArg::new(arg(name, a, 1)?);
        let idx = a.get(2).map(|i| i.to_array(n)).transpose()?;
        let idx = idx
            .as_ref()
            .map(|i| i.as_primitive_opt::<Int32Type>().ok_or_else(|| exec(name, "the group index must be an INT")))
            .transpose()?;
        let mut regexes = self.regexes.batch(name, &pattern)?;
        let (mut one, mut all) = (StringBuilder::new(), ListBuilder::new(StringBuilder::new()));
        for i in 0..subject.len() {
            let group = match idx {
                Some(g) if g.is_null(i) => None,
                Some(g) => Some(g.value(i)),
                None => Some(1),
            };
            let (Some(s), Some(p), Some(group)) = (str_at(&subject, i), pattern.get(i), group) else {
                if self.all {
                    all.append_null()
                } else {
                    one.append_null()
                }
                continue;
            };
            let re = regexes.get(p)?;
            re.guard.check(s).map_err(|e| exec(name, format!("cannot reproduce Java's regex here: {e}")))?;
            let found = extract_java(&re.re, s, group, self.all).map_err(|e| exec(name, e))?;
            if self.all {
                all.values().extend(found.into_iter().map(Some));
                all.append(true);
            } else {
                one.append_value(found.first().copied().unwrap_or_default());
            }
        }
        if self.all {
            return Ok(Arc::new(all.finish()));
        }
        Ok(Arc::new(one.finish()))
    }
}

const RLIKE: &str = "rlike";

/// `rlike(str, regexp)` (Spark's `str RLIKE regexp`; also `regexp_like` and `regexp`): whether
/// the Java regex matches anywhere in `str` (`Matcher.find`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct RlikeUdf {
    aliases: Vec<String>,
    signature: Signature,
    regexes: RegexCache,
}

impl ScalarUDFImpl for RlikeUdf {
    fn name(&self) -> &str {
        RLIKE
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, t: &[DataType]) -> DfResult<Vec<DataType>> {
        if t.len() != 2 {
            return plan_err!("rlike: expected 2 arguments, got {}", t.len());
        }
        t.iter().map(|t| coerce_arg(RLIKE, Kind::Text, t)).collect()
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        invoke_rows(&args, |a, n| self.eval(a, n))
    }
}

impl RlikeUdf {
    fn eval(&self, a: &[ColumnarValue], n: usize) -> DfResult<ArrayRef> {
        let subject = arg(RLIKE, a, 0)?.to_array(n)?;
        let pattern = StrArg::new(arg(RLIKE, a, 1)?);
        let mut regexes = self.regexes.batch(RLIKE, &pattern)?;
        let out = (0..subject.len())
            .map(|i| -> DfResult<Option<bool>> {
                let (Some(s), Some(p)) = (str_at(&subject, i), pattern.get(i)) else { return Ok(None) };
                let re = regexes.get(p)?;
                re.guard.check(s).map_err(|e| exec(RLIKE, format!("cannot reproduce Java's regex here: {e}")))?;
                Ok(Some(re.re.is_match(s)))
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok(Arc::new(BooleanArray::from(out)))
    }
}

/// Group `group` of the first (`all`: of every) match, as Spark reads Java's `Matcher.find`: ""
/// for a group that took no part; after an empty match the search moves one character on. As
/// in Spark, the index is checked only once something matches.
fn extract_java<'s>(re: &Regex, s: &'s str, group: i32, all: bool) -> Result<Vec<&'s str>, String> {
    let groups = re.captures_len() - 1;
    let mut locs = re.capture_locations();
    let (mut found, mut at) = (Vec::new(), 0);
    while at <= s.len() {
        let Some(m) = re.captures_read_at(&mut locs, s, at) else { break };
        let g = usize::try_from(group).ok().filter(|g| *g <= groups).ok_or_else(|| {
            let class = "INVALID_PARAMETER_VALUE.REGEX_GROUP_INDEX";
            format!("[{class}] Expects group index between 0 and {groups}, but got {group}")
        })?;
        found.push(locs.get(g).map_or("", |(a, b)| &s[a..b]));
        if !all {
            break;
        }
        at = m.end();
        if m.is_empty() {
            at += s[at..].chars().next().map_or(1, char::len_utf8);
        }
    }
    Ok(found)
}

/// A Java regular expression translated for the `regex` crate.
#[derive(Debug)]
struct JavaRegex {
    re: Regex,
    guard: Guard,
}

/// The strings a translation cannot be trusted on, refused rather than answered differently:
/// Java's `$` (and `^` in multi-line mode) treats a trailing line terminator specially, Java
/// knows `\r`, `\u0085`, `\u2028` and `\u2029` as line terminators besides `\n`, and Java's
/// case-insensitive matching and `\b` differ from the regex crate's beyond ASCII.
#[derive(Debug, Default, Clone, Copy)]
struct Guard {
    trailing_terminator: bool,
    terminators: bool,
    ascii: bool,
}

impl Guard {
    fn check(&self, s: &str) -> Result<(), String> {
        const TERMINATORS: [char; 5] = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
        if self.trailing_terminator && s.ends_with(TERMINATORS) {
            return Err("Java's `$` also matches before a final line terminator".into());
        }
        if self.terminators && s.contains(&TERMINATORS[1..]) {
            return Err("Java reads \\r, \\u0085, \\u2028 and \\u2029 as line terminators".into());
        }
        if self.ascii && !s.is_ascii() {
            return Err("Java's (?i) and \\b differ from the regex crate's on non-ASCII text".into());
        }
        Ok(())
    }
}

/// What the translation met, for the [`Guard`].
#[derive(Default)]
struct Seen {
    dot: bool,
    dollar: bool,
    caret: bool,
    word: bool,
    i: bool,
    m: bool,
    s: bool,
    u: bool,
}

/// Translates a Java regex: ASCII `\d \w \s` (Java's defaults), Java's `.`, `\Q..\E`, `\e`,
/// `\cX`, octal and POSIX `\p{..}` classes; refuses what the regex crate lacks or reads otherwise.
fn java_regex(pattern: &str) -> Result<JavaRegex, String> {
    let cs: Vec<char> = pattern.chars().collect();
    // is DOTALL set anywhere (then `.` is left as it is and the guard watches line terminators)
    let flag_letters = |k: usize| cs[k..].iter().take_while(|c| c.is_ascii_alphabetic() || **c == '-');
    let flag_group = |k: usize| cs[k] == '(' && cs[k + 1] == '?' && flag_letters(k + 2).any(|c| *c == 's');
    let dotall = (0..cs.len().saturating_sub(1)).any(flag_group);
    let mut seen = Seen { s: dotall, ..Seen::default() };
    let mut out = String::with_capacity(pattern.len() + 16);
    let (mut class, mut quantified, mut i) = (0_usize, false, 0_usize);
    while let Some(&c) = cs.get(i) {
        i += 1;
        let after_quantifier = std::mem::take(&mut quantified);
        if class > 0 {
            match c {
                '\\' => i = escape(&cs, i, &mut out, &mut seen)?,
                '[' => i = open_class(&cs, i, &mut out, &mut class)?,
                ']' => {
                    class -= 1;
                    out.push(']');
                }
                '-' | '~' if cs.get(i) == Some(&c) => {
                    return Err(format!("'{c}{c}' in a character class means different things in Java and Rust"));
                }
                _ => out.push(c),
            }
            continue;
        }
        match c {
            '\\' => i = escape(&cs, i, &mut out, &mut seen)?,
            '[' => i = open_class(&cs, i, &mut out, &mut class)?,
            '.' => {
                seen.dot = true;
                out.push_str(if seen.s { "." } else { "[^\\n\\r\\x{85}\\x{2028}\\x{2029}]" });
            }
            '$' => {
                seen.dollar = true;
                out.push('$');
            }
            '^' => {
                seen.caret = true;
                out.push('^');
            }
            '(' if cs.get(i) == Some(&'?') => i = group(&cs, i + 1, &mut out, &mut seen)?,
            '+' if after_quantifier => return Err("possessive quantifiers (such as `*+`) are not supported".into()),
            '?' if after_quantifier => out.push('?'),
            '*' | '+' | '?' => {
                out.push(c);
                quantified = true;
            }
            '{' => {
                if cs.get(i) == Some(&',') {
                    return Err("`{,n}` is not a Java quantifier".into());
                }
                out.push('{');
                while let Some(&d) = cs.get(i) {
                    i += 1;
                    out.push(d);
                    if d == '}' {
                        break;
                    }
                }
                quantified = true;
            }
            _ => out.push(c),
        }
    }
    let re = Regex::new(&out).map_err(|e| e.to_string())?;
    let guard = Guard {
        trailing_terminator: seen.dollar || (seen.caret && seen.m),
        terminators: (seen.m && (seen.dollar || seen.caret)) || (seen.dot && seen.s),
        ascii: (seen.i && !seen.u) || seen.word,
    };
    Ok(JavaRegex { re, guard })
}

/// `[` (at `i`, just after it): Java's nested classes are the regex crate's, but `[:` would be
/// read as a POSIX class and a leading `]` as a literal.
fn open_class(cs: &[char], mut i: usize, out: &mut String, depth: &mut usize) -> Result<usize, String> {
    out.push('[');
    *depth += 1;
    if cs.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    match cs.get(i) {
        Some(']') => Err("a ']' right after '[' is read differently by Java and the regex crate: escape it".into()),
        Some(':') => {
            out.push_str("\\:");
            Ok(i + 1)
        }
        _ => Ok(i),
    }
}

/// A backslash escape, `i` just after the backslash; returns the index after the escape.
fn escape(cs: &[char], i: usize, out: &mut String, seen: &mut Seen) -> Result<usize, String> {
    let Some(&c) = cs.get(i) else { return Err("the pattern ends with a lone backslash".into()) };
    let mut next = i + 1;
    match c {
        'd' => out.push_str("[0-9]"),
        'D' => out.push_str("[^0-9]"),
        'w' => out.push_str("[0-9A-Za-z_]"),
        'W' => out.push_str("[^0-9A-Za-z_]"),
        's' => out.push_str("[\\t\\n\\x0B\\x0C\\r\\x20]"),
        'S' => out.push_str("[^\\t\\n\\x0B\\x0C\\r\\x20]"),
        'b' | 'B' if cs.get(next) == Some(&'{') => return Err(format!("\\{c}{{...}} is not supported")),
        'b' | 'B' => {
            seen.word = true;
            out.push('\\');
            out.push(c);
        }
        't' | 'n' | 'r' | 'f' | 'a' | 'A' | 'z' => {
            out.push('\\');
            out.push(c);
        }
        'x' | 'u' => {
            // `\xhh`, `\x{h..h}`, `\uhhhh`: copied whole so that `{` is not read as a quantifier
            let len = match cs.get(next) {
                Some('{') => cs[next..].iter().position(|d| *d == '}').map_or(cs.len() - next, |p| p + 1),
                _ if c == 'x' => 2,
                _ => 4,
            };
            out.push('\\');
            out.push(c);
            out.extend(cs.iter().skip(next).take(len));
            next = (next + len).min(cs.len());
        }
        'e' => out.push_str("\\x1B"),
        'c' => {
            let x = cs.get(next).ok_or("\\c needs a character")?;
            next += 1;
            let _ = write!(out, "\\x{{{:X}}}", u32::from(*x) ^ 64);
        }
        '0' => {
            let mut v = 0;
            while let Some(d) = cs.get(next).and_then(|d| d.to_digit(8))
                && next - i <= 3
                && v * 8 + d <= 0o377
            {
                v = v * 8 + d;
                next += 1;
            }
            if next == i + 1 {
                return Err("illegal octal escape \\0".into());
            }
            let _ = write!(out, "\\x{{{v:X}}}");
        }
        '1'..='9' | 'k' => return Err("back-references are not supported (the regex crate has none)".into()),
        'Q' => {
            let end = (next..cs.len()).find(|&k| cs[k] == '\\' && cs.get(k + 1) == Some(&'E')).unwrap_or(cs.len());
            out.push_str(&regex::escape(&cs[next..end].iter().collect::<String>()));
            next = (end + 2).min(cs.len());
        }
        'p' | 'P' => {
            let name: String = match cs.get(next) {
                Some('{') => cs[next + 1..].iter().take_while(|d| **d != '}').collect(),
                Some(d) => d.to_string(),
                None => return Err(format!("\\{c} needs a class name")),
            };
            next = (next + if cs.get(next) == Some(&'{') { name.chars().count() + 2 } else { 1 }).min(cs.len());
            out.push_str(&unicode_class(&name, c == 'P')?);
        }
        c if c.is_ascii_alphanumeric() => {
            return Err(format!("\\{c} is not supported (the regex crate lacks it or reads it differently)"));
        }
        '<' | '>' => out.push(c),
        c if c.is_ascii() => {
            out.push('\\');
            out.push(c);
        }
        c => out.push(c),
    }
    Ok(next)
}

const GENERAL_CATEGORIES: &[&str] = &[
    "L", "Lu", "Ll", "Lt", "Lm", "Lo", "LC", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No", "P", "Pc", "Pd", "Ps", "Pe",
    "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So", "Z", "Zs", "Zl", "Zp", "C", "Cc", "Cf", "Co", "Cs", "Cn",
];

/// Java's `\p{name}`: POSIX names are ASCII classes, general categories and scripts are Unicode.
fn unicode_class(name: &str, negated: bool) -> Result<String, String> {
    let posix = match name {
        "Lower" => "lower",
        "Upper" => "upper",
        "ASCII" => "ascii",
        "Alpha" => "alpha",
        "Digit" => "digit",
        "Alnum" => "alnum",
        "Punct" => "punct",
        "Graph" => "graph",
        "Print" => "print",
        "Blank" => "blank",
        "Cntrl" => "cntrl",
        "XDigit" => "xdigit",
        "Space" => "space",
        _ => "",
    };
    if !posix.is_empty() {
        return Ok(format!("[{}[:{posix}:]]", if negated { "^" } else { "" }));
    }
    let p = if negated { 'P' } else { 'p' };
    let category = ["Is", "gc=", "general_category="].iter().find_map(|x| name.strip_prefix(x)).unwrap_or(name);
    if GENERAL_CATEGORIES.contains(&category) {
        return Ok(format!("\\{p}{{{category}}}"));
    }
    match ["Is", "sc=", "script="].iter().find_map(|x| name.strip_prefix(x)) {
        Some(script) if !script.is_empty() && script.chars().all(|c| c.is_ascii_alphabetic() || c == '_') => {
            Ok(format!("\\{p}{{sc={script}}}"))
        }
        _ => Err(format!("the class \\{p}{{{name}}} is not supported")),
    }
}

/// `(?` constructs, `i` just after the `?`.
fn group(cs: &[char], i: usize, out: &mut String, seen: &mut Seen) -> Result<usize, String> {
    match (cs.get(i), cs.get(i + 1)) {
        (Some(':'), _) => {
            out.push_str("(?:");
            Ok(i + 1)
        }
        (Some('=' | '!'), _) | (Some('<'), Some('=' | '!')) => {
            Err("look-around assertions are not supported (the regex crate has none)".into())
        }
        (Some('>'), _) => Err("atomic groups are not supported".into()),
        (Some('<'), _) => {
            out.push_str("(?<");
            Ok(i + 1)
        }
        (Some(&c), _) if c.is_ascii_alphabetic() || c == '-' => {
            let (mut flags, mut k) = (String::new(), i);
            while let Some(&f) = cs.get(k) {
                match f {
                    ')' | ':' => break,
                    'i' => seen.i = true,
                    'm' => seen.m = true,
                    's' | 'x' | '-' => {}
                    // Java's UNICODE_CASE: the regex crate's case folding is always Unicode
                    'u' => seen.u = true,
                    'd' => return Err("the UNIX_LINES flag (?d) is not supported".into()),
                    'U' => return Err("the UNICODE_CHARACTER_CLASS flag (?U) is not supported".into()),
                    other => return Err(format!("unknown inline flag '{other}'")),
                }
                if f != 'u' {
                    flags.push(f);
                }
                k += 1;
            }
            let end = *cs.get(k).ok_or("unterminated inline flags")?;
            let flags = flags.trim_end_matches('-');
            if flags.chars().any(|f| f != '-') {
                let _ = write!(out, "(?{flags}{end}");
            } else if end == ':' {
                out.push_str("(?:");
            }
            Ok(k + 1)
        }
        _ => Err("unsupported group syntax after '(?'".into()),
    }
}

/// A piece of a Java replacement string.
#[derive(Debug, Clone, PartialEq)]
enum RepPart {
    Lit(String),
    Group(usize),
}

/// Reads a Java replacement (`$1`, `${name}`, `\$`) as `Matcher.appendReplacement` does; as in
/// Java its errors only matter once something matches.
fn java_replacement(rep: &str, re: &Regex) -> Result<Vec<RepPart>, String> {
    let groups = re.captures_len() - 1;
    let cs: Vec<char> = rep.chars().collect();
    let (mut parts, mut lit, mut i) = (Vec::new(), String::new(), 0);
    while let Some(&c) = cs.get(i) {
        i += 1;
        match c {
            '\\' => {
                lit.push(*cs.get(i).ok_or("character to be escaped is missing")?);
                i += 1;
            }
            '$' => {
                let group = match cs.get(i) {
                    None => return Err("Illegal group reference: group index is missing".into()),
                    Some('{') => {
                        let name: String = cs[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric()).collect();
                        i += 1 + name.len();
                        if name.is_empty() {
                            return Err("named capturing group has 0 length name".into());
                        }
                        if cs.get(i) != Some(&'}') {
                            return Err("named capturing group is missing trailing '}'".into());
                        }
                        i += 1;
                        if name.starts_with(|c: char| c.is_ascii_digit()) {
                            return Err(format!("capturing group name {{{name}}} starts with digit character"));
                        }
                        let no_group = || format!("No group with name {{{name}}}");
                        re.capture_names().position(|n| n == Some(name.as_str())).ok_or_else(no_group)?
                    }
                    Some(d) => {
                        let mut g = d.to_digit(10).ok_or("Illegal group reference")? as usize;
                        i += 1;
                        if g > groups {
                            return Err(format!("No group {g}"));
                        }
                        // Java takes more digits while they still name a group
                        while let Some(d) = cs.get(i).and_then(|d| d.to_digit(10)) {
                            let longer = g * 10 + d as usize;
                            if longer > groups {
                                break;
                            }
                            (g, i) = (longer, i + 1);
                        }
                        g
                    }
                };
                if !lit.is_empty() {
                    parts.push(RepPart::Lit(std::mem::take(&mut lit)));
                }
                parts.push(RepPart::Group(group));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(RepPart::Lit(lit));
    }
    Ok(parts)
}

/// The byte offset of UTF-16 index `at` in `s`: None past the end; an error inside a surrogate pair.
fn utf16_offset(s: &str, at: usize) -> Result<Option<usize>, String> {
    let mut units = 0;
    for (b, c) in s.char_indices() {
        if units == at {
            return Ok(Some(b));
        }
        units += c.len_utf16();
        if units > at {
            return Err(format!("the position {} falls inside a surrogate pair", at + 1));
        }
    }
    Ok((units == at).then_some(s.len()))
}

/// Spark's `regexp_replace` with Java's `Matcher`: the search starts at the 1-based UTF-16
/// `position` (anchors match there; the text before is kept), and after an empty match the next
/// search starts one character on, so an empty match right after a match counts, as in Java.
fn replace_java(
    re: &Regex,
    s: &str,
    position: usize,
    rep: &Result<Vec<RepPart>, String>,
    out: &mut String,
) -> Result<(), String> {
    let start = match position.saturating_sub(1) {
        0 => 0,
        p => match utf16_offset(s, p)? {
            Some(b) if b < s.len() => b,
            _ => {
                out.push_str(s);
                return Ok(());
            }
        },
    };
    let (head, hay) = s.split_at(start);
    out.push_str(head);
    let groups = rep.as_ref().is_ok_and(|parts| parts.iter().any(|p| matches!(p, RepPart::Group(_))));
    let mut locs = re.capture_locations();
    let (mut copied, mut at) = (0, 0);
    while at <= hay.len() {
        let found = if groups { re.captures_read_at(&mut locs, hay, at) } else { re.find_at(hay, at) };
        let Some(m) = found else { break };
        out.push_str(&hay[copied..m.start()]);
        for part in rep.as_ref().map_err(Clone::clone)? {
            match part {
                RepPart::Lit(l) => out.push_str(l),
                RepPart::Group(g) => {
                    if let Some((a, b)) = locs.get(*g) {
                        out.push_str(&hay[a..b]);
                    }
                }
            }
        }
        copied = m.end();
        at = m.end();
        if m.start() == m.end() {
            at += hay[at..].chars().next().map_or(1, char::len_utf8);
        }
    }
    out.push_str(&hay[copied..]);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails loudly on a wrong answer")]
mod tests {
    use super::*;

    /// 2024-02-29 13:45:30.123 UTC, a Thursday (the fixture's first row).
    const LEAP: i64 = 1_709_214_330_123_000;
    /// 2024-03-02 00:00:00 UTC, a Saturday.
    const MIDNIGHT: i64 = 1_709_337_600_000_000;
    /// 1969-12-31 23:59:59.999 UTC.
    const BEFORE_EPOCH: i64 = -1_000;

    fn fmt(micros: i64, pattern: &str) -> String {
        let mut out = String::new();
        format_micros(micros, &compile(pattern, false).unwrap(), &mut out).unwrap();
        out
    }

    fn parse(s: &str, pattern: &str) -> Result<i64, Failure> {
        parse_micros(&compile(pattern, true).unwrap(), s)
    }

    fn days(y: i32, m: u32, d: u32) -> i32 {
        NaiveDate::from_ymd_opt(y, m, d).unwrap().to_epoch_days()
    }

    /// The values Spark 4 gives (tests/fixtures/spark/time_functions.json) for each letter family.
    #[test]
    fn date_format_letter_families_match_spark() {
        for (pattern, want) in [
            ("yyyy-MM-dd'T'HH:mm:ss.SSS", "2024-02-29T13:45:30.123"),
            ("G y yy yyy yyyy yyyyy", "AD 2024 24 2024 2024 02024"),
            ("M MM MMM MMMM L LLL", "2 02 Feb February 2 Feb"),
            ("d dd D DD DDD F", "29 29 60 60 060 1"),
            ("Q QQ QQQ QQQQ", "1 01 Q1 1st quarter"),
            ("E EEE EEEE", "Thu Thu Thursday"),
            ("a h hh K k H HH", "PM 1 01 1 13 13 13"),
            ("m mm s ss S SS SSSSSS", "45 45 30 30 1 12 123000"),
            ("VV z zzzz O", "UTC UTC Coordinated Universal Time GMT"),
            ("X XXX x xxx Z ZZZZ ZZZZZ", "Z Z +00 +00:00 +0000 GMT Z"),
            ("'literal' '' 'o''clock' [yyyy]", "literal ' o'clock 2024"),
        ] {
            assert_eq!(fmt(LEAP, pattern), want, "{pattern}");
        }
        assert_eq!(fmt(MIDNIGHT, "hh:mm a k K"), "12:00 AM 24 0");
        assert_eq!(fmt(MIDNIGHT, "M/d/y H:m:s"), "3/2/2024 0:0:0");
        assert_eq!(fmt(BEFORE_EPOCH, "yyyy-MM-dd HH:mm:ss.SSS EEEE"), "1969-12-31 23:59:59.999 Wednesday");
    }

    #[test]
    fn refused_patterns_name_the_letter() {
        for (pattern, letter) in [
            ("'week' w", ": w"),
            ("YYYY", ": Y"),
            ("u", ": u"),
            ("e", ": e"),
            ("W", ": W"),
            ("MMMMM", "MMMMM"),
            ("EEEEE", "EEEEE"),
            ("yyyyyyy", "yyyyyyy"),
            ("A", ": A"),
            ("ddd", "ddd"),
            ("t", ": t"),
        ] {
            let err = compile(pattern, false).unwrap_err();
            assert!(err.contains(letter), "{pattern}: {err}");
        }
        assert!(compile("'week' w", false).unwrap_err().contains("week-based"));
        assert!(compile("EEE", true).is_err(), "E cannot be parsed");
        assert!(compile("'unterminated", false).is_err());
    }

    #[test]
    fn parsing_round_trips_and_fails_like_java() {
        for pattern in [
            "yyyy-MM-dd HH:mm:ss.SSS",
            "dd/MM/yyyy hh:mm:ss.SSSSSS a",
            "MMMM d, yyyy 'at' HH:mm:ss.SSS XXX",
            "D yyyy HH:mm:ss.SSS",
        ] {
            let text = fmt(LEAP, pattern);
            assert_eq!(parse(&text, pattern).ok(), Some(LEAP), "{pattern}: {text}");
        }
        assert_eq!(parse("20240229134530", "yyyyMMddHHmmss").ok(), Some(LEAP - 123_000));
        assert_eq!(parse("2024-02-29 13:45:30", "yyyy-MM-dd HH:mm:ss[.SSS]").ok(), Some(LEAP - 123_000));
        assert_eq!(parse("29 FEB 24 2:45 pm +0100", "dd MMM yy h:mm a Z").ok(), Some(1_709_214_300_000_000));
        assert_eq!(parse("02-29-2024", "MM-dd-yyyy").ok(), Some(i64::from(days(2024, 2, 29)) * US_PER_DAY));
        let unparsed = parse("2024-02-29 13:45:30.123", "yyyy-MM-dd HH:mm:ss");
        assert!(matches!(unparsed, Err(Failure::NoMatch(why)) if why == ", unparsed text found at index 19"));
        assert!(matches!(parse("2024-02-30", "yyyy-MM-dd"), Err(Failure::NoMatch(_))));
        assert!(matches!(parse("2024-1-05", "yyyy-MM-dd"), Err(Failure::NoMatch(_))));
        assert!(matches!(parse("10:00 PST", "HH:mm z"), Err(Failure::Refused(_))));
    }

    #[test]
    fn strings_cast_like_spark() {
        assert_eq!(cast_micros(" 2024-02-29 13:45:30.123 ").ok(), Some(LEAP));
        assert_eq!(cast_micros("2024-02-29T14:45:30.123+01:00").ok(), Some(LEAP));
        assert_eq!(cast_micros("2024-02-29 13:45:30.123Z").ok(), Some(LEAP));
        assert_eq!(cast_micros("2024-02-29 13:45:30.123 UTC").ok(), Some(LEAP));
        assert_eq!(cast_micros("2024-03-02").ok(), Some(MIDNIGHT));
        assert_eq!(cast_micros("2024-3-2 0:0").ok(), Some(MIDNIGHT));
        assert!(matches!(cast_micros("2024-02-30 10:00:00"), Err(Failure::NoMatch(_))));
        assert!(matches!(cast_micros("10:00:00"), Err(Failure::Refused(_))));
        assert!(matches!(cast_micros("2024-01-01 10:00:00 Europe/Paris"), Err(Failure::Refused(_))));
        assert_eq!(cast_days("2021-01-03 06:07:08.009").ok(), Some(18_630));
        assert_eq!(cast_days("2024-02-29T anything").ok(), Some(19_782));
        assert!(matches!(cast_days("2024-02-29x"), Err(Failure::NoMatch(_))));
    }

    #[test]
    fn day_of_week_numbering_and_iso_weeks() {
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
        assert_eq!(date_part(Part::DayOfWeek, d(2023, 12, 31)), 1, "Sunday is 1");
        assert_eq!(date_part(Part::DayOfWeek, d(2024, 3, 2)), 7, "Saturday is 7");
        assert_eq!(date_part(Part::DayOfWeek, d(2024, 2, 29)), 5);
        assert_eq!(date_part(Part::Weekday, d(2024, 12, 30)), 0, "weekday: Monday is 0");
        assert_eq!(date_part(Part::Weekday, d(2023, 12, 31)), 6);
        assert_eq!(date_part(Part::WeekOfYear, d(2021, 1, 3)), 53);
        assert_eq!(date_part(Part::WeekOfYear, d(2024, 12, 30)), 1);
        assert_eq!(date_part(Part::Quarter, d(2024, 12, 30)), 4);
    }

    /// `date_part`'s fields by every alias, then their values on (2021-01-03 06:07:08.009, a
    /// Sunday in ISO week 53 of 2020; `LEAP`, a Thursday; `BEFORE_EPOCH`, in ISO week 1 of 1970).
    #[test]
    fn date_part_fields_match_spark() {
        for (aliases, want) in [
            ("YEAR y Years yr YRS", Part::Year),
            ("yearofweek", Part::YearOfWeek),
            ("QUARTER qtr", Part::Quarter),
            ("MONTH mon MONS months", Part::Month),
            ("WEEK w weeks", Part::WeekOfYear),
            ("DAY d days", Part::DayOfMonth),
            ("DAYOFWEEK dow", Part::DayOfWeek),
            ("DAYOFWEEK_ISO dow_iso", Part::DayOfWeekIso),
            ("doy", Part::DayOfYear),
            ("HOUR h hours hr hrs", Part::Hour),
            ("MINUTE m min mins minutes", Part::Minute),
            ("SECOND s sec seconds secs", Part::Second),
        ] {
            for f in aliases.split(' ') {
                assert_eq!(extract_part(Some(&ScalarValue::from(f))).unwrap(), want, "{f}");
            }
        }
        let err = extract_part(Some(&ScalarValue::from("decade"))).unwrap_err().to_string();
        assert!(err.contains("INVALID_EXTRACT_FIELD") && err.contains("'decade'") && err.contains("DOW_ISO"), "{err}");
        assert!(extract_part(Some(&ScalarValue::Utf8(None))).is_err());
        assert!(extract_part(None).is_err(), "the field must be a constant");

        let sunday = 1_609_654_028_009_000;
        let times: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![Some(sunday), Some(LEAP), Some(BEFORE_EPOCH), None])
                .with_timezone(UTC),
        );
        for (part, want) in [
            (Part::Year, [2021, 2024, 1969]),
            (Part::YearOfWeek, [2020, 2024, 1970]),
            (Part::Quarter, [1, 1, 4]),
            (Part::Month, [1, 2, 12]),
            (Part::WeekOfYear, [53, 9, 1]),
            (Part::DayOfMonth, [3, 29, 31]),
            (Part::DayOfWeek, [1, 5, 4]),
            (Part::DayOfWeekIso, [7, 4, 3]),
            (Part::DayOfYear, [3, 60, 365]),
            (Part::Hour, [6, 13, 23]),
            (Part::Minute, [7, 45, 59]),
        ] {
            let got = extract("date_part", part, &times).unwrap();
            let got: Vec<Option<i32>> = got.as_primitive::<Int32Type>().iter().collect();
            assert_eq!(got, want.map(Some).into_iter().chain([None]).collect::<Vec<_>>(), "{part:?}");
        }
        let dates: ArrayRef = Arc::new(Date32Array::from(vec![days(2021, 1, 3), days(2024, 12, 30)]));
        let got = extract("date_part", Part::YearOfWeek, &dates).unwrap();
        assert_eq!(got.as_primitive::<Int32Type>().values().to_vec(), [2020, 2025]);

        let udf = TimeUdf {
            fun: Fun::DatePart,
            name: DATE_PART,
            aliases: vec![],
            signature: Signature::user_defined(Volatility::Immutable),
        };
        let args = [ColumnarValue::Scalar(ScalarValue::from("Secs")), ColumnarValue::Array(times)];
        let secs = udf.eval(&args, 4, &DataType::Decimal128(8, 6)).unwrap();
        assert_eq!(secs.data_type(), &DataType::Decimal128(8, 6));
        let shown: Vec<String> =
            (0..3).map(|i| arrow_cast::display::array_value_to_string(&secs, i).unwrap()).collect();
        assert_eq!(shown, ["8.009000", "30.123000", "59.999000"]);
        assert!(secs.is_null(3));
    }

    #[test]
    fn add_months_clamps_to_the_month_end() {
        assert_eq!(shift("add_months", Fun::AddMonths, days(2024, 1, 31), 1).unwrap(), days(2024, 2, 29));
        assert_eq!(shift("add_months", Fun::AddMonths, days(2024, 3, 31), -1).unwrap(), days(2024, 2, 29));
        assert_eq!(shift("add_months", Fun::AddMonths, days(2024, 2, 29), 12).unwrap(), days(2025, 2, 28));
        assert_eq!(shift("date_sub", Fun::DateSub, days(2024, 3, 1), 1).unwrap(), days(2024, 2, 29));
        assert_eq!(last_day("last_day", days(2024, 2, 10)).unwrap(), days(2024, 2, 29));
    }

    #[test]
    fn truncation_weeks_start_on_monday() {
        let sunday = 1_704_067_199_999_000; // 2023-12-31 23:59:59.999
        // Monday 2023-12-25
        assert_eq!(trunc_micros("date_trunc", sunday, Level::Week).unwrap(), 1_703_462_400_000_000);
        assert_eq!(trunc_micros("date_trunc", BEFORE_EPOCH, Level::Second).unwrap(), -US_PER_SECOND);
        assert_eq!(trunc_micros("date_trunc", LEAP, Level::Quarter).unwrap(), 1_704_067_200_000_000);
        assert_eq!(trunc_days("trunc", days(2024, 3, 2), Level::Week).unwrap(), days(2024, 2, 26));
        assert_eq!(level("week"), Some(Level::Week));
        assert_eq!(level("DECADE"), None);
    }

    fn unit(fun: Fun, u: &str) -> DatetimeUnit {
        datetime_unit(fun, Some(&ScalarValue::from(u))).unwrap()
    }

    /// The fixture's eight rows (tests/fixtures/spark/time_functions.json): Spark 4's answers for
    /// `months_between`, `next_day`, `timestampadd(MONTH, ..)` and `timestampdiff(SECOND, ..)`.
    #[test]
    fn fixture_rows_match_spark() {
        let ts: Vec<i64> = "2024-02-29 13:45:30.123,2023-12-31 23:59:59.999,1969-07-20 20:17:40,2024-03-02 00:00:00,\
                            2024-01-31 12:00:00.500,2021-01-03 06:07:08.009,1969-12-31 23:59:59.999,2024-12-30 12:30:00"
            .split(',')
            .map(|s| cast_micros(s).unwrap())
            .collect();
        let dates = |list: &str| list.split(',').map(|s| cast_days(s).unwrap()).collect::<Vec<_>>();
        let d = dates("2024-02-29,2023-12-31,1969-07-20,2024-03-02,2024-01-31,2021-01-01,1969-12-31,2024-12-30");
        let d2 = dates("2024-03-31,2024-01-01,1970-01-01,2024-02-02,2023-01-31,2020-12-31,1900-03-01,2025-01-05");
        let at = |d: i32| i64::from(d) * US_PER_DAY;
        let by_row = |f: &dyn Fn(usize) -> f64| (0..8).map(f).collect::<Vec<_>>();
        let between = by_row(&|i| months_between("m", at(d2[i]), at(d[i]), true).unwrap());
        assert_eq!(between, [1.0, 0.03225806, 5.38709677, -1.0, -12.0, -0.03225806, -837.96774194, 0.19354839]);
        let between = by_row(&|i| months_between("m", ts[i], at(d[i]), true).unwrap());
        assert_eq!(between, [0.0, 0.0, 0.0, 0.0, 0.0, 0.07274044, 0.0, 0.0]);
        let next = |w| d.iter().map(|d| next_day("n", *d, w).unwrap()).collect::<Vec<_>>();
        assert_eq!(next("MON"), [19_786, 19_723, -164, 19_786, 19_758, 18_631, 4, 20_094]);
        assert_eq!(next("sunday"), [19_785, 19_729, -158, 19_785, 19_757, 18_630, 3, 20_093]);
        let added: Vec<i64> =
            ts.iter().map(|t| timestamp_add("t", unit(Fun::TimestampAdd, "MONTH"), 1, *t).unwrap()).collect();
        let want = "1711719930123000 1706745599999000 -11504540000000 1712016000000000 1709208000500000 \
                    1612332428009000 2678399999000 1738240200000000";
        assert_eq!(added, want.split(' ').map(|m| m.parse::<i64>().unwrap()).collect::<Vec<_>>());
        let second = unit(Fun::TimestampDiff, "SECOND");
        let diff: Vec<i64> = (0..8).map(|i| timestamp_diff("t", second, at(d2[i]), ts[i]).unwrap()).collect();
        assert_eq!(diff, [-2_628_869, 0, -14_182_940, 2_505_600, 31_579_200, 281_228, 2_203_891_199, -473_400]);
    }

    #[test]
    fn calendar_arithmetic_follows_java() {
        assert_eq!([2.5, -2.5, -2.51, 0.5 - f64::EPSILON / 4.0].map(round_half_up), [3.0, -2.0, -3.0, 0.0]);
        let at = |s: &str| cast_micros(s).unwrap();
        assert_eq!(months_between("m", at("2024-01-01"), at("2023-12-31"), false).unwrap(), 1.0 - 30.0 / 31.0);
        assert_eq!(months_between("m", at("2024-03-15 23:00"), at("2024-01-15 01:00"), true).unwrap(), 2.0);
        assert_eq!(next_day("n", 0, "th").unwrap(), 7, "strictly later");
        let add = |u: &str, k: i64, s: &str| timestamp_add("t", unit(Fun::TimestampAdd, u), k, at(s));
        assert_eq!(add("YEAR", -1, "2024-02-29").unwrap(), at("2023-02-28"));
        assert_eq!(add("quarter", 1, "2023-11-30 10:00").unwrap(), at("2024-02-29 10:00"));
        assert_eq!(add("DAYOFYEAR", 2, "2024-02-28").unwrap(), at("2024-03-01"));
        assert!(add("MICROSECOND", i64::MAX, "2024-01-01").unwrap_err().to_string().contains("DATETIME_OVERFLOW"));
        assert!(add("MONTH", i64::from(u32::MAX), "2024-01-01").is_err());
        let diff = |u: &str, s: &str, e: &str| timestamp_diff("t", unit(Fun::TimestampDiff, u), at(s), at(e)).unwrap();
        assert_eq!(diff("MONTH", "2024-01-31", "2024-02-29"), 0, "the 31st is not reached");
        assert_eq!(diff("MONTH", "2024-01-15 12:00", "2024-02-15 11:00"), 0, "nor 12:00");
        assert_eq!(diff("MONTH", "2024-02-15 11:00", "2024-01-15 12:00"), 0);
        assert_eq!(diff("QUARTER", "2024-01-01", "2024-12-31"), 3);
        assert_eq!(diff("YEAR", "2000-01-01 01:02:03.123456", "2010-01-01 01:02:03.123456"), 10);
        assert_eq!(diff("week", "2024-01-01", "2023-12-17 00:00:01"), -2);
        let err = datetime_unit(Fun::TimestampDiff, Some(&ScalarValue::from("DAYOFYEAR"))).unwrap_err().to_string();
        assert!(err.contains("INVALID_PARAMETER_VALUE.DATETIME_UNIT") && err.contains("'DAYOFYEAR'"), "{err}");
        assert!(datetime_unit(Fun::TimestampAdd, None).is_err(), "the unit must be a constant");
    }

    fn replace(s: &str, pattern: &str, rep: &str, position: usize) -> Result<String, String> {
        let re = java_regex(pattern)?;
        re.guard.check(s)?;
        let mut out = String::new();
        replace_java(&re.re, s, position, &java_replacement(rep, &re.re), &mut out)?;
        Ok(out)
    }

    #[test]
    fn regexp_replace_uses_java_semantics() {
        let r = |s: &str, p: &str, rep: &str| replace(s, p, rep, 1).unwrap();
        assert_eq!(r("u12x3", "[0-9]", "#"), "u##x#");
        assert_eq!(r("a1b22", "([0-9]+)", "<$1>"), "a<1>b<22>");
        assert_eq!(r("a1b22c333", "([a-z])([0-9])", "$2$1"), "1a2b23c33");
        assert_eq!(r("u12x3", "([0-9]+)", "\\$1"), "u$1x$1");
        assert_eq!(r("ab12", "([a-z])", "$1a"), "aaba12");
        assert_eq!(r("a1b", "(?<d>[0-9])", "[${d}]"), "a[1]b");
        assert_eq!(r("u12x3", "", "-"), "-u-1-2-x-3-");
        assert_eq!(r("u12x3", "[0-9]*", "."), ".u..x..");
        assert_eq!(r("", "", "-"), "-");
        assert_eq!(r("xAax", "(?i)a", "_"), "x__x");
        assert_eq!(r("a\r\nb", ".", "x"), "x\r\nx");
        assert_eq!(r("x:a", "[[:alpha:]]", "#"), "x##");
        assert_eq!(r("abc", "([0-9])", "$2"), "abc", "no match, so the bad reference is never read");
        assert_eq!(replace("u12x3", "[0-9]", "#", 3).unwrap(), "u1#x#");
        assert_eq!(replace("u12x3", "^u", "#", 2).unwrap(), "u12x3");
        assert_eq!(replace("abc", "^", "#", 2).unwrap(), "a#bc");
        assert_eq!(replace("abc", "b", "#", 9).unwrap(), "abc");
        for (pattern, why) in [
            ("a(?=b)", "look-around"),
            ("(?<=a)b", "look-around"),
            ("(a)\\1", "back-references"),
            ("a*+", "possessive"),
            ("\\v", "\\v"),
            ("\\Z", "\\Z"),
        ] {
            let err = java_regex(pattern).unwrap_err();
            assert!(err.contains(why), "{pattern}: {err}");
        }
        assert!(replace("a1", "([0-9])", "$2", 1).unwrap_err().contains("No group 2"));
        assert!(replace("ab\n", "b$", "X", 1).is_err(), "Java's $ matches before the final newline");
    }

    #[test]
    fn regexp_extract_takes_a_group_of_the_first_match() {
        let first = |s: &str, p: &str, g| {
            let found = extract_java(&java_regex(p).unwrap().re, s, g, false);
            found.map(|f| f.first().copied().unwrap_or_default().to_owned())
        };
        assert_eq!(first("u12x3", "([0-9]+)", 1).unwrap(), "12");
        assert_eq!(first("ab12cd", "([a-z])([0-9]+)", 2).unwrap(), "12");
        assert_eq!(first("ab12cd", "([a-z])([0-9]+)", 0).unwrap(), "b12", "0 is the whole match");
        assert_eq!(first("abc", "([0-9]+)", 1).unwrap(), "", "no match");
        assert_eq!(first("abc", "([0-9]+)", 7).unwrap(), "", "no match, so the index is never checked");
        assert_eq!(first("ab", "(x)?b", 1).unwrap(), "", "the group took no part");
        assert_eq!(first("a1", "(?<d>[0-9])", 1).unwrap(), "1", "a named group counts");
        for (p, g) in [("([0-9])", 2), ("([0-9])", -1), ("[0-9]", 1)] {
            let err = first("a1", p, g).unwrap_err();
            assert!(
                err.starts_with("[INVALID_PARAMETER_VALUE.REGEX_GROUP_INDEX]") && err.ends_with(&format!("got {g}"))
            );
        }
        let all = |s: &str, p: &str, g| {
            extract_java(&java_regex(p).unwrap().re, s, g, true)
                .unwrap()
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(all("a1b22c333", "([a-z])([0-9]+)", 2), ["1", "22", "333"]);
        assert_eq!(all("a1b22", "[0-9]*", 0), ["", "1", "", "22", ""], "Java's empty matches");
        assert!(all("abc", "([0-9])", 5).is_empty());
    }

    async fn sql(expr: &str) -> DfResult<String> {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx.sql(&format!("SELECT {expr}")).await?.collect().await?;
        Ok(arrow_cast::display::array_value_to_string(batches[0].column(0), 0)?)
    }

    /// Through SQL: the registered functions replace DataFusion's built-ins of the same names.
    #[tokio::test]
    async fn registered_functions_replace_datafusions() {
        for (expr, want) in [
            (
                "date_format(CAST('2024-02-29 13:45:30.123' AS TIMESTAMP), 'EEE d MMM yyyy hh:mm a')",
                "Thu 29 Feb 2024 01:45 PM",
            ),
            ("date_format('2024-02-29', 'yyyy/MM/dd')", "2024/02/29"),
            ("regexp_replace('u12x3', '[0-9]', '#')", "u##x#"),
            ("unix_timestamp('1970-01-02 00:00:00')", "86400"),
            ("from_unixtime(86400)", "1970-01-02 00:00:00"),
            ("to_date('02-29-2024', 'MM-dd-yyyy')", "2024-02-29"),
            ("try_to_timestamp('garbage', 'yyyy') IS NULL", "true"),
            ("dayofweek(DATE '2023-12-31')", "1"),
            ("hour(CAST('2024-02-29 13:45:30' AS TIMESTAMP))", "13"),
            ("add_months(DATE '2024-01-31', 1)", "2024-02-29"),
            ("trunc(DATE '2024-02-29', 'MM')", "2024-02-01"),
            ("trunc(DATE '2024-02-29', 'DD') IS NULL", "true"),
            ("trunc(2.75) = 2.0", "true"),
            ("date_trunc('DECADE', CAST('2024-02-29' AS TIMESTAMP)) IS NULL", "true"),
            ("datediff('2024-03-31', DATE '2024-02-29')", "31"),
        ] {
            assert_eq!(sql(expr).await.unwrap(), want, "{expr}");
        }
        let err = sql("date_format(CAST('2024-02-29' AS TIMESTAMP), 'w')").await.unwrap_err().to_string();
        assert!(err.contains("week-based"), "{err}");
        let err = sql("to_timestamp('2024-02-29 13:45:30.123', 'yyyy-MM-dd HH:mm:ss')").await.unwrap_err().to_string();
        assert!(err.contains("CANNOT_PARSE_TIMESTAMP"), "{err}");
    }

    /// `EXTRACT` reaches Spark's `date_part` (this test's dialect, DataFusion's generic one,
    /// also reads fields it has no keyword for, such as `DAYOFWEEK_ISO`).
    #[tokio::test]
    async fn date_part_extract_and_regexp_extract_through_sql() {
        for (expr, want) in [
            ("extract(SECOND FROM CAST('2024-02-29 13:45:30.123' AS TIMESTAMP))", "30.123000"),
            ("extract(DAYOFWEEK_ISO FROM DATE '2023-12-31')", "7"),
            ("extract(WEEK FROM DATE '2021-01-03')", "53"),
            ("extract(YEAROFWEEK FROM DATE '2021-01-03')", "2020"),
            ("date_part('dow', DATE '2023-12-31')", "1"),
            ("datepart('Doy', '2024-12-31')", "366"),
            ("date_part('h', '2024-02-29 13:45:30')", "13"),
            ("date_part('year', NULL) IS NULL", "true"),
            ("regexp_extract('a1b22c333', '([a-z])([0-9]+)', 2)", "1"),
            ("regexp_extract('a1b22c333', '([a-z])([0-9]+)', 0)", "a1"),
            ("regexp_extract('u12x3', '([0-9]+)')", "12"),
            ("regexp_extract('abc', '([0-9]+)')", ""),
            ("regexp_extract(NULL, '([0-9]+)') IS NULL", "true"),
            ("regexp_extract_all('a1b22c333', '([0-9]+)')", "[1, 22, 333]"),
        ] {
            assert_eq!(sql(expr).await.unwrap(), want, "{expr}");
        }
        for (expr, why) in [
            ("extract(HOUR FROM DATE '2024-02-29')", "a DATE has no HOUR"),
            ("date_part('second', DATE '2024-02-29')", "a DATE has no SECOND"),
            ("date_part('decade', DATE '2024-02-29')", "INVALID_EXTRACT_FIELD"),
            ("regexp_extract('a1', '([0-9])', 2)", "REGEX_GROUP_INDEX"),
            ("regexp_extract('ab', 'a(?=b)', 0)", "look-around"),
        ] {
            let err = sql(expr).await.unwrap_err().to_string();
            assert!(err.contains(why), "{expr}: {err}");
        }
    }

    /// The epoch conversions, `months_between`, `next_day`, `timestampadd`/`timestampdiff` (the
    /// unit as the SQL rewrite quotes it) and `rlike` through SQL.
    #[tokio::test]
    async fn epoch_calendar_and_rlike_functions_through_sql() {
        for (expr, want) in [
            ("unix_seconds(CAST('1969-12-31 23:59:59.999' AS TIMESTAMP))", "-1"),
            ("unix_micros(CAST('1969-12-31 23:59:59.999' AS TIMESTAMP))", "-1000"),
            ("unix_date(DATE '1969-12-31')", "-1"),
            ("unix_micros(timestamp_seconds(-86401))", "-86401000000"),
            ("unix_micros(timestamp_millis(-1))", "-1000"),
            ("unix_millis(timestamp_micros(-1))", "-1"),
            ("date_from_unix_date(-1)", "1969-12-31"),
            ("months_between('2024-01-01', DATE '2023-12-31') = 0.03225806", "true"),
            ("months_between(DATE '2024-03-31', DATE '2024-02-29', false) = 1.0", "true"),
            ("months_between(NULL, DATE '2024-02-29') IS NULL", "true"),
            ("next_day('1969-12-31', 'MON')", "1970-01-05"),
            ("unix_micros(timestampadd('MONTH', 1, CAST('2024-01-31 12:00:00.5' AS TIMESTAMP)))", "1709208000500000"),
            ("timestampdiff('month', DATE '2024-01-31', '2024-02-29')", "0"),
            ("rlike('a1b22c333', '^a')", "true"),
            ("rlike('u12x3', '^a')", "false"),
            ("regexp_like('u12x3', '[0-9]$')", "true"),
            ("rlike(NULL, 'a') IS NULL", "true"),
        ] {
            assert_eq!(sql(expr).await.unwrap(), want, "{expr}");
        }
        for (expr, why) in [
            ("next_day(DATE '2024-02-29', 'xyz')", "ILLEGAL_DAY_OF_WEEK"),
            ("timestampdiff('DAYOFYEAR', DATE '2024-01-01', DATE '2024-02-01')", "DATETIME_UNIT"),
            ("timestampadd('DECADE', 1, DATE '2024-01-01')", "DATETIME_UNIT"),
            ("unix_seconds(DATE '2024-01-01')", "expected a timestamp"),
            ("timestamp_seconds(1.5)", "expected an integer"),
            ("timestamp_seconds(9223372036854775807)", "long overflow"),
            ("rlike('ab', 'a(?=b)')", "look-around"),
        ] {
            let err = sql(expr).await.unwrap_err().to_string();
            assert!(err.contains(why), "{expr}: {err}");
        }
    }
}
