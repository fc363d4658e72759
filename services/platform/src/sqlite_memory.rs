//! SQLite's memory: from the process's allocator (mimalloc), with no usage statistics.
//!
//! Built as sqlx builds it, SQLite allocates through glibc's malloc and, to keep its memory
//! statistics, takes a process-wide mutex around every allocation and free. Each statement
//! allocates and frees a few dozen small blocks, and under load glibc's malloc and those mutex
//! calls were about 3 % of the machine's time across the services (BENCHMARKS.md, Run 20).
//! [`use_process_allocator`] hands SQLite mimalloc's functions instead and turns the statistics
//! off (nothing here reads them). SQLite takes such settings only before it first starts, i.e.
//! before the process opens its first database.
//! This and [`crate::sqlite_writer`] are the modules where the workspace allows `unsafe`:
//! SQLite's and mimalloc's C APIs.
#![allow(unsafe_code)]

use std::{
    ffi::{c_int, c_void},
    sync::OnceLock,
};

use libmimalloc_sys as mi;
use libsqlite3_sys as ffi;

/// Whether SQLite took the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// SQLite allocates with mimalloc and keeps no statistics.
    Applied,
    /// SQLite had started before (the result code of its refusal); it keeps its defaults.
    Refused(c_int),
}

/// Gives SQLite the process's allocator, once per process, before it starts; later calls
/// return the first call's outcome.
pub fn use_process_allocator() -> Outcome {
    static OUTCOME: OnceLock<Outcome> = OnceLock::new();
    *OUTCOME.get_or_init(configure)
}

fn configure() -> Outcome {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: `sqlite3_config` is called with the argument each option documents; SQLite
    // copies `methods` before returning. It answers SQLITE_MISUSE, changing nothing, once
    // SQLite has started.
    let code = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &raw const methods) };
    if code != ffi::SQLITE_OK {
        return Outcome::Refused(code);
    }
    // SAFETY: as above; the option takes an int.
    let code = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) };
    if code != ffi::SQLITE_OK {
        return Outcome::Refused(code);
    }
    Outcome::Applied
}

// The methods below are SQLite's contract for an allocator: 8-byte aligned blocks (mimalloc's
// are 16), sizes as `int`, never asked for zero bytes nor to free a null pointer.

unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
    // SAFETY: mimalloc's malloc, for any size.
    unsafe { mi::mi_malloc(usize::try_from(n).unwrap_or(0)) }
}

unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: `p` came from `malloc` or `realloc` above.
    unsafe { mi::mi_free(p) }
}

unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: `p` came from `malloc` or `realloc` above.
    unsafe { mi::mi_realloc(p, usize::try_from(n).unwrap_or(0)) }
}

unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    // SAFETY: `p` came from `malloc` or `realloc` above. At least the size asked for, as the
    // contract allows; SQLite's blocks are far below `c_int::MAX`.
    let usable = unsafe { mi::mi_usable_size(p) };
    c_int::try_from(usable).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn roundup(n: c_int) -> c_int {
    // mimalloc's smallest size classes are multiples of 8.
    n.saturating_add(7) & !7
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}
