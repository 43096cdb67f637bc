use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::BudgetError;

/// A fixed calendar window in UTC.
///
/// Windows are calendar-aligned (a `day` is a UTC day, a `month` a calendar month), not rolling:
/// every process that sees the same clock agrees on which counter a request lands in, and a
/// window's counter can expire as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// A UTC minute.
    Minute,
    /// A UTC hour.
    Hour,
    /// A UTC day.
    Day,
    /// A calendar month in UTC.
    Month,
}

/// One occurrence of a window: where it starts and ends, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowInstance {
    /// Which window this is.
    pub window: Window,
    /// Inclusive start, Unix seconds.
    pub start: i64,
    /// Exclusive end, Unix seconds.
    pub end: i64,
}

impl Window {
    /// All windows, shortest first.
    pub const ALL: [Window; 4] = [Window::Minute, Window::Hour, Window::Day, Window::Month];

    /// The lower-case name used in specs, properties and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// The longest this window can last, in seconds (31 days for a month).
    pub const fn max_seconds(self) -> i64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
            Window::Month => 31 * 86_400,
        }
    }

    /// The occurrence of this window that contains `unix_secs`.
    pub fn instance_at(self, unix_secs: i64) -> Result<WindowInstance, BudgetError> {
        // Beyond year 9999 the keys would stop sorting as text; nothing legitimate lives there.
        const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        if !(0..=MAX).contains(&unix_secs) {
            return Err(BudgetError::TimeOutOfRange { secs: unix_secs });
        }
        let fixed = |len: i64| {
            let start = unix_secs - unix_secs.rem_euclid(len);
            (start, start + len)
        };
        let (start, end) = match self {
            Window::Minute => fixed(60),
            Window::Hour => fixed(3_600),
            Window::Day => fixed(86_400),
            Window::Month => {
                let (y, m, _) = civil_from_days(unix_secs.div_euclid(86_400));
                let start = days_from_civil(y, m, 1) * 86_400;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, days_from_civil(ny, nm, 1) * 86_400)
            }
        };
        Ok(WindowInstance {
            window: self,
            start,
            end,
        })
    }
}

impl WindowInstance {
    /// A stable, sortable key naming this occurrence, e.g. `day#2026-11-27`.
    pub fn key(&self) -> String {
        let (y, mo, d) = civil_from_days(self.start.div_euclid(86_400));
        let secs_of_day = self.start.rem_euclid(86_400);
        let (h, mi) = (secs_of_day / 3_600, (secs_of_day % 3_600) / 60);
        let name = self.window.as_str();
        match self.window {
            Window::Minute => format!("{name}#{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}"),
            Window::Hour => format!("{name}#{y:04}-{mo:02}-{d:02}T{h:02}"),
            Window::Day => format!("{name}#{y:04}-{mo:02}-{d:02}"),
            Window::Month => format!("{name}#{y:04}-{mo:02}"),
        }
    }

    /// Length of this occurrence in seconds.
    pub fn len_seconds(&self) -> i64 {
        self.end - self.start
    }

    /// Whole seconds from `unix_secs` until this occurrence ends, at least 1.
    pub fn seconds_until_reset(&self, unix_secs: i64) -> i64 {
        (self.end - unix_secs).max(1)
    }

    /// Seconds elapsed since the start, at least 1 (so rates are always defined).
    pub fn elapsed(&self, unix_secs: i64) -> i64 {
        (unix_secs - self.start).clamp(1, self.len_seconds())
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Window {
    type Err = BudgetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minute" => Ok(Window::Minute),
            "hour" => Ok(Window::Hour),
            "day" => Ok(Window::Day),
            "month" => Ok(Window::Month),
            _ => Err(BudgetError::UnknownWindow {
                value: s.to_string(),
            }),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 2026-11-27T17:48:03Z
    const NOW: i64 = 1_795_801_683;

    #[test]
    fn keys_name_calendar_windows_in_utc() {
        let key = |w: Window| w.instance_at(NOW).unwrap().key();
        assert_eq!(key(Window::Minute), "minute#2026-11-27T17:48");
        assert_eq!(key(Window::Hour), "hour#2026-11-27T17");
        assert_eq!(key(Window::Day), "day#2026-11-27");
        assert_eq!(key(Window::Month), "month#2026-11");
    }

    #[test]
    fn months_have_their_calendar_length() {
        let feb_2028 = days_from_civil(2028, 2, 10) * 86_400;
        let inst = Window::Month.instance_at(feb_2028).unwrap();
        assert_eq!(inst.len_seconds(), 29 * 86_400);
        let dec = days_from_civil(2026, 12, 31) * 86_400 + 86_399;
        let inst = Window::Month.instance_at(dec).unwrap();
        assert_eq!(inst.end, days_from_civil(2027, 1, 1) * 86_400);
        assert_eq!(inst.seconds_until_reset(dec), 1);
    }

    #[test]
    fn out_of_range_times_are_errors() {
        assert!(Window::Day.instance_at(-1).is_err());
        assert!(Window::Day.instance_at(i64::MAX).is_err());
    }

    proptest! {
        #[test]
        fn every_instant_lies_in_its_window(secs in 0i64..253_402_300_799, w in 0usize..4) {
            let inst = Window::ALL[w].instance_at(secs).unwrap();
            prop_assert!(inst.start <= secs && secs < inst.end);
            prop_assert!(inst.len_seconds() <= Window::ALL[w].max_seconds());
            prop_assert_eq!(Window::ALL[w].instance_at(inst.start).unwrap(), inst);
            prop_assert_eq!(Window::ALL[w].instance_at(inst.end - 1).unwrap(), inst);
        }

        #[test]
        fn civil_round_trips(days in 0i64..2_932_896) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
