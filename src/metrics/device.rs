//! Where the metrics' tensors live. Metrics run on the CPU unless their caller wraps them in
//! [`on_device`]: then every block, gathered subset, kernel matrix, scatter and eigensolve of that
//! thread is made on that device (a GPU worker's), and only scalars and small vectors come back.
//! The arithmetic is the same float64 either way.
use std::cell::Cell;

use tch::{Device, Tensor};

thread_local! {
    static DEVICE: Cell<Device> = const { Cell::new(Device::Cpu) };
}

/// Runs `f` with the metrics it calls on this thread computing on `device`, then restores the
/// previous device (also when `f` panics).
///
/// ```
/// use gapmeter::metrics::{fid_from_features, on_device};
/// let a = ndarray::array![[0.0, 1.0], [1.0, 0.5], [2.0, 2.0]];
/// let fid = on_device(tch::Device::Cpu, || fid_from_features(a.view(), a.view())).unwrap();
/// assert!(fid.value.abs() < 1e-12);
/// ```
pub fn on_device<R>(device: Device, f: impl FnOnce() -> R) -> R {
    struct Restore(Device);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEVICE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEVICE.with(|d| d.replace(device)));
    f()
}

/// The device this thread's metrics compute on.
pub(crate) fn current() -> Device {
    DEVICE.with(Cell::get)
}

/// `t` (built on the CPU from host data) on the current device; no copy when that is the CPU.
pub(crate) fn here(t: Tensor) -> Tensor {
    match current() {
        Device::Cpu => t,
        device => t.to_device(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_scoped_to_the_call() {
        assert_eq!(current(), Device::Cpu);
        let inner = on_device(Device::Cuda(3), current);
        assert_eq!(inner, Device::Cuda(3));
        assert_eq!(current(), Device::Cpu);
        let caught = std::panic::catch_unwind(|| on_device(Device::Cuda(1), || panic!("boom")));
        assert!(caught.is_err());
        assert_eq!(current(), Device::Cpu);
    }
}
