//! fd tables: one per process (threads share their process's), copied on fork, shared with
//! CLONE_FILES, unshared and cleared of close-on-exec fds on exec.

use crate::FastMap as HashMap;

pub type TableId = u64;

#[derive(Clone, Copy, Debug)]
pub struct FdEntry {
    pub stream: u64,
    pub cloexec: bool,
}

#[derive(Default, Clone, Debug)]
pub struct FdTable {
    pub fds: HashMap<i32, FdEntry>,
    /// Processes using this table.
    pub users: u32,
}

#[derive(Default)]
pub struct FdTables {
    tables: HashMap<TableId, FdTable>,
    of_process: HashMap<u32, TableId>,
    next: TableId,
}

impl FdTables {
    /// The table of `tgid`, created empty if the process is new to us.
    pub fn table_id(&mut self, tgid: u32) -> TableId {
        if let Some(id) = self.of_process.get(&tgid) {
            return *id;
        }
        let id = self.new_table(FdTable::default());
        self.attach(tgid, id);
        id
    }

    pub fn has_process(&self, tgid: u32) -> bool {
        self.of_process.contains_key(&tgid)
    }

    pub fn new_table(&mut self, table: FdTable) -> TableId {
        self.next += 1;
        self.tables.insert(self.next, FdTable { users: 0, ..table });
        self.next
    }

    pub fn attach(&mut self, tgid: u32, id: TableId) {
        self.tables.get_mut(&id).expect("table exists").users += 1;
        self.of_process.insert(tgid, id);
    }

    pub fn get(&self, tgid: u32, fd: i32) -> Option<FdEntry> {
        let id = self.of_process.get(&tgid)?;
        self.tables.get(id)?.fds.get(&fd).copied()
    }

    pub fn table(&self, id: TableId) -> &FdTable {
        &self.tables[&id]
    }

    pub fn table_mut(&mut self, id: TableId) -> &mut FdTable {
        self.tables.get_mut(&id).expect("table exists")
    }

    /// Detaches a process; returns the table's fds if it was the last user (they are closed).
    pub fn detach(&mut self, tgid: u32) -> Vec<(i32, FdEntry)> {
        let Some(id) = self.of_process.remove(&tgid) else { return Vec::new() };
        let table = self.tables.get_mut(&id).expect("table exists");
        table.users -= 1;
        if table.users == 0 {
            return self.tables.remove(&id).expect("table exists").fds.into_iter().collect();
        }
        Vec::new()
    }
}
