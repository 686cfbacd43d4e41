//! Sizes with K/M/G suffixes (powers of 1024), read and written.

pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let mult = match t[i..].to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => {
                    return Err(format!(
                        "`{text}` is not a size: use a number with an optional K, M or G suffix (e.g. 64M)"
                    ))
                }
            };
            (&t[..i], mult)
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size: use a number with an optional K, M or G suffix (e.g. 64M)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too large"))
}

/// The shortest exact K/M/G form of a size, as `parse` reads it.
pub fn format(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn formats_what_it_parses() {
        for text in ["64K", "32M", "2G", "1000", "1536K"] {
            assert_eq!(super::format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn parses_suffixes_and_rejects_junk() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("64K"), Ok(65536));
        assert_eq!(parse("16m"), Ok(16 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("2MiB"), Ok(2 << 20));
        assert!(parse("12Q").is_err());
        assert!(parse("").is_err());
        assert!(parse("M").is_err());
    }
}
