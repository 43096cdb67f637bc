use thiserror::Error;

/// Errors of the budget core.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BudgetError {
    /// A decimal amount could not be read.
    #[error(
        "`{value}` is not a decimal amount (expected digits with an optional `.` fraction, e.g. `40.5`)"
    )]
    InvalidDecimal { value: String },
    /// A decimal amount is finer than one micro-dollar.
    #[error("`{value}` has more than 6 decimal places; amounts are whole micro-dollars")]
    TooPrecise { value: String },
    /// A decimal amount does not fit in the integer range.
    #[error("`{value}` is too large")]
    TooLarge { value: String },
    /// An amount of a price (`field`: `input`, `output`, `cache_read`, `cache_write`,
    /// `cache_write_1h`) could not be read.
    #[error("`{field}`: {reason}")]
    InvalidPrice {
        field: &'static str,
        reason: Box<BudgetError>,
    },
    /// A window name is not one of the four windows.
    #[error("`{value}` is not a window (expected one of `minute`, `hour`, `day`, `month`)")]
    UnknownWindow { value: String },
    /// A timestamp lies outside the calendar range supported.
    #[error("timestamp `{secs}` is outside the supported calendar range")]
    TimeOutOfRange { secs: i64 },
}
