//! Burn-rate projections: where a window's usage ends if it goes on at the current rate.

use crate::WindowInstance;

/// Usage at the end of `window` if it continues at the rate observed since the window started.
pub fn projected_usage(used: u64, window: &WindowInstance, now: i64) -> u64 {
    let elapsed = window.elapsed(now) as u128;
    let projected = u128::from(used) * window.len_seconds() as u128 / elapsed;
    u64::try_from(projected).unwrap_or(u64::MAX)
}

/// `used` as a percentage of `limit` (a gauge for metrics, not money), 0 when there is no limit.
pub fn utilization_percent(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        return 0.0;
    }
    used as f64 * 100.0 / limit as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Window;

    #[test]
    fn projects_linearly_over_the_window() {
        let day = Window::Day.instance_at(86_400 * 10).unwrap();
        // A quarter of the day gone, 25 used: 100 by midnight.
        assert_eq!(projected_usage(25, &day, day.start + 21_600), 100);
        // At the very start the elapsed time is clamped to one second rather than dividing by 0.
        assert_eq!(projected_usage(1, &day, day.start), 86_400);
        assert_eq!(utilization_percent(50, 200), 25.0);
    }
}
