//! The bound on what one authority may record on one number in one day.
//!
//! Without it one reporter could pile thousands of events onto a number in a second, making its
//! record slow to write and long to read. The count is kept per division code (an authority's
//! first six digits: a unit suffix is free text, so counting per full authority would bound
//! nothing), per registry day (UTC+8, by the time the registry recorded the event, which every
//! cluster node sees alike). One jurisdiction's events never use up another's allowance: a
//! reporter can only name authorities inside its own scopes.
//!
//! The tally is kept beside the number's history and rewritten with it, so the bound costs no
//! read or write of its own. Only the current day is kept.

use time::Date;

/// The most events one division may record on one number in one registry day. A real case
/// (loss report, reissue, a correction and its withdrawal) needs a handful.
pub const MAX_EVENTS_PER_DIVISION_DAY: u16 = 32;

/// A division code: an authority's first six digits, as a number.
pub type Division = u32;

/// The division of a validated authority.
pub fn division_of(authority: &str) -> Division {
    authority.bytes().take(6).fold(0, |code, digit| {
        code * 10 + Division::from(digit.wrapping_sub(b'0') % 10)
    })
}

/// How many events each division recorded on one number on one registry day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyTally {
    /// The registry day counted, as a Julian day number (0: nothing counted yet).
    day: i32,
    counts: Vec<(Division, u16)>,
}

/// A division has used up its allowance on a number for the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "authority: division {division:06} has recorded {MAX_EVENTS_PER_DIVISION_DAY} events on this \
     number on {day} (UTC+8), the most one division may record on one number in a day; more are \
     refused until the next day"
)]
pub struct TallyFull {
    pub division: Division,
    pub day: Date,
}

impl DailyTally {
    /// A stored tally.
    pub fn from_parts(day: i32, counts: Vec<(Division, u16)>) -> Self {
        Self { day, counts }
    }

    /// The day counted (a Julian day number) and the counts, to store them.
    pub fn parts(&self) -> (i32, &[(Division, u16)]) {
        (self.day, &self.counts)
    }

    /// Counts one more event by `division` on `day`, or refuses it when the division's allowance
    /// is used up. A new day starts a new count; a day earlier than the one counted (a clock set
    /// back) counts towards the later one, so that a clock cannot reopen an allowance.
    pub fn admit(&mut self, division: Division, day: Date) -> Result<(), TallyFull> {
        let julian = day.to_julian_day();
        if julian > self.day {
            self.day = julian;
            self.counts.clear();
        }
        let at = match self
            .counts
            .binary_search_by_key(&division, |(code, _)| *code)
        {
            Ok(at) => at,
            Err(free) => {
                self.counts.insert(free, (division, 0));
                free
            }
        };
        let count = &mut self.counts[at].1;
        if *count >= MAX_EVENTS_PER_DIVISION_DAY {
            return Err(TallyFull {
                division,
                day: Date::from_julian_day(self.day).unwrap_or(day),
            });
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn a_division_is_bounded_per_day_without_touching_another() {
        let (today, tomorrow) = (date!(2026 - 12 - 02), date!(2026 - 12 - 03));
        let (shenzhen, beijing) = (division_of("440305"), division_of("110105-unit7"));
        assert_eq!((shenzhen, beijing), (440305, 110105));
        let mut tally = DailyTally::default();
        for _ in 0..MAX_EVENTS_PER_DIVISION_DAY {
            tally.admit(shenzhen, today).unwrap();
        }
        let full = tally.admit(shenzhen, today).unwrap_err();
        assert_eq!(full.day, today);
        assert!(
            full.to_string().starts_with("authority: division 440305"),
            "{full}"
        );
        assert_eq!(tally.admit(beijing, today), Ok(()));
        // A clock set back does not reopen the allowance; the next day does.
        assert!(tally.admit(shenzhen, date!(2026 - 12 - 01)).is_err());
        assert_eq!(tally.admit(shenzhen, tomorrow), Ok(()));
        assert_eq!(tally.parts().1, [(shenzhen, 1)]);
    }
}
