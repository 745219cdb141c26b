//! What the agent tells the kernel programs at run time (`CONTROL`), and the
//! counts of clean flows they keep in the two aggregation maps.
//!
//! Clean flows (connected and closed without a failure, a retransmit over
//! the threshold or a capture) leave no event: the kernel counts them under
//! (owner cgroup, destination) in `AGG[sel]`. [`Control::flip`] points the
//! kernel at the other map; one tick later, when no program can still be
//! adding to the old one, [`Control::drain`] reads and clears it. No count
//! is lost between a read and a delete.
use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, PerCpuHashMap},
};
use egress_common::{
    AggKey, AggValue, CTRL_PUBLIC_EVENTS, CTRL_SKIP_ESTABLISHED, CTRL_VERBOSE, Control as Ctl,
    MAP_AGG, MAP_CONTROL,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("map {0} missing from the object")]
    Missing(&'static str),
    #[error("map {name}: {error}")]
    Map { name: &'static str, error: MapError },
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> ControlError {
    move |error| ControlError::Map { name, error }
}

/// Settings the kernel reads per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControlSettings {
    /// Send every flow as events (a watcher wants them, or `--log-flows`).
    pub verbose: bool,
    /// Retransmits at or above which a flow is degraded (0 = never).
    pub degraded_retransmits: u32,
    /// DNS messages a cgroup may have captured per second, and in a burst
    /// (0 = no budget).
    pub dns_rate: u32,
    pub dns_burst: u32,
    /// Flows to public addresses as events (a chain is configured: egress
    /// that skips it is reported flow by flow).
    pub public_events: bool,
    /// Test hook: `CTRL_SKIP_ESTABLISHED`.
    pub skip_established: bool,
}

pub struct Control {
    map: Array<MapData, Ctl>,
    agg: [PerCpuHashMap<MapData, AggKey, AggValue>; 2],
    current: Ctl,
}

impl Control {
    pub fn new(ebpf: &mut Ebpf, s: ControlSettings) -> Result<Self, ControlError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ControlError::Missing(name))
        };
        let map = Array::try_from(take(ebpf, MAP_CONTROL)?).map_err(map_err(MAP_CONTROL))?;
        let agg = [
            PerCpuHashMap::try_from(take(ebpf, MAP_AGG[0])?).map_err(map_err(MAP_AGG[0]))?,
            PerCpuHashMap::try_from(take(ebpf, MAP_AGG[1])?).map_err(map_err(MAP_AGG[1]))?,
        ];
        let current = Ctl {
            flags: if s.verbose { CTRL_VERBOSE } else { 0 }
                | if s.public_events { CTRL_PUBLIC_EVENTS } else { 0 }
                | if s.skip_established { CTRL_SKIP_ESTABLISHED } else { 0 },
            agg_sel: 0,
            degraded_retransmits: s.degraded_retransmits,
            dns_rate: s.dns_rate,
            dns_burst: s.dns_burst,
            _pad: 0,
        };
        let mut c = Self { map, agg, current };
        c.write()?;
        Ok(c)
    }

    fn write(&mut self) -> Result<(), ControlError> {
        self.map.set(0, self.current, 0).map_err(map_err(MAP_CONTROL))
    }

    pub fn verbose(&self) -> bool {
        self.current.flags & CTRL_VERBOSE != 0
    }

    /// Every flow as an event (on), or clean ones counted in the kernel.
    pub fn set_verbose(&mut self, on: bool) -> Result<(), ControlError> {
        if on == self.verbose() {
            return Ok(());
        }
        self.current.flags ^= CTRL_VERBOSE;
        self.write()
    }

    /// Point the kernel at the other aggregation map; returns the index of
    /// the one it left, to be drained once programs are done with it.
    pub fn flip(&mut self) -> Result<usize, ControlError> {
        let old = self.current.agg_sel as usize & 1;
        self.current.agg_sel = (old ^ 1) as u32;
        self.write()?;
        Ok(old)
    }

    /// Read and clear aggregation map `which` into `out`, each key's counts
    /// summed over the CPUs. Keys are read first and deleted one by one:
    /// the kernel no longer adds to this map.
    pub fn drain(
        &mut self,
        which: usize,
        out: &mut Vec<(AggKey, AggValue)>,
    ) -> Result<(), ControlError> {
        let name = MAP_AGG[which & 1];
        let map = &mut self.agg[which & 1];
        let keys: Vec<AggKey> = map.keys().filter_map(Result::ok).collect();
        for k in keys {
            if let Ok(per_cpu) = map.get(&k, 0) {
                out.push((k, sum(per_cpu.iter())));
            }
            match map.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }
}

/// One key's counts over all CPUs.
fn sum<'a>(per_cpu: impl Iterator<Item = &'a AggValue>) -> AggValue {
    let mut t = AggValue::default();
    for v in per_cpu {
        t.connects += v.connects;
        t.closes += v.closes;
        t.latency_sum_ns += v.latency_sum_ns;
        for (a, b) in t.latency_buckets.iter_mut().zip(v.latency_buckets.iter()) {
            *a += b;
        }
    }
    t
}

#[cfg(test)]
mod sum_tests {
    use super::*;

    #[test]
    fn a_keys_counts_are_summed_over_cpus() {
        let mut a = AggValue { connects: 2, closes: 1, latency_sum_ns: 300, ..AggValue::default() };
        a.latency_buckets[0] = 2;
        let mut b = AggValue { connects: 5, closes: 5, latency_sum_ns: 700, ..AggValue::default() };
        b.latency_buckets[0] = 1;
        b.latency_buckets[3] = 4;
        let t = sum([a, AggValue::default(), b].iter());
        assert_eq!((t.connects, t.closes, t.latency_sum_ns), (7, 6, 1000));
        assert_eq!(t.latency_buckets[0], 3);
        assert_eq!(t.latency_buckets[3], 4);
        assert_eq!(t.latency_buckets.iter().sum::<u64>(), t.connects);
    }
}
