//! The unit table behind the cleaning rule `convert`: which units exist, which quantity each
//! measures, and how to turn a value from one into another.
//!
//! Every unit is `base = value * scale + offset` for its quantity's base unit (kelvin, metre,
//! pascal, joule, watt, byte, second, kilogram, metre per second, cubic metre, hertz, ratio).
//! Only temperatures have an offset. Names are matched exactly: case carries meaning in units
//! (`mW` and `MW`, `mb` as millibar to a meteorologist and megabit to a network engineer), so a
//! near miss is an error that suggests the spelling it resembles, never a guess. The factors are the exact definitions (e.g. 1 in = 0.0254 m, 1 lb =
//! 0.45359237 kg, 1 psi = 6894.757293168 Pa, 1 cal = 4.184 J); the tests check each quantity
//! against values published independently of this table.

use std::fmt;

/// What a unit measures. Units convert only within one quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Temperature,
    Length,
    Pressure,
    Energy,
    Power,
    Bytes,
    Duration,
    Mass,
    Speed,
    Volume,
    Frequency,
    Ratio,
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantity::Temperature => "temperature",
            Quantity::Length => "length",
            Quantity::Pressure => "pressure",
            Quantity::Energy => "energy",
            Quantity::Power => "power",
            Quantity::Bytes => "bytes",
            Quantity::Duration => "duration",
            Quantity::Mass => "mass",
            Quantity::Speed => "speed",
            Quantity::Volume => "volume",
            Quantity::Frequency => "frequency",
            Quantity::Ratio => "ratio",
        })
    }
}

/// One unit: its names (the first is the canonical one) and how it maps to the base unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit {
    pub names: &'static [&'static str],
    pub quantity: Quantity,
    scale: f64,
    offset: f64,
}

impl Unit {
    /// The canonical name, e.g. `degC`.
    pub fn name(&self) -> &'static str {
        self.names.first().copied().unwrap_or("")
    }

    fn base_value(&self, value: f64) -> f64 {
        value * self.scale + self.offset
    }

    fn unit_value(&self, base: f64) -> f64 {
        (base - self.offset) / self.scale
    }
}

const fn unit(names: &'static [&'static str], quantity: Quantity, scale: f64, offset: f64) -> Unit {
    Unit {
        names,
        quantity,
        scale,
        offset,
    }
}

use Quantity::*;

const INCH: f64 = 0.0254;
const FOOT: f64 = 12.0 * INCH;
const POUND: f64 = 0.453_592_37;
const GRAVITY: f64 = 9.806_65;
const CALORIE: f64 = 4.184;
/// The International Table BTU.
const BTU: f64 = 1_055.055_852_62;
/// The US liquid gallon: 231 cubic inches.
const GALLON: f64 = 231.0 * INCH * INCH * INCH;

/// Every unit the `convert` rule knows.
pub static UNITS: &[Unit] = &[
    // Temperature: base kelvin.
    unit(&["K", "kelvin"], Temperature, 1.0, 0.0),
    unit(&["degC", "°C", "C", "celsius"], Temperature, 1.0, 273.15),
    unit(
        &["degF", "°F", "F", "fahrenheit"],
        Temperature,
        5.0 / 9.0,
        273.15 - 32.0 * 5.0 / 9.0,
    ),
    unit(&["degR", "°R", "rankine"], Temperature, 5.0 / 9.0, 0.0),
    // Length: base metre.
    unit(&["nm", "nanometre", "nanometer"], Length, 1e-9, 0.0),
    unit(&["um", "µm", "micrometre", "micrometer"], Length, 1e-6, 0.0),
    unit(&["mm", "millimetre", "millimeter"], Length, 1e-3, 0.0),
    unit(&["cm", "centimetre", "centimeter"], Length, 1e-2, 0.0),
    unit(&["m", "metre", "meter"], Length, 1.0, 0.0),
    unit(&["km", "kilometre", "kilometer"], Length, 1e3, 0.0),
    unit(&["in", "inch"], Length, INCH, 0.0),
    unit(&["ft", "foot", "feet"], Length, FOOT, 0.0),
    unit(&["yd", "yard"], Length, 3.0 * FOOT, 0.0),
    unit(&["mi", "mile"], Length, 5280.0 * FOOT, 0.0),
    unit(&["nmi", "nautical_mile"], Length, 1852.0, 0.0),
    // Pressure: base pascal.
    unit(&["Pa", "pascal"], Pressure, 1.0, 0.0),
    unit(&["hPa"], Pressure, 1e2, 0.0),
    unit(&["kPa"], Pressure, 1e3, 0.0),
    unit(&["MPa"], Pressure, 1e6, 0.0),
    unit(&["mbar", "millibar"], Pressure, 1e2, 0.0),
    unit(&["bar"], Pressure, 1e5, 0.0),
    unit(&["atm", "atmosphere"], Pressure, 101_325.0, 0.0),
    unit(&["psi"], Pressure, POUND * GRAVITY / (INCH * INCH), 0.0),
    unit(&["mmHg"], Pressure, 133.322_387_415, 0.0),
    unit(&["torr", "Torr"], Pressure, 101_325.0 / 760.0, 0.0),
    unit(&["inHg"], Pressure, 3_386.388_640_341, 0.0),
    // Energy: base joule.
    unit(&["J", "joule"], Energy, 1.0, 0.0),
    unit(&["kJ"], Energy, 1e3, 0.0),
    unit(&["MJ"], Energy, 1e6, 0.0),
    unit(&["Wh"], Energy, 3_600.0, 0.0),
    unit(&["kWh"], Energy, 3.6e6, 0.0),
    unit(&["MWh"], Energy, 3.6e9, 0.0),
    unit(&["cal", "calorie"], Energy, CALORIE, 0.0),
    unit(&["kcal", "kilocalorie"], Energy, 1e3 * CALORIE, 0.0),
    unit(&["BTU", "btu"], Energy, BTU, 0.0),
    // Power: base watt.
    unit(&["mW"], Power, 1e-3, 0.0),
    unit(&["W", "watt"], Power, 1.0, 0.0),
    unit(&["kW"], Power, 1e3, 0.0),
    unit(&["MW"], Power, 1e6, 0.0),
    // Mechanical horsepower: 550 foot-pounds-force per second.
    unit(
        &["hp", "horsepower"],
        Power,
        550.0 * FOOT * POUND * GRAVITY,
        0.0,
    ),
    unit(&["BTU/h"], Power, BTU / 3_600.0, 0.0),
    // Bytes: base byte. SI prefixes are powers of 1000, IEC prefixes powers of 1024.
    unit(&["bit", "bits"], Bytes, 0.125, 0.0),
    unit(&["B", "byte", "bytes"], Bytes, 1.0, 0.0),
    unit(&["kB"], Bytes, 1e3, 0.0),
    unit(&["MB"], Bytes, 1e6, 0.0),
    unit(&["GB"], Bytes, 1e9, 0.0),
    unit(&["TB"], Bytes, 1e12, 0.0),
    unit(&["KiB"], Bytes, 1024.0, 0.0),
    unit(&["MiB"], Bytes, 1_048_576.0, 0.0),
    unit(&["GiB"], Bytes, 1_073_741_824.0, 0.0),
    unit(&["TiB"], Bytes, 1_099_511_627_776.0, 0.0),
    // Duration: base second.
    unit(&["ns", "nanosecond", "nanoseconds"], Duration, 1e-9, 0.0),
    unit(
        &["us", "µs", "microsecond", "microseconds"],
        Duration,
        1e-6,
        0.0,
    ),
    unit(&["ms", "millisecond", "milliseconds"], Duration, 1e-3, 0.0),
    unit(&["s", "second", "seconds"], Duration, 1.0, 0.0),
    unit(&["min", "minute", "minutes"], Duration, 60.0, 0.0),
    unit(&["h", "hour", "hours"], Duration, 3_600.0, 0.0),
    unit(&["d", "day", "days"], Duration, 86_400.0, 0.0),
    // Mass: base kilogram.
    unit(&["mg", "milligram"], Mass, 1e-6, 0.0),
    unit(&["g", "gram"], Mass, 1e-3, 0.0),
    unit(&["kg", "kilogram"], Mass, 1.0, 0.0),
    unit(&["t", "tonne"], Mass, 1e3, 0.0),
    unit(&["oz", "ounce"], Mass, POUND / 16.0, 0.0),
    unit(&["lb", "pound"], Mass, POUND, 0.0),
    // Speed: base metre per second.
    unit(&["m/s"], Speed, 1.0, 0.0),
    unit(&["km/h", "kph"], Speed, 1e3 / 3_600.0, 0.0),
    unit(&["mph"], Speed, 5280.0 * FOOT / 3_600.0, 0.0),
    unit(&["kn", "knot", "knots"], Speed, 1852.0 / 3_600.0, 0.0),
    unit(&["ft/s"], Speed, FOOT, 0.0),
    // Volume: base cubic metre.
    unit(&["mL", "ml", "millilitre", "milliliter"], Volume, 1e-6, 0.0),
    unit(&["L", "l", "litre", "liter"], Volume, 1e-3, 0.0),
    unit(&["m3", "m³"], Volume, 1.0, 0.0),
    unit(&["gal", "gallon"], Volume, GALLON, 0.0),
    // Frequency: base hertz.
    unit(&["Hz", "hertz"], Frequency, 1.0, 0.0),
    unit(&["kHz"], Frequency, 1e3, 0.0),
    unit(&["MHz"], Frequency, 1e6, 0.0),
    unit(&["GHz"], Frequency, 1e9, 0.0),
    unit(&["rpm"], Frequency, 1.0 / 60.0, 0.0),
    // Ratio: base fraction.
    unit(&["fraction", "ratio"], Ratio, 1.0, 0.0),
    unit(&["percent", "%"], Ratio, 1e-2, 0.0),
    unit(&["permille", "‰"], Ratio, 1e-3, 0.0),
    unit(&["ppm"], Ratio, 1e-6, 0.0),
];

/// Why a conversion cannot be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("unknown unit {0:?}{hint}", hint = suggestion(.0))]
    Unknown(String),
    #[error("cannot convert {from} ({from_quantity}) to {to} ({to_quantity})")]
    Mismatch {
        from: &'static str,
        from_quantity: Quantity,
        to: &'static str,
        to_quantity: Quantity,
    },
}

/// " (did you mean ...?)" for an unknown name that matches units ignoring case and symbols.
fn suggestion(name: &str) -> String {
    let simple = |s: &str| {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let wanted = simple(name);
    let similar: Vec<String> = UNITS
        .iter()
        .filter(|u| u.names.iter().any(|n| simple(n) == wanted))
        .map(|u| format!("{:?}", u.name()))
        .collect();
    if similar.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", similar.join(" or "))
    }
}

/// Finds a unit by any of its names, spelled exactly.
pub fn lookup(name: &str) -> Result<&'static Unit, UnitError> {
    UNITS
        .iter()
        .find(|u| u.names.contains(&name))
        .ok_or_else(|| UnitError::Unknown(name.to_owned()))
}

/// A checked conversion between two units of one quantity.
#[derive(Debug, Clone, Copy)]
pub struct Conversion {
    from: &'static Unit,
    to: &'static Unit,
}

impl Conversion {
    /// Sets up `from` → `to`, or says why not (an unknown name, or two quantities).
    pub fn new(from: &str, to: &str) -> Result<Conversion, UnitError> {
        let (from, to) = (lookup(from)?, lookup(to)?);
        if from.quantity != to.quantity {
            return Err(UnitError::Mismatch {
                from: from.name(),
                from_quantity: from.quantity,
                to: to.name(),
                to_quantity: to.quantity,
            });
        }
        Ok(Conversion { from, to })
    }

    pub fn apply(&self, value: f64) -> f64 {
        if std::ptr::eq(self.from, self.to) {
            return value;
        }
        self.to.unit_value(self.from.base_value(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(value: f64, from: &str, to: &str) -> f64 {
        Conversion::new(from, to).unwrap().apply(value)
    }

    /// Relative closeness, with an absolute floor for values near zero.
    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-9 * want.abs().max(1.0)
    }

    /// Reference values from the definitions (NIST SP 811, ISO 80000, IEC 80000-13), not from
    /// the table: each row is (value, from, expected, to).
    #[test]
    fn conversions_match_published_values() {
        let cases: &[(f64, &str, f64, &str)] = &[
            (100.0, "degC", 212.0, "degF"),
            (-40.0, "degC", -40.0, "degF"),
            (0.0, "K", -273.15, "degC"),
            (32.0, "°F", 273.15, "K"),
            (491.67, "degR", 0.0, "degC"),
            (1.0, "in", 25.4, "mm"),
            (1.0, "mi", 1.609_344, "km"),
            (1.0, "nmi", 1852.0, "m"),
            (3.0, "ft", 1.0, "yd"),
            (1.0, "atm", 101_325.0, "Pa"),
            (1.0, "psi", 6_894.757_293_168, "Pa"),
            (1.0, "bar", 1000.0, "mbar"),
            (760.0, "torr", 1.0, "atm"),
            (1013.25, "hPa", 1.0, "atm"),
            (1.0, "inHg", 3_386.388_640_341, "Pa"),
            (1.0, "kWh", 3.6e6, "J"),
            (1.0, "kcal", 4_184.0, "J"),
            (1.0, "BTU", 1_055.055_852_62, "J"),
            (1.0, "hp", 745.699_871_582_270_2, "W"),
            (1.0, "GiB", 1_073_741_824.0, "B"),
            (1.0, "GB", 1e9, "B"),
            (8.0, "bit", 1.0, "B"),
            (1.0, "MiB", 1024.0, "KiB"),
            (1.5, "h", 90.0, "min"),
            (1.0, "d", 86_400_000.0, "ms"),
            (250.0, "us", 0.25, "ms"),
            (1.0, "lb", 453.592_37, "g"),
            (16.0, "oz", 1.0, "lb"),
            (100.0, "km/h", 27.777_777_777_777_78, "m/s"),
            (60.0, "mph", 96.560_64, "km/h"),
            (1.0, "kn", 1.852, "km/h"),
            (1.0, "gal", 3.785_411_784, "L"),
            (1.0, "m3", 1000.0, "L"),
            (3000.0, "rpm", 50.0, "Hz"),
            (1.0, "GHz", 1000.0, "MHz"),
            (12.5, "%", 0.125, "fraction"),
            (1.0, "percent", 10_000.0, "ppm"),
        ];
        for &(value, from, want, to) in cases {
            let got = convert(value, from, to);
            assert!(
                close(got, want),
                "{value} {from} -> {got} {to}, want {want}"
            );
            // And back again.
            let back = convert(want, to, from);
            assert!(
                close(back, value),
                "{want} {to} -> {back} {from}, want {value}"
            );
        }
    }

    #[test]
    fn every_name_is_unique_and_every_unit_converts_to_itself() {
        let mut seen = std::collections::HashSet::new();
        for unit in UNITS {
            for name in unit.names {
                assert!(seen.insert(*name), "{name} appears twice");
                assert!(std::ptr::eq(lookup(name).unwrap(), unit), "{name}");
            }
            assert!(
                unit.scale > 0.0 && unit.scale.is_finite(),
                "{}",
                unit.name()
            );
            let same = Conversion::new(unit.name(), unit.name()).unwrap();
            assert_eq!(same.apply(42.5), 42.5);
        }
    }

    #[test]
    fn case_matters_and_near_misses_are_suggested_not_guessed() {
        assert_eq!(lookup("mW").unwrap().name(), "mW");
        assert_eq!(lookup("MW").unwrap().name(), "MW");
        let error = lookup("mw").unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown unit \"mw\" (did you mean \"mW\" or \"MW\"?)"
        );
        let error = lookup("KWH").unwrap_err().to_string();
        assert_eq!(error, "unknown unit \"KWH\" (did you mean \"kWh\"?)");
    }

    #[test]
    fn errors_name_the_problem() {
        let unknown = Conversion::new("furlong", "m").unwrap_err();
        assert_eq!(unknown.to_string(), "unknown unit \"furlong\"");
        let hinted = Conversion::new("deg_c", "K").unwrap_err();
        assert_eq!(
            hinted.to_string(),
            "unknown unit \"deg_c\" (did you mean \"degC\"?)"
        );
        let mismatch = Conversion::new("degC", "Pa").unwrap_err();
        assert_eq!(
            mismatch.to_string(),
            "cannot convert degC (temperature) to Pa (pressure)"
        );
    }
}
