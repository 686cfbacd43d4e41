//! Sizes with K/M/G suffixes (powers of 1024).

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

#[cfg(test)]
mod tests {
    use super::parse;

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
