//! Percent-decoding of URL paths and query strings, for the HTTP servers berth runs (the
//! Docker API, the node agent's API).

/// Decodes `%XX` escapes (an escape that is not one stays as it is); with
/// `plus_is_space`, `+` is a space, as in query strings that HTML forms and Go's
/// `url.Values` encode.
pub fn decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=x%20y` as decoded pairs, in order (a key without `=` has an empty value).
pub fn query_pairs(query: &str, plus_is_space: bool) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k, plus_is_space), decode(v, plus_is_space))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_pluses_and_pairs() {
        assert_eq!(decode("localhost%2Ffixture", false), "localhost/fixture");
        assert_eq!(decode("a+b%2", true), "a b%2");
        assert_eq!(decode("a+b", false), "a+b");
        assert_eq!(decode("%zz%41", false), "%zzA");
        assert_eq!(decode("%7B%22label%22%3A%5B%22a%3Db%22%5D%7D", true), r#"{"label":["a=b"]}"#);
        assert_eq!(
            query_pairs("stdout=1&tail=all&x&name=a%20b", true),
            [("stdout", "1"), ("tail", "all"), ("x", ""), ("name", "a b")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
