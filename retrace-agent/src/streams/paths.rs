//! Making the paths a process passed to open/chdir absolute, lexically (as the kernel saw them
//! relative to the cwd or a directory fd).

/// Joins `path` onto `base` unless it is absolute, and folds `.` and `..`.
pub fn absolute(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') { path.to_owned() } else { format!("{base}/{path}") };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
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
    }
}
