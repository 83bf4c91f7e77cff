//! The order number `${act_id}_${scene_id}_${rain_id}_${award_type}_${stage}`: one
//! award per user per scene per rain per stage, and the key of idempotent crediting.
//! Parsing is strict (no signs, no leading zeros, no empty parts) so that
//! `parse(format(x)) == x` and `format(parse(s)) == s` both hold.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ActId;

/// The kind of award a scene gives; encoded as a number in the order number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwardType {
    /// Cash red packet, in integer cents.
    Cash,
    /// Coupon from a template, counted against stock.
    Coupon,
    /// Avatar pendant.
    Pendant,
}

impl AwardType {
    /// All award types, in code order.
    pub const ALL: [AwardType; 3] = [AwardType::Cash, AwardType::Coupon, AwardType::Pendant];

    /// The number used in order numbers.
    pub fn code(self) -> u8 {
        match self {
            AwardType::Cash => 1,
            AwardType::Coupon => 2,
            AwardType::Pendant => 3,
        }
    }

    /// The award type with this order-number code.
    pub fn from_code(code: u64) -> Option<AwardType> {
        AwardType::ALL
            .into_iter()
            .find(|t| u64::from(t.code()) == code)
    }

    /// The lowercase name used in config files and reports.
    pub fn name(self) -> &'static str {
        match self {
            AwardType::Cash => "cash",
            AwardType::Coupon => "coupon",
            AwardType::Pendant => "pendant",
        }
    }
}

impl fmt::Display for AwardType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed order number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderNo {
    /// The user's account id; the credit goes to this user.
    pub act_id: ActId,
    /// The scene that gives the award.
    pub scene_id: u32,
    /// The rain (round) within the scene; 0 where a scene has no rounds.
    pub rain_id: u32,
    /// Must match the scene's award type.
    pub award_type: AwardType,
    /// The stage within the rain.
    pub stage: u32,
}

/// The five parts of an order number, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderNoPart {
    /// The first part.
    ActId,
    /// The second part.
    SceneId,
    /// The third part.
    RainId,
    /// The fourth part.
    AwardType,
    /// The fifth part.
    Stage,
}

impl OrderNoPart {
    const ALL: [OrderNoPart; 5] = [
        OrderNoPart::ActId,
        OrderNoPart::SceneId,
        OrderNoPart::RainId,
        OrderNoPart::AwardType,
        OrderNoPart::Stage,
    ];

    fn name(self) -> &'static str {
        match self {
            OrderNoPart::ActId => "act_id",
            OrderNoPart::SceneId => "scene_id",
            OrderNoPart::RainId => "rain_id",
            OrderNoPart::AwardType => "award_type",
            OrderNoPart::Stage => "stage",
        }
    }
}

impl fmt::Display for OrderNoPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string is not an order number.
#[derive(
    Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize, utoipa::ToSchema,
)]
#[non_exhaustive]
pub enum OrderNoError {
    /// Longer than any valid order number can be.
    #[error("order number is {len} bytes long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    /// Not exactly five `_`-separated parts.
    #[error(
        "order number `{input}` has {found} part(s); expected 5: act_id_scene_id_rain_id_award_type_stage"
    )]
    PartCount { input: String, found: usize },
    /// A part is empty.
    #[error("order number `{input}`: {part} is empty")]
    Empty { input: String, part: String },
    /// A part has a character other than an ASCII digit.
    #[error("order number `{input}`: {part} `{value}` is not a decimal number")]
    NotDecimal {
        input: String,
        part: String,
        value: String,
    },
    /// A part has a leading zero (it would not round-trip).
    #[error("order number `{input}`: {part} `{value}` has a leading zero")]
    LeadingZero {
        input: String,
        part: String,
        value: String,
    },
    /// A part does not fit its range.
    #[error("order number `{input}`: {part} `{value}` is out of range (at most {max})")]
    OutOfRange {
        input: String,
        part: String,
        value: String,
        max: u64,
    },
    /// act_id 0 names nobody.
    #[error("order number `{input}`: act_id must not be 0")]
    ZeroActId { input: String },
    /// The award type code is not known.
    #[error(
        "order number `{input}`: award_type `{value}` is not 1 (cash), 2 (coupon) or 3 (pendant)"
    )]
    UnknownAwardType { input: String, value: String },
}

/// Longest accepted input: five numbers of at most 20 digits and four separators.
pub const ORDER_NO_LEN_MAX: usize = 5 * 20 + 4;
/// act_id is stored in signed 64-bit SQL columns.
pub const ACT_ID_MAX: u64 = i64::MAX as u64;

impl fmt::Display for OrderNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}_{}_{}_{}",
            self.act_id,
            self.scene_id,
            self.rain_id,
            self.award_type.code(),
            self.stage
        )
    }
}

impl FromStr for OrderNo {
    type Err = OrderNoError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > ORDER_NO_LEN_MAX {
            return Err(OrderNoError::TooLong {
                len: input.len(),
                max: ORDER_NO_LEN_MAX,
            });
        }
        let parts: Vec<&str> = input.split('_').collect();
        if parts.len() != OrderNoPart::ALL.len() {
            return Err(OrderNoError::PartCount {
                input: input.to_owned(),
                found: parts.len(),
            });
        }
        let mut numbers = [0u64; 5];
        for (slot, (part, value)) in numbers
            .iter_mut()
            .zip(OrderNoPart::ALL.into_iter().zip(parts.iter().copied()))
        {
            *slot = parse_part(input, part, value)?;
        }
        let [act_id, scene_id, rain_id, award_code, stage] = numbers;
        if act_id == 0 {
            return Err(OrderNoError::ZeroActId {
                input: input.to_owned(),
            });
        }
        let award_type =
            AwardType::from_code(award_code).ok_or_else(|| OrderNoError::UnknownAwardType {
                input: input.to_owned(),
                value: parts[3].to_owned(),
            })?;
        // The casts below cannot truncate: parse_part checked each part's range.
        Ok(OrderNo {
            act_id,
            scene_id: scene_id as u32,
            rain_id: rain_id as u32,
            award_type,
            stage: stage as u32,
        })
    }
}

fn parse_part(input: &str, part: OrderNoPart, value: &str) -> Result<u64, OrderNoError> {
    let err_fields = || (input.to_owned(), part.name().to_owned(), value.to_owned());
    if value.is_empty() {
        return Err(OrderNoError::Empty {
            input: input.to_owned(),
            part: part.name().to_owned(),
        });
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        let (input, part, value) = err_fields();
        return Err(OrderNoError::NotDecimal { input, part, value });
    }
    if value.len() > 1 && value.starts_with('0') {
        let (input, part, value) = err_fields();
        return Err(OrderNoError::LeadingZero { input, part, value });
    }
    let max = match part {
        OrderNoPart::ActId => ACT_ID_MAX,
        OrderNoPart::SceneId | OrderNoPart::RainId | OrderNoPart::Stage => u64::from(u32::MAX),
        OrderNoPart::AwardType => u64::from(u8::MAX),
    };
    match value.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => {
            let (input, part, value) = err_fields();
            Err(OrderNoError::OutOfRange {
                input,
                part,
                value,
                max,
            })
        }
    }
}

/// On the wire an order number is its text.
impl utoipa::PartialSchema for OrderNo {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "`${act_id}_${scene_id}_${rain_id}_${award_type}_${stage}`",
            ))
            .into()
    }
}

impl utoipa::ToSchema for OrderNo {}

impl Serialize for OrderNo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OrderNo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ok(text: &str) {
        let parsed: OrderNo = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.to_string(), text);
    }

    fn check_err(text: &str, expected_fragment: &str) {
        let err = text.parse::<OrderNo>().expect_err(text).to_string();
        assert!(
            err.contains(expected_fragment),
            "{text}: `{err}` lacks `{expected_fragment}`"
        );
    }

    #[test]
    fn round_trips() {
        check_ok("10086_301_7_1_2");
        check_ok("1_0_0_2_0");
        check_ok("9223372036854775807_4294967295_4294967295_3_4294967295");
        let order = OrderNo {
            act_id: 42,
            scene_id: 3,
            rain_id: 0,
            award_type: AwardType::Coupon,
            stage: 1,
        };
        assert_eq!(order.to_string().parse::<OrderNo>(), Ok(order));
    }

    #[test]
    fn says_which_part_is_wrong() {
        check_err("", "1 part(s)");
        check_err("1_2_3_1", "4 part(s)");
        check_err("1_2_3_1_2_3", "6 part(s)");
        check_err("_2_3_1_2", "act_id is empty");
        check_err("1__3_1_2", "scene_id is empty");
        check_err("1_2_x_1_2", "rain_id `x` is not a decimal");
        check_err("1_2_3_1_-2", "stage `-2` is not a decimal");
        check_err("1_2_3_+1_2", "award_type `+1` is not a decimal");
        check_err("01_2_3_1_2", "act_id `01` has a leading zero");
        check_err("1_2_3_9_2", "award_type `9` is not 1 (cash)");
        check_err("1_2_3_0_2", "award_type `0`");
        check_err("0_2_3_1_2", "act_id must not be 0");
        check_err(
            "1_4294967296_3_1_2",
            "scene_id `4294967296` is out of range",
        );
        check_err(
            "9223372036854775808_1_1_1_1",
            "act_id `9223372036854775808` is out of range",
        );
        check_err("1_2_3_1_2 ", "stage `2 ` is not a decimal");
        check_err(&"1".repeat(200), "at most 104");
    }
}
