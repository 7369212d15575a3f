//! The process's heap: jemalloc, the binary's global allocator (`src/main.rs`), told to
//! give freed memory back to the operating system (docs/performance.md, "Memory and
//! start-up at 100,000 mappings").
//!
//! A config load allocates several times what it keeps (at 100,000 mappings ~300–400
//! MiB of parsed trees and copies against ~100 MiB of tables), and an allocator keeps
//! freed pages for reuse: glibc's kept all of it (idle RSS 356 MiB) unless the process
//! was started with `MALLOC_ARENA_MAX=1`, and `malloc_trim` would need `unsafe`. jemalloc
//! is told through its control interface (`mallctl`, the safe wrappers of
//! `tikv-jemalloc-ctl`):
//!
//! - [`start_background_purge`]: its background threads give pages unused for
//!   [`DIRTY_DECAY_MS`] back on their own, so an idle daemon shrinks without any
//!   allocation to drive it.
//! - [`release_freed_heap`]: after a load (start-up, every reload), every arena's freed
//!   pages go back at once. jemalloc purges everything dirty when an arena's decay time
//!   is set to 0 (`arena.<i>.dirty_decay_ms`); the time is then put back. Its own
//!   `arena.<i>.purge` takes no value, which the safe interface cannot send.
//!
//! In a process whose allocator is not jemalloc (the library's tests) the calls reach
//! jemalloc's own idle state and change nothing else. Errors are not fatal: the heap is
//! then only larger.

use std::sync::Mutex;

use tikv_jemalloc_ctl::{Access, AsName, arenas, background_thread};

/// Held while decay times are read and written: two releases at once would otherwise
/// read each other's 0 as the time to put back, and leave an arena at 0.
static CONTROL: Mutex<()> = Mutex::new(());

fn control() -> std::sync::MutexGuard<'static, ()> {
    CONTROL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long freed pages stay with jemalloc for reuse before its background threads give
/// them back: jemalloc's default is 10 s; 1 s returns what a reader of the files or a
/// scrape freed before anyone looks at the process again, and is still long against the
/// churn of a request.
pub const DIRTY_DECAY_MS: isize = 1_000;

/// Turns on jemalloc's background purging threads and sets [`DIRTY_DECAY_MS`] for every
/// arena, those that exist and those made later. Called once the start-up load is done
/// (`src/main.rs`): the arena for huge allocations, made during the load, then keeps the
/// decay time 0 jemalloc gives it without background threads (a freed large buffer goes
/// back at once). `Err` says what failed (jemalloc built without background threads, or
/// they could not be started): the heap is then only larger.
pub fn start_background_purge() -> Result<(), String> {
    let _control = control();
    b"arenas.dirty_decay_ms\0"
        .name()
        .write(DIRTY_DECAY_MS)
        .map_err(|e| format!("arenas.dirty_decay_ms: {e}"))?;
    // Not an arena at 0 (the huge allocations' one): it already gives back at once.
    for_each_arena(|name| {
        if Access::<isize>::read(name).is_ok_and(|decay_ms| decay_ms != 0) {
            let _ = name.write(DIRTY_DECAY_MS);
        }
    });
    background_thread::write(true).map_err(|e| format!("background_thread: {e}"))
}

/// Runs `f` on the name `arena.<i>.dirty_decay_ms` of every arena that exists. The count
/// jemalloc gives is a limit (an index not initialised yet answers with an error, which
/// `f` sees as a failed read or write); one more for the arena of huge allocations, made
/// after that count was taken.
fn for_each_arena(mut f: impl FnMut(&tikv_jemalloc_ctl::Name)) {
    let count = arenas::narenas::read().unwrap_or(0);
    for arena in 0..=count {
        let name = format!("arena.{arena}.dirty_decay_ms\0");
        f(name.as_bytes().name());
    }
}

/// What [`release_freed_heap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Arenas whose dirty pages were purged.
    pub arenas: u32,
}

/// Gives every arena's freed pages back to the operating system now. Called once the
/// start-up load's config is dropped (`src/main.rs`) and after every reload
/// (`crate::reload`), when the load's transient heap has just been freed.
pub fn release_freed_heap() -> Released {
    #[cfg(any(test, feature = "test-util"))]
    RELEASES.with(|count| count.set(count.get() + 1));
    let _control = control();
    let mut purged = 0;
    for_each_arena(|name| {
        let Ok(decay_ms) = Access::<isize>::read(name) else {
            return;
        };
        // 0 purges every dirty page of the arena before returning; then its own time
        // again, so later frees are reused before they are returned.
        if name.write(0isize).is_ok() {
            purged += 1;
        }
        let _ = name.write(decay_ms);
    });
    Released { arenas: purged }
}

/// The arena this thread allocates from, for [`share_arena`] to hand to a helper
/// thread. `None` when jemalloc does not say.
pub fn thread_arena() -> Option<u32> {
    Access::<u32>::read(b"thread.arena\0".name()).ok()
}

/// Makes this thread allocate from `arena` ([`thread_arena`] of another thread). A
/// short-lived helper thread (the included files read on every core) would otherwise
/// get an arena of its own, and what it allocated and handed over stays there as
/// dirty pages once freed, until the next purge: reading 100,000 included files on
/// two threads raised the start-up peak by ~150 MiB that way. Best effort.
pub fn share_arena(arena: u32) {
    let _ = b"thread.arena\0".name().write(arena);
}

#[cfg(any(test, feature = "test-util"))]
thread_local! {
    static RELEASES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many times this thread called [`release_freed_heap`] (tests: a reload, which runs
/// on the caller's thread, gives the freed heap back).
#[cfg(any(test, feature = "test-util"))]
pub fn releases_on_this_thread() -> u64 {
    RELEASES.with(std::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper thread told to share an arena allocates from it from then on.
    #[test]
    fn a_thread_shares_the_arena_it_is_given() {
        let own = thread_arena().expect("jemalloc names this thread's arena");
        let count = arenas::narenas::read().expect("the number of arenas");
        assert!(count >= 3, "{count}");
        let (given, seen) = std::thread::spawn(move || {
            let before = thread_arena().expect("the helper's arena");
            // Neither the helper's own arena nor this thread's: a no-op cannot pass.
            let given = (0..count)
                .find(|arena| *arena != before && *arena != own)
                .unwrap();
            share_arena(given);
            (given, thread_arena())
        })
        .join()
        .unwrap();
        assert_eq!(seen, Some(given));
        assert_eq!(thread_arena(), Some(own), "this thread's is unchanged");
    }

    /// One test, not two: both change arena 0's decay time, which one process shares.
    #[test]
    fn release_purges_and_puts_the_decay_time_back_and_start_sets_it_for_every_arena() {
        // Read under the lock: a reload test's release elsewhere in this process sets
        // it to 0 for a moment.
        let arena0 = || {
            let _control = control();
            Access::<isize>::read(b"arena.0.dirty_decay_ms\0".name()).ok()
        };
        // The first call initialises jemalloc, and with it arena 0.
        let before = arena0();
        assert!(before.is_some());
        let released = release_freed_heap();
        assert!(released.arenas >= 1, "{released:?}");
        assert_eq!(arena0(), before, "the decay time is put back");

        start_background_purge().expect("background threads and decay set");
        assert_eq!(arena0(), Some(DIRTY_DECAY_MS), "an arena that existed");
        assert_eq!(
            Access::<isize>::read(b"arenas.dirty_decay_ms\0".name()).ok(),
            Some(DIRTY_DECAY_MS),
            "arenas made later"
        );
        assert_eq!(background_thread::read().ok(), Some(true));
        release_freed_heap();
        assert_eq!(arena0(), Some(DIRTY_DECAY_MS), "put back after a release");
    }
}
