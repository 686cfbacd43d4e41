//! Making the paths a process passed to open/chdir absolute, lexically (as the kernel saw them
//! relative to the cwd or a directory fd).

/// Joins `path` onto `base` unless it is absolute, and folds `.` and `..`. Runs on every
/// open of a traced process, so it builds the result in one buffer.
pub fn absolute(base: &str, path: &str) -> String {
    if is_normal_absolute(path) {
        return path.to_owned();
    }
    let mut out = String::with_capacity(base.len() + path.len() + 1);
    let parts = if path.starts_with('/') { None } else { Some(base) };
    for part in parts.into_iter().flat_map(|b| b.split('/')).chain(path.split('/')) {
        match part {
            "" | "." => {}
            ".." => out.truncate(out.rfind('/').unwrap_or(0)),
            p => {
                out.push('/');
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Already absolute with nothing to fold: no empty (`//`, a trailing `/`), `.` or `..`
/// component.
fn is_normal_absolute(path: &str) -> bool {
    path == "/" || path.strip_prefix('/').is_some_and(|rest| rest.split('/').all(|p| !matches!(p, "" | "." | "..")))
}

#[cfg(test)]
mod tests {
    use super::absolute;

    #[test]
    fn folds_relative_paths() {
        assert_eq!(absolute("/home/u", "a.txt"), "/home/u/a.txt");
        assert_eq!(absolute("/home/u", "./x/../b"), "/home/u/b");
        assert_eq!(absolute("/home/u", "/etc//hosts"), "/etc/hosts");
        assert_eq!(absolute("/", "../../x"), "/x");
        assert_eq!(absolute("/a", ""), "/a");
        assert_eq!(absolute("/a", "/"), "/");
        assert_eq!(absolute("/", ""), "/");
        assert_eq!(absolute("/a/b", ".."), "/a");
        assert_eq!(absolute("/a", "b/"), "/a/b");
        assert_eq!(absolute("/x", "/srv/www/1k.bin"), "/srv/www/1k.bin");
        assert_eq!(absolute("/x", "/srv/./www/../1k.bin"), "/srv/1k.bin");
        assert_eq!(absolute("/x", "/srv/www/"), "/srv/www");
    }
}
