//! The one unit system of every report: counts in decimal `K`/`M`/`B`/`T` (thousands to
//! trillions: parameters, FLOPs), bytes in binary `KiB`/`MiB`/`GiB`/`TiB`/`PiB`.

/// A count: `1234567` -> `1.23M`, `1.34e12` -> `1.34T`.
pub fn count(n: u64) -> String {
    // Precision loss is fine: the number is only shown.
    #[allow(clippy::cast_precision_loss)]
    let x = n as f64;
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}K", x / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}M", x / 1e6),
        1_000_000_000..=999_999_999_999 => format!("{:.2}B", x / 1e9),
        _ => format!("{:.2}T", x / 1e12),
    }
}

/// Bytes: `1536` -> `1.5 KiB`, `3 << 30` -> `3.0 GiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_decimal_and_bytes_binary() {
        assert_eq!(count(9_999), "9999");
        assert_eq!(count(1_234_567), "1.23M");
        assert_eq!(count(1_340_000_000_000), "1.34T");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(1_340_000_000_000), "1.2 TiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }
}
