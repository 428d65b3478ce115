//! Single-range `Range: bytes=...` requests, as a download resume sends them.

/// The byte range a `Range` header asks of a `len`-byte file: `Ok(None)` for no (or an unusable)
/// header, `Err(())` when it cannot be satisfied (416).
pub fn parse(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: serve the whole file, as RFC 9110 allows
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().map_err(|_| ())?;
        if suffix == 0 {
            return Err(());
        }
        (len.saturating_sub(suffix), len.saturating_sub(1))
    } else {
        let start: u64 = start.parse().map_err(|_| ())?;
        let end = if end.is_empty() {
            len.saturating_sub(1)
        } else {
            end.parse::<u64>()
                .map_err(|_| ())?
                .min(len.saturating_sub(1))
        };
        (start, end)
    };
    if len == 0 || range.0 >= len || range.0 > range.1 {
        return Err(());
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 100), Ok(None));
        assert_eq!(parse(Some("bytes=10-19"), 100), Ok(Some((10, 19))));
        assert_eq!(parse(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(parse(Some("bytes=-5"), 100), Ok(Some((95, 99))));
        assert_eq!(parse(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(parse(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse(Some("bytes=5-2"), 100), Err(()));
        assert_eq!(parse(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse(Some("items=0-1"), 100), Ok(None));
    }
}
