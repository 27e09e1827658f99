//! A segment file mapped into memory.
//!
//! The node's segments are preallocated with `fallocate` to `journal.segment_bytes` and mapped
//! `MAP_SHARED`: a record is appended by copying its bytes into the mapping, which puts them in
//! the kernel's page cache at once, where they survive the death of the process. A full disk
//! shows as `fallocate` failing when a segment is prepared, before any record goes into it,
//! never as a SIGBUS on a store. Pages are mapped for writing ahead of the writer by another
//! thread ([`Mapping::populate`]), so the hot core does not take their page faults.
//!
//! Readers (the followers, on other threads) map the same files read-only. The writer publishes a
//! record by storing its length last, with a release store ([`Mapping::publish`]); a reader
//! loads the length with an acquire load ([`Mapping::record_len`]) and reads the rest only when
//! it is not zero. No other byte is read while it may be written.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::format::RECORD_ALIGN;

/// A file mapped into memory; unmapped when dropped.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared by the kernel's page cache. Its writer (one thread:
// the hot core, or the thread that prepares a segment before handing it over) writes a record's
// bytes, then publishes its length with a release store; readers read a record only after an
// acquire load of its length saw it published. `Mapping` hands out no reference to bytes that
// may still be written.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file`, for writing too when `writable`.
    pub fn new(file: &File, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty file cannot be mapped"));
        }
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of an open file; the result is checked.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: [`Mapping::new`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maps the pages of `[from, to)` for writing now (`MADV_POPULATE_WRITE`), so that the
    /// writer's stores there take no page fault. On a kernel older than 5.14, which lacks it,
    /// this does nothing (said once in the log): the writer takes the faults.
    pub fn populate(&self, from: usize, to: usize) -> io::Result<()> {
        static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
        let page = page_size();
        let from = from / page * page;
        let to = to.min(self.len);
        if from >= to || UNSUPPORTED.load(Ordering::Relaxed) {
            return Ok(());
        }
        // SAFETY: the range lies inside the mapping; populating does not change its contents.
        let rc = unsafe { libc::madvise(self.ptr.as_ptr().add(from).cast(), to - from, libc::MADV_POPULATE_WRITE) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) && !UNSUPPORTED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "journal: this kernel cannot map pages ahead of the writer (MADV_POPULATE_WRITE needs Linux 5.14); \
                 the hot core takes those page faults itself"
            );
            return Ok(());
        }
        Err(e)
    }

    /// Writes the pages of `[from, to)` to the disk and waits for them, with what the file
    /// system needs to read them back (`msync(MS_SYNC)`: `fdatasync` of that range). Pages
    /// outside it stay as they are: a page the writer is filling is not cleaned under it.
    pub fn sync(&self, from: usize, to: usize) -> io::Result<()> {
        let page = page_size();
        let from = from / page * page;
        let to = to.min(self.len);
        if from >= to {
            return Ok(());
        }
        // SAFETY: a page-aligned range inside the mapping; syncing does not change its contents.
        os_result(unsafe { libc::msync(self.ptr.as_ptr().add(from).cast(), to - from, libc::MS_SYNC) })
    }

    /// The sequence number of the published record at `off` (see [`Mapping::record_len`]).
    pub fn record_seq(&self, off: usize) -> Option<u64> {
        if self.record_len(off) == 0 {
            return None;
        }
        // SAFETY: a published record's header is written once, before its length was published.
        let b = unsafe { self.bytes(off + 8, off + 16) };
        Some(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// Copies `bytes` to `off`.
    ///
    /// # Safety
    /// Only the mapping's one writer calls this, on bytes no reader reads yet (past every
    /// published record), inside the mapping.
    pub unsafe fn write(&self, off: usize, bytes: &[u8]) {
        debug_assert!(off + bytes.len() <= self.len);
        // SAFETY: the caller's promise: in bounds, and nobody reads these bytes meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len()) };
    }

    /// Publishes the record at `off` (its other bytes already written) by storing its length.
    ///
    /// # Safety
    /// As for [`Mapping::write`]; `off` is a multiple of [`RECORD_ALIGN`].
    pub unsafe fn publish(&self, off: usize, len: u32) {
        // SAFETY: `off` is in bounds and 8-aligned in a page-aligned mapping, so the u32 there is
        // aligned; only this writer stores to it, readers load it atomically.
        unsafe { self.length_at(off).store(len, Ordering::Release) };
    }

    /// The length of the record at `off`: 0 while it is not there. Everything the writer wrote
    /// before publishing it is visible once this is not 0.
    pub fn record_len(&self, off: usize) -> u32 {
        if !off.is_multiple_of(RECORD_ALIGN) || off + 4 > self.len {
            return 0;
        }
        // SAFETY: in bounds and aligned (checked); loaded atomically while the writer may store.
        unsafe { self.length_at(off).load(Ordering::Acquire) }
    }

    /// The bytes of `[from, to)`.
    ///
    /// # Safety
    /// Nobody writes them while the slice lives: they belong to published records, or to a file
    /// no writer has mapped.
    pub unsafe fn bytes(&self, from: usize, to: usize) -> &[u8] {
        assert!(from <= to && to <= self.len, "{from}..{to} of a {}-byte mapping", self.len);
        // SAFETY: in bounds (checked); the caller's promise covers the rest.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(from), to - from) }
    }

    /// # Safety
    /// `off` in bounds and 4-aligned.
    unsafe fn length_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: the caller's promise; AtomicU32 has the layout of u32.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the region this value mapped, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub(super) fn page_size() -> usize {
    // SAFETY: a plain query.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(4096)
}

/// Makes `file` at least `len` bytes long with blocks allocated for all of it (`fallocate`): a
/// full disk fails here, not later on a store into the mapping.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too long"))?;
    // SAFETY: an open file descriptor and plain arguments.
    os_result(unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) })
}

/// A libc call's return code as a result (the error from `errno`).
fn os_result(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Zeros `[from, end)` of a segment mapped for writing as `map`: the rest of the page by stores,
/// whole pages by punching them out of the file and allocating them again (zeros, without
/// writing them).
pub fn clear_from(file: &File, map: &Mapping, from: usize) -> io::Result<()> {
    let page = page_size();
    let page_end = from.next_multiple_of(page).min(map.len());
    // SAFETY: called before any reader or writer uses the bytes past `from`.
    unsafe { map.write(from, &vec![0; page_end - from]) };
    if page_end < map.len() {
        let (off, len) = (page_end as libc::off_t, (map.len() - page_end) as libc::off_t);
        // SAFETY: an open descriptor and a range inside the file.
        os_result(unsafe {
            libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len)
        })?;
        preallocate(file, map.len() as u64)?;
    }
    Ok(())
}

/// Syncs the directory `dir`, so that names created or renamed in it survive a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_record_is_seen_whole_and_the_file_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        preallocate(&file, 1 << 20).unwrap();
        let writer = Mapping::new(&file, 1 << 20, true).unwrap();
        writer.populate(0, 1 << 16).unwrap();
        let reader = Mapping::new(&File::open(&path).unwrap(), 1 << 20, false).unwrap();
        assert_eq!(reader.record_len(16), 0, "nothing published yet");
        // SAFETY: this test is the only writer, and the reader reads only what is published.
        unsafe {
            writer.write(20, b"rest of the record");
            assert_eq!(reader.record_len(16), 0, "written but not published");
            writer.publish(16, 18);
        }
        assert_eq!(reader.record_len(16), 18);
        // SAFETY: published above.
        assert_eq!(unsafe { reader.bytes(20, 38) }, b"rest of the record");
        drop(writer);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 1 << 20);
        assert_eq!(&on_disk[16..20], &18u32.to_le_bytes());
        assert_eq!(reader.record_len(17), 0, "unaligned offsets are never records");
    }
}
