//! The process tree: fork/clone, exec (close-on-exec), exit.

use retrace_common::{TaskRecord, TASK_GROUP_DEAD, TASK_JOINED};

use super::*;

impl Tracker {
    pub(super) fn task_new(&mut self, rec: &TaskRecord, out: &mut Vec<proto::Record>) {
        let parent = rec.hdr.tgid;
        let child = rec.pid as u32;
        let ts = self.wall_ns(rec.hdr.ts_ns);
        let thread = rec.clone_flags & CLONE_THREAD != 0;
        if !thread {
            let parent_table = self.tables.table_id(parent);
            if rec.clone_flags & CLONE_FILES != 0 {
                self.tables.attach(child, parent_table);
            } else {
                let copy = FdTable { fds: self.tables.table(parent_table).fds.clone(), users: 0 };
                for entry in copy.fds.values() {
                    if let Some(s) = self.streams.get_mut(&entry.stream) {
                        s.refs += 1;
                    }
                }
                let id = self.tables.new_table(copy);
                self.tables.attach(child, id);
            }
            let cwd = self.cwd_of(parent);
            self.cwd.insert(child, cwd);
        }
        out.push(record(R::Process(proto::Process {
            ts_ns: ts,
            event: if thread { "thread" } else { "fork" }.to_owned(),
            pid: parent,
            tid: rec.hdr.tid,
            child,
            clone_flags: rec.clone_flags,
            ..Default::default()
        })));
    }

    pub(super) fn task_exec(
        &mut self,
        rec: &TaskRecord,
        path: String,
        at_random: Option<[u8; crate::auxv::AT_RANDOM_LEN]>,
        out: &mut Vec<proto::Record>,
    ) {
        let tgid = rec.hdr.tgid;
        if let Some(watch) = &self.tls_watch {
            // A program with a TLS library linked in (node, a static binary).
            watch.push(match path.starts_with('/') {
                true => crate::capture::tls::Candidate::File(path.clone().into()),
                false => crate::capture::tls::Candidate::Process(tgid),
            });
        }
        let ts = self.wall_ns(rec.hdr.ts_ns);
        if rec.flags & TASK_JOINED != 0 && !self.tables.has_process(tgid) {
            // It joins here (it execs in a recorded cgroup): its cwd and standard fds as the
            // kernel shows them now. Not the others: the agent reads this behind the process,
            // which may have opened more since (their opens follow as records); another fd it
            // inherited becomes an untracked stream when first used.
            self.adopt_fds_where(tgid, "inherited", rec.hdr.ts_ns, out, |fd| (0..=2).contains(&fd));
        } else if self.tables.has_process(tgid) {
            // exec unshares the fd table, then closes the close-on-exec fds.
            let table = self.tables.table_id(tgid);
            let fds = self.tables.table(table).fds.clone();
            let shared = self.tables.table(table).users > 1;
            if shared {
                for entry in fds.values() {
                    if let Some(s) = self.streams.get_mut(&entry.stream) {
                        s.refs += 1;
                    }
                }
                let _ = self.tables.detach(tgid);
                let id = self.tables.new_table(FdTable { fds: fds.clone(), users: 0 });
                self.tables.attach(tgid, id);
            }
            for (fd, entry) in fds {
                if entry.cloexec {
                    if let Some(entry) = self.unbind_fd(tgid, fd) {
                        self.release(entry.stream, ts, out);
                    }
                }
            }
        }
        out.push(record(R::Process(proto::Process {
            ts_ns: ts,
            event: "exec".to_owned(),
            pid: tgid,
            tid: rec.hdr.tid,
            path,
            at_random: at_random.filter(|_| self.record_random).map(|b| b.to_vec()).unwrap_or_default(),
            ..Default::default()
        })));
    }

    pub(super) fn task_exit(&mut self, rec: &TaskRecord, out: &mut Vec<proto::Record>) {
        let tgid = rec.hdr.tgid;
        let ts = self.wall_ns(rec.hdr.ts_ns);
        let group_dead = rec.flags & TASK_GROUP_DEAD != 0;
        if group_dead {
            for (fd, entry) in self.tables.detach(tgid) {
                self.remember_closed(tgid, fd, entry.stream);
                self.release(entry.stream, ts, out);
            }
            if tgid == self.root {
                self.root_exited = true;
            }
        }
        out.push(record(R::Process(proto::Process {
            ts_ns: ts,
            event: if group_dead { "exit" } else { "thread_exit" }.to_owned(),
            pid: tgid,
            tid: rec.hdr.tid,
            exit_status: if group_dead { self.exit_codes.get(&tgid).copied().unwrap_or(-1) } else { 0 },
            ..Default::default()
        })));
    }
}
