//! The host's cores, and pinning a thread to one. A leaf: any layer may pin its threads.

/// Core ids of this host.
pub fn host_cores() -> Vec<usize> {
    core_affinity::get_core_ids().map(|ids| ids.into_iter().map(|c| c.id).collect()).unwrap_or_else(|| vec![0])
}

/// Pins the calling thread to `core`; `false` when that core does not exist or pinning failed.
/// The core is not looked up among the calling thread's own cores: a thread started by a pinned
/// one inherits its single core and must still be able to move to another (the configuration was
/// checked against [`host_cores`] at start).
pub fn pin_current_thread(core: usize) -> bool {
    // Beyond the kernel's largest CPU set no core exists (and the set could not name it).
    core < libc::CPU_SETSIZE as usize && core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_started_by_a_pinned_thread_can_move_to_another_core() {
        let cores = host_cores();
        let (Some(&first), Some(&last)) = (cores.first(), cores.last()) else { return };
        let moved = std::thread::spawn(move || {
            assert!(pin_current_thread(first));
            std::thread::spawn(move || pin_current_thread(last) && host_cores() == vec![last]).join().unwrap()
        });
        assert!(moved.join().unwrap());
        assert!(!pin_current_thread(usize::MAX / 2), "a core that does not exist");
    }
}
