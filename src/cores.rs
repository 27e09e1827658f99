//! The host's cores, and pinning a thread to one. A leaf: any layer may pin its threads.

/// Core ids of this host.
pub fn host_cores() -> Vec<usize> {
    core_affinity::get_core_ids().map(|ids| ids.into_iter().map(|c| c.id).collect()).unwrap_or_else(|| vec![0])
}

/// Pins the calling thread to `core`; `false` when that core does not exist or pinning failed.
pub fn pin_current_thread(core: usize) -> bool {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.into_iter().find(|c| c.id == core))
        .is_some_and(core_affinity::set_for_current)
}
