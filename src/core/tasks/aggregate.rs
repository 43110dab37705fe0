//! Combining the outputs of a job's subtasks into its result.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use super::shorten;

/// How a job's outputs (each subtask's stdout, in subtask order) become
/// its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// A JSON array of the outputs, in order, each with one trailing
    /// newline removed.
    #[default]
    Collect,
    /// One string: the outputs joined in order, exactly as they are.
    Concat,
    /// The sum of the outputs read as numbers.
    Sum,
    /// The least of the outputs read as numbers.
    Min,
    /// The greatest of the outputs read as numbers.
    Max,
}

impl Aggregate {
    /// The snake_case name used in job files and the API.
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Collect => "collect",
            Aggregate::Concat => "concat",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
        }
    }

    /// Whether the mode reads the outputs as numbers.
    pub fn is_numeric(self) -> bool {
        matches!(self, Aggregate::Sum | Aggregate::Min | Aggregate::Max)
    }
}

impl std::fmt::Display for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The output without one trailing line break (`\n` or `\r\n`).
fn chomp(s: &str) -> &str {
    s.strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(s)
}

/// Combines `outputs` (in subtask order) by `mode`.
///
/// For sum, min and max every output, trimmed of surrounding whitespace,
/// must be a number. When all are integers the arithmetic is exact and the
/// result an integer (it must fit 64 bits); otherwise it is a float. The
/// error names the first subtask (by index) whose output is not a number.
pub fn aggregate(mode: Aggregate, outputs: &[&str]) -> Result<Value, String> {
    match mode {
        Aggregate::Collect => Ok(Value::Array(
            outputs
                .iter()
                .map(|o| Value::String(chomp(o).to_owned()))
                .collect(),
        )),
        Aggregate::Concat => Ok(Value::String(outputs.concat())),
        Aggregate::Sum | Aggregate::Min | Aggregate::Max => numeric(mode, outputs),
    }
}

fn numeric(mode: Aggregate, outputs: &[&str]) -> Result<Value, String> {
    let trimmed: Vec<&str> = outputs.iter().map(|o| o.trim()).collect();
    let mut ints = Vec::with_capacity(trimmed.len());
    let mut all_int = true;
    for (i, t) in trimmed.iter().enumerate() {
        if t.is_empty() {
            return Err(format!(
                "subtask {i}: the output is empty, expected a number to {mode}"
            ));
        }
        match t.parse::<i128>() {
            Ok(n) => ints.push(n),
            Err(_) => {
                all_int = false;
                match t.parse::<f64>() {
                    Ok(x) if x.is_finite() => {}
                    _ => {
                        return Err(format!(
                            "subtask {i}: expected a number to {mode}, got {:?}",
                            shorten(t, 40)
                        ))
                    }
                }
            }
        }
    }
    if trimmed.is_empty() && mode != Aggregate::Sum {
        return Err(format!("no outputs to take the {mode} of"));
    }
    if all_int {
        let n = match mode {
            Aggregate::Sum => ints
                .iter()
                .try_fold(0i128, |acc, n| acc.checked_add(*n))
                .ok_or_else(|| "the sum overflows".to_owned())?,
            Aggregate::Min => *ints.iter().min().expect("not empty"),
            _ => *ints.iter().max().expect("not empty"),
        };
        return Number::from_i128(n)
            .map(Value::Number)
            .ok_or_else(|| format!("the {mode}, {n}, does not fit a 64-bit integer"));
    }
    let floats = trimmed.iter().map(|t| t.parse::<f64>().unwrap_or(f64::NAN));
    let x = match mode {
        Aggregate::Sum => floats.sum(),
        Aggregate::Min => floats.fold(f64::INFINITY, f64::min),
        _ => floats.fold(f64::NEG_INFINITY, f64::max),
    };
    Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| format!("the {mode} is not a finite number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collect_and_concat() {
        let outs = ["a\n", "b\r\n", "c", "d\n\n", ""];
        assert_eq!(
            aggregate(Aggregate::Collect, &outs).unwrap(),
            json!(["a", "b", "c", "d\n", ""])
        );
        assert_eq!(
            aggregate(Aggregate::Concat, &outs).unwrap(),
            json!("a\nb\r\ncd\n\n")
        );
        assert_eq!(aggregate(Aggregate::Collect, &[]).unwrap(), json!([]));
    }

    #[test]
    fn integers_stay_exact() {
        let outs = ["9\n", " 16 ", "-25", "+4"];
        assert_eq!(aggregate(Aggregate::Sum, &outs).unwrap(), json!(4));
        assert_eq!(aggregate(Aggregate::Min, &outs).unwrap(), json!(-25));
        assert_eq!(aggregate(Aggregate::Max, &outs).unwrap(), json!(16));
        let big = ["9007199254740993", "1"];
        assert_eq!(
            aggregate(Aggregate::Sum, &big).unwrap(),
            json!(9007199254740994u64)
        );
        let u = ["18446744073709551615", "0"];
        assert_eq!(aggregate(Aggregate::Max, &u).unwrap(), json!(u64::MAX));
        let over = ["18446744073709551615", "1"];
        let e = aggregate(Aggregate::Sum, &over).unwrap_err();
        assert!(e.contains("does not fit a 64-bit integer"), "{e}");
        assert_eq!(aggregate(Aggregate::Sum, &[]).unwrap(), json!(0));
    }

    #[test]
    fn floats_when_any_is_not_an_integer() {
        let outs = ["1", "2.5", "1e1\n"];
        assert_eq!(aggregate(Aggregate::Sum, &outs).unwrap(), json!(13.5));
        assert_eq!(aggregate(Aggregate::Min, &outs).unwrap(), json!(1.0));
        assert_eq!(aggregate(Aggregate::Max, &outs).unwrap(), json!(10.0));
        let e = aggregate(Aggregate::Sum, &["1e308", "1e308"]).unwrap_err();
        assert!(e.contains("not a finite number"), "{e}");
    }

    #[test]
    fn errors_name_the_subtask() {
        let e = aggregate(Aggregate::Sum, &["1", "2", "three"]).unwrap_err();
        assert_eq!(e, "subtask 2: expected a number to sum, got \"three\"");
        let long = "x".repeat(100);
        let e = aggregate(Aggregate::Max, &["1", &long]).unwrap_err();
        assert!(
            e.starts_with("subtask 1: expected a number to max, got \"xxxx"),
            "{e}"
        );
        assert!(e.ends_with("…\""), "{e}");
        let e = aggregate(Aggregate::Min, &["1", " \n"]).unwrap_err();
        assert_eq!(
            e,
            "subtask 1: the output is empty, expected a number to min"
        );
        for bad in ["NaN", "inf", "-infinity", "1,5", "0x10"] {
            assert!(aggregate(Aggregate::Sum, &[bad]).is_err(), "{bad}");
        }
        assert!(aggregate(Aggregate::Min, &[]).is_err());
    }

    #[test]
    fn modes_serialize_snake_case() {
        assert_eq!(serde_json::to_string(&Aggregate::Sum).unwrap(), "\"sum\"");
        assert_eq!(
            serde_json::from_str::<Aggregate>("\"collect\"").unwrap(),
            Aggregate::Collect
        );
        assert_eq!(Aggregate::default(), Aggregate::Collect);
    }
}
